"""`AnsibleConfiguration`: the project's playbooks, run by the deployment once machines are up.

A dynamic resource whose inputs are fingerprints of the site file and of playbooks/: `pulumi up`
runs Ansible on create and again whenever either changes, and a failure surfaces as the resource's
error naming the failed task and host.

Drift on the hosts: every run ends by recording, on each host, a fingerprint of the files the
playbooks manage (role configuration_fingerprint). `pulumi refresh` (read) recomputes it over ssh
and sets the output `hosts_state` to "as-configured", or to "drifted: <host>: <path> (changed), ..."
and/or "unknown: <host>: <why>" (a host that did not answer); anything but "as-configured" makes
the next `pulumi up` run the playbooks again (diff).
"""

from __future__ import annotations

import hashlib
import json
import shlex
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pulumi
import pulumi.dynamic as dynamic

from aifactory import paths, toolchain
from aifactory.site.model import Machine, Site

AS_CONFIGURED = "as-configured"
FINGERPRINT = paths.REPO / "playbooks" / "roles" / "configuration_fingerprint" / "files" / "fingerprint.py"
RECORD = "/var/lib/aifactory/configuration.json"  # the role's configuration_fingerprint_record
SSH_TIMEOUT = 60  # seconds for one host's answer
# A real site's hosts: the operator's own ssh configuration and keys, as `aifactory validate` uses.
REAL_SITE_SSH = ["-o", "BatchMode=yes", "-o", "ConnectTimeout=10"]
SHOWN_PER_HOST = 5  # drifted paths named per host; the rest are counted

# (site, machine, python3 arguments, script on stdin) -> the finished process
Runner = Callable[[Site, Machine, list[str], str], subprocess.CompletedProcess[str]]


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


def _configure(props: dict[str, Any], limit: list[str] | None = None) -> dict[str, Any]:
    from aifactory.configure import PlaybookFailed, run_playbook
    from aifactory.site.validate import load_site

    site = load_site(props["site_file"])
    if limit:
        pulumi.log.info(f"repairing drift: the playbooks on {', '.join(limit)} only")
    try:
        result = run_playbook(
            site,
            props["playbook"],
            limit=",".join(limit) if limit else None,
            progress=lambda line: pulumi.log.info(line.strip()),
        )
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
        "hosts_state": AS_CONFIGURED,
        "repair_hosts": [],
    }


def ssh_python(
    site: Site, machine: Machine, args: list[str], script: str
) -> subprocess.CompletedProcess[str]:
    """python3 on the machine, as root, running `script` (stdin) with `args`."""
    config = paths.ssh_config(site.name)
    # By address, as Ansible's inventory does; the local site's ssh config where the sandbox wrote one.
    if config.exists():
        target = ["-F", str(config), machine.address]
    else:
        target = [*REAL_SITE_SSH, f"{site.ssh_user}@{machine.address}"]
    command = shlex.join(["python3", "-", *args])
    if site.ssh_user != "root":  # the playbooks become root; so does the check (the munge key is 0400)
        command = f"sudo -n {command}"
    return subprocess.run(
        ["ssh", *target, command],
        input=script,
        capture_output=True,
        text=True,
        timeout=SSH_TIMEOUT,
        check=False,
    )


def _host_drift(site: Site, machine: Machine, run: Runner, script: str) -> tuple[list[str], str | None]:
    """(paths that differ from the host's record, None) or ([], why the host could not say)."""
    try:
        p = run(site, machine, ["compare", RECORD], script)
    except subprocess.TimeoutExpired:
        return [], f"no answer over ssh within {SSH_TIMEOUT}s"
    except OSError as e:
        return [], f"ssh did not start: {e}"
    last = (p.stderr.strip().splitlines() or [""])[-1][:300]
    if p.returncode == 255:
        return [], f"ssh {machine.address}: {last}"
    if p.returncode != 0:
        return [], f"the fingerprint check exited with status {p.returncode}: {last}"
    try:
        drifted = json.loads(p.stdout)["drifted"]
    except (ValueError, KeyError, TypeError):
        return [], f"unexpected answer from the fingerprint check: {p.stdout[:200]!r}"
    return [str(d) for d in drifted], None


