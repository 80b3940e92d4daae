"""What an emulated machine's hardware and firmware give its host, where systemd-nspawn gives less.

A server's kernel hands its init every cgroup controller, a kernel log and the devices of its cards;
an nspawn host gets read-only cgroup v1 hierarchies, no /dev/kmsg and no GPU. `site up` writes a
boot unit into each host's disk that makes up the difference, so that the roles find on an emulated
host what they find on a server and take one code path:

- cgroup controllers the host may write (containerd, crun and the kubelet create pod cgroups). The
  host's processes live in a cgroup of their own in every hierarchy (hosts.py), which the host sees
  as its init's cgroup: the kubelet puts its pods below it, as below "/" on a server.
- /dev/kmsg: the kubelet reads the kernel log for OOM kills and will not start without it.
- GPUs: /dev/nvidiaN character devices with the NVIDIA driver's major number, and /dev/nvidiactl.
  Nothing opens them; Slurm hands them out as gres and the emulated GPUs' device plugin (built
  from sandbox/gpu-device-plugin, run here in place of NVIDIA's, which needs the driver's NVML)
  advertises them to the kubelet as nvidia.com/gpu. What each card is, the driver tells in
  /proc/driver/nvidia/gpus/<bus>/information ("Model: NVIDIA H100 80GB HBM3"); the host gets the
  same file (a read-only tmpfs over /proc/driver), and the roles read the model there on every site.
"""

from __future__ import annotations

import filecmp
import shutil
import uuid
from pathlib import Path

from aifactory import toolchain
from aifactory.site.model import Machine

NVIDIA_MAJOR = 195
NVIDIACTL_MINOR = 255
LIBEXEC = Path("usr/local/libexec/aifactory")
UNIT_DIR = Path("etc/systemd/system")
HARDWARE_UNIT = "aifactory-hardware.service"
DEVICE_PLUGIN_UNIT = "aifactory-gpu-device-plugin.service"
DEVICE_PLUGIN = toolchain.BY_NAME["aifactory-gpu-device-plugin"]

_HARDWARE_SCRIPT = """#!/bin/sh
# Written by aifactory's sandbox (sandbox/hardware.py): what this emulated server's hardware gives.
set -eu
# The v1 controller hierarchies (not systemd's own, not the unified one) are read-only here.
readonly_hierarchies=$(awk '$3 == "cgroup" && $4 ~ /^ro,/ && $2 !~ /systemd$/ {print $2}' /proc/self/mounts)
for dir in $readonly_hierarchies; do
    name=$(basename "$dir")
    tries=0
    # A remount (or the umount of some, memory and blkio first of all) can be refused as "busy" for
    # a moment at boot: mount those afresh, and try again; fail the unit if one stays read-only.
    until grep -q " $dir cgroup rw," /proc/self/mounts; do
        tries=$((tries + 1))
        if [ "$tries" -gt 10 ]; then
            echo "aifactory-hardware: $dir stays read-only" >&2
            exit 1
        fi
        if grep -q " $dir cgroup " /proc/self/mounts; then
            mount -o remount,rw "$dir" 2>/dev/null || umount "$dir" 2>/dev/null || sleep 1
        else
            mount -t cgroup -o "$name" cgroup "$dir" || sleep 1
        fi
    done
done
[ -e /dev/kmsg ] || ln -s /dev/console /dev/kmsg
gpus=@GPUS@
i=0
while [ "$i" -lt "$gpus" ]; do
    [ -c "/dev/nvidia$i" ] || mknod -m 0666 "/dev/nvidia$i" c @MAJOR@ "$i"
    i=$((i + 1))
done
if [ "$gpus" -gt 0 ] && [ ! -c /dev/nvidiactl ]; then
    mknod -m 0666 /dev/nvidiactl c @MAJOR@ @CTL@
fi
if [ "$gpus" -gt 0 ] && ! grep -q " /proc/driver tmpfs " /proc/self/mounts; then
    mount -t tmpfs -o mode=0555,size=64k nvidia-driver /proc/driver
    i=0
    while [ "$i" -lt "$gpus" ]; do
        bus=$(printf '0000:%02x:00.0' $((0x18 + i)))
        dir="/proc/driver/nvidia/gpus/$bus"
        mkdir -p "$dir"
        printf 'Model: \t\t %s\nGPU UUID: \t %s\nBus Type: \t PCIe\n' \
            "@PRODUCT@" "GPU-@UUID@-$(printf '%04x' "$i")" > "$dir/information"
        printf 'Bus Location: \t %s\nDevice Minor: \t %s\n' "$bus" "$i" >> "$dir/information"
        i=$((i + 1))
    done
    mount -o remount,ro /proc/driver
fi
"""

