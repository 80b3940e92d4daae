"""Is every host as the last run left it? One ssh command per host, all at once.

The command runs the probe the last full run installed on each host (role
configuration_fingerprint, files/fingerprint.py) on the record that run wrote, with nothing from the
controller: the host answers {"inputs": <the digest its record names>, "differs": [...]}. A host is
converged when nothing differs and its digest is this run's (aifactory/configure.py).

Over ssh itself rather than an Ansible play: the command needs nothing Ansible gives (no module, no
facts, no templating), and a play costs the controller a forked worker per host, some 26 ms of CPU
each, five times what the ssh client costs. ssh is run as Ansible's ssh connection runs it (its
ControlMaster sockets, its user, its ssh_common_args, sudo where it would become root), so this
reaches the hosts the playbooks reach, through the connections they share. A host it cannot reach
or that gives no answer is not converged: the playbooks run, and say what is wrong.
"""

from __future__ import annotations

import json
import shlex
import subprocess
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

# Where the role installs the probe and keeps the record (its defaults/main.yml names both, and the
# inventory the interpreter: tests/unit/test_configure_converged.py holds them in step).
PROBE = "/usr/local/libexec/aifactory/fingerprint.py"
RECORD = "/var/lib/aifactory/converged.json"
PYTHON = "/usr/bin/python3"
# A host configured by an older version has no probe: it answers so, and the run is a full one.
COMMAND = (
    f"if [ -f {PROBE} ]; then exec {PYTHON} -S {PROBE} converged {RECORD}; fi; "
    """echo '{"inputs": "", "differs": ["no probe installed: not configured by this version yet"]}'"""
)
INPUTS_DIFFER = "inputs (playbooks, inventory or bundle)"
# Ansible's ssh connection defaults (ssh_args, control_path_dir, timeout): the same masters. ssh
# refuses to connect where the sockets' directory is missing, which Ansible creates: so do we.
CONTROL_DIR = Path("~/.ansible/cp").expanduser()
SSH_OPTIONS = [
    "-o",
    "ControlMaster=auto",
    "-o",
    "ControlPersist=60s",
    "-o",
    "BatchMode=yes",
    "-o",
    "ConnectTimeout=10",
]
# At factory scale, more at once than this only queues on the controller's cores.
PARALLEL = 64


def verdict(answer: str, inputs: str) -> list[str]:
    """What differs on a host, from the probe's `answer`: [] when converged with this run's `inputs`."""
    try:
        parsed = json.loads(answer)
        differs = [str(d) for d in parsed["differs"]]
        recorded = parsed["inputs"]
    except (ValueError, KeyError, TypeError):
        return [f"no verdict: {answer.strip()[-200:] or 'no answer'}"]
    return differs if inputs and recorded == inputs else [INPUTS_DIFFER, *differs]


def ssh_argv(hostvars: Mapping[str, Any]) -> list[str]:
    """ssh as Ansible's ssh connection would run COMMAND on a host of the inventory."""
    user = hostvars.get("ansible_user")
    command = COMMAND
    if hostvars.get("ansible_become", True) and user != "root":
        command = f"sudo -n -- /bin/sh -c {shlex.quote(command)}"
    return [
        "ssh",
        *shlex.split(str(hostvars.get("ansible_ssh_common_args", ""))),
        *SSH_OPTIONS,
        "-o",
        f"ControlPath={CONTROL_DIR}/%C",
        *(["-o", f"User={user}"] if user else []),
        *(["-p", str(hostvars["ansible_port"])] if "ansible_port" in hostvars else []),
        str(hostvars.get("ansible_host", hostvars["inventory_hostname"])),
        command,
    ]


def hosts(inventory_file: Path, limit: str | None) -> dict[str, dict[str, Any]]:
    """{host: its variables} of the inventory (aifactory.inventory.render's shape), `limit` an Ansible
    pattern resolved by Ansible itself, as ansible-playbook --limit would."""
    doc = yaml.safe_load(inventory_file.read_text())["all"]
    common = doc.get("vars") or {}
    found = {h: {**common, **(v or {}), "inventory_hostname": h} for h, v in (doc.get("hosts") or {}).items()}
    if not limit:
        return found
    from ansible.inventory.manager import InventoryManager  # only here: a second of imports
    from ansible.parsing.dataloader import DataLoader

    manager = InventoryManager(loader=DataLoader(), sources=[str(inventory_file)])
    manager.subset(limit)
    return {h.name: found[h.name] for h in manager.get_hosts() if h.name in found}


def _ask(hostvars: Mapping[str, Any], inputs: str, timeout: float) -> list[str]:
    try:
        r = subprocess.run(
            ssh_argv(hostvars),
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return [f"unreachable: no answer within {timeout:.0f} s"]
    if r.returncode == 255:  # ssh's own failure: no connection, refused key, unknown host key
        said = r.stderr.strip().splitlines()
        return [f"unreachable: {said[-1] if said else 'ssh failed'}"]
    if r.returncode != 0:
        return [f"no verdict: exit {r.returncode}: {(r.stderr or r.stdout).strip()[-200:]}"]
    return verdict(r.stdout, inputs)


def ask(hostvars: Mapping[str, Mapping[str, Any]], inputs: str, timeout: float = 60) -> dict[str, list[str]]:
    """{host: what differs} for every host at once: [] where the host is as the last run left it and
    that run's inputs were `inputs`; an unreachable host, or one that gave no answer, gets its reason."""
    CONTROL_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=max(1, min(PARALLEL, len(hostvars)))) as pool:
        found = pool.map(lambda h: (h, _ask(hostvars[h], inputs, timeout)), hostvars)
        return dict(found)
