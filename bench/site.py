"""Benchmark of the local site and its toolchain. Prints figures and ratios; asserts nothing.

  .venv/bin/python bench/site.py [--site FILE]   (default: a scratch copy of the local site)

Figures: cold toolchain build (as recorded by the last real build of each binary), warm toolchain
check, `site up` from no state and again (warm), BMC power-on to ssh per host, and the memory of
the running site (BMCs, mirror, every host's processes).
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

from aifactory import credentials, paths, toolchain  # noqa: E402
from aifactory.site.validate import load_site  # noqa: E402
from sandbox import bmc, daemons, hosts, localsite  # noqa: E402
from sandbox.scratch import write_scratch_site  # noqa: E402


def timed(fn):
    start = time.monotonic()
    result = fn()
    return time.monotonic() - start, result


def quiet(_: str) -> None:
    pass


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--site", type=Path, help="site file (default: a scratch copy of sites/local.yaml)")
    args = ap.parse_args()
    site = load_site(args.site or write_scratch_site(Path(tempfile.mkdtemp()), "benchsite", 7))
    figures: dict[str, object] = {}

    recorded = {}
    for b in toolchain.BINARIES:
        stamp = paths.bin_dir() / ".stamps" / f"{b.name}.json"
        if stamp.exists():
            recorded[b.name] = json.loads(stamp.read_text()).get("seconds")
    figures["toolchain_build_s_per_binary"] = recorded
    figures["toolchain_cold_build_s"] = round(sum(v for v in recorded.values() if v), 1)
    figures["toolchain_warm_check_s"] = round(timed(lambda: toolchain.build(progress=quiet))[0], 2)

    localsite.down(site, progress=quiet)
    cold, rc = timed(lambda: localsite.up(site, progress=quiet))
    assert rc == 0, "site up failed"
    warm, _ = timed(lambda: localsite.up(site, progress=quiet))
    figures["site_up_cold_s"] = round(cold, 1)
    figures["site_up_warm_s"] = round(warm, 1)
    figures["warm_to_cold_ratio"] = round(warm / cold, 2)

    creds = credentials.load(site.machines[0].bmc.credentials)
    boot = []
    for m in site.machines:
        start = time.monotonic()
        bmc.set_power(m, creds.username, creds.password, "On")
        localsite.wait_for_ssh(site, m)
        boot.append(time.monotonic() - start)
    figures["power_on_to_ssh_s"] = {
        "median": round(statistics.median(boot), 2),
        "max": round(max(boot), 2),
        "hosts": len(boot),
    }
    start = time.monotonic()
    localsite.power_on_all(site)  # all already on: the parallel wait is the floor of a re-check
    figures["all_hosts_recheck_s"] = round(time.monotonic() - start, 2)

    state = paths.site_state_dir(site.name)
    host_pids = hosts.cgroup_pids(hosts.cgroup_dirs(site))
    host_mib = sum(daemons.rss_mib(p, with_children=False) for p in host_pids if Path(f"/proc/{p}").exists())
    bmc_mib = sum(daemons.rss_mib(p) for p in bmc.running_pids(state))
    mirror_pid = daemons.pid_of(state / "mirror" / "mirror.pid")
    figures["memory_mib"] = {
        "hosts_total": round(host_mib),
        "per_host": round(host_mib / len(site.machines), 1),
        "bmcs_total": round(bmc_mib),
        "mirror": round(daemons.rss_mib(mirror_pid), 1) if mirror_pid else None,
    }
    down_s, rc = timed(lambda: localsite.down(site, progress=quiet))
    figures["site_down_s"] = round(down_s, 1)
    print(json.dumps(figures, indent=2))
    return rc


if __name__ == "__main__":
    sys.exit(main())
