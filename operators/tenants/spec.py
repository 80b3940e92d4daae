"""The Tenant API as Python: names, the parsed spec, and status conditions.

The CRD (crd.py) validates at the API server; parsing here trusts it and only fills defaults, so
the handlers see one typed value instead of nested dicts.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

GROUP = "aifactory.io"
VERSION = "v1alpha1"
PLURAL = "tenants"
KIND = "Tenant"

# Every object the operator makes carries these, so it can find what it owns (and nothing else).
TENANT_LABEL = f"{GROUP}/tenant"
MANAGED_BY = {"app.kubernetes.io/managed-by": "aifactory-tenant-operator"}
FIELD_MANAGER = "aifactory-tenant-operator"
# Set to "true" to delete a tenant whose GPUs are still in use (jobs are cancelled, pods go with
# their namespaces).
FORCE_DELETE_ANNOTATION = f"{GROUP}/force-delete"
# Holds a tenant until the operator has removed what it owns (kopf's finalizer, named by us).
FINALIZER = f"tenants.{GROUP}/cleanup"

# One operator reconciles at a time: every instance joins this kopf peering (a ClusterKopfPeering,
# crd.peering()) and the highest priority runs while the others pause. The in-cluster Deployment
# runs lowest; `aifactory operator run` (a developer, a test, the bench) takes over while it runs.
PEERING = "aifactory-tenant-operator"
PEERING_PRIORITY_IN_CLUSTER = 0
PEERING_PRIORITY_LOCAL = 100
PEERING_LIFETIME_S = 15

# What a strict tenant's members are bound to in its namespaces (crd.strict_member_role): `edit`
# without writing NetworkPolicies (ResourceQuotas and LimitRanges are not in `edit` either).
STRICT_MEMBER_ROLE = "aifactory-tenant-member-strict"

# Kueue: every tenant's ClusterQueue is in this cohort unless its spec names another.
SITE_COHORT = "aifactory"

# Slurm side naming: the account is the tenant name; its per-user caps live in this QOS.
SLURM_ORGANIZATION = "aifactory-tenant"


def qos_name(tenant: str) -> str:
    return f"tenant-{tenant}"


@dataclass(frozen=True)
class Budget:
    gpu_hours: float
    period: str  # Monthly, Quarterly, Yearly or Total


@dataclass(frozen=True)
class TenantSpec:
    name: str
    display_name: str
    users: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    slurm_users: tuple[str, ...] = ()
    gpu_quota: dict[str, int] = field(default_factory=dict)  # GPU model -> count
    gpu_borrowing: dict[str, int] = field(default_factory=dict)  # beyond the quota, Kubernetes only
    cohort: str = SITE_COHORT  # the Kueue cohort it lends to and borrows from
    budget: Budget | None = None
    fairshare: int = 1
    max_gpus_per_user: int | None = None
    max_jobs_per_user: int | None = None
    namespaces: tuple[str, ...] = ()
    network_isolation: bool = True
    namespace_deletion_policy: str = "Retain"  # or "Delete": what a namespace removed from the spec gets
    # "strict" (sensitive data, e.g. health): default-deny ingress and egress but DNS and the tenant's
    # own namespaces, PodSecurity restricted, members who cannot edit policies, quotas or limits
    isolation: str = "standard"

    @property
    def strict(self) -> bool:
        return self.isolation == "strict"

    @property
    def ceiling(self) -> dict[str, int]:
        """Per model, the most the tenant may hold: its quota, and on Kubernetes what it may borrow."""
        return {m: q + self.gpu_borrowing.get(m, 0) for m, q in self.gpu_quota.items()}

    @property
    def total_gpus(self) -> int:
        return sum(self.gpu_quota.values())

    def quota_summary(self) -> str:
        return ",".join(f"{m}={n}" for m, n in sorted(self.gpu_quota.items())) or "none"


def parse(name: str, spec: dict[str, Any]) -> TenantSpec:
    members = spec.get("members") or {}
    slurm = spec.get("slurm") or {}
    budget = spec.get("gpuHourBudget")
    return TenantSpec(
        name=name,
        display_name=spec.get("displayName", name),
        users=tuple(members.get("users") or ()),
        groups=tuple(members.get("groups") or ()),
        slurm_users=tuple(members.get("slurmUsers") or ()),
        gpu_quota={str(k): int(v) for k, v in (spec.get("gpuQuota") or {}).items()},
        gpu_borrowing={str(k): int(v) for k, v in (spec.get("gpuBorrowingLimit") or {}).items()},
        cohort=str(spec.get("cohort") or SITE_COHORT),
        budget=Budget(float(budget["gpuHours"]), budget.get("period", "Monthly")) if budget else None,
        fairshare=int(slurm.get("fairshare", 1)),
        max_gpus_per_user=slurm.get("maxGPUsPerUser"),
        max_jobs_per_user=slurm.get("maxJobsPerUser"),
        # A tenant without namespaces listed gets one named after it.
        namespaces=tuple(spec.get("namespaces") or (name,)),
        network_isolation=bool(spec.get("networkIsolation", True)),
        namespace_deletion_policy=str(spec.get("namespaceDeletionPolicy", "Retain")),
        isolation=str(spec.get("isolation", "standard")),
    )


# Conditions, Kueue/KEP-1623 style: type, status "True"/"False", reason (CamelCase), message.
READY, K8S_SYNCED, SLURM_SYNCED, OVERCOMMITTED = "Ready", "KubernetesSynced", "SlurmSynced", "Overcommitted"
DELETION_BLOCKED = "DeletionBlocked"
BUDGET_EXHAUSTED = "BudgetExhausted"


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(
    conditions: list[dict[str, Any]],
    ctype: str,
    status: bool,
    reason: str,
    message: str,
    generation: int | None,
) -> list[dict[str, Any]]:
    """A new list with `ctype` set; lastTransitionTime only moves when the status flips."""
    value = "True" if status else "False"
    out = [dict(c) for c in conditions if c.get("type") != ctype]
    old = next((c for c in conditions if c.get("type") == ctype), None)
    since = old["lastTransitionTime"] if old and old.get("status") == value else now()
    new: dict[str, Any] = {"type": ctype, "status": value, "reason": reason, "message": message[:1000]}
    new["lastTransitionTime"] = since
    if generation is not None:
        new["observedGeneration"] = generation
    out.append(new)
    order = [READY, K8S_SYNCED, SLURM_SYNCED, OVERCOMMITTED, BUDGET_EXHAUSTED, DELETION_BLOCKED]
    out.sort(key=lambda c: order.index(c["type"]) if c["type"] in order else len(order))
    return out


def replacing(old: Mapping[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
    """`new` as a merge patch over `old` that leaves nothing of `old` behind: keys it lacks are
    set to null, in nested objects too (kopf writes status as a merge patch)."""
    out: dict[str, Any] = {k: None for k in old or {}}
    for k, v in new.items():
        prev = (old or {}).get(k)
        out[k] = replacing(prev, v) if isinstance(v, dict) and isinstance(prev, Mapping) else v
    return out


def condition(conditions: list[dict[str, Any]] | None, ctype: str) -> dict[str, Any] | None:
    return next((c for c in conditions or [] if c.get("type") == ctype), None)
