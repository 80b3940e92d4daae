"""The emulated BMCs (sandbox.bmc): real sushy-emulator processes on loopback, read through `sushy`.

The tests share one pair of BMCs on fixed ports (8191-8192) and run in file order: the last one
stops them. Run them in one process (not spread over xdist workers).
"""

import dataclasses
import ipaddress
import os
import subprocess
import time
from pathlib import Path

import pytest
import requests
import sushy

from aifactory.bmcs import power_reading, power_states, set_power_limit, site_status, system
from aifactory.site import power
from aifactory.site.validate import load_site
from sandbox import bmc, daemons, hosts

pytestmark = pytest.mark.site

USER, PASSWORD = "admin", "bmc-test-secret"

SITE = """
name: bmctest
emulated: true
networks:
  - {name: mgmt, cidr: 198.18.0.0/24, gateway: 198.18.0.1, bridge: afbr0}
machines:
  - name: head-01
    roles: [head]
    bmc: {endpoint: "http://127.0.0.1:8191", credentials: test-bmc}
    cpus: 4
    memory_gib: 16
    nics: [{name: host0, mac: "02:af:00:00:01:0b", address: 198.18.0.11}]
  - name: gpu-01
    roles: [gpu]
    pool: slurm
    bmc: {endpoint: "http://127.0.0.1:8192", credentials: test-bmc}
    cpus: 32
    memory_gib: 256
    gpus: {model: h100, count: 8}
    nics: [{name: host0, mac: "02:af:00:00:01:0c", address: 198.18.0.12}]
"""


@pytest.fixture(scope="module")
def bmcs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bmc")
    (tmp / "site.yaml").write_text(SITE)
    site = load_site(tmp / "site.yaml")
    calls = tmp / "hook-calls"
    hook = tmp / "hook.sh"
    # An "off" or "force-off" waits for the file `release-off` (the host stopping); `fail-off` makes
    # it fail.
    hook.write_text(
        "#!/bin/sh\n"
        f'if [ "$2" != on ]; then\n  while [ ! -e {tmp}/release-off ]; do sleep 0.1; done\n'
        f"  [ -e {tmp}/fail-off ] && exit 1\nfi\n"
        f'echo "$1 $2" >> {calls}\n'
    )
    hook.chmod(0o755)
    state = tmp / "state"
    bmc.start_bmcs(site, state, USER, PASSWORD, [str(hook)])
    try:
        yield site, state, calls
    finally:
        bmc.stop_bmcs(state)


def _pids(site, state) -> dict[str, int | None]:
    return {m.name: daemons.pid_of(bmc.bmc_dir(state, m.name) / "bmc.pid") for m in site.machines}


def _wait_for_line(path: Path, line: str, timeout: float = 20) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        lines = path.read_text().splitlines() if path.exists() else []
        if line in lines or time.monotonic() > deadline:
            return lines
        time.sleep(0.1)


def _wait_for_more_lines(path: Path, n: int, timeout: float = 20) -> int:
    """Wait until the file has more than n lines; return how many it has."""
    deadline = time.monotonic() + timeout
    while len(lines := path.read_text().splitlines()) <= n and time.monotonic() < deadline:
        time.sleep(0.1)
    return len(lines)


def test_service_root_is_public_systems_need_credentials(bmcs):
    site, _, _ = bmcs
    for machine in site.machines:
        base = f"{machine.bmc.endpoint}/redfish/v1"
        assert requests.get(f"{base}/", timeout=10).status_code == 200
        assert requests.get(f"{base}/Systems", timeout=10).status_code == 401
        assert requests.get(f"{base}/Systems", auth=(USER, "wrong"), timeout=10).status_code == 401
        assert requests.get(f"{base}/Systems", auth=(USER, PASSWORD), timeout=10).status_code == 200


def test_inventory_matches_the_site(bmcs):
    site, _, _ = bmcs
    for machine in site.machines:
        found = system(machine, USER, PASSWORD)
        assert found.name == machine.name
        assert found.memory_summary.size_gib == machine.memory_gib
        assert found.processors.summary.count == machine.cpus
        gpus = [p for p in found.processors.get_members() if p.processor_type == sushy.ProcessorType.GPU]
        assert len(gpus) == machine.gpu_count
        assert {g.model for g in gpus} == ({machine.gpu_model} if machine.gpu_count else set())
        assert [n.mac_address for n in found.ethernet_interfaces.get_members()] == [
            nic.mac for nic in machine.nics
        ]


