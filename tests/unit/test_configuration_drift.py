"""Drift on the hosts: the configuration_fingerprint role records what the playbooks manage, and
AnsibleConfiguration's read (`pulumi refresh`) names each host and file that changed since.

The fingerprint script on real files, the role through ansible-runner on this machine (check mode
writes nothing), and the provider's read and diff with a stand-in `ssh` that runs the command here.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from aifactory.configure import forget_earlier_inputs
from infra import configuration
from infra.configuration import AS_CONFIGURED, FINGERPRINT, AnsibleProvider, describe, hosts_state
from tests.unit.ansible_local import fingerprint, run_local

pytestmark = pytest.mark.unit

ROLE = FINGERPRINT.parent.parent


@pytest.fixture
def etc(tmp_path) -> Path:
    """Managed files: a directory tree, a unit matched by a glob, a link."""
    etc = tmp_path / "etc"
    (etc / "slurm").mkdir(parents=True)
    (etc / "slurm" / "slurm.conf").write_text("ClusterName=citest\n")
    (etc / "slurm" / "gres.conf").write_text("Name=gpu\n")
    (etc / "systemd").mkdir()
    (etc / "systemd" / "kubelet.service").write_text("[Service]\n")
    (etc / "systemd" / "other.service").write_text("[Service]\n")  # not ours: not matched
    (etc / "systemd" / "kubelet.service.d").mkdir()
    (etc / "slurm" / "current").symlink_to("slurm.conf")
    return etc


def patterns(etc: Path) -> list[str]:
    return [str(etc / "slurm"), str(etc / "systemd" / "kube*.service*"), str(etc / "absent.conf")]


def test_the_record_names_every_managed_file_and_a_changed_one_is_found(etc, tmp_path):
    record = fingerprint("record", *patterns(etc))
    assert sorted(record["files"]) == [
        str(etc / "slurm" / "current"), str(etc / "slurm" / "gres.conf"), str(etc / "slurm" / "slurm.conf"),
        str(etc / "systemd" / "kubelet.service")]  # fmt: skip
    assert record["files"][str(etc / "slurm" / "current")] == "symlink:slurm.conf"
    assert record["files"][str(etc / "slurm" / "gres.conf")].startswith("sha256:")
    saved = tmp_path / "configuration.json"
    saved.write_text(json.dumps(record))
    assert fingerprint("compare", str(saved)) == {"drifted": []}

    (etc / "slurm" / "slurm.conf").write_text("ClusterName=edited\n")
    (etc / "slurm" / "gres.conf").unlink()
    (etc / "systemd" / "kubelet.service.d" / "override.conf").write_text("[Service]\n")
    (etc / "systemd" / "other.service").write_text("edited\n")
    (etc / "slurm" / "current").unlink()
    (etc / "slurm" / "current").symlink_to("gres.conf")
    assert fingerprint("compare", str(saved))["drifted"] == [
        f"{etc}/slurm/current (changed)",
        f"{etc}/slurm/gres.conf (removed)",
        f"{etc}/slurm/slurm.conf (changed)",
        f"{etc}/systemd/kubelet.service.d/override.conf (added)",
    ]
    assert fingerprint("compare", str(tmp_path / "none.json")) == {
        "drifted": [f"{tmp_path}/none.json (missing)"]
    }


PLAYBOOK = """- hosts: localhost
  gather_facts: false
  roles:
    - role: {role}
      configuration_fingerprint_paths: {paths}
      configuration_fingerprint_record: {record}
      configuration_fingerprint_state_record: {record}.state
      configuration_fingerprint_script: {record}.probe/fingerprint.py
