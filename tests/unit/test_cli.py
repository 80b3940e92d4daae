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
