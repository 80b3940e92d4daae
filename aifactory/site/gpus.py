"""The GPU models a site may declare, with the per-server counts their platforms come in."""

from dataclasses import dataclass


@dataclass(frozen=True)
class GpuModel:
    name: str
    description: str
    counts: frozenset[int]  # GPUs per server that a real platform of this model has
    memory_gib: int
    nvlink: bool  # 8-GPU boards with NVSwitch: Fabric Manager and NVLink checks apply
    # Per GPU, watts: drawn idle, and the board power limit of the largest form factor (SXM) as
    # the worst case a power feed must carry. A site file may override both (power.gpu_models).
    idle_w: int
    max_w: int


GPU_MODELS: dict[str, GpuModel] = {
    m.name: m
    for m in (
        GpuModel("h100", "NVIDIA H100 80GB (HGX/SXM or PCIe)", frozenset({1, 2, 4, 8}), 80, True, 70, 700),
        GpuModel("h200", "NVIDIA H200 141GB (HGX/SXM or NVL)", frozenset({1, 2, 4, 8}), 141, True, 75, 700),
        GpuModel("a100", "NVIDIA A100 80GB (HGX/SXM or PCIe)", frozenset({1, 2, 4, 8}), 80, True, 50, 400),
        GpuModel("l40s", "NVIDIA L40S 48GB (PCIe)", frozenset({1, 2, 4, 8, 10}), 48, False, 35, 350),
        GpuModel("gh200", "NVIDIA GH200 Grace Hopper superchip", frozenset({1, 2, 4}), 96, False, 100, 1000),
    )
}
