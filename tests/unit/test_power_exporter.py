"""The Redfish power exporter (playbooks/roles/power_exporter) against real emulated BMCs."""

import importlib.util
import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from aifactory.site import power
from sandbox import bmc
from tests.conftest import REPO
from tests.unit.emulated_bmcs import exporter_bmcs, free_port, generated_site

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
        "squeue": None,
        "feeds": [
            {"name": f.name, "watts": f.kw * 1000, "machines": list(f.machines)} for f in site.power.feeds
        ],
        "bmcs": exporter_bmcs(site.machines, USER, PASSWORD),
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


class StandInBmc:
    """A BMC as the governor sees it: its last reading, and the limits it was given."""

    def __init__(self, machine: str, draw: float, idle_w: float = 1000, site_limit_w: int | None = None):
        self.machine, self.idle_w, self.site_limit_w, self.up = machine, idle_w, site_limit_w, 1
        self.reading = {"PowerConsumedWatts": draw, "PowerLimit": {"LimitInWatts": site_limit_w}}
        self.limits: list[int | None] = []

    def set_limit(self, watts: int | None) -> None:
        self.limits.append(watts)
        self.reading["PowerLimit"]["LimitInWatts"] = watts
        if watts is not None:
            self.reading["PowerConsumedWatts"] = min(self.reading["PowerConsumedWatts"], watts)


def test_the_governor_lowers_limits_over_the_hold_share_and_gives_them_back_under_release():
    mod = load_exporter()
    busy, calm, idle = StandInBmc("gpu-01", 5000), StandInBmc("gpu-02", 2000), StandInBmc("gpu-03", 1000)
    bmcs = {b.machine: b for b in (busy, calm, idle)}
    feed = {"name": "feed-b", "watts": 25000, "budget_watts": 8000, "machines": list(bmcs)}
    lines: list[str] = []
    gov = mod.Governor([feed], {"at": 0.9, "release": 0.8}, bmcs, lines.append)
    gov.step()  # 8,000 W: over 90% of 8,000 W; aim at 85% = 6,800 W, 1,200 W off 5,000 W above idle
    assert busy.limits == [4040] and calm.limits == [1760] and idle.limits == []  # each gives 24%
    assert gov.lowered == {"feed-b": {"gpu-01": 4040, "gpu-02": 1760}}
    assert "feed-b: draw 8000 W over 90% of its budget 8000 W: lowering gpu-01 to 4040 W" in lines[0]
    gov.step()  # 6,800 W: between release and hold, nothing changes
    assert busy.limits == [4040] and gov.actions == {("feed-b", "lowered"): 2}
    busy.reading["PowerConsumedWatts"] = 3000  # the work winds down: 5,760 W < 6,400 W
    gov.step()
    assert busy.limits == [4040, None] and calm.limits == [1760, None] and gov.lowered["feed-b"] == {}
    assert gov.actions[("feed-b", "released")] == 2 and "giving back" in lines[-1]


def test_the_governor_never_goes_below_idle_or_above_the_site_limit_and_adopts_its_own_limits():
    mod = load_exporter()
    capped = StandInBmc("gpu-01", 3000, idle_w=1000, site_limit_w=2500)
    capped.reading["PowerConsumedWatts"] = 2500
    left = StandInBmc("gpu-02", 1500, idle_w=1000)
    left.reading["PowerLimit"]["LimitInWatts"] = 1500  # lowered by an earlier run of the exporter
    bmcs = {b.machine: b for b in (capped, left)}
    gov = mod.Governor(
        [{"name": "f", "watts": 10000, "budget_watts": 2000, "machines": list(bmcs)}], {}, bmcs, print
    )
    gov.step()  # 4,000 W against 1,800 W: every machine down to its idle figure
    assert capped.limits == [1000] and left.limits == [1000]
    capped.reading["PowerConsumedWatts"] = left.reading["PowerConsumedWatts"] = 700  # off-peak: released
    gov.step()
    assert capped.limits[-1] == 2500 and left.limits[-1] is None  # the site's limit, or none


def test_the_exporter_sets_and_clears_a_node_limit_through_the_emulated_bmc(site_bmcs):
    site, _ = site_bmcs
    mod = load_exporter()
    gpu = site.machine("gpu-0001")
    bmc.set_power(gpu, USER, PASSWORD, "On")
    assert bmc.wait_for_power(gpu, USER, PASSWORD, "On", timeout=10)
    exporter = mod.Exporter(config_of(site), log=lambda _: None)
    exporter.poll()
    (one,) = [b for b in exporter.bmcs if b.machine == "gpu-0001"]
    span = power.machine_power(site.power, gpu)
    one.set_limit(span.idle_w + 100)  # the real PATCH, as the governor sends it
    exporter.poll()
    assert one.reading["PowerLimit"]["LimitInWatts"] == span.idle_w + 100
    with pytest.raises(urllib.error.HTTPError):
        one.set_limit(span.idle_w - 1)  # the emulated BMC refuses a limit under idle, as ours never sends
    one.set_limit(None)
    exporter.poll()
    assert one.reading["PowerLimit"]["LimitInWatts"] is None


def test_slurm_job_state_per_state_and_gpus_per_account_from_squeue(tmp_path):
    mod = load_exporter()
    squeue = tmp_path / "squeue"  # what `squeue -h -o '%T|%a|%D|%b'` prints
    squeue.write_text(
        "#!/bin/sh\nprintf 'RUNNING|team-a|2|gres/gpu:h100:4\\nRUNNING|team-a|1|gres/gpu:2\\n"
        "PENDING|team-b|1|gres/gpu:8\\nRUNNING|team-b|1|N/A\\n'\n"
    )
    squeue.chmod(0o755)
    exporter = mod.Exporter({"interval": 1, "bmcs": [], "squeue": [str(squeue)]}, log=lambda _: None)
    exporter.poll()
    got = samples(exporter.metrics())
    assert (
        got['aifactory_slurm_jobs{state="RUNNING"}'] == 3
        and got['aifactory_slurm_jobs{state="PENDING"}'] == 1
    )
    assert got['aifactory_slurm_gpus_allocated{account="team-a"}'] == 2 * 4 + 2
    assert got['aifactory_slurm_gpus_allocated{account="team-b"}'] == 0
    squeue.write_text("#!/bin/sh\necho 'slurmctld down' >&2; exit 1\n")
    exporter.poll()
    assert "\naifactory_slurm_up 0\n" in exporter.metrics()
