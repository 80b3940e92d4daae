"""Emulated machines: one systemd-nspawn host per machine, booted and stopped by its BMC.

Each host is an overlayfs over the shared image (its disk, kept across power cycles until
`site down`), with its own hostname, machine-id, ssh host keys and static address on the bridge.
A small supervisor loop restarts nspawn when the host reboots (nspawn exits 133), so Ansible's
reboot module works. Processes live in their own cgroups under `aifactory/<site>/<host>`, in every
cgroup hierarchy of this machine (the controllers too: the host's containers and pods are created
below it), which is also how `down` proves nothing is left. Hybrid (v1) and unified (cgroup2)
machines are both known; another layout is refused before anything starts.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shlex
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from aifactory import paths
from aifactory.site.model import Machine, Site
from sandbox import hardware
from sandbox.daemons import pid_of, task_state

CGROUP_FS = Path("/sys/fs/cgroup")
NSPAWN_REBOOT = 133
# A stopped host's network namespace, and its veth with it, lives on in the kernel while its TCP
# connections finish without it: FIN_WAIT2 for tcp_fin_timeout (60 s), retransmissions to a peer
# that is gone for minutes (110 s seen in CI, after a control-plane machine was forced off). Until
# then nspawn booting the machine again fails at once ("Failed to add new veth interfaces: File
# exists") while its BMC reports On. A power cut leaves no connection to finish: before stopping a
# host, power_off gives its connections CUT_CONNECTIONS, then waits LINK_TEARDOWN_S for its link
# to go; a power-on tries nspawn again for BOOT_RETRY_S.
CUT_CONNECTIONS = {"net/ipv4/tcp_fin_timeout": 1, "net/ipv4/tcp_orphan_retries": 1}
LINK_TEARDOWN_S = 30
BOOT_RETRY_S = 240


@dataclass(frozen=True)
class HostPaths:
    base: Path

    @property
    def root(self) -> Path:
        return self.base / "root"

    @property
    def upper(self) -> Path:
        return self.base / "upper"

    @property
    def work(self) -> Path:
        return self.base / "work"

    @property
    def supervisor_pid(self) -> Path:
        return self.base / "supervisor.pid"

    @property
    def nspawn_pid(self) -> Path:
        return self.base / "nspawn.pid"

    @property
    def log(self) -> Path:
        return self.base / "console.log"


def host_paths(site: Site, name: str) -> HostPaths:
    return HostPaths(paths.site_state_dir(site.name) / "hosts" / name)


HYBRID, UNIFIED = "hybrid", "unified"


class UnknownCgroupLayout(RuntimeError):
    """This machine's cgroups are laid out in a way the sandbox cannot track its hosts in."""


def _cgroup_mounts(mounts: str | None) -> list[tuple[Path, str]]:
    if mounts is None:
        mounts = Path("/proc/self/mounts").read_text()
    found = []
    for line in mounts.splitlines():
        words = line.split()
        if len(words) > 2 and words[2] in ("cgroup", "cgroup2"):
            point = Path(words[1])
            if point == CGROUP_FS or point.parent == CGROUP_FS:
                found.append((point, words[2]))
    return found


def cgroup_layout(mounts: str | None = None) -> str:
    """`hybrid` (v1 controllers, name=systemd, an empty cgroup2 at /sys/fs/cgroup/unified: Debian 11 and
    this project's CI machines) or `unified` (cgroup2 alone at /sys/fs/cgroup: a stock Debian 12);
    anything else raises UnknownCgroupLayout, naming what is mounted."""
    found = _cgroup_mounts(mounts)
    v1 = {p for p, kind in found if kind == "cgroup"}
    v2 = {p for p, kind in found if kind == "cgroup2"}
    if v2 == {CGROUP_FS} and not v1:
        return UNIFIED
    if v2 == {CGROUP_FS / "unified"} and CGROUP_FS / "systemd" in v1:
        return HYBRID
    seen = ", ".join(f"{p} ({kind})" for p, kind in sorted(found)) or "no cgroup filesystem"
    raise UnknownCgroupLayout(
        f"this machine's cgroups are neither hybrid (v1 hierarchies and cgroup2 at {CGROUP_FS}/unified) nor "
        f"unified (cgroup2 alone at {CGROUP_FS}): {seen}; the sandbox keeps each host in a cgroup of its "
        "own to stop it and prove nothing is left, and knows those two layouts"
    )


