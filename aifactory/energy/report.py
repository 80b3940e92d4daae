"""`aifactory energy report`: the site's energy over a period, per tenant and per feed.

Per tenant: IT kWh (on Slurm and on Kubernetes), facility kWh (x PUE), kgCO2e (each hour at its
grid intensity), litres of cooling water and its share of the site's energy; the site's overhead
(what no tenant held: idle machines, unallocated GPUs' share) as a row of its own. Per feed: its
peak and mean draw against its budget. Formats: a table, JSON, CSV (one row per tenant and the
overhead) and HTML with plots (each feed's draw over time against its budget and rating; energy
per hour per tenant and overhead; each tenant's share).
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aifactory.energy.attribution import Attribution, Holding, TenantEnergy, attribute, significant
from aifactory.report import HTML_STYLE, csv_text, table
from aifactory.site import power
from aifactory.site.model import Feed, Site

OVERHEAD = "(site overhead)"


@dataclass
class FeedDraw:
    feed: Feed
    samples: list[tuple[float, float]]  # (t, W)

    @property
    def peak_w(self) -> float:
        return max((w for _, w in self.samples), default=0.0)

    @property
    def mean_w(self) -> float:
        return sum(w for _, w in self.samples) / len(self.samples) if self.samples else 0.0


@dataclass
class EnergyReport:
    site: str
    start: float
    end: float
    attribution: Attribution
    feeds: list[FeedDraw]
    holdings: int  # jobs and pods (per node) the attribution shared energy by

    def tenants(self) -> list[tuple[str, TenantEnergy]]:
        """Tenants by energy, largest first, then the overhead."""
        ranked = sorted(self.attribution.tenants.items(), key=lambda kv: (-kv[1].it_kwh, kv[0]))
        return [*ranked, (OVERHEAD, self.attribution.overhead)]


def build(
    site: Site,
    start: float,
    end: float,
    samples: Mapping[str, Sequence[tuple[float, float]]],
    feed_samples: Mapping[str, Sequence[tuple[float, float]]],
    holdings: Sequence[Holding],
) -> EnergyReport:
    hourly = power.read_carbon_file(site.power.carbon_file) if site.power.carbon_file else {}
    gpus = {m.name: m.gpu_count for m in site.machines}
    a = attribute(samples, gpus, holdings, start, end, site.power, hourly)
    feeds = [
        FeedDraw(f, [(t, w) for t, w in feed_samples.get(f.name, []) if start <= t <= end])
        for f in site.power.feeds
    ]
    return EnergyReport(site.name, start, end, a, feeds, len(holdings))


def period_bounds(period: str | None, now: dt.datetime) -> tuple[float, float]:
    """[start, end) of `2026-12` (a month), `2026-12-05` (a day) or `START/END` (ISO 8601 times);
    None: this month so far. A period not over yet ends now."""
    if period is None:
        start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        return start.timestamp(), now.timestamp()
    try:
        if "/" in period:
            a, b = (dt.datetime.fromisoformat(x.replace("Z", "+00:00")) for x in period.split("/", 1))
            start, end = (x if x.tzinfo else x.replace(tzinfo=dt.UTC) for x in (a, b))
        elif len(period) == 7:
            start = dt.datetime.strptime(period, "%Y-%m").replace(tzinfo=dt.UTC)
            end = (start + dt.timedelta(days=32)).replace(day=1)
        else:
            start = dt.datetime.strptime(period, "%Y-%m-%d").replace(tzinfo=dt.UTC)
            end = start + dt.timedelta(days=1)
    except ValueError as e:
        raise ValueError(f"period {period!r}: not YYYY-MM, YYYY-MM-DD or START/END in ISO 8601 ({e})") from e
    if end <= start:
        raise ValueError(f"period {period!r}: ends before it starts")
    if start >= now:
        raise ValueError(f"period {period!r}: starts in the future")
    return start.timestamp(), min(end, now).timestamp()


def _stamp(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def rows(r: EnergyReport) -> list[dict[str, Any]]:
    total = r.attribution.total_kwh or 1.0
    return [
        {
            "tenant": name,
            "it_kwh": round(e.it_kwh, 4),
            "slurm_kwh": round(e.by_scheduler.get("slurm", 0.0), 4),
            "kubernetes_kwh": round(e.by_scheduler.get("kubernetes", 0.0), 4),
            "facility_kwh": round(e.facility_kwh, 4),
            "co2e_kg": round(e.co2e_kg, 4),
            "water_l": round(e.water_l, 3),
            "share_pct": round(100 * e.it_kwh / total, 1),
        }
        for name, e in r.tenants()
    ]


def feed_rows(r: EnergyReport) -> list[dict[str, Any]]:
    return [
        {
            "feed": f.feed.name,
            "budget_kw": round(f.feed.budget_w / 1000, 3),
            "rating_kw": f.feed.kw,
            "peak_kw": round(f.peak_w / 1000, 3),
            "mean_kw": round(f.mean_w / 1000, 3),
            "peak_budget_pct": round(100 * f.peak_w / f.feed.budget_w, 1),
        }
        for f in r.feeds
    ]


def _figures(kwh: Mapping[str, float]) -> dict[str, float]:
    return {k: significant(v) for k, v in sorted(kwh.items())}


def as_json(r: EnergyReport) -> str:
    doc = {
        "site": r.site,
        "start": _stamp(r.start),
        "end": _stamp(r.end),
        "itKWh": significant(r.attribution.total_kwh),
        "tenants": {
            name: e.totals()
            | {"bySchedulerKWh": _figures(e.by_scheduler), "byMachineKWh": _figures(e.by_machine)}
            for name, e in r.attribution.tenants.items()
        },
        "overhead": r.attribution.overhead.totals()
        | {"byMachineKWh": _figures(r.attribution.overhead.by_machine)},
        "machinesKWh": _figures(r.attribution.machines_kwh),
        "feeds": feed_rows(r),
        "holdings": r.holdings,
    }
    return json.dumps(doc, indent=2)


def as_csv(r: EnergyReport) -> str:
    return csv_text(rows(r))


def as_table(r: EnergyReport) -> str:
    head = (
        f"energy report for site {r.site}: {_stamp(r.start)} .. {_stamp(r.end)}, "
        f"{r.attribution.total_kwh:.3f} kWh IT, {r.holdings} job/pod holdings"
    )
    return "\n\n".join([head, table(rows(r)), table(feed_rows(r))])


def _png(fig: Any) -> str:
    out = io.BytesIO()
    fig.tight_layout()
    fig.savefig(out, format="png")
    return base64.b64encode(out.getvalue()).decode()


def plots(r: EnergyReport) -> dict[str, str]:
    """PNG (base64) plots: `feeds`, `hourly`, `shares`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    def when(ts: Sequence[float]) -> Any:
        return mdates.date2num([dt.datetime.fromtimestamp(t, dt.UTC) for t in ts])

    out: dict[str, str] = {}
    fig, axes = plt.subplots(
        len(r.feeds) or 1, 1, figsize=(9, 2.6 * max(1, len(r.feeds))), dpi=100, squeeze=False
    )
    try:
        for ax, f in zip(axes[:, 0], r.feeds, strict=False):
            ax.xaxis_date()
            ax.plot(
                when([t for t, _ in f.samples]),
                [w / 1000 for _, w in f.samples],
                color="#1f5fbf",
                label="draw",
            )
            ax.axhline(f.feed.budget_w / 1000, color="#c0102a", linestyle="--", label="budget")
            if f.feed.budget_w < f.feed.kw * 1000:
                ax.axhline(f.feed.kw, color="#555555", linestyle=":", label="rating")
            ax.set_ylabel("kW")
            ax.set_ylim(bottom=0)
            ax.set_title(f"feed {f.feed.name}")
            ax.legend(loc="upper left", fontsize=8)
        fig.autofmt_xdate()
        out["feeds"] = _png(fig)
    finally:
        plt.close(fig)
    series, bucket = plotted(r)
    fig, ax = plt.subplots(figsize=(9, 3.2), dpi=100)
    try:
        ax.xaxis_date()
        starts = sorted({b for _, per in series for b in per})
        bottom = [0.0] * len(starts)
        for name, per in series:
            values = [per.get(b, 0.0) for b in starts]
            color = "#999999" if name == OVERHEAD else None
            width = bucket / 86400 * 0.9
            ax.bar(when(starts), values, width=width, bottom=bottom, label=name, align="edge", color=color)
            bottom = [b + v for b, v in zip(bottom, values, strict=True)]
        ax.set_ylabel(f"IT kWh per {'day' if bucket == 86400 else 'hour'}")
        ax.legend(loc="upper left", fontsize=7, ncol=2)
        fig.autofmt_xdate()
        out["hourly"] = _png(fig)
    finally:
        plt.close(fig)
    fig, ax = plt.subplots(figsize=(9, 0.35 * len(series) + 1.2), dpi=100)
    try:
        names = [n for n, _ in series][::-1]
        kwh = [sum(per.values()) for _, per in series][::-1]
        ax.barh(names, kwh, color=["#999999" if n == OVERHEAD else "#1f5fbf" for n in names])
        ax.set_xlabel("IT kWh")
        out["shares"] = _png(fig)
    finally:
        plt.close(fig)
    return out


