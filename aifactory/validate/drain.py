"""--drain-on-failure: keep failing nodes out of service, and return the ones it drained once they pass.

A machine with a failed check is taken out of the scheduler of its pool, the failed checks as the
reason: drained in Slurm (`scontrol update State=DRAIN Reason=...`) for the slurm pool, cordoned in
Kubernetes (spec.unschedulable, the reason in an annotation) for the kubernetes pool. The other
scheduler is left alone: the pool roles keep the machine out of it already. A machine this
feature drained earlier (reason starting with DRAIN_PREFIX) whose checks all pass now is resumed /
uncordoned. Drains and cordons set by people, by the pool roles or by Slurm itself are neither
lifted nor taken over (their reason stays).

Only FAILED checks drain: an ERROR means the check could not run, and its cause is often outside
the machine (kube-apiserver or slurmctld down would otherwise empty the other pool).
"""

from __future__ import annotations

import shlex
from collections.abc import Callable

from aifactory.validate.checks.node_kubernetes import CORDON_REASON
from aifactory.validate.checks.node_slurm import DRAIN_PREFIX
from aifactory.validate.context import Context
from aifactory.validate.report import FAILED, Record


def reasons(records: list[Record]) -> dict[str, str]:
    """host -> drain reason, for hosts with a failed check."""
    failed: dict[str, list[str]] = {}
    for r in records:
        if r.status == FAILED:
            failed.setdefault(r.host, []).append(r.check)
    return {h: f"{DRAIN_PREFIX} {', '.join(checks)} failed"[:200] for h, checks in failed.items()}


def _scontrol(ctx: Context, node: str, state: str, reason: str | None = None) -> str | None:
    assert ctx.head is not None
    cmd = f"scontrol update NodeName={shlex.quote(node)} State={state}"
    if reason:
        cmd += f" Reason={shlex.quote(reason)}"
    r = ctx.host(ctx.head).run(cmd)
    return None if r.rc == 0 else (r.stderr or r.stdout).strip()


def _cordon(ctx: Context, node: str, reason: str | None) -> str | None:
    body = {
        "spec": {"unschedulable": reason is not None},
        "metadata": {"annotations": {CORDON_REASON: reason}},
    }
    try:
        ctx.core().patch_node(node, body)
    except Exception as e:  # one node's failure must not stop the others or the summary
        return str(e).splitlines()[0][:200]
    return None


def _done(name: str, action: str, err: str | None, reason: str | None = None) -> str:
    if err is not None:
        return f"{name}: {action} failed: {err}"
    return f"{name}: {action}" + (f" ({reason})" if reason else "")


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
            ours = node.reason.startswith(DRAIN_PREFIX)
            if reason and node.drained and not ours:
                actions.append(f"{m.name}: left alone, already drained ({node.reason})")
            elif reason:
                actions.append(_done(m.name, "slurm drain", _scontrol(ctx, m.name, "DRAIN", reason), reason))
            elif m.name in checked and node.drained and ours:
                actions.append(_done(m.name, "slurm resume", _scontrol(ctx, m.name, "RESUME")))
        if m.pool == "kubernetes" and m.name in k8s:
            node = k8s[m.name]
            ours = bool((node.metadata.annotations or {}).get(CORDON_REASON))
            if reason and node.spec.unschedulable and not ours:
                actions.append(f"{m.name}: left alone, already cordoned by someone else")
            elif reason:
                actions.append(_done(m.name, "kubernetes cordon", _cordon(ctx, m.name, reason), reason))
            elif m.name in checked and node.spec.unschedulable and ours:
                actions.append(_done(m.name, "kubernetes uncordon", _cordon(ctx, m.name, None)))
    for a in actions:
        progress(f"  drain-on-failure: {a}")
    return actions