def cgroup_roots(mounts: str | None = None) -> list[Path]:
    """Every hierarchy the hosts live in: the v1 controllers, name=systemd and unified (hybrid), or
    the one cgroup2 tree (unified)."""
    if cgroup_layout(mounts) == UNIFIED:
        return [CGROUP_FS]
    return sorted(p for p, _ in _cgroup_mounts(mounts) if p.parent == CGROUP_FS)


def cgroup_dirs(site: Site, name: str | None = None) -> list[Path]:
    rel = Path("aifactory") / site.name / (name or "")
    return [root / rel for root in cgroup_roots()]


def cpu_cgroup(site: Site, name: str) -> Path:
    """The host's cgroup that accounts its CPU time (cgroup2, or the v1 cpuacct hierarchy)."""
    dirs = cgroup_dirs(site, name)
    if len(dirs) == 1:  # unified: the one tree
        return dirs[0]
    (cpu,) = [d for d in dirs if "cpuacct" in d.relative_to(CGROUP_FS).parts[0].split(",")]
    return cpu


def make_cgroup(path: Path) -> None:
    """mkdir -p in a hierarchy. A v1 cpuset cgroup takes no process until it has CPUs and memory
    nodes; in cgroup2 a child has only the controllers its parent enables for it, and the host's
    containers and pods need them all below it."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for d in reversed(missing):
        controllers = d.parent / "cgroup.controllers"
        if controllers.exists() and controllers.read_text().split():
            (d.parent / "cgroup.subtree_control").write_text(
                " ".join(f"+{c}" for c in controllers.read_text().split())
            )
        # BMCs power machines on in parallel: another machine's hook may make the site's cgroup first.
        d.mkdir(exist_ok=True)
        for key in ("cpuset.cpus", "cpuset.mems"):
            if (d / key).exists():
                (d / key).write_text((d.parent / key).read_text())


def is_mounted(path: Path) -> bool:
    target = str(path)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == target for line in f)


def prepare(site: Site, machine: Machine, image: Path, ssh_pub: str, host_key_dir: Path) -> None:
    """Mount the host's disk and write what makes it this machine (idempotent)."""
    hp = host_paths(site, machine.name)
    for d in (hp.root, hp.upper, hp.work):
        d.mkdir(parents=True, exist_ok=True)
    if not is_mounted(hp.root):
        opts = f"lowerdir={image},upperdir={hp.upper},workdir={hp.work}"
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, str(hp.root)], check=True)
    etc = hp.root / "etc"
    (etc / "hostname").write_text(machine.name + "\n")
    hardware.install(hp.root, machine)
    mid = etc / "machine-id"
    if not mid.exists() or not mid.read_text().strip():
        mid.write_text(secrets.token_hex(16) + "\n")
    hosts = ["127.0.0.1 localhost", f"127.0.1.1 {machine.name}"]
    hosts += [f"{m.address} {m.name}" for m in site.machines]
    (etc / "hosts").write_text("\n".join(hosts) + "\n")
    net = site.management
    (etc / "systemd/network/10-host0.network").write_text(
        f"[Match]\nName=host0\n\n[Network]\nAddress={machine.address}/{net.cidr.prefixlen}\n"
        "LinkLocalAddressing=no\nIPv6AcceptRA=no\n"
    )
    # Host keys come from the site's key dir so known_hosts can be written without asking the hosts.
    for kind in ("ed25519",):
        src = host_key_dir / f"{machine.name}_ssh_host_{kind}_key"
        for suffix in ("", ".pub"):
            dst = etc / "ssh" / f"ssh_host_{kind}_key{suffix}"
            dst.write_bytes(Path(str(src) + suffix).read_bytes())
            dst.chmod(0o600 if not suffix else 0o644)
    ssh_dir = hp.root / "root/.ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    (ssh_dir / "authorized_keys").write_text(ssh_pub)
    (ssh_dir / "authorized_keys").chmod(0o600)


def is_running(site: Site, name: str) -> bool:
    return pid_of(host_paths(site, name).supervisor_pid) is not None


