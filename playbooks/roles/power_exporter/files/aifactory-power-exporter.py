#!/usr/bin/python3
"""aifactory's Redfish power exporter: every BMC's power reading as Prometheus metrics.

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
  aifactory_power_exporter_poll_seconds         how long the last round of readings took

The config (written by the power_exporter role, mode 0600: it holds BMC passwords):
  {"interval": 10, "feeds": [{"name", "watts", "machines"}],
   "bmcs": [{"machine", "endpoint", "system_id", "username", "password", "verify"}]}
`verify`: true (the system's CAs), false, or the path of the CA bundle that signed the BMC.
Python's standard library only: it runs on the head as shipped by Debian.
"""

from __future__ import annotations

import argparse
import base64
import json
import ssl
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
        self._power_path: str | None = None
        self.reading: dict | None = None  # PowerControl[0] of the last successful read
        self.up = 0
        self.energy_j = 0.0
        self._last: tuple[float, float] | None = None  # (monotonic time, watts) of the last reading

    def _get(self, path: str) -> dict:
        req = urllib.request.Request(self.endpoint + path, headers={"Authorization": self._auth})
        with urllib.request.urlopen(req, timeout=TIMEOUT_S, context=self._ssl) as r:
            return json.load(r)

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


class Exporter:
    def __init__(self, config: dict):
        self.interval = float(config.get("interval", 10))
        self.feeds = config.get("feeds", [])
        self.bmcs = [Bmc(b) for b in config["bmcs"]]
        self._pool = ThreadPoolExecutor(max_workers=max(1, min(32, len(self.bmcs))))
        self.poll_seconds = 0.0

    def poll(self) -> None:
        start = time.monotonic()
        list(self._pool.map(lambda b: b.poll(self.interval), self.bmcs))
        self.poll_seconds = time.monotonic() - start

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
            ("aifactory_power_exporter_poll_seconds", "gauge", "Duration of the last round of readings.",
             [("", self.poll_seconds)]),
        ]  # fmt: skip
        out = []
        for name, kind, help_, samples in families:
            out.append(f"# HELP {name} {help_}\n# TYPE {name} {kind}\n")
            out.extend(f"{name}{{{labels}}} {value:g}\n" for labels, value in samples if value is not None)
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
