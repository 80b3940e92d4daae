"""Whole-cluster checks: a 1-GPU Slurm job and a 1-GPU pod see one GPU, a pod resolves a Service by name,
the tenant operator works."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from aifactory.images import toolbox_pod
from aifactory.validate.context import Context, check

NAMESPACE = "aifactory-validate"
JOB_TIMEOUT_S = 60
POD_TIMEOUT_S = 60
# How the tenant operator (operators/tenants) is recognised: its custom resource kind, and where it
# runs: `aifactory operator run` on this machine (a kopf process), a Deployment, or a systemd unit.
TENANT_KIND = "Tenant"
OPERATOR_MODULE = "operators.tenants.handlers"
OPERATOR_DEPLOYMENT_LABEL = "app.kubernetes.io/name=tenant-operator"  # infra/tenant_operator.py


def probes(ctx, m) -> dict:
    return {}


def _jobs(ctx: Context) -> None:
    if not ctx.at_least("standard"):
        pytest.skip("quick level: no test job is submitted")


@check("cluster.slurm_gpu_job")
def check_slurm_job(ctx: Context, measure) -> None:
    _jobs(ctx)
    nodes = [m for m in ctx.site.in_pool("slurm") if m.gpu_count]
    if not nodes or ctx.head is None:
        pytest.skip("no GPU machine in the slurm pool")
    cmd = (
        f"timeout {JOB_TIMEOUT_S} srun -N1 -n1 --gres=gpu:1 -t 2 -J aifactory-validate "
        "sh -c 'echo $SLURMD_NODENAME $CUDA_VISIBLE_DEVICES'"
    )
    t0 = time.monotonic()
    r = ctx.host(ctx.head).run(cmd)
    took = time.monotonic() - t0
    assert r.rc == 0, (
        f"srun --gres=gpu:1 on {ctx.head.name}: exit {r.rc}: {(r.stderr or r.stdout).strip()[:300]}"
    )
    node, _, devices = r.stdout.strip().partition(" ")
    measure(f"{node} CUDA_VISIBLE_DEVICES={devices} in {took:.1f}s")
    assert node in {m.name for m in nodes}, f"the job ran on {node!r}, not a slurm-pool GPU machine"
    assert len(devices.split(",")) == 1 and devices.strip().isdigit(), f"CUDA_VISIBLE_DEVICES={devices!r}"


def _run_pod(ctx: Context, prefix: str, command: str, gpus: int = 0) -> tuple[Any, str, float]:
    """A toolbox pod in the validation namespace, run to its end (POD_TIMEOUT_S at most) and deleted:
    (the pod as it ended, its log, seconds taken)."""
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    core = ctx.core()
    try:
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=NAMESPACE)))
    except ApiException as e:
        if e.status != 409:
            raise
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    pod = toolbox_pod(
        name, ["sh", "-c", command], gpus=gpus, labels={"app.kubernetes.io/managed-by": "aifactory-validate"}
    )
    t0 = time.monotonic()
    deadline = t0 + POD_TIMEOUT_S
    while True:  # the namespace's default ServiceAccount appears a moment after the namespace
        try:
            core.create_namespaced_pod(NAMESPACE, pod)
            break
        except ApiException as e:
            if time.monotonic() > deadline or "serviceaccount" not in str(e.body).lower():
                raise
            time.sleep(0.5)
    try:
        while True:
            p = core.read_namespaced_pod(name, NAMESPACE)
            if p.status.phase in ("Succeeded", "Failed") or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        log = core.read_namespaced_pod_log(name, NAMESPACE) if p.status.phase != "Pending" else ""
        return p, log, time.monotonic() - t0
    finally:
        core.delete_namespaced_pod(name, NAMESPACE, grace_period_seconds=0)


def _why(pod: Any) -> str:
    return (
        "; ".join(f"{c.type}: {c.message}" for c in pod.status.conditions or [] if c.message) or "no reason"
    )


@check("cluster.k8s_gpu_pod")
def check_k8s_pod(ctx: Context, measure) -> None:
    _jobs(ctx)
    nodes = [m for m in ctx.site.in_pool("kubernetes") if m.gpu_count]
    if not nodes or ctx.site.kubernetes is None:
        pytest.skip("no GPU machine in the kubernetes pool")
    # The device plugin hands the container exactly the GPUs it was allocated.
    count = "ls /dev | grep -cE '^nvidia[0-9]+$'; echo $NVIDIA_VISIBLE_DEVICES"
    p, log, took = _run_pod(ctx, "gpu-check", count, gpus=1)
    seen = log.split()
    count, visible = [*seen, "?", "?"][:2]
    measure(
        f"{p.spec.node_name or 'unscheduled'} {p.status.phase} in {took:.1f}s: "
        f"{count} GPU device(s), NVIDIA_VISIBLE_DEVICES={visible}"
    )
    assert p.status.phase == "Succeeded", f"1-GPU pod {p.status.phase} after {took:.0f}s: {_why(p)}"
    assert p.spec.node_name in {m.name for m in nodes}, f"placed on {p.spec.node_name}, not a pool GPU node"
    assert count == "1" and len(seen) == 2, (
        f"the 1-GPU pod saw {count} GPU devices (NVIDIA_VISIBLE_DEVICES={visible}), not 1"
    )


@check("cluster.k8s_dns")
def check_k8s_dns(ctx: Context, measure) -> None:
    """A pod resolves the API server's Service by name through the cluster DNS (CoreDNS, infra/dns.py)."""
    _jobs(ctx)
    if ctx.site.kubernetes is None or not ctx.site.in_pool("kubernetes"):
        pytest.skip("no kubernetes-pool machine")
    import ipaddress

    want = str(ipaddress.ip_network(ctx.site.kubernetes.service_cidr)[1])  # the `kubernetes` Service
    fqdn = "kubernetes.default.svc.cluster.local"
    p, log, took = _run_pod(ctx, "dns-check", f"nslookup {fqdn}")
    # busybox names the server as "Address: 10.96.0.10:53", each answer as "Address: 10.96.0.1"
    answers = [ln.split()[-1] for ln in log.splitlines() if ln.startswith("Address") and ":53" not in ln]
    measure(f"{fqdn} -> {', '.join(answers) or 'nothing'} in {took:.1f}s on {p.spec.node_name}", want)
    assert p.status.phase == "Succeeded", (
        f"nslookup {fqdn}: pod {p.status.phase}: {_why(p)}; {log.strip()[:200]}"
    )
    assert want in answers, f"{fqdn} resolved to {answers or 'nothing'}, not {want}: {log.strip()[:200]}"


