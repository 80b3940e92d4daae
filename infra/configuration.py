"""`AnsibleConfiguration`: the project's playbooks, run by the deployment once machines are up.

A dynamic resource whose inputs are fingerprints of the site file and of playbooks/: `pulumi up`
runs Ansible on create and again whenever either changes, and a failure surfaces as the resource's
error naming the failed task and host.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pulumi
import pulumi.dynamic as dynamic

from aifactory import paths, toolchain


def fingerprint(site_file: Path) -> dict[str, str]:
    """Content digests: a changed site file, playbook tree or bundle (a rebuilt binary or image, which
    the roles deliver) re-runs the configuration."""

    def digest(files: list[Path], root: Path) -> str:
        h = hashlib.sha256()
        for f in sorted(files):
            h.update(str(f.relative_to(root)).encode())
            h.update(f.read_bytes())
        return h.hexdigest()[:16]

    playbooks = paths.REPO / "playbooks"
    return {
        "site_digest": digest([site_file], site_file.parent),
        "playbooks_digest": digest([p for p in playbooks.rglob("*") if p.is_file()], playbooks),
        "bundle_digest": hashlib.sha256(
            json.dumps(toolchain.manifest(), sort_keys=True).encode()
        ).hexdigest()[:16],
    }


def _configure(props: dict[str, Any]) -> dict[str, Any]:
    from aifactory.configure import PlaybookFailed, run_playbook
    from aifactory.site.validate import load_site

    site = load_site(props["site_file"])
    try:
        result = run_playbook(site, props["playbook"], progress=lambda line: pulumi.log.info(line.strip()))
    except PlaybookFailed as e:
        raise Exception(f"Ansible failed on site {site.name}: {e}") from None
    kubeconfig = paths.site_state_dir(site.name) / "kubeconfig"
    operator_access = paths.site_state_dir(site.name) / "tenant-operator"  # tenant_operator_access role
    return {
        **props,
        "changed": result.changed,
        "seconds": round(result.seconds, 1),
        "kubeconfig_path": str(kubeconfig) if kubeconfig.exists() else None,
        "operator_access_dir": str(operator_access) if (operator_access / "id_ed25519").exists() else None,
    }


class AnsibleProvider(dynamic.ResourceProvider):
    def create(self, props: dict[str, Any]) -> dynamic.CreateResult:
        return dynamic.CreateResult(id_=f"ansible-{props['playbook']}", outs=_configure(props))

    def diff(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> dynamic.DiffResult:
        keys = ("site_file", "playbook", "site_digest", "playbooks_digest", "bundle_digest", "machines")
        return dynamic.DiffResult(changes=any(olds.get(k) != news.get(k) for k in keys))

    def update(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> dynamic.UpdateResult:
        return dynamic.UpdateResult(outs=_configure(news))


class AnsibleConfiguration(dynamic.Resource):
    kubeconfig_path: pulumi.Output[str]
    operator_access_dir: pulumi.Output[str | None]  # the tenant operator's ssh key to the head, if made
    changed: pulumi.Output[int]

    def __init__(
        self,
        name: str,
        site_file: Path,
        machines: pulumi.Input[list[str]],
        playbook: str = "site.yml",
        opts: pulumi.ResourceOptions | None = None,
    ):
        props = {
            "site_file": str(site_file),
            "playbook": playbook,
            "machines": machines,
            **fingerprint(site_file),
            "changed": None,
            "seconds": None,
            "kubeconfig_path": None,
            "operator_access_dir": None,
        }
        super().__init__(AnsibleProvider(), name, props, opts)
