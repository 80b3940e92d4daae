"""Kubernetes Nodes of the kubernetes pool, and pool membership: never schedulable in both schedulers."""

from __future__ import annotations

from typing import Any

from aifactory.site.model import Machine
from aifactory.validate.context import Context, check
from aifactory.validate.parsers import SlurmNode

GPU = "nvidia.com/gpu"
CORDON_REASON = "aifactory.io/cordon-reason"  # annotation --drain-on-failure sets with the check


# What the k8s_worker and k8s_pod_network roles set up on a node (their defaults).
CNI_CONFLIST = "/etc/cni/net.d/10-aifactory.conflist"


def _k8s_worker(ctx: Context, m: Machine) -> bool:
    return m.pool == "kubernetes"


def probes(ctx: Context, m: Machine) -> dict:
    if not _k8s_worker(ctx, m):
        return {}
    return {
        # the CRI plugin's state (ok, or why not) and the runtime it starts containers with
        "runtime": "ctr plugins ls | awk '$2 == \"cri\" {print $NF}'; "
        "containerd config dump | sed -n 's/^ *default_runtime_name = \"\\(.*\\)\"/\\1/p' | head -1",
        "cni": f"cat {CNI_CONFLIST}",
        "routes": "ip -4 route show",
    }


def expected_pod_cidr(ctx: Context, m: Machine) -> str:
    assert ctx.site.kubernetes is not None
    return ctx.site.kubernetes.node_pod_cidr(m.nics[0].address, ctx.site.management.cidr)


@check("k8s.runtime", applies=_k8s_worker)
def check_runtime(ctx: Context, machine: Machine, measure) -> None:
    out = ctx.probe(machine)["runtime"]
    cri, runtime = [*out.out.split(), "?", "?"][:2]
    measure(f"CRI {cri}, default runtime {runtime}", "CRI ok, default runtime crun")
    assert out.ok and cri == "ok", f"containerd's CRI plugin is {cri}: {out.describe()}"
    assert runtime == "crun", f"containerd starts containers with {runtime}, not crun (k8s_worker role)"


@check("k8s.cni", applies=_k8s_worker)
def check_cni(ctx: Context, machine: Machine, measure) -> None:
    """The node's CNI configuration hands out its own pod subnet, and every other node's is routed."""
    import json

    conf = ctx.probe(machine)["cni"]
    assert conf.ok, f"no CNI configuration {CNI_CONFLIST}: {conf.describe()}"
    try:
        plugins = json.loads(conf.out)["plugins"]
        bridge = next(p for p in plugins if p["type"] == "bridge")
        subnet = bridge["ipam"]["ranges"][0][0]["subnet"]
    except (ValueError, KeyError, IndexError, StopIteration) as e:
        raise AssertionError(f"{CNI_CONFLIST}: no bridge plugin with a subnet ({e!r})") from None
    want = expected_pod_cidr(ctx, machine)
    routes = ctx.probe(machine)["routes"].out
    others = [m for m in ctx.site.machines if m.pool and m.name != machine.name]
    unrouted = [
        f"{expected_pod_cidr(ctx, m)} ({m.name})" for m in others if expected_pod_cidr(ctx, m) not in routes
    ]
    measure(f"pod subnet {subnet}, {len(others) - len(unrouted)}/{len(others)} other nodes routed", want)
    assert subnet == want, f"{CNI_CONFLIST} hands out {subnet}, the site's pod_cidr gives this node {want}"
    assert not unrouted, "no route to the pod subnets of " + ", ".join(unrouted)


def _ready(node: Any) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or [])


def expected_labels(m: Machine) -> dict[str, str]:
    return {
        "aifactory.io/pool": "kubernetes",
        "aifactory.io/gpu-model": m.gpu_model or "none",
        "nvidia.com/gpu.count": str(m.gpu_count),
        "kubernetes.io/hostname": m.name,
    }


@check("k8s.node", applies=_k8s_worker)
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


@check("k8s.policy_agent", applies=_k8s_worker)
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
