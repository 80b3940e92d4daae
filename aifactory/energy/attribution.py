"""Energy attribution: a machine's measured energy shared among the tenants that held its GPUs.

The machine's energy over any interval comes from its power samples (the BMC's draw, as the
power exporter reads it): the area under the samples, linear between them. A tenant that held g of
a machine's G GPUs from s to e is attributed g/G of the machine's energy between s and e, whether
or not its work kept the GPUs busy (idle power of a held GPU is the holder's). What no tenant held
is the site's overhead: idle machines, and the unallocated share of busy ones, reported, not hidden.

Per tenant and period it gives IT energy (kWh), facility energy (x PUE), CO2e (each hour's energy
times that hour's grid intensity: the site's hourly file where it covers the hour, else its
constant) and cooling water (IT kWh x WUE), from the site file's power section.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from aifactory.site.model import PowerSettings

J_PER_KWH = 3.6e6


def significant(x: float, digits: int = 6) -> float:
    """x to `digits` significant figures: a small tenant's figures keep their relative precision,
    which a fixed number of decimals would round away (0.00035748 kg is not 0.000357)."""
    return float(f"{x:.{digits}g}")


@dataclass(frozen=True)
class Holding:
    """GPUs a tenant held on one machine from `start` to `end` (epoch seconds)."""

    tenant: str
    scheduler: str  # slurm | kubernetes
    machine: str
    gpus: int
    start: float
    end: float
    job: str = ""  # a Slurm job id or a pod's namespace/name


class EnergyMeter:
    """One machine's power samples as cumulative energy: energy over [t0, t1] in O(log n)."""

    def __init__(self, samples: Sequence[tuple[float, float]]):
        pts = sorted(samples)
        self.t = [t for t, _ in pts]
        self.w = [w for _, w in pts]
        self.cum = [0.0]
        for i in range(1, len(pts)):
            self.cum.append(self.cum[-1] + (self.t[i] - self.t[i - 1]) * (self.w[i] + self.w[i - 1]) / 2)

    def _at(self, t: float) -> float:
        """Energy from the first sample to t (clamped to the samples' span)."""
        if not self.t or t <= self.t[0]:
            return 0.0
        if t >= self.t[-1]:
            return self.cum[-1]
        i = bisect.bisect_right(self.t, t) - 1
        dt = t - self.t[i]
        w_t = self.w[i] + (self.w[i + 1] - self.w[i]) * dt / (self.t[i + 1] - self.t[i])
        return self.cum[i] + dt * (self.w[i] + w_t) / 2

    def joules(self, t0: float, t1: float) -> float:
        return max(0.0, self._at(t1) - self._at(t0))


@dataclass
class TenantEnergy:
    it_kwh: float = 0.0
    facility_kwh: float = 0.0
    co2e_kg: float = 0.0
    water_l: float = 0.0
    by_machine: dict[str, float] = field(default_factory=dict)  # IT kWh
    by_scheduler: dict[str, float] = field(default_factory=dict)  # IT kWh
    by_hour: dict[int, float] = field(default_factory=dict)  # hour start (epoch s) -> IT kWh

    def totals(self) -> dict[str, float]:
        """The four figures as machine-readable output names them, to six significant figures."""
        return {
            "itKWh": significant(self.it_kwh),
            "facilityKWh": significant(self.facility_kwh),
            "co2eKg": significant(self.co2e_kg),
            "waterL": significant(self.water_l),
        }


@dataclass
class Attribution:
    start: float
    end: float
    tenants: dict[str, TenantEnergy]
    overhead: TenantEnergy  # energy no tenant held: idle machines, unallocated GPUs' share
    machines_kwh: dict[str, float]  # each machine's measured IT energy over the period

    @property
    def total_kwh(self) -> float:
        return sum(self.machines_kwh.values())


def _hours(t0: float, t1: float) -> Iterable[tuple[int, float, float]]:
    t = t0
    while t < t1:
        hour = int(t - t % 3600)
        step = min(hour + 3600.0, t1)
        yield hour, t, step
        t = step


def carbon_g_per_kwh(settings: PowerSettings, hourly: Mapping[datetime, float], hour: int) -> float:
    """The grid intensity of an hour: the site's hourly file where it has the hour, else its constant."""
    return hourly.get(datetime.fromtimestamp(hour, UTC), settings.carbon_g_per_kwh)


def attribute(
    samples: Mapping[str, Sequence[tuple[float, float]]],
    gpu_counts: Mapping[str, int],
    holdings: Iterable[Holding],
    start: float,
    end: float,
    settings: PowerSettings,
    hourly_carbon: Mapping[datetime, float] | None = None,
) -> Attribution:
    """Each machine's energy over [start, end] from its samples, shared by GPU holdings."""
    hourly_carbon = hourly_carbon or {}
    meters = {m: EnergyMeter(s) for m, s in samples.items()}
    tenants: dict[str, TenantEnergy] = defaultdict(TenantEnergy)
    held_j: dict[tuple[str, int], float] = defaultdict(float)  # (machine, hour) -> joules attributed
    for h in holdings:
        meter, count = meters.get(h.machine), gpu_counts.get(h.machine, 0)
        if meter is None or not count:
            continue
        share = min(h.gpus, count) / count
        t = tenants[h.tenant]
        for hour, t0, t1 in _hours(max(h.start, start), min(h.end, end)):
            kwh = meter.joules(t0, t1) * share / J_PER_KWH
            t.by_hour[hour] = t.by_hour.get(hour, 0.0) + kwh
            t.by_machine[h.machine] = t.by_machine.get(h.machine, 0.0) + kwh
            t.by_scheduler[h.scheduler] = t.by_scheduler.get(h.scheduler, 0.0) + kwh
            held_j[(h.machine, hour)] += kwh * J_PER_KWH
    overhead = TenantEnergy()
    machines_kwh: dict[str, float] = {}
    for machine, meter in meters.items():
        machines_kwh[machine] = meter.joules(start, end) / J_PER_KWH
        for hour, t0, t1 in _hours(start, end):
            kwh = max(0.0, meter.joules(t0, t1) - held_j.get((machine, hour), 0.0)) / J_PER_KWH
            if kwh:
                overhead.by_hour[hour] = overhead.by_hour.get(hour, 0.0) + kwh
                overhead.by_machine[machine] = overhead.by_machine.get(machine, 0.0) + kwh
    for e in [*tenants.values(), overhead]:
        e.it_kwh = sum(e.by_hour.values())
        e.facility_kwh = e.it_kwh * settings.pue
        e.water_l = e.it_kwh * settings.water_l_per_kwh
        e.co2e_kg = (
            sum(kwh * carbon_g_per_kwh(settings, hourly_carbon, hr) for hr, kwh in e.by_hour.items()) / 1000
        )
    return Attribution(start, end, dict(tenants), overhead, machines_kwh)
