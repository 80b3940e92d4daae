"""The site file's power section: feeds against their machines' worst case, factors, overrides."""

import pytest
import yaml

from aifactory import cli
from aifactory.site import power
from aifactory.site.validate import ERROR, WARNING, check, load_site
from tests.conftest import REPO

pytestmark = pytest.mark.unit

LOCAL = REPO / "sites" / "local.yaml"


def site_with_power(write_site, section, machine_power=None):
    data = yaml.safe_load(LOCAL.read_text())
    data["power"] = section
    if machine_power:
        data["machines"][1]["power"] = machine_power  # gpu-01
    return write_site(yaml.safe_dump(data, sort_keys=False))


def findings(path, where="power"):
    return [(f.level, f.path, f.message) for f in check(path)[0] if f.path.startswith(where)]


def test_estimates_come_from_cpus_and_gpu_model_and_yield_to_the_site_file(write_site):
    site = load_site(LOCAL)
    gpu01 = site.machine("gpu-01")  # 64 threads, 8 x h100 (70 W idle, 700 W at most each)
    want = power.PowerRange(150 + 64 + 8 * 70, 300 + 6 * 64 + 8 * 700)
    assert power.machine_power(site.power, gpu01) == want
    head = site.machine("head-01")  # 16 threads, no GPU
    assert power.machine_power(site.power, head) == power.PowerRange(166, 396)
    p = site_with_power(
        write_site,
        {"gpu_models": {"h100": {"idle_w": 60, "max_w": 350}}},  # PCIe cards
        machine_power={"idle_w": 900, "max_w": 10200},
    )
    site = load_site(p)
    assert power.machine_power(site.power, site.machine("gpu-01")) == power.PowerRange(900, 10200)
    assert power.machine_power(site.power, site.machine("gpu-02")).max_w == 300 + 6 * 64 + 8 * 350


def test_a_feed_that_cannot_carry_its_machines_is_an_error_naming_the_feed_and_machines(write_site):
    section = {
        "feeds": [
            {"name": "feed-a", "kw": 12, "machines": ["gpu-01", "gpu-02"]},  # 12.57 kW worst
            {"name": "feed-b", "kw": 13.5, "machines": ["gpu-03", "gpu-04"]},  # 93%
            {"name": "feed-c", "kw": 40, "machines": ["head-01", "gpu-05", "gpu-06", "gpu-01"]},
        ]
    }
    p = site_with_power(write_site, section)
    got = findings(p)
    assert got == [
        (
            ERROR,
            "power.feeds[0]",
            "feed 'feed-a' (12 kW) cannot carry its machines at their maximum: 12.6 kW (105%) "
            "from gpu-01 6284 W, gpu-02 6284 W",
        ),
        (
            WARNING,
            "power.feeds[1]",
            "feed 'feed-b' (13.5 kW) is above 90% with its machines at their maximum: 12.6 kW (93%) "
            "from gpu-03 6284 W, gpu-04 6284 W",
        ),
    ]
    # through the CLI: exit 2, the feed named on the line of the file that declares it
    assert cli.main(["site", "validate", str(p)]) == 2


def test_the_machine_in_a_feed_must_exist_and_unfed_machines_are_named(write_site):
    section = {"feeds": [{"name": "feed-a", "kw": 30, "machines": ["gpu-01", "gpu-7"]}]}
    got = findings(site_with_power(write_site, section))
    assert (ERROR, "power.feeds[0].machines[1]", "no machine 'gpu-7' (did you mean 'gpu-06'?)") in got
    (unfed,) = [m for lvl, path, m in got if lvl == WARNING]
    assert unfed == "on no feed, so in no power budget: head-01, gpu-02, gpu-03, gpu-04, gpu-05, gpu-06"


