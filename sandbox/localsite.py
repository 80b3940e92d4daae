"""`aifactory site up|status|down`: the hardware of an emulated site, and nothing above it.

up:     guard route + bridge, host image, one powered-off nspawn host per machine, one Redfish BMC
        per machine (its power button boots or stops the host), the artifact mirror with the
        toolchain bundle, ssh keys/config and the Ansible inventory. Idempotent.
status: every BMC's power state and every host's health in one table.
down:   stops and removes all of it; verifies no process, mount, cgroup, bridge or route is left.
Slurm, Kubernetes and the rest are installed later by Pulumi + Ansible, as on a real site.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from aifactory import bmcs, credentials, inventory, paths, toolchain
from aifactory.site.model import Machine, Site
from sandbox import bmc, daemons, hardware, hosts, image, mirror, network, ssh

HOST_TOOLS = {
    "systemd-nspawn": "systemd-container",
    "ip": "iproute2",
    "ssh": "openssh-client",
    "mmdebstrap": "mmdebstrap",
    "zstd": "zstd",
}
Progress = Callable[[str], None]


class SiteError(RuntimeError):
    """A component of the emulated site failed; the message names it and carries its log tail."""


def inventory_path(site: Site) -> Path:
    return paths.site_state_dir(site.name) / "inventory.yml"


def bmc_state_dir(site: Site) -> Path:
    return paths.site_state_dir(site.name)


def power_hook(site: Site) -> list[str]:
    return [sys.executable, "-m", "sandbox.power", "--site", str(site.path)]


def ensure_host_tools(progress: Progress) -> None:
    missing = sorted({pkg for tool, pkg in HOST_TOOLS.items() if shutil.which(tool) is None})
    if not missing:
        return
    progress(f"installing host packages: {' '.join(missing)}")
    cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing]
    env = {"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    if subprocess.run(cmd, env=env, capture_output=True, check=False).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, check=True)
        subprocess.run(cmd, env=env, capture_output=True, check=True)


def _preflight(site: Site) -> None:
    if not site.emulated:
        raise SiteError(
            f"site {site.name!r} is not emulated: `site up` creates emulated hardware only; "
            "a real site's machines are already racked (deploy it with `pulumi up`)"
        )
    if os.geteuid() != 0:
        raise SiteError("the local site needs root (bridge, overlay mounts, systemd-nspawn)")
    hosts.cgroup_layout()  # UnknownCgroupLayout: bad input for this machine, before anything starts


def _bmc_credentials(site: Site) -> credentials.Credentials:
    refs = {m.bmc.credentials for m in site.machines}
    if len(refs) != 1:
        raise SiteError(f"an emulated site uses one BMC credentials reference, found {sorted(refs)}")
    return credentials.ensure(refs.pop())


def up(site: Site, power_on: bool = False, progress: Progress = print, bmc_only: bool = False) -> int:
    """bmc_only: emulate the BMCs alone (no hosts, power changes do nothing): Redfish-layer scale tests."""
    try:
        if bmc_only:
            _up_bmcs(site, progress)
            return 0
        _up(site, power_on, progress)
    except SiteError as e:
        progress(f"site up FAILED: {e}")
        return 1
    progress(_summary(site))
    return 0


def _step(progress: Progress, what: str, fn: Callable[[], object]) -> object:
    start = time.monotonic()
    result = fn()
    progress(f"  {what} ({time.monotonic() - start:.1f}s)")
    return result


def _up_bmcs(site: Site, progress: Progress) -> None:
    _preflight(site)
    creds = _bmc_credentials(site)
    try:
        _step(
            progress,
            f"{len(site.machines)} Redfish BMCs answering (no hosts)",
            lambda: bmc.start_bmcs(site, bmc_state_dir(site), creds.username, creds.password, ["true"]),
        )
    except RuntimeError as e:
        raise SiteError(str(e)) from e


def _up(site: Site, power_on: bool, progress: Progress) -> None:
    _preflight(site)
    t0 = time.monotonic()
    progress(f"site up: {site.name} ({len(site.machines)} machines, emulated)")
    _step(progress, "host tools present", lambda: ensure_host_tools(progress))
    _step(progress, f"bridge {site.management.bridge} and guard route", lambda: network.ensure(site))
    _step(progress, "inotify limits for many hosts", hosts.ensure_inotify_limits)
    _step(progress, "kernel settings a kubelet requires", hosts.ensure_kubelet_kernel_settings)
    img = _step(progress, "host image ready", lambda: image.ensure_image(progress))
    pub, host_keys = ssh.ensure_keys(site)
    creds = _bmc_credentials(site)

    def prepare_all() -> None:
        for m in site.machines:
            try:
                hosts.prepare(site, m, Path(str(img)), pub, host_keys)
            except hardware.HardwareError as e:
                raise SiteError(f"{m.name}: {e}") from e

    _step(progress, f"{len(site.machines)} host disks prepared", prepare_all)
    man = mirror.publish(site)
    try:
        mirror.start(site)
    except OSError as e:
        raise SiteError(f"artifact mirror failed to start: {e}") from e
    if len(man) < len(toolchain.BINARIES):
        progress(
            f"  WARNING: the bundle has {len(man)} of {len(toolchain.BINARIES)} binaries; "
            "run `aifactory toolchain build`"
        )
    try:
        _step(
            progress,
            f"{len(site.machines)} Redfish BMCs answering",
            lambda: bmc.start_bmcs(
                site, bmc_state_dir(site), creds.username, creds.password, power_hook(site)
            ),
        )
    except RuntimeError as e:
        raise SiteError(str(e)) from e
    if not power_on:  # with power_on, every machine is booted and waited for below
        powers = bmcs.power_states(site, lambda m: (creds.username, creds.password))
        restored = [m for m in site.machines if powers[m.name] == "On"]
        if restored:
            _step(
                progress,
                f"{len(restored)} hosts powered on before booted again (BMC power restore: last state)",
                lambda: _wait_all_ssh(site, restored),
            )
    inventory.write(site, inventory_path(site), ssh.config_path(site))
    progress(f"  inventory {inventory_path(site)}; ssh config {ssh.config_path(site)}")
    if power_on:
        _step(
            progress, "every machine powered on through its BMC and answering ssh", lambda: power_on_all(site)
        )
    progress(f"site up: done in {time.monotonic() - t0:.1f}s")


def wait_for_ssh(site: Site, machine: Machine, timeout: float = 90) -> str:
    """Wait until the host answers ssh and its boot has finished; return is-system-running."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            r = ssh.run(
                site,
                machine.name,
                "systemctl is-system-running --wait",
                timeout=max(5, deadline - time.monotonic()),
            )
        except subprocess.TimeoutExpired:
            break
        last = (r.stdout or r.stderr).strip()
        if r.returncode == 0 or last in ("degraded", "running"):
            return last
        time.sleep(0.5)
    log = daemons.tail(hosts.host_paths(site, machine.name).log)
    raise SiteError(f"{machine.name}: no ssh after {timeout:.0f}s ({last}); console log tail:\n{log}")


