"""Small OCI container images built from local files: no Docker, no registry, no network.

An air-gapped site cannot pull images, so the few it needs (the pod sandbox's pause, a busybox toolbox for
validation pods) are built here from files already on the machine and shipped as image archives that
`ctr -n k8s.io images import` loads and a later registry push can reuse.

One archive is both layouts at once, sharing the same blobs:
- an OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/<hex>`): containerd's importer takes the
  OCI path whenever `oci-layout` is present and reads `index.json` as the image index; each index entry is
  named by its `io.containerd.image.name` annotation, else by `org.opencontainers.image.ref.name`;
- docker-archive's `manifest.json` (Config/RepoTags/Layers pointing into `blobs/sha256/`, as Docker 25+
  writes it) for tools that only read that.

Archives are byte-for-byte reproducible: every tar entry has mtime 0, uid/gid 0 and a fixed mode, entries
are sorted, JSON is written with sorted keys, and the config has no `created` time. The same inputs give
the same digests, so a rebuilt bundle shows no spurious change.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import stat
import struct
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from aifactory import __version__, paths

Progress = Callable[[str], None]

BUSYBOX = Path("/bin/busybox")
PAUSE_TAG = "3.10"  # the pause version the toolchain builds (toolchain.PAUSE_VERSION)
# The name of the site registry, which the images carry: every node's containerd resolves it to the
# registry on the head (site_registry role), which serves the bundle's images; the pod sandbox image
# is also imported into each node from the bundle, so no pod depends on the registry to start.
SITE_REGISTRY = "registry.aifactory.local"
SITE_REGISTRY_PORT = 5000  # where the head serves it (site_registry role: site_registry_port)
TOOLBOX_TAG = "1.0"
TOOLBOX_REF = f"{SITE_REGISTRY}/aifactory/toolbox:{TOOLBOX_TAG}"
COREDNS_TAG = "1.15.0"  # the CoreDNS version the toolchain builds (toolchain.COREDNS_VERSION)
COREDNS_REF = f"{SITE_REGISTRY}/aifactory/coredns:{COREDNS_TAG}"
KUBE_ROUTER_TAG = "v2.1.0"  # the kube-router version the toolchain builds (toolchain.KUBE_ROUTER_VERSION)
KUBE_ROUTER_REF = f"{SITE_REGISTRY}/aifactory/kube-router:{KUBE_ROUTER_TAG}"
# What kube-router runs to program a node's firewall: Debian's iptables (the backend the machine's
# alternatives choose, as kube-proxy on the node uses) and ipset, with their libraries and the
# iptables extensions they load.
FIREWALL_TOOLS = tuple(
    Path("/usr/sbin") / t
    for t in (
        "iptables", "iptables-save", "iptables-restore", "ip6tables", "ip6tables-save", "ip6tables-restore",
        "ipset",
    )
)  # fmt: skip
XTABLES_EXTENSIONS = Path(f"/usr/lib/{platform.machine()}-linux-gnu/xtables")
KUEUE_TAG = "v0.17.0"  # the Kueue version the toolchain builds (toolchain.KUEUE_VERSION)
KUEUE_REF = f"{SITE_REGISTRY}/aifactory/kueue:{KUEUE_TAG}"
KUEUE_UID = 65532  # upstream's image runs as nonroot too
OPERATOR_TAG = __version__  # the tenant operator is this repository's code
OPERATOR_REF = f"{SITE_REGISTRY}/aifactory/tenant-operator:{OPERATOR_TAG}"
# The operator image's interpreter and ssh client (to reach Slurm on the head) are Debian's, with the
# libraries they load; its Python packages are the ones installed here, at the same versions.
PYTHON = Path("/usr/bin/python3.11")
SSH = Path("/usr/bin/ssh")
OPERATOR_DISTRIBUTIONS = ("kopf", "uvloop", "kubernetes", "prometheus-client")
# The operator uses the synchronous Kubernetes client; the asyncio twin would add 41 MiB.
OPERATOR_SKIP = ("kubernetes/aio", "kubernetes/test", "kubernetes/e2e_test")
OPERATOR_SOURCES = ("aifactory", "operators")  # this repository's packages the operator imports
OPERATOR_HOME = "/opt/aifactory"
OPERATOR_UID = 65532
# Never in the image: tests, GUIs, and the static libpython of the -dev package.
STDLIB_SKIP = ("test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3", "__pycache__")
TOOLBOX_APPLETS = (
    "sh", "ls", "cat", "echo", "sleep", "env", "ps", "kill", "wget", "nc", "nslookup", "ip", "ping",
    "hostname", "id", "grep", "true", "false", "test", "mkdir", "rm", "date", "timeout", "head", "tail",
)  # fmt: skip

MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar"
ANNOTATION_CONTAINERD_NAME = "io.containerd.image.name"
ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"

# platform.machine() -> GOARCH, the architecture names image configs and containerd's platform matcher use.
_GOARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64", "ppc64le": "ppc64le"}


class ImageError(RuntimeError):
    pass


@dataclass(frozen=True)
class ImageFile:
    """One entry of the image's single layer: a copied file, literal bytes, a symlink or a directory."""

    path_in_image: str
    source: Path | None
    mode: int
    symlink_to: str | None = None
    content: bytes | None = None
    directory: bool = False  # an explicit directory (parents are implied, 0755); e.g. /tmp 1777
    missing_hint: str = field(default="", compare=False)  # how to get `source` when it is absent

    def __post_init__(self) -> None:
        kinds = sum(x is not None for x in (self.source, self.symlink_to, self.content)) + self.directory
        if kinds != 1:
            raise ImageError(
                f"{self.path_in_image}: give exactly one of source, symlink_to, content, directory"
            )
        if not self.path_in_image.startswith("/") or _member_name(self.path_in_image) in ("", "."):
            raise ImageError(f"{self.path_in_image!r}: path_in_image must be an absolute file path")


