"""Records, the JSON report, the summary and the exit code of aifactory validate; CLI exit 2 paths."""

from __future__ import annotations

import json

import pytest

from aifactory import cli
from aifactory.validate import drain, runner
from aifactory.validate.report import (
    CLUSTER,
    ERROR,
    FAILED,
    PASSED,
    SKIPPED,
    Record,
    exit_code,
    summary,
    summary_rows,
    to_json,
)
from tests.conftest import REPO

pytestmark = pytest.mark.unit


def records() -> list[Record]:
    return [
        Record("gpu-01", "munge.key", PASSED, value="83147dacda7b1722", threshold="83147dacda7b1722"),
        Record("gpu-02", "munge.key", FAILED, "munge key sha256 1a2b... differs from head-01 (8314...)"),
        Record("gpu-02", "services", PASSED, value={"munge": "active"}),
        Record("gpu-01", "gpu.ecc", SKIPPED, "emulated site: no GPU hardware"),
        Record("gpu-02", "gpu.ecc", SKIPPED, "emulated site: no GPU hardware"),
        Record(CLUSTER, "cluster.tenants", ERROR, "ApiException: (503)"),
    ]


def test_exit_code_0_only_without_failures_or_errors():
    assert exit_code([]) == 0
    assert exit_code([r for r in records() if r.status in (PASSED, SKIPPED)]) == 0
    assert exit_code([r for r in records() if r.status != ERROR]) == 1
    assert exit_code([r for r in records() if r.status != FAILED]) == 1


def test_json_is_flat_one_record_per_host_and_check():
    data = json.loads(to_json(records(), "local", "standard"))
    assert len(data) == 6
    assert all(
        set(r) == {"site", "level", "host", "check", "status", "value", "threshold", "message", "duration_s"}
        for r in data
    )
    assert data[1]["host"] == "gpu-02" and data[1]["status"] == "failed" and "differs" in data[1]["message"]
    assert data[2]["value"] == {"munge": "active"}


def test_summary_table_names_failing_hosts_and_checks_and_skip_reasons():
    rows = {r["host"]: r for r in summary_rows(records())}
    assert rows["gpu-02"]["failed"] == 1 and rows["gpu-02"]["failed checks"] == "munge.key"
    assert rows[CLUSTER]["failed"] == 1
    text = summary(records(), 3.2)
    assert "FAILED gpu-02 munge.key: munge key sha256" in text
    assert "ERROR cluster cluster.tenants: ApiException" in text
    assert "skipped x2: emulated site: no GPU hardware" in text
    assert text.splitlines()[-1] == (
        "validate FAILED: 2 passed, 2 failed, 2 skipped in 3.2s; failing hosts: cluster, gpu-02"
    )


def test_drain_reasons_name_the_failed_checks_not_the_ones_that_could_not_run():
    rs = [*records(), Record("gpu-02", "slurm.gres_conf", FAILED, "x")]
    # The ERROR (an API server outage, say) drains nothing: its cause need not be the machine.
    assert drain.reasons(rs) == {"gpu-02": "aifactory validate: munge.key, slurm.gres_conf failed"}


class _FakeDrainContext:
    """What drain.apply reads and writes: the schedulers' node lists, scontrol on the head, patch_node."""

    def __init__(self, site, slurm_reasons: dict[str, str], cordoned: dict[str, str | None]):
        from types import SimpleNamespace

        from aifactory.validate.parsers import SlurmNode

        self.site, self.machines, self.head = site, site.machines, site.with_role("head")[0]
        self.commands: list[str] = []
        self.patches: list[tuple[str, dict]] = []
        self._slurm = {
            m.name: SlurmNode(
                m.name, "IDLE+DRAIN" if m.name in slurm_reasons else "IDLE", "", slurm_reasons.get(m.name, "")
            )
            for m in site.in_pool("slurm")
        }
        self._k8s = {
            m.name: SimpleNamespace(
                spec=SimpleNamespace(unschedulable=m.name in cordoned),
                metadata=SimpleNamespace(annotations={"aifactory.io/cordon-reason": cordoned.get(m.name)}),
            )
            for m in site.in_pool("kubernetes")
        }

    def slurm_nodes(self):
        return self._slurm

    def k8s_nodes(self):
        return self._k8s

    def host(self, _machine):
        from types import SimpleNamespace

        def run(cmd):
            self.commands.append(cmd)
            return SimpleNamespace(rc=0, stdout="", stderr="")

        return SimpleNamespace(run=run)

    def core(self):
        from types import SimpleNamespace

        def patch_node(name, body):
            if name == "gpu-06":
                raise RuntimeError("Forbidden: nodes gpu-06")
            self.patches.append((name, body))

        return SimpleNamespace(patch_node=patch_node)


def test_drain_leaves_other_peoples_drains_and_cordons_alone():
    from aifactory.site.validate import load_site

    site = load_site(REPO / "sites" / "local.yaml")
    ctx = _FakeDrainContext(
        site,
        slurm_reasons={"gpu-01": "disk swap, ticket 4711", "gpu-02": "aifactory validate: services failed"},
        cordoned={"gpu-05": None},
    )
    failed = [
        Record(n, "services", FAILED, "slurmd is inactive") for n in ("gpu-01", "gpu-03", "gpu-05", "gpu-06")
    ]
    passed = [Record(n, "services", PASSED) for n in ("gpu-02", "gpu-04")]
    actions = drain.apply(ctx, [*failed, *passed], lambda _: None)  # type: ignore[arg-type]
    assert actions == [
        "gpu-01: left alone, already drained (disk swap, ticket 4711)",
        "gpu-02: slurm resume",  # drained by validate earlier, passes now
        "gpu-03: slurm drain (aifactory validate: services failed)",
        "gpu-05: left alone, already cordoned by someone else",
        "gpu-06: kubernetes cordon failed: Forbidden: nodes gpu-06",
    ]
    assert [c.split()[2:4] for c in ctx.commands] == [
        ["NodeName=gpu-02", "State=RESUME"],
        ["NodeName=gpu-03", "State=DRAIN"],
    ]
    assert ctx.patches == []


def test_bad_site_file_exits_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nmachines: []\n")
    with pytest.raises(SystemExit) as e:
        cli.main(["validate", "--site", str(bad)])
    assert e.value.code == 2
    assert "nothing was started" in capsys.readouterr().err


def test_unknown_limit_and_level_cannot_run():
    from aifactory.site.validate import load_site

    site = load_site(REPO / "sites" / "local.yaml")
    with pytest.raises(runner.RunImpossible, match="gpu-99"):
        runner.select(site, "gpu-01,gpu-99")
    assert [m.name for m in runner.select(site, "gpu-02, head-01")] == ["head-01", "gpu-02"]
    with pytest.raises(runner.RunImpossible, match="unknown level"):
        runner.run(site, "extreme")


def test_site_file_validation_thresholds(write_site):
    from aifactory.site.validate import ERROR as E
    from aifactory.site.validate import check

    base = (REPO / "sites" / "local.yaml").read_text()
    _, site = check(write_site(base + "validation:\n  nccl_min_busbw_gbps: {8xh100: 420, 8xh200: 420.5}\n"))
    assert site is not None and site.validation.nccl_min_busbw_gbps == {"8xh100": 420.0, "8xh200": 420.5}
    findings, _ = check(write_site(base + "validation:\n  nccl_min_busbw_gbps: {h100: 420, 8xh100: -1}\n"))
    msgs = [f.message for f in findings if f.level == E]
    assert any("is not '<count>x<model>'" in m for m in msgs) and any("positive number" in m for m in msgs)
