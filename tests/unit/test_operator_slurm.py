"""The Slurm side without Slurm: sacctmgr plans, parsing what Slurm prints, batching."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from operators.tenants import slurm
from operators.tenants.spec import SLURM_ORGANIZATION, parse

pytestmark = pytest.mark.unit


def tenant(**over):
    body = {
        "displayName": "Team A (ML)",
        "gpuQuota": {"h100": 8},
        "members": {"slurmUsers": ["alice", "bob"]},
        "slurm": {"fairshare": 10, "maxGPUsPerUser": 4},
        "gpuHourBudget": {"gpuHours": 100},
    }
    body.update(over)
    return parse("team-a", body)


def in_sync(t) -> slurm.Observed:
    d = slurm.desired(t)
    return slurm.Observed(
        account=d.account,
        exists=True,
        organization=SLURM_ORGANIZATION,
        fairshare=d.fairshare,
        grp_tres=dict(d.grp_tres),
        qos_list=frozenset({d.qos}),
        default_qos=d.qos,
        users=set(d.users),
        qos_exists=True,
        qos_max_tres_pu=dict(d.qos_max_tres_pu),
        qos_max_jobs_pu=d.qos_max_jobs_pu,
    )


def test_new_tenant_is_one_qos_one_account_and_its_users():
    cmds = slurm.plan(slurm.desired(tenant()), slurm.Observed("team-a"))
    assert cmds == [
        "add qos tenant-team-a MaxTRESPerUser=gres/gpu=4",
        'add account team-a Description="Team A ML" Organization=aifactory-tenant Parent=root Fairshare=10 '
        "GrpTRES=gres/gpu=8,gres/gpu:h100=8 "
        "QOS=tenant-team-a DefaultQOS=tenant-team-a",
        "add user alice Account=team-a",
        "add user bob Account=team-a",
    ]


def test_in_sync_means_no_command():
    t = tenant()
    assert slurm.plan(slurm.desired(t), in_sync(t)) == []


def test_raising_the_quota_modifies_only_the_limit():
    old, new = tenant(), tenant(gpuQuota={"h100": 16})
    assert slurm.plan(slurm.desired(new), in_sync(old)) == [
        "modify account where name=team-a set GrpTRES=gres/gpu=16,gres/gpu:h100=16"
    ]


def test_removed_limits_are_cleared_with_minus_one():
    old = tenant(gpuQuota={"h100": 8, "a100": 2})
    new = parse(
        "team-a",
        {
            "displayName": "Team A (ML)",
            "gpuQuota": {"h100": 8},
            "members": {"slurmUsers": ["alice", "bob"]},
            "slurm": {"fairshare": 10},
        },
    )
    cmds = slurm.plan(slurm.desired(new), in_sync(old))
    assert "modify qos where name=tenant-team-a set MaxTRESPerUser=gres/gpu=-1" in cmds
    assert "modify account where name=team-a set GrpTRES=gres/gpu=8,gres/gpu:a100=-1" in cmds


def test_a_decaying_grptresmins_budget_from_before_is_cleared():
    t = tenant()
    have = in_sync(t)
    have.grp_tres_mins = {"gres/gpu": 6000}
    assert slurm.plan(slurm.desired(t), have) == [
        "modify account where name=team-a set GrpTRESMins=gres/gpu=-1"
    ]


def test_a_spent_budget_holds_every_gpu_limit_at_zero():
    from operators.tenants.entitlement import Holdings

    d = slurm.desired(tenant(), Holdings(spent=True))
    assert d.grp_tres == {"gres/gpu": 0, "gres/gpu:h100": 0}


def test_sacct_runs_per_account_and_model():
    out = slurm.parse_usage(
        "team-a|billing=4,cpu=4,gres/gpu:h100=4,gres/gpu=4,node=1|1764900000|1764903600\n"
        "team-a|cpu=1,node=1|1764900000|1764900100\n"  # no GPUs
        "team-a|gres/gpu:h100=2,gres/gpu=2|1764905000|Unknown\n"  # still running
        "team-b|gres/gpu:a100=1,gres/gpu=1|Unknown|Unknown\n"  # never started
    )
    assert list(out) == ["team-a"]
    done, running = out["team-a"]
    assert (done.model, done.gpus, done.end - done.start) == ("h100", 4, 3600)
    assert running.end is None and running.seconds(since=1764904000, now=1764906000) == 2 * 1000


def test_hand_edits_are_put_back():
    t = tenant()
    have = in_sync(t)
    have.fairshare, have.users, have.qos_list = (
        1,
        {"alice", "mallory"},
        frozenset({"normal", "tenant-team-a"}),
    )
    assert slurm.plan(slurm.desired(t), have) == [
        "modify account where name=team-a set Fairshare=10 QOS=tenant-team-a",
        "add user bob Account=team-a",
        "remove user where name=mallory account=team-a",
    ]


def test_delete_removes_users_before_the_account_then_its_qos():
    assert slurm.delete_plan("team-a") == [
        "remove user where account=team-a",
        "remove account where name=team-a",
        "remove qos where name=tenant-team-a",
    ]


SAMPLE = """#assoc
team-a||10|gres/gpu:h100=8,gres/gpu=8|gres/gpu=6000|tenant-team-a|tenant-team-a
team-a|alice|1|||tenant-team-a|tenant-team-a
#acct
team-a|aifactory-tenant
#qos
tenant-team-a|gres/gpu=4|
#jobs
team-a|cpu=1,mem=4G,node=1,billing=1,gres/gpu=8,gres/gpu:h100=8|
other|cpu=1,gres/gpu=2,gres/gpu:h100=2|
"""


def test_parse_observation():
    obs = slurm.parse_observation(SAMPLE, ["team-a", "team-b"])
    a, b = obs["team-a"], obs["team-b"]
    assert a.exists and a.fairshare == 10 and a.users == {"alice"}
    assert a.grp_tres == {"gres/gpu:h100": 8, "gres/gpu": 8} and a.grp_tres_mins == {"gres/gpu": 6000}
    assert a.qos_exists and a.qos_max_tres_pu == {"gres/gpu": 4} and a.qos_max_jobs_pu is None
    assert a.running_jobs == 1 and a.gpus_in_use == {"h100": 8}
    assert not b.exists and not b.qos_exists and b.running_jobs == 0
    assert a.organization == SLURM_ORGANIZATION and b.organization is None
    assert slurm.plan(slurm.desired(tenant()), a) == [
        "modify account where name=team-a set GrpTRESMins=gres/gpu=-1",
        "add user bob Account=team-a",
    ]


def test_an_account_the_operator_did_not_make_is_never_taken_over():
    hand_made = slurm.parse_observation(
        "#assoc\nteam-a||1|||normal|normal\n#acct\nteam-a|physics\n", ["team-a"]
    )
    with pytest.raises(slurm.SlurmError) as e:
        slurm.plan(slurm.desired(tenant()), hand_made["team-a"])
    assert e.value.reason == "AccountNotOwned"
    assert "Organization=physics, not aifactory-tenant" in str(e.value)


def test_slurmctld_down_is_its_own_reason():
    text = (
        "#assoc\n#qos\n#jobs\n#error jobs slurm_load_jobs error: Unable to contact slurm controller\n#share\n"
    )
    with pytest.raises(slurm.SlurmError) as e:
        slurm.parse_observation(text, ["team-a"])
    assert e.value.reason == "SlurmctldUnavailable" and "Unable to contact" in str(e.value)


def test_slurmdbd_down_is_its_own_reason():
    text = "#assoc\n#error assoc sacctmgr: error: Problem talking to the database\n#qos\n#jobs\n#share\n"
    with pytest.raises(slurm.SlurmError) as e:
        slurm.parse_observation(text, ["team-a"])
    assert e.value.reason == "SlurmdbdUnavailable"


class FakeRunner:
    def __init__(self, err: str = ""):
        self.calls: list[tuple[str, str]] = []
        self.err = err

    def run(self, script, stdin="", timeout=60):
        self.calls.append((script, stdin))
        return slurm.Result(0, "", self.err if "bad" in stdin else "")


def test_apply_is_one_sacctmgr_process_reading_all_commands():
    r = FakeRunner()
    slurm.SacctmgrAccounts(r).apply(["add qos q", "add account a"])
    assert r.calls == [("sacctmgr -i", "add qos q\nadd account a\nquit\n")]


def test_sync_observes_then_applies_its_plan_and_hands_back_a_future():
    r = FakeRunner()
    want = slurm.desired(tenant())
    cmds, have = slurm.SacctmgrAccounts(r).sync(want).result(5)
    assert not have.exists and cmds == slurm.plan(want, have) and cmds
    assert [script for script, _ in r.calls] == [slurm.observe_script(["team-a"]), "sacctmgr -i"]
    assert all(c in r.calls[1][1].splitlines() for c in cmds)


def test_a_failed_observation_applies_nothing_and_fails_the_future():
    class Down(FakeRunner):
        def run(self, script, stdin="", timeout=60):
            self.calls.append((script, stdin))
            return slurm.Result(0, "#assoc\n#error assoc Connection refused\n", "")

    r = Down()
    with pytest.raises(slurm.SlurmError, match="Connection refused"):
        slurm.SacctmgrAccounts(r).sync(slurm.desired(tenant())).result(5)
    assert len(r.calls) == 1  # observed only: nothing applied on a failed observation


def test_sacctmgr_stderr_is_a_failure_with_its_message():
    r = FakeRunner(err=" This account 'x' doesn't exist.\n")
    with pytest.raises(slurm.SlurmError, match="doesn't exist") as e:
        slurm.SacctmgrAccounts(r).apply(["bad"])
    assert e.value.reason == "SacctmgrFailed"


def test_group_commit_batches_concurrent_callers_and_attributes_errors():
    batches: list[list[int]] = []
    gate = threading.Event()

    def fn(items):
        batches.append(list(items))
        gate.wait(5)
        return [ValueError(i) if i == 13 else i * 2 for i in items]

    gc = slurm.GroupCommit(fn)
    results: dict[int, object] = {}

    def call(i):
        try:
            results[i] = gc.submit(i)
        except ValueError as e:
            results[i] = e

    first = threading.Thread(target=call, args=(0,))
    first.start()
    while not batches:
        time.sleep(0.01)
    others = [threading.Thread(target=call, args=(i,)) for i in range(1, 20)]
    for th in others:
        th.start()
    while sum(1 for _ in gc._queue) < 19:
        time.sleep(0.01)
    gate.set()
    for th in [first, *others]:
        th.join(5)
    assert batches[0] == [0] and sorted(batches[1]) == list(range(1, 20)) and len(batches) == 2
    assert results[5] == 10 and isinstance(results[13], ValueError)


def recording_batches() -> tuple[list[list[int]], Callable[[list[int]], list[int]]]:
    """A batch function that returns its items and records each batch it was called with."""
    batches: list[list[int]] = []

    def fn(items: list[int]) -> list[int]:
        batches.append(list(items))
        return list(items)

    return batches, fn


def test_group_commit_waits_for_a_quiet_moment_so_a_burst_shares_its_first_batch():
    batches, fn = recording_batches()
    gc = slurm.GroupCommit(fn, quiet=0.3, max_wait=5)
    futures = []
    for i in range(5):  # arrivals 0.1 s apart: never 0.3 s quiet until the last
        futures.append(gc.submit_async(i))
        time.sleep(0.1)
    assert [f.result(5) for f in futures] == list(range(5))
    assert batches == [[0, 1, 2, 3, 4]]
    # a full batch does not wait
    gc = slurm.GroupCommit(fn, max_batch=2, quiet=30, max_wait=30)
    assert [f.result(5) for f in [gc.submit_async(7), gc.submit_async(8)]] == [7, 8]


def test_group_commit_holds_a_batch_for_an_announced_item_up_to_max_wait():
    batches, fn = recording_batches()
    gc = slurm.GroupCommit(fn, quiet=0.05, max_wait=5)
    gc.expect()
    first = gc.submit_async(1)
    time.sleep(0.3)  # quiet long past, but item 2 was announced
    assert not first.done()
    second = gc.submit_async(2, expected=True)
    assert (first.result(5), second.result(5)) == (1, 2) and batches == [[1, 2]]
    # an announced item that never comes (unexpect) releases the batch at once
    gc.expect()
    third = gc.submit_async(3)
    time.sleep(0.2)
    assert not third.done()
    gc.unexpect()
    assert third.result(1) == 3
    # ... and one that never says so holds it no longer than max_wait
    gc = slurm.GroupCommit(fn, quiet=0.05, max_wait=0.5)
    gc.expect()
    t0 = time.monotonic()
    assert gc.submit_async(4).result(5) == 4 and 0.4 < time.monotonic() - t0 < 2


def test_failed_batch_is_retried_per_tenant_to_find_the_culprit():
    r = FakeRunner(err="Unknown option\n")
    acc = slurm.SacctmgrAccounts(r)
    out = acc._apply_batch([["good 1"], ["bad 2"], ["good 3"]])
    assert out[0] is None and out[2] is None and isinstance(out[1], slurm.SlurmError)
    assert len(r.calls) == 4  # the batch, then one per tenant


def test_delete_goes_through_the_single_writer_and_checks_the_account_is_gone():
    r = FakeRunner()
    slurm.SacctmgrAccounts(r).delete("team-a", cancel_jobs=False)
    assert r.calls[0] == ("sacctmgr -i", "\n".join(slurm.delete_plan("team-a")) + "\nquit\n")
    assert "show assoc where account=team-a" in r.calls[1][0]


def test_delete_that_left_the_account_is_an_error():
    class Stubborn(FakeRunner):
        def run(self, script, stdin="", timeout=60):
            super().run(script, stdin, timeout)
            out = "#assoc\nteam-a||1|||tenant-team-a|tenant-team-a\n#qos\n#jobs\n#share\n"
            return slurm.Result(0, out if "show assoc" in script else "", "")

    with pytest.raises(slurm.SlurmError) as e:
        slurm.SacctmgrAccounts(Stubborn()).delete("team-a", cancel_jobs=False)
    assert e.value.reason == "DeleteIncomplete"


def test_a_tenant_without_per_user_caps_needs_no_qos():
    t = parse("team-b", {"displayName": "B", "gpuQuota": {"h100": 8}, "members": {"slurmUsers": ["alice"]}})
    cmds = slurm.plan(slurm.desired(t), slurm.Observed("team-b"))
    assert not any("qos" in c.split("Account")[0].lower() for c in cmds), cmds
    assert not any("QOS=" in c for c in cmds), cmds


def test_a_batch_of_tenants_is_one_command_per_phase_and_setting():
    specs = [
        parse(f"t{i}", {"displayName": "B", "gpuQuota": {"h100": 8}, "members": {"slurmUsers": ["root"]}})
        for i in range(3)
    ]
    plans = [slurm.plan(slurm.desired(t), slurm.Observed(t.name)) for t in specs]
    assert slurm.coalesce(plans) == [
        'add account t0,t1,t2 Description="B" Organization=aifactory-tenant Parent=root Fairshare=1 '
        "GrpTRES=gres/gpu=8,gres/gpu:h100=8",
        "add user root Account=t0,t1,t2",
    ]
    assert slurm.coalesce([slurm.delete_plan("a"), slurm.delete_plan("b")]) == [
        "remove user where account=a,b",
        "remove account where name=a,b",
        "remove qos where name=tenant-a,tenant-b",
    ]


def test_coalescing_keeps_a_delete_and_a_recreate_in_order():
    t = parse("a", {"displayName": "A", "gpuQuota": {"h100": 1}})
    out = slurm.coalesce([slurm.delete_plan("a"), slurm.plan(slurm.desired(t), slurm.Observed("a"))])
    assert out[0].startswith("remove user") and out[-1].startswith("add account a ")


def test_a_large_batch_names_at_most_so_many_accounts_per_command(monkeypatch):
    monkeypatch.setattr(slurm, "NAMES_PER_COMMAND", 2)
    out = slurm.coalesce([slurm.delete_plan(n) for n in "abcde"])
    assert out == [
        "remove user where account=a,b",
        "remove user where account=c,d",
        "remove user where account=e",
        "remove account where name=a,b",
        "remove account where name=c,d",
        "remove account where name=e",
        "remove qos where name=tenant-a,tenant-b",
        "remove qos where name=tenant-c,tenant-d",
        "remove qos where name=tenant-e",
    ]
