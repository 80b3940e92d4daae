"""Monitoring and power on a configured site: Prometheus on the head scraping every target, the
power exporter's readings of every BMC, and a draw that follows what a host really does."""

from __future__ import annotations

import json
import statistics
import time
import urllib.parse
import urllib.request

import pytest
import testinfra

from aifactory import bmcs, credentials
from aifactory.site import power
from aifactory.site.model import Site
from sandbox import ssh

pytestmark = pytest.mark.site


@pytest.fixture(scope="module")
def head(configured_site: Site) -> testinfra.host.Host:
    cfg = str(ssh.config_path(configured_site))
    return testinfra.get_host(f"ssh://{configured_site.with_role('head')[0].name}", ssh_config=cfg)


def prometheus(site: Site, path: str, **query: str) -> dict:
    url = f"http://{site.with_role('head')[0].address}:9090{path}"
    if query:
        url += "?" + urllib.parse.urlencode(query)
    with urllib.request.urlopen(url, timeout=10) as r:
        body = json.load(r)
    assert body["status"] == "success", body
    return body["data"]


def login(m):
    c = credentials.load(m.bmc.credentials)
    return c.username, c.password


def test_prometheus_scrapes_every_target_up(configured_site: Site) -> None:
    """Every machine's node exporter, the power exporter, the tenant operator (through the API
    server's service proxy) and Prometheus itself: all `up`, as its HTTP API says."""
    deadline = time.monotonic() + 120  # a target added by this run is scraped within an interval
    while True:
        targets = prometheus(configured_site, "/api/v1/targets")["activeTargets"]
        down = [(t["labels"]["job"], t["scrapeUrl"], t["lastError"]) for t in targets if t["health"] != "up"]
        if not down or time.monotonic() > deadline:
            break
        time.sleep(5)
    assert not down, down
    jobs = sorted(t["labels"]["job"] for t in targets)
    machines = len(configured_site.machines)
    assert jobs == sorted(["node"] * machines + ["power", "prometheus", "tenant-operator"]), jobs


def test_every_bmc_reports_a_draw_between_idle_and_maximum(configured_site: Site) -> None:
    """Through the sushy client, and as Prometheus has it from the power exporter."""
    scraped = {
        s["metric"]["machine"]: float(s["value"][1])
        for s in prometheus(configured_site, "/api/v1/query", query="aifactory_node_power_watts")["result"]
    }
    for m in configured_site.machines:
        span = power.machine_power(configured_site.power, m)
        reading = bmcs.power_reading(m, login)
        assert span.idle_w <= reading.consumed_w <= span.max_w, (m.name, reading, span)
        assert reading.capacity_w == span.max_w
        assert span.idle_w <= scraped[m.name] <= span.max_w, (m.name, scraped)
    up = prometheus(configured_site, "/api/v1/query", query="min(aifactory_bmc_up)")["result"]
    assert float(up[0]["value"][1]) == 1
    for feed in configured_site.power.feeds:
        q = f'aifactory_feed_rating_watts{{feed="{feed.name}"}}'
        (rating,) = prometheus(configured_site, "/api/v1/query", query=q)["result"]
        assert float(rating["value"][1]) == feed.kw * 1000


def test_rules_load_in_prometheus(configured_site: Site, head) -> None:
    head.run_expect([0], "promtool check rules /etc/prometheus/rules/aifactory.yml")
    groups = prometheus(configured_site, "/api/v1/rules")["groups"]
    names = {r["name"] for g in groups for r in g["rules"]}
    assert {"FeedOverBudget", "NodeOverPowerLimit", "BmcDown", "GpuEccErrors", "TargetDown"} <= names


def test_a_cpu_heavy_slurm_job_raises_the_nodes_draw(configured_site: Site, head) -> None:
    node = configured_site.machine("gpu-02")
    assert node.pool == "slurm", "the test runs a Slurm job on gpu-02"

    def draw() -> float:
        return bmcs.power_reading(node, login).consumed_w

    before = statistics.median(draw() for _ in range(3))
    # two busy loops (this machine's cores are shared by every host): 40 s, or until cancelled
    job = head.check_output(
        f"sbatch --parsable -w {node.name} -c 2 -o /dev/null -J power-test "
        "--wrap 'timeout 40 sh -c \"yes >/dev/null & yes >/dev/null; wait\"'"
    ).strip()
    try:
        deadline, during = time.monotonic() + 30, before
        while during < before + 100 and time.monotonic() < deadline:
            time.sleep(1)
            during = draw()
        assert during >= before + 100, f"gpu-02 drew {before:.0f} W before the job, {during:.0f} W during it"
    finally:
        head.run(f"scancel {job}")
