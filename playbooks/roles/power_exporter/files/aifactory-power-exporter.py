#!/usr/bin/python3
"""aifactory's Redfish power exporter and power governor: every BMC's power reading as Prometheus
metrics, and each feed held under its budget by lowering node power limits.

  aifactory-power-exporter --config /etc/aifactory/power-exporter.json [--listen 0.0.0.0:9561]

Every --interval seconds it asks each BMC in the config (a thread pool, one request per BMC once
its Power resource is found: System -> Links.Chassis[0] -> Power) for PowerControl[0] and serves:

  aifactory_node_power_watts{machine}           the draw (PowerConsumedWatts)
  aifactory_node_power_capacity_watts{machine}  the most it can draw (PowerCapacityWatts)
  aifactory_node_power_limit_watts{machine}     its power limit, where one is set
  aifactory_node_energy_joules_total{machine}   the draw integrated over time by this exporter
  aifactory_bmc_up{machine}                     1 if the last reading succeeded
  aifactory_feed_power_watts{feed}              the sum of its machines' draws
  aifactory_feed_rating_watts{feed}             what the feed may carry (the site file's kW)
  aifactory_feed_budget_watts{feed}             what the site holds it to at run time
  aifactory_feed_holding{feed}                  1 while the governor holds the feed's limits down
  aifactory_power_governor_actions_total{feed,action}  limits lowered / released / failed to set
  aifactory_power_exporter_poll_seconds         how long the last round of readings took
  aifactory_slurm_up                            1 if the last squeue answered (hosts with Slurm)
  aifactory_slurm_jobs{state}                   Slurm jobs per state (squeue)
  aifactory_slurm_gpus_allocated{account}       GPUs held by running jobs, per account (tenant)

The governor, after every round: a feed drawing more than `hold.at` of its budget has its machines'
node power limits lowered (Redfish PowerLimit) so that it draws the midpoint of `hold.at` and
`hold.release`; each machine gives up the same share of what it draws above its idle figure, so
busy machines give most, and none is limited below idle or above its own limit from the site file.
A feed still over `hold.at` is lowered again the next round. Once the feed draws less than
`hold.release` of its budget, every limit the governor lowered goes back to the site file's (or
none). Every action is logged (the journal) and counted.

The config (written by the power_exporter role, mode 0600: it holds BMC passwords):
  {"interval": 10, "hold": {"at": 0.9, "release": 0.8}, "squeue": "auto",
   "feeds": [{"name", "watts", "budget_watts", "machines"}],
   "bmcs": [{"machine", "endpoint", "system_id", "username", "password", "verify", "idle_w", "limit_w"}]}
`verify`: true (the system's CAs), false, or the path of the CA bundle that signed the BMC.
`squeue`: the command (a list), "auto" (squeue where this host has it) or null (no job state).
Python's standard library only: it runs on the head as shipped by Debian.
"""

from __future__ import annotations

import argparse
import base64
import json
import re
import shutil
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TIMEOUT_S = 5
# Energy integrates a reading over the time until the next one; a gap longer than this many
# intervals (a BMC that stopped answering) is not filled in.
MAX_GAP_INTERVALS = 3


