// The pod sandbox ("pause") binary containerd runs for every pod; built here so that no registry
// image is needed. Standard library only.
module aifactory/toolchain/pause

go 1.26.0
