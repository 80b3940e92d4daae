"""Energy attribution (aifactory.energy): a machine's measured energy shared by the GPUs held."""

from datetime import UTC, datetime

import pytest

from aifactory.energy.attribution import EnergyMeter, Holding, attribute
from aifactory.site.model import PowerSettings

pytestmark = pytest.mark.unit

T0 = datetime(2026, 11, 1, tzinfo=UTC).timestamp()
SETTINGS = PowerSettings(pue=1.2, water_l_per_kwh=0.5, carbon_g_per_kwh=300)


def steady(watts: float, seconds: int, step: int = 15) -> list[tuple[float, float]]:
    return [(T0 + t, watts) for t in range(0, seconds + 1, step)]


def test_energy_is_the_area_under_the_samples_linear_between_them():
    m = EnergyMeter([(0, 100), (10, 300), (20, 300)])
    assert m.joules(0, 20) == pytest.approx(10 * 200 + 10 * 300)
    assert m.joules(5, 15) == pytest.approx(5 * (200 + 300) / 2 + 5 * 300)  # interpolated ends
    assert m.joules(-50, 0) == 0 and m.joules(20, 99) == 0  # nothing measured outside the samples


def test_a_tenant_gets_its_gpus_share_of_the_machine_while_it_held_them_and_the_rest_is_overhead():
    # gpu-01 (8 GPUs) draws 1,000 W for two hours; tenant a holds 2 GPUs during the first hour
    samples = {"gpu-01": steady(1000, 7200), "gpu-02": steady(500, 7200)}
    held = [Holding("a", "slurm", "gpu-01", 2, T0, T0 + 3600, "17")]
    got = attribute(samples, {"gpu-01": 8, "gpu-02": 8}, held, T0, T0 + 7200, SETTINGS)
    a = got.tenants["a"]
    assert a.it_kwh == pytest.approx(1.0 * 2 / 8)  # 1 kWh in that hour, a quarter of it
    assert a.facility_kwh == pytest.approx(0.25 * 1.2) and a.water_l == pytest.approx(0.25 * 0.5)
    assert a.co2e_kg == pytest.approx(0.25 * 0.3)
    assert a.by_scheduler == {"slurm": pytest.approx(0.25)} and a.by_machine == {
        "gpu-01": pytest.approx(0.25)
    }
    assert got.machines_kwh == {"gpu-01": pytest.approx(2.0), "gpu-02": pytest.approx(1.0)}
    # nothing is lost: what no tenant held is overhead (gpu-02 whole, gpu-01 less a's share)
    assert got.overhead.it_kwh == pytest.approx(3.0 - 0.25)
    assert got.overhead.by_machine == {"gpu-01": pytest.approx(1.75), "gpu-02": pytest.approx(1.0)}


def test_hourly_intensities_weigh_each_hours_energy_and_holdings_are_clipped_to_the_period():
    samples = {"n": steady(1000, 7200)}  # 1 kWh per hour
    held = [Holding("a", "kubernetes", "n", 8, T0 - 3600, T0 + 9999)]  # the whole machine, beyond the period
    hourly = {datetime.fromtimestamp(T0, UTC): 100.0}  # the second hour falls back to the constant
    got = attribute(samples, {"n": 8}, held, T0, T0 + 7200, SETTINGS, hourly)
    a = got.tenants["a"]
    assert a.it_kwh == pytest.approx(2.0) and got.overhead.it_kwh == pytest.approx(0)
    assert a.co2e_kg == pytest.approx((1.0 * 100 + 1.0 * 300) / 1000)
    assert sorted(a.by_hour) == [int(T0), int(T0) + 3600]


def test_two_tenants_on_one_machine_split_it_by_gpus_and_unknown_machines_are_skipped():
    samples = {"n": steady(800, 3600)}
    held = [
        Holding("a", "slurm", "n", 2, T0, T0 + 3600),
        Holding("b", "kubernetes", "n", 6, T0, T0 + 1800),
        Holding("c", "slurm", "gone", 8, T0, T0 + 3600),  # no samples: nothing to share
    ]
    got = attribute(samples, {"n": 8}, held, T0, T0 + 3600, SETTINGS)
    assert got.tenants["a"].it_kwh == pytest.approx(0.8 * 2 / 8)
    assert got.tenants["b"].it_kwh == pytest.approx(0.4 * 6 / 8)
    assert "c" not in got.tenants
    assert got.overhead.it_kwh == pytest.approx(0.8 - 0.2 - 0.3)
