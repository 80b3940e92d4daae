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
    # The lowest power limit the driver accepts per GPU (`nvidia-smi -q -d POWER`, Min Power Limit):
    # a site's GPU limit (power.gpu_limits_w) must lie within limit_min_w..max_w. The role checks
    # it again against what each GPU itself reports.
    limit_min_w: int


GPU_MODELS: dict[str, GpuModel] = {
    m.name: m
    for m in (
        GpuModel(
            "h100", "NVIDIA H100 80GB (HGX/SXM or PCIe)", frozenset({1, 2, 4, 8}), 80, True, 70, 700, 200
        ),
        GpuModel(
            "h200", "NVIDIA H200 141GB (HGX/SXM or NVL)", frozenset({1, 2, 4, 8}), 141, True, 75, 700, 200
        ),
        GpuModel(
            "a100", "NVIDIA A100 80GB (HGX/SXM or PCIe)", frozenset({1, 2, 4, 8}), 80, True, 50, 400, 100
        ),
        GpuModel("l40s", "NVIDIA L40S 48GB (PCIe)", frozenset({1, 2, 4, 8, 10}), 48, False, 35, 350, 100),
        GpuModel(
            "gh200", "NVIDIA GH200 Grace Hopper superchip", frozenset({1, 2, 4}), 96, False, 100, 1000, 450
        ),
    )
}
