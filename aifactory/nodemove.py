"""Moving a worker between the Slurm and Kubernetes pools (`aifactory node move`).

The site file's `pool:` is the source of truth. A move runs playbooks/node-move.yml (release the
machine from one scheduler, waiting for its jobs or pods, then offer it to the other) and only
when that succeeded rewrites the machine's `pool:` value in the site file, so the next `configure`
keeps the new state. The rewrite touches that one value and nothing else: comments, order and
formatting of the file stay as the operator wrote them.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from aifactory import configure
from aifactory.site.model import POOLS, Site
from aifactory.site.validate import ERROR, Finding, check

PLAYBOOK = "node-move.yml"


class BadMove(ValueError):
    """The move cannot start: unknown machine, no pool, or the site file would become invalid."""

    def __init__(self, message: str, findings: list[Finding] | None = None):
        super().__init__(message)
        self.findings = findings or []


def _pool_node(text: str, machine: str) -> yaml.Node:
    """The YAML node holding `pool:` of `machine` (its position in the text is in its marks)."""
    root = yaml.compose(text)
    machines = None
    if isinstance(root, yaml.MappingNode):
        machines = next((v for k, v in root.value if k.value == "machines"), None)
    if not isinstance(machines, yaml.SequenceNode):
        raise BadMove("the site file has no machines list")
    for m in machines.value:
        if not isinstance(m, yaml.MappingNode):
            continue
        fields = {k.value: v for k, v in m.value}
        name = fields.get("name")
        if isinstance(name, yaml.ScalarNode) and name.value == machine:
            pool = fields.get("pool")
            if not isinstance(pool, yaml.ScalarNode):
                raise BadMove(f"machine {machine!r} has no pool: only gpu/cpu workers move between pools")
            return pool
    raise BadMove(f"the site file has no machine {machine!r}")


def with_pool(text: str, machine: str, pool: str) -> str:
    """The site file text with `machine`'s pool set to `pool`; every other character unchanged."""
    if pool not in POOLS:
        raise BadMove(f"unknown pool {pool!r}; known: {', '.join(POOLS)}")
    node = _pool_node(text, machine)
    start, end = node.start_mark.index, node.end_mark.index
    return text[:start] + pool + text[end:]


def current_pool(text: str, machine: str) -> str:
    return str(_pool_node(text, machine).value)


@dataclass
class MoveResult:
    machine: str
    old_pool: str
    new_pool: str
    seconds: float
    moved: bool  # False: the site file already said that pool; the run only re-asserted it


def _check_new_file(path: Path, text: str) -> None:
    """Refuse a move whose resulting site file fails validation (e.g. the slurm pool left empty)."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", dir=path.parent, delete=False) as f:
        f.write(text)
    probe = Path(f.name)
    try:
        findings, site = check(probe)
    finally:
        probe.unlink()
    if site is None:
        errors = [f for f in findings if f.level == ERROR]
        raise BadMove("after this move the site file would be invalid", errors)


def move(
    site: Site, machine: str, to: str, timeout: int = 300, progress: configure.Progress = print
) -> MoveResult:
    """Move `machine` to pool `to`. Raises BadMove (nothing done) or configure.PlaybookFailed.

    When the site file already says `to`, the playbook still runs: it re-asserts that pool, which
    repairs a machine a failed move left offered by neither scheduler.
    """
    path = Path(site.path)
    text = path.read_text()
    old = current_pool(text, machine)
    new_text = with_pool(text, machine, to)
    if old != to:
        _check_new_file(path, new_text)
    result = configure.run_playbook(
        site,
        PLAYBOOK,
        extravars={"move_machine": machine, "move_to": to, "move_timeout": int(timeout)},
        progress=progress,
    )
    if old != to:
        # Re-read: the file may have been edited while jobs drained; change only this one value.
        path.write_text(with_pool(path.read_text(), machine, to))
    return MoveResult(machine, old, to, result.seconds, moved=old != to)
