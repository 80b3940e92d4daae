"""The root filesystem every emulated host boots from: a cached Debian 12 (bookworm) image.

Built once with mmdebstrap from the Debian archive that this machine's apt is configured for
(the hosts themselves never reach an archive, so everything a role needs is baked in), then kept
in `cache_dir()/images/` as a zstd tarball plus its extracted tree. The tree is the shared,
read-only lower dir of every host's overlayfs (`sandbox.hosts`).

The image is generic: no hostname, an empty machine-id, no ssh host keys, no munge key, no apt
sources, and the baked daemons (munge, Slurm, MariaDB, containerd, keepalived) disabled so that a
fresh host boots clean under `systemd-nspawn --boot` (`systemctl is-system-running` says `running`) and the
roles enable what each machine needs.

The cache key hashes everything that shapes the image (suite, variant, packages, dpkg filters,
customization script, IMAGE_VERSION), so changing any of them builds a new image next to the old.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from aifactory import paths

Progress = Callable[[str], object]

SUITE = "bookworm"
VARIANT = "minbase"
# Bump to force a rebuild when something outside the hashed inputs below changes the result.
IMAGE_VERSION = 1

HOST_PACKAGES: tuple[str, ...] = (
    # boot and login
    "systemd",
    "systemd-sysv",
    "dbus",
    "libpam-systemd",
    "openssh-server",
    "sudo",
    # what Ansible needs on a managed host
    "python3",
    "python3-apt",
    # the MariaDB modules of Ansible (community.mysql) need a Python driver (slurmdbd's database)
    "python3-pymysql",
    # basic tools
    "iproute2",
    "iputils-ping",
    "procps",
    "ca-certificates",
    "kmod",
    "chrony",
    # Slurm and what it runs on
    "munge",
    "slurm-wlm",
    "slurmctld",
    "slurmd",
    "slurmdbd",
    "slurmrestd",
    "slurm-wlm-jwt-plugin",
    "slurm-client",
    "mariadb-server",
    # the Kubernetes data plane: containerd with crun (runc cannot start containers inside an nspawn
    # host), CNI plugins, and what kube-proxy and the policy agent drive (iptables, ipset, conntrack)
    "containerd",
    "crun",
    "containernetworking-plugins",
    "iptables",
    "ipset",
    "conntrack",
    # the control plane's API address on sites with several control-plane machines (VRRP)
    "keepalived",
    # monitoring: Prometheus (the head) and its node exporter (every machine)
    "prometheus",
    "prometheus-node-exporter",
)

# Enabled in the image: the network (each host gets a .network file for host0) and ssh.
ENABLED_UNITS: tuple[str, ...] = ("systemd-networkd.service", "ssh.service")

# Daemons the packages enable on install; disabled (not masked) so that roles can enable them.
DISABLED_UNITS: tuple[str, ...] = (
    "munge.service",
    "slurmd.service",
    "slurmctld.service",
    "slurmdbd.service",
    "slurmrestd.service",
    "mariadb.service",
    "containerd.service",
    "keepalived.service",
    "prometheus.service",
    "prometheus-node-exporter.service",
)

# apt's periodic jobs: the hosts have no archive to fetch from (apt-daily would also wait for the
# network through systemd-networkd-wait-online).
NO_ARCHIVE_UNITS: tuple[str, ...] = ("apt-daily.timer", "apt-daily-upgrade.timer")

# Units that fail in a systemd-nspawn container; any one of them failing would leave
# `systemctl is-system-running` at `degraded`. Booting this image (systemd 252, nspawn --boot
# --private-network) found none: the candidates skip themselves there (chrony.service needs
# CAP_SYS_TIME, e2scrub_reap.service CAP_SYS_RAWIO, fstrim.service is !container). Add any that a
# boot shows failing; tests/site/test_image.py boots the image and checks.
MASKED_UNITS: tuple[str, ...] = ()

# Hosts need no documentation: keeps the image and every host start smaller.
DPKG_OPTIONS: tuple[str, ...] = (
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/locale/*",
    "path-include=/usr/share/locale/locale.alias",
)

# Runs as mmdebstrap's customize hook, with the image root as $1 (before mmdebstrap's cleanup,
# which also empties /etc/machine-id and removes apt's package lists and downloaded debs).
CUSTOMIZE_SCRIPT = r"""
set -eu
root="$1"
ENABLED_UNITS="@ENABLED_UNITS@"
DISABLED_UNITS="@DISABLED_UNITS@ @NO_ARCHIVE_UNITS@"
MASKED_UNITS="@MASKED_UNITS@"

