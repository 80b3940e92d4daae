"""Run the project's playbooks against a site through ansible-runner, with live progress.

Used by `aifactory configure` and by the Pulumi program. Progress is one line per task start and a
line per failed or unreachable host; at the end a per-host summary (ok/changed/failed/...). A failure
raises `PlaybookFailed` naming the task, the host and Ansible's message.

site.yml first asks every host whether it is as the last run left it (aifactory/converged.py, one
ssh command per host, in parallel: the managed files, binaries, services, kernel settings, routes,
Slurm and Kubernetes node states against the record the last run wrote, and the digest of the inputs
that run had, which must be this run's). When all say yes, nothing would change and site.yml is not run:
the idempotent run costs one round trip per host instead of some 300 tasks. `full=True` (or
AIFACTORY_CONFIGURE_FULL=1) runs every task regardless.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ansible_runner

from aifactory import converged, inventory, paths
from aifactory.site.model import Site

PLAYBOOKS = paths.REPO / "playbooks"
Progress = Callable[[str], None]

# The playbook whose idempotent runs are skipped when every host is converged.
SKIPPABLE = "site.yml"
RECORD = "record.yml"
FULL_ENV = "AIFACTORY_CONFIGURE_FULL"
STATS = ("ok", "changed", "failures", "unreachable", "skipped")  # a host's counts, as Ansible keeps them


@dataclass
class HostFailure:
    host: str
    task: str
    message: str

    def __str__(self) -> str:
        return f"{self.host}: task '{self.task}' failed: {self.message}"


@dataclass
class PlaybookResult:
    playbook: str
    status: str
    seconds: float
    stats: dict[str, dict[str, int]]  # host -> {ok, changed, failures, unreachable, skipped}
    failures: list[HostFailure] = field(default_factory=list)
    unverified: list[str] = field(default_factory=list)  # what roles configured but could not check

    @property
    def changed(self) -> int:
        return sum(s.get("changed", 0) for s in self.stats.values())

    def rows(self) -> list[dict[str, Any]]:
        return [{"host": h, **s} for h, s in sorted(self.stats.items())]


class PlaybookFailed(RuntimeError):
    def __init__(self, result: PlaybookResult):
        self.result = result
        lines = [str(f) for f in result.failures] or [f"ansible-runner ended with status {result.status}"]
        super().__init__(f"{result.playbook}: " + "; ".join(lines))


def inventory_for(site: Site) -> Path:
    """(Re)write the site's inventory from the site file; emulated sites get their ssh config."""
    cfg = paths.ssh_config(site.name)
    return inventory.write(
        site, paths.site_state_dir(site.name) / "inventory.yml", cfg if cfg.exists() else None
    )


def _message(res: dict[str, Any]) -> str:
    msg = res.get("msg") or res.get("stderr") or res.get("reason") or ""
    if not msg and "rc" in res:  # a command judged by failed_when: its exit status and last output line
        out = str(res.get("stdout", "")).strip().splitlines()
        msg = f"rc={res['rc']}" + (f": {out[-1]}" if out else "")
    if not msg and res.get("results"):  # loops: the first failed item
        failed = [r for r in res["results"] if r.get("failed")]
        msg = _message(failed[0]) if failed else ""
    return str(msg).strip().splitlines()[-1][:400] if str(msg).strip() else "(no message)"


def forget_earlier_inputs(data_dir: Path) -> None:
    """ansible-runner keeps the extra variables and command line it was given in env/ and reads them
    back on the next run that gives none: an earlier `--check` or extra variable would leak into it."""
    for name in ("extravars", "cmdline"):
        (data_dir / "env" / name).unlink(missing_ok=True)


def bundle_manifest(bundle_url: str | None) -> bytes:
    """The bundle's manifest.json as the controller reads it (a new bundle, a new run); once per run,
    here, rather than once per host. Unreadable: the reason, which an earlier run's digest never
    matches unless it was unreadable then too (a site whose controller cannot reach its mirror:
    AIFACTORY_CONFIGURE_FULL=1 after publishing a bundle)."""
    if not bundle_url:
        return b""
    try:
        with urllib.request.urlopen(f"{bundle_url}/manifest.json", timeout=10) as r:
            return bytes(r.read())
    except (OSError, ValueError) as e:
        return f"unreadable: {type(e).__name__}".encode()


def inputs_digest(inventory_file: Path, extravars: dict[str, Any], site_name: str, manifest: bytes) -> str:
    """What a run's outcome depends on, on the controller's side: every file under playbooks/, the
    inventory (the site file, rendered), the extra variables, the site's generated secrets and the
    bundle's `manifest` (bundle_manifest)."""
    h = hashlib.sha256()
    secrets = paths.site_state_dir(site_name) / "secrets"
    for top in (PLAYBOOKS, secrets):
        for path in sorted(top.rglob("*")) if top.is_dir() else []:
            if path.is_file() and "__pycache__" not in path.parts:
                h.update(f"{path.relative_to(top.parent)}\0".encode() + path.read_bytes() + b"\0")
    h.update(inventory_file.read_bytes() + b"\0")
    h.update(json.dumps(extravars, sort_keys=True, default=str).encode() + b"\0")
    h.update(manifest)
    return h.hexdigest()


def controller_files_missing(site_name: str) -> list[str]:
    """What the roles hand back to the controller (k8s_control_plane, tenant_operator_access) and is
    gone: a run must fetch it again."""
    state = paths.site_state_dir(site_name)
    wanted = [state / "kubeconfig", state / "tenant-operator" / "id_ed25519"]
    return [str(p) for p in wanted if not p.exists()]


