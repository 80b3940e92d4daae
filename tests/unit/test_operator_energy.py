"""This month's energy in each Tenant's status (operators/tenants/energy.py): its settings, and one
pass over stand-ins for the API server, the head and Prometheus."""

import datetime as dt

import pytest

from aifactory.energy import sources
from aifactory.energy.attribution import TenantEnergy
from aifactory.site.model import PowerSettings
from operators.tenants import budget, energy
from operators.tenants.slurm import Result

pytestmark = pytest.mark.unit

NOW = dt.datetime(2026, 12, 5, 12, tzinfo=dt.UTC)
MONTH = dt.datetime(2026, 12, 1, tzinfo=dt.UTC).timestamp()


def test_settings_travel_through_the_environment_of_the_in_cluster_operator(monkeypatch):
    power = PowerSettings(pue=1.2, water_l_per_kwh=0.5, carbon_g_per_kwh=270)
    env = energy.env_for(energy.EnergySettings("http://198.18.0.11:9090", {"gpu-01": 8, "gpu-02": 4}, power))
    monkeypatch.delenv("AIFACTORY_SITE", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("AIFACTORY_ENERGY_INTERVAL", "30")
    es = energy.settings()
    assert es == energy.EnergySettings("http://198.18.0.11:9090", {"gpu-01": 8, "gpu-02": 4}, power, 30.0)
    monkeypatch.delenv("AIFACTORY_PROMETHEUS_URL")
    assert energy.settings() is None  # no Prometheus: no figures, said once at startup


class StandInKube:
    def __init__(self, tenants):
        self.tenants, self.patches = tenants, []

    def list(self, path, selector=None):
        return self.tenants if path.endswith("/tenants") else []  # no pods

    def request(self, method, path, body=None, query=None, content_type=""):
        self.patches.append((method, path, body, content_type))
        return {}


class StandInHead:
    def run(self, script, stdin="", timeout=60):
        assert "sacct" in script
        return Result(0, f"7|team-a|gpu-01|gres/gpu=2|{int(MONTH)}|{int(MONTH) + 3600}\n", "")


def test_a_pass_writes_this_months_figures_of_the_tenants_whose_figures_moved(monkeypatch):
    flat = [(MONTH + t, 1600.0) for t in range(0, 7201, 15)]
    monkeypatch.setattr(sources, "power_samples", lambda url, t0, t1: {"gpu-01": flat})
    kept = {"period": "2026-12", "itKWh": 0.0}
    kube = StandInKube(
        [
            {"metadata": {"name": "team-a"}, "spec": {}},
            {"metadata": {"name": "team-b"}, "spec": {}, "status": {"energy": kept}},  # nothing new
            {"metadata": {"name": "team-c"}, "spec": {}, "status": {"energy": {**kept, "period": "2026-11"}}},
        ]
    )
    es = energy.EnergySettings(
        "http://prometheus", {"gpu-01": 8}, PowerSettings(pue=1.5, carbon_g_per_kwh=200)
    )
    assert energy.one_pass(es, kube, StandInHead(), NOW, energy.MonthAccount()) == 2
    (a_method, a_path, a_body, a_type), (_, c_path, c_body, _) = kube.patches
    assert (
        a_method == "PATCH"
        and a_path.endswith("/tenants/team-a/status")
        and a_type == "application/merge-patch+json"
    )
    # 1.6 kW for the hour team-a held 2 of 8 GPUs: 0.4 kWh; x1.5 facility; 200 g per kWh
    assert a_body["status"]["energy"] == {
        "period": "2026-12",
        "itKWh": 0.4,
        "facilityKWh": 0.6,
        "co2eKg": 0.08,
        "waterL": 0.0,
        "updated": "2026-12-05T12:00:00Z",
    }
    assert c_path.endswith("/team-c/status") and c_body["status"]["energy"]["itKWh"] == 0.0  # a new month


def test_a_closed_months_figures_move_to_the_history(monkeypatch):
    monkeypatch.setattr(sources, "power_samples", lambda url, t0, t1: {})
    november = {"period": "2026-11", "itKWh": 12.5, "updated": "2026-11-30T23:59:00Z"}
    old = {f"2025-{m:02d}": {"period": f"2025-{m:02d}"} for m in range(1, 13)} | {"2024-12": {}}  # 13 kept
    kube = StandInKube(
        [{"metadata": {"name": "team-a"}, "spec": {}, "status": {"energy": november, "energyHistory": old}}]
    )
    es = energy.EnergySettings("http://prometheus", {}, PowerSettings())
    energy.one_pass(es, kube, StandInHead(), NOW, energy.MonthAccount())
    ((_, _, body, _),) = kube.patches
    history = body["status"]["energyHistory"]
    assert history["2026-11"] == november and history["2024-12"] is None  # the oldest goes
    assert len([v for v in history.values() if v is not None]) == budget.HISTORY_PERIODS


def test_later_passes_add_only_the_interval_since_the_last_and_a_new_month_starts_from_zero(monkeypatch):
    asked = []

    def samples(url, t0, t1):
        asked.append((t0, t1))
        return {"gpu-01": [(MONTH + t, 1600.0) for t in range(0, 7201, 15)]}

    monkeypatch.setattr(sources, "power_samples", samples)
    es = energy.EnergySettings("http://prometheus", {"gpu-01": 8}, PowerSettings())
    kube, account = StandInKube([{"metadata": {"name": "team-a"}, "spec": {}}]), energy.MonthAccount()
    half = dt.datetime.fromtimestamp(MONTH + 1800 + energy.LAG_S, dt.UTC)  # the job half done
    energy.one_pass(es, kube, StandInHead(), half, account)
    assert account.totals["team-a"].it_kwh == pytest.approx(0.2) and account.through == MONTH + 1800
    energy.one_pass(es, kube, StandInHead(), NOW, account)
    assert account.totals["team-a"].it_kwh == pytest.approx(0.4)  # the same as one pass over both
    assert asked[1][0] == MONTH + 1800  # the second asked from where the first ended
    assert [b["status"]["energy"]["itKWh"] for _, _, b, _ in kube.patches] == [0.2, 0.4]
    january = dt.datetime(2027, 1, 1, 0, 5, tzinfo=dt.UTC)
    energy.one_pass(es, kube, StandInHead(), january, account)
    assert account.period == "2027-01" and sum(e.it_kwh for e in account.totals.values()) == 0


def test_a_small_tenants_last_fraction_of_a_wh_is_written_and_an_idle_tenant_is_not():
    """A 30 s one-GPU pod is 1.4 Wh: the pass that covers its last seconds adds well under 0.1 Wh, and
    its status must still reach the report's figure (a fixed threshold once left it 7% behind)."""
    small = TenantEnergy(it_kwh=0.00137, facility_kwh=0.001644)
    before = energy.status_of("2026-12", TenantEnergy(it_kwh=0.00128, facility_kwh=0.001536), NOW)
    after = energy.status_of("2026-12", small, NOW)
    assert energy.moved(before, after) and after["itKWh"] == 0.00137
    later = energy.status_of("2026-12", small, NOW + dt.timedelta(hours=1))
    assert not energy.moved(after, later)  # only its time is new
    assert energy.moved({**after, "period": "2026-11"}, later)


def test_passes_run_when_due_one_at_a_time_in_their_own_thread(monkeypatch):
    import threading
    import time

    release, ran = threading.Event(), []

    def slow_pass(es, kube, runner, now, account):
        ran.append(now)
        release.wait(5)
        return 0

    monkeypatch.setattr(energy, "one_pass", slow_pass)
    es = energy.EnergySettings("http://prometheus", {}, PowerSettings(), interval=0.2)
    passes = energy.Passes(es, StandInKube([]), StandInHead(), lambda: NOW)
    passes.due()
    assert ran == []  # not before one interval: the startup reconciles go first
    time.sleep(0.25)
    passes.due()
    time.sleep(0.3)
    passes.due()  # due again, but the first is still running: no second at once
    time.sleep(0.05)
    assert len(ran) == 1
    release.set()
    time.sleep(0.05)
    passes.due()
    time.sleep(0.05)
    assert len(ran) == 2
