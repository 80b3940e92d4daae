"""Site GPU capacity per model, and over-commit of the tenants' quotas against it.

Both schedulers share one fleet, so capacity is every GPU machine of the site. Policy:
- `warn`: every tenant with quota on an over-committed model gets Overcommitted=True and an event;
  quotas are applied anyway.
- `reject`: tenants are admitted oldest first (creation time, then name); a tenant whose quota
  does not fit in what older tenants left is not applied (Ready=False, reason Overcommitted),
  the others keep working.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from aifactory.site.model import Site

POLICIES = ("warn", "reject")


def site_capacity(site: Site) -> dict[str, int]:
    cap: dict[str, int] = {}
    for m in site.machines:
        if m.gpu_model and m.gpu_count:
            cap[m.gpu_model] = cap.get(m.gpu_model, 0) + m.gpu_count
    return cap


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


def assess(tenants: Iterable[TenantQuota], capacity: dict[str, int], name: str) -> tuple[Verdict, int]:
    """Tenant `name`'s verdict, and how many tenants are over-committed (every reconcile asks, with
    all tenants: no verdict is built for the others)."""
    ordered = sorted(tenants, key=lambda t: (t.created, t.name))
    totals: dict[str, int] = {}
    for t in ordered:
        for model, n in t.quota.items():
            totals[model] = totals.get(model, 0) + n
    over = {m: (n, capacity.get(m, 0)) for m, n in totals.items() if n > capacity.get(m, 0)}
    left = dict(capacity)
    mine = Verdict({}, True)
    for t in ordered:
        fits = all(n <= left.get(m, 0) for m, n in t.quota.items())
        if fits:
            for m, n in t.quota.items():
                left[m] = left.get(m, 0) - n
        if t.name == name:
            mine = Verdict({m: over[m] for m, n in t.quota.items() if m in over and n > 0}, fits)
            break
    affected = sum(1 for t in ordered if any(m in over and n > 0 for m, n in t.quota.items())) if over else 0
    return mine, affected
