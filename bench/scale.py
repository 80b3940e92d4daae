"""Factory scale: how each layer grows with the site. Prints figures and ratios; asserts nothing.

  .venv/bin/python bench/scale.py [--layers validate] [--sizes 64,256,1024] [--repeat 3]
  .venv/bin/python bench/scale.py --layers all --site sites/local.yaml   # the local site up and deployed

Layers (--layers, comma-separated, or `all`):
- `validate`: `site validate` of a generated site file (`aifactory site generate`) in-process at
  --sizes servers, best of --repeat, and the CLI end to end at the largest size. Needs nothing.
- `pulumi`: `pulumi up` from nothing and a no-change preview of a BMC-only site at --pulumi-sizes
  machines against the engine's floor (bench/pulumi.py; 16 machines share an emulated BMC process).
- `operator`: the tenant operator at --operator-sizes tenants created at once, sized for the
  256-server sites/scale.yaml (bench/operator.py --capacity-of: all Ready, memory, ratio to its
  floor). Needs a deployed site; stop its `operator start` first.
- `kueue`: Kueue's admission of --kueue-jobs one-GPU Jobs for each of --kueue-tenants tenants
  (bench/kueue.py). Needs a deployed site.
- `quick`: `aifactory validate --level quick` of one host and of all the site's hosts, and the cost
  each host adds (bench/validate.py). Needs a deployed site.
- `configure`: `aifactory configure`, first and idempotent, at 2, 4 and 6 GPU workers (the local-site
  shape), against the `ansible all -m setup` floor (bench/configure.py, scratch sites).

Each curve prints the growth ratio against its smallest size: (t_n / t_small) / (n / small), 1.0
for linear growth, above 1 superlinear; the sub-benchmarks print their ratios to their floors.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from aifactory.site.generate import generate, write  # noqa: E402
from aifactory.site.validate import check  # noqa: E402


def best_of(repeat: int, fn) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def curve(title: str, points: list[tuple[int, float]], unit: str = "machine") -> None:
    print(f"\n{title}")
    print(f"  {unit + 's':>8}  {'seconds':>8}  {'ms/' + unit:>10}  {'growth vs ' + str(points[0][0]):>14}")
    n0, t0 = points[0]
    for n, t in points:
        growth = (t / t0) / (n / n0)
        print(f"  {n:>8}  {t:>8.3f}  {1000 * t / n:>10.2f}  {growth:>14.2f}")


def sub_bench(script: str, *argv: str) -> str:
    """Run bench/<script> with `argv`, its output shown as it comes; the output."""
    print(f"\n$ bench/{script} {' '.join(argv)}", flush=True)
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / script), *argv], stdout=subprocess.PIPE, text=True, check=False
    )
    print(proc.stdout, end="", flush=True)
    if proc.returncode:
        print(f"  (bench/{script} exited {proc.returncode})")
    return proc.stdout


SCALE_SITE = REPO / "sites" / "scale.yaml"  # 256 GPU servers: the operator's tenants are sized for it


def operator_curve(site: str, sizes: list[int]) -> None:
    points, floors = [], []
    for n in sizes:
        out = sub_bench(
            "operator.py",
            "--site",
            site,
            "--tenants",
            str(n),
            "--rounds",
            "1",
            "--capacity-of",
            str(SCALE_SITE),
        )
        ready = re.search(r"all Ready \(median of \d+ rounds\):\s+([\d.]+) s", out)
        floor = re.search(r"floor \(the run's requests, direct\):\s+([\d.]+) s", out)
        if ready and floor:
            points.append((n, float(ready.group(1))))
            floors.append((n, float(floor.group(1))))
    if points:
        curve("tenant operator: all tenants Ready", points, unit="tenant")
        curve("tenant operator floor: the same requests, made directly", floors, unit="tenant")


def pulumi_curve(sizes: list[int]) -> None:
    figures = {}
    for n in sizes:
        out = sub_bench("pulumi.py", "--machines", str(n))
        if found := re.search(r"^\{$.*", out, re.M | re.S):  # the figures: JSON after pulumi's output
            figures[n] = json.loads(found.group(0))
    curves = {
        "pulumi: up from nothing, BMC-only site": lambda f, n: f[f"bmc_only_{n}_machines"][
            "up_from_nothing_s"
        ],
        "pulumi engine floor: up from nothing": lambda f, n: f["floor"]["up_from_nothing_s"],
        "pulumi engine floor: up from nothing, PULUMI_SKIP_CHECKPOINTS": lambda f, n: f["floor"][
            "up_from_nothing_skip_checkpoints_s"
        ],
        "pulumi: no-change preview of a BMC-only site": lambda f, n: f[f"bmc_only_{n}_machines"][
            "no_change_preview_s"
        ],
        "pulumi engine floor: no-change preview": lambda f, n: f["floor"]["no_change_preview_s"],
    }
    if figures:
        for title, get in curves.items():
            curve(title, [(n, get(f, n)) for n, f in sorted(figures.items())])
        print("\n  machines  up / floor  preview / floor")
        for n, f in sorted(figures.items()):
            print(f"  {n:>8}  {f['up_to_floor_ratio']:>10.2f}  {f['preview_to_floor_ratio']:>15.2f}")


def validate_curve(sizes: list[int], repeat: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="aifactory-scale-"))

    points = []
    files = {}
    for n in sizes:
        files[n] = tmp / f"scale-{n}.yaml"
        write(generate("scale", n), files[n])
        points.append((n, best_of(repeat, lambda f=files[n]: check(f))))
    curve("site validate (in-process check of the site file)", points)

    largest = sizes[-1]
    argv = [str(REPO / ".venv" / "bin" / "aifactory"), "site", "validate", str(files[largest])]
    cli = best_of(repeat, lambda: subprocess.run(argv, check=True, capture_output=True))
    print(f"\n`aifactory site validate`, {largest} GPU servers, end to end: {cli:.2f} s (target: < 5 s)")


LAYERS = ("validate", "pulumi", "operator", "kueue", "quick", "configure")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", default="validate", help=f"comma-separated of {', '.join(LAYERS)}, or all")
    ap.add_argument("--site", default=str(REPO / "sites" / "local.yaml"), help="the deployed site to use")
    ap.add_argument("--sizes", default="64,256,1024", help="GPU servers per site file (comma-separated)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per size; the best is kept")
    ap.add_argument("--pulumi-sizes", default="64,256,512", help="machines of the BMC-only sites")
    ap.add_argument("--operator-sizes", default="200,1000", help="tenants created at once")
    ap.add_argument("--kueue-tenants", default="10,50", help="tenants of the admission runs")
    ap.add_argument("--kueue-jobs", default="20", help="one-GPU Jobs per tenant")
    args = ap.parse_args()
    layers = LAYERS if args.layers == "all" else tuple(args.layers.split(","))
    unknown = set(layers) - set(LAYERS)
    if unknown:
        ap.error(f"unknown layer(s) {', '.join(sorted(unknown))}; known: {', '.join(LAYERS)}")

    def ints(text: str) -> list[int]:
        return [int(s) for s in text.split(",")]

    if "validate" in layers:
        validate_curve(ints(args.sizes), args.repeat)
    if "pulumi" in layers:
        pulumi_curve(ints(args.pulumi_sizes))
    if "operator" in layers:
        operator_curve(args.site, ints(args.operator_sizes))
    if "kueue" in layers:
        sub_bench("kueue.py", "--site", args.site, "--tenants", args.kueue_tenants, "--jobs", args.kueue_jobs)
    if "quick" in layers:
        sub_bench("validate.py", "--site", args.site)
    if "configure" in layers:
        sub_bench("configure.py")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
