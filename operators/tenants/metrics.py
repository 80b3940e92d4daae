"""Prometheus metrics of the tenant operator (served on AIFACTORY_METRICS_PORT, default 9108)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import Counter, Gauge, Histogram, start_http_server

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


@contextmanager
def timed(side: str) -> Iterator[None]:
    start = time.monotonic()
    try:
        yield
    except Exception as e:
        RECONCILES.labels(side, "error").inc()
        ERRORS.labels(side, getattr(e, "reason", type(e).__name__)).inc()
        raise
    else:
        RECONCILES.labels(side, "ok").inc()
    finally:
        DURATION.labels(side).observe(time.monotonic() - start)


def serve(port: int) -> None:
    if port:
        start_http_server(port)
