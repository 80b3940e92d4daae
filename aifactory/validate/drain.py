"""--drain-on-failure: keep failing nodes out of service, and return the ones it drained once they pass.

A machine with a failed check is taken out of the scheduler of its pool, the failed checks as the
reason: drained in Slurm (`scontrol update State=DRAIN Reason=...`) for the slurm pool, cordoned in
Kubernetes (spec.unschedulable, the reason in an annotation) for the kubernetes pool. The other
scheduler is left alone: the pool roles keep the machine out of it already. A machine this
feature drained earlier (reason starting with DRAIN_PREFIX) whose checks all pass now is resumed /
uncordoned. Drains set by people, by the pool roles or by Slurm itself are never lifted.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable

from aifactory.validate.checks.node_kubernetes import CORDON_REASON
from aifactory.validate.checks.node_slurm import DRAIN_PREFIX
from aifactory.validate.context import Context
from aifactory.validate.report import Record


def reasons(records: list[Record]) -> dict[str, str]:
    """host -> drain reason, for hosts with a failed check."""
    failed: dict[str, list[str]] = {}
    for r in records:
        if r.bad:
            failed.setdefault(r.host, []).append(r.check)
    return {h: f"{DRAIN_PREFIX} {', '.join(checks)} failed"[:200] for h, checks in failed.items()}


def _scontrol(ctx: Context, node: str, state: str, reason: str | None = None) -> str | None:
    assert ctx.head is not None
    cmd = f"scontrol update NodeName={shlex.quote(node)} State={state}"
    if reason:
        cmd += f" Reason={shlex.quote(reason)}"
    r = ctx.host(ctx.head).run(cmd)
    return None if r.rc == 0 else (r.stderr or r.stdout).strip()


def _cordon(ctx: Context, node: str, reason: str | None) -> None:
    body = {
        "spec": {"unschedulable": reason is not None},
        "metadata": {"annotations": {CORDON_REASON: reason}},
    }
    ctx.core().patch_node(node, body)


def apply(ctx: Context, records: list[Record], progress: Callable[[str], None]) -> list[str]:
    """Drain/cordon the failing machines, resume the ones drained earlier that pass; return the actions."""
    bad = reasons(records)
    checked = {r.host for r in records}
    actions: list[str] = []
    try:
        slurm = ctx.slurm_nodes() if ctx.site.slurm and ctx.head else {}
    except Exception as e:
        slurm = {}
        progress(f"  drain: cannot read Slurm nodes: {e}")
    try:
        k8s = ctx.k8s_nodes() if ctx.site.kubernetes else {}
    except Exception as e:
        k8s = {}
        progress(f"  drain: cannot read Kubernetes nodes: {e}")
    for m in ctx.machines:
        reason = bad.get(m.name)
        if m.pool == "slurm" and m.name in slurm:
            node = slurm[m.name]
            if reason:
                err = _scontrol(ctx, m.name, "DRAIN", reason)
                actions.append(
                    f"{m.name}: slurm drain ({reason})" if err is None else f"{m.name}: drain failed: {err}"
                )
            elif m.name in checked and node.drained and node.reason.startswith(DRAIN_PREFIX):
                err = _scontrol(ctx, m.name, "RESUME")
                actions.append(
                    f"{m.name}: slurm resume" if err is None else f"{m.name}: resume failed: {err}"
                )
        if m.pool == "kubernetes" and m.name in k8s:
            node = k8s[m.name]
            ours = (node.metadata.annotations or {}).get(CORDON_REASON)
            if reason:
                _cordon(ctx, m.name, reason)
                actions.append(f"{m.name}: kubernetes cordon ({reason})")
            elif m.name in checked and node.spec.unschedulable and ours:
                _cordon(ctx, m.name, None)
                actions.append(f"{m.name}: kubernetes uncordon")
    for a in actions:
        progress(f"  drain-on-failure: {a}")
    return actions
