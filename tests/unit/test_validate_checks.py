"""The GPU acceptance checks and the probe transport, with recorded outputs instead of hardware.

The check functions are called directly with a Context whose host probes hold recorded outputs of
an 8 x H100 HGX machine: a healthy machine passes every check, each recorded fault fails the check
that is about it, and a site file that says GPUs where none respond fails instead of passing.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from aifactory.site.validate import load_site
from aifactory.validate import probe
from aifactory.validate.checks import gpu
from aifactory.validate.context import EMULATED_NO_GPU, Context
from aifactory.validate.probe import HostProbe, Output
from tests.conftest import REPO

pytestmark = pytest.mark.unit
DATA = Path(__file__).parent / "data"

CHECKS = {
    "gpu.driver": gpu.check_driver,
    "gpu.inventory": gpu.check_inventory,
    "gpu.persistence": gpu.check_persistence,
    "gpu.ecc": gpu.check_ecc,
    "gpu.nvlink": gpu.check_nvlink,
    "gpu.dcgm_diag": gpu.check_dcgm,
    "gpu.nccl_all_reduce": gpu.check_nccl,
}


def healthy() -> dict[str, Output]:
    ok = (
        "Id=nvidia-persistenced.service\nActiveState=active\n\nId=nvidia-dcgm.service\nActiveState=active\n\n"
    )
    ok += "Id=nvidia-fabricmanager.service\nActiveState=active\n"
    return {
        "smi_csv": Output(0, (DATA / "nvidia-smi-query-gpu-8xh100.csv").read_text()),
        "smi_xml": Output(0, (DATA / "nvidia-smi-q-x-8xh100.xml").read_text()),
        "topo": Output(0, (DATA / "nvidia-smi-topo-m-8xh100.txt").read_text()),
        "dcgm": Output(0, (DATA / "dcgmi-diag-r2-8xh100.json").read_text()),
        "nccl": Output(0, (DATA / "all_reduce_perf-8xh100.txt").read_text()),
        "gpu_services": Output(0, ok),
    }


@pytest.fixture(scope="module")
def real_site():
    site = load_site(REPO / "sites" / "example-groningen.yaml")
    assert site.validation.nccl_min_busbw_gbps["8xh100"] == 420
    return site


def run(site, outputs: dict[str, Output], name: str, level: str = "burn-in", emulated: bool | None = None):
    """Run one check on the site's first GPU machine; return (status, message, measured)."""
    if emulated is not None:
        import dataclasses

        site = dataclasses.replace(site, emulated=emulated)
    m = next(m for m in site.machines if m.gpu_count == 8 and m.gpu_model == "h100")
    ctx = Context(site, level, [m], Path("/nonexistent"), Path("/nonexistent"))
    ctx.probes[m.name] = HostProbe(m.name, outputs)
    measured: dict = {}
    try:
        CHECKS[name](ctx, m, lambda value, threshold=None: measured.update(value=value, threshold=threshold))
    except AssertionError as e:
        return "failed", str(e), measured
    except pytest.skip.Exception as e:
        return "skipped", str(e.msg), measured
    return "passed", "", measured


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_a_healthy_hgx_h100_passes(real_site, name):
    status, msg, measured = run(real_site, healthy(), name)
    assert status == "passed", msg
    assert measured.get("value") is not None


def test_measured_values(real_site):
    assert run(real_site, healthy(), "gpu.nccl_all_reduce")[2] == {"value": 460.28, "threshold": 420.0}
    assert run(real_site, healthy(), "gpu.inventory")[2]["value"] == "8 x NVIDIA H100 80GB HBM3"
    assert run(real_site, healthy(), "gpu.driver")[2] == {"value": "570.172.08", "threshold": "570.*"}
    assert run(real_site, healthy(), "gpu.nvlink")[2]["value"] == "56/56 pairs NV18"


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_emulated_site_skips_with_the_reason_never_passes(real_site, name):
    status, msg, _ = run(real_site, {}, name, emulated=True)
    assert status == "skipped"
    assert msg == EMULATED_NO_GPU or "burn-in" in msg


@pytest.mark.parametrize("name", ["gpu.driver", "gpu.inventory", "gpu.persistence"])
def test_gpus_in_the_site_file_but_none_respond_fails(real_site, name):
    gone = healthy() | {
        "smi_csv": Output(9, "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.")
    }
    status, msg, _ = run(real_site, gone, name)
    assert status == "failed" and "site file says 8 x h100" in msg and "couldn't communicate" in msg
    status, msg, _ = run(
        real_site, healthy() | {"smi_csv": Output(127, "sh: 1: nvidia-smi: not found")}, name
    )
    assert status == "failed" and "command not found" in msg


def csv_with(edit) -> dict[str, Output]:
    rows = (DATA / "nvidia-smi-query-gpu-8xh100.csv").read_text().splitlines()
    return healthy() | {"smi_csv": Output(0, "\n".join(edit(rows)) + "\n")}