def _runner(
    site: Site,
    playbook: str,
    limit: str | None,
    check: bool,
    extravars: dict[str, Any],
    progress: Progress,
) -> PlaybookResult:
    inv = inventory_for(site)
    data_dir = paths.site_state_dir(site.name) / "ansible"
    data_dir.mkdir(parents=True, exist_ok=True)
    failures: list[HostFailure] = []
    unverified: list[str] = []
    counts = {"tasks": 0}

    def on_event(event: dict[str, Any]) -> bool:
        kind, data = event.get("event"), event.get("event_data", {})
        if kind == "playbook_on_task_start":
            counts["tasks"] += 1
            progress(f"  [{counts['tasks']:3d}] {data.get('task', '?')}")
        elif kind in ("runner_on_failed", "runner_on_unreachable") and not data.get("ignore_errors"):
            f = HostFailure(data.get("host", "?"), data.get("task", "?"), _message(data.get("res", {})))
            failures.append(f)
            progress(f"        failed {f}")
        elif kind == "runner_on_ok" and str(data.get("res", {}).get("msg", "")).startswith("UNVERIFIED"):
            unverified.append(data["res"]["msg"])
        return True

    forget_earlier_inputs(data_dir)
    start = time.monotonic()
    progress(
        f"configure: {playbook} on {site.name}"
        + (f" (limit {limit})" if limit else "")
        + (" [check]" if check else "")
    )
    r = ansible_runner.run(
        private_data_dir=str(data_dir),
        project_dir=str(PLAYBOOKS),
        playbook=str(PLAYBOOKS / playbook),
        inventory=str(inv),
        limit=limit,
        extravars=extravars,
        cmdline="--check --diff" if check else None,
        envvars={
            "ANSIBLE_ROLES_PATH": str(PLAYBOOKS / "roles"),
            "ANSIBLE_PIPELINING": "True",
            "ANSIBLE_FORKS": "16",
            "ANSIBLE_CALLBACK_RESULT_FORMAT": "yaml",
            "ANSIBLE_DEPRECATION_WARNINGS": "False",
            # ansible-playbook lives beside this interpreter (the venv), which may not be on PATH.
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        },
        event_handler=on_event,
        quiet=True,
        rotate_artifacts=5,
    )
    stats = r.stats or {}
    per_host: dict[str, dict[str, int]] = {}
    for key in STATS:
        for host, n in (stats.get(key) or {}).items():
            per_host.setdefault(host, dict.fromkeys(STATS, 0))
            per_host[host][key] = n
    # A failure inside a block whose rescue handled it is not a host failure (the stats agree).
    failures[:] = [
        f
        for f in failures
        if f.host not in per_host or per_host[f.host]["failures"] or per_host[f.host]["unreachable"]
    ]
    result = PlaybookResult(playbook, r.status, time.monotonic() - start, per_host, failures, unverified)
    if r.status != "successful" or failures:
        if not failures:
            tail = r.stdout.read().strip().splitlines()[-5:] if r.stdout else []
            failures.append(HostFailure("controller", playbook, " | ".join(tail) or r.status))
        raise PlaybookFailed(result)
    return result


def run_playbook(
    site: Site,
    playbook: str,
    limit: str | None = None,
    check: bool = False,
    extravars: dict[str, Any] | None = None,
    progress: Progress = print,
    full: bool | None = None,
) -> PlaybookResult:
    """Run `playbook`; site.yml only when some host is not as the last run left it (see above)."""
    extravars = dict(extravars or {})
    if playbook != SKIPPABLE:
        return _runner(site, playbook, limit, check, extravars, progress)
    if full is None:
        full = os.environ.get(FULL_ENV, "") not in ("", "0")
    start = time.monotonic()
    given, inv = dict(extravars), inventory_for(site)
    # Read once: the record names the bundle this run was given, even if another is published meanwhile.
    manifest = bundle_manifest(site.bundle_url)
    digest = inputs_digest(inv, given, site.name, manifest)
    extravars["configuration_fingerprint_inputs"] = digest
    data_dir = paths.site_state_dir(site.name) / "ansible"
    unverified_file = data_dir / "unverified.json"
    if not full:
        missing = controller_files_missing(site.name)
        verdicts = converged.ask(converged.hosts(inv, limit), digest)
        differ = {h: v for h, v in sorted(verdicts.items()) if v}
        if not missing and not differ and verdicts:
            try:
                unverified = [str(u) for u in json.loads(unverified_file.read_text())]
            except (OSError, ValueError, TypeError):
                unverified = []
            progress(
                f"configure: {playbook} on {site.name}"
                + (f" (limit {limit})" if limit else "")
                + f": all {len(verdicts)} hosts as the last run left them, nothing to do"
                + f" ({FULL_ENV}=1 runs every task)"
            )
            # Each host answered the one check it was asked, and nothing changed.
            stats = {h: {**dict.fromkeys(STATS, 0), "ok": 1} for h in verdicts}
            return PlaybookResult(playbook, "successful", time.monotonic() - start, stats, [], unverified)
        for host, why in differ.items():
            progress(f"  {host}: " + "; ".join(why)[:300])
        for path in missing:
            progress(f"  controller: {path} missing")
    result = _runner(site, playbook, limit, check, extravars, progress)
    if not check:
        # A first run creates the secrets the digest covers: record the digest with them, or the
        # next run would find other inputs than the record's and run in full once more.
        after = inputs_digest(inv, given, site.name, manifest)
        if after != digest:
            extravars["configuration_fingerprint_inputs"] = after
            _runner(site, RECORD, limit, False, extravars, lambda _: None)
    result.seconds = time.monotonic() - start
    if not check and not limit:  # what a skipped run reports again
        unverified_file.parent.mkdir(parents=True, exist_ok=True)
        unverified_file.write_text(json.dumps(result.unverified) + "\n")
    return result