def power_on(site: Site, machine: Machine) -> bool:
    """Boot the host if it is not running; return True if it was started now."""
    hp = host_paths(site, machine.name)
    if is_running(site, machine.name):
        return False
    if not is_mounted(hp.root):
        raise RuntimeError(f"{machine.name}: its disk is not prepared; run `aifactory site up` first")
    dirs = cgroup_dirs(site, machine.name)
    for d in dirs:
        make_cgroup(d)
    # nspawn's default seccomp filter refuses the keyring calls every container runtime makes
    # (crun: "create keyring: Operation not permitted"); a server's kernel has no such filter.
    nspawn = [
        "env",
        "SYSTEMD_SECCOMP=0",
        "systemd-nspawn",
        "--boot",
        f"--directory={hp.root}",
        # nspawn names veth links and runtime dirs after the machine: unique across sites.
        f"--machine={site.name}-{machine.name}",
        "--register=no",
        "--keep-unit",
        f"--network-bridge={site.management.bridge}",
        "--console=passive",
        # Beyond nspawn's defaults: GPU device nodes are made inside the host (sandbox/hardware.py),
        # containers may lock memory, and the kubelet reads the kernel log.
        "--capability=CAP_MKNOD,CAP_NET_ADMIN,CAP_SYS_ADMIN,CAP_IPC_LOCK,CAP_SYSLOG",
    ]
    # nspawn exits 133 when the host reboots: start it again, as a machine would power-cycle. An
    # nspawn that fails at once is tried again for BOOT_RETRY_S, as a BMC retries a failed boot: see
    # BOOT_RETRY_S for why.
    join = "".join(f"echo $$ > {shlex.quote(str(d / 'cgroup.procs'))}; " for d in dirs)
    pid_file = shlex.quote(str(hp.nspawn_pid))
    script = join + (
        f"retry_until=$((SECONDS + {BOOT_RETRY_S})); while :; do started=$SECONDS; "
        f"{shlex.join(nspawn)} </dev/null & echo $! > {pid_file}; wait $!; rc=$?; "
        f"[ $rc -eq {NSPAWN_REBOOT} ] && continue; "
        f"if [ $rc -ne 0 ] && [ $((SECONDS - started)) -lt 5 ] && [ $SECONDS -lt $retry_until ]; then "
        'echo "power-on: nspawn failed at once (exit $rc), trying again in 2 s"; sleep 2; continue; fi; '
        f"break; done; rm -f {pid_file}"
    )
    log = open(hp.log, "ab")  # noqa: SIM115 - handed to the child, closed below
    try:
        proc = subprocess.Popen(
            ["bash", "-c", script],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    finally:
        log.close()
    hp.supervisor_pid.write_text(str(proc.pid))
    return True


def power_off(site: Site, machine: Machine, force: bool = False, timeout: float = 20) -> None:
    """Orderly poweroff (SIGTERM to nspawn); force, or a host that does not stop in time, is killed.
    Then up to LINK_TEARDOWN_S for the kernel to remove the host's network link."""
    hp = host_paths(site, machine.name)
    sup = pid_of(hp.supervisor_pid)
    if sup is None:
        return
    nspawn = pid_of(hp.nspawn_pid)
    init = _container_init(nspawn)
    link, netns = _host_link(init), _netns(init)
    _cut_connections(init)
    if nspawn and not force:
        # nspawn turns SIGTERM into an orderly poweroff; it then exits 0 and the supervisor ends.
        with contextlib.suppress(ProcessLookupError):
            os.kill(nspawn, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and pid_of(hp.supervisor_pid):
            time.sleep(0.2)
    if pid_of(hp.supervisor_pid):
        kill_cgroup(cgroup_dirs(site, machine.name))
    hp.supervisor_pid.unlink(missing_ok=True)
    hp.nspawn_pid.unlink(missing_ok=True)
    if not _wait_link_gone(link, LINK_TEARDOWN_S):
        # The BMC's log: which processes, if any, still hold the host's network namespace.
        print(
            f"{machine.name}: its network link (index {link}) is still there {LINK_TEARDOWN_S} s after "
            f"power-off; threads in its network namespace: {', '.join(_in_netns(netns)) or 'none'}",
            flush=True,
        )


def _cut_connections(init: int | None) -> None:
    """Set CUT_CONNECTIONS in the host's network namespace (/proc/sys/net is per namespace)."""
    if init is None:
        return
    writes = "; ".join(f"echo {v} > /proc/sys/{k}" for k, v in CUT_CONNECTIONS.items())
    nsenter = ["nsenter", f"--target={init}", "--net", "sh", "-c", writes]
    subprocess.run(nsenter, capture_output=True, check=False)


def _container_init(nspawn: int | None) -> int | None:
    """The host's init: nspawn's one child."""
    try:
        (init,) = Path(f"/proc/{nspawn}/task/{nspawn}/children").read_text().split()
        return int(init)
    except (OSError, ValueError):
        return None


def _host_link(init: int | None) -> int | None:
    """The host side of the machine's veth, by index (nspawn shortens long names with a hash): the
    peer of host0, read from the sysfs the container mounted for its own network namespace."""
    try:
        return int(Path(f"/proc/{init}/root/sys/class/net/host0/iflink").read_text())
    except (OSError, ValueError):
        return None


def _netns(init: int | None) -> int | None:
    """The inode of the host's network namespace, to name what holds it if it lingers."""
    try:
        return os.stat(f"/proc/{init}/ns/net").st_ino
    except OSError:
        return None


def _in_netns(inode: int | None) -> list[str]:
    """'pid/tid command (state)' of every thread in the network namespace with this inode."""
    if inode is None:
        return []
    found = set()
    # Threads, not processes: a killed process's thread can outlive its main thread, whose
    # /proc/PID/ns is then unreadable.
    for ns in Path("/proc").glob("[0-9]*/task/[0-9]*/ns/net"):
        task = ns.parent.parent
        with contextlib.suppress(OSError, IndexError):
            if ns.stat().st_ino == inode:
                comm = (task / "comm").read_text().strip()
                found.add(f"{task.parent.parent.name}/{task.name} {comm} ({task_state(task / 'stat')})")
    return sorted(found)


def _wait_link_gone(index: int | None, timeout: float) -> bool:
    """Whether the link with this index is gone within timeout (see LINK_TEARDOWN_S)."""
    if index is None:
        return True
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.if_indextoname(index)
        except OSError:
            return True
        time.sleep(0.2)
    return False


def wait_bridge_ports_gone(bridge: str, timeout: float) -> list[str]:
    """With every host stopped: wait for the kernel to remove their links from the bridge (see
    LINK_TEARDOWN_S); the names of those still there."""
    deadline = time.monotonic() + timeout
    while True:
        ports = sorted(p.name for p in Path(f"/sys/class/net/{bridge}/brif").glob("*"))
        if not ports or time.monotonic() > deadline:
            return ports
        time.sleep(0.5)


def cgroup_pids(dirs: list[Path]) -> set[int]:
    pids: set[int] = set()
    for d in dirs:
        if d.exists():
            for procs in d.rglob("cgroup.procs"):
                with contextlib.suppress(OSError):
                    pids.update(int(p) for p in procs.read_text().split())
    return pids


def kill_cgroup(dirs: list[Path], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while (pids := cgroup_pids(dirs)) and time.monotonic() < deadline:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
    if pids:
        raise RuntimeError(f"processes {sorted(pids)} in {dirs[0]} survived SIGKILL")


def remove_cgroups(dirs: list[Path]) -> None:
    for d in dirs:
        if d.exists():
            for sub in sorted((p for p in d.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                with contextlib.suppress(OSError):
                    sub.rmdir()
            with contextlib.suppress(OSError):
                d.rmdir()
                d.parent.rmdir()  # the shared aifactory/ parent, once no site uses it


# Every nspawn host's systemd (and journald, udev...) takes inotify instances from root's per-user
# pool on the machine; Debian's default of 128 runs out with a few sites up ("degraded" hosts).
INOTIFY_LIMITS = {"fs/inotify/max_user_instances": 1024, "fs/inotify/max_user_watches": 524288}


def ensure_inotify_limits() -> None:
    for key, minimum in INOTIFY_LIMITS.items():
        path = Path("/proc/sys") / key
        if int(path.read_text()) < minimum:
            path.write_text(str(minimum))


# The kernel settings a kubelet insists on (it sets them at start, and fails where /proc/sys is
# read-only, as in every host here). The hosts share this machine's kernel, so the machine gets the
# values every Kubernetes node runs with: overcommit always, reboot 10 s after a panic, and panic on
# an oops. They stay set after `site down`, like the inotify limits.
KUBELET_KERNEL_SETTINGS = {"vm/overcommit_memory": 1, "kernel/panic": 10, "kernel/panic_on_oops": 1}


def ensure_kubelet_kernel_settings() -> None:
    for key, value in KUBELET_KERNEL_SETTINGS.items():
        path = Path("/proc/sys") / key
        if int(path.read_text()) != value:
            path.write_text(str(value))


def unmount(site: Site, name: str) -> None:
    hp = host_paths(site, name)
    if is_mounted(hp.root):
        subprocess.run(["umount", str(hp.root)], check=True)
