"""Running a playbook on this machine (local connection) with ansible-runner, for unit tests."""

import json
import subprocess
import sys
from pathlib import Path

import ansible_runner


def run_local(
    data_dir: Path, playbook: Path, inventory: dict | None = None, path_first: Path | None = None, **kwargs
):
    """ansible-runner on this machine with this interpreter, its venv's ansible first on PATH
    (after `path_first`, stand-in commands): on localhost, or on every host of `inventory`
    (connected locally)."""
    local = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    if inventory:
        for host in inventory["all"]["hosts"].values():
            host.update(local)
    return ansible_runner.run(
        private_data_dir=str(data_dir),
        playbook=str(playbook),
        inventory=inventory or {"all": {"hosts": {"localhost": local}}},
        envvars={
            "PATH": (f"{path_first}:" if path_first else "")
            + str(Path(sys.executable).parent)
            + ":/usr/bin:/bin"
        },
        quiet=True,
        **kwargs,
    )


def fingerprint(*args: str) -> dict:
    """The configuration_fingerprint role's script, run here with `args`: its JSON answer."""
    from infra.configuration import FINGERPRINT

    p = subprocess.run([sys.executable, str(FINGERPRINT), *args], capture_output=True, text=True, check=True)
    return json.loads(p.stdout)
