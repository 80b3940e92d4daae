"""`aifactory tenants report`: GPU-hours per tenant and GPU model on each scheduler, for a period.

Read from the Tenants' status, where the operator's ledger keeps them (operators/tenants/budget.py):
the current period from `status.budget` and `status.ledger` (GPU-seconds per hour), a closed one
from `status.budgetHistory` (per day). Energy (IT kWh, kgCO2e, litres of water) for monthly periods
from `status.energy` / `status.energyHistory` (operators/tenants/energy.py); blank where a period
is not a month or the operator had no Prometheus. Per tenant and model: Slurm and Kubernetes GPU-hours; per
tenant: the budget and the share of it used, the peak of GPUs held at once, the over-shoots of
its entitlement. Formats: a table, JSON, CSV (one row per tenant and model), and HTML with a plot
per tenant (GPU-hours per hour or day on each scheduler, and the running total against the budget).
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aifactory.report import HTML_STYLE, csv_text, table
from operators.tenants.budget import UsageLedger

SLURM_COLOR, KUBERNETES_COLOR, BUDGET_COLOR = "#1f5fbf", "#e07b00", "#c0102a"


class NoUsage(LookupError):
    """No tenant has figures for the period asked for."""


@dataclass
class TenantUsage:
    tenant: str
    period: str
    slurm: dict[str, float]  # model -> GPU-hours
    kubernetes: dict[str, float]
    budget_hours: float | None
    peak_gpus: int
    overshoots: int
    bucket: str  # "hour" (the current period) or "day" (a closed one)
    # (bucket start, Slurm GPU-hours, Kubernetes GPU-hours), in time order
    series: list[tuple[dt.datetime, float, float]] = field(default_factory=list)
    energy: dict[str, Any] | None = None  # the period's status.energy figures, when it is a month

    @property
    def used_hours(self) -> float:
        return sum(self.slurm.values()) + sum(self.kubernetes.values())

    @property
    def budget_percent(self) -> float | None:
        return None if not self.budget_hours else 100 * self.used_hours / self.budget_hours


def _series(slurm: Mapping[str, float], kubernetes: Mapping[str, float], scale: float, parse: Any) -> list:
    keys = sorted(set(slurm) | set(kubernetes), key=lambda k: parse(k))
    return [(parse(k), slurm.get(k, 0.0) / scale, kubernetes.get(k, 0.0) / scale) for k in keys]


def _hour(key: str) -> dt.datetime:
    return dt.datetime.fromtimestamp(float(key), dt.UTC)


def _day(key: str) -> dt.datetime:
    return dt.datetime.fromisoformat(key).replace(tzinfo=dt.UTC)


def collect(tenants: Iterable[Mapping[str, Any]], period: str | None = None) -> list[TenantUsage]:
    """Each tenant's figures for `period` (default: each tenant's current one)."""
    out = []
    for t in tenants:
        status, spec = t.get("status") or {}, t.get("spec") or {}
        current = status.get("budget") or {}
        limit = (spec.get("gpuHourBudget") or {}).get("gpuHours")
        name = t["metadata"]["name"]
        if current and (period is None or current.get("period") == period):
            ledger = UsageLedger.from_status(status.get("ledger"))
            hourly = (ledger.slurm_hourly, ledger.kubernetes_hourly()) if ledger else ({}, {})
            usage = TenantUsage(
                name,
                current["period"],
                dict(current.get("slurm") or {}),
                dict(current.get("kubernetes") or {}),
                limit,
                int(current.get("peakGPUs") or 0),
                int(current.get("overshoots") or 0),
                "hour",
                _series(*hourly, 3600, _hour),
            )
        elif period is not None and period in (status.get("budgetHistory") or {}):
            closed = status["budgetHistory"][period]
            daily = closed.get("daily") or {}
            usage = TenantUsage(
                name,
                period,
                dict(closed.get("slurm") or {}),
                dict(closed.get("kubernetes") or {}),
                closed.get("limitGPUHours"),
                int(closed.get("peakGPUs") or 0),
                int(closed.get("overshoots") or 0),
                "day",
                _series(daily.get("slurm") or {}, daily.get("kubernetes") or {}, 1, _day),
            )
        else:
            continue
        usage.energy = _energy(status, usage.period)
        out.append(usage)
    if not out:
        raise NoUsage(f"no tenant has GPU-hours recorded for period {period or '(current)'}")
    return sorted(out, key=lambda u: u.tenant)


def _energy(status: Mapping[str, Any], period: str) -> dict[str, Any] | None:
    """The operator's energy figures of a monthly period (its name is the month's, 2026-12)."""
    now = status.get("energy") or {}
    if now.get("period") == period:
        return dict(now)
    old = (status.get("energyHistory") or {}).get(period)
    return dict(old) if old else None


def rows(usages: list[TenantUsage]) -> list[dict[str, Any]]:
    """One row per tenant and GPU model (the CSV and the table)."""
    out = []
    for u in usages:
        pct = u.budget_percent
        models = sorted(set(u.slurm) | set(u.kubernetes)) or ["-"]
        first = models[0]
        for model in models:
            s, k = u.slurm.get(model, 0.0), u.kubernetes.get(model, 0.0)
            out.append(
                {
                    "tenant": u.tenant,
                    "period": u.period,
                    "model": model,
                    "slurm_gpu_hours": round(s, 3),
                    "kubernetes_gpu_hours": round(k, 3),
                    "gpu_hours": round(s + k, 3),
                    "budget_gpu_hours": "" if u.budget_hours is None else u.budget_hours,
                    "budget_used_pct": "" if pct is None else round(pct, 1),
                    "peak_gpus": u.peak_gpus,
                    "overshoots": u.overshoots,
                    # the tenant's energy, on its first row (it is not split by GPU model)
                    **{
                        col: (u.energy or {}).get(key, "") if model == first else ""
                        for col, key in ENERGY_COLUMNS.items()
                    },
                }
            )
    return out


ENERGY_COLUMNS = {"it_kwh": "itKWh", "co2e_kg": "co2eKg", "water_l": "waterL"}


def as_json(usages: list[TenantUsage]) -> str:
    doc = [
        {
            "tenant": u.tenant,
            "period": u.period,
            "models": {
                m: {"slurm": round(u.slurm.get(m, 0.0), 4), "kubernetes": round(u.kubernetes.get(m, 0.0), 4)}
                for m in sorted(set(u.slurm) | set(u.kubernetes))
            },
            "gpuHours": round(u.used_hours, 4),
            "budgetGPUHours": u.budget_hours,
            "budgetUsedPercent": None if u.budget_percent is None else round(u.budget_percent, 1),
            "peakGPUs": u.peak_gpus,
            "overshoots": u.overshoots,
            "energy": u.energy,
            "series": {
                "bucket": u.bucket,
                "points": [
                    {
                        "start": t.strftime("%Y-%m-%dT%H:%M:%SZ"),
                        "slurm": round(s, 4),
                        "kubernetes": round(k, 4),
                    }
                    for t, s, k in u.series
                ],
            },
        }
        for u in usages
    ]
    return json.dumps({"tenants": doc}, indent=2)


def as_csv(usages: list[TenantUsage]) -> str:
    return csv_text(rows(usages))


def plot(u: TenantUsage) -> bytes:
    """PNG: GPU-hours per bucket on each scheduler (stacked bars) and the running total against the
    budget (right axis)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 3.2), dpi=100)
    try:
        times = mdates.date2num([t for t, _, _ in u.series])
        ax.xaxis_date()
        slurm = [s for _, s, _ in u.series]
        kube = [k for _, _, k in u.series]
        width = (1 / 24 if u.bucket == "hour" else 1) * 0.9
        ax.bar(times, slurm, width=width, color=SLURM_COLOR, label="Slurm", align="edge")
        ax.bar(
            times, kube, width=width, bottom=slurm, color=KUBERNETES_COLOR, label="Kubernetes", align="edge"
        )
        ax.set_ylabel(f"GPU-hours per {u.bucket}")
        ax.set_title(f"{u.tenant}: {u.period}")
        total = ax.twinx()
        running, acc = [], 0.0
        for _, s, k in u.series:
            acc += s + k
            running.append(acc)
        total.step(times, running, where="post", color="#333333", label="total")
        if u.budget_hours:
            total.axhline(u.budget_hours, color=BUDGET_COLOR, linestyle="--", label="budget")
        total.set_ylabel("GPU-hours, running total")
        total.set_ylim(bottom=0)
        handles = ax.get_legend_handles_labels()[0] + total.get_legend_handles_labels()[0]
        ax.legend(handles=handles, loc="upper left", fontsize=8)
        fig.autofmt_xdate()
        fig.tight_layout()
        out = io.BytesIO()
        fig.savefig(out, format="png")
        return out.getvalue()
    finally:
        plt.close(fig)