class Bmc:
    def __init__(self, spec: dict):
        self.machine = spec["machine"]
        self.endpoint = spec["endpoint"].rstrip("/")
        self.system_id = spec.get("system_id")
        auth = f"{spec['username']}:{spec['password']}".encode()
        self._auth = "Basic " + base64.b64encode(auth).decode()
        verify = spec.get("verify", True)
        if verify is False:
            self._ssl = ssl._create_unverified_context()
        else:
            self._ssl = ssl.create_default_context(cafile=verify if isinstance(verify, str) else None)
        self.idle_w = float(spec.get("idle_w") or 0)
        self.site_limit_w = spec.get("limit_w")  # the limit the site file sets, None: none
        self._power_path: str | None = None
        self.reading: dict | None = None  # PowerControl[0] of the last successful read
        self.up = 0
        self.energy_j = 0.0
        self._last: tuple[float, float] | None = None  # (monotonic time, watts) of the last reading

    def _get(self, path: str) -> dict:
        req = urllib.request.Request(self.endpoint + path, headers={"Authorization": self._auth})
        with urllib.request.urlopen(req, timeout=TIMEOUT_S, context=self._ssl) as r:
            return json.load(r)

    def set_limit(self, watts: int | None) -> None:
        """PATCH the node power limit (None clears it); raises what the BMC answered."""
        if self._power_path is None:
            raise RuntimeError("no power reading yet")
        body = json.dumps({"PowerControl": [{"PowerLimit": {"LimitInWatts": watts}}]}).encode()
        headers = {"Authorization": self._auth, "Content-Type": "application/json"}
        req = urllib.request.Request(self.endpoint + self._power_path, body, headers, method="PATCH")
        with urllib.request.urlopen(req, timeout=TIMEOUT_S, context=self._ssl):
            pass

    def _find_power(self) -> str:
        if self.system_id:
            system = f"/redfish/v1/Systems/{self.system_id}"
        else:
            (member,) = self._get("/redfish/v1/Systems")["Members"]  # a BMC of one system
            system = member["@odata.id"]
        chassis = self._get(system)["Links"]["Chassis"][0]["@odata.id"]
        return self._get(chassis)["Power"]["@odata.id"]

    def poll(self, interval: float) -> None:
        try:
            if self._power_path is None:
                self._power_path = self._find_power()
            control = self._get(self._power_path)["PowerControl"][0]
        except Exception as e:  # any failure: the BMC is down until the next round
            self._power_path = None
            self.up = 0
            print(f"{self.machine}: {self.endpoint}: {e}", file=sys.stderr, flush=True)
            return
        now, watts = time.monotonic(), control.get("PowerConsumedWatts")
        if watts is not None:
            if self._last is not None and now - self._last[0] <= MAX_GAP_INTERVALS * interval:
                self.energy_j += (now - self._last[0]) * (self._last[1] + watts) / 2
            self._last = (now, watts)
        self.reading, self.up = control, 1


class SlurmJobs:
    """Job state from squeue, one call per round: jobs per state, GPUs held per account."""

    FORMAT = "%T|%a|%D|%b"  # state, account, nodes, TRES per node (gres/gpu:h100:2)
    GPUS = re.compile(r"gpu(?::[A-Za-z0-9_.-]+)?[:=](\d+)")

    def __init__(self, command: list[str]):
        self.command = command
        self.up = 0
        self.states: dict[str, int] = {}
        self.gpus: dict[str, int] = {}

    def poll(self) -> None:
        try:
            out = subprocess.run(
                [*self.command, "-h", "-o", self.FORMAT],
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            ).stdout
        except (OSError, subprocess.SubprocessError) as e:
            self.up = 0
            print(f"squeue: {e}", file=sys.stderr, flush=True)
            return
        states, gpus = {"RUNNING": 0, "PENDING": 0}, {}
        for line in out.splitlines():
            f = line.strip().split("|")
            if len(f) < 4:
                continue
            states[f[0]] = states.get(f[0], 0) + 1
            if f[0] == "RUNNING":
                per_node = sum(int(n) for n in self.GPUS.findall(f[3]))
                gpus[f[1]] = gpus.get(f[1], 0) + per_node * (int(f[2]) if f[2].isdigit() else 1)
        self.states, self.gpus, self.up = states, gpus, 1


def slurm_jobs(setting) -> SlurmJobs | None:
    if setting == "auto":
        found = shutil.which("squeue")
        return SlurmJobs([found]) if found else None
    return SlurmJobs(list(setting)) if setting else None


def log(message: str) -> None:
    print(message, flush=True)


