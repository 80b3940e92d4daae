"""GPU-hour budgets: a ledger of GPU-seconds per tenant, GPU model, scheduler and period that
never decays.

- **Slurm** from its accounting: every job of the tenant's account that ran in the period, its
  allocated GPUs times the part of its run inside the period (a job spanning the boundary is split).
  Recomputed from `sacct` every round: slurmdbd keeps it, so neither an operator nor a slurmctld
  restart changes it, and nothing is counted twice.
- **Kubernetes** from the tenant's pods: GPUs times running time inside the period. Pods are
  deleted, so the ledger keeps (in the Tenant's status) the seconds of each pod it has seen, by uid,
  and folds them into a closed sum once the pod is gone: each pod counts once, and a pod deleted
  while it ran counts up to the last round that saw it (at most one drift interval short).

A budget's period starts on the first of its month (Monthly), quarter (Quarterly) or year (Yearly),
in UTC; a Total budget never restarts (its period starts when the tenant was created). At a new
period the ledger starts again from zero, exactly once: the period's name is part of the ledger,
and the closed period is kept in `status.budgetHistory` for reports.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

HISTORY_PERIODS = 13  # closed periods kept in the status: a year back, and the one before
# How far ahead of this machine's clock the ledger runs, in seconds: tests of a period's end set it
# (a time-scaled test clock); 0 everywhere else.
CLOCK_OFFSET_ENV = "AIFACTORY_CLOCK_OFFSET_S"


def clock() -> float:
    return time.time() + float(os.environ.get(CLOCK_OFFSET_ENV, "0"))


@dataclass(frozen=True)
class Run:
    """GPUs held from `start` to `end` (None: still running), epoch seconds."""

    model: str
    gpus: int
    start: float
    end: float | None
    key: str = ""  # a pod's uid (Kubernetes runs are remembered by it)

    def seconds(self, since: float, now: float) -> float:
        """GPU-seconds inside [since, now]."""
        end = now if self.end is None else min(self.end, now)
        return self.gpus * max(0.0, end - max(self.start, since))


def period(kind: str, at: dt.datetime, created: dt.datetime) -> tuple[str, dt.datetime]:
    """The budget period containing `at`: its name and its start (UTC)."""
    if kind == "Total":
        return "total", created
    if kind == "Yearly":
        return f"{at.year:04d}", dt.datetime(at.year, 1, 1, tzinfo=dt.UTC)
    if kind == "Quarterly":
        q = (at.month - 1) // 3
        return f"{at.year:04d}-Q{q + 1}", dt.datetime(at.year, 3 * q + 1, 1, tzinfo=dt.UTC)
    return f"{at.year:04d}-{at.month:02d}", dt.datetime(at.year, at.month, 1, tzinfo=dt.UTC)


def closing(history: Mapping[str, Any], name: str, figures: Any) -> dict[str, Any]:
    """A status history (closed periods by name) with `figures` kept under `name`, as a merge patch:
    the oldest beyond HISTORY_PERIODS set to None (removed)."""
    out = {**history, name: figures}
    for old in sorted(out)[:-HISTORY_PERIODS]:
        out[old] = None
    return out


def _add(into: dict[str, float], key: str, seconds: float) -> None:
    if seconds > 0:
        into[key] = into.get(key, 0.0) + seconds


def _hours_of(run: Run, since: float, now: float, into: dict[str, float]) -> None:
    """Add the run's GPU-seconds inside [since, now] to the hours they fall in (key: the hour's
    start, epoch seconds)."""
    t, end = max(run.start, since), now if run.end is None else min(run.end, now)
    while t < end:
        hour = t - t % 3600
        step = min(hour + 3600, end)
        _add(into, str(int(hour)), run.gpus * (step - t))
        t = step


def _days(hourly: Mapping[str, float]) -> dict[str, float]:
    out: dict[str, float] = {}
    for hour, seconds in hourly.items():
        day = dt.datetime.fromtimestamp(float(hour), dt.UTC).strftime("%Y-%m-%d")
        _add(out, day, seconds / 3600)
    return {d: round(h, 4) for d, h in sorted(out.items())}


@dataclass
class UsageLedger:
    """One tenant's GPU-seconds in one period. Per model for the totals, per hour (all models) for
    plots; Slurm's recomputed each round, Kubernetes' kept per pod until it is gone, then closed."""

    period: str
    since: float  # the period's start, epoch seconds
    slurm: dict[str, float] = field(default_factory=dict)  # model -> GPU-seconds
    slurm_hourly: dict[str, float] = field(default_factory=dict)  # hour -> GPU-seconds
    kubernetes_closed: dict[str, float] = field(default_factory=dict)  # pods that are gone
    kubernetes_closed_hourly: dict[str, float] = field(default_factory=dict)
    pods: dict[str, Run] = field(default_factory=dict)  # uid -> its run, up to its last sighting
    peak: int = 0  # the most GPUs held at once in a round of this period, both sides together
    overshoots: int = 0  # times the tenant was found beyond its entitlement

    def kubernetes(self) -> dict[str, float]:
        out = dict(self.kubernetes_closed)
        for run in self.pods.values():
            _add(out, run.model, run.seconds(self.since, run.end or self.since))
        return out

    def kubernetes_hourly(self) -> dict[str, float]:
        out = dict(self.kubernetes_closed_hourly)
        for run in self.pods.values():
            _hours_of(run, self.since, run.end or self.since, out)
        return out

    def hours(self) -> float:
        return (sum(self.slurm.values()) + sum(self.kubernetes().values())) / 3600

    def summary(self) -> dict[str, Any]:
        """GPU-hours per scheduler and model, the peak and over-shoots; a closed period keeps this
        (status.budgetHistory) with GPU-hours per day."""
        return {
            "slurm": {m: round(s / 3600, 4) for m, s in sorted(self.slurm.items())},
            "kubernetes": {m: round(s / 3600, 4) for m, s in sorted(self.kubernetes().items())},
            "peakGPUs": self.peak,
            "overshoots": self.overshoots,
        }

    def closed_summary(self) -> dict[str, Any]:
        daily = {"slurm": _days(self.slurm_hourly), "kubernetes": _days(self.kubernetes_hourly())}
        return {**self.summary(), "since": self.since, "daily": daily}

    def to_status(self) -> dict[str, Any]:
        def rounded(d: Mapping[str, float]) -> dict[str, float]:
            return {k: round(v, 1) for k, v in d.items()}

        return {
            "period": self.period,
            "since": self.since,
            "slurmSeconds": rounded(self.slurm),
            "slurmHourly": rounded(self.slurm_hourly),
            "kubernetesClosedSeconds": rounded(self.kubernetes_closed),
            "kubernetesClosedHourly": rounded(self.kubernetes_closed_hourly),
            "pods": {uid: [r.model, r.gpus, r.start, r.end] for uid, r in self.pods.items()},
            "peakGPUs": self.peak,
            "overshoots": self.overshoots,
        }

    @classmethod
    def from_status(cls, data: Mapping[str, Any] | None) -> UsageLedger | None:
        if not data or "period" not in data:
            return None

        def floats(key: str) -> dict[str, float]:
            return {k: float(v) for k, v in (data.get(key) or {}).items() if v is not None}

        pods = {
            uid: Run(str(v[0]), int(v[1]), float(v[2]), float(v[3]), uid)
            for uid, v in (data.get("pods") or {}).items()
            if v
        }
        return cls(
            str(data["period"]),
            float(data["since"]),
            floats("slurmSeconds"),
            floats("slurmHourly"),
            floats("kubernetesClosedSeconds"),
            floats("kubernetesClosedHourly"),
            pods,
            int(data.get("peakGPUs") or 0),
            int(data.get("overshoots") or 0),
        )


def advance(
    before: UsageLedger | None,
    name: str,
    since: float,
    now: float,
    jobs: Iterable[Run],
    pods: Iterable[Run],
    held_now: int,
) -> tuple[UsageLedger, UsageLedger | None]:
    """This round's ledger for period `name`, and the period just closed (None when still the same).

    `jobs` are the account's Slurm jobs that ran in the period (recomputed whole each round); `pods`
    the tenant's GPU pods visible now; `held_now` the GPUs it holds now, for the peak."""
    same = before is not None and before.period == name
    old = before if same and before else UsageLedger(name, since)
    closed, closed_hourly = dict(old.kubernetes_closed), dict(old.kubernetes_closed_hourly)
    # a pod still running is counted up to now, its last sighting
    seen = {
        p.key: Run(p.model, p.gpus, p.start, now if p.end is None else min(p.end, now), p.key) for p in pods
    }
    for uid, run in old.pods.items():
        if uid not in seen:  # gone: counted once, up to its last sighting
            _add(closed, run.model, run.seconds(since, run.end or since))
            _hours_of(run, since, run.end or since, closed_hourly)
    slurm: dict[str, float] = {}
    slurm_hourly: dict[str, float] = {}
    for j in jobs:
        _add(slurm, j.model, j.seconds(since, now))
        _hours_of(j, since, now, slurm_hourly)
    peak = max(held_now, old.peak)
    ledger = UsageLedger(name, since, slurm, slurm_hourly, closed, closed_hourly, seen, peak, old.overshoots)
    return ledger, (None if same else before)


@dataclass(frozen=True)
class BudgetState:
    used_hours: float
    limit_hours: float
    period: str

    @property
    def spent(self) -> bool:
        return self.used_hours >= self.limit_hours

    @property
    def percent(self) -> float:
        return 100.0 * self.used_hours / self.limit_hours if self.limit_hours else 100.0

    def message(self) -> str:
        return (
            f"{self.used_hours:.3f} of {self.limit_hours:g} GPU-hours used in period {self.period} "
            f"({self.percent:.0f}%)"
        )
