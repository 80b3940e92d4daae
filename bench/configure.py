"""Benchmark of `aifactory configure` (playbooks/site.yml). Prints figures and ratios; asserts nothing.

  .venv/bin/python bench/configure.py [--index 8] [--workers 2,4,6] [--quick]

Scratch sites of the local site's shape on scratch index --index (bridge aftest<index>,
198.19.<index>.0/24, BMC ports 8201 + 100 * index onwards), one after the other: the head and each
--workers count of GPU workers (half slurm pool, half kubernetes pool; 6 is the local site itself).
For each: a first `configure` on freshly booted hosts, then seven idempotent ones (every host answers
that it is as the first left it: site.yml is skipped) each after the floor it is compared with
(`ansible all -m setup`, one module on every host) and the least Ansible does on every host
(`ansible all -m raw -a true`: how any run over Ansible grows with the hosts, with nothing of ours
in it), the best of each kept, and, unless --quick, a
last run that runs every task anyway (AIFACTORY_CONFIGURE_FULL: its change count is the playbooks'
idempotence, 0 expected); then how they grow from the smallest site: the ratio of the times and
the seconds each extra worker adds. Site up/down are not timed (bench/site.py times those).

Every run's CPU time is printed beside its wall time: the controller's (this process and the
ansible processes it waited for) and the hosts' (their cgroups, less what the idle hosts' own
services used over as long a time, measured before). The hosts share this machine's cores with the
controller here, unlike a real site's servers: the CPU figures show how much of the growth that is.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from aifactory import configure  # noqa: E402
from aifactory.site.validate import load_site  # noqa: E402
from sandbox import hosts, localsite  # noqa: E402
from sandbox.power_meter import cpu_seconds  # noqa: E402
from sandbox.scratch import scratch_site  # noqa: E402


def quiet(_: str) -> None:
    pass


def shape(name: str, index: int, workers: int | None) -> dict:
    """The local site on scratch index `index`; `workers` keeps the head and that many GPU workers."""
    data = scratch_site(name, index, None if workers is None else workers + 1)
    if workers is not None:  # both pools populated, as on the local site
        for i, m in enumerate(data["machines"][1:]):
            m["pool"] = "slurm" if i < (workers + 1) // 2 else "kubernetes"
    return data


# Runs of a second or so vary by a third on a 2-core machine: the idempotent run and its floor are
# each timed this many times, and the best is kept (the spread is printed too).
REPEAT = 7


def hosts_cpu_s(site) -> float:
    return sum(cpu_seconds(hosts.cpu_cgroup(site, m.name)) or 0.0 for m in site.machines)


def controller_cpu_s() -> float:
    """User + system seconds of this process and of the children it has waited for (ansible-playbook,
    and through it its forks)."""
    return sum(
        u.ru_utime + u.ru_stime
        for u in (resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN))
    )


def idle_cores(site, seconds: float = 5.0) -> float:
    """The cores the idle hosts' own services (kubelet, etcd, slurmd...) use, on average over `seconds`."""
    before = hosts_cpu_s(site)
    time.sleep(seconds)
    return (hosts_cpu_s(site) - before) / seconds


T = TypeVar("T")


@dataclass
class Timed:
    seconds: float
    controller_cpu_s: float
    hosts_cpu_s: float  # less the idle hosts' own use over as long

    def cpu(self) -> dict[str, float]:
        return {"controller": round(self.controller_cpu_s, 2), "hosts": round(self.hosts_cpu_s, 2)}


def timed(site, idle: float, run: Callable[[], T]) -> tuple[T, Timed]:
    cpu, on_hosts, start = controller_cpu_s(), hosts_cpu_s(site), time.monotonic()
    value = run()
    seconds = time.monotonic() - start
    spent = Timed(seconds, controller_cpu_s() - cpu, hosts_cpu_s(site) - on_hosts - idle * seconds)
    return value, spent


def ansible_floor(site, *module: str) -> None:
    """`ansible all -m MODULE` on the site, with the settings configure runs with."""
    ansible = Path(sys.executable).parent / "ansible"
    env = {**os.environ, "ANSIBLE_PIPELINING": "True", "ANSIBLE_FORKS": "16"}
    subprocess.run(
        [str(ansible), "all", "-i", str(configure.inventory_for(site)), "-m", *module],
        check=True,
        capture_output=True,
        env=env,
    )


def setup_floor(site) -> None:
    """`ansible all -m setup`: one module on every host, what an idempotent run is held to."""
    ansible_floor(site, "setup")


def raw_floor(site) -> None:
    """`ansible all -m raw -a true`: the least Ansible can do on every host (no module, no Python),
    the floor of how a run over Ansible grows with the hosts."""
    ansible_floor(site, "raw", "-a", "true")


def spread(times: list[float]) -> str:
    return f"{min(times):.2f}-{max(times):.2f}"


