"""Services each role leaves enabled and running, per machine.

Workers run the daemons of the scheduler(s) they are a node of: slurmd and munge when slurmctld
knows them (always in the slurm pool), containerd and the kubelet when they are a Kubernetes Node
(always in the kubernetes pool).
"""

from __future__ import annotations

from aifactory.site.model import Machine
from aifactory.validate.context import Context, check, is_k8s_node, is_slurm_node
from aifactory.validate.parsers import parse_systemctl_show
from aifactory.validate.roles import SERVICES


def _fixed(ctx: Context, m: Machine) -> list[str]:
    names: list[str] = []
    for role in m.roles:
        names += [s for s in SERVICES.get(role, ()) if s not in names]
    if m.has_role("k8s-control") and ctx.site.kubernetes and ctx.site.kubernetes.api_address:
        names.append("keepalived")  # holds the site's API address (k8s_control_plane role)
    return names


def _worker_candidates(ctx: Context, m: Machine) -> list[str]:
    if m.pool is None:
        return []
    return [*SERVICES["slurm"], *SERVICES["kubernetes"]]


def expected(ctx: Context, m: Machine) -> list[str]:
    names = _fixed(ctx, m)
    if is_slurm_node(ctx, m):
        names += [s for s in SERVICES["slurm"] if s not in names]
    if is_k8s_node(ctx, m):
        names += [s for s in SERVICES["kubernetes"] if s not in names]
    return names


def probes(ctx: Context, m: Machine) -> dict:
    units = list(dict.fromkeys(_fixed(ctx, m) + _worker_candidates(ctx, m)))
    return (
        {"services": "systemctl show -p Id,UnitFileState,ActiveState,SubState " + " ".join(units)}
        if units
        else {}
    )


@check("services", applies=lambda ctx, m: bool(_fixed(ctx, m) or _worker_candidates(ctx, m)))
def check_services(ctx: Context, machine: Machine, measure) -> None:
    out = ctx.probe(machine)["services"]
    assert out.ok, f"systemctl show: {out.describe()}"
    units = parse_systemctl_show(out.out)
    want = expected(ctx, machine)
    measure({s: units.get(s, {}).get("ActiveState", "?") for s in want})
    bad = []
    for s in want:
        u = units.get(s, {})
        state, enabled = u.get("ActiveState", "missing"), u.get("UnitFileState") or "not installed"
        if state != "active" or enabled != "enabled":
            bad.append(f"{s} is {state} ({u.get('SubState', '?')}), {enabled}")
    assert not bad, "; ".join(bad)
