"""The hosts' Debian image (sandbox.image): built or taken from the cache, then booted once.

Needs root. The first run may build the image (a few minutes, downloads from the Debian archive
that apt here is configured for); later runs take it from the cache. The boot uses
`--private-network`: the container has no network at all.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from sandbox import hosts, image

pytestmark = pytest.mark.site

BOOT_TIMEOUT = 30  # seconds from starting nspawn to `systemctl is-system-running` = running
STOP_TIMEOUT = 30
CGROUP_ROOTS = (Path("/sys/fs/cgroup/systemd"), Path("/sys/fs/cgroup/unified"))


@pytest.fixture(scope="module")
def root() -> Path:
    if os.geteuid() != 0:
        pytest.skip("building and booting the host image needs root")
    return image.ensure_image(progress=print)


# -- the image on disk ------------------------------------------------------------------------------


def _exists_in(root: Path, rel: str) -> bool:
    """Whether root/rel exists, following symlinks as the image sees them (slurmd, for one, is an
    absolute link through /etc/alternatives)."""
    path = root / rel
    for _ in range(16):
        if not path.is_symlink():
            return path.exists()
        target = os.readlink(path)
        path = root / target.lstrip("/") if target.startswith("/") else path.parent / target
    return False


def test_image_has_the_baked_software(root: Path) -> None:
    for rel in (
        "usr/sbin/sshd",
        "usr/bin/python3",
        "usr/sbin/slurmd",
        "usr/sbin/slurmctld",
        "usr/sbin/slurmdbd",
        "usr/sbin/slurmrestd",
        "usr/bin/sbatch",
        "usr/sbin/munged",
        "usr/sbin/mariadbd",
        "usr/bin/containerd",
        "usr/bin/sudo",
        "usr/lib/python3/dist-packages/apt_pkg.cpython-311-x86_64-linux-gnu.so",
    ):
        assert _exists_in(root, rel), rel
    assert "VERSION_CODENAME=bookworm" in (root / "etc/os-release").read_text()


def test_image_carries_no_identity_and_no_archive(root: Path) -> None:
    etc = root / "etc"
    assert (etc / "machine-id").read_text() == ""
    assert not list((etc / "ssh").glob("ssh_host_*"))
    assert not (etc / "munge/munge.key").exists()
    assert not (etc / "hostname").exists()
    assert not (etc / "apt/sources.list").exists()
    assert not list((etc / "apt/sources.list.d").iterdir())
    assert not list((root / "var/lib/apt/lists").glob("*_Packages*"))
    assert not list((root / "var/cache/apt/archives").glob("*.deb"))
    sshd = (etc / "ssh/sshd_config.d/10-aifactory.conf").read_text().splitlines()
    assert "PermitRootLogin prohibit-password" in sshd
    assert "UseDNS no" in sshd


def _is_enabled(root: Path, unit: str) -> str:
    out = subprocess.run(
        ["chroot", str(root), "systemctl", "is-enabled", unit], capture_output=True, text=True, check=False
    )
    return out.stdout.strip()


def test_baked_daemons_are_disabled_not_masked(root: Path) -> None:
    wants = [p.name for p in (root / "etc/systemd/system").glob("*.wants/*")]
    for unit in image.DISABLED_UNITS + image.NO_ARCHIVE_UNITS:
        assert (root / "lib/systemd/system" / unit).exists(), f"{unit} is not in the image"
        assert unit not in wants, unit
        assert _is_enabled(root, unit) == "disabled", unit
    for unit in image.ENABLED_UNITS:
        assert _is_enabled(root, unit) == "enabled", unit


def test_warm_ensure_image_is_fast(root: Path) -> None:
    start = time.monotonic()
    assert image.ensure_image(progress=print) == root
    assert time.monotonic() - start < 0.5


def test_tarball_without_tree_is_extracted_not_rebuilt(root: Path, tmp_path: Path, monkeypatch) -> None:
    cache = tmp_path / "cache"
    (cache / "images").mkdir(parents=True)
    tarball = image.image_tarball()
    dst = cache / "images" / tarball.name
    try:
        os.link(tarball, dst)
    except OSError:
        shutil.copyfile(tarball, dst)
    monkeypatch.setenv("AIFACTORY_CACHE", str(cache))
    said: list[str] = []
    got = image.ensure_image(progress=said.append)
    try:
        assert got == cache / "images" / root.name
        assert _exists_in(got, "usr/sbin/slurmd")
        assert any("extracting" in s for s in said), said
        assert not any("building" in s for s in said), said
        assert not [p.name for p in (cache / "images").glob(".*") if p.name != ".lock"]
    finally:
        shutil.rmtree(got, ignore_errors=True)


def test_sources_keep_only_the_debian_archive(tmp_path: Path) -> None:
    apt = tmp_path / "apt"
    (apt / "sources.list.d").mkdir(parents=True)
    (apt / "sources.list").write_text(
        "deb http://mirror.example/debian trixie main contrib\n"
        "deb [signed-by=/usr/share/keyrings/docker.gpg] https://docker.example/debian trixie stable\n"
        "deb http://mirror.example/debian trixie-backports main\n"
    )
    (apt / "sources.list.d/debian.sources").write_text(
        "Types: deb\nURIs: http://security.example/debian-security\nSuites: trixie-security\n"
        "Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n"
        "Types: deb\nURIs: https://pg.example/apt\nSuites: trixie-pgdg\nComponents: main\n"
    )
    (apt / "sources.list.d/other.sources").write_text(
        "Types: deb\nURIs: https://node.example/\nSuites: nodistro\nComponents: main\n"
    )
    (apt / "sources.list.d/off.list.disabled").write_text("deb http://off.example/debian trixie main\n")
    text = image.debian_sources(apt, {"ID": "debian", "VERSION_CODENAME": "trixie"})
    assert "mirror.example/debian\nSuites: bookworm\n" in text
    assert "security.example/debian-security\nSuites: bookworm-security\n" in text
    for other in ("docker", "backports", "pg.example", "node.example", "off.example", "trixie"):
        assert other not in text
    with pytest.raises(RuntimeError, match="no Debian archive"):
        image.debian_sources(tmp_path / "nothing", {"ID": "debian", "VERSION_CODENAME": "bookworm"})


# -- one boot ---------------------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            kids += [int(k) for k in (task / "children").read_text().split()]
    return kids


def _inside(init: int, *cmd: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run a command in the container: all of init's namespaces, and its root."""
    return subprocess.run(
        ["nsenter", "-t", str(init), "-a", "-r", "-w", *cmd],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_image_boots_clean_in_nspawn(root: Path, tmp_path: Path) -> None:
    name = f"imgtest-{os.getpid()}"
    disk = tmp_path / "disk"
    upper, work, merged = disk / "upper", disk / "work", disk / "root"
    for d in (upper, work, merged):
        d.mkdir(parents=True)
    # nspawn starts from its own cgroup: from the root one it would create payload/ and supervisor/
    # at the top of the hierarchy, shared with any other container started that way.
    cgroups = [r / "aifactory-test" / name for r in CGROUP_ROOTS if r.exists()]
    console = tmp_path / "console.log"
    nspawn: subprocess.Popen[bytes] | None = None
    try:
        subprocess.run(
            ["mount", "-t", "overlay", "overlay", "-o",
             f"lowerdir={root},upperdir={upper},workdir={work}", str(merged)],
            check=True,
        )  # fmt: skip
        for d in cgroups:
            d.mkdir(parents=True, exist_ok=True)

        def join_cgroups() -> None:
            for d in cgroups:
                (d / "cgroup.procs").write_text(str(os.getpid()))

        start = time.monotonic()
        with open(console, "wb") as log:
            nspawn = subprocess.Popen(
                ["systemd-nspawn", "--boot", f"--directory={merged}", f"--machine={name}",
                 "--register=no", "--keep-unit", "--console=passive", "--private-network"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=join_cgroups,  # runs before exec; no threads involved
            )  # fmt: skip
        state, init = "", None
        while time.monotonic() - start < BOOT_TIMEOUT:
            assert nspawn.poll() is None, f"nspawn exited {nspawn.returncode}:\n{console.read_text()}"
            init = init or next(iter(_children(nspawn.pid)), None)
            if init:
                state = _inside(init, "systemctl", "is-system-running").stdout.strip()
                if state not in ("", "offline", "initializing", "starting"):
                    break
            time.sleep(0.5)
        booted = time.monotonic() - start
        assert init, f"no container init under nspawn:\n{console.read_text()}"
        failed = _inside(init, "systemctl", "--failed", "--no-legend", "--plain").stdout
        assert state == "running", f"state {state!r} after {booted:.1f} s; failed units:\n{failed}"
        print(f"booted to running in {booted:.1f} s")

        # what makes it a usable host: sshd up with keys made at first boot, baked daemons off
        assert _inside(init, "systemctl", "is-active", "ssh.service").stdout.strip() == "active"
        assert (upper / "etc/ssh/ssh_host_ed25519_key").exists()
        for unit in ("munge.service", "slurmd.service", "mariadb.service", "containerd.service"):
            assert _inside(init, "systemctl", "is-active", unit).stdout.strip() == "inactive", unit

        # the periodic jobs that stay enabled do not fail in a container either
        timers = _inside(init, "systemctl", "list-timers", "--all", "--no-legend", "--plain").stdout
        services = [w for line in timers.splitlines() for w in line.split() if w.endswith(".service")]
        assert services, timers
        print(f"starting the timers' services: {' '.join(services)}")
        _inside(init, "systemctl", "start", *services, timeout=120)
        state = _inside(init, "systemctl", "is-system-running").stdout.strip()
        failed = _inside(init, "systemctl", "--failed", "--no-legend", "--plain").stdout
        assert state == "running", f"after starting {services}: {state!r}, failed:\n{failed}"

        # SIGTERM on nspawn is an orderly poweroff
        nspawn.send_signal(signal.SIGTERM)
        assert nspawn.wait(timeout=STOP_TIMEOUT) == 0, console.read_text()
    finally:
        if nspawn is not None and nspawn.poll() is None:
            nspawn.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                nspawn.wait(timeout=10)
        hosts.kill_cgroup(cgroups)
        hosts.remove_cgroups(cgroups)
        if hosts.is_mounted(merged) and subprocess.run(["umount", str(merged)], check=False).returncode:
            subprocess.run(["umount", "--lazy", str(merged)], check=False)
    assert not hosts.is_mounted(merged)
    assert not hosts.cgroup_pids(cgroups)


def test_failed_build_raises_with_the_tail_of_its_output(tmp_path: Path) -> None:
    said: list[str] = []
    script = "echo 'I: running apt-get update...'; for i in $(seq 100); do echo line $i; done; exit 3"
    with pytest.raises(RuntimeError, match=r"(?s)exit 3\).*line 100") as err:
        image._run_logged(["sh", "-c", script], tmp_path / "build.log", tmp_path, said.append)
    assert "line 50" not in str(err.value)  # a tail, not the whole log
    assert "line 1\n" in (tmp_path / "build.log").read_text()
    assert said == ["image: updating package lists..."]


def test_interrupted_build_leftovers_are_removed(tmp_path: Path) -> None:
    images = tmp_path / "images"
    (images / ".build-123/mmdebstrap.x/etc").mkdir(parents=True)
    (images / ".extract-456/usr").mkdir(parents=True)
    (images / ".lock").touch()
    (images / "bookworm-abc").mkdir()
    image._remove_leftovers(images)
    assert sorted(p.name for p in images.iterdir()) == [".lock", "bookworm-abc"]
