"""Prometheus metrics of the tenant operator (served on AIFACTORY_METRICS_PORT, default 9108)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from operators.tenants.capacity import Ledger

RECONCILES = Counter(
    "aifactory_tenant_reconcile_total", "Reconciles of one side of a tenant", ["side", "result"]
)
DURATION = Histogram(
    "aifactory_tenant_reconcile_seconds",
    "Time to reconcile one side of a tenant",
    ["side"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
ERRORS = Counter("aifactory_tenant_errors_total", "Failed reconciles, by side and reason", ["side", "reason"])
DRIFT = Counter("aifactory_tenant_drift_corrected_total", "Hand edits put back", ["side"])
TENANTS = Gauge("aifactory_tenants", "Tenants known to the operator")
OVERCOMMITTED = Gauge("aifactory_tenants_overcommitted", "Tenants with Overcommitted=True")
BUDGET_EXHAUSTED = Counter(
    "aifactory_tenant_budget_exhausted_total",
    "Times a tenant's GPU-hour budget was found spent for its period (new work then held)",
)
OVERSHOOT = Counter(
    "aifactory_tenant_overshoot_total",
    "Times a tenant was found holding more GPUs than its entitlement on both schedulers together",
)


def record(side: str, start: float, error: BaseException | None = None) -> None:
    """One reconcile of `side` that began at `start` (time.monotonic()) ended, with `error` or not."""
    if error is None:
        RECONCILES.labels(side, "ok").inc()
    else:
        RECONCILES.labels(side, "error").inc()
        ERRORS.labels(side, getattr(error, "reason", type(error).__name__)).inc()
    DURATION.labels(side).observe(time.monotonic() - start)


@contextmanager
def timed(side: str) -> Iterator[None]:
    start = time.monotonic()
    try:
        yield
    except Exception as e:
        record(side, start, e)
        raise
    record(side, start)


def serve(port: int, ledger: Ledger) -> None:
    # Counted when scraped: counting on every reconcile made a burst of new tenants quadratic.
    TENANTS.set_function(lambda: len(ledger))
    OVERCOMMITTED.set_function(ledger.overcommitted_tenants)
    if port:
        start_http_server(port)
