"""GPU acceptance: driver, inventory, persistence, ECC, NVLink, DCGM diagnostics, NCCL bandwidth.

On a site marked `emulated: true` there is no GPU by construction: the hardware checks are
reported `skipped` ("emulated site: no GPU hardware"), never passed; what can be checked there is
the nvidia_gpu role's report (/etc/aifactory/gpu-stack.json) against the site file. On a real
site a machine the site file gives GPUs fails every hardware check when none respond.
"""

from __future__ import annotations

import json
import re

import pytest

from aifactory.site.gpus import GPU_MODELS
from aifactory.site.model import Machine, NvidiaSettings
from aifactory.validate import roles
from aifactory.validate.context import DCGM_LEVEL, EMULATED_NO_GPU, Context, check, gpu_host
from aifactory.validate.parsers import (
    SMI_QUERY,
    ParseError,
    parse_all_reduce_perf,
    parse_dcgmi_diag,
    parse_smi_csv,
    parse_smi_xml,
    parse_systemctl_show,
    parse_topo_matrix,
)

# NVLink link expected between every GPU pair of an 8-GPU NVSwitch (HGX) board.
NVSWITCH_LINK = {"h100": "NV18", "h200": "NV18", "a100": "NV12"}
DCGM_TIMEOUT_S = {1: 300, 2: 1200, 3: 3600}
NCCL_TIMEOUT_S = 1800
NCCL_TESTS = ("all_reduce_perf", "/usr/local/bin/all_reduce_perf", "/opt/nccl-tests/build/all_reduce_perf")


def pinned_branch(ctx: Context) -> str:
    """The driver branch the site pins (its `nvidia:` section, else the schema's default)."""
    return (ctx.site.nvidia or NvidiaSettings((), {})).driver_branch


def needs_fabricmanager(m: Machine) -> bool:
    return m.gpu_model in roles.default(
        "nvidia_gpu", "nvidia_gpu_fabricmanager_models"
    ) and m.gpu_count == int(roles.default("nvidia_gpu", "nvidia_gpu_fabricmanager_gpu_count"))


def gpu_services(m: Machine) -> list[str]:
    return ["nvidia-persistenced", "nvidia-dcgm"] + (
        ["nvidia-fabricmanager"] if needs_fabricmanager(m) else []
    )


def probes(ctx: Context, m: Machine) -> dict:
    if not gpu_host(ctx, m):
        return {}
    p: dict = {"gpu_report": "cat " + roles.default("nvidia_gpu", "nvidia_gpu_report_path")}
    if ctx.site.emulated:
        return p
    level = DCGM_LEVEL[ctx.level]
    p["smi_csv"] = f"nvidia-smi --query-gpu={SMI_QUERY} --format=csv,noheader"
    p["smi_xml"] = "nvidia-smi -q -x"
    p["topo"] = "nvidia-smi topo -m"
    p["gpu_services"] = "systemctl show -p Id,UnitFileState,ActiveState,SubState " + " ".join(gpu_services(m))
    p["dcgm"] = (f"dcgmi diag -r {level} -j", DCGM_TIMEOUT_S[level])
    if ctx.at_least("burn-in"):
        find = " || ".join(f"command -v {c}" for c in NCCL_TESTS)
        p["nccl"] = (f'bin=$({find}) && "$bin" -b 8 -e 8G -f 2 -g {m.gpu_count}', NCCL_TIMEOUT_S)
    return p


def _hardware(ctx: Context) -> None:
    if ctx.site.emulated:
        pytest.skip(EMULATED_NO_GPU)


def _smi(ctx: Context, m: Machine):
    out = ctx.probe(m)["smi_csv"]
    assert out.ok, f"site file says {m.gpu_count} x {m.gpu_model}, nvidia-smi: {out.describe()}"
    gpus = parse_smi_csv(out.out)
    assert gpus, f"site file says {m.gpu_count} x {m.gpu_model}, nvidia-smi lists no GPU"
    return gpus


@check("gpu.stack_report", applies=gpu_host)
def check_stack_report(ctx: Context, machine: Machine, measure) -> None:
    out = ctx.probe(machine)["gpu_report"]
    assert out.ok, f"no nvidia_gpu role report: {out.describe()} (run aifactory configure)"
    report = json.loads(out.out)
    want = {"model": machine.gpu_model, "count": machine.gpu_count}
    got = {"model": report["expected_gpus"]["model"], "count": int(report["expected_gpus"]["count"])}
    measure(
        f"branch {report['driver_branch']}, {got['count']} x {got['model']}", f"branch {pinned_branch(ctx)}"
    )
    assert got == want, f"the role configured {got}, the site file says {want}: re-run aifactory configure"
    assert str(report["driver_branch"]) == pinned_branch(ctx), f"configured branch {report['driver_branch']}"
    if not ctx.site.emulated:
        assert report["verified"], f"the role could not verify: {'; '.join(report['unverified'])}"


@check("gpu.driver", applies=gpu_host)
def check_driver(ctx: Context, machine: Machine, measure) -> None:
    _hardware(ctx)
    versions = sorted({g.driver_version for g in _smi(ctx, machine)})
    measure(",".join(versions), f"{pinned_branch(ctx)}.*")
    assert all(v.split(".")[0] == pinned_branch(ctx) for v in versions), (
        f"driver {', '.join(versions)} is not on the pinned branch {pinned_branch(ctx)}"
    )