def test_power_on_and_off_run_the_hook(bmcs):
    site, _, calls = bmcs
    gpu = site.machine("gpu-01")
    assert power_states(site, lambda m: (USER, PASSWORD)) == {"head-01": "Off", "gpu-01": "Off"}

    bmc.set_power(gpu, USER, PASSWORD, "On")
    # Applied at once, not after the stock driver's random delay.
    assert system(gpu, USER, PASSWORD).power_state == sushy.PowerState.ON
    assert power_states(site, lambda m: (USER, PASSWORD)) == {"head-01": "Off", "gpu-01": "On"}
    assert _wait_for_line(calls, "gpu-01 on") == ["gpu-01 on"]

    bmc.set_power(gpu, USER, PASSWORD, "On")  # no transition, no hook
    bmc.set_power(gpu, USER, PASSWORD, "ForceOff")
    # A real BMC says Off once the machine is off: here, once the hook has stopped the host.
    time.sleep(1)
    assert system(gpu, USER, PASSWORD).power_state == sushy.PowerState.ON
    bmc.set_power(gpu, USER, PASSWORD, "GracefulShutdown")  # already stopping: no second hook
    (calls.parent / "release-off").touch()
    # ForceOff cuts the power: the host is killed, not shut down
    assert _wait_for_line(calls, "gpu-01 force-off") == ["gpu-01 on", "gpu-01 force-off"]
    assert bmc.wait_for_power(gpu, USER, PASSWORD, "Off", timeout=20)
    assert power_states(site, lambda m: (USER, PASSWORD)) == {"head-01": "Off", "gpu-01": "Off"}
    time.sleep(0.5)
    assert calls.read_text().splitlines() == ["gpu-01 on", "gpu-01 force-off"]


def test_failed_power_off_leaves_the_machine_on(bmcs):
    site, _, calls = bmcs
    gpu = site.machine("gpu-01")
    before = len(calls.read_text().splitlines())
    bmc.set_power(gpu, USER, PASSWORD, "On")
    assert bmc.wait_for_power(gpu, USER, PASSWORD, "On", timeout=20)
    _wait_for_more_lines(calls, before)
    assert calls.read_text().splitlines()[before:] == ["gpu-01 on"]
    (calls.parent / "fail-off").touch()
    try:
        bmc.set_power(gpu, USER, PASSWORD, "ForceOff")
        time.sleep(2)  # the hook fails at once (release-off exists)
        assert system(gpu, USER, PASSWORD).power_state == sushy.PowerState.ON
    finally:
        (calls.parent / "fail-off").unlink()
    bmc.set_power(gpu, USER, PASSWORD, "ForceOff")  # a retry runs the hook again
    assert bmc.wait_for_power(gpu, USER, PASSWORD, "Off", timeout=20)


def test_restarted_bmc_restores_the_last_power_state(bmcs):
    """After the machine running the site restarts, a system that was On boots again (LastState)."""
    site, state, calls = bmcs
    gpu = site.machine("gpu-01")
    n = len(calls.read_text().splitlines())
    bmc.set_power(gpu, USER, PASSWORD, "On")
    n = _wait_for_more_lines(calls, n)
    bmc.stop_bmcs(state)
    bmc.start_bmcs(site, state, USER, PASSWORD, [str(calls.parent / "hook.sh")])
    _wait_for_more_lines(calls, n)
    time.sleep(0.5)
    assert calls.read_text().splitlines()[n:] == ["gpu-01 on"]  # head-01 was Off: no hook
    assert power_states(site, lambda m: (USER, PASSWORD)) == {"head-01": "Off", "gpu-01": "On"}
    bmc.set_power(gpu, USER, PASSWORD, "ForceOff")
    assert bmc.wait_for_power(gpu, USER, PASSWORD, "Off", timeout=20)


def test_start_again_leaves_running_bmcs_alone(bmcs):
    site, state, _ = bmcs
    before = _pids(site, state)
    bmc.start_bmcs(site, state, USER, PASSWORD, ["/bin/false"])
    assert _pids(site, state) == before


