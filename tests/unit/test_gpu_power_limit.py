"""GPU power limits (site file power.gpu_limits_w): range-checked per model by `site validate`,
lowering a feed's worst case, and checked again by the nvidia_gpu role against what each GPU's
driver reports (a stand-in nvidia-smi here: the role's own tasks run)."""

import stat

import pytest
import yaml

from aifactory.site import power
from aifactory.site.validate import ERROR, check, load_site
from tests.conftest import REPO
from tests.unit.ansible_local import run_local

pytestmark = pytest.mark.unit

LOCAL = REPO / "sites" / "local.yaml"


def site_with(tmp_path, gpu_limits):
    doc = yaml.safe_load(LOCAL.read_text())
    doc["power"]["gpu_limits_w"] = gpu_limits
    path = tmp_path / "local.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_a_gpu_limit_outside_the_models_range_is_an_error_and_one_inside_lowers_the_worst_case(tmp_path):
    found = [
        (f.level, f.path, f.message) for f in check(site_with(tmp_path, {"slurm": 150, "head-01": 300}))[0]
    ]
    assert (
        ERROR,
        "power.gpu_limits_w.slurm",
        "150 W per h100 GPU of gpu-01 is outside what the driver accepts: 200..700 W",
    ) in found
    assert (ERROR, "power.gpu_limits_w.head-01", "head-01 has no GPUs to limit") in found
    site = load_site(site_with(tmp_path, {"slurm": 400, "gpu-04": 500}))
    gpu01, gpu04, gpu05 = (site.machine(n) for n in ("gpu-01", "gpu-04", "gpu-05"))
    assert (gpu01.gpu_power_limit_w, gpu04.gpu_power_limit_w, gpu05.gpu_power_limit_w) == (400, 500, None)
    full = power.machine_power(site.power, gpu05).max_w
    assert power.worst_w(site.power, gpu01) == full - 8 * (700 - 400)


def test_the_role_refuses_a_limit_a_gpu_does_not_accept(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = (
        bin_dir / "nvidia-smi"
    )  # what `--query-gpu=index,power.limit,power.min_limit,power.max_limit` prints
    smi.write_text("#!/bin/sh\nprintf '0, 700.00, 200.00, 700.00\\n1, 700.00, 300.00, 700.00\\n'\n")
    smi.chmod(smi.stat().st_mode | stat.S_IXUSR)
    play = tmp_path / "play.yml"
    play.write_text(
        yaml.safe_dump(
            [
                {
                    "hosts": "all",
                    "gather_facts": False,
                    "vars": {"gpu_power_limit_w": 250},
                    "tasks": [
                        {
                            "ansible.builtin.import_role": {
                                "name": str(REPO / "playbooks" / "roles" / "nvidia_gpu"),
                                "tasks_from": "power_limit.yml",
                            }
                        }
                    ],
                }
            ]
        )
    )
    r = run_local(tmp_path, play, path_first=bin_dir)
    failed = [e for e in r.events if e.get("event") == "runner_on_failed"]
    assert r.status == "failed" and len(failed) == 1, r.status
    msg = failed[0]["event_data"]["res"]["results"][1]["msg"]
    assert "GPU 1 accepts 300.00..700.00 W; the site file's power.gpu_limits_w gives it 250 W" in msg
    started = [e["event_data"]["task"] for e in r.events if e.get("event") == "playbook_on_task_start"]
    assert not any("Install the unit" in t for t in started), started  # stopped before writing anything
