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


def test_drain_reasons_name_the_failed_checks():
    rs = [*records(), Record("gpu-02", "slurm.gres_conf", FAILED, "x")]
    assert drain.reasons(rs) == {
        "gpu-02": "aifactory validate: munge.key, slurm.gres_conf failed",
        CLUSTER: "aifactory validate: cluster.tenants failed",
    }


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
