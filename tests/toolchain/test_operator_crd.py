"""The Tenant CRD on a real kube-apiserver (loopback): schema and CEL rules reject bad tenants with a
message that names the field, and accept good ones."""

from __future__ import annotations

import pytest

from operators.tenants import install
from operators.tenants import kubernetes_side as kside
from operators.tenants.spec import FINALIZER, GROUP, VERSION

pytestmark = pytest.mark.toolchain

TENANTS = f"/apis/{GROUP}/{VERSION}/tenants"


def tenant(name: str = "team-a", **spec) -> dict:
    body = {"displayName": "Team A", "gpuQuota": {"h100": 8}}
    body.update(spec)
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Tenant", "metadata": {"name": name}, "spec": body}


@pytest.fixture(scope="module")
def kube(loopback_control_plane):
    install.install_crd(loopback_control_plane, ["h100", "a100"])
    return install.kube(loopback_control_plane)


def rejected(kube: kside.Kube, obj: dict) -> str:
    with pytest.raises(kside.ApiError) as e:
        kube.request("POST", TENANTS, obj)
    assert e.value.status == 422, e.value
    return str(e.value)


def test_crd_accepts_a_full_tenant_and_fills_defaults(kube):
    obj = tenant(
        members={"users": ["alice@example.org"], "groups": ["team-a"], "slurmUsers": ["alice", "bob_2"]},
        gpuQuota={"h100": 8, "a100": 0},
        gpuHourBudget={"gpuHours": 1000},
        slurm={"fairshare": 10, "maxGPUsPerUser": 4, "maxJobsPerUser": 20},
        namespaces=["team-a", "team-a-dev"],
    )
    created = kube.request("POST", TENANTS, obj)
    assert created["spec"]["networkIsolation"] is True
    assert created["spec"]["gpuHourBudget"]["period"] == "Monthly"
    assert kube.get(f"{TENANTS}/team-a")["spec"]["gpuQuota"] == {"h100": 8, "a100": 0}


@pytest.mark.parametrize(
    ("obj", "field", "words"),
    [
        (tenant(gpuQuota={"h100": -1}), "spec.gpuQuota.h100", "greater than or equal to 0"),
        (tenant(gpuQuota={"h100": 8, "mi300": 2}), "spec.gpuQuota", "unknown GPU model mi300"),
        (
            tenant(members={"slurmUsers": ["Bad User"]}),
            "spec.members.slurmUsers[0]",
            "not a valid Slurm user",
        ),
        (tenant(members={"users": ["bad user!"]}), "spec.members.users[0]", "not a valid Kubernetes user"),
        (tenant(namespaces=["Not_A_Label"]), "spec.namespaces[0]", "not a valid namespace"),
        (tenant(namespaces=["kube-system"]), "spec.namespaces", "system namespaces"),
        (tenant(slurm={"maxGPUsPerUser": 9}), "spec.slurm.maxGPUsPerUser", "cannot exceed"),
        (tenant(slurm={"fairshare": 0}), "spec.slurm.fairshare", "greater than or equal to 1"),
        (
            tenant(gpuHourBudget={"gpuHours": 10, "period": "Weekly"}),
            "spec.gpuHourBudget.period",
            "Unsupported",
        ),
        (
            tenant(gpuBorrowingLimit={"a100": 2}),
            "spec.gpuBorrowingLimit",
            "gpuBorrowingLimit names a100, which is not in gpuQuota",
        ),
        (tenant(cohort="Not A Cohort"), "spec.cohort", "should match"),
        (tenant(name="root"), "metadata.name", "Slurm account"),
        (tenant(name="a.b"), "metadata.name", "Slurm account"),
    ],
)
def test_crd_rejects_a_malformed_tenant_naming_the_field(kube, obj, field, words):
    message = rejected(kube, obj)
    assert field in message, message
    assert words in message, message


def test_crd_requires_quota_and_display_name(kube):
    obj = tenant()
    del obj["spec"]["gpuQuota"]
    del obj["spec"]["displayName"]
    message = rejected(kube, obj)
    assert "spec.gpuQuota: Required value" in message and "spec.displayName: Required value" in message


def test_a_new_tenant_carries_the_operators_finalizer_from_creation(kube):
    """The MutatingAdmissionPolicy adds it in admission, next to any finalizer the author set."""
    obj = tenant("team-fin")
    obj["metadata"]["finalizers"] = ["example.org/keep"]
    created = kube.request("POST", TENANTS, obj)
    assert created["metadata"]["finalizers"] == ["example.org/keep", FINALIZER]
    kube.request(
        "PATCH",
        f"{TENANTS}/team-fin",
        {"metadata": {"finalizers": None}},
        content_type="application/merge-patch+json",
    )
    kube.delete(f"{TENANTS}/team-fin")
