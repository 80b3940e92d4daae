"""`aifactory energy report` (aifactory.energy.report, .sources): its inputs as sacct, Prometheus and
the Tenants give them, and every format of the report from them."""

import csv
import datetime as dt
import io
import json

import pytest

from aifactory import cli
from aifactory.energy import report, sources
from aifactory.energy.attribution import Holding
from aifactory.site.validate import load_site
from tests.conftest import REPO

pytestmark = pytest.mark.unit

T0 = dt.datetime(2026, 11, 3, 10, tzinfo=dt.UTC).timestamp()


def test_sacct_lines_become_holdings_per_node_and_a_running_job_holds_until_the_end():
    out = "\n".join(
        [
            f"101|tenant-a|gpu-02|cpu=2,gres/gpu:h100=2,gres/gpu=2,node=1|{int(T0)}|{int(T0) + 600}",
            f"102|tenant-b|gpu-[01,03]|cpu=4,gres/gpu=4,node=2|{int(T0) + 60}|Unknown",
            "103|tenant-b|None assigned|gres/gpu=1|Unknown|Unknown",  # pending: holds nothing
            f"104|tenant-c|gpu-01|cpu=8,mem=1G,node=1|{int(T0)}|{int(T0) + 60}",  # no GPUs
        ]
    )
    assert sources.parse_sacct(out, T0 + 3600) == [
        Holding("tenant-a", "slurm", "gpu-02", 2, T0, T0 + 600, "101"),
        Holding("tenant-b", "slurm", "gpu-01", 2, T0 + 60, T0 + 3600, "102"),
        Holding("tenant-b", "slurm", "gpu-03", 2, T0 + 60, T0 + 3600, "102"),
    ]
    assert "-S $(date -d @" in sources.sacct_script(
        T0, T0 + 1.5
    ) and "SLURM_TIME_FORMAT=%s" in sources.sacct_script(0, 1)


def test_tenants_own_their_namespaces_and_the_query_step_keeps_a_series_under_the_limit():
    tenants = [
        {"metadata": {"name": "a"}, "spec": {"namespaces": ["a-train", "a-serve"]}},
        {"metadata": {"name": "b"}, "spec": {}},
    ]
    assert sources.tenant_namespaces(tenants) == {"a-train": "a", "a-serve": "a", "b": "b"}
    assert sources.step_for(T0, T0 + 3600) == 15
    month = 31 * 86400
    assert sources.step_for(T0, T0 + month) == 268 and month / 268 <= sources.MAX_POINTS


def test_periods_months_days_and_intervals_end_now_at_the_latest():
    now = dt.datetime(2026, 12, 5, 12, tzinfo=dt.UTC)
    dec = dt.datetime(2026, 12, 1, tzinfo=dt.UTC).timestamp()
    assert report.period_bounds(None, now) == (dec, now.timestamp())
    assert report.period_bounds("2026-11", now) == (dt.datetime(2026, 11, 1, tzinfo=dt.UTC).timestamp(), dec)
    assert report.period_bounds("2026-12-05", now)[1] == now.timestamp()
    assert report.period_bounds("2026-12-01T10:00Z/2026-12-01T11:00Z", now) == (dec + 36000, dec + 39600)
    for bad, words in [
        ("2026-13", "not YYYY-MM"),
        ("2027-01", "future"),
        ("2026-12-02/2026-12-01", "before"),
    ]:
        with pytest.raises(ValueError, match=words):
            report.period_bounds(bad, now)


@pytest.fixture
def built():
    site = load_site(REPO / "sites" / "local.yaml")
    steady = {m.name: [(T0 + t, 2000.0) for t in range(0, 7201, 15)] for m in site.machines}
    feeds = {
        f.name: [(T0 + t, 2000.0 * len(f.machines)) for t in range(0, 7201, 15)] for f in site.power.feeds
    }
    held = [
        Holding("tenant-a", "slurm", "gpu-02", 2, T0, T0 + 3600, "101"),
        Holding("tenant-b", "kubernetes", "gpu-05", 1, T0 + 1800, T0 + 7200, "b/uid"),
    ]
    return site, report.build(site, T0, T0 + 7200, steady, feeds, held)


def test_the_report_in_every_format_adds_up_to_the_machines_energy(built):
    site, r = built
    doc = json.loads(report.render(r, site, "json"))
    # gpu-02 draws 2 kW: tenant-a's 2 of 8 GPUs for an hour are 0.5 kWh; gpu-05 1/8 for 1.5 h
    assert doc["tenants"]["tenant-a"]["itKWh"] == pytest.approx(0.5)
    assert doc["tenants"]["tenant-b"]["itKWh"] == pytest.approx(2 * 1.5 / 8)
    assert doc["tenants"]["tenant-a"]["co2eKg"] == pytest.approx(0.5 * site.power.carbon_g_per_kwh / 1000)
    assert doc["tenants"]["tenant-a"]["waterL"] == pytest.approx(0.5 * site.power.water_l_per_kwh)
    total = 7 * 2 * 2.0
    assert doc["itKWh"] == pytest.approx(total)
    assert doc["overhead"]["itKWh"] == pytest.approx(total - 0.5 - 0.375)
    assert [f["feed"] for f in doc["feeds"]] == ["feed-a", "feed-b"] and doc["feeds"][0]["peak_kw"] == 8.0
    rows = list(csv.DictReader(io.StringIO(report.render(r, site, "csv"))))
    assert [x["tenant"] for x in rows] == ["tenant-a", "tenant-b", report.OVERHEAD]
    assert sum(float(x["share_pct"]) for x in rows) == pytest.approx(100, abs=0.2)
    text = report.render(r, site, "table")
    assert "tenant-a" in text and "FEED" in text and "PEAK_BUDGET_PCT" in text
    html = report.render(r, site, "html")
    assert html.count("data:image/png;base64,") == 3 and "tenant-b" in html


def test_the_cli_names_a_bad_period_and_an_unreachable_prometheus(tmp_path, monkeypatch, capsys):
    assert cli.main(["energy", "report", "--period", "2026-13"]) == cli.EXIT_USAGE
    assert "not YYYY-MM" in capsys.readouterr().err
    monkeypatch.setattr(sources, "prometheus_url", lambda site: "http://127.0.0.1:9")  # discard: refused
    assert cli.main(["energy", "report", "--period", "2026-11"]) == cli.EXIT_FAILED
    assert "Prometheus at http://127.0.0.1:9" in capsys.readouterr().err


def test_a_small_jobs_figures_keep_their_relative_precision():
    """A 30 s job on one GPU is well under a Wh: JSON keeps six significant figures, so CO2e and water
    stay in proportion to its kWh (a fixed six decimals once made 0.00035748 kg read 0.000357)."""
    site = load_site(REPO / "sites" / "local.yaml")
    steady = {m.name: [(T0 + t, 1234.5) for t in range(0, 601, 15)] for m in site.machines}
    held = [Holding("tiny", "kubernetes", "gpu-02", 1, T0 + 100, T0 + 131, "t/uid")]
    got = json.loads(report.render(report.build(site, T0, T0 + 600, steady, {}, held), site, "json"))
    tiny = got["tenants"]["tiny"]
    assert tiny["itKWh"] == pytest.approx(1234.5 * 31 / 8 / 3.6e6, rel=1e-5)
    for key, factor in (
        ("facilityKWh", site.power.pue),
        ("co2eKg", site.power.carbon_g_per_kwh / 1000),
        ("waterL", site.power.water_l_per_kwh),
    ):
        assert tiny[key] == pytest.approx(tiny["itKWh"] * factor, rel=1e-5), key