_HTML = (
    """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>GPU usage {{ period }}</title>
"""
    + HTML_STYLE
    + """</head><body>
<h1>GPU usage per tenant: {{ period }}</h1>
<p>Generated {{ generated }} from the tenant operator's ledger
(Slurm: sacct; Kubernetes: pods' run times).</p>
{% for u in usages %}
<section id="{{ u.tenant }}">
<h2>{{ u.tenant }} <small>({{ u.period }})</small></h2>
<table>
<tr><th>GPU model</th><th>Slurm GPU-h</th><th>Kubernetes GPU-h</th><th>total GPU-h</th></tr>
{% for r in rows if r.tenant == u.tenant %}
<tr><td>{{ r.model }}</td><td>{{ r.slurm_gpu_hours }}</td><td>{{ r.kubernetes_gpu_hours }}</td>
<td>{{ r.gpu_hours }}</td></tr>
{% endfor %}
</table>
<p>Budget: {% if u.budget_hours %}{{ u.budget_hours }} GPU-h,
<span class="{{ 'over' if u.budget_percent >= 100 else '' }}">{{ '%.1f' % u.budget_percent }}% used</span>
{% else %}none{% endif %}. Peak: {{ u.peak_gpus }} GPUs at once. Over-shoots: {{ u.overshoots }}.
{% if u.energy %}Energy: {{ u.energy.itKWh }} kWh IT, {{ u.energy.facilityKWh }} kWh facility,
{{ u.energy.co2eKg }} kgCO2e, {{ u.energy.waterL }} l of water.{% endif %}</p>
<img alt="GPU-hours of {{ u.tenant }} over {{ u.period }}" src="data:image/png;base64,{{ plots[u.tenant] }}">
</section>
{% endfor %}
</body></html>
"""
)


def as_html(usages: list[TenantUsage], now: dt.datetime | None = None) -> str:
    import jinja2

    env = jinja2.Environment(autoescape=True)
    periods = sorted({u.period for u in usages})
    return env.from_string(_HTML).render(
        period=", ".join(periods),
        generated=(now or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%d %H:%M UTC"),
        usages=usages,
        rows=rows(usages),
        plots={u.tenant: base64.b64encode(plot(u)).decode() for u in usages},
    )


def render(usages: list[TenantUsage], fmt: str) -> str:
    if fmt == "json":
        return as_json(usages)
    if fmt == "csv":
        return as_csv(usages)
    if fmt == "html":
        return as_html(usages)
    return table(rows(usages))
