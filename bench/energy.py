"""Benchmark of energy accounting: the collector's cost and the report's run time. Asserts nothing.

  .venv/bin/python bench/energy.py [--site sites/local.yaml] [--bmcs 256] [--window 60] [--nodes 256]

1. The collector (the power exporter, playbooks/roles/power_exporter) on a configured site: the CPU
   time of the running service on the head over --window seconds (its process' utime + stime),
   as CPU seconds per hour of collection for the site's BMCs. Skipped when the site is not up.
2. The same exporter, run here against --bmcs emulated BMCs (a generated BMC-only site, 16
   machines per BMC process, every machine powered on): CPU seconds per hour, the time of one round
   of readings, and the ratio per BMC to the site's.
3. The report: a month of samples at the step Prometheus would answer with (sources.step_for) for
   --nodes 8-GPU machines, four jobs a day on each, through attribution and every format; the
   run time of each step. The Prometheus query itself is not in it (no month of samples here).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from aifactory.energy import report, sources  # noqa: E402
from aifactory.energy.attribution import Holding  # noqa: E402
from aifactory.site.generate import generate, write  # noqa: E402
from aifactory.site.model import Site  # noqa: E402
from aifactory.site.validate import load_site  # noqa: E402
from sandbox import bmc, ssh  # noqa: E402
from tests.unit.emulated_bmcs import exporter_bmcs, generated_site  # noqa: E402

EXPORTER = REPO / "playbooks" / "roles" / "power_exporter" / "files" / "aifactory-power-exporter.py"
TICKS = os.sysconf("SC_CLK_TCK")
USER, PASSWORD = "admin", "bench-secret"


def cpu_seconds(stat: str) -> float:
    """utime + stime of a /proc/PID/stat line."""
    fields = stat[stat.rfind(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def site_collector(site: Site, window: float) -> dict | None:
    head = site.with_role("head")[0].name
    script = "cat /proc/$(systemctl show -p MainPID --value aifactory-power-exporter)/stat"
    first = ssh.run(site, head, script, timeout=30)
    if first.returncode != 0:
        return None
    time.sleep(window)
    second = ssh.run(site, head, script, timeout=30)
    used = cpu_seconds(second.stdout) - cpu_seconds(first.stdout)
    return {"bmcs": len(site.machines), "cpu_s_per_hour": round(used / window * 3600, 2)}


def emulated_collector(count: int, window: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-energy-") as tmp:
        site = generated_site(Path(tmp), "benchenergy", count, machines_per_bmc=16)
        machines = site.machines[:count]
        state = Path(tmp) / "state"
        bmc.start_bmcs(site, state, USER, PASSWORD, hook=["true"], timeout=120)
        try:
            for m in machines:
                bmc.set_power(m, USER, PASSWORD, "On")
            config = {
                "interval": 10,
                "feeds": [{"name": "all", "watts": 10**7, "machines": [m.name for m in machines]}],
                "bmcs": exporter_bmcs(machines, USER, PASSWORD),
            }
            path = Path(tmp) / "power-exporter.json"
            path.write_text(json.dumps(config))
            port = 9561 + 1000 + os.getpid() % 1000
            proc = subprocess.Popen(
                [sys.executable, str(EXPORTER), "--config", str(path), "--listen", f"127.0.0.1:{port}"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                time.sleep(15)  # its first round finds each Power resource: not the steady cost
                stat = Path(f"/proc/{proc.pid}/stat")
                before = cpu_seconds(stat.read_text())
                time.sleep(window)
                used = cpu_seconds(stat.read_text()) - before
                metrics = subprocess.run(
                    ["curl", "-s", f"http://127.0.0.1:{port}/metrics"],
                    capture_output=True,
                    text=True,
                    check=False,
                ).stdout
                poll = next(
                    (
                        float(ln.split()[-1])
                        for ln in metrics.splitlines()
                        if ln.startswith("aifactory_power_exporter_poll_seconds")
                    ),
                    None,
                )
                up = sum(
                    ln.endswith(" 1") for ln in metrics.splitlines() if ln.startswith("aifactory_bmc_up")
                )
            finally:
                proc.terminate()
                proc.wait()
        finally:
            bmc.stop_bmcs(state)
    return {"bmcs": count, "answering": up, "cpu_s_per_hour": round(used / window * 3600, 2), "round_s": poll}


def month_report(nodes: int) -> dict:
    data = generate("benchmonth", nodes)
    with tempfile.TemporaryDirectory(prefix="bench-energy-") as tmp:
        site = write(data, Path(tmp) / "benchmonth.yaml")
    gpu = [m for m in site.machines if m.gpu_count][:nodes]
    start = dt.datetime(2026, 11, 1, tzinfo=dt.UTC).timestamp()
    end = dt.datetime(2026, 12, 1, tzinfo=dt.UTC).timestamp()
    step = sources.step_for(start, end)
    rng = random.Random(7)
    t0 = time.perf_counter()
    samples = {
        m.name: [(start + i * step, 2000 + rng.random() * 8000) for i in range(int((end - start) / step) + 1)]
        for m in gpu
    }
    feeds = {f.name: [(t, 0.0) for t, _ in samples[gpu[0].name]] for f in site.power.feeds}
    holdings = []
    for m in gpu:
        for day in range(30):
            for k in range(4):
                s = start + day * 86400 + k * 21600 + rng.random() * 3600
                holdings.append(
                    Holding(
                        f"tenant-{rng.randrange(50):02d}",
                        "slurm",
                        m.name,
                        rng.choice([1, 2, 4, 8]),
                        s,
                        s + rng.random() * 18000,
                        str(len(holdings)),
                    )
                )
    generated = time.perf_counter() - t0
    timings: dict[str, float] = {}
    t = time.perf_counter()
    r = report.build(site, start, end, samples, feeds, holdings)
    timings["attribute_s"] = time.perf_counter() - t
    for fmt in ("table", "json", "csv", "html"):
        t = time.perf_counter()
        report.render(r, site, fmt)
        timings[f"{fmt}_s"] = time.perf_counter() - t
    return {
        "nodes": len(gpu),
        "samples": sum(len(s) for s in samples.values()),
        "step_s": step,
        "holdings": len(holdings),
        "tenants": len(r.attribution.tenants),
        "inputs_generated_s": round(generated, 2),
        **{k: round(v, 2) for k, v in timings.items()},
        "report_total_s": round(sum(timings.values()), 2),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--site", type=Path, default=REPO / "sites" / "local.yaml", help="a configured site (part 1)"
    )
    ap.add_argument("--bmcs", type=int, default=256, help="emulated BMCs for part 2 (default 256)")
    ap.add_argument("--window", type=float, default=60, help="seconds of collection measured (default 60)")
    ap.add_argument("--nodes", type=int, default=256, help="machines in the month's report (default 256)")
    args = ap.parse_args()
    out: dict = {}
    site = load_site(args.site)
    out["site_collector"] = site_collector(site, args.window) or "skipped: the site's exporter is not running"
    out["emulated_collector"] = emulated_collector(args.bmcs, args.window)
    if isinstance(out["site_collector"], dict):
        per_site = out["site_collector"]["cpu_s_per_hour"] / out["site_collector"]["bmcs"]
        per_emul = out["emulated_collector"]["cpu_s_per_hour"] / args.bmcs
        out["per_bmc_ratio_emulated_to_site"] = round(per_emul / per_site, 2) if per_site else None
    out["month_report"] = month_report(args.nodes)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
