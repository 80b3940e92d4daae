"""The GPU acceptance checks on this machine's real GPUs (marker `gpu`; skipped without nvidia-smi).

The machine describes itself (GPU count and model from nvidia-smi) as one machine of a real
(non-emulated) site; the probes run here with sh instead of over ssh, then every GPU check runs.
Prints each check's status, measured value and threshold (for the notes of a GPU run) and writes
them to $AIFACTORY_GPU_REPORT when set. Level: $AIFACTORY_GPU_LEVEL (default quick).

A borrowed GPU machine was not configured by our nvidia_gpu role (driver branch, persistence
mode, DCGM may differ or be absent), so by default only the inventory must pass and every other
check must come to a verdict with a reason: a report. On a machine our roles configured, set
AIFACTORY_GPU_STRICT=1: then every check must pass or be skipped with a reason.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from aifactory.site.gpus import GPU_MODELS
from aifactory.site.validate import load_site
from aifactory.validate import probe
from aifactory.validate.checks import gpu
from aifactory.validate.context import Context
from tests.conftest import REPO

pytestmark = pytest.mark.gpu

CHECKS = [
    gpu.check_driver,
    gpu.check_inventory,
    gpu.check_persistence,
    gpu.check_ecc,
    gpu.check_nvlink,
    gpu.check_gpu_services,
    gpu.check_dcgm,
    gpu.check_nccl,
]


def this_machine_model() -> tuple[str, int]:
    if shutil.which("nvidia-smi") is None:
        pytest.skip("no nvidia-smi on this machine: no NVIDIA GPU to accept")
    names = subprocess.run(
        ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
        capture_output=True,
        text=True,
        check=False,
    )
    if names.returncode != 0 or not names.stdout.strip():
        pytest.skip(f"nvidia-smi sees no GPU: {names.stdout.strip()} {names.stderr.strip()}")
    lines = names.stdout.strip().splitlines()
    model = next(
        (m for m in sorted(GPU_MODELS, key=len, reverse=True) if m.upper() in lines[0].upper()), None
    )
    if model is None:
        pytest.skip(f"{lines[0]} is none of the site models {', '.join(GPU_MODELS)}")
    return model, len(lines)


def test_gpu_checks_on_this_machine():
    model, count = this_machine_model()
    site = load_site(REPO / "sites" / "example-groningen.yaml")
    first = next(m for m in site.machines if m.gpu_count)
    m = dataclasses.replace(first, name="this-machine", gpu_model=model, gpu_count=count)
    site = dataclasses.replace(site, machines=(m,))
    ctx = Context(site, os.environ.get("AIFACTORY_GPU_LEVEL", "quick"), [m], Path("-"), Path("-"))
    commands = gpu.probes(ctx, m)
    commands.pop("gpu_report", None)  # written by the nvidia_gpu role, not on an unconfigured machine
    out = subprocess.run(["sh", "-c", probe.script(commands)], capture_output=True, text=True, check=False)
    ctx.probes[m.name] = probe.HostProbe(m.name, probe.parse(out.stdout))
    records = []
    for fn in CHECKS:
        measured: dict = {}
        try:
            fn(ctx, m, lambda value, threshold=None, d=measured: d.update(value=value, threshold=threshold))
            status, msg = "passed", ""
        except AssertionError as e:
            status, msg = "failed", str(e)
        except pytest.skip.Exception as e:
            status, msg = "skipped", str(e.msg)
        records.append({"check": fn.aif_check, "status": status, **measured, "message": msg})
        value, threshold = measured.get("value"), measured.get("threshold")
        print(f"{fn.aif_check:22} {status:8} value={value!r} threshold={threshold!r} {msg}")
    if os.environ.get("AIFACTORY_GPU_REPORT"):
        Path(os.environ["AIFACTORY_GPU_REPORT"]).write_text(json.dumps(records, indent=1, default=str))
    by = {r["check"]: r for r in records}
    # The machine was described from nvidia-smi itself: the inventory must agree, and every check
    # must have come to a verdict with a reason.
    assert by["gpu.inventory"]["status"] == "passed", by["gpu.inventory"]
    assert all(r["status"] == "passed" or r["message"] for r in records), records
    if os.environ.get("AIFACTORY_GPU_STRICT") == "1":
        failed = [r for r in records if r["status"] == "failed"]
        assert not failed, failed