@dataclass(frozen=True)
class ImageSpec:
    name: str  # repository path without registry, e.g. "aifactory/pause"
    tag: str
    files: tuple[ImageFile, ...]
    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    user: str = ""

    def ref(self, registry: str) -> str:
        return f"{registry.rstrip('/')}/{self.name}:{self.tag}"

    @property
    def archive_name(self) -> str:
        return f"{self.name.replace('/', '_')}_{self.tag}.tar"

    def missing_inputs(self) -> list[str]:
        """One message per source file that does not exist, with the hint on how to get it."""
        return [
            f"{f.source} missing" + (f": {f.missing_hint}" if f.missing_hint else "")
            for f in self.files
            if f.source is not None and not f.source.is_file()
        ]


def goarch(machine: str | None = None) -> str:
    m = machine or platform.machine()
    try:
        return _GOARCH[m]
    except KeyError:
        raise ImageError(f"no GOARCH known for machine {m!r}") from None


def _member_name(path_in_image: str) -> str:
    # Layer members are relative ("bin/sh"), as image builders write them; appliers root them at /.
    return str(PurePosixPath("/", path_in_image)).lstrip("/")


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def _tarinfo(name: str, kind: bytes, mode: int, size: int = 0, linkname: str = "") -> tarfile.TarInfo:
    """A tar header with nothing taken from the build machine (times, owners, umask)."""
    ti = tarfile.TarInfo(name)
    ti.type, ti.mode, ti.size, ti.linkname = kind, mode, size, linkname
    ti.mtime, ti.uid, ti.gid, ti.uname, ti.gname = 0, 0, 0, "", ""
    return ti


