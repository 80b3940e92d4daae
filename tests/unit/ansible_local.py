"""Running a playbook on this machine (local connection) with ansible-runner, for unit tests."""

import sys
from pathlib import Path

import ansible_runner


def run_local(data_dir: Path, playbook: Path, **kwargs):
    """ansible-runner on localhost with this interpreter, its venv's ansible first on PATH."""
    return ansible_runner.run(
        private_data_dir=str(data_dir),
        playbook=str(playbook),
        inventory="localhost ansible_connection=local ansible_python_interpreter=" + sys.executable,
        envvars={"PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin"},
        quiet=True,
        **kwargs,
    )