def describe(drifted: dict[str, list[str]], unknown: dict[str, str]) -> str:
    """The `hosts_state` output: which hosts drifted from their record and how, which could not say."""

    def few(found: list[str]) -> str:
        more = len(found) - SHOWN_PER_HOST
        return ", ".join(found[:SHOWN_PER_HOST]) + (f" and {more} more" if more > 0 else "")

    parts = []
    if drifted:
        parts.append("drifted: " + "; ".join(f"{h}: {few(found)}" for h, found in sorted(drifted.items())))
    if unknown:
        parts.append("unknown: " + "; ".join(f"{h}: {why}" for h, why in sorted(unknown.items())))
    return " | ".join(parts) or AS_CONFIGURED


def hosts_state(props: dict[str, Any], run: Runner = ssh_python) -> str:
    """Every configured host's files against the record its last run left, hosts asked in parallel."""
    return describe(*survey(props, run))


def survey(props: dict[str, Any], run: Runner = ssh_python) -> tuple[dict[str, list[str]], dict[str, str]]:
    """(drifted paths per host, why per host that could not say); "site file" when it is unreadable."""
    from aifactory.site.validate import SiteInvalid, load_site

    try:
        site = load_site(props["site_file"])
    except SiteInvalid as e:
        return {}, {f"site file {props['site_file']}": str(e)}
    names = [str(n) for n in props.get("machines") or []]
    known = {m.name: m for m in site.machines}
    unknown = {n: "no longer in the site file" for n in names if n not in known}
    machines = [known[n] for n in names if n in known]
    script = FINGERPRINT.read_text()
    drifted: dict[str, list[str]] = {}
    with ThreadPoolExecutor(max_workers=max(1, min(32, len(machines)))) as pool:
        answers = pool.map(lambda m: _host_drift(site, m, run, script), machines)
        for m, (found, why) in zip(machines, answers, strict=True):
            if why:
                unknown[m.name] = why
            elif found:
                drifted[m.name] = found
    return drifted, unknown


# The inputs whose change re-runs the playbooks on every machine.
INPUT_KEYS = ("site_file", "playbook", "site_digest", "playbooks_digest", "bundle_digest", "machines")


class AnsibleProvider(dynamic.ResourceProvider):
    def create(self, props: dict[str, Any]) -> dynamic.CreateResult:
        return dynamic.CreateResult(id_=f"ansible-{props['playbook']}", outs=_configure(props))

    def read(self, id_: str, props: dict[str, Any]) -> dynamic.ReadResult:
        drifted, unknown = survey(props)
        state = describe(drifted, unknown)
        if state != AS_CONFIGURED:
            pulumi.log.warn(f"{id_}: {state}")
        # What `up` repairs when nothing else changed: the machines that drifted or could not say.
        repair = sorted(set(drifted) | (set(unknown) & {str(n) for n in props.get("machines") or []}))
        return dynamic.ReadResult(id_=id_, outs={**props, "hosts_state": state, "repair_hosts": repair})

    def diff(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> dynamic.DiffResult:
        # news' hosts_state is always "as-configured": a refresh that found drift (or a host that could
        # not say) makes the next `pulumi up` run the playbooks again.
        keys = (*INPUT_KEYS, "hosts_state")
        return dynamic.DiffResult(changes=any(olds.get(k) != news.get(k) for k in keys))

    def update(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> dynamic.UpdateResult:
        # Only drift to repair (the site, playbooks, bundle and machines as they were): the playbooks
        # on those machines alone, not the whole site.
        same = all(olds.get(k) == news.get(k) for k in INPUT_KEYS)
        limit = olds.get("repair_hosts") if same and olds.get("repair_hosts") else None
        return dynamic.UpdateResult(outs=_configure(news, limit))


class AnsibleConfiguration(dynamic.Resource):
    kubeconfig_path: pulumi.Output[str]
    operator_access_dir: pulumi.Output[str | None]  # the tenant operator's ssh key to the head, if made
    changed: pulumi.Output[int]
    hosts_state: pulumi.Output[str]  # after a refresh: "as-configured", or what drifted on which host

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
            "hosts_state": AS_CONFIGURED,  # the run just recorded each host's files
            "repair_hosts": [],
        }
        super().__init__(AnsibleProvider(), name, props, opts)
