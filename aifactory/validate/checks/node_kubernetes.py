"""Kubernetes Nodes of the kubernetes pool, and pool membership: never schedulable in both schedulers."""

from __future__ import annotations

from typing import Any

from aifactory.site.model import Machine
from aifactory.validate.context import Context, check
from aifactory.validate.parsers import SlurmNode

GPU = "nvidia.com/gpu"
CORDON_REASON = "aifactory.io/cordon-reason"  # annotation --drain-on-failure sets with the check


def probes(ctx: Context, m: Machine) -> dict:
    return {}


def _ready(node: Any) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or [])


def expected_labels(m: Machine) -> dict[str, str]:
    return {
        "aifactory.io/pool": "kubernetes",
        "aifactory.io/gpu-model": m.gpu_model or "none",
        "nvidia.com/gpu.count": str(m.gpu_count),
        "kubernetes.io/hostname": m.name,
    }


@check("k8s.node", applies=lambda ctx, m: m.pool == "kubernetes")
def check_k8s_node(ctx: Context, machine: Machine, measure) -> None:
    nodes = ctx.k8s_nodes()
    node = nodes.get(machine.name)
    assert node is not None, f"not a Kubernetes Node (have {', '.join(sorted(nodes)) or 'none'})"
    alloc = (node.status.allocatable or {}).get(GPU)
    cap = (node.status.capacity or {}).get(GPU)
    measure(f"allocatable {GPU}={alloc}", str(machine.gpu_count))
    problems = []
    if not _ready(node):
        problems.append("not Ready")
    for what, value in (("allocatable", alloc), ("capacity", cap)):
        if value != str(machine.gpu_count):
            problems.append(f"{what} {GPU}={value or 'missing'}, the site file says {machine.gpu_count}")
    labels = node.metadata.labels or {}
    for k, v in expected_labels(machine).items():
        if labels.get(k) != v:
            problems.append(f"label {k}={labels.get(k, 'missing')}, want {v}")
    assert not problems, "; ".join(problems)


# The NetworkPolicy agent's pods (infra/network_policy.py): one per node.
POLICY_AGENT = ("kube-system", "app.kubernetes.io/name=kube-router")


@check("k8s.policy_agent", applies=lambda ctx, m: m.pool == "kubernetes")
def check_policy_agent(ctx: Context, machine: Machine, measure) -> None:
    namespace, selector = POLICY_AGENT
    pods = ctx.cached(
        "policy_agent_pods",
        lambda: ctx.core().list_namespaced_pod(namespace, label_selector=selector, _request_timeout=15).items,
    )
    mine = [p for p in pods if p.spec.node_name == machine.name]
    ready = [
        p for p in mine if any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])
    ]
    measure(f"{len(ready)}/{len(mine)} Ready", "1/1 Ready")
    assert mine, (
        f"no NetworkPolicy agent pod ({selector} in {namespace}) on this node: policies are not enforced"
    )
    assert ready, f"NetworkPolicy agent pod {mine[0].metadata.name} not Ready ({mine[0].status.phase})"


def _k8s_state(ctx: Context, m: Machine) -> tuple[str, bool]:
    node = ctx.k8s_nodes().get(m.name)
    if node is None:
        return "absent", False
    if node.spec.unschedulable:
        return "cordoned", False
    return ("ready" if _ready(node) else "not-ready"), _ready(node)


def _slurm_state(ctx: Context, m: Machine) -> tuple[str, bool]:
    node: SlurmNode | None = ctx.slurm_nodes().get(m.name)
    return (node.state.lower(), node.schedulable) if node else ("absent", False)


@check("scheduler.membership", applies=lambda ctx, m: m.pool is not None)
def check_membership(ctx: Context, machine: Machine, measure) -> None:
    slurm, in_slurm = _slurm_state(ctx, machine) if ctx.site.slurm else ("n/a", False)
    k8s, in_k8s = _k8s_state(ctx, machine) if ctx.site.kubernetes else ("n/a", False)
    measure(f"slurm={slurm} kubernetes={k8s}", f"pool={machine.pool}")
    assert not (in_slurm and in_k8s), f"schedulable in both Slurm ({slurm}) and Kubernetes ({k8s})"
    if machine.pool == "slurm":
        assert slurm != "absent", "a slurm-pool machine that is not a Slurm node"
    if machine.pool == "kubernetes":
        assert k8s != "absent", "a kubernetes-pool machine that is not a Kubernetes Node"