def test_real_site_status_asks_each_bmc_and_ssh(bmcs):
    """`site status` of a real site: power from each BMC over Redfish, and whether ssh answers on the
    management address (here loopback, where no sshd listens: never an address outside the sandbox)."""
    site, _, _ = bmcs
    at_loopback = [
        dataclasses.replace(
            m, nics=(dataclasses.replace(m.nics[0], address=ipaddress.ip_address("127.0.0.1")),)
        )
        for m in site.machines
    ]
    real = dataclasses.replace(site, machines=tuple(at_loopback), emulated=False)
    rows = site_status(real, lambda m: (USER, PASSWORD))
    powers = power_states(site, lambda m: (USER, PASSWORD))
    assert [r["machine"] for r in rows] == ["head-01", "gpu-01"]
    for r in rows:
        assert r["power"] == powers[r["machine"]] and r["power"] in ("On", "Off")
        assert r["ssh"].startswith("closed")
        want = "off" if r["power"] == "Off" else f"fault: powered On but ssh {r['ssh']}"
        assert r["health"] == want, r


def _draw(machine) -> float:
    return power_reading(machine, lambda m: (USER, PASSWORD)).consumed_w


def _settled(machine, ok, timeout: float = 20) -> float:
    """The draw once `ok(draw)` holds (the meter averages over a few seconds)."""
    deadline = time.monotonic() + timeout
    while not ok(watts := _draw(machine)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return watts


def test_power_reading_follows_the_hosts_cpu_time_and_held_gpus_under_the_limit(bmcs):
    """The Chassis' Power resource through sushy: a draw between the machine's idle and maximum
    figures; a busy process and a job handed two GPUs in the host's cgroup raise it; a limit
    caps it and is read back; a limit outside idle..maximum is refused."""
    site, _, _ = bmcs
    gpu = site.machine("gpu-01")
    figures = power.machine_power(site.power, gpu)  # 32 threads, 8 x h100: 742 W idle, 6092 W at most
    login = lambda m: (USER, PASSWORD)  # noqa: E731
    bmc.set_power(gpu, USER, PASSWORD, "On")
    assert bmc.wait_for_power(gpu, USER, PASSWORD, "On", timeout=20)
    first = power_reading(gpu, login)
    assert first.capacity_w == figures.max_w and first.limit_w is None
    assert figures.idle_w <= first.consumed_w < figures.idle_w + 100, (first, figures)
    # the host's cgroup, as `site up` makes it, with a busy "job" that Slurm handed GPUs 0 and 1
    cgroup = hosts.cpu_cgroup(site, "gpu-01")
    hosts.make_cgroup(cgroup)
    job = subprocess.Popen(
        ["sh", "-c", f"echo $$ > {cgroup}/cgroup.procs; while :; do :; done"],
        env={"PATH": os.environ["PATH"], "SLURM_JOB_GPUS": "0,1"},
    )
    try:
        host, gpu_w = power.parts(site.power, gpu)
        two_gpus = 2 * (gpu_w.max_w - gpu_w.idle_w)
        busy = _settled(gpu, lambda w: w > first.consumed_w + two_gpus + 0.2 * (host.max_w - host.idle_w))
        assert first.consumed_w + two_gpus < busy <= figures.max_w, (first, busy)
        set_power_limit(gpu, 2000, login)
        capped = power_reading(gpu, login)
        assert capped.limit_w == 2000 and capped.consumed_w <= 2000, capped
        with pytest.raises(sushy.exceptions.BadRequestError, match=r"outside \d+\.\.\d+"):
            set_power_limit(gpu, figures.idle_w - 1, login)
    finally:
        job.kill()
        job.wait()
    set_power_limit(gpu, None, login)
    assert power_reading(gpu, login).limit_w is None
    idle = _settled(gpu, lambda w: w < figures.idle_w + 100)
    assert figures.idle_w <= idle < figures.idle_w + 100
    bmc.set_power(gpu, USER, PASSWORD, "ForceOff")
    assert bmc.wait_for_power(gpu, USER, PASSWORD, "Off", timeout=20)
    assert _draw(gpu) == 0
    cgroup.rmdir()


def test_stop_leaves_no_process(bmcs):
    site, state, _ = bmcs
    pids = _pids(site, state)
    assert all(pids.values())
    bmc.stop_bmcs(state)
    assert not any(os.path.exists(f"/proc/{pid}") for pid in pids.values())
    assert not list((state / "bmc").glob("*/bmc.pid"))
    states = power_states(site, lambda m: (USER, PASSWORD), timeout=1)
    assert all(s.startswith("unreachable: ") for s in states.values()), states
