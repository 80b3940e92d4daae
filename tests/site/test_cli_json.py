"""The CLI's --json on a real site: the result alone on stdout (progress on stderr), and it parses."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from aifactory.site.model import Site

pytestmark = pytest.mark.site

CLI = [sys.executable, "-m", "aifactory.cli"]


def run(*args: str) -> tuple[int, str, str]:
    p = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=600, check=False)
    return p.returncode, p.stdout, p.stderr


def test_configure_json_is_the_per_host_summary(configured_site: Site):
    rc, out, err = run("configure", "--site", str(configured_site.path), "--playbook", "gpu.yml", "--json")
    assert rc == 0, err[-2000:]
    result = json.loads(out)
    assert result["ok"] and result["playbook"] == "gpu.yml" and result["changed"] == 0
    assert {h["host"] for h in result["hosts"]} == {m.name for m in configured_site.machines if m.gpu_count}
    assert "[  1]" in err  # the task lines went to stderr


def test_validate_json_is_the_report(configured_site: Site, tmp_path: Path):
    site = str(configured_site.path)
    rc, out, err = run(
        "validate", "--site", site, "--level", "quick", "--report-dir", str(tmp_path), "--json"
    )
    assert rc == 0, err[-2000:]
    assert json.loads(out) == json.loads((tmp_path / "validate.json").read_text())
