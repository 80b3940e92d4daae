"""Benchmark of `aifactory configure` (playbooks/site.yml). Prints figures and ratios; asserts nothing.

  .venv/bin/python bench/configure.py [--index 8] [--workers 2,4,6] [--quick]

Scratch sites of the local site's shape on scratch index --index (bridge aftest<index>,
198.19.<index>.0/24, BMC ports 8201 + 100 * index onwards), one after the other: the head and each
--workers count of GPU workers (half slurm pool, half kubernetes pool; 6 is the local site itself).
For each: a first `configure` on freshly booted hosts, then five idempotent ones (every host answers
that it is as the first left it: site.yml is skipped) each after the floor it is compared with
(`ansible all -m setup`, one module on every host), the best of each kept, and, unless --quick, a
last run that runs every task anyway (AIFACTORY_CONFIGURE_FULL: its change count is the playbooks'
idempotence, 0 expected); then how they grow from the smallest site: the ratio of the times and
the seconds each extra worker adds. Site up/down are not timed (bench/site.py times those).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from aifactory import configure  # noqa: E402
from aifactory.site.validate import load_site  # noqa: E402
from sandbox import localsite  # noqa: E402
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
REPEAT = 5


def setup_floor(site) -> float:
    """`ansible all -m setup` on the site: one module on every host, what an idempotent run is held to."""
    ansible = Path(sys.executable).parent / "ansible"
    env = {**os.environ, "ANSIBLE_PIPELINING": "True", "ANSIBLE_FORKS": "16"}
    start = time.monotonic()
    subprocess.run(
        [str(ansible), "all", "-i", str(configure.inventory_for(site)), "-m", "setup"],
        check=True,
        capture_output=True,
        env=env,
    )
    return time.monotonic() - start


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
        floors, seconds = [], []
        for _ in range(REPEAT):  # interleaved, so that both see the same machine
            floors.append(setup_floor(site))
            seconds.append(configure.run_playbook(site, "site.yml", progress=quiet))
        floor, second = min(floors), min(seconds, key=lambda r: r.seconds)
        third = configure.run_playbook(site, "site.yml", full=True, progress=quiet) if full else None
    finally:
        localsite.down(site, progress=quiet)
    workers = sum(1 for m in site.machines if m.pool)
    figures: dict[str, object] = {
        "machines": len(site.machines),
        "gpu_workers": workers,
        "first_s": round(first.seconds, 1),
        "first_changes": first.changed,
        "setup_floor_s": round(floor, 2),
        "setup_floor_spread_s": spread(floors),
        "idempotent_s": round(second.seconds, 2),
        "idempotent_spread_s": spread([r.seconds for r in seconds]),
        "idempotent_changes": max(r.changed for r in seconds),
        "idempotent_over_setup_floor": round(second.seconds / floor, 2),
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
        extra = big["gpu_workers"] - small["gpu_workers"]  # type: ignore[operator]
        return {
            "gpu_workers": f"{small['gpu_workers']} -> {big['gpu_workers']}",
            "first_ratio": round(big["first_s"] / small["first_s"], 2),  # type: ignore[operator]
            "idempotent_ratio": round(big["idempotent_s"] / small["idempotent_s"], 2),  # type: ignore[operator]
            "setup_floor_ratio": round(big["setup_floor_s"] / small["setup_floor_s"], 2),  # type: ignore[operator]
            "first_s_per_extra_worker": round((big["first_s"] - small["first_s"]) / extra, 1),  # type: ignore[operator]
            "idempotent_s_per_extra_worker": round(
                (big["idempotent_s"] - small["idempotent_s"]) / extra,  # type: ignore[operator]
                2,
            ),
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