def _elf_interpreter(path: Path) -> str | None:
    """The loader an ELF file names in its PT_INTERP header (it is dynamically linked), else None."""
    with open(path, "rb") as f:
        head = f.read(64)
        if len(head) < 52 or head[:4] != b"\x7fELF":
            return None
        end = "<" if head[5] == 1 else ">"
        if head[4] == 2:  # ELFCLASS64
            (phoff,) = struct.unpack_from(end + "Q", head, 32)
            phentsize, phnum = struct.unpack_from(end + "HH", head, 54)
        else:
            (phoff,) = struct.unpack_from(end + "I", head, 28)
            phentsize, phnum = struct.unpack_from(end + "HH", head, 42)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
        for i in range(min(phnum, len(table) // max(phentsize, 1))):
            if struct.unpack_from(end + "I", table, i * phentsize)[0] != 3:  # PT_INTERP
                continue
            if head[4] == 2:
                offset, size = struct.unpack_from(end + "QQQQ", table, i * phentsize + 8)[0::3]
            else:
                offset, size = struct.unpack_from(end + "IIII", table, i * phentsize + 4)[0::3]
            f.seek(offset)
            return f.read(size).rstrip(b"\0").decode()
    return None


def _resolve(entries: dict[str, tuple[tarfile.TarInfo, bytes]], path: str) -> str | None:
    """`path` inside the layer being built, through its symlinks; the member name, or None if absent."""
    parts, done = list(PurePosixPath(path).parts[1:]), PurePosixPath("/")
    for _ in range(40):  # symlink hops, as the kernel's limit
        if not parts:
            return _member_name(str(done))
        name = _member_name(str(done / parts[0]))
        if name not in entries:
            return None
        ti = entries[name][0]
        if ti.type == tarfile.SYMTYPE:
            target = PurePosixPath(ti.linkname)
            joined = target if target.is_absolute() else done / target
            parts = [*PurePosixPath(os.path.normpath(joined)).parts[1:], *parts[1:]]
            done = PurePosixPath("/")
        else:
            done, parts = done / parts[0], parts[1:]
    return None


def _layer(files: Iterable[ImageFile]) -> bytes:
    """The image's one layer: an uncompressed tar, sorted, parent directories included."""
    entries: dict[str, tuple[tarfile.TarInfo, bytes]] = {}
    loaders: dict[str, Path] = {}  # the loader each dynamically linked file needs -> one such file
    for f in files:
        name = _member_name(f.path_in_image)
        if name in entries:
            raise ImageError(f"/{name} is given twice (or is also a parent directory)")
        for parent in map(str, PurePosixPath(name).parents):
            if parent == ".":
                continue
            ti, _ = entries.setdefault(parent, (_tarinfo(parent, tarfile.DIRTYPE, 0o755), b""))
            if ti.type != tarfile.DIRTYPE:
                raise ImageError(f"/{parent} is both a file and a parent directory")
        if f.symlink_to is not None:
            entries[name] = (_tarinfo(name, tarfile.SYMTYPE, 0o777, linkname=f.symlink_to), b"")
            continue
        if f.directory:
            entries[name] = (_tarinfo(name, tarfile.DIRTYPE, f.mode), b"")
            continue
        if f.source is not None:
            loader = _elf_interpreter(f.source)
            if loader is not None:
                loaders.setdefault(loader, f.source)
            data = f.source.read_bytes()
        else:
            data = f.content or b""
        entries[name] = (_tarinfo(name, tarfile.REGTYPE, f.mode, len(data)), data)
    for loader, needed_by in loaders.items():
        found = _resolve(entries, loader) if loader.startswith("/") else None
        if found not in entries or entries[found][0].type != tarfile.REGTYPE:
            raise ImageError(f"{needed_by} is dynamically linked and the image lacks its loader {loader}")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(entries):
            ti, data = entries[name]
            tar.addfile(ti, io.BytesIO(data) if ti.type == tarfile.REGTYPE else None)
    return buf.getvalue()


def build(spec: ImageSpec, out: Path, registry: str) -> str:
    """Write `spec` as an image archive at `out` (atomically); return the manifest digest."""
    missing = spec.missing_inputs()
    if missing:
        raise ImageError(f"{spec.name}:{spec.tag}: " + "; ".join(missing))
    ref, arch = spec.ref(registry), goarch()
    layer = _layer(spec.files)
    image_config: dict[str, Any] = {"Entrypoint": list(spec.entrypoint)}
    if spec.cmd:
        image_config["Cmd"] = list(spec.cmd)
    if spec.env:
        image_config["Env"] = list(spec.env)
    if spec.user:
        image_config["User"] = spec.user
    config = _json(
        {
            "architecture": arch,
            "os": "linux",
            "config": image_config,
            "rootfs": {"type": "layers", "diff_ids": [_digest(layer)]},  # uncompressed: diff_id == digest
        }
    )
    manifest = _json(
        {
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "config": {"mediaType": MEDIA_CONFIG, "digest": _digest(config), "size": len(config)},
            "layers": [{"mediaType": MEDIA_LAYER, "digest": _digest(layer), "size": len(layer)}],
        }
    )
    # Both annotations carry the full ref: containerd 1.6 names the image from io.containerd.image.name,
    # and a full ref in ref.name is kept as is by ctr's ref translators (a bare tag would become
    # "import-<date>:<tag>").
    index = _json(
        {
            "schemaVersion": 2,
            "mediaType": MEDIA_INDEX,
            "manifests": [
                {
                    "mediaType": MEDIA_MANIFEST,
                    "digest": _digest(manifest),
                    "size": len(manifest),
                    "platform": {"architecture": arch, "os": "linux"},
                    "annotations": {ANNOTATION_CONTAINERD_NAME: ref, ANNOTATION_REF_NAME: ref},
                }
            ],
        }
    )

    def blob(data: bytes) -> str:
        return "blobs/sha256/" + hashlib.sha256(data).hexdigest()

    docker_manifest = _json([{"Config": blob(config), "RepoTags": [ref], "Layers": [blob(layer)]}])
    members = {
        blob(layer): layer,
        blob(config): config,
        blob(manifest): manifest,
        "index.json": index,
        "manifest.json": docker_manifest,
        "oci-layout": _json({"imageLayoutVersion": "1.0.0"}),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            with tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tar:
                for d in ("blobs", "blobs/sha256"):
                    tar.addfile(_tarinfo(d, tarfile.DIRTYPE, 0o755))
                for name in sorted(members):
                    data = members[name]
                    tar.addfile(_tarinfo(name, tarfile.REGTYPE, 0o644, len(data)), io.BytesIO(data))
            f.flush()
            os.fsync(f.fileno())
        tmp.chmod(0o644)  # mkstemp creates 0600; the bundle is world-readable like the binaries
        tmp.replace(out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return _digest(manifest)


# -- files taken from this machine: programs with the libraries they load, Python distributions ------


def machine_file(path: Path, mode: int | None = None) -> list[ImageFile]:
    """`path` laid out as on this machine: each symlink met on the way (merged /usr's /lib -> usr/lib
    too) as a symlink, then the file, so a loader looking where it looks here finds it."""
    out: list[ImageFile] = []
    todo = PurePosixPath(os.path.abspath(path))
    for _ in range(40):  # symlink hops
        cur = PurePosixPath("/")
        for i, part in enumerate(todo.parts[1:]):
            cur = cur / part
            if os.path.islink(cur):
                target = os.readlink(cur)
                out.append(ImageFile(str(cur), None, 0o777, symlink_to=target))
                rest = todo.parts[i + 2 :]
                todo = PurePosixPath(os.path.normpath((cur.parent / target).joinpath(*rest)))
                break
        else:
            file_mode = stat.S_IMODE(os.stat(cur).st_mode) if mode is None else mode
            return [*out, ImageFile(str(cur), Path(cur), file_mode)]
    raise ImageError(f"{path}: too many levels of symlinks")


def _is_elf(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"\x7fELF"


def shared_libraries(files: Iterable[Path], own: Path | None = None) -> list[Path]:
    """The loader and every shared library that the ELF files among `files` load, as `ldd` finds them
    here; those under `own` (a wheel's bundled libraries, shipped with it) are left out."""
    found: set[str] = set()
    for f in files:
        if not _is_elf(f):
            continue
        r = subprocess.run(["ldd", str(f)], capture_output=True, text=True, check=False)
        if r.returncode != 0:  # statically linked: nothing to load
            continue
        for line in r.stdout.splitlines():
            words = line.split()
            if "not" in words and "found" in words:
                raise ImageError(f"{f}: {line.strip()} (ldd)")
            lib = next((w for w in words if w.startswith("/")), None)
            if lib and not (own and Path(lib).is_relative_to(own)):
                found.add(lib)
    return sorted(Path(x) for x in found)


def library_files(files: Iterable[Path], own: Path | None = None) -> list[ImageFile]:
    """The shared libraries the ELF files among `files` load (shared_libraries), each laid out as on
    this machine (machine_file), once."""
    found = {f.path_in_image: f for lib in shared_libraries(files, own) for f in machine_file(lib)}
    return list(found.values())


def python_distributions(roots: Iterable[str], target: str, skip: Iterable[str] = ()) -> list[ImageFile]:
    """The installed distributions `roots` need, their requirements followed (extras not), as the running
    interpreter has them, under `target`: the image runs exactly the versions installed here. Bytecode
    is left out (it carries source times, and the image's files have none), and so is every path under
    one of `skip` (relative to site-packages)."""
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    todo, dists = list(roots), {}
    while todo:
        name = canonicalize_name(todo.pop())
        if name in dists:
            continue
        try:
            dists[name] = dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            raise ImageError(f"Python distribution {name!r} is not installed here") from None
        for req in map(Requirement, dist.requires or []):
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    files = []
    for name in sorted(dists):
        base = Path(str(dists[name].locate_file("")))
        for rel in map(PurePosixPath, map(str, dists[name].files or [])):
            src = base / rel
            if ".." in rel.parts or "__pycache__" in rel.parts or rel.suffix == ".pyc" or not src.is_file():
                continue
            if any(rel.is_relative_to(s) for s in skip):
                continue
            files.append(ImageFile(f"{target}/{rel}", src, 0o755 if os.access(src, os.X_OK) else 0o644))
    return files


# The site's images. Each takes the paths of its inputs so tests can point them at temporary files.


def pause_image(bin_dir: Path) -> ImageSpec:
    """The pod sandbox image: the toolchain's static `pause` binary alone (kubelet's sandbox_image)."""
    return ImageSpec(
        name="aifactory/pause",
        tag=PAUSE_TAG,
        files=(
            ImageFile(
                "/pause",
                bin_dir / "pause",
                0o755,
                missing_hint="build it with `aifactory toolchain build pause`",
            ),
        ),
        entrypoint=("/pause",),
    )


def coredns_image(bin_dir: Path) -> ImageSpec:
    """The cluster DNS (infra/dns.py): the toolchain's static CoreDNS alone (its pod keeps only the
    capability to bind port 53)."""
    return ImageSpec(
        name="aifactory/coredns",
        tag=COREDNS_TAG,
        files=(
            ImageFile(
                "/coredns",
                bin_dir / "coredns",
                0o755,
                missing_hint="build it with `aifactory toolchain build`",
            ),
        ),
        entrypoint=("/coredns",),
    )


def kueue_image(bin_dir: Path) -> ImageSpec:
    """Kueue's controller manager (infra/kueue.py): the toolchain's static binary, where upstream's
    image has it, run as a user without privileges."""
    return ImageSpec(
        name="aifactory/kueue",
        tag=KUEUE_TAG,
        files=(
            ImageFile(
                "/manager", bin_dir / "kueue", 0o755, missing_hint="build it with `aifactory toolchain build`"
            ),
        ),
        entrypoint=("/manager",),
        user=f"{KUEUE_UID}:{KUEUE_UID}",
    )


def kube_router_image(
    bin_dir: Path, tools: tuple[Path, ...] = FIREWALL_TOOLS, extensions: Path = XTABLES_EXTENSIONS
) -> ImageSpec:
    """The NetworkPolicy agent (infra/network_policy.py): the toolchain's static kube-router, and the
    firewall tools it runs, laid out as on this machine with the libraries they load."""
    name, entrypoint = "aifactory/kube-router", ("/usr/local/bin/kube-router",)
    router = ImageFile(
        entrypoint[0],
        bin_dir / "kube-router",
        0o755,
        missing_hint="build it with `aifactory toolchain build`",
    )
    hint = {"ipset": "install Debian's ipset"}
    needed = [
        ImageFile(str(t), t, 0o755, missing_hint=hint.get(t.name, "install Debian's iptables")) for t in tools
    ]
    if not all(f.source and (f.source.is_file() or f.source.is_symlink()) for f in needed):
        return ImageSpec(name, KUBE_ROUTER_TAG, (router, *needed), entrypoint)  # missing_inputs() names them
    programs = [Path(os.path.realpath(t)) for t in tools]
    plugins = sorted(extensions.glob("*.so"))
    files = {f.path_in_image: f for t in (*tools, *plugins) for f in machine_file(t)}
    files |= {f.path_in_image: f for f in library_files([*programs, *plugins])}
    return ImageSpec(
        name=name,
        tag=KUBE_ROUTER_TAG,
        files=(router, ImageFile("/run", None, 0o755, directory=True), *files.values()),
        entrypoint=entrypoint,
        env=("PATH=/usr/local/bin:/usr/sbin:/usr/bin",),
    )


_PASSWD = b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
_GROUP = b"root:x:0:\nnogroup:x:65534:\n"


def toolbox_image(busybox: Path = BUSYBOX) -> ImageSpec:
    """Validation pods' and tests' image: Debian's static busybox with a shell and network tools."""
    return ImageSpec(
        name="aifactory/toolbox",
        tag=TOOLBOX_TAG,
        files=(
            ImageFile("/bin/busybox", busybox, 0o755, missing_hint="install Debian's busybox-static"),
            *(ImageFile(f"/bin/{a}", None, 0o777, symlink_to="busybox") for a in TOOLBOX_APPLETS),
            ImageFile("/etc/passwd", None, 0o644, content=_PASSWD),
            ImageFile("/etc/group", None, 0o644, content=_GROUP),
        ),
        entrypoint=("/bin/sh",),
        env=("PATH=/bin",),
    )


def _stdlib(python: Path) -> list[ImageFile]:
    r = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('stdlib'))"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    stdlib = Path(r.stdout.strip())
    out = []
    for f in sorted(stdlib.rglob("*")):
        rel = f.relative_to(stdlib)
        if f.is_symlink() or not f.is_file() or rel.parts[0].startswith(("config-", "site-packages")):
            continue
        if any(part in STDLIB_SKIP for part in rel.parts):
            continue
        out.append(ImageFile(str(f), f, 0o644))
    return out


def operator_image(repo: Path = paths.REPO, python: Path = PYTHON, ssh: Path = SSH) -> ImageSpec:
    """The tenant operator (infra/tenant_operator.py): `python -m kopf` with this repository's operator
    code, the Python distributions it needs, Debian's interpreter and ssh client with the libraries
    they load; no shell, no package manager, running as an unprivileged user."""
    name, entrypoint = "aifactory/tenant-operator", (str(python), "-m", "kopf")
    programs = (
        ImageFile(str(python), python, 0o755, missing_hint="install Debian's python3.11"),
        ImageFile(str(ssh), ssh, 0o755, missing_hint="install Debian's openssh-client"),
    )
    if not all(f.source and f.source.is_file() for f in programs):  # missing_inputs() names them
        return ImageSpec(name, OPERATOR_TAG, programs, entrypoint)
    site_packages = f"{OPERATOR_HOME}/site-packages"
    stdlib = _stdlib(python)
    packages = python_distributions(OPERATOR_DISTRIBUTIONS, site_packages, OPERATOR_SKIP)
    sources = [
        ImageFile(f"{OPERATOR_HOME}/src/{f.relative_to(repo)}", f, 0o644)
        for package in OPERATOR_SOURCES
        for f in sorted((repo / package).rglob("*.py"))
    ]
    elves = [python, ssh, *(f.source for f in stdlib + packages if f.source)]
    own = Path(sys.prefix)  # the wheels' own bundled libraries come with the wheels
    libraries = library_files(elves, own)
    user = f"aifactory:x:{OPERATOR_UID}:{OPERATOR_UID}:tenant operator:/tmp:/usr/sbin/nologin\n"
    return ImageSpec(
        name=name,
        tag=OPERATOR_TAG,
        files=(
            ImageFile("/tmp", None, 0o1777, directory=True),
            *programs,
            *libraries,
            *stdlib,
            *packages,
            *sources,
            ImageFile("/etc/passwd", None, 0o644, content=_PASSWD + user.encode()),
            ImageFile("/etc/group", None, 0o644, content=_GROUP + f"aifactory:x:{OPERATOR_UID}:\n".encode()),
            ImageFile(
                "/etc/nsswitch.conf", None, 0o644, content=b"passwd: files\ngroup: files\nhosts: files dns\n"
            ),
        ),
        entrypoint=entrypoint,
        env=(
            "PATH=/usr/bin",
            f"PYTHONPATH={OPERATOR_HOME}/src:{site_packages}",
            "PYTHONUNBUFFERED=1",
            "HOME=/tmp",
        ),
        user=f"{OPERATOR_UID}:{OPERATOR_UID}",
    )


def catalogue(
    bin_dir: Path,
    busybox: Path = BUSYBOX,
    operator: Callable[[], ImageSpec] = operator_image,
    kube_router: Callable[[Path], ImageSpec] = kube_router_image,
) -> tuple[ImageSpec, ...]:
    return (
        pause_image(bin_dir),
        toolbox_image(busybox),
        coredns_image(bin_dir),
        kube_router(bin_dir),
        kueue_image(bin_dir),
        operator(),
    )


def build_all(
    bin_dir: Path,
    out_dir: Path,
    registry: str,
    progress: Progress = print,
    busybox: Path = BUSYBOX,
    operator: Callable[[], ImageSpec] = operator_image,
    kube_router: Callable[[Path], ImageSpec] = kube_router_image,
) -> dict[str, dict[str, str]]:
    """Build every catalogued image into `out_dir`; {archive file name: {ref, digest}}.

    Every input is checked first, so a missing one fails before anything is written, with one line per
    missing file saying how to get it.
    """
    specs = catalogue(bin_dir, busybox, operator, kube_router)
    missing = [m for s in specs for m in s.missing_inputs()]
    if missing:
        raise ImageError("cannot build the site's images:\n  " + "\n  ".join(missing))
    built: dict[str, dict[str, str]] = {}
    for spec in specs:
        out = out_dir / spec.archive_name
        digest = build(spec, out, registry)
        built[out.name] = {"ref": spec.ref(registry), "digest": digest}
        progress(f"  image {spec.ref(registry)} {digest[:19]} -> {out}")
    return built


def toolbox_pod(
    name: str,
    command: list[str],
    node: str | None = None,
    gpus: int = 0,
    labels: dict[str, str] | None = None,
    restart: str = "Never",
) -> Any:
    """A pod of the toolbox image (validation, benchmarks, tests): no service account token, the GPU
    taint tolerated, `gpus` nvidia.com/gpu, optionally pinned to `node`."""
    from kubernetes import client

    return client.V1Pod(
        metadata=client.V1ObjectMeta(name=name, labels=labels),
        spec=client.V1PodSpec(
            automount_service_account_token=False,
            restart_policy=restart,
            node_selector={"kubernetes.io/hostname": node} if node else None,
            tolerations=[client.V1Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")],
            # sleep as PID 1 ignores SIGTERM: a deletion or eviction would wait 30 s for nothing.
            termination_grace_period_seconds=1,
            containers=[
                client.V1Container(
                    name="main",
                    image=TOOLBOX_REF,
                    image_pull_policy="IfNotPresent",
                    command=command,
                    resources=client.V1ResourceRequirements(
                        limits={"nvidia.com/gpu": str(gpus)} if gpus else None
                    ),
                )
            ],
        ),
    )
