"""The emulated BMCs of a site: one Redfish BMC (sushy-emulator, `sandbox.bmc_server`) per BMC
endpoint of the site file: per machine, or per group of machines that share one (`endpoint_groups`).

Each listens on the host:port of `machine.bmc.endpoint` (loopback, or the site bridge's address,
where the hosts reach their BMCs as a real head does over its out-of-band network), and keeps its files in
`<state_dir>/bmc/<its first machine>/`: config.py (the emulator's --config), htpasswd, state/ (its SQLite
store, one per BMC so systems never leak between sites or runs), bmc.log and bmc.pid.
See `sandbox.redfish_driver` for what the BMC reports and how power changes reach the host.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import bcrypt
import requests
import sushy

from aifactory.bmcs import system
from aifactory.site import power
from aifactory.site.model import Machine, Site
from sandbox import daemons, hosts


class BmcError(RuntimeError):
    pass


def bmc_dir(state_dir: Path, machine_name: str) -> Path:
    return Path(state_dir) / "bmc" / machine_name


def _listen(site: Site, machine: Machine) -> tuple[str, int]:
    url = urlsplit(machine.bmc.endpoint)
    try:
        address = ipaddress.ip_address(url.hostname or "")
    except ValueError:
        address = None
    local = address is not None and (address.is_loopback or address == site.management.gateway)
    if url.scheme != "http" or not local or not url.port:
        raise BmcError(
            f"{machine.name}: an emulated BMC needs http://<loopback IP or the bridge's address>:<port>: "
            f"{url.geturl()}"
        )
    return url.hostname, url.port  # type: ignore[return-value]


def _system_uuid(site: Site, machine: Machine) -> str:
    # The emulator's System Id is the UUID: stable per site and machine, or the one the site names.
    name = f"aifactory:{site.name}/{machine.name}"
    return machine.bmc.system_id or str(uuid.uuid5(uuid.NAMESPACE_URL, name))


def _cpu_topology(machine: Machine) -> dict[str, int]:
    """The emulated machine's sockets, cores and threads, with the site file's figure in the unit it
    counts (bmc.cpus_count): single-thread cores on one socket where it counts threads (what these BMCs
    always reported), two threads per core where it counts cores, eight cores a socket for sockets."""
    n = machine.cpus
    shapes = {"threads": (1, n, n), "cores": (1, n, 2 * n), "sockets": (n, 8 * n, 16 * n)}
    sockets, cores, threads = shapes[machine.bmc.cpus_count]
    return {"cpu_sockets": sockets, "cpu_cores": cores, "cpu_threads": threads}


def _systems(site: Site, machine: Machine) -> list[dict]:
    """The machine's Redfish Systems: its host, and its GPU baseboard where the site names one."""
    host_id = _system_uuid(site, machine)
    gpus = {"gpu_model": machine.gpu_model, "gpu_count": machine.gpu_count}
    system = {
        "uuid": host_id,
        "name": machine.name,
        "power_state": "Off",
        "nics": [{"mac": nic.mac, "ip": str(nic.address)} for nic in machine.nics],
        **_cpu_topology(machine),
        "memory_gib": machine.memory_gib,
        # An HGX server lists its GPUs under the baseboard's System, not the host's.
        **({"gpu_model": None, "gpu_count": 0} if machine.bmc.gpu_system else gpus),
    }
    if not machine.bmc.gpu_system:
        return [system]
    baseboard = {"uuid": machine.bmc.gpu_system, "name": machine.bmc.gpu_system, "power_state": None}
    return [system, {**baseboard, "baseboard": host_id, "nics": [], **gpus}]


def _power_settings(site: Site, machine: Machine) -> dict:
    """What the machine's power meter reads: its figures, and its host's cgroup (processes, CPU time)."""
    host_w, gpu_w = power.parts(site.power, machine)
    figures = {
        "host_idle_w": host_w.idle_w,
        "host_max_w": host_w.max_w,
        "gpu_idle_w": gpu_w.idle_w,
        "gpu_max_w": gpu_w.max_w,
        "gpu_count": machine.gpu_count,
    }
    return {"figures": figures, "cgroup": str(hosts.cpu_cgroup(site, machine.name))}


def _config(site: Site, machines: list[Machine], d: Path, hook: list[str]) -> str:
    """One emulator for the machines behind one endpoint: each its Systems and a Chassis of its own
    (Id: the machine's name), in which its host System resides."""
    host, port = _listen(site, machines[0])
    systems = [s for m in machines for s in _systems(site, m)]
    chassis = [
        {"Id": name, "Name": name, "UUID": str(uuid.uuid5(uuid.NAMESPACE_URL, f"chassis/{uid}"))}
        for name, uid in ((s["name"], s["uuid"]) for s in systems)
    ]
    settings = {
        "SUSHY_EMULATOR_LISTEN_IP": host,
        "SUSHY_EMULATOR_LISTEN_PORT": port,
        "SUSHY_EMULATOR_FAKE_DRIVER": True,
        "SUSHY_EMULATOR_FAKE_SYSTEMS": systems,
        "SUSHY_EMULATOR_CHASSIS": chassis,
        "SUSHY_EMULATOR_STATE_DIR": str(d / "state"),
        "SUSHY_EMULATOR_AUTH_FILE": str(d / "htpasswd"),
        "SUSHY_AIFACTORY_POWER_HOOK": list(hook),
        "SUSHY_AIFACTORY_POWER": {m.name: _power_settings(site, m) for m in machines},
    }
    return "".join(f"{key} = {value!r}\n" for key, value in settings.items())