def measure(data: dict, directory: Path, full: bool) -> dict[str, object]:
    path = directory / f"{data['name']}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    site = load_site(path)
    localsite.down(site, progress=quiet)
    try:
        assert localsite.up(site, power_on=True, progress=quiet) == 0, f"site up {site.name} failed"
        first = configure.run_playbook(site, "site.yml", progress=quiet)
        idle = idle_cores(site)
        floors, raws, seconds = [], [], []
        said: list[str] = []
        for _ in range(REPEAT):  # interleaved, so that all see the same machine
            floors.append(timed(site, idle, lambda: setup_floor(site))[1])
            raws.append(timed(site, idle, lambda: raw_floor(site))[1])
            seconds.append(
                timed(site, idle, lambda: configure.run_playbook(site, "site.yml", progress=said.append))
            )
        # The best of seven would hide a run that was not skipped: counted, with what differed.
        # (configure prints "  <host>: <why>" before the tasks' "  [ n] <task>")
        ran = [line for line in said if line.startswith("  ") and not line.startswith(("  [", "   "))]
        floor = min(floors, key=lambda t: t.seconds)
        raw = min(raws, key=lambda t: t.seconds)
        spent = min((t for _, t in seconds), key=lambda t: t.seconds)
        third = configure.run_playbook(site, "site.yml", full=True, progress=quiet) if full else None
    finally:
        localsite.down(site, progress=quiet)
    workers = sum(1 for m in site.machines if m.pool)
    figures: dict[str, object] = {
        "machines": len(site.machines),
        "gpu_workers": workers,
        "first_s": round(first.seconds, 1),
        "first_changes": first.changed,
        "setup_floor_s": round(floor.seconds, 2),
        "setup_floor_spread_s": spread([t.seconds for t in floors]),
        "setup_floor_cpu_s": floor.cpu(),
        "raw_floor_s": round(raw.seconds, 2),
        "raw_floor_spread_s": spread([t.seconds for t in raws]),
        "raw_floor_cpu_s": raw.cpu(),
        "idempotent_s": round(spent.seconds, 2),
        "idempotent_spread_s": spread([t.seconds for _, t in seconds]),
        "idempotent_changes": max(r.changed for r, _ in seconds),
        "idempotent_not_skipped": REPEAT - sum("nothing to do" in line for line in said),
        "idempotent_not_skipped_why": ran[:5],
        "idempotent_cpu_s": spent.cpu(),
        "idle_hosts_cores": round(idle, 2),
        "idempotent_over_setup_floor": round(spent.seconds / floor.seconds, 2),
        "idempotent_over_raw_floor": round(spent.seconds / raw.seconds, 2),
    }
    if third:
        figures["every_task_s"] = round(third.seconds, 1)
        figures["every_task_changes"] = third.changed
    return figures


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--index", type=int, default=8, help="scratch index (default 8: aftest8, 198.19.8.0/24)")
    ap.add_argument("--workers", default="2,4,6", help="GPU workers of each site (default 2,4,6)")
    ap.add_argument("--quick", action="store_true", help="skip the third run (every task, no skipping)")
    args = ap.parse_args()
    sizes = sorted(int(n) for n in args.workers.split(","))
    if len(sizes) < 2 or sizes[0] < 2:
        ap.error("--workers needs two or more counts of at least 2 (both pools need a worker)")
    tmp = Path(tempfile.mkdtemp(prefix="bench-configure-"))
    start = time.monotonic()
    runs = [measure(shape(f"benchcfg{n}", args.index, n), tmp, not args.quick) for n in sizes]
    small = runs[0]

    def growth(big: dict[str, object]) -> dict[str, object]:
        def value(run: dict[str, object], *path: str) -> float:
            found: object = run
            for key in path:
                found = found[key]  # type: ignore[index]
            return float(found)  # type: ignore[arg-type]

        def ratio(*path: str) -> float | None:
            """big / small at this key (several keys: a nested one); none where small rounded to 0."""
            below = value(small, *path)
            return round(value(big, *path) / below, 2) if below > 0 else None

        def per_extra_worker(key: str, digits: int) -> float:
            extra = value(big, "gpu_workers") - value(small, "gpu_workers")
            return round((value(big, key) - value(small, key)) / extra, digits)

        return {
            "gpu_workers": f"{small['gpu_workers']} -> {big['gpu_workers']}",
            "first_ratio": ratio("first_s"),
            "idempotent_ratio": ratio("idempotent_s"),
            "setup_floor_ratio": ratio("setup_floor_s"),
            "raw_floor_ratio": ratio("raw_floor_s"),
            "raw_floor_controller_cpu_ratio": ratio("raw_floor_cpu_s", "controller"),
            "idempotent_controller_cpu_ratio": ratio("idempotent_cpu_s", "controller"),
            "idempotent_hosts_cpu_ratio": ratio("idempotent_cpu_s", "hosts"),
            "idle_hosts_cores_ratio": ratio("idle_hosts_cores"),
            "first_s_per_extra_worker": per_extra_worker("first_s", 1),
            "idempotent_s_per_extra_worker": per_extra_worker("idempotent_s", 2),
        }

    figures: dict[str, object] = {
        "sites": {f"{r['gpu_workers']}_workers": r for r in runs},
        "growth": [growth(r) for r in runs[1:]],
        "bench_wall_s": round(time.monotonic() - start),
    }
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
