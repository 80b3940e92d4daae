"""An idempotent `aifactory configure` is one round trip per host: aifactory/converged.py asks each
host over ssh to compare itself with the record the last run left (configuration_fingerprint role,
fingerprint.py `state` and `converged`), and site.yml runs only when some host differs
(aifactory/configure.py)."""

import http.server
import json
import os
import shlex
import subprocess
import threading
from pathlib import Path

import pytest
import yaml

from aifactory import configure, converged, inventory, paths
from aifactory.configure import PlaybookResult, inputs_digest
from aifactory.site.validate import load_site
from tests.unit.ansible_local import fingerprint

pytestmark = pytest.mark.unit


@pytest.fixture
def host(tmp_path) -> dict:
    """A host's managed files and binaries under tmp_path, and the spec that compares them."""
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "slurm.conf").write_text("ClusterName=citest\n")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "kubelet").write_bytes(b"\x7fELF")
    (tmp_path / "sysctl.conf").write_text("# ours\nnet.ipv4.ip_forward = 1\n")
    return {
        "patterns": [str(tmp_path / "etc")],
        "trees": [str(tmp_path / "bin")],
        "units": ["no-such-unit-*.service"],
        "sysctl_conf": str(tmp_path / "sysctl.conf"),
        "modules_conf": str(tmp_path / "modules.conf"),
        "slurm": False,
        "kubernetes": None,
    }


def test_a_host_as_the_last_run_left_it_is_converged_and_any_difference_is_named(host, tmp_path):
    record, spec = str(tmp_path / "var" / "converged.json"), json.dumps(host)
    assert fingerprint("converged", record) == {"inputs": "", "differs": ["no record of an earlier run"]}
    assert fingerprint("state", record, "d1", spec) == {"recorded": record}
    assert oct(Path(record).stat().st_mode & 0o777) == "0o600"
    # The host answers the inputs digest of the run that recorded; the controller compares it.
    assert fingerprint("converged", record) == {"inputs": "d1", "differs": []}
    # A managed file edited, a binary replaced: named.
    (tmp_path / "etc" / "slurm.conf").write_text("ClusterName=edited\n")
    (tmp_path / "bin" / "kubelet").write_bytes(b"\x7fELF, another build")
    differs = fingerprint("converged", record)["differs"]
    assert differs == [f"files: {tmp_path}/etc/slurm.conf", f"trees: {tmp_path}/bin/kubelet"]
    fingerprint("state", record, "d1", spec)
    assert fingerprint("converged", record)["differs"] == []
    Path(record).write_text("[]\n")  # not a record: said, not a traceback
    assert fingerprint("converged", record)["differs"][0].startswith("record unreadable: ")


INPUTS = converged.INPUTS_DIFFER


def test_a_hosts_answer_is_converged_only_with_this_runs_inputs_and_nothing_differing():
    answer = {"inputs": "d1", "differs": []}
    assert converged.verdict(json.dumps(answer), "d1") == []
    assert converged.verdict(json.dumps(answer | {"differs": ["files: /etc/slurm/slurm.conf"]}), "d1") == [
        "files: /etc/slurm/slurm.conf"
    ]
    # Recorded by a run with other playbooks or inventory, or by ansible-playbook by hand (no digest).
    assert converged.verdict(json.dumps(answer | {"inputs": "d0", "differs": ["units: x"]}), "d1") == [
        INPUTS,
        "units: x",
    ]
    assert converged.verdict(json.dumps(answer | {"inputs": ""}), "") == [INPUTS]
    assert converged.verdict("Traceback (most recent call last):\n  ...\nOSError: boom\n", "d1") == [
        "no verdict: Traceback (most recent call last):\n  ...\nOSError: boom"
    ]


