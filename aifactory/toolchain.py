"""The binaries no package registry ships, built from pinned Go modules in `toolchain/`.

Each Go module under toolchain/ pins one upstream project (go.mod + go.sum are the pins); the
emulated site's own Go programs (`sandbox/gpu-device-plugin`) are built the same way. A binary
is rebuilt only when its stamp changes: the stamp hashes the module's go.mod/go.sum, the build
flags and the Go version. Binaries land in `~/.cache/aifactory/bin` (outside the repo); the same
directory, copied to an air-gapped site, is its offline install bundle.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from aifactory import images, paths

K8S_VERSION = "v1.37.2"
PULUMI_VERSION = "v3.274.1"
LANGUAGE_HOST_VERSION = "v3.79.0"
KUBERNETES_PROVIDER_VERSION = "4.25.0"
KWOK_VERSION = "v0.8.0"
ETCD_VERSION = "v3.7.0"
COREDNS_VERSION = "1.15.0"
KUBE_ROUTER_VERSION = "v2.1.0"
REGISTRY_VERSION = "v3.1.2"
CRANE_VERSION = "v0.22.1"
KUEUE_VERSION = "v0.17.0"
# Our own small Go programs: their version is the project's.
PAUSE_VERSION = "3.10"
GPU_DEVICE_PLUGIN_VERSION = "0.1.0"

_K8S_LDFLAGS = [
    f"-X k8s.io/component-base/version.gitVersion={K8S_VERSION}",
    "-X k8s.io/component-base/version.gitMajor=1",
    f"-X k8s.io/component-base/version.gitMinor={K8S_VERSION.split('.')[1]}",
    "-X k8s.io/component-base/version.gitTreeState=clean",
]
_PULUMI_VERSION_VAR = "github.com/pulumi/pulumi/sdk/v3/go/common/version.Version"

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Binary:
    name: str
    module: str  # the Go module's folder, relative to the repository
    package: str  # Go package to build, relative to that module's build list
    version: str
    ldflags: tuple[str, ...] = ()
    version_args: tuple[str, ...] = ("--version",)
    version_line: str = ""  # the line of that output naming the version, when it is not the first
    prepare: Callable[[Binary, Progress], None] | None = field(default=None, compare=False)
    companions: tuple[str, ...] = ()  # files `prepare` writes beside the binary

    @property
    def outputs(self) -> list[Path]:
        return [self.path, *(paths.bin_dir() / c for c in self.companions)]

    @property
    def path(self) -> Path:
        return paths.bin_dir() / self.name

    @property
    def module_dir(self) -> Path:
        return paths.REPO / self.module


def _module_dir(module_dir: Path, go_module: str) -> Path:
    """Where the Go module cache holds `go_module` at the version `module_dir`'s go.mod pins."""
    out = _go(["mod", "download", "-json", go_module], module_dir, capture=True)
    return Path(json.loads(out)["Dir"])


def _stamp_kubernetes_schema(binary: Binary, progress: Progress) -> None:
    """The provider embeds its schema stamped with its version (upstream does this in `make`)."""
    src = _module_dir(binary.module_dir, "github.com/pulumi/pulumi-kubernetes/provider/v4") / (
        "cmd/pulumi-resource-kubernetes"
    )
    dst = binary.module_dir
    schema = json.loads((src / "schema.json").read_text())
    schema["version"] = binary.version
    (dst / "schema-embed.json").write_text(json.dumps(schema, separators=(",", ":")))
    mapping = json.loads((src / "terraform-mapping.json").read_text())
    (dst / "terraform-mapping-embed.json").write_text(json.dumps(mapping, separators=(",", ":")))


