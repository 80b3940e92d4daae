"""`aifactory node move` without a site: the site-file pool edit and the refusals before any run."""

import difflib

import pytest
import yaml

from aifactory import cli, configure, nodemove
from tests.conftest import REPO

pytestmark = pytest.mark.unit

LOCAL = (REPO / "sites" / "local.yaml").read_text()


def test_pool_edit_changes_one_value_and_keeps_comments():
    new = nodemove.with_pool(LOCAL, "gpu-03", "kubernetes")
    diff = [
        line
        for line in difflib.unified_diff(LOCAL.splitlines(), new.splitlines(), lineterm="", n=0)
        if line[:1] in "+-" and line[:3] not in ("+++", "---")
    ]
    assert diff == ["-    pool: slurm", "+    pool: kubernetes"]
    machines = {m["name"]: m for m in yaml.safe_load(new)["machines"]}
    assert machines["gpu-03"]["pool"] == "kubernetes"
    assert [m["pool"] for n, m in machines.items() if n not in ("head-01", "gpu-03")] == [
        "slurm",
        "slurm",
        "slurm",
        "kubernetes",
        "kubernetes",
    ]
    assert [ln for ln in new.splitlines() if ln.lstrip().startswith("#")] == [
        ln for ln in LOCAL.splitlines() if ln.lstrip().startswith("#")
    ]


def test_pool_edit_in_flow_style_and_quoted():
    text = (
        "# keep me\nmachines:\n"
        "  - {name: a, pool: 'slurm', roles: [gpu]}  # a comment\n"
        '  - name: b\n    pool: "kubernetes"   # trailing\n'
    )
    assert nodemove.with_pool(text, "a", "kubernetes") == (
        "# keep me\nmachines:\n"
        "  - {name: a, pool: kubernetes, roles: [gpu]}  # a comment\n"
        '  - name: b\n    pool: "kubernetes"   # trailing\n'
    )
    assert nodemove.with_pool(text, "b", "slurm").endswith("    pool: slurm   # trailing\n")
    assert nodemove.current_pool(text, "b") == "kubernetes"


@pytest.mark.parametrize(
    ("machine", "pool", "reason"),
    [
        ("gpu-99", "slurm", "no machine 'gpu-99'"),
        ("head-01", "slurm", "has no pool"),
        ("gpu-01", "batch", "unknown pool 'batch'"),
    ],
)
def test_pool_edit_refuses(machine, pool, reason):
    with pytest.raises(nodemove.BadMove, match=reason):
        nodemove.with_pool(LOCAL, machine, pool)


def _no_playbook(*args, **kwargs):
    raise AssertionError("no playbook may run for a refused move")


def test_cli_refuses_bad_moves_with_exit_2(write_site, monkeypatch, capsys):
    monkeypatch.setattr(configure, "run_playbook", _no_playbook)
    site = write_site(LOCAL)
    assert cli.main(["node", "move", "gpu-99", "--to", "kubernetes", "--site", str(site)]) == 2
    assert "no machine 'gpu-99'; nothing was moved" in capsys.readouterr().err
    assert cli.main(["node", "move", "head-01", "--to", "slurm", "--site", str(site)]) == 2
    assert "has no pool" in capsys.readouterr().err
    assert site.read_text() == LOCAL


def test_cli_refuses_to_empty_the_slurm_pool(write_site, monkeypatch, capsys):
    monkeypatch.setattr(configure, "run_playbook", _no_playbook)
    text = LOCAL
    for name in ("gpu-01", "gpu-02", "gpu-03"):
        text = nodemove.with_pool(text, name, "kubernetes")
    site = write_site(text)
    assert cli.main(["node", "move", "gpu-04", "--to", "kubernetes", "--site", str(site)]) == 2
    captured = capsys.readouterr()
    assert "the slurm pool has no machines" in captured.out
    assert "would be invalid; nothing was moved" in captured.err
    assert site.read_text() == text
    assert not list(site.parent.glob("tmp*.yaml")), "the probe file must not be left behind"


def test_cli_usage_errors(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["node", "move", "gpu-01", "--to", "batch"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        cli.main(["node", "move", "gpu-01"])
    assert e.value.code == 2
    assert "--to" in capsys.readouterr().err


def _fake_run(calls, fail=False):
    def run(site, playbook, **kwargs):
        calls.append((playbook, kwargs["extravars"]))
        result = configure.PlaybookResult(playbook, "failed" if fail else "successful", 1.0, {})
        if fail:
            result.failures.append(configure.HostFailure("head-01", "Give up", "gpu-03 still runs 1 job"))
            raise configure.PlaybookFailed(result)
        return result

    return run


def test_cli_moves_then_records_the_pool(write_site, monkeypatch, capsys):
    calls: list = []
    monkeypatch.setattr(configure, "run_playbook", _fake_run(calls))
    site = write_site(LOCAL)
    args = ["node", "move", "gpu-03", "--to", "kubernetes", "--site", str(site), "--timeout", "7"]
    assert cli.main(args) == 0
    want = {"move_machine": "gpu-03", "move_to": "kubernetes", "move_timeout": 7}
    assert calls == [("node-move.yml", want)]
    assert site.read_text() == nodemove.with_pool(LOCAL, "gpu-03", "kubernetes")
    assert "moved from slurm to kubernetes" in capsys.readouterr().out


def test_cli_already_in_pool_reasserts_it_and_keeps_the_file(write_site, monkeypatch, capsys):
    calls: list = []
    monkeypatch.setattr(configure, "run_playbook", _fake_run(calls))
    site = write_site(LOCAL)
    assert cli.main(["node", "move", "gpu-05", "--to", "kubernetes", "--site", str(site)]) == 0
    assert [c[1]["move_to"] for c in calls] == ["kubernetes"]
    assert "already in the kubernetes pool; its state re-asserted" in capsys.readouterr().out
    assert site.read_text() == LOCAL


def test_cli_failed_move_leaves_the_site_file(write_site, monkeypatch, capsys):
    calls: list = []
    monkeypatch.setattr(configure, "run_playbook", _fake_run(calls, fail=True))
    site = write_site(LOCAL)
    assert cli.main(["node", "move", "gpu-03", "--to", "kubernetes", "--site", str(site)]) == 1
    err = capsys.readouterr().err
    assert "gpu-03 still runs 1 job" in err and "still says pool slurm" in err
    assert site.read_text() == LOCAL


def test_inventory_puts_every_worker_in_both_schedulers_groups():
    from aifactory import inventory
    from aifactory.site.validate import load_site

    site = load_site(REPO / "sites" / "local.yaml")
    groups = inventory.render(site)["all"]["children"]
    workers = sorted(m.name for m in site.machines if m.pool)
    assert sorted(groups["workers"]["hosts"]) == workers
    assert sorted([*groups["slurm_pool"]["hosts"], *groups["kubernetes_pool"]["hosts"]]) == workers
    assert not set(groups["slurm_pool"]["hosts"]) & set(groups["kubernetes_pool"]["hosts"])
