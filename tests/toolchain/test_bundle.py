"""The bundle (what a real site's mirror serves) holds every file the roles install from it."""

import pytest
import yaml

from aifactory import paths, toolchain
from tests.conftest import REPO

pytestmark = pytest.mark.toolchain

ROLES = REPO / "playbooks" / "roles"


def _defaults(role: str) -> dict:
    return yaml.safe_load((ROLES / role / "defaults" / "main.yml").read_text()) or {}


def _bundle_files(node, role: str) -> set[str]:
    """Every name given to k8s_bundle as `k8s_bundle_binaries` in a role's tasks, templates resolved
    against the role's defaults (a list variable, or the name of each item a task loops over)."""
    found: set[str] = set()
    if isinstance(node, list):
        for item in node:
            found |= _bundle_files(item, role)
    elif isinstance(node, dict):
        value = (node.get("vars") or {}).get("k8s_bundle_binaries")
        if isinstance(value, str):  # "{{ var }}": a list in the defaults
            value = _defaults(role)[value.strip("{} ")]
        for name in value or []:
            if "{{" in name:  # "{{ item.name }}" of a loop over a defaults list
                var = name.strip("{} ").split(".")[0]
                loop_var = {"k8s_worker_service": "k8s_worker_node_services"}[var]
                found |= {item["name"] for item in _defaults(role)[loop_var]}
            else:
                found.add(name)
        for child in node.values():
            found |= _bundle_files(child, role)
    return found


def _wanted() -> dict[str, set[str]]:
    """Every file the roles install from the bundle -> the roles that do."""
    wanted: dict[str, set[str]] = {}
    for tasks in ROLES.glob("*/tasks/*.yml"):
        role = tasks.parent.parent.name
        for name in _bundle_files(yaml.safe_load(tasks.read_text()), role):
            wanted.setdefault(name, set()).add(role)
    return wanted


def test_the_bundle_holds_every_file_a_real_site_installs():
    wanted = _wanted()
    # the worker's node components and images are among them, not only the control plane's
    assert {"kubelet", "kube-proxy", "aifactory_pause_3.10.tar", "aifactory_kube-router_v2.1.0.tar"} <= set(wanted)
    assert {"aifactory_tenant-operator_0.1.0.tar", "registry", "crane"} <= set(wanted)
    manifest = toolchain.manifest()
    if not manifest:
        pytest.skip("toolchain not built: run `aifactory toolchain build`")
    missing = {name: sorted(roles) for name, roles in wanted.items() if name not in manifest}
    assert not missing, f"the bundle lacks what these roles install: {missing}"
    for name in wanted:
        rec = manifest[name]
        assert (paths.bin_dir() / name).is_file() and len(rec["sha256"]) == 64, name


def test_toolchain_bundle_writes_what_a_mirror_serves(tmp_path, capsys):
    """`aifactory toolchain bundle --out DIR`: every file the roles install, each one's sha256 (hashed
    here again) as manifest.json says; a file changed afterwards is caught by verify_bundle."""
    import hashlib
    import json

    from aifactory import cli

    if not toolchain.manifest():
        pytest.skip("toolchain not built: run `aifactory toolchain build`")
    out = tmp_path / "bundle"
    assert cli.main(["toolchain", "bundle", "--out", str(out)]) == 0, capsys.readouterr().err
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(_wanted()) <= set(manifest)
    assert {b.name for b in toolchain.BINARIES} <= set(manifest)
    assert {p.name for p in out.iterdir()} == {*manifest, "manifest.json"}
    for name, rec in manifest.items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == rec["sha256"], name
    # again into the same directory: allowed (it is a bundle), and the result verifies
    assert cli.main(["toolchain", "bundle", "--out", str(out)]) == 0
    assert toolchain.verify_bundle(out) == []
    (out / "kubelet").write_bytes(b"tampered")
    assert toolchain.verify_bundle(out) == ["kubelet: sha256 differs from manifest.json"]