"""


def _run_role(tmp_path: Path, check: bool = False) -> int:
    """The role on this machine; the number of changed tasks."""
    forget_earlier_inputs(tmp_path / "runner")  # or ansible-runner repeats an earlier --check
    r = run_local(
        tmp_path / "runner", tmp_path / "fingerprint.yml", cmdline="--check --diff" if check else None
    )
    assert r.status == "successful", r.stdout.read()[-2000:]
    return sum((r.stats.get("changed") or {}).values())


def test_the_role_records_once_and_never_in_check_mode(etc, tmp_path):
    record = tmp_path / "var" / "configuration.json"
    (tmp_path / "runner").mkdir()
    text = PLAYBOOK.format(role=ROLE, paths=json.dumps(patterns(etc)), record=record)
    (tmp_path / "fingerprint.yml").write_text(text)
    assert _run_role(tmp_path, check=True) > 0  # what it would do, on a host never fingerprinted
    assert not record.exists() and not record.parent.exists()
    assert _run_role(tmp_path) == 3  # the directories, the probe and the record
    assert (tmp_path / "var" / "configuration.json.probe" / "fingerprint.py").read_bytes() == (
        FINGERPRINT.read_bytes()
    )
    assert fingerprint("compare", str(record)) == {"drifted": []}
    assert _run_role(tmp_path) == 0  # a second run changes nothing
    before = record.read_text()
    (etc / "slurm" / "slurm.conf").write_text("ClusterName=edited\n")
    assert _run_role(tmp_path, check=True) == 1
    assert record.read_text() == before
    assert _run_role(tmp_path) == 1
    assert fingerprint("compare", str(record)) == {"drifted": []}


SITE = """
name: drifttest
emulated: true
ssh_user: USER
networks:
  - {name: mgmt, cidr: 198.18.0.0/24, gateway: 198.18.0.1, bridge: afbr9}
machines:
  - name: head-01
    roles: [head, gpu]
    pool: slurm
    bmc: {endpoint: "http://127.0.0.1:8101", credentials: test-bmc}
    cpus: 4
    memory_gib: 16
    gpus: {model: h100, count: 8}
    nics: [{name: host0, mac: "02:af:00:00:01:0b", address: 198.18.0.11}]
  - name: gpu-01
    roles: [gpu]
    pool: slurm
    bmc: {endpoint: "http://127.0.0.1:8102", credentials: test-bmc}
    cpus: 4
    memory_gib: 16
    gpus: {model: h100, count: 8}
    nics: [{name: host0, mac: "02:af:00:00:01:0c", address: 198.18.0.12}]
"""

# Stands in for ssh: logs its arguments; 198.18.0.12 does not answer; elsewhere the remote command
# runs here.
FAKE_SSH = """#!/bin/sh
echo "$@" >> {log}
for a; do last=$a; done
case "$*" in *198.18.0.12*)
  echo "ssh: connect to host 198.18.0.12 port 22: No route to host" >&2; exit 255;;
esac
exec sh -c "${{last#sudo -n }}"
"""


@pytest.fixture
def drift_site(etc, tmp_path, monkeypatch):
    """head-01 configured (its record written), gpu-01 down; props as the provider keeps them."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "ssh").write_text(FAKE_SSH.format(log=tmp_path / "ssh.log"))
    (bin_dir / "ssh").chmod(0o755)
    (bin_dir / "python3").symlink_to(sys.executable)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("AIFACTORY_STATE", str(tmp_path / "state"))
    record = tmp_path / "configuration.json"
    record.write_text(json.dumps(fingerprint("record", *patterns(etc))))
    monkeypatch.setattr(configuration, "RECORD", str(record))
    site_file = tmp_path / "drifttest.yaml"
    site_file.write_text(SITE.replace("USER", "root"))
    props = {"site_file": str(site_file), "playbook": "site.yml", "machines": ["head-01", "gpu-01"],
             "site_digest": "a", "playbooks_digest": "b", "bundle_digest": "c",
             "hosts_state": AS_CONFIGURED}  # fmt: skip
    return props, etc, tmp_path


UNREACHABLE = "unknown: gpu-01: ssh 198.18.0.12: ssh: connect to host 198.18.0.12 port 22: No route to host"


def test_refresh_names_the_host_and_file_and_up_runs_the_playbooks_again(drift_site):
    props, etc, _ = drift_site
    provider = AnsibleProvider()
    read = provider.read("ansible-site.yml", props).outs
    # A host that does not answer is unknown, never as-configured; and the next `up` runs Ansible.
    assert read["hosts_state"] == UNREACHABLE
    assert provider.diff("ansible-site.yml", read, props).changes
    props["machines"] = ["head-01"]
    assert provider.read("ansible-site.yml", props).outs["hosts_state"] == AS_CONFIGURED
    assert not provider.diff("ansible-site.yml", {**props, "hosts_state": AS_CONFIGURED}, props).changes

    (etc / "slurm" / "slurm.conf").write_text("ClusterName=edited\n")
    read = provider.read("ansible-site.yml", props).outs
    assert read["hosts_state"] == f"drifted: head-01: {etc}/slurm/slurm.conf (changed)"
    assert read["site_digest"] == "a"  # everything else as it was
    assert provider.diff("ansible-site.yml", read, props).changes


