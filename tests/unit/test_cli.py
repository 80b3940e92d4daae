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
    ["toolchain", "status"],
    ["operator"],
    ["operator", "run"],
    ["operator", "crd"],
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