def power_on_all(site: Site, timeout: float = 90) -> None:
    creds = _bmc_credentials(site)
    for m in site.machines:
        bmc.set_power(m, creds.username, creds.password, "On")
    _wait_all_ssh(site, site.machines, timeout)


def _wait_all_ssh(site: Site, machines: Sequence[Machine], timeout: float = 90) -> None:
    with ThreadPoolExecutor(max_workers=len(machines)) as pool:
        states = list(pool.map(lambda m: wait_for_ssh(site, m, timeout), machines))
    bad = [f"{m.name}: {s}" for m, s in zip(machines, states, strict=True) if s != "running"]
    if bad:
        raise SiteError("hosts booted but are not healthy: " + "; ".join(bad))


def _host_health(site: Site, m: Machine, power: str) -> tuple[str, str]:
    running = hosts.is_running(site, m.name)
    if power.startswith("unreachable"):
        return ("running" if running else "stopped"), f"bmc {power}"
    if power == "Off":
        return ("running" if running else "stopped"), (
            "fault: powered off but host running" if running else "off"
        )
    if not running:
        return "stopped", "fault: powered on but host not running"
    try:
        r = ssh.run(site, m.name, "systemctl is-system-running", timeout=8)
    except subprocess.TimeoutExpired:
        return "running", "unreachable: ssh timed out"
    state = r.stdout.strip() or r.stderr.strip()
    if state == "running":
        return "running", "ok"
    if state in ("starting", "initializing"):
        return "running", "booting"
    return "running", f"{state or 'unreachable'}"