def test_the_local_site_is_reached_with_its_ssh_config_a_real_one_as_the_operator(drift_site):
    props, _, tmp = drift_site
    config = tmp / "state" / "sites" / "drifttest" / "ssh" / "config"
    config.parent.mkdir(parents=True)
    config.write_text("")
    hosts_state({**props, "machines": ["head-01"]})
    config.unlink()
    Path(props["site_file"]).write_text(SITE.replace("USER", "ansible"))
    hosts_state({**props, "machines": ["head-01"]})
    record = configuration.RECORD
    assert (tmp / "ssh.log").read_text().splitlines() == [
        f"-F {config} 198.18.0.11 python3 - compare {record}",
        f"-o BatchMode=yes -o ConnectTimeout=10 ansible@198.18.0.11 sudo -n python3 - compare {record}",
    ]


def test_hosts_that_cannot_say_are_unknown_with_the_reason(drift_site):
    props, _, _ = drift_site

    def timeout(site, machine, args, script):
        raise subprocess.TimeoutExpired("ssh", 60)

    def answer(stdout: str, rc: int = 0, stderr: str = ""):
        return lambda site, machine, args, script: subprocess.CompletedProcess([], rc, stdout, stderr)

    assert hosts_state(props, timeout) == (
        "unknown: gpu-01: no answer over ssh within 60s; head-01: no answer over ssh within 60s"
    )
    no_sudo = answer("", 1, "sudo: a password is required\n")
    assert hosts_state(props, no_sudo).startswith(
        "unknown: gpu-01: the fingerprint check exited with status 1: sudo: a password is required;"
    )
    assert hosts_state(props, answer("Welcome!\n")).startswith(
        "unknown: gpu-01: unexpected answer from the fingerprint check: 'Welcome!\\n';"
    )
    gone = {**props, "machines": ["head-01", "gpu-09"]}
    assert hosts_state(gone, answer('{"drifted": []}')) == "unknown: gpu-09: no longer in the site file"
    Path(props["site_file"]).write_text("name: [")
    assert hosts_state(props, answer("")).startswith(f"unknown: site file {props['site_file']}: ")


def test_the_state_names_a_few_paths_per_host_and_counts_the_rest():
    paths = [f"/etc/slurm/{i}.conf (changed)" for i in range(7)]
    assert describe({"gpu-02": paths, "gpu-01": ["/etc/munge/munge.key (changed)"]}, {"gpu-03": "down"}) == (
        "drifted: gpu-01: /etc/munge/munge.key (changed); gpu-02: /etc/slurm/0.conf (changed), "
        "/etc/slurm/1.conf (changed), /etc/slurm/2.conf (changed), /etc/slurm/3.conf (changed), "
        "/etc/slurm/4.conf (changed) and 2 more | unknown: gpu-03: down"
    )
    assert describe({}, {}) == AS_CONFIGURED


def test_up_after_drift_repairs_only_the_drifted_machines(drift_site, monkeypatch):
    props, etc, _ = drift_site
    runs = []
    monkeypatch.setattr(configuration, "_configure", lambda p, limit=None: runs.append(limit) or p)
    provider = AnsibleProvider()
    props["machines"] = ["head-01"]
    (etc / "slurm" / "slurm.conf").write_text("ClusterName=edited\n")
    read = provider.read("ansible-site.yml", props).outs
    assert read["repair_hosts"] == ["head-01"]
    provider.update("ansible-site.yml", read, props)
    # a changed playbook tree (or site file, bundle, machine list) re-runs them everywhere
    provider.update("ansible-site.yml", read, {**props, "playbooks_digest": "new"})
    assert runs == [["head-01"], None]
