"""The built toolchain runs: Kubernetes control plane and node, Pulumi CLI and plugins, kwok, our own."""

import contextlib
import json
import os
import subprocess
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from aifactory import paths, toolchain
from tests.toolchain.conftest import wait_ready

pytestmark = pytest.mark.toolchain


def test_apiserver_on_etcd_serves_the_kubernetes_client(loopback_control_plane):
    from kubernetes import client, config

    api = client.CoreV1Api(config.new_client_from_config(str(loopback_control_plane)))
    wait_ready(lambda: api.list_namespace(), timeout=90)
    api.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="smoke")))
    assert "smoke" in [n.metadata.name for n in api.list_namespace().items]
    version = client.VersionApi(api.api_client).get_code()
    assert version.git_version == toolchain.K8S_VERSION


def test_pulumi_reports_pinned_versions_and_plugins(built):
    built("pulumi", "pulumi-language-python", "pulumi-resource-kubernetes")
    env = toolchain.pulumi_env()
    pulumi = str(toolchain.BY_NAME["pulumi"].path)

    def run(*args):
        return subprocess.run([pulumi, *args], env=env, capture_output=True, text=True, check=True).stdout

    assert run("version").strip() == toolchain.PULUMI_VERSION
    # The language host is a bundled plugin (found beside the CLI); `about` names the one it loads.
    about = json.loads(run("about", "--json"))
    assert {
        "kind": "language",
        "name": "python",
        "version": toolchain.LANGUAGE_HOST_VERSION.lstrip("v"),
    } in about["plugins"]
    installed = {(p["kind"], p["name"]): p["version"] for p in json.loads(run("plugin", "ls", "--json"))}
    assert installed[("resource", "kubernetes")] == toolchain.KUBERNETES_PROVIDER_VERSION


def test_binaries_report_their_pinned_versions(built):
    node = ("kubelet", "kube-proxy")
    built("kube-router")
    built(
        "kwok",
        "etcd",
        "kube-controller-manager",
        "kube-scheduler",
        *node,
        "pause",
        "coredns",
        "aifactory-gpu-device-plugin",
        "kueue",
    )
    assert toolchain.KWOK_VERSION.lstrip("v") in toolchain.reported_version(toolchain.BY_NAME["kwok"])
    assert toolchain.ETCD_VERSION.lstrip("v") in toolchain.reported_version(toolchain.BY_NAME["etcd"])
    for name in ("kube-controller-manager", "kube-scheduler", "kube-apiserver", *node):
        assert toolchain.reported_version(toolchain.BY_NAME[name]) == f"Kubernetes {toolchain.K8S_VERSION}"
    assert toolchain.reported_version(toolchain.BY_NAME["pause"]) == f"pause {toolchain.PAUSE_VERSION}"
    assert toolchain.COREDNS_VERSION in toolchain.reported_version(toolchain.BY_NAME["coredns"])
    assert toolchain.KUBE_ROUTER_VERSION in toolchain.reported_version(toolchain.BY_NAME["kube-router"])
    assert f'"gitVersion":"{toolchain.KUEUE_VERSION}"' in toolchain.reported_version(toolchain.BY_NAME["kueue"])
    plugin = toolchain.BY_NAME["aifactory-gpu-device-plugin"]
    assert toolchain.reported_version(plugin) == f"gpu-device-plugin {toolchain.GPU_DEVICE_PLUGIN_VERSION}"


def test_emulated_gpu_device_plugin_go_tests():
    """The device plugin's own Go tests: discovery, Allocate, and a registration round trip."""
    plugin = toolchain.BY_NAME["aifactory-gpu-device-plugin"]
    proc = subprocess.run(
        ["go", "test", "-count=1", "./..."],
        cwd=plugin.module_dir,
        env={**os.environ, "GOFLAGS": "-mod=readonly"},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@contextlib.contextmanager
def _entered(image_ref: str, tmp_path: Path) -> Iterator[Callable[..., subprocess.CompletedProcess[str]]]:
    """The bundle's image `image_ref`, unpacked; yields a runner of commands inside it (chroot) as the
    image's user, with the image's environment and this machine's /dev."""
    name = next((n for n, r in toolchain.manifest().items() if r.get("image") == image_ref), None)
    if name is None:
        pytest.skip(f"{image_ref} not in the bundle: run `aifactory toolchain build`")
    with tarfile.open(paths.bin_dir() / name) as tar:
        (entry,) = json.load(tar.extractfile("manifest.json"))
        config = json.load(tar.extractfile(entry["Config"]))["config"]
        (layer,) = entry["Layers"]
        root = tmp_path / "root"
        root.mkdir()
        with tarfile.open(fileobj=tar.extractfile(layer)) as fs:
            fs.extractall(root, filter="tar")
    (root / "dev").mkdir()
    subprocess.run(["mount", "--bind", "/dev", root / "dev"], check=True)
    user = [f"--userspec={config['User']}"] if config.get("User") else []

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        chroot = ["/usr/sbin/chroot", *user, str(root)]
        env = ["env", "-i", *config.get("Env", [])]
        return subprocess.run([*env, *chroot, *argv], capture_output=True, text=True, timeout=60)

    try:
        yield run
    finally:
        subprocess.run(["umount", root / "dev"], check=True)


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="entering an unpacked image takes chroot (root)")


@needs_root
def test_operator_image_runs_the_operator_as_its_user(tmp_path):
    """Its entrypoint (kopf) starts, the operator's handlers import, ssh runs, all as user 65532."""
    from aifactory import images

    with _entered(images.OPERATOR_REF, tmp_path) as run:
        python = "/usr/bin/python3.11"
        kopf = run(python, "-m", "kopf", "run", "--help")
        assert kopf.returncode == 0 and "--peering" in kopf.stdout, kopf.stderr
        handlers = run(python, "-c", "import os, operators.tenants.handlers; print(os.getuid())")
        assert handlers.returncode == 0 and handlers.stdout.strip() == "65532", handlers.stderr
        ssh = run("/usr/bin/ssh", "-V")
        assert ssh.returncode == 0 and "OpenSSH" in ssh.stderr, ssh.stderr


@needs_root
def test_kube_router_image_has_its_firewall_tools(tmp_path):
    """kube-router and what it runs: iptables (with its extensions: a rule with `-m set` parses) and ipset."""
    from aifactory import images

    with _entered(images.KUBE_ROUTER_REF, tmp_path) as run:
        version = run("/usr/local/bin/kube-router", "--version")
        assert version.returncode == 0 and images.KUBE_ROUTER_TAG in version.stdout + version.stderr
        iptables = run("iptables", "--version")
        assert iptables.returncode == 0 and "nf_tables" in iptables.stdout, iptables.stderr
        ipset = run("ipset", "version")
        assert ipset.returncode == 0 and "ipset v" in ipset.stdout, ipset.stderr
        # the set match is an extension (libxt_set.so) loaded at parse time; -h needs no kernel
        rule = run("iptables", "-m", "set", "-h")
        assert rule.returncode == 0 and "match-set" in rule.stdout, rule.stderr
