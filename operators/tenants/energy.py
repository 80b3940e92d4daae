"""This month's energy in each Tenant's status (`status.energy`): IT and facility kWh, kgCO2e and
litres of water, the same attribution as `aifactory energy report` (aifactory/energy). A closed
month's last figures move to `status.energyHistory`, where `aifactory tenants report` finds them.

One pass every AIFACTORY_ENERGY_INTERVAL seconds for all tenants at once: the BMCs' readings of the
interval since the last pass from Prometheus (one range query), the job allocations of that interval
from sacct (one call), every GPU pod (one list); the interval's energy is added to each tenant's
month (MonthAccount), and a status merge-patch goes to each tenant whose figures moved. A source
that cannot be read skips the pass (the next covers the interval too); the last figures stay, with
their time. CO2e uses the site's constant intensity (the hourly file stays with `aifactory energy
report`, where the site file is).

AIFACTORY_PROMETHEUS_URL    Prometheus on the head (http://<head>:9090); unset: no energy figures
AIFACTORY_NODE_GPUS         `gpu-01=8,...`: each machine's GPUs (the share a held GPU is)
AIFACTORY_ENERGY_FACTORS    `pue=1.2,water_l_per_kwh=0.5,carbon_g_per_kwh=270`
AIFACTORY_ENERGY_INTERVAL   seconds between passes (default 300)
With AIFACTORY_SITE all of them come from the site file.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aifactory.energy import sources
from aifactory.energy.attribution import TenantEnergy, attribute
from aifactory.site.model import PowerSettings, Site
from operators.tenants import budget, slurm
from operators.tenants import kubernetes_side as kside
from operators.tenants.spec import GROUP, PLURAL, VERSION

log = logging.getLogger("aifactory.tenants.energy")
DEFAULT_INTERVAL_S = 300.0


@dataclass(frozen=True)
class EnergySettings:
    prometheus: str
    node_gpus: dict[str, int]
    power: PowerSettings
    interval: float = DEFAULT_INTERVAL_S


def _pairs(text: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in text.split(",") if "=" in item)


def site_settings(site: Site, interval: float = DEFAULT_INTERVAL_S) -> EnergySettings:
    gpus = {m.name: m.gpu_count for m in site.machines if m.gpu_count}
    return EnergySettings(sources.prometheus_url(site), gpus, site.power, interval)


def settings() -> EnergySettings | None:
    interval = float(os.environ.get("AIFACTORY_ENERGY_INTERVAL", DEFAULT_INTERVAL_S))
    if site_file := os.environ.get("AIFACTORY_SITE"):
        from aifactory.site.validate import load_site

        return site_settings(load_site(Path(site_file)), interval)
    url = os.environ.get("AIFACTORY_PROMETHEUS_URL")
    if not url:
        return None
    gpus = {k: int(v) for k, v in _pairs(os.environ.get("AIFACTORY_NODE_GPUS", "")).items()}
    factors = _pairs(os.environ.get("AIFACTORY_ENERGY_FACTORS", ""))
    power = PowerSettings(
        pue=float(factors.get("pue", 1.0)),
        water_l_per_kwh=float(factors.get("water_l_per_kwh", 0.0)),
        carbon_g_per_kwh=float(factors.get("carbon_g_per_kwh", 0.0)),
    )
    return EnergySettings(url, gpus, power, interval)


def env_for(es: EnergySettings) -> dict[str, str]:
    """The environment that gives an in-cluster operator these settings (infra/tenant_operator.py)."""
    power = es.power
    return {
        "AIFACTORY_PROMETHEUS_URL": es.prometheus,
        "AIFACTORY_NODE_GPUS": ",".join(f"{m}={n}" for m, n in sorted(es.node_gpus.items())),
        "AIFACTORY_ENERGY_FACTORS": (
            f"pue={power.pue},water_l_per_kwh={power.water_l_per_kwh},carbon_g_per_kwh={power.carbon_g_per_kwh}"
        ),
    }


def status_of(period: str, e: TenantEnergy, now: dt.datetime) -> dict[str, Any]:
    return {"period": period} | e.totals() | {"updated": now.strftime("%Y-%m-%dT%H:%M:%SZ")}


def moved(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> bool:
    """Whether a figure changed as written (six significant figures): a tenant that held nothing since
    the last pass is not written again; one that did is, however small its figures (a fixed
    threshold would leave a small tenant's figures behind by as much)."""
    if not old or old.get("period") != new["period"]:
        return True
    return any(float(old.get(k, 0)) != v for k, v in new.items() if k not in ("period", "updated"))


# Readings reach Prometheus some seconds after the fact (the exporter's interval, then a scrape):
# a pass accounts up to this long before now, and the next pass goes on from there.
LAG_S = 45.0


@dataclass
class MonthAccount:
    """Each tenant's energy so far this month, through `through` (epoch seconds). The first pass of
    a month, or of a started operator, computes the month so far at one range query's resolution
    (coarser the longer it is); every later pass adds only the interval since, at the scrape's."""

    period: str = ""
    through: float = 0.0
    totals: dict[str, TenantEnergy] = field(default_factory=dict)

    def advance(
        self, es: EnergySettings, kube: kside.Kube, runner: slurm.Runner, now: dt.datetime, tenants: list
    ) -> bool:
        period, start = budget.period("Monthly", now, now)
        if period != self.period:
            self.period, self.through, self.totals = period, start.timestamp(), {}
        t0, t1 = self.through, now.timestamp() - LAG_S
        if t1 <= t0:
            return False
        samples = sources.power_samples(es.prometheus, t0, t1)
        holdings = sources.slurm_holdings(runner, t0, t1)
        holdings += sources.pod_holdings(kube, sources.tenant_namespaces(tenants), t1)
        for name, e in attribute(samples, es.node_gpus, holdings, t0, t1, es.power).tenants.items():
            total = self.totals.setdefault(name, TenantEnergy())
            total.it_kwh += e.it_kwh
            total.facility_kwh += e.facility_kwh
            total.co2e_kg += e.co2e_kg
            total.water_l += e.water_l
        self.through = t1
        return True


def one_pass(
    es: EnergySettings, kube: kside.Kube, runner: slurm.Runner, now: dt.datetime, account: MonthAccount
) -> int:
    """Bring this month's figures of every tenant up to date and write those that moved; how many
    were written."""
    tenants = kube.list(f"/apis/{GROUP}/{VERSION}/{PLURAL}")
    if not account.advance(es, kube, runner, now, tenants):
        return 0
    written = 0
    for t in tenants:
        name, status = t["metadata"]["name"], t.get("status") or {}
        new, old = (
            status_of(account.period, account.totals.get(name, TenantEnergy()), now),
            status.get("energy"),
        )
        if moved(old, new):
            body: dict[str, Any] = {"status": {"energy": new}}
            if old and old.get("period") and old["period"] != account.period:  # a month closed: kept
                history = status.get("energyHistory") or {}
                body["status"]["energyHistory"] = budget.closing(history, old["period"], old)
            path = f"/apis/{GROUP}/{VERSION}/{PLURAL}/{name}/status"
            try:
                kube.request("PATCH", path, body, content_type="application/merge-patch+json")
                written += 1
            except kside.ApiError as e:
                if e.status != 404:  # a tenant deleted meanwhile has no figures to keep
                    raise
    return written


class Passes:
    """Runs a pass when one is due, in a thread of its own (a slow Prometheus or head never holds a
    handler), one at a time. The tenants' drift timers ask (`due`): kopf pauses them while another
    operator outranks this one (peering), so a paused operator writes no figures either."""

    def __init__(
        self, es: EnergySettings, kube: kside.Kube, runner: slurm.Runner, clock: Callable[[], dt.datetime]
    ):
        self.es, self.kube, self.runner, self.clock = es, kube, runner, clock
        self.account = MonthAccount()
        self._lock = threading.Lock()
        self._running = False
        # not at once: at startup every tenant's reconcile goes first
        self._next = time.monotonic() + es.interval

    def due(self) -> None:
        with self._lock:
            if self._running or time.monotonic() < self._next:
                return
            self._running, self._next = True, time.monotonic() + self.es.interval
        threading.Thread(target=self._one, name="energy", daemon=True).start()

    def _one(self) -> None:
        try:
            n = one_pass(self.es, self.kube, self.runner, self.clock(), self.account)
            log.info("energy: this month's figures written for %d tenant(s)", n)
        except (sources.SourceError, slurm.SlurmError, kside.ApiError, OSError) as e:
            log.warning("energy: pass skipped, the last figures stay: %s", e)
        except Exception:  # a bug must not end the passes for good: said, and tried again
            log.exception("energy: pass failed, the last figures stay")
        finally:
            with self._lock:
                self._running = False
