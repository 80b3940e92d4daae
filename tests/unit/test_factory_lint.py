"""`./factory lint` is a gate that can fail: a lint error stops it with a non-zero exit."""

import os
import shutil
import subprocess

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.unit


@pytest.fixture
def tree(tmp_path):
    """A tree with the front door, the project's lint settings and its venv, and nothing else."""
    if not (REPO / ".venv" / "bin" / "ruff").exists():
        pytest.skip("no .venv with ruff: run ./factory lint once to create it")
    for name in ("factory", "pyproject.toml"):
        shutil.copy2(REPO / name, tmp_path / name)
    (tmp_path / ".venv").symlink_to(REPO / ".venv")
    return tmp_path


def lint(tree):
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    return subprocess.run(
        ["bash", str(tree / "factory"), "lint"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def test_a_lint_error_fails_the_gate_before_the_next_linter(tree):
    (tree / "bad.py").write_text("import os\n")  # F401: imported but unused
    p = lint(tree)
    out = p.stdout + p.stderr
    assert p.returncode != 0, out
    assert "bad.py" in out and "F401" in out, out
    assert "Success:" not in out and "would be reformatted" not in out, "linters ran after a failed ruff"


def test_a_format_error_fails_the_gate(tree):
    (tree / "ugly.py").write_text("x = {  'a':1 }\n")
    p = lint(tree)
    out = p.stdout + p.stderr
    assert p.returncode != 0 and "--> ugly.py" in out and "1 file would be reformatted" in out, out
