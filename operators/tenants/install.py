"""Putting the Tenant CRD into a cluster and starting the operator locally (`aifactory operator`)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from kubernetes import client as k8s_client
from kubernetes import config as k8s_config

from operators.tenants import config, crd
from operators.tenants import kubernetes_side as kside
from operators.tenants.spec import GROUP, KIND, PEERING, PEERING_PRIORITY_LOCAL, VERSION


def kube(kubeconfig: Path) -> kside.Kube:
    conf = k8s_client.Configuration()
    k8s_config.load_kube_config(config_file=str(kubeconfig), client_configuration=conf)
    # A connection per thread of the operator's Kubernetes pool: callers that write with that many
    # threads (the bench) otherwise open and discard a TLS connection per request over the default.
    conf.connection_pool_maxsize = config.KUBE_CONCURRENCY
    return kside.Kube(k8s_client.ApiClient(conf))


def install_crd(kubeconfig: Path, models: list[str], timeout: float = 60) -> None:
    """Server-side apply the CRD, its finalizer policy and the operators' peering, and wait until the
    API server serves them."""
    k = kube(kubeconfig)
    peering_crd, peering = crd.peering()
    k.apply(peering_crd)
    k.apply(crd.strict_member_role())
    obj = crd.crd(models)
    k.apply(obj)
    try:
        for policy in crd.finalizer_policy():
            k.apply(policy)
    except kside.ApiError as e:
        if e.status != 404:
            raise
        print("Tenant CRD: no MutatingAdmissionPolicy v1 (Kubernetes < 1.36); kopf adds the finalizer itself")
    # Established is not enough: admission (the finalizer policy) learns the new kind a little later
    # and answers 503 meanwhile. A dry-run create goes through all of it and writes nothing.
    probe = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {"name": "install-probe"},
        "spec": {"displayName": "install probe", "gpuQuota": {}},
    }
    deadline = time.monotonic() + timeout
    while True:
        try:
            try:
                k.request("POST", kside.path(f"{GROUP}/{VERSION}", KIND), probe, query={"dryRun": "All"})
            except kside.ApiError as e:
                if e.status != 409:  # 409: a tenant named like the probe exists, so the kind is served
                    raise
            k.apply(peering)  # its CRD was applied first: served by now, or a 404 and another round
            return
        except kside.ApiError as e:
            if e.status not in (404, 503):
                raise
            if time.monotonic() > deadline:
                raise TimeoutError(f"CRD {obj['metadata']['name']} not usable after {timeout}s: {e}") from e
        time.sleep(0.5)


def kopf_command(json_logs: bool = True, priority: int = PEERING_PRIORITY_LOCAL) -> list[str]:
    """The operator on this machine: it joins the operators' peering above the in-cluster Deployment,
    which pauses while this one runs."""
    cmd = [sys.executable, "-m", "kopf", "run", "--all-namespaces", f"--peering={PEERING}"]
    cmd.append(f"--priority={priority}")
    if json_logs:
        cmd.append("--log-format=json")
    return [*cmd, "-m", "operators.tenants.handlers"]


def operator_env(
    site_file: Path,
    kubeconfig: Path,
    policy: str = "warn",
    drift_interval: float = 60,
    metrics_port: int = 9108,
) -> dict[str, str]:
    from aifactory import paths

    env = dict(os.environ)
    env.update(
        KUBECONFIG=str(kubeconfig),
        AIFACTORY_SITE=str(site_file),
        AIFACTORY_OVERCOMMIT_POLICY=policy,
        AIFACTORY_DRIFT_INTERVAL=str(drift_interval),
        AIFACTORY_METRICS_PORT=str(metrics_port),
        PYTHONPATH=str(paths.REPO) + os.pathsep + env.get("PYTHONPATH", ""),
    )
    return env
