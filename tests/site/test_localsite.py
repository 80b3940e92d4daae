"""The emulated hardware end to end, with real clients: sushy for Redfish, ssh for the hosts."""

import time
from pathlib import Path

import pytest
import sushy
import yaml

from aifactory import cli, credentials
from aifactory.site.validate import load_site
from sandbox import bmc, hosts, localsite, network, ssh
from tests.site.conftest import clear_leftovers, site_yaml, skip_unless_root

pytestmark = pytest.mark.site


@pytest.fixture(scope="module")
def hw(tmp_path_factory):
    """A three-machine emulated site (bridge aftest1) for the hardware tests; taken down by the last."""
    skip_unless_root()
    path = tmp_path_factory.mktemp("cihw") / "cihw.yaml"
    path.write_text(site_yaml("cihw", 1, machines=3))
    site = load_site(path)
    clear_leftovers(site)
    try:
        assert localsite.up(site) == 0
        yield site
    finally:
        localsite.down(site)


def _system(site, name):
    m = site.machine(name)
    creds = credentials.load(m.bmc.credentials)
    return bmc.system(m, creds.username, creds.password)


def _row(site, name):
    return next(r for r in localsite.status(site) if r["machine"] == name)


def _wait(pred, timeout=60, what=""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def test_up_gives_powered_off_machines_behind_bmcs(hw):
    rows = localsite.status(hw)
    assert [r["machine"] for r in rows] == [m.name for m in hw.machines]
    assert {(r["power"], r["host"], r["health"]) for r in rows} == {("Off", "stopped", "off")}
    assert network.bridge_present("aftest1") and network.guard_present()
    inv = yaml.safe_load(localsite.inventory_path(hw).read_text())
    assert set(inv["all"]["children"]["slurm_pool"]["hosts"]) == {"gpu-01", "gpu-02"}
    assert inv["all"]["children"]["head"]["hosts"] == {"head-01": None}
    assert inv["all"]["hosts"]["gpu-02"]["gpu_count"] == 8


def test_bmc_power_button_boots_and_stops_the_host(hw):
    system = _system(hw, "gpu-01")
    assert system.power_state == sushy.POWER_STATE_OFF
    system.reset_system(sushy.RESET_ON)
    m = hw.machine("gpu-01")
    assert localsite.wait_for_ssh(hw, m, timeout=60) == "running"
    r = ssh.run(hw, "gpu-01", "hostname; ip -4 -o addr show host0")
    assert r.stdout.splitlines()[0] == "gpu-01" and m.address in r.stdout
    row = _row(hw, "gpu-01")
    assert (row["power"], row["host"], row["health"]) == ("On", "running", "ok")

    system.refresh()
    system.reset_system(sushy.RESET_GRACEFUL_SHUTDOWN)
    _wait(lambda: _row(hw, "gpu-01")["power"] == "Off", 60, "gpu-01's BMC to report Off")
    row = _row(hw, "gpu-01")
    assert (row["power"], row["host"], row["health"]) == ("Off", "stopped", "off")
    assert ssh.run(hw, "gpu-01", "true", timeout=15).returncode != 0


def test_up_again_is_idempotent_and_keeps_running_hosts(hw):
    _system(hw, "gpu-02").reset_system(sushy.RESET_ON)
    localsite.wait_for_ssh(hw, hw.machine("gpu-02"), timeout=60)
    boot_id = ssh.run(hw, "gpu-02", "cat /proc/sys/kernel/random/boot_id").stdout
    assert localsite.up(hw) == 0
    assert ssh.run(hw, "gpu-02", "cat /proc/sys/kernel/random/boot_id").stdout == boot_id
    _system(hw, "gpu-02").reset_system(sushy.RESET_FORCE_OFF)
    _wait(lambda: _row(hw, "gpu-02")["power"] == "Off", 60, "gpu-02's BMC to report Off")


def test_status_command_prints_one_table(hw, capsys):
    assert cli.main(["site", "status", "--site", str(hw.path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:3] == ["MACHINE", "ROLES", "POOL"]
    assert len(out) == 1 + len(hw.machines)


def test_down_leaves_nothing(hw):
    """Every host booted by its BMC, then down: no process, mount, cgroup, bridge or route left."""
    localsite.power_on_all(hw, timeout=60)
    assert {r["health"] for r in localsite.status(hw)} == {"ok"}
    cgroup_pids = hosts.cgroup_pids(hosts.cgroup_dirs(hw))
    assert len(cgroup_pids) > 4 * len(hw.machines)  # nspawn, systemd, journald, sshd... per host
    assert localsite.down(hw) == 0
    assert localsite.leftovers(hw) == []
    assert not network.bridge_present("aftest1")
    # A process that already exited may linger as a zombie until its parent (possibly this test
    # process) reaps it; only one still running counts.
    assert [pid for pid in cgroup_pids if _running(pid)] == []


def _running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
