import subprocess
import sys

import pytest

from aifactory import cli
from tests.conftest import REPO

pytestmark = pytest.mark.unit

SUBCOMMANDS = [
    ["site"],
    ["site", "validate"],
    ["site", "up"],
    ["site", "status"],
    ["site", "down"],
    ["configure"],
    ["deploy"],
    ["validate"],
    ["node"],
    ["node", "move"],
    ["toolchain"],
    ["toolchain", "build"],
    ["toolchain", "bundle"],
    ["toolchain", "status"],
    ["operator"],
    ["operator", "run"],
    ["operator", "crd"],
    ["operator", "start"],
    ["operator", "stop"],
]


@pytest.mark.parametrize("words", SUBCOMMANDS, ids=" ".join)
def test_every_subcommand_explains_itself(words, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([*words, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: aifactory " + " ".join(words))
    assert len(out.splitlines()) > 4


def test_top_level_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    for word in ("site", "toolchain", "Exit codes"):
        assert word in out


def test_validate_exit_codes(write_site, capsys):
    assert cli.main(["site", "validate", str(REPO / "sites" / "local.yaml")]) == 0
    assert "ok: local: 7 machines" in capsys.readouterr().out
    bad = write_site("name: x\nmachines: []\n")
    assert cli.main(["site", "validate", str(bad)]) == 2
    out = capsys.readouterr().out
    assert "networks: needs a list" in out and "FAILED" in out


def test_site_up_with_a_bad_file_starts_nothing(write_site, tmp_path):
    bad = write_site("name: x\nemulated: true\nnetworks: []\nmachines: []\n")
    env = {"AIFACTORY_STATE": str(tmp_path / "state"), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        [sys.executable, "-m", "aifactory.cli", "site", "up", "--site", str(bad)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        check=False,
    )
    assert proc.returncode == 2
    assert "nothing was started" in proc.stderr
    assert "networks" in proc.stdout
    assert not (tmp_path / "state").exists()


def test_operator_crd_names_the_site_gpu_models(capsys):
    import yaml

    assert cli.main(["operator", "crd", "--site", str(REPO / "sites" / "local.yaml")]) == 0
    crd = yaml.safe_load(capsys.readouterr().out)
    quota = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"][
        "gpuQuota"
    ]
    assert "['h100']" in quota["x-kubernetes-validations"][0]["rule"]


def test_operator_start_and_stop_a_background_operator(tmp_path, monkeypatch, capsys):
    """start detaches `operator run` with a pid file and is idempotent; stop ends it. A stand-in
    for the interpreter keeps kopf and the cluster out of a unit test: what is checked is the
    process management, which is the same for the real command."""
    import sys
    import time

    from aifactory import paths
    from sandbox import daemons

    monkeypatch.setenv("AIFACTORY_STATE", str(tmp_path / "state"))
    site = REPO / "sites" / "local.yaml"
    state = paths.site_state_dir("local")
    state.mkdir(parents=True)
    (state / "kubeconfig").write_text("")
    sleeper = tmp_path / "python"
    sleeper.write_text("#!/bin/sh\nexec sleep 60\n")
    sleeper.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(sleeper))
    assert cli.main(["operator", "start", "--site", str(site)]) == 0
    pid_file = state / "operator" / "operator.pid"
    pid = daemons.pid_of(pid_file)
    assert pid and f"pid {pid}" in capsys.readouterr().out
    assert cli.main(["operator", "start", "--site", str(site)]) == 0
    assert daemons.pid_of(pid_file) == pid  # already running: not started twice
    assert cli.main(["operator", "stop", "--site", str(site)]) == 0
    time.sleep(0.2)
    assert daemons.pid_of(pid_file) is None and not pid_file.exists()


def test_toolchain_bundle_refuses_a_target_that_is_not_a_bundle(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert cli.main(["toolchain", "bundle", "--out", str(afile)]) == 2
    assert "is a file, not a directory" in capsys.readouterr().err
    strays = tmp_path / "strays"
    strays.mkdir()
    (strays / "notes.txt").write_text("keep me")
    assert cli.main(["toolchain", "bundle", "--out", str(strays)]) == 2
    assert "not a bundle (notes.txt)" in capsys.readouterr().err
    assert [p.name for p in strays.iterdir()] == ["notes.txt"]  # nothing written


def test_interrupt_exits_130(monkeypatch, capsys):
    from aifactory import toolchain

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(toolchain, "build", interrupted)
    assert cli.main(["toolchain", "build"]) == 130
    assert "interrupted" in capsys.readouterr().err


@pytest.mark.parametrize(
    "error, code",
    [
        ("toolchain", 1),
        ("credentials", 2),
    ],
)
def test_an_expected_failure_is_one_line_and_its_code(monkeypatch, capsys, error, code):
    from aifactory import credentials, toolchain

    exc = {
        "toolchain": toolchain.ToolchainError("go build of kubelet failed: see /tmp/x.log"),
        "credentials": credentials.MissingCredentials("no credentials 'hall-a-bmc' in /etc/aifactory"),
    }[error]

    def fail(*args, **kwargs):
        raise exc

    monkeypatch.setattr(toolchain, "build", fail)
    assert cli.main(["toolchain", "build"]) == code
    err = capsys.readouterr().err
    assert err.strip() == f"aifactory toolchain: {exc}" and "Traceback" not in err


def test_a_bug_still_shows_its_traceback(monkeypatch):
    from aifactory import toolchain

    def bug(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(toolchain, "build", bug)
    with pytest.raises(ZeroDivisionError):
        cli.main(["toolchain", "build"])


def test_destroy_asks_and_refuses_without_a_yes(monkeypatch, capsys):
    from aifactory import deploy

    ran = []
    monkeypatch.setattr(deploy, "run", lambda *a, **k: ran.append(a) or 0)
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    assert cli.main(["deploy", "--destroy"]) == 2
    assert "pass --yes" in capsys.readouterr().err and not ran
    monkeypatch.setattr("sys.stdin.isatty", lambda: True)
    monkeypatch.setattr("builtins.input", lambda prompt: "n")
    assert cli.main(["deploy", "--destroy"]) == 2 and not ran
    monkeypatch.setattr("builtins.input", lambda prompt: "yes")
    assert cli.main(["deploy", "--destroy"]) == 0 and ran == [("local", "destroy")]
    assert cli.main(["deploy", "--destroy", "--yes"]) == 0 and len(ran) == 2


RESULT_COMMANDS = [
    ["site", "validate", str(REPO / "sites" / "local.yaml"), "--json"],
    ["toolchain", "status", "--json"],
]


@pytest.mark.parametrize("words", RESULT_COMMANDS, ids=" ".join)
def test_json_results_parse(words, capsys):
    import json

    cli.main(words)
    json.loads(capsys.readouterr().out)


def test_every_result_printing_command_takes_json():
    """configure, validate, node move, toolchain status/bundle, site status/validate (the site tests
    parse their output on a real site)."""
    for words in (
        ["configure"],
        ["validate"],
        ["node", "move"],
        ["toolchain", "status"],
        ["toolchain", "bundle"],
        ["site", "status"],
        ["site", "validate"],
    ):
        parser = cli.build_parser()
        sub = parser._subparsers._group_actions[0].choices[words[0]]  # type: ignore[union-attr]
        for w in words[1:]:
            sub = sub._subparsers._group_actions[0].choices[w]  # type: ignore[union-attr]
        assert any("--json" in a.option_strings for a in sub._actions), words


def test_real_site_status_without_its_bmc_credentials_exits_2_before_any_request(
    monkeypatch, tmp_path, capsys
):
    """A real site's status asks its BMCs; a missing credential is bad input, named, no traceback, and
    found before any BMC is contacted."""
    from aifactory import bmcs

    monkeypatch.setenv("AIFACTORY_CREDENTIALS_DIR", str(tmp_path))
    asked = []
    monkeypatch.setattr(bmcs, "system", lambda *a, **k: asked.append(a))
    monkeypatch.setattr(bmcs, "_ssh_open", lambda *a, **k: asked.append(a) or "open")
    assert cli.main(["site", "status", "--site", str(REPO / "sites" / "example-groningen.yaml")]) == 2
    err = capsys.readouterr().err
    assert "no credentials 'hall-a-bmc'" in err and "Traceback" not in err and not asked