# Upstream's own objects that Kueue's deployment (infra/kueue.py) applies: the CRDs, the manager's
# RBAC and the webhook configurations, as its release is built from them (config/components/).
KUEUE_MANIFEST_FILES = (
    *(
        f"crd/bases/kueue.x-k8s.io_{kind}.yaml"
        for kind in (
            "admissionchecks", "clusterqueues", "cohorts", "localqueues", "multikueueclusters",
            "multikueueconfigs", "provisioningrequestconfigs", "resourceflavors", "topologies",
            "workloadpriorityclasses", "workloads",
        )
    ),
    "rbac/role.yaml",
    "rbac/leader_election_role.yaml",
    "rbac/manager_secrets_role.yaml",
    "rbac/metrics_auth_role.yaml",
    "webhook/manifests.yaml",
)  # fmt: skip


KUEUE_MANIFESTS = "kueue-manifests.yaml"


def kueue_manifests_path() -> Path:
    return paths.bin_dir() / KUEUE_MANIFESTS


def _copy_kueue_manifests(binary: Binary, progress: Progress) -> None:
    """Upstream's manifests at the pinned version, beside the binary (the bundle is all a site needs)."""
    config = _module_dir(binary.module_dir, "sigs.k8s.io/kueue") / "config/components"
    docs = [
        f"# sigs.k8s.io/kueue@{binary.version} config/components/{f}\n" + (config / f).read_text()
        for f in KUEUE_MANIFEST_FILES
    ]
    kueue_manifests_path().write_text("---\n".join(d if d.endswith("\n") else d + "\n" for d in docs))
    progress(f"  kueue manifests -> {kueue_manifests_path()}")


BINARIES: tuple[Binary, ...] = (
    Binary(
        "pulumi",
        "toolchain/pulumi",
        "github.com/pulumi/pulumi/pkg/v3/cmd/pulumi",
        PULUMI_VERSION,
        (f"-X {_PULUMI_VERSION_VAR}={PULUMI_VERSION}",),
        ("version",),
    ),
    Binary(
        "pulumi-language-python",
        "toolchain/pulumi-language-python",
        "github.com/pulumi/pulumi/sdk/v3/python/cmd/pulumi-language-python",
        LANGUAGE_HOST_VERSION,
        (f"-X {_PULUMI_VERSION_VAR}={LANGUAGE_HOST_VERSION}",),
        ("-version",),
    ),
    Binary(
        "pulumi-resource-kubernetes",
        "toolchain/pulumi-kubernetes",
        ".",
        KUBERNETES_PROVIDER_VERSION,
        (
            "-X github.com/pulumi/pulumi-kubernetes/provider/v4/pkg/version.Version="
            + KUBERNETES_PROVIDER_VERSION,
        ),
        ("-version",),
        prepare=_stamp_kubernetes_schema,
    ),
    Binary("etcd", "toolchain/kubernetes", "go.etcd.io/etcd/server/v3", ETCD_VERSION),
    Binary(
        "kube-apiserver",
        "toolchain/kubernetes",
        "k8s.io/kubernetes/cmd/kube-apiserver",
        K8S_VERSION,
        tuple(_K8S_LDFLAGS),
    ),
    Binary(
        "kube-controller-manager",
        "toolchain/kubernetes",
        "k8s.io/kubernetes/cmd/kube-controller-manager",
        K8S_VERSION,
        tuple(_K8S_LDFLAGS),
    ),
    Binary(
        "kube-scheduler",
        "toolchain/kubernetes",
        "k8s.io/kubernetes/cmd/kube-scheduler",
        K8S_VERSION,
        tuple(_K8S_LDFLAGS),
    ),
    # Node binaries: every worker runs them, on real and emulated sites alike.
    *(
        Binary(name, "toolchain/kubernetes", f"k8s.io/kubernetes/cmd/{name}", K8S_VERSION, (*_K8S_LDFLAGS,))
        for name in ("kubelet", "kube-proxy")
    ),
    Binary("pause", "toolchain/pause", ".", PAUSE_VERSION, (f"-X main.version={PAUSE_VERSION}",)),
    Binary("coredns", "toolchain/coredns", ".", COREDNS_VERSION, version_args=("-version",)),
    # NetworkPolicy enforcement on every node (iptables + ipset; router and proxy off).
    Binary(
        "kube-router",
        "toolchain/kube-router",
        "github.com/cloudnativelabs/kube-router/v2/cmd/kube-router",
        KUBE_ROUTER_VERSION,
        (f"-X github.com/cloudnativelabs/kube-router/v2/pkg/version.Version={KUBE_ROUTER_VERSION}",),
    ),
    # The site registry on the head, and what pushes the bundle's images into it.
    Binary("registry", "toolchain/registry", ".", REGISTRY_VERSION),
    Binary(
        "crane",
        "toolchain/crane",
        "github.com/google/go-containerregistry/cmd/crane",
        CRANE_VERSION,
        version_args=("version",),
    ),
    # Kueue: tenant GPU quota on Kubernetes (ClusterQueues in a cohort, fair sharing).
    Binary(
        "kueue",
        "toolchain/kueue",
        "sigs.k8s.io/kueue/cmd/kueue",
        KUEUE_VERSION,
        (f"-X sigs.k8s.io/kueue/pkg/version.GitVersion={KUEUE_VERSION}",),
        # no --version: its start-up log names the version, before it finds no cluster
        ("--config=/dev/null", "--kubeconfig=/nonexistent"),
        version_line='"Initializing"',
        prepare=_copy_kueue_manifests,
        companions=(KUEUE_MANIFESTS,),
    ),
    Binary("kwok", "toolchain/kwok", "sigs.k8s.io/kwok/cmd/kwok", KWOK_VERSION, version_args=("--version",)),
    # The emulated GPUs' device plugin (sandbox/: emulated sites only; real sites run NVIDIA's).
    Binary(
        "aifactory-gpu-device-plugin",
        "sandbox/gpu-device-plugin",
        ".",
        GPU_DEVICE_PLUGIN_VERSION,
        (f"-X main.version={GPU_DEVICE_PLUGIN_VERSION}",),
    ),
)
BY_NAME = {b.name: b for b in BINARIES}
PULUMI_PLUGIN_PARTS = ("pulumi", "pulumi-language-python", "pulumi-resource-kubernetes")


