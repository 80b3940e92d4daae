"""The emulated hardware end to end, with real clients: sushy for Redfish, ssh for the hosts."""

import subprocess
import time

import pytest
import sushy
import yaml

from aifactory import cli, credentials
from aifactory.site.validate import load_site
from sandbox import bmc, hosts, localsite, network, ssh

pytestmark = pytest.mark.site


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


def test_up_gives_powered_off_machines_behind_bmcs(site_up):
    rows = localsite.status(site_up)
    assert [r["machine"] for r in rows] == [m.name for m in site_up.machines]
    assert {(r["power"], r["host"], r["health"]) for r in rows} == {("Off", "stopped", "off")}
    assert network.bridge_present("aftest0") and network.guard_present()
    inv = yaml.safe_load(localsite.inventory_path(site_up).read_text())
    assert set(inv["all"]["children"]["slurm_pool"]["hosts"]) == {"gpu-01", "gpu-02", "gpu-03", "gpu-04"}
    assert inv["all"]["hosts"]["gpu-05"]["gpu_count"] == 8


def test_bmc_power_button_boots_and_stops_the_host(site_up):
    system = _system(site_up, "gpu-01")
    assert system.power_state == sushy.POWER_STATE_OFF
    system.reset_system(sushy.RESET_ON)
    m = site_up.machine("gpu-01")
    assert localsite.wait_for_ssh(site_up, m, timeout=60) == "running"
    r = ssh.run(site_up, "gpu-01", "hostname; ip -4 -o addr show host0")
    assert r.stdout.splitlines()[0] == "gpu-01" and m.address in r.stdout
    row = _row(site_up, "gpu-01")
    assert (row["power"], row["host"], row["health"]) == ("On", "running", "ok")

    system.refresh()
    system.reset_system(sushy.RESET_GRACEFUL_SHUTDOWN)
    _wait(lambda: not hosts.is_running(site_up, "gpu-01"), 30, "gpu-01 to stop")
    row = _row(site_up, "gpu-01")
    assert (row["power"], row["host"], row["health"]) == ("Off", "stopped", "off")
    assert ssh.run(site_up, "gpu-01", "true", timeout=15).returncode != 0


def test_up_again_is_idempotent_and_keeps_running_hosts(site_up):
    _system(site_up, "gpu-02").reset_system(sushy.RESET_ON)
    localsite.wait_for_ssh(site_up, site_up.machine("gpu-02"), timeout=60)
    boot_id = ssh.run(site_up, "gpu-02", "cat /proc/sys/kernel/random/boot_id").stdout
    start = time.monotonic()
    assert localsite.up(site_up) == 0
    assert time.monotonic() - start < 30
    assert ssh.run(site_up, "gpu-02", "cat /proc/sys/kernel/random/boot_id").stdout == boot_id
    _system(site_up, "gpu-02").reset_system(sushy.RESET_FORCE_OFF)
    _wait(lambda: not hosts.is_running(site_up, "gpu-02"), 30, "gpu-02 to be forced off")


def test_status_command_prints_one_table(site_up, capsys):
    assert cli.main(["site", "status", "--site", str(site_up.path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:3] == ["MACHINE", "ROLES", "POOL"]
    assert len(out) == 1 + len(site_up.machines)


def test_down_leaves_nothing(tmp_path):
    """A small second site through its whole life: up, a host booted by its BMC, down."""
    from tests.site.conftest import site_yaml

    path = tmp_path / "cimini.yaml"
    path.write_text(site_yaml("cimini", 1, machines=2))
    site = load_site(path)
    assert localsite.up(site) == 0
    try:
        localsite.power_on_all(site, timeout=60)
        assert {r["health"] for r in localsite.status(site)} == {"ok"}
        cgroup_pids = hosts.cgroup_pids(hosts.cgroup_dirs(site))
        assert len(cgroup_pids) > 4  # nspawn + systemd + journald + sshd... per host
    finally:
        assert localsite.down(site) == 0
    assert localsite.leftovers(site) == []
    assert not network.bridge_present("aftest1")
    for pid in cgroup_pids:
        assert subprocess.run(["kill", "-0", str(pid)], capture_output=True).returncode != 0
