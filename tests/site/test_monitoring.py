"""Monitoring and power on a configured site: Prometheus on the head scraping every target, the
power exporter's readings of every BMC, and a draw that follows what a host really does."""

from __future__ import annotations

import json
import re
import statistics
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import testinfra
import yaml

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


def exporter_metrics(site: Site) -> dict[str, float]:
    url = f"http://{site.with_role('head')[0].address}:9561/metrics"
    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode()
    return {k: float(v) for k, v in re.findall(r"^(\w+(?:\{[^}]*\})?) (\S+)$", text, re.M)}


def configure_monitoring(site_file: Path) -> None:
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "aifactory.cli",
            "configure",
            "--site",
            str(site_file),
            "--playbook",
            "monitoring.yml",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]


def test_a_feed_over_its_lowered_budget_has_its_node_limits_lowered_until_it_draws_under_it(
    configured_site: Site, head, tmp_path
) -> None:
    """feed-b's budget lowered (site file, power.feeds[].budget_kw) so that 90% of it is 600 W above
    its machines' idle draw; a 4-GPU, CPU-heavy job on gpu-04 passes that. The power governor lowers
    the feed's node limits through the BMCs and the draw the BMCs report falls under 90%; with the
    site file's budget back, the limits are given back."""
    site = configured_site
    (feed,) = [f for f in site.power.feeds if "gpu-04" in f.machines]
    machines = [site.machine(m) for m in feed.machines]
    idle = sum(power.machine_power(site.power, m).idle_w for m in machines)
    budget_w = (idle + 600) / site.power.hold.at
    data = yaml.safe_load(site.path.read_text())
    for f in data["power"]["feeds"]:
        if f["name"] == feed.name:
            f["budget_kw"] = round(budget_w / 1000, 3)
    lowered = tmp_path / site.path.name
    lowered.write_text(yaml.safe_dump(data, sort_keys=False))

    def feed_draw() -> float:
        return sum(bmcs.power_reading(m, login).consumed_w for m in machines)

    configure_monitoring(lowered)
    job = head.check_output(
        "sbatch --parsable -w gpu-04 --gres=gpu:4 -c 2 -o /dev/null -J governor-test "
        "--wrap 'timeout 600 sh -c \"yes >/dev/null & yes >/dev/null; wait\"'"
    ).strip()
    try:
        threshold = site.power.hold.at * budget_w
        deadline, holding = time.monotonic() + 120, 0.0
        while time.monotonic() < deadline:
            holding = exporter_metrics(site).get(f'aifactory_feed_holding{{feed="{feed.name}"}}', 0.0)
            if holding == 1:
                break
            time.sleep(2)
        assert holding == 1, f"{feed.name} never held (90% of its budget: {threshold:.0f} W)"
        time.sleep(12)  # the BMCs' next readings are under the limits just set
        draws = [feed_draw() for _ in range(3)]
        assert max(draws) < threshold, f"{feed.name} draws {draws} W, over {threshold:.0f} W"
        limit = bmcs.power_reading(site.machine("gpu-04"), login).limit_w
        assert limit is not None and limit < power.machine_power(site.power, site.machine("gpu-04")).max_w
        got = exporter_metrics(site)
        assert got[f'aifactory_power_governor_actions_total{{feed="{feed.name}",action="lowered"}}'] >= 1
        # the exporter's job state: the job's 4 GPUs held, as squeue says
        assert got["aifactory_slurm_up"] == 1 and got['aifactory_slurm_jobs{state="RUNNING"}'] >= 1
        assert sum(v for k, v in got.items() if k.startswith("aifactory_slurm_gpus_allocated")) >= 4
        assert "lowering gpu-04 to" in head.check_output(
            "journalctl -u aifactory-power-exporter --no-pager -n 50"
        )
    finally:
        head.run(f"scancel {job}")
        configure_monitoring(site.path)
    deadline = time.monotonic() + 90
    while bmcs.power_reading(site.machine("gpu-04"), login).limit_w is not None:
        assert time.monotonic() < deadline, "gpu-04's limit was not given back"
        time.sleep(2)