class Governor:
    """Holds each feed under `hold.at` of its budget (see the module's docstring)."""

    def __init__(self, feeds: list[dict], hold: dict, bmcs: dict[str, Bmc], log=log):
        self.feeds, self.bmcs, self.log = feeds, bmcs, log
        self.at, self.release = float(hold.get("at", 0.9)), float(hold.get("release", 0.8))
        self.lowered: dict[str, dict[str, int]] = {f["name"]: {} for f in feeds}  # feed -> machine -> W
        self.actions: dict[tuple[str, str], int] = {}

    def _set(self, feed: str, action: str, bmc: Bmc, watts: int | None) -> bool:
        try:
            bmc.set_limit(watts)
        except Exception as e:
            self._count(feed, "failed")
            self.log(f"{feed}: {bmc.machine}: setting the power limit to {watts} W failed: {e}")
            return False
        self._count(feed, action)
        return True

    def _count(self, feed: str, action: str) -> None:
        self.actions[(feed, action)] = self.actions.get((feed, action), 0) + 1

    def step(self) -> None:
        for feed in self.feeds:
            budget = float(feed.get("budget_watts") or feed["watts"])
            on = [self.bmcs[m] for m in feed["machines"] if m in self.bmcs and self.bmcs[m].up]
            draws = {b.machine: float(b.reading.get("PowerConsumedWatts") or 0) for b in on}
            draw, lowered = sum(draws.values()), self.lowered[feed["name"]]
            for b in on:  # a limit not the site file's is ours, set before this process restarted
                limit = (b.reading.get("PowerLimit") or {}).get("LimitInWatts")
                if limit is not None and limit != b.site_limit_w and b.machine not in lowered:
                    lowered[b.machine] = int(limit)
            if draw > self.at * budget:
                self._lower(feed["name"], on, draws, draw - (self.at + self.release) / 2 * budget, budget)
            elif lowered and draw < self.release * budget:
                self.log(
                    f"{feed['name']}: draw {draw:.0f} W under {self.release:.0%} of its budget "
                    f"{budget:.0f} W: giving back the limits of {', '.join(sorted(lowered))}"
                )
                for machine in sorted(lowered):
                    bmc = self.bmcs[machine]
                    if self._set(feed["name"], "released", bmc, bmc.site_limit_w):
                        del lowered[machine]

    def _lower(self, feed: str, on: list[Bmc], draws: dict[str, float], cut: float, budget: float) -> None:
        headroom = {b.machine: max(0.0, draws[b.machine] - b.idle_w) for b in on}
        total = sum(headroom.values())
        if total <= 0:
            self.log(f"{feed}: draw {sum(draws.values()):.0f} W over budget but every machine is at idle")
            return
        share = min(1.0, cut / total)
        planned = []
        for b in on:
            watts = max(int(b.idle_w), int(draws[b.machine] - headroom[b.machine] * share))
            if b.site_limit_w:
                watts = min(watts, int(b.site_limit_w))
            if headroom[b.machine] > 0 and watts < self.lowered[feed].get(b.machine, 1 << 30):
                planned.append((b, watts))
        self.log(
            f"{feed}: draw {sum(draws.values()):.0f} W over {self.at:.0%} of its budget {budget:.0f} W: "
            "lowering " + ", ".join(f"{b.machine} to {w} W" for b, w in planned)
        )
        for b, watts in planned:
            if self._set(feed, "lowered", b, watts):
                self.lowered[feed][b.machine] = watts


