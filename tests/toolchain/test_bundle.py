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


def test_the_bundle_holds_every_file_a_real_site_installs():
    wanted: dict[str, set[str]] = {}
    for tasks in ROLES.glob("*/tasks/*.yml"):
        role = tasks.parent.parent.name
        for name in _bundle_files(yaml.safe_load(tasks.read_text()), role):
            wanted.setdefault(name, set()).add(role)
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
