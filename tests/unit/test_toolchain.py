import json

import pytest

from aifactory import toolchain

pytestmark = pytest.mark.unit


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AIFACTORY_CACHE", str(tmp_path))
    return tmp_path


def test_every_binary_is_pinned_by_a_module_with_go_sum():
    for b in toolchain.BINARIES:
        mod = b.module_dir
        # A module without dependencies (our own pause) has nothing to pin in a go.sum.
        deps = "require" in (mod / "go.mod").read_text()
        assert (mod / "go.sum").exists() == deps, b.name
    assert set(toolchain.BY_NAME) == {
        "pulumi",
        "pulumi-language-python",
        "pulumi-resource-kubernetes",
        "etcd",
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
        "kubelet",
        "kube-proxy",
        "pause",
        "coredns",
        "kube-router",
        "registry",
        "crane",
        "kwok",
        "kueue",
        "aifactory-gpu-device-plugin",
    }


def test_a_binary_whose_companion_file_is_gone_is_built_again(cache):
    kueue = toolchain.BY_NAME["kueue"]
    (toolchain.paths.bin_dir() / ".stamps").mkdir(parents=True)
    kueue.path.write_bytes(b"binary")
    stamp = toolchain.stamp(kueue, "go1.26")
    toolchain._stamp_file(kueue).write_text(json.dumps({"stamp": stamp}))
    assert toolchain.state(kueue, "go1.26") == "missing"  # no kueue-manifests.yaml beside it
    toolchain.kueue_manifests_path().write_text("---\n")
    assert toolchain.state(kueue, "go1.26") == "ok"


def test_state_follows_the_stamp(cache):
    b = toolchain.BY_NAME["kwok"]
    assert toolchain.state(b, "go1.26.8") == "missing"
    (cache / "bin" / ".stamps").mkdir(parents=True)
    b.path.write_text("binary")
    assert toolchain.state(b, "go1.26.8") == "stale"  # no stamp: built by something else
    (cache / "bin" / ".stamps" / "kwok.json").write_text(
        json.dumps({"stamp": toolchain.stamp(b, "go1.26.8")})
    )
    assert toolchain.state(b, "go1.26.8") == "ok"
    # A new Go release (or a changed pin) changes the stamp: rebuild.
    assert toolchain.state(b, "go1.27.0") == "stale"


def test_stamp_changes_with_the_pins(tmp_path, monkeypatch):
    b = toolchain.BY_NAME["kwok"]
    fake = tmp_path / "toolchain" / "kwok"
    fake.mkdir(parents=True)
    (fake / "go.mod").write_text("module x\nrequire sigs.k8s.io/kwok v0.8.0\n")
    monkeypatch.setattr(toolchain.paths, "REPO", tmp_path)
    before = toolchain.stamp(b, "go1.26.8")
    (fake / "go.mod").write_text("module x\nrequire sigs.k8s.io/kwok v0.9.0\n")
    assert toolchain.stamp(b, "go1.26.8") != before


def test_manifest_lists_only_built_binaries_with_sums(cache):
    b = toolchain.BY_NAME["etcd"]
    (cache / "bin" / ".stamps").mkdir(parents=True)
    b.path.write_text("x")
    (cache / "bin" / ".stamps" / "etcd.json").write_text(json.dumps({"stamp": "s", "sha256": "ab"}))
    assert toolchain.manifest() == {"etcd": {"version": toolchain.ETCD_VERSION, "sha256": "ab"}}


def test_pulumi_runs_offline_and_its_providers_can_fork_to_exec(monkeypatch):
    monkeypatch.setenv("GRPC_ENABLE_FORK_SUPPORT", "1")
    env = toolchain.pulumi_env({"EXTRA": "x"})
    assert env["PATH"].split(":")[0] == str(toolchain.paths.bin_dir())
    assert env["PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION"] == "true"
    # ansible-runner forks in the dynamic provider; gRPC's fork handlers crashed that child.
    assert env["GRPC_ENABLE_FORK_SUPPORT"] == "0"
    assert env["EXTRA"] == "x"
