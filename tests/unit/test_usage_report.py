"""The usage report from Tenants' status: rows, JSON, CSV and HTML with a plot per tenant."""

import csv
import io
import json

import pytest

from aifactory import usage_report

pytestmark = pytest.mark.unit

H = 1764547200  # 2025-12-01T00:00:00Z, an hour's start


def tenant(name, budget=None, history=None):
    status = {
        "budget": {
            "period": "2026-12",
            "slurm": {"h100": 3.0},
            "kubernetes": {"h100": 1.0, "a100": 0.5},
            "peakGPUs": 6,
            "overshoots": 1,
        },
        "ledger": {
            "period": "2026-12",
            "since": H,
            "slurmHourly": {str(H): 7200, str(H + 3600): 3600},
            "kubernetesClosedHourly": {str(H + 3600): 3600},
            "pods": {"p/main": ["a100", 1, H + 7200, H + 9000]},
        },
        "budgetHistory": history or {},
    }
    spec = {"gpuHourBudget": {"gpuHours": budget}} if budget else {}
    return {"metadata": {"name": name}, "spec": spec, "status": status}


def test_rows_per_tenant_and_model_with_budget_share():
    usages = usage_report.collect([tenant("b"), tenant("a", budget=9)])
    assert [u.tenant for u in usages] == ["a", "b"]
    rows = usage_report.rows(usages)
    a100, h100 = (r for r in rows if r["tenant"] == "a")
    assert (h100["slurm_gpu_hours"], h100["kubernetes_gpu_hours"], h100["gpu_hours"]) == (3.0, 1.0, 4.0)
    assert a100["budget_used_pct"] == 50.0 and h100["peak_gpus"] == 6 and h100["overshoots"] == 1
    assert next(r for r in rows if r["tenant"] == "b")["budget_used_pct"] == ""
    # hourly series from the ledger: both schedulers, pods' hours included
    assert [(s, k) for _, s, k in usages[0].series] == [(2.0, 0.0), (1.0, 1.0), (0.0, 0.5)]


def test_a_closed_period_comes_from_the_history_by_day():
    closed = {
        "slurm": {"h100": 10.0},
        "kubernetes": {},
        "peakGPUs": 8,
        "overshoots": 0,
        "limitGPUHours": 20,
        "daily": {"slurm": {"2026-11-02": 4.0, "2026-11-01": 6.0}, "kubernetes": {}},
    }
    (u,) = usage_report.collect([tenant("a", history={"2026-11": closed}), tenant("b")], "2026-11")
    assert u.period == "2026-11" and u.bucket == "day" and u.budget_percent == 50.0
    assert [t.day for t, _, _ in u.series] == [1, 2]


def test_no_figures_for_the_period_is_an_error_naming_it():
    with pytest.raises(usage_report.NoUsage, match="2020-01"):
        usage_report.collect([tenant("a")], "2020-01")


def test_json_csv_and_html_carry_the_same_figures():
    usages = usage_report.collect([tenant("a", budget=8)])
    doc = json.loads(usage_report.render(usages, "json"))["tenants"][0]
    assert doc["gpuHours"] == 4.5 and doc["models"]["a100"] == {"slurm": 0.0, "kubernetes": 0.5}
    assert len(doc["series"]["points"]) == 3
    table = list(csv.DictReader(io.StringIO(usage_report.render(usages, "csv"))))
    assert {r["model"]: r["gpu_hours"] for r in table} == {"a100": "0.5", "h100": "4.0"}
    html = usage_report.render(usages, "html")
    assert "56.2% used" in html and html.count('src="data:image/png;base64,iVBOR') == 1


def test_energy_columns_come_from_this_months_figures_or_the_closed_months_history():
    now = {"period": "2026-12", "itKWh": 1.5, "facilityKWh": 1.8, "co2eKg": 0.4, "waterL": 0.75}
    a = tenant("a")
    a["status"]["energy"] = now
    a["status"]["energyHistory"] = {"2026-11": {**now, "period": "2026-11", "itKWh": 9.0}}
    a["status"]["budgetHistory"] = {"2026-11": {"slurm": {"h100": 1.0}, "kubernetes": {}, "daily": {}}}
    a100, h100 = usage_report.rows(usage_report.collect([a]))
    assert (a100["it_kwh"], a100["co2e_kg"], a100["water_l"]) == (1.5, 0.4, 0.75)  # once per tenant
    assert (h100["it_kwh"], h100["co2e_kg"]) == ("", "")
    (closed,) = usage_report.rows(usage_report.collect([a], "2026-11"))
    assert closed["it_kwh"] == 9.0
    b = tenant("b")  # the operator had no Prometheus: no figures, blank columns
    (row, _) = usage_report.rows(usage_report.collect([b]))
    assert (
        row["it_kwh"] == ""
        and json.loads(usage_report.as_json(usage_report.collect([b])))["tenants"][0]["energy"] is None
    )
