"""Putting the Tenant CRD into a cluster and starting the operator locally (`aifactory operator`)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from kubernetes import client as k8s_client
from kubernetes import config as k8s_config

from operators.tenants import crd
from operators.tenants import kubernetes_side as kside


def kube(kubeconfig: Path) -> kside.Kube:
    conf = k8s_client.Configuration()
    k8s_config.load_kube_config(config_file=str(kubeconfig), client_configuration=conf)
    return kside.Kube(k8s_client.ApiClient(conf))


def install_crd(kubeconfig: Path, models: list[str], timeout: float = 60) -> None:
    """Server-side apply the CRD and wait until the API server serves it."""
    k = kube(kubeconfig)
    obj = crd.crd(models)
    k.apply(obj)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        live = k.get(kside.object_path(obj)) or {}
        conds = {c["type"]: c["status"] for c in (live.get("status") or {}).get("conditions") or []}
        if conds.get("Established") == "True":
            return
        time.sleep(0.5)
    raise TimeoutError(f"CRD {obj['metadata']['name']} not Established after {timeout}s")


def kopf_command(json_logs: bool = True) -> list[str]:
    cmd = [sys.executable, "-m", "kopf", "run", "--standalone", "--all-namespaces"]
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