@pytest.fixture
def local_ssh(tmp_path, monkeypatch) -> None:
    """An `ssh` first on PATH that runs the command here (its last argument) as sh would on the host;
    a host at `down` is unreachable, `slow` never answers, `broken` fails."""
    fake = tmp_path / "bin" / "ssh"
    fake.parent.mkdir()
    fake.write_text(
        "#!/bin/sh\n"
        "for a; do host=$prev; prev=$a; done\n"
        "case $host in\n"
        '  down) echo "ssh: connect to host down port 22: No route to host" >&2; exit 255;;\n'
        "  slow) sleep 5;;\n"
        "  broken) echo oops >&2; exit 3;;\n"
        "esac\n"
        'exec sh -c "$prev"\n'
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")


def test_every_host_is_asked_at_once_and_failures_and_silence_are_not_converged(
    local_ssh, tmp_path, monkeypatch
):
    monkeypatch.setattr(converged, "CONTROL_DIR", tmp_path / "fresh" / "cp")  # no Ansible run yet
    hostvars = {
        h: {"inventory_hostname": h, "ansible_host": at, "ansible_user": "root"}
        for h, at in (("gpu-01", "here"), ("gpu-02", "down"), ("gpu-03", "slow"), ("gpu-04", "broken"))
    }
    assert converged.ask(hostvars, "d1", timeout=1) == {
        "gpu-01": [INPUTS, "no probe installed: not configured by this version yet"],  # not here
        "gpu-02": ["unreachable: ssh: connect to host down port 22: No route to host"],
        "gpu-03": ["unreachable: no answer within 1 s"],
        "gpu-04": ["no verdict: exit 3: oops"],
    }
    assert (tmp_path / "fresh" / "cp").is_dir()  # ssh refuses a ControlPath in a missing directory


def test_ssh_runs_as_ansibles_connection_would():
    """The inventory's user, ssh_common_args and port, Ansible's ControlMaster sockets (shared with
    the playbooks' run), and sudo for a user that is not root (the plays become root)."""
    site = load_site(paths.REPO / "sites" / "local.yaml")
    local = inventory.render(site, Path("/state/ssh/config"))["all"]
    gpu = {**local["vars"], **local["hosts"]["gpu-01"], "inventory_hostname": "gpu-01"}
    argv = converged.ssh_argv(gpu)
    assert argv[:3] == ["ssh", "-F", "/state/ssh/config"] and argv[-1] == converged.COMMAND
    assert argv[-2] == site.machine("gpu-01").address and "User=root" in argv
    assert f"ControlPath={Path.home()}/.ansible/cp/%C" in argv
    other = converged.ssh_argv({"inventory_hostname": "n1", "ansible_user": "ops", "ansible_port": 2222})
    assert other[-2:] == ["n1", f"sudo -n -- /bin/sh -c {shlex.quote(converged.COMMAND)}"]
    assert "User=ops" in other and other[other.index("-p") + 1] == "2222"


def test_a_limit_is_the_hosts_ansible_would_run_on(tmp_path):
    site = load_site(paths.REPO / "sites" / "local.yaml")
    inv = inventory.write(site, tmp_path / "inventory.yml")
    assert set(converged.hosts(inv, None)) == {m.name for m in site.machines}
    assert set(converged.hosts(inv, "slurm_pool:!gpu-01")) == {
        m.name for m in site.machines if m.pool == "slurm" and m.name != "gpu-01"
    }
    assert converged.hosts(inv, "gpu-0*")["gpu-02"]["ansible_host"] == site.machine("gpu-02").address


def test_the_probe_command_is_the_roles_paths_and_answers_on_a_host(host, tmp_path):
    """converged.COMMAND run by a shell here with its paths moved under tmp_path: the installed probe
    on the record; no probe installed (a host an older version configured)."""
    role = configure.PLAYBOOKS / "roles" / "configuration_fingerprint"
    defaults = yaml.safe_load((role / "defaults" / "main.yml").read_text())
    assert defaults["configuration_fingerprint_script"] == converged.PROBE
    assert defaults["configuration_fingerprint_state_record"] == converged.RECORD
    local = inventory.render(load_site(paths.REPO / "sites" / "local.yaml"))
    assert local["all"]["vars"]["ansible_python_interpreter"] == converged.PYTHON  # the inventories' own

    def probe(installed: Path) -> list[str]:
        moved = converged.COMMAND.replace(converged.PROBE, str(installed))
        moved = moved.replace(converged.RECORD, str(tmp_path / "converged.json"))
        out = subprocess.run(["sh", "-c", moved], capture_output=True, text=True, check=True).stdout
        return converged.verdict(out, "d1")

    assert probe(tmp_path / "none.py") == [INPUTS, "no probe installed: not configured by this version yet"]
    fingerprint("state", str(tmp_path / "converged.json"), "d1", json.dumps(host))
    assert probe(role / "files" / "fingerprint.py") == []


class Site:
    name = "citest"
    bundle_url: str | None = None


@pytest.fixture
def mirror():
    """A bundle mirror on loopback: `mirror.manifest` is what GET <url>/manifest.json answers."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = server.manifest if self.path == "/bundle/manifest.json" else None
            self.send_response(200 if body else 404)
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.manifest = b'{"kubelet": "sha256:1"}'  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()


def test_the_inputs_digest_follows_the_inventory_the_extra_variables_and_the_bundle(
    tmp_path, monkeypatch, mirror
):
    monkeypatch.setenv("AIFACTORY_STATE", str(tmp_path / "state"))
    inventory = tmp_path / "inventory.yml"
    inventory.write_text("all: {hosts: {gpu-01: {pool: slurm}}}\n")
    first = inputs_digest(inventory, {}, "citest", b"")
    assert inputs_digest(inventory, {}, "citest", b"") == first
    assert inputs_digest(inventory, {"probe": 1}, "citest", b"") != first
    secrets = tmp_path / "state" / "sites" / "citest" / "secrets"
    secrets.mkdir(parents=True)
    (secrets / "slurmdbd-password").write_text("s3cret\n")
    assert inputs_digest(inventory, {}, "citest", b"") != first
    inventory.write_text("all: {hosts: {gpu-01: {pool: kubernetes}}}\n")
    assert inputs_digest(inventory, {}, "citest", b"") != first
    # The bundle's manifest, read once by the controller: a new bundle is a new input.
    url = f"http://127.0.0.1:{mirror.server_port}/bundle"
    published = inputs_digest(inventory, {}, "citest", configure.bundle_manifest(url))
    assert inputs_digest(inventory, {}, "citest", configure.bundle_manifest(url)) == published
    mirror.manifest = b'{"kubelet": "sha256:2"}'
    assert inputs_digest(inventory, {}, "citest", configure.bundle_manifest(url)) != published
    assert configure.bundle_manifest(url) == b'{"kubelet": "sha256:2"}'
    assert configure.bundle_manifest(url + "/gone") == b"unreadable: HTTPError"


@pytest.fixture
def runs(tmp_path, monkeypatch) -> list:
    """run_playbook with the runner, the hosts and the inventory stood in: the playbooks it runs and
    each asking of the hosts ("asked") are recorded; the hosts answer from `runs.verdicts`."""
    monkeypatch.setenv("AIFACTORY_STATE", str(tmp_path / "state"))
    monkeypatch.delenv(configure.FULL_ENV, raising=False)
    state = tmp_path / "state" / "sites" / "citest"
    (state / "tenant-operator").mkdir(parents=True)
    (state / "kubeconfig").write_text("{}\n")
    (state / "tenant-operator" / "id_ed25519").write_text("key\n")
    inventory = tmp_path / "inventory.yml"
    inventory.write_text("all: {}\n")
    monkeypatch.setattr(configure, "inventory_for", lambda site: inventory)
    calls: list = []
    verdicts = {"head-01": [], "gpu-01": []}
    # The digest the hosts' records name: as if the last run had these inputs.
    recorded = {"inputs": configure.inputs_digest(inventory, {}, "citest", b"")}

    def runner(site, playbook, limit, check, extravars, progress):
        calls.append((playbook, limit, check, dict(extravars)))
        if playbook in ("site.yml", "record.yml") and not check:
            recorded["inputs"] = extravars["configuration_fingerprint_inputs"]
        stats = {h: dict.fromkeys(configure.STATS, 0) | {"ok": 1} for h in verdicts}
        return PlaybookResult(playbook, "successful", 0.1, stats, [], ["UNVERIFIED on gpu-01: x"])

    def ask(hostvars, inputs):
        calls.append(("asked", sorted(hostvars), None, {"configuration_fingerprint_inputs": inputs}))
        answers = {h: json.dumps({"inputs": recorded["inputs"], "differs": d}) for h, d in verdicts.items()}
        return {h: converged.verdict(a, inputs) for h, a in answers.items()}

    monkeypatch.setattr(configure, "_runner", runner)
    monkeypatch.setattr(converged, "ask", ask)
    monkeypatch.setattr(converged, "hosts", lambda inv, limit: {h: {} for h in verdicts})
    calls.append(verdicts)  # runs[0]: the verdicts to change
    return calls


def test_site_yml_is_skipped_when_every_host_is_converged_and_run_when_one_is_not(runs):
    verdicts, lines = runs[0], []
    first = configure.run_playbook(Site(), "site.yml", progress=lines.append)  # type: ignore[arg-type]
    assert [c[0] for c in runs[1:]] == ["asked"]
    assert first.changed == 0 and "nothing to do" in lines[-1]
    assert runs[1][3]["configuration_fingerprint_inputs"]  # the digest travels to the record
    verdicts["gpu-01"] = ["files: /etc/slurm/slurm.conf"]
    second = configure.run_playbook(Site(), "site.yml", check=True, progress=lines.append)  # type: ignore[arg-type]
    assert [c[0] for c in runs[2:]] == ["asked", "site.yml"]
    digest = runs[1][3]["configuration_fingerprint_inputs"]
    assert runs[3][2] is True and runs[3][3]["configuration_fingerprint_inputs"] == digest
    assert "  gpu-01: files: /etc/slurm/slurm.conf" in lines
    assert second.unverified == ["UNVERIFIED on gpu-01: x"]


def test_full_and_other_playbooks_never_ask(runs, monkeypatch):
    configure.run_playbook(Site(), "site.yml", full=True, progress=lambda _: None)  # type: ignore[arg-type]
    configure.run_playbook(Site(), "node-move.yml", extravars={"m": 1}, progress=lambda _: None)  # type: ignore[arg-type]
    monkeypatch.setenv(configure.FULL_ENV, "1")
    configure.run_playbook(Site(), "site.yml", progress=lambda _: None)  # type: ignore[arg-type]
    assert [c[0] for c in runs[1:]] == ["site.yml", "node-move.yml", "site.yml"]
    assert "configuration_fingerprint_inputs" not in runs[2][3]


def test_a_missing_kubeconfig_on_the_controller_runs_site_yml(runs, tmp_path):
    (tmp_path / "state" / "sites" / "citest" / "kubeconfig").unlink()
    configure.run_playbook(Site(), "site.yml", progress=lambda _: None)  # type: ignore[arg-type]
    assert [c[0] for c in runs[1:]] == ["asked", "site.yml"]


def test_a_run_that_creates_secrets_records_the_digest_with_them(runs, tmp_path, monkeypatch):
    runs[0]["gpu-01"] = ["no record of an earlier run"]
    secrets = tmp_path / "state" / "sites" / "citest" / "secrets"
    real_runner = configure._runner

    def first_run(site, playbook, *args, **kwargs):
        if playbook == "site.yml":  # the munge role writes the controller's key
            secrets.mkdir(parents=True, exist_ok=True)
            (secrets / "munge.key").write_bytes(b"\x00key")
        return real_runner(site, playbook, *args, **kwargs)

    monkeypatch.setattr(configure, "_runner", first_run)
    reads: list[str | None] = []
    monkeypatch.setattr(configure, "bundle_manifest", lambda url: reads.append(url) or b"")
    configure.run_playbook(Site(), "site.yml", progress=lambda _: None)  # type: ignore[arg-type]
    assert [c[0] for c in runs[1:]] == ["asked", "site.yml", "record.yml"]
    assert reads == [None]  # the bundle read once, its manifest in both digests
    before, after = (runs[i][3]["configuration_fingerprint_inputs"] for i in (2, 3))
    assert before != after and runs[3][2] is False
    # The next run's digest is the one recorded: nothing to do. A run that created nothing records once.
    runs[0]["gpu-01"] = []
    configure.run_playbook(Site(), "site.yml", progress=lambda _: None)  # type: ignore[arg-type]
    assert [c[0] for c in runs[4:]] == ["asked"]
    runs[0]["gpu-01"] = ["files: /etc/slurm/slurm.conf"]
    configure.run_playbook(Site(), "site.yml", progress=lambda _: None)  # type: ignore[arg-type]
    assert [c[0] for c in runs[5:]] == ["asked", "site.yml"]
