"""The Redfish power exporter (playbooks/roles/power_exporter) against real emulated BMCs."""

import importlib.util
import json
import re
import subprocess
import sys
import time
import urllib.request

import pytest

from aifactory.site import power
from sandbox import bmc
from tests.conftest import REPO
from tests.unit.emulated_bmcs import free_port, generated_site

pytestmark = pytest.mark.unit

SCRIPT = REPO / "playbooks" / "roles" / "power_exporter" / "files" / "aifactory-power-exporter.py"
USER, PASSWORD = "admin", "bmc-secret"


def load_exporter():
    spec = importlib.util.spec_from_file_location("power_exporter", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def site_bmcs(tmp_path):
    """A generated site (head, control plane, two GPU servers sharing a BMC) on free ports."""
    site = generated_site(tmp_path, "pexp", 2, machines_per_bmc=2)
    state = tmp_path / "state"
    bmc.start_bmcs(site, state, USER, PASSWORD, hook=[])
    try:
        yield site, state
    finally:
        bmc.stop_bmcs(state)


def config_of(site) -> dict:
    return {
        "interval": 1,
        "feeds": [
            {"name": f.name, "watts": f.kw * 1000, "machines": list(f.machines)} for f in site.power.feeds
        ],
        "bmcs": [
            {
                "machine": m.name,
                "endpoint": m.bmc.endpoint,
                "system_id": m.bmc.system_id,
                "username": USER,
                "password": PASSWORD,
                "verify": True,
            }
            for m in site.machines
        ],
    }


def samples(text: str) -> dict[str, float]:
    return {k: float(v) for k, v in re.findall(r"^(\w+\{[^}]*\}) (\S+)$", text, re.M)}


def test_every_bmcs_draw_feed_sums_energy_and_a_bmc_that_is_down(site_bmcs):
    site, state = site_bmcs
    mod = load_exporter()
    gpu = site.machine("gpu-0001")
    bmc.set_power(gpu, USER, PASSWORD, "On")  # no hook: On at once; the others stay Off
    assert bmc.wait_for_power(gpu, USER, PASSWORD, "On", timeout=10)
    exporter = mod.Exporter(config_of(site))
    port = free_port()
    server = mod.serve(exporter, "127.0.0.1", port)
    try:
        exporter.poll()
        time.sleep(1)
        exporter.poll()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            got = samples(r.read().decode())
    finally:
        server.shutdown()
    idle = power.machine_power(site.power, gpu).idle_w  # no host behind it: idle while on
    assert got['aifactory_node_power_watts{machine="gpu-0001"}'] == idle
    assert got['aifactory_node_power_watts{machine="gpu-0002"}'] == 0  # off
    assert (
        got['aifactory_node_power_capacity_watts{machine="gpu-0001"}']
        == power.machine_power(site.power, gpu).max_w
    )
    assert all(got[f'aifactory_bmc_up{{machine="{m.name}"}}'] == 1 for m in site.machines)
    assert 0.9 * idle < got['aifactory_node_energy_joules_total{machine="gpu-0001"}'] < 1.5 * idle  # ~1 s
    feed = next(f for f in site.power.feeds if "gpu-0001" in f.machines)
    assert got[f'aifactory_feed_power_watts{{feed="{feed.name}"}}'] == idle
    assert got[f'aifactory_feed_rating_watts{{feed="{feed.name}"}}'] == feed.kw * 1000
    assert 'aifactory_node_power_limit_watts{machine="gpu-0001"}' not in got  # none set

    bmc.stop_bmcs(state)  # every BMC stops answering
    exporter.poll()
    down = samples(exporter.metrics())
    assert all(down[f'aifactory_bmc_up{{machine="{m.name}"}}'] == 0 for m in site.machines)
    assert not any(k.startswith("aifactory_node_power_watts") for k in down)
    assert down[f'aifactory_feed_power_watts{{feed="{feed.name}"}}'] == 0


def test_the_exporter_runs_as_a_program_with_its_config(site_bmcs, tmp_path):
    site, _ = site_bmcs
    config = tmp_path / "power-exporter.json"
    config.write_text(json.dumps(config_of(site)))
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), "--config", str(config), "--listen", f"127.0.0.1:{port}"]
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                    got = samples(r.read().decode())
                if got.get('aifactory_bmc_up{machine="head-01"}') == 1:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "no reading within 20 s"
            time.sleep(0.3)
    finally:
        proc.terminate()
        proc.wait()
