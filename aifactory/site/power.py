"""What a site's machines may draw: per-machine idle and maximum watts, and each feed's worst case.

A machine's figures are the site file's (`machines[].power`) where it gives them, else estimated:
its host (CPUs, memory, fans, NICs) from its CPU count, plus its GPUs from their model's figures
(gpus.GPU_MODELS, or the site's `power.gpu_models`). A machine on several feeds (A+B supplies) is
counted in full on each: either must carry it alone when the other fails.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from aifactory.site.gpus import GPU_MODELS
from aifactory.site.model import Feed, Machine, PowerRange, PowerSettings, Site

# The host part of a server, per CPU thread on top of a fixed base: a 2-socket, 112-core server
# (224 threads) comes to ~370 W idle and ~1.6 kW at most; a site file gives measured figures.
HOST_IDLE_W, HOST_IDLE_W_PER_THREAD = 150, 1
HOST_MAX_W, HOST_MAX_W_PER_THREAD = 300, 6
FEED_WARNING_SHARE = 0.9  # a feed's worst case above this share of its rating is a WARNING


def gpu_power(settings: PowerSettings, model: str) -> PowerRange:
    override = settings.gpu_models.get(model)
    if override:
        return override
    m = GPU_MODELS[model]
    return PowerRange(m.idle_w, m.max_w)


def machine_power(settings: PowerSettings, machine: Machine) -> PowerRange:
    if machine.power:
        return machine.power
    host, gpu = parts(settings, machine)
    n = machine.gpu_count
    return PowerRange(host.idle_w + n * gpu.idle_w, host.max_w + n * gpu.max_w)


def parts(settings: PowerSettings, machine: Machine) -> tuple[PowerRange, PowerRange]:
    """The host's share of the machine's draw, and one GPU's (0 W without GPUs). Where the site
    file gives the whole machine's figures, the host's share is what its GPUs leave of them."""
    gpu = PowerRange(0, 0)
    if machine.gpu_model and machine.gpu_count:
        gpu = gpu_power(settings, machine.gpu_model)
    n, whole = machine.gpu_count, machine.power
    if whole:
        host = PowerRange(max(0, whole.idle_w - n * gpu.idle_w), max(0, whole.max_w - n * gpu.max_w))
    else:
        host = host_estimate(machine.cpus)
    return host, gpu


def host_estimate(threads: int) -> PowerRange:
    """A server's host part (CPUs, memory, fans, NICs) from its CPU threads, without its GPUs."""
    return PowerRange(
        HOST_IDLE_W + HOST_IDLE_W_PER_THREAD * threads, HOST_MAX_W + HOST_MAX_W_PER_THREAD * threads
    )


def worst_w(settings: PowerSettings, machine: Machine) -> int:
    """The most the machine can draw: its maximum (its GPUs at their power limit where one is
    set), or the node power limit its BMC holds it to."""
    most = machine_power(settings, machine).max_w
    if machine.gpu_power_limit_w and machine.gpu_model:  # the GPUs held below their maximum
        gpu = gpu_power(settings, machine.gpu_model).max_w
        most -= machine.gpu_count * max(0, gpu - machine.gpu_power_limit_w)
    return min(most, machine.power_limit_w) if machine.power_limit_w else most


@dataclass(frozen=True)
class FeedLoad:
    feed: Feed
    worst_w: int  # every machine on it at its maximum (or its power limit)

    @property
    def share(self) -> float:
        return self.worst_w / (self.feed.kw * 1000)


def feed_loads(site: Site) -> list[FeedLoad]:
    by_name = {m.name: m for m in site.machines}
    return [FeedLoad(f, sum(worst_w(site.power, by_name[n]) for n in f.machines)) for f in site.power.feeds]


def read_carbon_file(path: Path) -> dict[datetime, float]:
    """Hourly grid intensities (gCO2e/kWh) from CSV rows `timestamp,value` (ISO 8601, UTC when no
    offset is given; a header row is allowed). Raises ValueError naming the bad line."""
    out: dict[datetime, float] = {}
    with path.open(newline="") as f:
        for n, row in enumerate(csv.reader(f), 1):
            if not row or row[0].startswith("#"):
                continue
            try:
                ts = datetime.fromisoformat(row[0].strip().replace("Z", "+00:00"))
                value = float(row[1])
            except (ValueError, IndexError):
                if n == 1:
                    continue  # a header
                raise ValueError(f"{path}:{n}: not 'timestamp,gCO2e per kWh': {','.join(row)!r}") from None
            if value < 0:
                raise ValueError(f"{path}:{n}: a negative intensity {value}")
            if ts.tzinfo is None:
                ts = ts.replace(tzinfo=UTC)
            out[ts.astimezone(UTC).replace(minute=0, second=0, microsecond=0)] = value
    return out