# Fallback for a host that was not given ssh host keys: generate them before sshd starts.
cat > "$root/etc/systemd/system/aifactory-ssh-keygen.service" <<'EOF'
[Unit]
Description=Generate the ssh host keys this host was not given
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key
Before=ssh.service

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A

[Install]
WantedBy=ssh.service
EOF

chroot "$root" systemctl enable $ENABLED_UNITS aifactory-ssh-keygen.service
for unit in $DISABLED_UNITS; do
    if [ -e "$root/lib/systemd/system/$unit" ]; then
        chroot "$root" systemctl disable "$unit"
    fi
done
if [ -n "$MASKED_UNITS" ]; then
    chroot "$root" systemctl mask $MASKED_UNITS
fi

# sshd: keys only, no reverse lookups (hosts have no DNS). Debian reads sshd_config.d first.
mkdir -p "$root/etc/ssh/sshd_config.d"
cat > "$root/etc/ssh/sshd_config.d/10-aifactory.conf" <<'EOF'
PermitRootLogin prohibit-password
PasswordAuthentication no
UseDNS no
EOF

# Per-host identity is written into each host's overlay; the image has none.
rm -f "$root"/etc/ssh/ssh_host_*
rm -f "$root/etc/munge/munge.key"
: > "$root/etc/machine-id"
rm -f "$root/var/lib/dbus/machine-id"
rm -f "$root/etc/hostname"
: > "$root/etc/resolv.conf"
printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' > "$root/etc/hosts"

# Hosts have no access to an archive: no sources, no leftover apt options from the build.
rm -f "$root/etc/apt/sources.list" "$root/etc/apt/apt.conf.d/99mmdebstrap"
find "$root/etc/apt/sources.list.d" -mindepth 1 -delete
"""

# Runs right after CUSTOMIZE_SCRIPT: keep only the debs of installed packages in the deb cache
# that is synced out of the build (see _build_tarball).
PRUNE_DEBS_SCRIPT = r"""
set -eu
cd "$1/var/cache/apt/archives"
chroot "$1" dpkg-query -W -f '${Package}_${Version}_${Architecture}.deb\n' | sed 's/:/%3a/' > ../keep
for f in *.deb; do
    [ -e "$f" ] || continue
    grep -qxF "$f" ../keep || rm -f "$f"