# What the NVIDIA driver calls each model's card (nvidia-smi's name; GPU feature discovery labels
# nodes with it, spaces as dashes).
PRODUCTS = {
    "h100": "NVIDIA H100 80GB HBM3",
    "h200": "NVIDIA H200",
    "a100": "NVIDIA A100-SXM4-80GB",
    "l40s": "NVIDIA L40S",
    "gh200": "NVIDIA GH200 480GB",
}

_HARDWARE_UNIT = f"""[Unit]
Description=Emulated server hardware (aifactory sandbox): writable cgroups, /dev/kmsg, GPU devices
DefaultDependencies=no
Before=sysinit.target containerd.service slurmd.service kubelet.service {DEVICE_PLUGIN_UNIT}

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/{LIBEXEC}/hardware

[Install]
WantedBy=sysinit.target
"""

_DEVICE_PLUGIN_UNIT = f"""[Unit]
Description=Device plugin for the emulated GPUs (aifactory sandbox; real sites run NVIDIA's)
After={HARDWARE_UNIT}

[Service]
ExecStart=/{LIBEXEC}/gpu-device-plugin
Restart=always
RestartSec=2

[Install]
WantedBy=multi-user.target
"""


class HardwareError(RuntimeError):
    pass


def install(root: Path, machine: Machine) -> None:
    """Write the boot unit (and, on GPU machines, the device plugin) into a host's disk (idempotent)."""
    libexec = root / LIBEXEC
    units = root / UNIT_DIR
    libexec.mkdir(parents=True, exist_ok=True)
    script = (
        _HARDWARE_SCRIPT.replace("@GPUS@", str(machine.gpu_count))
        .replace("@MAJOR@", str(NVIDIA_MAJOR))
        .replace("@CTL@", str(NVIDIACTL_MINOR))
        .replace("@PRODUCT@", PRODUCTS.get(machine.gpu_model or "", ""))
        .replace("@UUID@", str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{machine.name}.gpu.aifactory"))[:28])
    )
    _write(libexec / "hardware", script, 0o755)
    _write(units / HARDWARE_UNIT, _HARDWARE_UNIT, 0o644)
    _enable(units, HARDWARE_UNIT, "sysinit.target")
    if machine.gpu_count:
        if not DEVICE_PLUGIN.path.exists():
            raise HardwareError(
                f"{DEVICE_PLUGIN.path} is missing: the emulated GPUs need it; run `aifactory toolchain build`"
            )
        _install_binary(DEVICE_PLUGIN.path, libexec / "gpu-device-plugin")
        _write(units / DEVICE_PLUGIN_UNIT, _DEVICE_PLUGIN_UNIT, 0o644)
        _enable(units, DEVICE_PLUGIN_UNIT, "multi-user.target")


def _install_binary(src: Path, dst: Path) -> None:
    """Replace by rename: the binary may be running in a booted host (a copy over it: "text file busy")."""
    if dst.exists() and filecmp.cmp(src, dst, shallow=False):
        return
    tmp = dst.with_name(f".{dst.name}.new")
    shutil.copyfile(src, tmp)
    tmp.chmod(0o755)
    tmp.replace(dst)


def _write(path: Path, text: str, mode: int) -> None:
    path.write_text(text)
    path.chmod(mode)


def _enable(units: Path, unit: str, target: str) -> None:
    wants = units / f"{target}.wants"
    wants.mkdir(parents=True, exist_ok=True)
    link = wants / unit
    if not link.is_symlink():
        link.symlink_to(f"/{UNIT_DIR}/{unit}")