@pytest.mark.parametrize(
    "section, path, message",
    [
        ({"pue": 0.9}, "power.pue", "must be at least 1.0 (facility energy over IT energy), got 0.9"),
        ({"water_l_per_kwh": -1}, "power.water_l_per_kwh", "must be a number of litres, 0 or more, got -1"),
        (
            {"feeds": [{"name": "A", "kw": 0, "machines": []}]},
            "power.feeds[0].name",
            "'A' is not a DNS label",
        ),
        ({"feeds": [{"name": "a", "kw": -5, "machines": []}]}, "power.feeds[0].kw", "must be a positive"),
        ({"gpu_models": {"h900": {"idle_w": 1, "max_w": 2}}}, "power.gpu_models.h900", "unknown GPU model"),
        (
            {"gpu_models": {"h100": {"idle_w": 800, "max_w": 700}}},
            "power.gpu_models.h100",
            "needs 0 <= idle_w",
        ),
        ({"carbon_file": "nowhere.csv"}, "power.carbon_file", "No such file or directory"),
        ({"feed": []}, "power.feed", "unknown key 'feed' (did you mean 'feeds'?)"),
        (
            {"feeds": [{"name": "a", "kw": 9, "machines": []}, {"name": "a", "kw": 9, "machines": []}]},
            "power.feeds",
            "feed 'a' is declared twice",
        ),
        (
            {"feeds": [{"name": "a", "kw": 9, "budget_kw": 12, "machines": []}]},
            "power.feeds[0].budget_kw",
            "must be above 0 and at most the rating (9 kW), got 12",
        ),
        ({"hold": {"at": 0.8, "release": 0.9}}, "power.hold", "needs 0 < release < at <= 1"),
        ({"hold": {"at": 1.5}}, "power.hold", "needs 0 < release < at <= 1, got at 1.5"),
        ({"hold": {"share": 0.5}}, "power.hold.share", "unknown key 'share'"),
    ],
)
def test_bad_power_settings_are_errors(write_site, section, path, message):
    got = [(lvl, m) for lvl, p, m in findings(site_with_power(write_site, section)) if p == path]
    assert got and got[0][0] == ERROR and message in got[0][1], findings(site_with_power(write_site, section))


def test_hourly_carbon_file(tmp_path):
    f = tmp_path / "carbon.csv"
    # a header, UTC by "Z", an offset converted, a time within the hour taken as its hour
    f.write_text("timestamp,g_per_kwh\n2026-11-01T00:00Z,312\n2026-11-01T02:10:00+01:00,250.5\n")
    values = power.read_carbon_file(f)
    assert [(t.isoformat(), v) for t, v in values.items()] == [
        ("2026-11-01T00:00:00+00:00", 312.0),
        ("2026-11-01T01:00:00+00:00", 250.5),
    ]
    f.write_text("2026-11-01T00:00Z,312\n2026-11-01T01:00Z,lots\n")
    with pytest.raises(ValueError, match=r"carbon.csv:2: not 'timestamp,gCO2e per kWh'"):
        power.read_carbon_file(f)


def test_power_limits_by_pool_or_machine_lower_a_feeds_worst_case(write_site):
    feeds = [{"name": "feed-a", "kw": 12, "machines": ["gpu-01", "gpu-02"]}]  # 12.57 kW at most
    p = site_with_power(write_site, {"feeds": feeds, "limits_w": {"slurm": 5000, "gpu-02": 4000}})
    assert findings(p, "power.feeds[") == []  # held to 9 kW
    site = load_site(p)
    assert [m.power_limit_w for m in site.machines] == [None, 5000, 4000, 5000, 5000, None, None]
    assert power.feed_loads(site)[0].worst_w == 9000
    bad = site_with_power(write_site, {"limits_w": {"gpu-01": 500, "gpu-9": 3000, "slurm": "lots"}})
    assert findings(bad) == [
        (ERROR, "power.limits_w.gpu-9", "'gpu-9' is neither a machine nor a pool (slurm, kubernetes)"),
        (ERROR, "power.limits_w.slurm", "must be a positive number of watts, got 'lots'"),
        (ERROR, "power.limits_w.gpu-01", "500 W for gpu-01 is outside what it can be held to: 774..6284 W"),
    ]


def test_a_feeds_run_time_budget_and_the_hold_shares_reach_the_inventory(write_site):
    from aifactory import inventory
    from aifactory.site.validate import load_site

    path = site_with_power(
        write_site,
        {
            "feeds": [{"name": "a", "kw": 30, "budget_kw": 12.5, "machines": []}],
            "hold": {"at": 0.95, "release": 0.7},
        },
    )
    site = load_site(path)
    assert site.power.feeds[0].budget_w == 12500 and site.power.hold.at == 0.95
    rendered = inventory.render(site)["all"]["vars"]
    assert rendered["power_feeds"][0] == {"name": "a", "watts": 30000, "budget_watts": 12500, "machines": []}
    assert rendered["power_hold"] == {"at": 0.95, "release": 0.7}