def status(site: Site) -> list[dict[str, str]]:
    """Every machine's power (its BMC) and health: an emulated site's hosts as this machine runs them,
    a real site's by whether ssh answers (aifactory/bmcs.py)."""
    if not site.emulated:
        return bmcs.site_status(site)
    creds = credentials.load(site.machines[0].bmc.credentials)
    powers = bmcs.power_states(site, lambda m: (creds.username, creds.password))
    with ThreadPoolExecutor(max_workers=max(1, len(site.machines))) as pool:
        health = list(pool.map(lambda m: _host_health(site, m, powers.get(m.name, "unknown")), site.machines))
    return [
        bmcs.status_row(m, powers.get(m.name, "unknown"), host=host, health=h)
        for m, (host, h) in zip(site.machines, health, strict=True)
    ]


def _summary(site: Site) -> str:
    from aifactory.report import table

    try:
        return table(status(site))
    except credentials.MissingCredentials as e:
        return f"(no status: {e})"


def leftovers(site: Site) -> list[str]:
    """What of the site still exists on this machine (empty after a clean `down`)."""
    left = []
    pids = hosts.cgroup_pids(hosts.cgroup_dirs(site))
    if pids:
        left.append(f"processes in the site's cgroups: {sorted(pids)}")
    left += [f"cgroup {d}" for d in hosts.cgroup_dirs(site) if d.exists()]
    state = str(paths.site_state_dir(site.name))
    with open("/proc/self/mountinfo") as f:
        left += [f"mount {line.split()[4]}" for line in f if line.split()[4].startswith(state)]
    if site.management.bridge and network.bridge_present(site.management.bridge):
        left.append(f"bridge {site.management.bridge}")
    left += [f"process {pid}: {cmd}" for pid, cmd in _processes_mentioning(state)]
    return left


def _processes_mentioning(text: str) -> list[tuple[int, str]]:
    """Processes whose command line names the site's state dir: BMCs, mirror, nspawn, ssh masters."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmd:
                found.append((int(proc.name), cmd.strip()[:200]))
    return found


def down(site: Site, progress: Progress = print) -> int:
    try:
        _preflight(site)
    except SiteError as e:
        progress(f"site down FAILED: {e}")
        return 1
    t0 = time.monotonic()
    progress(f"site down: {site.name}")
    with ThreadPoolExecutor(max_workers=len(site.machines)) as pool:
        list(pool.map(lambda m: hosts.power_off(site, m, timeout=15), site.machines))
    progress(f"  hosts stopped ({time.monotonic() - t0:.1f}s)")
    # A site brought up right after this must find no link of these hosts left (hosts.LINK_TEARDOWN_S);
    # waited for as long as a power-on would retry.
    t1 = time.monotonic()
    bridge = site.management.bridge
    lingering = hosts.wait_bridge_ports_gone(bridge, timeout=hosts.BOOT_RETRY_S) if bridge else []
    waited = time.monotonic() - t1
    if lingering:
        progress(f"  network links of stopped hosts still there: {', '.join(lingering)}")
    elif waited > 1:
        progress(f"  network links of stopped hosts torn down by the kernel ({waited:.1f}s)")
    bmc.stop_bmcs(bmc_state_dir(site))
    mirror.stop(site)
    if ssh.config_path(site).exists():
        ssh.close_masters(site)
    hosts.kill_cgroup(hosts.cgroup_dirs(site))
    hosts.remove_cgroups(hosts.cgroup_dirs(site))
    for m in site.machines:
        hosts.unmount(site, m.name)
    others = [p for p in (paths.state_dir() / "sites").glob("*") if p.name != site.name]
    network.remove(site, keep_guard=bool(others))
    shutil.rmtree(paths.site_state_dir(site.name), ignore_errors=True)
    left = leftovers(site)
    if left:
        progress("site down: left behind:\n  " + "\n  ".join(left))
        return 1
    progress(f"site down: done in {time.monotonic() - t0:.1f}s; nothing left running")
    return 0