def test_faults_fail_their_check(real_site):
    # A GPU fell off the bus.
    status, msg, _ = run(real_site, csv_with(lambda r: r[:7]), "gpu.inventory")
    assert status == "failed" and "sees 7 GPUs" in msg
    # Another driver branch.
    status, msg, _ = run(
        real_site, csv_with(lambda r: [x.replace("570.172.08", "550.127.05") for x in r]), "gpu.driver"
    )
    assert status == "failed" and "not on the pinned branch 570" in msg
    # Persistence mode off on GPU 6.
    status, msg, _ = run(
        real_site,
        csv_with(
            lambda r: [
                x.replace("Enabled, Enabled", "Disabled, Enabled") if x.startswith("6,") else x for x in r
            ]
        ),
        "gpu.persistence",
    )
    assert status == "failed" and "GPU6" in msg
    # Another model.
    status, msg, _ = run(
        real_site, csv_with(lambda r: [x.replace("H100 80GB HBM3", "H200") for x in r]), "gpu.inventory"
    )
    assert status == "failed" and "not h100" in msg
    # An uncorrectable ECC error on GPU 1.
    xml = (DATA / "nvidia-smi-q-x-8xh100.xml").read_text()
    i = xml.index('<gpu id="00000000:2A:00.0">')
    xml = xml[:i] + xml[i:].replace("<sram_uncorrectable_secded>0<", "<sram_uncorrectable_secded>1<", 1)
    status, msg, measured = run(real_site, healthy() | {"smi_xml": Output(0, xml)}, "gpu.ecc")
    assert status == "failed" and "GPU1: 1" in msg and measured["value"] == 1
    # A degraded NVLink.
    topo = (DATA / "nvidia-smi-topo-m-8xh100.txt").read_text().replace("GPU5\t NV18", "GPU5\t NV12", 1)
    status, msg, _ = run(real_site, healthy() | {"topo": Output(0, topo)}, "gpu.nvlink")
    assert status == "failed" and "GPU5-GPU0=NV12" in msg
    # DCGM finds a bad GPU.
    dcgm = Output(226, (DATA / "dcgmi-diag-r1-dcgm4-pcie-fail.json").read_text())
    status, msg, _ = run(real_site, healthy() | {"dcgm": dcgm}, "gpu.dcgm_diag")
    assert status == "failed" and "pcie GPU 3: GPU 3 PCIe replay count 142" in msg
    # DCGM cannot run at all.
    down = Output(255, "Error: unable to establish a connection to the specified host: localhost")
    status, msg, _ = run(real_site, healthy() | {"dcgm": down}, "gpu.dcgm_diag")
    assert status == "failed" and "unable to establish a connection" in msg
    # NCCL bandwidth under the platform threshold.
    slow = (DATA / "all_reduce_perf-8xh100.txt").read_text().replace("460.28", "301.50")
    status, msg, _ = run(real_site, healthy() | {"nccl": Output(0, slow)}, "gpu.nccl_all_reduce")
    assert status == "failed" and "301.5 GB/s" in msg and "threshold 420.0" in msg


def test_nccl_only_at_burn_in_and_with_a_threshold(real_site):
    status, msg, _ = run(real_site, healthy(), "gpu.nccl_all_reduce", level="standard")
    assert status == "skipped" and "burn-in" in msg
    import dataclasses

    from aifactory.site.model import ValidationSettings

    bare = dataclasses.replace(real_site, validation=ValidationSettings())
    status, msg, _ = run(bare, healthy(), "gpu.nccl_all_reduce")
    assert status == "skipped" and "nccl_min_busbw_gbps for 8xh100" in msg


# The probe transport: one script, one line per command, run here with sh instead of over ssh.


def test_probe_script_round_trip():
    commands = {
        "multi": "printf 'a b\\n\\nc=d\\n'; echo err >&2",
        "fails": "exit 3",
        "missing": "no-such-command-aif",
        "slow": ("sleep 5", 1),
        "quotes": "echo \"it's\" '$HOME'",
    }
    out = subprocess.run(
        ["sh", "-c", probe.script(commands)], capture_output=True, text=True, check=True
    ).stdout
    got = probe.parse(out)
    assert got["multi"] == Output(0, "a b\n\nc=d\nerr")
    assert got["fails"].rc == 3
    assert got["missing"].rc == 127 and got["missing"].describe().startswith("command not found")
    assert got["slow"].rc == 124 and got["slow"].describe() == "timed out"
    assert got["quotes"].out == "it's $HOME"


def test_a_failed_probe_is_an_error_for_its_checks():
    p = HostProbe("gpu-01", error="ssh: connect to host 198.18.0.12 port 22: No route to host")
    with pytest.raises(RuntimeError, match="No route to host"):
        p["smi_csv"]
