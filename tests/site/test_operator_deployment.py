"""The tenant operator as every site runs it: a Deployment from the site registry (Pulumi), reaching
Slurm on the head with its own key from inside a pod.

Runs after test_operator.py, whose operator on this machine joins the same kopf peering with a higher
priority: here none runs, so the Deployment is the one reconciling.
"""

from __future__ import annotations

import subprocess
import time
import uuid

import pytest
from kubernetes import client, config

from aifactory import images, paths, toolchain
from aifactory.site.model import Site
from infra.tenant_operator import NAME, NAMESPACE
from operators.tenants import install
from operators.tenants.spec import FINALIZER, GROUP, PEERING_LIFETIME_S, PLURAL, VERSION
from sandbox import ssh
from tests.site.conftest import wait_until

pytestmark = pytest.mark.site


@pytest.fixture(scope="module")
def api(configured_site: Site):
    kubeconfig = paths.site_state_dir(configured_site.name) / "kubeconfig"
    c = config.new_client_from_config(config_file=str(kubeconfig))
    yield c
    c.close()


def operator_pod(api) -> client.V1Pod:
    pods = (
        client.CoreV1Api(api)
        .list_namespaced_pod(NAMESPACE, label_selector=f"app.kubernetes.io/name={NAME}")
        .items
    )
    running = [p for p in pods if p.status.phase == "Running" and not p.metadata.deletion_timestamp]
    assert len(running) == 1, f"operator pods: {[(p.metadata.name, p.status.phase) for p in pods]}"
    return running[0]


def test_operator_runs_from_the_site_registry_as_its_own_user(configured_site: Site, api):
    deployment = wait_until(
        lambda: (
            (d := client.AppsV1Api(api).read_namespaced_deployment(NAME, NAMESPACE)).status.available_replicas
            and d
        ),
        120,
        "the operator Deployment available",
    )
    assert deployment.spec.strategy.type == "Recreate" and deployment.spec.replicas == 1
    pod = operator_pod(api)
    (status,) = pod.status.container_statuses
    assert pod.spec.containers[0].image == toolchain.image_ref(images.OPERATOR_REF)
    # what the node pulled is exactly the bundle's image
    digest = toolchain.image_ref(images.OPERATOR_REF).partition("@")[2]
    assert digest and status.image_id.endswith(digest), status.image_id
    assert pod.spec.node_name in {m.name for m in configured_site.in_pool("kubernetes")}
    assert pod.spec.security_context.run_as_user == images.OPERATOR_UID
    assert status.restart_count == 0, client.CoreV1Api(api).read_namespaced_pod_log(
        pod.metadata.name, NAMESPACE
    )


def test_a_tenant_created_now_is_ready_on_both_schedulers(configured_site: Site, api):
    """Nothing on this machine reconciles: the Tenant becomes Ready through the pod, and its Slurm
    account appears on the head (sacctmgr through the operator's own ssh key, from the pod network)."""
    name = f"incluster-{uuid.uuid4().hex[:6]}"
    head = configured_site.with_role("head")[0].name
    custom = client.CustomObjectsApi(api)
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Tenant",
        "metadata": {"name": name},
        "spec": {"displayName": "in-cluster operator test", "gpuQuota": {"h100": 1}},
    }
    custom.create_cluster_custom_object(GROUP, VERSION, PLURAL, body)
    try:

        def ready():
            t = custom.get_cluster_custom_object(GROUP, VERSION, PLURAL, name)
            conds = {c["type"]: c for c in (t.get("status") or {}).get("conditions") or []}
            return conds.get("Ready", {}).get("status") == "True" and t

        tenant = wait_until(ready, 120, f"tenant {name} Ready")
        assert FINALIZER in tenant["metadata"]["finalizers"]
        account = ssh.run(configured_site, head, f"sacctmgr -nP show account {name} format=account")
        assert account.stdout.strip() == name, account.stderr
        quota = client.CoreV1Api(api).list_namespaced_resource_quota(name).items
        assert quota, f"no ResourceQuota in namespace {name}"
    finally:
        custom.delete_cluster_custom_object(GROUP, VERSION, PLURAL, name)

    def gone():
        try:
            custom.get_cluster_custom_object(GROUP, VERSION, PLURAL, name)
            return False
        except client.ApiException as e:
            return e.status == 404

    wait_until(gone, 120, f"tenant {name} deleted")
    account = ssh.run(configured_site, head, f"sacctmgr -nP show account {name} format=account")
    assert account.stdout.strip() == "", f"Slurm account {name} left behind"


def test_an_operator_started_here_takes_over_and_hands_back(configured_site: Site, api, tmp_path):
    """kopf peering: `aifactory operator run` (the developer's mode) outranks the Deployment, which
    pauses while it runs and resumes when it exits; never two operators reconciling at once."""
    core = client.CoreV1Api(api)
    pod = operator_pod(api).metadata.name

    def pod_log() -> str:
        return core.read_namespaced_pod_log(pod, NAMESPACE, since_seconds=300)

    kubeconfig = paths.site_state_dir(configured_site.name) / "kubeconfig"
    env = install.operator_env(configured_site.path, kubeconfig, metrics_port=0)
    log = tmp_path / "operator.log"
    with log.open("wb") as out:
        local = subprocess.Popen(install.kopf_command(), env=env, stdout=out, stderr=out)
    try:
        wait_until(lambda: "Pausing operations in favour of" in pod_log(), 60, "the Deployment to pause")
        time.sleep(PEERING_LIFETIME_S)  # a keep-alive round later, it still waits
        assert "Resuming operations" not in pod_log().rpartition("Pausing operations in favour of")[2]
    finally:
        local.terminate()
        local.wait(60)
    wait_until(
        lambda: "Resuming operations" in pod_log().rpartition("Pausing operations in favour of")[2],
        60,
        "the Deployment to resume once the operator here exited",
    )