PLOTTED_TENANTS = 9  # the largest, by name; the rest are one bar: a month of 50 tenants stays legible


def plotted(r: EnergyReport) -> tuple[list[tuple[str, dict[float, float]]], int]:
    """What the energy plots show: the largest tenants, the others together, and the overhead, each
    as kWh per bucket (an hour; a day for periods over three days)."""
    bucket = 86400 if r.end - r.start > 3 * 86400 else 3600

    def per_bucket(*energies: TenantEnergy) -> dict[float, float]:
        out: dict[float, float] = {}
        for e in energies:
            for hour, kwh in e.by_hour.items():
                key = float(hour - hour % bucket)
                out[key] = out.get(key, 0.0) + kwh
        return out

    tenants = r.tenants()[:-1]
    series = [(name, per_bucket(e)) for name, e in tenants[:PLOTTED_TENANTS]]
    if rest := tenants[PLOTTED_TENANTS:]:
        series.append((f"{len(rest)} other tenants", per_bucket(*(e for _, e in rest))))
    series.append((OVERHEAD, per_bucket(r.attribution.overhead)))
    return series, bucket


_HTML = (
    """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Energy {{ site }}: {{ start }} .. {{ end }}</title>
"""
    + HTML_STYLE
    + """</head><body>
<h1>Energy of site {{ site }}</h1>
<p>{{ start }} .. {{ end }}: {{ '%.3f' % total }} kWh IT, from the BMCs' power readings (Prometheus)
shared by the GPUs each Slurm job and pod held ({{ holdings }} holdings). PUE {{ pue }},
{{ water }} l/kWh, grid {{ carbon }}.</p>
<h2>Tenants</h2>
<table>
<tr>{% for c in columns %}<th>{{ c }}</th>{% endfor %}</tr>
{% for r in rows %}<tr>{% for c in columns %}<td>{{ r[c] }}</td>{% endfor %}</tr>
{% endfor %}
</table>
<img alt="energy per hour per tenant" src="data:image/png;base64,{{ plots.hourly }}">
<img alt="energy per tenant" src="data:image/png;base64,{{ plots.shares }}">
<h2>Feeds</h2>
<table>
<tr>{% for c in feed_columns %}<th>{{ c }}</th>{% endfor %}</tr>
{% for r in feed_rows %}<tr>{% for c in feed_columns %}
<td class="{{ 'over' if c == 'peak_budget_pct' and r[c] > 100 else '' }}">{{ r[c] }}</td>{% endfor %}</tr>
{% endfor %}
</table>
<img alt="draw of each feed against its budget" src="data:image/png;base64,{{ plots.feeds }}">
</body></html>
"""
)


def as_html(r: EnergyReport, site: Site) -> str:
    import jinja2

    data, feeds = rows(r), feed_rows(r)
    carbon = "hourly file " + str(site.power.carbon_file.name) if site.power.carbon_file else ""
    carbon = carbon or f"{site.power.carbon_g_per_kwh:g} gCO2e/kWh"
    return (
        jinja2.Environment(autoescape=True)
        .from_string(_HTML)
        .render(
            site=r.site,
            start=_stamp(r.start),
            end=_stamp(r.end),
            total=r.attribution.total_kwh,
            holdings=r.holdings,
            pue=site.power.pue,
            water=site.power.water_l_per_kwh,
            carbon=carbon,
            columns=list(data[0]),
            rows=data,
            feed_columns=list(feeds[0]) if feeds else [],
            feed_rows=feeds,
            plots=plots(r),
        )
    )


def render(r: EnergyReport, site: Site, fmt: str) -> str:
    if fmt == "json":
        return as_json(r)
    if fmt == "csv":
        return as_csv(r)
    if fmt == "html":
        return as_html(r, site)
    return as_table(r)