done
rm -f ../keep
"""

# Host tools the build needs, and the Debian package of each.
HOST_TOOLS = {"mmdebstrap": "mmdebstrap", "zstd": "zstd", "systemd-nspawn": "systemd-container"}

# apt options of this machine that mmdebstrap's own apt configuration must repeat so that the build
# reaches the archive exactly as `apt-get` here does (a proxy, a snapshot's expired Release files).
FORWARDED_APT_OPTIONS = (
    "Acquire::http::Proxy",
    "Acquire::https::Proxy",
    "Acquire::Check-Valid-Until",
    "Acquire::Check-Date",
)

DEBIAN_COMPONENTS = {"main", "contrib", "non-free", "non-free-firmware"}
DEBIAN_SUITE_SUFFIXES = ("", "-updates", "-security", "/updates")
APT_ETC = Path("/etc/apt")

BUILD_ESTIMATE = "about 3 min"


def customize_script() -> str:
    return (
        CUSTOMIZE_SCRIPT.replace("@ENABLED_UNITS@", " ".join(ENABLED_UNITS))
        .replace("@DISABLED_UNITS@", " ".join(DISABLED_UNITS))
        .replace("@NO_ARCHIVE_UNITS@", " ".join(NO_ARCHIVE_UNITS))
        .replace("@MASKED_UNITS@", " ".join(MASKED_UNITS))
    )


def image_key() -> str:
    """A short hash of everything that shapes the image: a change means a new image."""
    spec = {
        "version": IMAGE_VERSION,
        "suite": SUITE,
        "variant": VARIANT,
        "packages": sorted(HOST_PACKAGES),
        "dpkg": list(DPKG_OPTIONS),
        "customize": customize_script(),
        "prune": PRUNE_DEBS_SCRIPT,
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]


def images_dir() -> Path:
    return paths.cache_dir() / "images"


def image_name(key: str | None = None) -> str:
    return f"{SUITE}-{key or image_key()}"


def image_dir(key: str | None = None) -> Path:
    """The extracted root filesystem (exists only once complete: it is renamed into place)."""
    return images_dir() / image_name(key)


def image_tarball(key: str | None = None) -> Path:
    return images_dir() / f"{image_name(key)}.tar.zst"


def deb_cache_dir() -> Path:
    """The debs of the last build, fed to the next one so a rebuild downloads only what changed."""
    return images_dir() / "debs"


def ensure_image(progress: Progress = print) -> Path:
    """Return the extracted root dir of the current image, building or extracting it if needed."""
    root = image_dir()
    if root.is_dir():
        return root
    images = images_dir()
    images.mkdir(parents=True, exist_ok=True)
    with _locked(images / ".lock", progress):
        if root.is_dir():  # built by someone else while we waited
            return root
        _remove_leftovers(images)
        tarball = image_tarball()
        if not tarball.is_file():
            ensure_host_tools(progress)
            _build_tarball(tarball, progress)
        else:
            _require_tools(["zstd"], progress)
        _extract(tarball, root, progress)
    return root


# -- host tools -------------------------------------------------------------------------------------


def ensure_host_tools(progress: Progress = print) -> None:
    """Install mmdebstrap, zstd and systemd-nspawn on this machine if missing."""
    _require_tools(list(HOST_TOOLS), progress)


def _require_tools(tools: list[str], progress: Progress) -> None:
    missing = sorted({HOST_TOOLS[t] for t in tools if shutil.which(t) is None})
    if not missing:
        return
    progress(f"image: installing host packages {' '.join(missing)}...")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "-q", "-o", "DPkg::Lock::Timeout=300", *missing]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        progress("image: apt-get install failed; running apt-get update and retrying...")
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, check=False)
        result = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(
            f"apt-get install {' '.join(missing)} failed:\n{_tail(result.stdout + result.stderr)}"
        )


# -- apt sources of this machine --------------------------------------------------------------------


def _os_release() -> dict[str, str]:
    info: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            k, sep, v = line.partition("=")
            if sep:
                info[k.strip()] = v.strip().strip('"')
    return info


def _source_files(apt_etc: Path) -> list[Path]:
    files = [apt_etc / "sources.list"]
    d = apt_etc / "sources.list.d"
    if d.is_dir():
        files += sorted(p for p in d.iterdir() if p.suffix in (".list", ".sources"))
    return [f for f in files if f.is_file()]


def _parse_one_line(text: str) -> Iterator[dict[str, list[str]]]:
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        opts: dict[str, list[str]] = {}
        m = re.match(r"^(\S+)\s+\[([^\]]*)\]\s+(.*)$", line)
        if m:
            kind, optstr, rest = m.groups()
            for opt in optstr.split():
                k, _, v = opt.partition("=")
                opts[k.lower()] = v.split(",")
        else:
            kind, _, rest = line.partition(" ")
        words = rest.split()
        if len(words) < 2:
            continue
        yield {
            "types": [kind],
            "uris": [words[0]],
            "suites": [words[1]],
            "components": words[2:],
            "signed-by": opts.get("signed-by", []),
        }


def _parse_deb822(text: str) -> Iterator[dict[str, list[str]]]:
    for para in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = None
        for raw in para.splitlines():
            if raw.startswith("#"):
                continue
            if raw[:1] in (" ", "\t") and key:
                fields[key] += "\n" + raw.strip()
                continue
            k, sep, v = raw.partition(":")
            if sep:
                key = k.strip().lower()
                fields[key] = v.strip()
        if not fields or fields.get("enabled", "yes").lower() == "no":
            continue
        signed = fields.get("signed-by", "")
        yield {
            "types": fields.get("types", "").split(),
            "uris": fields.get("uris", "").split(),
            "suites": fields.get("suites", "").split(),
            "components": fields.get("components", "").split(),
            # an inline key (several lines) is kept whole
            "signed-by": [signed] if "\n" in signed else signed.split(),
        }


def debian_sources(apt_etc: Path = APT_ETC, os_release: dict[str, str] | None = None) -> str:
    """The Debian archive entries of this machine's apt sources, for bookworm, as a deb822 file.

    Only the Debian archive is used (main suite, -updates, -security; Debian components; Debian's
    keyring), so third-party repositories configured here are never contacted. On a Debian machine
    of another release, the same archive is used with its suites renamed to bookworm.
    """
    info = _os_release() if os_release is None else os_release
    codenames = {SUITE}
    if info.get("ID") == "debian" and info.get("VERSION_CODENAME"):
        codenames.add(info["VERSION_CODENAME"])
    entries: dict[tuple[str, str], list[str]] = {}  # (uri, signed-by) -> suites
    for f in _source_files(apt_etc):
        text = f.read_text()
        deb822 = f.suffix == ".sources"
        for entry in _parse_deb822(text) if deb822 else _parse_one_line(text):
            if "deb" not in entry["types"] or "main" not in entry["components"]:
                continue
            if not set(entry["components"]) <= DEBIAN_COMPONENTS:
                continue
            signed = entry["signed-by"]
            if signed and not all("debian-archive" in s for s in signed):
                continue
            for suite in entry["suites"]:
                for code in codenames:
                    suffix = suite[len(code) :] if suite.startswith(code) else None
                    if suffix in DEBIAN_SUITE_SUFFIXES:
                        new = SUITE + ("-security" if suffix == "/updates" else suffix)
                        for uri in entry["uris"]:
                            suites = entries.setdefault((uri, " ".join(signed)), [])
                            if new not in suites:
                                suites.append(new)
    if not entries:
        raise RuntimeError(
            f"no Debian archive found in this machine's apt sources ({apt_etc}/sources.list and "
            f"sources.list.d/): the host image is built from the archive apt here is configured for"
        )
    paras = []
    for (uri, keyring), suites in entries.items():
        para = f"Types: deb\nURIs: {uri}\nSuites: {' '.join(suites)}\nComponents: main\n"
        if keyring:
            para += f"Signed-By: {keyring}\n"
        paras.append(para)
    return "\n".join(paras)


def _forwarded_apt_options() -> list[str]:
    try:
        dump = subprocess.run(["apt-config", "dump"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return []
    return [
        line.strip()
        for line in dump.splitlines()
        if line.startswith(FORWARDED_APT_OPTIONS) and '"' in line and not line.rstrip().endswith('"";')
    ]


# -- build ------------------------------------------------------------------------------------------


def _mmdebstrap_argv(
    target: Path, sources: Path, work: Path, debs_in: Path | None, debs_out: Path
) -> list[str]:
    argv = [
        "mmdebstrap",
        "--mode=root",
        f"--variant={VARIANT}",
        f"--include={','.join(HOST_PACKAGES)}",
        *(f"--dpkgopt={o}" for o in DPKG_OPTIONS),
        *(f"--aptopt={o}" for o in _forwarded_apt_options()),
        # the deb cache: previous debs in, this build's debs out (see deb_cache_dir)
        "--skip=download/empty",
        "--skip=essential/unlink",
        '--setup-hook=mkdir -p "$1/var/cache/apt/archives"',
    ]
    if debs_in is not None:
        argv.append(f"--setup-hook=sync-in {shlex.quote(str(debs_in))} /var/cache/apt/archives/")
    customize = work / "customize.sh"
    customize.write_text(customize_script())
    prune = work / "prune-debs.sh"
    prune.write_text(PRUNE_DEBS_SCRIPT)
    argv += [
        f'--customize-hook=sh {shlex.quote(str(customize))} "$1"',
        f'--customize-hook=sh {shlex.quote(str(prune))} "$1"',
        f"--customize-hook=sync-out /var/cache/apt/archives {shlex.quote(str(debs_out))}",
        SUITE,
        str(target),
        str(sources),
    ]
    return argv


def _build_tarball(tarball: Path, progress: Progress) -> None:
    images = tarball.parent
    tag = f".build-{os.getpid()}"
    work = images / tag
    work.mkdir()
    try:
        sources = work / "debian.sources"
        sources.write_text(debian_sources())
        debs = deb_cache_dir()
        debs_in = debs if debs.is_dir() and any(debs.glob("*.deb")) else None
        debs_out = work / "debs"
        debs_out.mkdir()
        tmp_tarball = work / tarball.name  # the .tar.zst suffix selects mmdebstrap's output format
        argv = _mmdebstrap_argv(tmp_tarball, sources, work, debs_in, debs_out)
        cached = f", {len(list(debs.glob('*.deb')))} debs cached" if debs_in else ""
        progress(f"image: building {SUITE} with {len(HOST_PACKAGES)} packages ({BUILD_ESTIMATE}{cached})...")
        start = time.monotonic()
        log_path = images / "build.log"
        _run_logged(argv, log_path, work, progress)
        os.replace(tmp_tarball, tarball)
        # keep this build's debs for the next build
        old = work / "debs.old"
        if debs.exists():
            debs.rename(old)
        debs_out.rename(debs)
        size = tarball.stat().st_size / 2**20
        progress(f"image: built {tarball.name} ({size:.0f} MiB) in {time.monotonic() - start:.0f} s")
    finally:
        _remove_tree(work)


def _run_logged(argv: list[str], log_path: Path, work: Path, progress: Progress) -> None:
    """Run mmdebstrap, log everything, pass its stage lines on as progress, raise with the tail."""
    tail: collections.deque[str] = collections.deque(maxlen=40)
    last_stage: str | None = None
    env = {**os.environ, "TMPDIR": str(work), "DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C.UTF-8"}
    with open(log_path, "w") as log:
        log.write("$ " + " ".join(argv) + "\n")
        log.flush()
        proc = subprocess.Popen(
            argv,
            cwd=work,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            tail.append(line.rstrip("\n"))
            stage = _stage(line)
            if stage and stage != last_stage:
                progress(f"image: {stage}...")
                last_stage = stage
        rc = proc.wait()
    if rc != 0:
        raise RuntimeError(
            f"mmdebstrap failed (exit {rc}); full log in {log_path}; last lines:\n" + "\n".join(tail)
        )


# mmdebstrap's "I: ..." lines worth showing while the build runs
_STAGES = (
    ("I: running apt-get update", "updating package lists"),
    ("I: downloading packages", "downloading packages"),
    ("I: installing essential packages", "installing essential packages"),
    ("I: installing remaining packages", f"installing {len(HOST_PACKAGES)} packages and their dependencies"),
    ("I: running --customize-hook", "customizing"),
    ("I: creating tarball", "packing the tarball"),
)


def _stage(line: str) -> str | None:
    for prefix, text in _STAGES:
        if line.startswith(prefix):
            return text
    return None


def _extract(tarball: Path, root: Path, progress: Progress) -> None:
    progress(f"image: extracting {tarball.name}...")
    tmp = root.parent / f".extract-{os.getpid()}"
    tmp.mkdir()
    try:
        result = subprocess.run(
            [
                "tar",
                "--zstd",
                "-x",
                "-p",
                "--numeric-owner",
                "--xattrs",
                "--xattrs-include=*",
                "-f",
                str(tarball),
                "-C",
                str(tmp),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"extracting {tarball} failed:\n{_tail(result.stderr)}")
        tmp.chmod(0o755)
        os.replace(tmp, root)
    finally:
        if tmp.exists():
            _remove_tree(tmp)


# -- atomicity helpers ------------------------------------------------------------------------------


@contextlib.contextmanager
def _locked(lock_path: Path, progress: Progress) -> Iterator[None]:
    with open(lock_path, "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            progress("image: another process is building the image; waiting...")
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path.resolve()).rstrip("/") + "/"
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    return [p for p in points if (p + "/").startswith(prefix)]


def _remove_tree(path: Path) -> None:
    """rm -rf that refuses to descend into anything mounted below path (an interrupted build's
    chroot may still have /dev, /proc or /sys mounted: deleting through them would hit the host)."""
    if not path.exists() and not path.is_symlink():
        return
    mounted = _mounts_under(path)
    for point in sorted(mounted, key=len, reverse=True):
        subprocess.run(["umount", "--lazy", point], capture_output=True, check=False)
    if _mounts_under(path):
        raise RuntimeError(f"cannot remove {path}: still mounted below it: {_mounts_under(path)}")
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def _remove_leftovers(images: Path) -> None:
    """Temp dirs of builds or extractions that were interrupted (we hold the lock: none is running)."""
    for p in images.glob(".*"):
        if p.name != ".lock":
            _remove_tree(p)


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])