def _go_env() -> dict[str, str]:
    env = dict(os.environ)
    # go.sum is committed: builds never rewrite the pins, and a tampered module fails loudly.
    env["GOFLAGS"] = "-mod=readonly"
    # Static binaries: the bundle must run on any site host, whatever its libc.
    env.setdefault("CGO_ENABLED", "0")
    return env


def _go(args: list[str], cwd: Path, capture: bool = False) -> str:
    proc = subprocess.run(["go", *args], cwd=cwd, env=_go_env(), text=True, capture_output=True, check=False)
    if proc.returncode != 0:
        raise ToolchainError(f"go {' '.join(args)} failed in {cwd}:\n{_tail(proc.stderr)}")
    return proc.stdout


def _tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


class ToolchainError(RuntimeError):
    pass


def go_version() -> str:
    try:
        return subprocess.run(
            ["go", "env", "GOVERSION"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError) as e:
        raise ToolchainError(f"the Go toolchain is needed to build the binaries: {e}") from e


def stamp(binary: Binary, gover: str) -> str:
    h = hashlib.sha256()
    for f in ("go.mod", "go.sum", "main.go"):
        p = binary.module_dir / f
        if p.exists():
            h.update(p.read_bytes())
    cgo = _go_env()["CGO_ENABLED"]
    h.update(json.dumps([binary.package, binary.version, list(binary.ldflags), gover, cgo]).encode())
    return h.hexdigest()[:16]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def manifest() -> dict[str, dict[str, str]]:
    """Name -> {version, sha256} of every built binary, and {version, sha256, image} of every image
    archive: what an offline bundle ships."""
    out = {}
    for b in BINARIES:
        try:
            rec = json.loads(_stamp_file(b).read_text())
        except (OSError, ValueError):
            continue
        if b.path.exists() and "sha256" in rec:
            out[b.name] = {"version": b.version, "sha256": rec["sha256"]}
    try:
        built_images = json.loads(_images_stamp().read_text())
    except (OSError, ValueError):
        built_images = {}
    for name, rec in built_images.items():
        if (paths.bin_dir() / name).exists():
            tag = rec["ref"].rsplit(":", 1)[1]
            out[name] = {
                "version": tag,
                "sha256": rec["sha256"],
                "image": rec["ref"],
                "digest": rec["digest"],
            }
    return out


def image_ref(ref: str) -> str:
    """`ref` pinned to the digest the bundle holds (`ref@sha256:...`): a rebuilt image rolls out, and
    nodes run exactly what the bundle ships. Unpinned when the bundle does not hold it."""
    digest = next((r["digest"] for r in manifest().values() if r.get("image") == ref), None)
    return f"{ref}@{digest}" if digest else ref


def _images_stamp() -> Path:
    return paths.bin_dir() / ".stamps" / "images.json"


def build_images(progress: Progress = print) -> None:
    """The site's images (images.catalogue) as archives beside the binaries; cheap and deterministic."""
    try:
        built = images.build_all(paths.bin_dir(), paths.bin_dir(), images.SITE_REGISTRY, progress)
    except images.ImageError as e:
        raise ToolchainError(str(e)) from e
    for name, rec in built.items():
        rec["sha256"] = _sha256(paths.bin_dir() / name)
    _images_stamp().write_text(json.dumps(built, indent=2, sort_keys=True))


def _stamp_file(binary: Binary) -> Path:
    return paths.bin_dir() / ".stamps" / f"{binary.name}.json"


def state(binary: Binary, gover: str) -> str:
    """'ok', 'missing' or 'stale' (a pin changed since it was built)."""
    if not all(p.exists() for p in binary.outputs):
        return "missing"
    try:
        recorded = json.loads(_stamp_file(binary).read_text())
    except (OSError, ValueError):
        return "stale"
    return "ok" if recorded.get("stamp") == stamp(binary, gover) else "stale"


def _with_heartbeat(what: str, progress: Progress, fn: Callable[[], None]) -> float:
    start = time.monotonic()
    done = threading.Event()

    def beat() -> None:
        while not done.wait(30):
            progress(f"  ... still building {what} ({time.monotonic() - start:.0f}s)")

    t = threading.Thread(target=beat, daemon=True)
    t.start()
    try:
        fn()
    finally:
        done.set()
    return time.monotonic() - start


def build(names: list[str] | None = None, force: bool = False, progress: Progress = print) -> list[str]:
    """Build what is missing or stale; return the names built."""
    gover = go_version()
    wanted = [BY_NAME[n] for n in names] if names else list(BINARIES)
    todo = [b for b in wanted if force or state(b, gover) != "ok"]
    if not todo:
        progress(f"toolchain: all {len(wanted)} binaries up to date in {paths.bin_dir()}")
        _ensure_pulumi_plugins(set(), progress)
        if not names:
            build_images(progress)
        return []
    paths.bin_dir().mkdir(parents=True, exist_ok=True)
    (paths.bin_dir() / ".stamps").mkdir(exist_ok=True)
    progress(
        f"toolchain: building {len(todo)} of {len(wanted)} binaries with {gover} (cold: 20-40 min on 2 cores)"
    )
    for i, b in enumerate(todo, 1):
        progress(f"[{i}/{len(todo)}] {b.name} {b.version} ({b.module})")
        if b.prepare:
            b.prepare(b, progress)
        tmp = b.path.with_name(f".{b.name}.tmp")
        flags = ["-trimpath", "-ldflags", " ".join(("-s", "-w", *b.ldflags))]

        def run(b: Binary = b, tmp: Path = tmp, flags: list[str] = flags) -> None:
            _go(["build", *flags, "-o", str(tmp), b.package], b.module_dir)

        secs = _with_heartbeat(b.name, progress, run)
        tmp.replace(b.path)
        _stamp_file(b).write_text(
            json.dumps(
                {
                    "stamp": stamp(b, gover),
                    "version": b.version,
                    "seconds": round(secs, 1),
                    "sha256": _sha256(b.path),
                }
            )
        )
        progress(f"  built {b.path} in {secs:.0f}s")
    built = {b.name for b in todo}
    _ensure_pulumi_plugins(built, progress)
    if not names:
        build_images(progress)
    return [b.name for b in todo]


def _ensure_pulumi_plugins(built: set[str], progress: Progress) -> None:
    if all(BY_NAME[n].path.exists() for n in PULUMI_PLUGIN_PARTS) and (
        set(PULUMI_PLUGIN_PARTS) & built or not pulumi_plugins_installed()
    ):
        install_pulumi_plugins(progress)


def pulumi_plugins_installed() -> bool:
    home = Path(os.environ.get("PULUMI_HOME", Path.home() / ".pulumi"))
    shims = ("pulumi-language-python-exec", "pulumi-resource-pulumi-python")
    return (
        all((paths.bin_dir() / s).exists() for s in shims)
        and (home / "plugins" / f"resource-kubernetes-v{KUBERNETES_PROVIDER_VERSION}").is_dir()
    )


def install_pulumi_plugins(progress: Progress = print) -> None:
    """Put the Python language host's companions beside the CLI and register the Kubernetes provider.

    The CLI treats the Python language host and the dynamic-provider host as bundled plugins: it finds
    them next to its own binary, not in ~/.pulumi/plugins. Their shell shims come from the same SDK
    release as the Python `pulumi` package (argument-compatible with the pinned language host).
    """
    bin_dir = paths.bin_dir()
    sdk_python = _module_dir(BY_NAME["pulumi"].module_dir, "github.com/pulumi/pulumi/sdk/v3") / "python"
    for shim in (
        sdk_python / "cmd/pulumi-language-python-exec",
        sdk_python / "dist/pulumi-resource-pulumi-python",
    ):
        shutil.copyfile(shim, bin_dir / shim.name)
        (bin_dir / shim.name).chmod(0o755)
    progress(f"  python language host and dynamic-provider host ready in {bin_dir}")
    version = "v" + KUBERNETES_PROVIDER_VERSION
    subprocess.run(
        [
            str(bin_dir / "pulumi"),
            "plugin",
            "install",
            "resource",
            "kubernetes",
            version,
            "--file",
            str(bin_dir / "pulumi-resource-kubernetes"),
            "--reinstall",
        ],
        env=pulumi_env(),
        check=True,
        capture_output=True,
    )
    progress(f"  pulumi plugin resource kubernetes {version} installed")


def pulumi_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for running the Pulumi CLI offline: our binaries first on PATH, no SaaS."""
    env = dict(os.environ)
    # The program and dynamic providers run in this interpreter's venv (Pulumi.yaml says .venv; the
    # pinned language host predates the engine's way of passing that option, so PATH carries it).
    venv_bin = Path(sys.executable).parent
    env["PATH"] = os.pathsep.join([str(paths.bin_dir()), str(venv_bin), env.get("PATH", "")])
    env["VIRTUAL_ENV"] = str(venv_bin.parent)
    # Offline by design: never reach for get.pulumi.com (updates, plugin downloads, templates).
    env["PULUMI_SKIP_UPDATE_CHECK"] = "true"
    env["PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION"] = "true"
    # Plugins come from the installed set (and the bundled ones beside the CLI), not whatever is on PATH.
    env["PULUMI_IGNORE_AMBIENT_PLUGINS"] = "true"
    # Dynamic providers fork only to exec (ansible-runner's pexpect); gRPC's fork handlers, when
    # another thread is inside gRPC, segfault that child before its exec (seen: Ansible killed at start).
    env["GRPC_ENABLE_FORK_SUPPORT"] = "0"
    env.setdefault("PULUMI_AUTOMATION_API_SKIP_VERSION_CHECK", "true")
    env.setdefault("PULUMI_DIY_BACKEND_NO_LEGACY_WARNING", "true")
    env.update(extra or {})
    return env


def reported_version(binary: Binary) -> str:
    try:
        proc = subprocess.run(
            [str(binary.path), *binary.version_args], capture_output=True, text=True, timeout=20, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"(cannot run: {e})"
    out = [line for line in (proc.stdout or proc.stderr).strip().splitlines() if binary.version_line in line]
    return out[0] if out else f"(exit {proc.returncode})"


def status_rows() -> list[dict[str, str]]:
    gover = go_version()
    rows = []
    for b in BINARIES:
        st = state(b, gover)
        rows.append(
            {
                "binary": b.name,
                "pinned": b.version,
                "state": st,
                "reports": reported_version(b) if st != "missing" else "-",
                "path": str(b.path),
            }
        )
    return rows


class BundleTargetError(ToolchainError):
    """The bundle's directory cannot be used (bad input: nothing was written)."""


def bundle(out: Path, progress: Progress = print) -> dict[str, dict[str, str]]:
    """Write the offline bundle into `out`: what a site's internal mirror serves (`bundle_url`).

    Every binary and image archive, copied, then each copy hashed again and compared with what the
    build recorded; `manifest.json` (versions and sha256) is written last, so a directory with one is
    complete. Refused before anything is written when a binary is missing or stale (its pin changed
    since it was built), or when `out` holds something that is not an earlier bundle.
    """
    if out.exists() and not out.is_dir():
        raise BundleTargetError(f"{out} is a file, not a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / "manifest.json").is_file():
        strays = ", ".join(sorted(p.name for p in out.iterdir())[:5])
        raise BundleTargetError(
            f"{out} holds files that are not a bundle ({strays}): give an empty directory"
        )
    gover = go_version()
    not_ready = [f"{b.name} ({st})" for b in BINARIES if (st := state(b, gover)) != "ok"]
    if not_ready:
        raise ToolchainError(f"not built or stale: {', '.join(not_ready)}: run `aifactory toolchain build`")
    man = manifest()
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.json").unlink(missing_ok=True)  # incomplete until written again
    total = 0
    for i, (name, rec) in enumerate(sorted(man.items()), 1):
        src, dst = paths.bin_dir() / name, out / name
        tmp = dst.with_name(f".{name}.part")
        shutil.copyfile(src, tmp)
        tmp.chmod(0o755 if "image" not in rec else 0o644)
        digest = _sha256(tmp)
        if digest != rec["sha256"]:
            tmp.unlink()
            raise ToolchainError(
                f"{src} changed since it was built (sha256 {digest[:12]}, recorded {rec['sha256'][:12]}): "
                "run `aifactory toolchain build --force`"
            )
        tmp.replace(dst)
        total += dst.stat().st_size
        progress(f"  [{i:2d}/{len(man)}] {name} {rec['version']} {rec['sha256'][:12]}")
    (out / "manifest.json").write_text(json.dumps(man, indent=2, sort_keys=True) + "\n")
    progress(f"bundle: {len(man)} files, {total / 2**20:.0f} MiB, in {out} (manifest.json last)")
    return man


def verify_bundle(out: Path) -> list[str]:
    """Problems of a bundle directory: files its manifest lists that are absent or hash otherwise."""
    man = json.loads((out / "manifest.json").read_text())
    problems = []
    for name, rec in sorted(man.items()):
        f = out / name
        if not f.is_file():
            problems.append(f"{name}: missing")
        elif _sha256(f) != rec["sha256"]:
            problems.append(f"{name}: sha256 differs from manifest.json")
    return problems
