"""Benchmark of `aifactory validate --level quick`: one host against all hosts of a site.

  .venv/bin/python bench/validate.py [--site FILE] [--repeat N]

The site must be up and configured (default: sites/local.yaml). Prints the median wall time of a
quick validation of one slurm-pool machine and of every machine, and their ratio: the probes run
in parallel across hosts, so all hosts should cost little more than one. Asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from aifactory.site.validate import load_site  # noqa: E402
from aifactory.validate import runner  # noqa: E402


def timed_run(site, limit: str | None) -> tuple[float, int, int]:
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.monotonic()
        result = runner.run(site, "quick", limit=limit, report_dir=Path(tmp), progress=lambda _: None)
        return time.monotonic() - t0, len(result.records), result.exit_code


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--site", type=Path, default=REPO / "sites" / "local.yaml")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    site = load_site(args.site)
    one = (site.in_pool("slurm") or list(site.machines))[0].name
    timed_run(site, None)  # warm: ControlMaster connections, imports, kubeconfig
    figures: dict[str, object] = {"site": site.name, "machines": len(site.machines)}
    for label, limit in ((f"1_host_{one}", one), (f"all_{len(site.machines)}_hosts", None)):
        runs = [timed_run(site, limit) for _ in range(args.repeat)]
        figures[f"quick_{label}_s"] = round(statistics.median(r[0] for r in runs), 2)
        figures[f"quick_{label}_records"] = runs[0][1]
        figures[f"quick_{label}_exit"] = runs[0][2]
    keys = [k for k in figures if k.endswith("_s")]
    figures["ratio_all_to_1_host"] = round(figures[keys[1]] / figures[keys[0]], 2)  # type: ignore[operator]
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
