"""Factory scale: how each layer grows with the site. Prints figures and ratios; asserts nothing.

  .venv/bin/python bench/scale.py [--sizes 64,256,1024] [--repeat 3]

Curves measured so far (issue 19 adds the others as they are built):
- `site validate`: the whole check of a generated site file (`aifactory site generate`) in-process,
  best of --repeat, and the CLI end to end (interpreter start included) at the largest size.

Each curve prints the time per machine at every size and the growth ratio against the smallest
size: (t_n / t_small) / (n / small), 1.0 for linear growth, above 1 superlinear.
"""

from __future__ import annotations

import argparse
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


def curve(title: str, points: list[tuple[int, float]]) -> None:
    print(f"\n{title}")
    print(f"  {'machines':>8}  {'seconds':>8}  {'ms/machine':>10}  {'growth vs ' + str(points[0][0]):>14}")
    n0, t0 = points[0]
    for n, t in points:
        growth = (t / t0) / (n / n0)
        print(f"  {n:>8}  {t:>8.3f}  {1000 * t / n:>10.2f}  {growth:>14.2f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="64,256,1024", help="GPU servers per site (comma-separated)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per size; the best is kept")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="aifactory-scale-"))

    points = []
    files = {}
    for n in sizes:
        files[n] = tmp / f"scale-{n}.yaml"
        write(generate("scale", n), files[n])
        points.append((n, best_of(args.repeat, lambda f=files[n]: check(f))))
    curve("site validate (in-process check of the site file)", points)

    largest = sizes[-1]
    argv = [str(REPO / ".venv" / "bin" / "aifactory"), "site", "validate", str(files[largest])]
    cli = best_of(args.repeat, lambda: subprocess.run(argv, check=True, capture_output=True))
    print(f"\n`aifactory site validate`, {largest} GPU servers, end to end: {cli:.2f} s (target: < 5 s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
