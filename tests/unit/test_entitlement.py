"""One GPU entitlement across Slurm and Kubernetes (operators/tenants/entitlement.py)."""

import pytest

from operators.tenants import kubernetes_side as kside
from operators.tenants import slurm
from operators.tenants.entitlement import Holdings, namespace_limits, queue_limits, slurm_limits
from operators.tenants.spec import parse

pytestmark = pytest.mark.unit

QUOTA = {"h100": 4, "h200": 2}


def test_nothing_held_gives_each_side_the_whole_entitlement():
    assert slurm_limits(QUOTA, Holdings()) == {"gres/gpu:h100": 4, "gres/gpu:h200": 2, "gres/gpu": 6}
    assert namespace_limits(QUOTA, Holdings(), "a") == {"h100": 4, "h200": 2, "": 6}
    assert queue_limits(QUOTA, Holdings()) == QUOTA


def test_each_side_gets_what_the_other_leaves():
    held = Holdings(slurm={"h100": 3}, kubernetes={"a": {"h200": 1}, "b": {"h100": 1}})
    assert slurm_limits(QUOTA, held) == {"gres/gpu:h100": 3, "gres/gpu:h200": 1, "gres/gpu": 4}
    # a namespace keeps room for its own pods; the other namespace's pods and Slurm's jobs count
    assert namespace_limits(QUOTA, held, "a") == {"h100": 0, "h200": 2, "": 2}
    assert namespace_limits(QUOTA, held, "b") == {"h100": 1, "h200": 1, "": 2}
    assert queue_limits(QUOTA, held) == {"h100": 1, "h200": 2}


def test_gpus_of_an_unknown_model_count_against_the_total_only():
    held = Holdings(kubernetes={"a": {"gpu": 2}})
    assert slurm_limits(QUOTA, held) == {"gres/gpu:h100": 4, "gres/gpu:h200": 2, "gres/gpu": 4}


def test_overshoot_is_what_both_sides_hold_beyond_the_entitlement():
    assert Holdings(slurm={"h100": 4}).overshoot(QUOTA) == {}
    held = Holdings(slurm={"h100": 4}, kubernetes={"a": {"h100": 2}})
    assert held.overshoot(QUOTA) == {"h100": 2}
    assert slurm_limits(QUOTA, held)["gres/gpu:h100"] == 2  # never below zero
    assert namespace_limits(QUOTA, held, "b")["h100"] == 0


def test_the_limits_reach_both_schedulers():
    t = parse("team-a", {"gpuQuota": {"h100": 8}, "namespaces": ["a", "b"]})
    held = Holdings(slurm={"h100": 2}, kubernetes={"a": {"h100": 5}})
    assert slurm.desired(t, held).grp_tres == {"gres/gpu:h100": 3, "gres/gpu": 3}
    quotas = {
        o["metadata"]["namespace"]: o["spec"]["hard"]
        for o in kside.desired_objects(t, held=held)
        if o["kind"] == "ResourceQuota"
    }
    assert quotas["a"] == {"requests.nvidia.com/gpu": "6", "requests.nvidia.com/gpu-h100": "6"}
    assert quotas["b"] == {"requests.nvidia.com/gpu": "1", "requests.nvidia.com/gpu-h100": "1"}
    (cq,) = [o for o in kside.desired_objects(t, kueue=True, held=held) if o["kind"] == "ClusterQueue"]
    assert cq["spec"]["resourceGroups"][0]["flavors"][0]["resources"][0]["nominalQuota"] == "6"


class PodsKube:
    """gpus_held's reads: the pods of each namespace and the nodes' labels."""

    def __init__(self, pods):
        self.pods = pods

    def list(self, url_path, selector=None):
        return self.pods.get(url_path.split("/")[4], [])

    def get(self, url_path):
        return {"metadata": {"labels": {"aifactory.io/gpu-model": "h100"}}} if "gpu-05" in url_path else None


def pod(gpus, node=None, phase="Running", resource="nvidia.com/gpu", uid="u", start=None, end=None):
    container = {"name": "c", "resources": {"limits": {resource: str(gpus)}}}
    status = {"phase": phase, "startTime": start}
    if end:
        status["containerStatuses"] = [{"state": {"terminated": {"finishedAt": end}}}]
    return {"metadata": {"uid": uid}, "spec": {"nodeName": node, "containers": [container]}, "status": status}


def test_pods_hold_gpus_of_their_nodes_model_until_they_finish():
    kube = PodsKube(
        {
            "a": [pod(2, "gpu-05"), pod(1, "gpu-05", phase="Succeeded"), pod(1, None, phase="Pending")],
            "b": [pod(3, "gpu-07", resource="nvidia.com/gpu-h200"), pod(1, "gpu-09")],
        }
    )
    assert kside.gpus_held(kube, ["a", "b", "c"]) == {"a": {"h100": 2, "gpu": 1}, "b": {"h200": 3, "gpu": 1}}


def test_pods_run_from_their_start_to_their_last_container_finish():
    kube = PodsKube(
        {
            "a": [
                pod(2, "gpu-05", uid="running", start="2026-12-05T10:00:00Z"),
                pod(
                    1,
                    "gpu-05",
                    "Succeeded",
                    uid="done",
                    start="2026-12-05T10:00:00Z",
                    end="2026-12-05T10:30:00Z",
                ),
                pod(1, None, "Pending", uid="waiting"),
            ]
        }
    )
    runs = {p.run.key: p.run for p in kside.gpu_pods(kube, ["a"]) if p.run}
    assert set(runs) == {"running/c", "done/c"}  # one that never started holds no time
    assert runs["running/c"].end is None and runs["done/c"].end - runs["done/c"].start == 1800