def _tenant_crd(ctx: Context) -> Any:
    if ctx.site.kubernetes is None:
        pytest.skip("the site has no Kubernetes")
    from kubernetes import client

    def find() -> Any:
        crds = client.ApiextensionsV1Api(ctx.kube_api()).list_custom_resource_definition(_request_timeout=15)
        return next((c for c in crds.items if c.spec.names.kind == TENANT_KIND), None)

    crd = ctx.cached("tenant_crd", find)
    if crd is None:
        pytest.skip("no Tenant custom resource definition: the tenant operator is not deployed")
    return crd


def _local_operator() -> bool:
    """`aifactory operator run` on this machine: a kopf process serving operators.tenants.handlers."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            words = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if b"kopf" in b" ".join(words) and OPERATOR_MODULE.encode() in words:
            return True
    return False


@check("cluster.tenant_operator")
def check_tenant_operator(ctx: Context, measure) -> None:
    _tenant_crd(ctx)
    from kubernetes import client

    where = []
    deployments = client.AppsV1Api(ctx.kube_api()).list_deployment_for_all_namespaces(
        label_selector=OPERATOR_DEPLOYMENT_LABEL, _request_timeout=15
    )
    for d in deployments.items:
        if d.status and (d.status.available_replicas or 0) > 0:
            meta = d.metadata
            where.append(f"deployment {getattr(meta, 'namespace', '?')}/{getattr(meta, 'name', '?')}")
    if _local_operator():
        where.append("aifactory operator run on this machine")
    measure(", ".join(where) or "not running")
    assert where, (
        f"tenant operator not running: no kopf process for {OPERATOR_MODULE} here, no available Deployment "
        f"{OPERATOR_DEPLOYMENT_LABEL}"
    )


@check("cluster.tenants")
def check_tenants(ctx: Context, measure) -> None:
    crd = _tenant_crd(ctx)
    from kubernetes import client

    version = next(v.name for v in crd.spec.versions if v.served)
    listed: Any = client.CustomObjectsApi(ctx.kube_api()).list_cluster_custom_object(
        crd.spec.group, version, crd.spec.names.plural, _request_timeout=15
    )
    tenants: list[dict] = listed["items"]

    def problem(t: dict) -> str | None:
        status = t.get("status") or {}
        ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)
        if ready is None:
            return "no Ready condition (never reconciled)"
        if ready.get("status") != "True":
            return f"{ready.get('reason')}: {ready.get('message')}"
        if status.get("observedGeneration", t["metadata"].get("generation")) != t["metadata"].get(
            "generation"
        ):
            return "Ready for an older spec (the operator has not reconciled the latest change)"
        return None

    bad = {t["metadata"]["name"]: why for t in tenants if (why := problem(t))}
    measure(f"{len(tenants) - len(bad)}/{len(tenants)} Ready")
    assert not bad, "Tenants not Ready: " + "; ".join(f"{n}: {why}" for n, why in sorted(bad.items()))