def endpoint_groups(site: Site) -> list[list[Machine]]:
    """Machines by BMC endpoint, in site order: one emulator process each. Machines share an
    endpoint (each its own system_id) where one BMC manages several nodes; generated scale sites do
    it so that hundreds of machines need tens of processes, not hundreds."""
    groups: dict[str, list[Machine]] = {}
    for m in site.machines:
        groups.setdefault(m.bmc.endpoint.rstrip("/"), []).append(m)
    return list(groups.values())


def _answers(endpoint: str, timeout: float = 2) -> bool:
    try:
        return requests.get(f"{endpoint}/redfish/v1/", timeout=timeout).status_code == 200
    except requests.RequestException:
        return False


def _port_taken(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
        return True
    return False


def start_bmcs(
    site: Site, state_dir: Path, username: str, password: str, hook: list[str], timeout: float = 30
) -> None:
    """Start the BMCs of the site that are not running, then wait until every service root answers."""
    if not site.emulated:
        raise BmcError(f"site {site.name!r} is not emulated: its BMCs are real")
    # A running BMC is left alone (answering or still starting: the wait below tells). Check every
    # endpoint before starting any, so a conflict leaves nothing half started.
    groups = endpoint_groups(site)
    to_start = [g for g in groups if not daemons.pid_of(bmc_dir(state_dir, g[0].name) / "bmc.pid")]
    for group in to_start:
        host, port = _listen(site, group[0])
        if _port_taken(host, port):
            raise BmcError(f"BMC of {group[0].name}: {host}:{port} is taken by a process that is not its BMC")
        if len(group) > 1 and any(m.bmc.gpu_system for m in group):
            raise BmcError(f"BMC of {group[0].name}: a shared BMC emulates no GPU baseboards")
    for group in to_start:
        d = bmc_dir(state_dir, group[0].name)
        d.mkdir(parents=True, exist_ok=True)
        # The emulator accepts only bcrypt. Cost 4 (the minimum): it checks the hash on every request,
        # and the default cost would add ~0.3 s to each on a loaded machine; this is a loopback test BMC.
        digest = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
        htpasswd = d / "htpasswd"
        htpasswd.touch(mode=0o600)
        htpasswd.write_text(f"{username}:{digest}\n")
        (d / "config.py").write_text(_config(site, group, d, hook))
        argv = [sys.executable, "-m", "sandbox.bmc_server", "--config", str(d / "config.py")]
        daemons.start(argv, d / "bmc.pid", d / "bmc.log")

    deadline = time.monotonic() + timeout
    pending = [g[0] for g in groups]
    while pending:
        for machine in list(pending):
            d = bmc_dir(state_dir, machine.name)
            if _answers(machine.bmc.endpoint):
                pending.remove(machine)
            elif not daemons.pid_of(d / "bmc.pid"):
                raise BmcError(
                    f"BMC of {machine.name} exited; {d / 'bmc.log'} ends:\n{daemons.tail(d / 'bmc.log')}"
                )
        if pending and time.monotonic() > deadline:
            d = bmc_dir(state_dir, pending[0].name)
            raise BmcError(
                f"BMC of {pending[0].name} ({pending[0].bmc.endpoint}) did not answer within {timeout:.0f} s;"
                f" {d / 'bmc.log'} ends:\n{daemons.tail(d / 'bmc.log')}"
            )
        time.sleep(0.2)


def stop_bmcs(state_dir: Path, timeout: float = 10) -> None:
    """Stop every BMC with a pid file under state_dir (SIGTERM, then SIGKILL after timeout)."""
    for pid_file in sorted((Path(state_dir) / "bmc").glob("*/bmc.pid")):
        pid = daemons.pid_of(pid_file)
        daemons.stop(pid_file, timeout)
        if pid:
            # Reap it if this process started it, so it does not linger as a zombie.
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)


def set_power(machine: Machine, username: str, password: str, reset_type: str, timeout: float = 10) -> None:
    """Send a ComputerSystem.Reset ("On", "ForceOff", "GracefulShutdown", ...) to the machine's BMC."""
    system(machine, username, password, timeout).reset_system(sushy.ResetType(reset_type))


def wait_for_power(machine: Machine, username: str, password: str, state: str, timeout: float = 60) -> bool:
    """Wait until the BMC reports `state` ("On"/"Off"); an Off is reported once the host has stopped."""
    deadline = time.monotonic() + timeout
    while True:
        if str(system(machine, username, password).power_state.value) == state:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.3)


def running_pids(state_dir: Path) -> list[int]:
    """Pids of this site's BMC processes still alive (empty after `stop_bmcs`)."""
    pids = (daemons.pid_of(p) for p in (Path(state_dir) / "bmc").glob("*/bmc.pid"))
    return [p for p in pids if p]