@check("gpu.inventory", applies=gpu_host)
def check_inventory(ctx: Context, machine: Machine, measure) -> None:
    _hardware(ctx)
    gpus = _smi(ctx, machine)
    model = (machine.gpu_model or "").upper()
    names = sorted({g.name for g in gpus})
    measure(f"{len(gpus)} x {', '.join(names)}", f"{machine.gpu_count} x {machine.gpu_model}")
    assert len(gpus) == machine.gpu_count, (
        f"nvidia-smi sees {len(gpus)} GPUs, the site file says {machine.gpu_count}"
    )
    wrong = [f"GPU{g.index} {g.name}" for g in gpus if not re.search(rf"\b{model}\b", g.name.upper())]
    assert not wrong, f"not {machine.gpu_model}: {', '.join(wrong)}"


@check("gpu.persistence", applies=gpu_host)
def check_persistence(ctx: Context, machine: Machine, measure) -> None:
    _hardware(ctx)
    gpus = _smi(ctx, machine)
    off = [f"GPU{g.index}" for g in gpus if not g.persistence]
    measure(f"{len(gpus) - len(off)}/{len(gpus)} on", "all on")
    assert not off, f"persistence mode off on {', '.join(off)}"


@check("gpu.ecc", applies=gpu_host)
def check_ecc(ctx: Context, machine: Machine, measure) -> None:
    _hardware(ctx)
    out = ctx.probe(machine)["smi_xml"]
    assert out.ok, f"nvidia-smi -q -x: {out.describe()}"
    gpus = parse_smi_xml(out.out).gpus
    errors = {g.index: (g.uncorrected_volatile or 0) + (g.uncorrected_aggregate or 0) for g in gpus}
    measure(sum(errors.values()), 0)
    bad = [f"GPU{i}: {n}" for i, n in errors.items() if n]
    assert not bad, f"uncorrectable ECC errors (volatile + aggregate): {', '.join(bad)}"
    disabled = [f"GPU{g.index}" for g in gpus if g.ecc_enabled is False]
    assert not disabled, f"ECC disabled on {', '.join(disabled)}"
    remap = [f"GPU{g.index}" for g in gpus if g.remapping_failed]
    assert not remap, f"row remapping failure on {', '.join(remap)}: the GPU needs service"


@check("gpu.nvlink", applies=gpu_host)
def check_nvlink(ctx: Context, machine: Machine, measure) -> None:
    _hardware(ctx)
    want = NVSWITCH_LINK.get(machine.gpu_model or "") if machine.gpu_count == 8 else None
    if want is None or not GPU_MODELS[machine.gpu_model or ""].nvlink:
        pytest.skip(f"no NVSwitch topology expected for {machine.gpu_count} x {machine.gpu_model}")
    out = ctx.probe(machine)["topo"]
    assert out.ok, f"nvidia-smi topo -m: {out.describe()}"
    links = parse_topo_matrix(out.out)
    pairs = [(i, j) for i in range(machine.gpu_count) for j in range(machine.gpu_count) if i != j]
    bad = [f"GPU{i}-GPU{j}={links.get((i, j), 'missing')}" for i, j in pairs if links.get((i, j)) != want]
    measure(f"{len(pairs) - len(bad)}/{len(pairs)} pairs {want}", want)
    assert not bad, f"GPU pairs not on {want}: {', '.join(bad[:8])}" + (" ..." if len(bad) > 8 else "")


@check("gpu.services", applies=gpu_host)
def check_gpu_services(ctx: Context, machine: Machine, measure) -> None:
    _hardware(ctx)
    units = parse_systemctl_show(ctx.probe(machine)["gpu_services"].out)
    want = gpu_services(machine)
    measure({s: units.get(s, {}).get("ActiveState", "?") for s in want})
    bad = [
        f"{s} is {units.get(s, {}).get('ActiveState', 'missing')}"
        for s in want
        if units.get(s, {}).get("ActiveState") != "active"
    ]
    assert not bad, "; ".join(bad)


@check("gpu.dcgm_diag", applies=gpu_host)
def check_dcgm(ctx: Context, machine: Machine, measure) -> None:
    _hardware(ctx)
    level = DCGM_LEVEL[ctx.level]
    out = ctx.probe(machine)["dcgm"]
    try:
        results = parse_dcgmi_diag(out.out)
    except ParseError as e:
        raise AssertionError(f"dcgmi diag -r {level}: {out.describe() if not out.ok else e}") from e
    failed = [r for r in results if r.status == "fail"]
    measure(f"level {level}: {len(results) - len(failed)}/{len(results)} results not failed", "0 failed")
    assert not failed, "dcgmi diag failed: " + "; ".join(
        f"{r.test} GPU {r.gpu}: {' / '.join(r.messages) or 'fail'}" for r in failed
    )


@check("gpu.nccl_all_reduce", applies=gpu_host)
def check_nccl(ctx: Context, machine: Machine, measure) -> None:
    if not ctx.at_least("burn-in"):
        pytest.skip(f"{ctx.level} level: NCCL bandwidth runs at burn-in")
    _hardware(ctx)
    platform = f"{machine.gpu_count}x{machine.gpu_model}"
    threshold = ctx.site.validation.nccl_min_busbw_gbps.get(platform)
    if threshold is None:
        pytest.skip(f"no validation.nccl_min_busbw_gbps for {platform} in the site file")
    out = ctx.probe(machine)["nccl"]
    assert out.ok, f"all_reduce_perf: {out.describe()}"
    result = parse_all_reduce_perf(out.out)
    # The reference figures (420 GB/s for 8 x H100/H200 over NVLink) are the bus bandwidth of large
    # messages; the average over all sizes from 8 B is dominated by latency.
    measure(result.max_busbw_gbps, threshold)
    assert result.wrong == 0, f"all_reduce_perf reported {result.wrong} wrong results"
    assert result.max_busbw_gbps >= threshold, (
        f"bus bandwidth {result.max_busbw_gbps} GB/s at 8 GB (average {result.avg_busbw_gbps}) is below "
        f"the {platform} threshold {threshold} GB/s"
    )
