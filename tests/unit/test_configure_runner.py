"""ansible-runner reads back the extra variables and command line an earlier run was given: a dry run
(`--check`, `site_emulated=false`) must not leak into the next run (aifactory/configure.py)."""

from pathlib import Path

import pytest

from aifactory.configure import forget_earlier_inputs
from tests.unit.ansible_local import run_local

pytestmark = pytest.mark.unit

PLAYBOOK = """- hosts: localhost
  gather_facts: false
  tasks:
    - ansible.builtin.debug:
        msg: "check={{ ansible_check_mode }} probe={{ probe | default('unset') }}"
"""


def _run(data_dir: Path, **kwargs) -> str:
    r = run_local(data_dir, data_dir / "probe.yml", **kwargs)
    msgs = [e["event_data"]["res"]["msg"] for e in r.events if e.get("event") == "runner_on_ok"]
    assert r.status == "successful" and msgs, r.status
    return msgs[-1]


def test_an_earlier_dry_runs_inputs_do_not_leak_into_the_next_run(tmp_path):
    (tmp_path / "probe.yml").write_text(PLAYBOOK)
    assert _run(tmp_path, cmdline="--check", extravars={"probe": "dry"}) == "check=True probe=dry"
    assert _run(tmp_path) == "check=True probe=dry"  # what ansible-runner does by itself
    forget_earlier_inputs(tmp_path)
    assert _run(tmp_path) == "check=False probe=unset"
