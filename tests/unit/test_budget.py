"""The GPU-hour ledger: counted once, never decaying, split at period boundaries, renewed once."""

import datetime as dt

import pytest

from operators.tenants import budget
from operators.tenants.budget import Run, UsageLedger, advance
from operators.tenants.spec import replacing

pytestmark = pytest.mark.unit

DEC = dt.datetime(2026, 12, 1, tzinfo=dt.UTC).timestamp()
JAN = dt.datetime(2027, 1, 1, tzinfo=dt.UTC).timestamp()
HOUR = 3600.0


def test_periods_start_on_the_first_of_month_quarter_and_year_and_total_never_restarts():
    at = dt.datetime(2026, 11, 17, 8, tzinfo=dt.UTC)
    created = dt.datetime(2025, 3, 2, tzinfo=dt.UTC)
    assert budget.period("Monthly", at, created) == ("2026-11", dt.datetime(2026, 11, 1, tzinfo=dt.UTC))
    assert budget.period("Quarterly", at, created) == ("2026-Q4", dt.datetime(2026, 10, 1, tzinfo=dt.UTC))
    assert budget.period("Yearly", at, created) == ("2026", dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    assert budget.period("Total", at, created) == ("total", created)


def test_a_pod_counts_once_from_its_last_sighting_after_it_is_gone():
    pod = Run("h100", 2, DEC + HOUR, None, key="p1")
    first, _ = advance(None, "2026-12", DEC, DEC + 2 * HOUR, [], [pod], held_now=2)
    assert first.kubernetes() == {"h100": 2 * HOUR}
    # gone (deleted while it ran): its last sighting is kept, once, however many rounds follow
    second, _ = advance(first, "2026-12", DEC, DEC + 3 * HOUR, [], [], held_now=0)
    third, _ = advance(second, "2026-12", DEC, DEC + 4 * HOUR, [], [], held_now=0)
    assert second.kubernetes() == third.kubernetes() == {"h100": 2 * HOUR}
    assert third.peak == 2


def test_slurm_is_recomputed_whole_each_round_so_nothing_is_counted_twice():
    job = Run("h100", 4, DEC - HOUR, DEC + HOUR)  # began in November: only December's hour counts
    one, _ = advance(None, "2026-12", DEC, DEC + 5 * HOUR, [job], [], held_now=0)
    two, _ = advance(one, "2026-12", DEC, DEC + 6 * HOUR, [job], [], held_now=0)
    assert one.slurm == two.slurm == {"h100": 4 * HOUR}
    assert two.hours() == 4.0


def test_the_status_form_survives_a_restart_and_removes_gone_pods():
    before, _ = advance(None, "2026-12", DEC, DEC + HOUR, [], [Run("h100", 1, DEC, None, "a")], 1)
    after, _ = advance(before, "2026-12", DEC, DEC + 2 * HOUR, [], [Run("h100", 1, DEC, None, "b")], 1)
    patch = replacing(before.to_status(), after.to_status())
    assert patch["pods"] == {"a": None, "b": ["h100", 1, DEC, DEC + 2 * HOUR]}
    # the merge patch applied, then read back by an operator that restarted
    assert UsageLedger.from_status(merge(before.to_status(), patch)) == after


def merge(target, patch):
    """RFC 7386, as the API server applies kopf's status patch."""
    out = dict(target)
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def test_a_new_period_leaves_nothing_of_the_old_one_in_the_status():
    dec, _ = advance(
        None, "2026-12", DEC, DEC + HOUR, [Run("a100", 1, DEC, None)], [Run("h100", 1, DEC, None, "p")], 2
    )
    jan, _ = advance(dec, "2027-01", JAN, JAN + 1, [], [], 0)
    status = merge(dec.to_status(), replacing(dec.to_status(), jan.to_status()))
    assert status["slurmSeconds"] == {} and status["pods"] == {}


def test_a_new_period_starts_from_zero_exactly_once_and_closes_the_old_one():
    running = Run("h100", 1, DEC + HOUR, None, key="p")
    dec, _ = advance(None, "2026-12", DEC, JAN - HOUR, [], [running], 1)
    jan, closed = advance(dec, "2027-01", JAN, JAN + HOUR, [], [running], 1)
    assert closed is dec and closed.summary()["kubernetes"] == {
        "h100": round((JAN - DEC - 2 * HOUR) / HOUR, 4)
    }
    assert jan.kubernetes() == {"h100": HOUR}  # the pod spanning the boundary: January's part only
    again, closed_again = advance(jan, "2027-01", JAN, JAN + 2 * HOUR, [], [running], 1)
    assert closed_again is None and again.kubernetes() == {"h100": 2 * HOUR}


def test_a_budget_is_spent_at_its_limit():
    assert budget.BudgetState(1.0, 1.0, "2026-12").spent
    state = budget.BudgetState(0.5, 2, "2026-12")
    assert not state.spent and state.message() == "0.500 of 2 GPU-hours used in period 2026-12 (25%)"


def test_hours_hold_each_runs_gpu_seconds_where_they_fell_and_a_closed_period_keeps_days():
    job = Run("h100", 2, DEC + 0.5 * HOUR, DEC + 2 * HOUR)  # 09:30-11:00 on two GPUs, say
    pod = Run("h100", 1, DEC + 23 * HOUR, None, key="p")  # from 23:00, still running
    dec, _ = advance(None, "2026-12", DEC, DEC + 25 * HOUR, [job], [pod], 3)
    assert dec.slurm_hourly == {str(int(DEC)): HOUR, str(int(DEC + HOUR)): 2 * HOUR}
    assert sum(dec.kubernetes_hourly().values()) == 2 * HOUR
    daily = dec.closed_summary()["daily"]
    assert daily == {"slurm": {"2026-12-01": 3.0}, "kubernetes": {"2026-12-01": 1.0, "2026-12-02": 1.0}}
