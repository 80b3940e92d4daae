"""What an emulated server's power supplies would measure, from what its host is really doing.

A real BMC reads its power supplies; an emulated one derives a plausible draw from its nspawn host:

- the host part: idle, plus (maximum - idle) x CPU utilisation, where utilisation is the CPU time
  the host's cgroup used over the last WINDOW_S seconds, as a share of this machine's real CPUs;
- the GPU part: every emulated GPU draws its idle figure, and its maximum while a Slurm job or a
  pod holds it (a process of the host was handed it: `SLURM_JOB_GPUS` from Slurm's gres plugin,
  `NVIDIA_VISIBLE_DEVICES` from the device plugin; a real workload would be busy on it);
- never above the power limit that is set (a real BMC throttles the CPUs and GPUs to hold it);
- nothing while the machine is off.

Figures come from the site file (aifactory.site.power), passed in the BMC's config. A BMC-only
site (no hosts) reports idle while on.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

WINDOW_S = 5.0  # utilisation averaged over this long: a reading is steady, and follows load in seconds
SAMPLE_S = 1.0
GPU_ENV = ("SLURM_JOB_GPUS", "NVIDIA_VISIBLE_DEVICES")


@dataclass(frozen=True)
class Figures:
    host_idle_w: int
    host_max_w: int
    gpu_idle_w: int
    gpu_max_w: int
    gpu_count: int

    @property
    def idle_w(self) -> int:
        return self.host_idle_w + self.gpu_count * self.gpu_idle_w

    @property
    def max_w(self) -> int:
        return self.host_max_w + self.gpu_count * self.gpu_max_w


def cpu_seconds(cgroup: Path) -> float | None:
    """CPU time used by everything in the cgroup: cgroup2 `cpu.stat`, or v1 `cpuacct.usage`."""
    try:
        if (cgroup / "cpu.stat").exists():
            for line in (cgroup / "cpu.stat").read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "usage_usec":
                    return int(value) / 1e6
        return int((cgroup / "cpuacct.usage").read_text()) / 1e9
    except (OSError, ValueError):
        return None  # the host is not running


def _pids(cgroup: Path) -> set[int]:
    out: set[int] = set()
    for d, _, _ in os.walk(cgroup):
        try:
            out.update(int(p) for p in Path(d, "cgroup.procs").read_text().split())
        except (OSError, ValueError):
            continue  # gone meanwhile
    return out


def _gpu_indexes(value: str) -> set[int]:
    return {int(v) for v in value.split(",") if v.strip().isdigit()}


def held_gpus(cgroup: Path, count: int) -> set[int]:
    """Indexes of the host's GPUs that some process in it was handed."""
    held: set[int] = set()
    for pid in _pids(cgroup):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        for entry in environ.split(b"\0"):
            name, _, value = entry.decode(errors="replace").partition("=")
            if name in GPU_ENV:
                held |= _gpu_indexes(value)
    return {i for i in held if i < count}


class PowerMeter:
    """Samples the host's CPU time every SAMPLE_S seconds (a thread), and gives the draw on demand."""

    def __init__(self, figures: Figures, cgroup: Path | None, cpus: int | None = None):
        self.figures, self.cgroup = figures, cgroup
        self.cpus = cpus or os.cpu_count() or 1
        self._samples: deque[tuple[float, float]] = deque()
        self._lock = threading.Lock()
        if cgroup is not None:
            threading.Thread(target=self._sample, name="power-meter", daemon=True).start()

    def _sample(self) -> None:
        assert self.cgroup is not None
        while True:
            used, now = cpu_seconds(self.cgroup), time.monotonic()
            with self._lock:
                if used is None:
                    self._samples.clear()
                else:
                    self._samples.append((now, used))
                    while self._samples and self._samples[0][0] < now - WINDOW_S:
                        self._samples.popleft()
            time.sleep(SAMPLE_S)

    def cpu_utilisation(self) -> float:
        with self._lock:
            if len(self._samples) < 2:
                return 0.0
            (t0, u0), (t1, u1) = self._samples[0], self._samples[-1]
        return min(1.0, max(0.0, (u1 - u0) / (t1 - t0) / self.cpus))

    def draw_w(self, powered: bool, limit_w: int | None) -> int:
        if not powered:
            return 0
        f = self.figures
        held = len(held_gpus(self.cgroup, f.gpu_count)) if self.cgroup is not None else 0
        watts = f.host_idle_w + (f.host_max_w - f.host_idle_w) * self.cpu_utilisation()
        watts += f.gpu_count * f.gpu_idle_w + held * (f.gpu_max_w - f.gpu_idle_w)
        return round(min(watts, limit_w) if limit_w else watts)
