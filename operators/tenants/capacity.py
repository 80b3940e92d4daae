"""Site GPU capacity per model, and over-commit of the tenants' quotas against it.

Both schedulers share one fleet, so capacity is every GPU machine of the site. Policy:
- `warn`: every tenant with quota on an over-committed model gets Overcommitted=True and an event;
  quotas are applied anyway.
- `reject`: tenants are admitted oldest first (creation time, then name); a tenant whose quota
  does not fit in what older tenants left is not applied (Ready=False, reason Overcommitted),
  the others keep working.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from aifactory.site.model import Site

POLICIES = ("warn", "reject")


def site_capacity(site: Site) -> dict[str, int]:
    cap: dict[str, int] = {}
    for m in site.machines:
        if m.gpu_model and m.gpu_count:
            cap[m.gpu_model] = cap.get(m.gpu_model, 0) + m.gpu_count
    return cap


def format_capacity(cap: dict[str, int]) -> str:
    """The inverse of parse_capacity: what an operator without the site file is given."""
    return ",".join(f"{model}={count}" for model, count in sorted(cap.items()))


def parse_capacity(text: str) -> dict[str, int]:
    """`h100=16,a100=8` (the operator's AIFACTORY_GPU_CAPACITY when it runs without a site file)."""
    cap: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        model, sep, count = part.partition("=")
        if not sep or not count.strip().isdigit():
            raise ValueError(f"GPU capacity: {part!r} is not MODEL=COUNT")
        cap[model.strip()] = int(count)
    return cap


@dataclass(frozen=True)
class TenantQuota:
    name: str
    created: str  # creationTimestamp; orders admission under `reject`
    quota: dict[str, int]


@dataclass(frozen=True)
class Verdict:
    overcommitted: dict[str, tuple[int, int]]  # model -> (sum of quotas, capacity), models this tenant uses
    admitted: bool  # under `reject`: whether this tenant's quota fits

    def message(self) -> str:
        if not self.overcommitted:
            return "quotas fit the site's capacity"
        return "; ".join(
            f"{m}: tenants' quotas sum to {total}, site has {cap}"
            for m, (total, cap) in sorted(self.overcommitted.items())
        )


class Ledger:
    """Every tenant's GPU quota, and each tenant's verdict against the site's capacity.

    Every reconcile asks for its tenant's verdict. Assessing all tenants each time made a burst
    quadratic (200 new tenants: 12% of the operator's CPU), so the per-model totals are kept as
    tenants come, change and go. Only `reject` needs the walk in creation order, and only while
    something is over-committed; it is redone after a change. Under `warn` every tenant is admitted."""

    def __init__(self, capacity: dict[str, int], policy: str):
        self.capacity, self.policy = dict(capacity), policy
        self._tenants: dict[str, TenantQuota] = {}
        self._totals: dict[str, int] = {}
        self._admitted: dict[str, bool] | None = None
        # Changed and read from the event loop, the deletion handler's threads and the metrics server.
        self._lock = threading.RLock()

    def __len__(self) -> int:
        return len(self._tenants)

    def put(self, t: TenantQuota) -> None:
        with self._lock:
            self._put(t)

    def add(self, t: TenantQuota) -> None:
        """Put `t` unless its tenant is known: a reconcile's view is newer than a listing's."""
        with self._lock:
            if t.name not in self._tenants:
                self._put(t)

    def names(self) -> set[str]:
        with self._lock:
            return set(self._tenants)

    def drop(self, name: str) -> None:
        with self._lock:
            self._count(self._tenants.pop(name, None), -1)

    def _put(self, t: TenantQuota) -> None:
        old = self._tenants.get(t.name)
        if old != t:
            self._count(old, -1)
            self._tenants[t.name] = t
            self._count(t, 1)

    def _count(self, t: TenantQuota | None, sign: int) -> None:
        for model, n in t.quota.items() if t else ():
            self._totals[model] = self._totals.get(model, 0) + sign * n
        self._admitted = None

    def over(self) -> dict[str, tuple[int, int]]:
        """Models whose quotas sum to more than the site has: model -> (sum, capacity)."""
        with self._lock:
            totals = list(self._totals.items())
        return {m: (n, self.capacity.get(m, 0)) for m, n in totals if n > self.capacity.get(m, 0)}

    def verdict(self, name: str) -> Verdict:
        with self._lock:
            return self._verdict(name)

    def _verdict(self, name: str) -> Verdict:
        over = self.over()
        t = self._tenants.get(name)
        mine = {m: over[m] for m, n in (t.quota if t else {}).items() if m in over and n > 0}
        # Within capacity, every tenant fits in what older ones left.
        if self.policy != "reject" or not over:
            return Verdict(mine, True)
        if self._admitted is None:
            left, self._admitted = dict(self.capacity), {}
            for tq in sorted(self._tenants.values(), key=lambda tq: (tq.created, tq.name)):
                fits = all(n <= left.get(m, 0) for m, n in tq.quota.items())
                if fits:
                    for m, n in tq.quota.items():
                        left[m] = left.get(m, 0) - n
                self._admitted[tq.name] = fits
        return Verdict(mine, self._admitted.get(name, True))

    def overcommitted_tenants(self) -> int:
        """Tenants with quota on an over-committed model (a metric, computed when scraped)."""
        over = self.over()
        with self._lock:
            tenants = list(self._tenants.values())
        return sum(1 for t in tenants if any(m in over and n > 0 for m, n in t.quota.items())) if over else 0