class Exporter:
    def __init__(self, config: dict, log=log):
        self.interval = float(config.get("interval", 10))
        self.feeds = config.get("feeds", [])
        self.bmcs = [Bmc(b) for b in config["bmcs"]]
        self.governor = Governor(self.feeds, config.get("hold") or {}, {b.machine: b for b in self.bmcs}, log)
        self.slurm = slurm_jobs(config.get("squeue", "auto"))
        self._pool = ThreadPoolExecutor(max_workers=max(1, min(32, len(self.bmcs))))
        self.poll_seconds = 0.0

    def poll(self) -> None:
        start = time.monotonic()
        list(self._pool.map(lambda b: b.poll(self.interval), self.bmcs))
        self.poll_seconds = time.monotonic() - start
        self.governor.step()
        if self.slurm is not None:
            self.slurm.poll()

    def run(self) -> None:
        while True:
            start = time.monotonic()
            self.poll()
            time.sleep(max(0.0, self.interval - (time.monotonic() - start)))

    def metrics(self) -> str:
        up = [b for b in self.bmcs if b.up and b.reading]

        def node(value) -> list[tuple[str, float | None]]:
            return [(f'machine="{b.machine}"', value(b)) for b in up]

        draw = {b.machine: b.reading.get("PowerConsumedWatts") or 0 for b in up}
        families = [
            ("aifactory_node_power_watts", "gauge", "Draw the BMC reports.",
             node(lambda b: b.reading.get("PowerConsumedWatts"))),
            ("aifactory_node_power_capacity_watts", "gauge", "Most it can draw.",
             node(lambda b: b.reading.get("PowerCapacityWatts"))),
            ("aifactory_node_power_limit_watts", "gauge", "Power limit set on the BMC.",
             node(lambda b: (b.reading.get("PowerLimit") or {}).get("LimitInWatts"))),
            ("aifactory_node_energy_joules_total", "counter", "Draw integrated over time by this exporter.",
             [(f'machine="{b.machine}"', b.energy_j) for b in self.bmcs]),
            ("aifactory_bmc_up", "gauge", "1 if the last reading succeeded.",
             [(f'machine="{b.machine}"', b.up) for b in self.bmcs]),
            ("aifactory_feed_power_watts", "gauge", "Sum of the draws of the feed's machines that answered.",
             [(f'feed="{f["name"]}"', sum(draw.get(m, 0) for m in f["machines"])) for f in self.feeds]),
            ("aifactory_feed_rating_watts", "gauge", "What the feed may carry.",
             [(f'feed="{f["name"]}"', f["watts"]) for f in self.feeds]),
            ("aifactory_feed_budget_watts", "gauge", "What the site holds the feed to at run time.",
             [(f'feed="{f["name"]}"', f.get("budget_watts") or f["watts"]) for f in self.feeds]),
            ("aifactory_feed_holding", "gauge", "1 while the power governor holds the feed's limits down.",
             [(f'feed="{f["name"]}"', int(bool(self.governor.lowered[f["name"]]))) for f in self.feeds]),
            ("aifactory_power_governor_actions_total", "counter", "Power limits lowered, released, failed.",
             [(f'feed="{f}",action="{a}"', n) for (f, a), n in sorted(self.governor.actions.items())]),
            ("aifactory_power_exporter_poll_seconds", "gauge", "Duration of the last round of readings.",
             [("", self.poll_seconds)]),
        ]  # fmt: skip
        if self.slurm is not None:
            families += [
                ("aifactory_slurm_up", "gauge", "1 if the last squeue answered.", [("", self.slurm.up)]),
                ("aifactory_slurm_jobs", "gauge", "Slurm jobs per state.",
                 [(f'state="{k}"', n) for k, n in sorted(self.slurm.states.items())]),
                ("aifactory_slurm_gpus_allocated", "gauge", "GPUs held by running jobs, per account.",
                 [(f'account="{k}"', n) for k, n in sorted(self.slurm.gpus.items())]),
            ]  # fmt: skip
        out = []
        for name, kind, help_, samples in families:
            out.append(f"# HELP {name} {help_}\n# TYPE {name} {kind}\n")
            out.extend(
                f"{name}{{{labels}}} {value:g}\n" if labels else f"{name} {value:g}\n"
                for labels, value in samples
                if value is not None
            )
        return "".join(out)


def serve(exporter: Exporter, host: str, port: int) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?")[0] != "/metrics":
                self.send_error(404, "only /metrics")
                return
            body = exporter.metrics().encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass  # a scrape every few seconds is no news

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    return server


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True)
    ap.add_argument("--listen", default="0.0.0.0:9561", help="host:port of /metrics (default: 0.0.0.0:9561)")
    args = ap.parse_args(argv)
    with open(args.config) as f:
        exporter = Exporter(json.load(f))
    host, _, port = args.listen.rpartition(":")
    serve(exporter, host, int(port))
    exporter.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
