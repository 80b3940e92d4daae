"""One GPU entitlement across both schedulers.

A tenant's `gpuQuota` per model is the most it may hold at any moment on Slurm and Kubernetes
together, and its namespaces share it. Each side's limit is the entitlement minus what the rest
holds now:

  Slurm (account GrpTRES)       q_m - K_m             (K_m: the tenant's pods, every namespace)
  namespace i (ResourceQuota)   q_m - S_m - (K_m - k_i,m)   (its own pods keep their room)
  Kueue ClusterQueue            q_m - S_m             (Kueue shares it among the namespaces)

so the tenant can use all of it in either scheduler, or split it. A tenant whose GPU-hour budget is
spent for the period (budget.py) gets 0 on every side: nothing new starts, nothing running stops.

Holdings are observed every drift interval; two admissions on both sides within one interval can
together exceed the entitlement (at most by the entitlement itself: each side saw it free). That
over-shoot is reported (`Holdings.overshoot`) until the work that caused it ends; nothing running
is stopped.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

# GPUs of a pod whose model the operator could not tell (no per-model resource, a node without
# the model label): they count against the tenant's total, not against any one model.
UNKNOWN_MODEL = "gpu"


@dataclass(frozen=True)
class Holdings:
    """GPUs a tenant's running work holds now: Slurm per model, Kubernetes per namespace and model."""

    slurm: Mapping[str, int] = field(default_factory=dict)
    kubernetes: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    spent: bool = False  # the period's GPU-hour budget is used up

    def pods(self, model: str | None = None, without: str | None = None) -> int:
        """GPUs in the tenant's pods, of one model (or all), leaving out one namespace."""
        return sum(
            n
            for ns, per_model in self.kubernetes.items()
            if ns != without
            for m, n in per_model.items()
            if model is None or m == model
        )

    def jobs(self, model: str | None = None) -> int:
        return sum(n for m, n in self.slurm.items() if model is None or m == model)

    def overshoot(self, quota: Mapping[str, int]) -> dict[str, int]:
        """Per model (and "total"), GPUs held beyond the entitlement; empty when within it."""
        over = {m: self.jobs(m) + self.pods(m) - q for m, q in quota.items()}
        over["total"] = self.jobs() + self.pods() - sum(quota.values())
        return {m: n for m, n in over.items() if n > 0}


def slurm_limits(quota: Mapping[str, int], held: Holdings) -> dict[str, int]:
    """The account's GrpTRES: gres/gpu and gres/gpu:<model>, less what the tenant's pods hold."""
    if held.spent:
        return {f"gres/gpu:{m}": 0 for m in quota} | {"gres/gpu": 0}
    limits = {f"gres/gpu:{m}": max(0, q - held.pods(m)) for m, q in quota.items()}
    limits["gres/gpu"] = max(0, sum(quota.values()) - held.pods())
    return limits


def namespace_limits(quota: Mapping[str, int], held: Holdings, namespace: str) -> dict[str, int]:
    """A namespace's share ("" = the total): the entitlement less Slurm's jobs and the other
    namespaces' pods."""
    if held.spent:
        return dict.fromkeys([*quota, ""], 0)
    limits = {m: max(0, q - held.jobs(m) - held.pods(m, without=namespace)) for m, q in quota.items()}
    limits[""] = max(0, sum(quota.values()) - held.jobs() - held.pods(without=namespace))
    return limits


def queue_limits(quota: Mapping[str, int], held: Holdings) -> dict[str, int]:
    """The tenant's ClusterQueue per flavor (model): Kueue shares it among the namespaces itself."""
    return {m: max(0, q - held.jobs(m)) for m, q in quota.items()}
