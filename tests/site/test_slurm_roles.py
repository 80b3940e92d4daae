"""The Slurm roles (playbooks/slurm.yml) on a configured site, checked over ssh with testinfra.

munge, MariaDB + slurmdbd + slurmctld on the head, slurmd on every worker (whichever pool: the
kubernetes-pool ones are drained, so a pool move needs no reconfiguration); the generated slurm.conf
and gres.conf must match the site file, and the cluster must schedule GPU jobs on the slurm pool.
"""

from __future__ import annotations

import re
import time

import pytest
import testinfra

from aifactory.site.model import Machine, Site, SlurmSettings
from sandbox import ssh
from tests.conftest import REPO

pytestmark = pytest.mark.site


@pytest.fixture(scope="module")
def hosts(configured_site: Site) -> dict[str, testinfra.host.Host]:
    cfg = str(ssh.config_path(configured_site))
    return {m.name: testinfra.get_host(f"ssh://{m.name}", ssh_config=cfg) for m in configured_site.machines}


@pytest.fixture(scope="module")
def head(configured_site: Site, hosts: dict[str, testinfra.host.Host]) -> testinfra.host.Host:
    return hosts[configured_site.with_role("head")[0].name]


@pytest.fixture(scope="module")
def slurm_nodes(configured_site: Site) -> list[Machine]:
    nodes = configured_site.in_pool("slurm")
    assert nodes, "the site has no slurm-pool machine"
    return nodes


@pytest.fixture(scope="module")
def workers(configured_site: Site) -> list[Machine]:
    """Every Slurm node: the workers of both pools."""
    return [m for m in configured_site.machines if m.pool]


@pytest.fixture(scope="module")
def slurm(configured_site: Site) -> SlurmSettings:
    assert configured_site.slurm is not None, "the site file has no slurm section"
    return configured_site.slurm


def slurm_host_names(site: Site) -> list[str]:
    return [m.name for m in site.with_role("head")] + [m.name for m in site.machines if m.pool]


def sha256(host: testinfra.host.Host, path: str) -> str:
    return host.check_output(f"sha256sum {path}").split()[0]


def expand(hostlist: str) -> list[str]:
    """Slurm's bracket notation, for the simple forms the roles write: nvidia[0-7], gpu-[01-04]."""
    m = re.fullmatch(r"(.*)\[(\d+)-(\d+)\](.*)", hostlist)
    if not m:
        return [hostlist]
    width = len(m.group(2))
    return [f"{m.group(1)}{i:0{width}d}{m.group(4)}" for i in range(int(m.group(2)), int(m.group(3)) + 1)]


def cuda_visible(env_output: str) -> list[int]:
    (value,) = [
        ln.split("=", 1)[1] for ln in env_output.splitlines() if ln.startswith("CUDA_VISIBLE_DEVICES=")
    ]
    return [int(i) for i in value.split(",")]


def conf_lines(text: str, key: str) -> list[dict[str, str]]:
    """`Key=Value Key=Value` lines of a Slurm config that start with `key=`."""
    out = []
    for line in text.splitlines():
        if line.startswith(f"{key}="):
            out.append(dict(word.split("=", 1) for word in line.split()))
    return out


# munge


def test_munge_key_identical_and_private(configured_site: Site, hosts) -> None:
    digests = {}
    for name in slurm_host_names(configured_site):
        key = hosts[name].file("/etc/munge/munge.key")
        assert key.is_file, name
        assert key.user == "munge" and key.group == "munge", name
        assert key.mode == 0o400, f"{name}: mode {key.mode:o}"
        assert key.size >= 32, name
        digests[name] = sha256(hosts[name], "/etc/munge/munge.key")
    assert len(set(digests.values())) == 1, f"munge keys differ: {digests}"


def test_munge_credentials_cross_hosts(head: testinfra.host.Host, slurm_nodes: list[Machine], hosts) -> None:
    """A credential made on the head decodes on a node: same key, both daemons up."""
    cred = head.check_output("munge -n")
    node = hosts[slurm_nodes[0].name]
    assert node.run(f"echo '{cred}' | unmunge").rc == 0


# services


@pytest.mark.parametrize("service", ["munge", "mariadb", "slurmdbd", "slurmctld"])
def test_head_services(head: testinfra.host.Host, service: str) -> None:
    svc = head.service(service)
    assert svc.is_enabled, f"{service} not enabled"
    assert svc.is_running, f"{service} not running"


@pytest.mark.parametrize("service", ["munge", "slurmd"])
def test_node_services(hosts, workers: list[Machine], service: str) -> None:
    for m in workers:
        svc = hosts[m.name].service(service)
        assert svc.is_enabled, f"{m.name}: {service} not enabled"
        assert svc.is_running, f"{m.name}: {service} not running"


def test_slurmdbd_conf_private(head: testinfra.host.Host) -> None:
    f = head.file("/etc/slurm/slurmdbd.conf")
    assert f.user == "slurm" and f.mode == 0o600, f"{f.user} {f.mode:o}"
    assert "StorageType=accounting_storage/mysql" in f.content_string


def test_mariadb_loopback_only(head: testinfra.host.Host) -> None:
    listening = [line.split()[3] for line in head.check_output("ss -Hltn 'sport = :3306'").splitlines()]
    assert listening and set(listening) == {"127.0.0.1:3306"}, listening


def test_slurmdbd_reached_with_quick_acks(head: testinfra.host.Host) -> None:
    """The route sacctmgr and slurmctld take to DbdHost (head's own name) has quickack: without it
    each Slurm RPC stalls on a delayed ACK."""
    assert head.service("aifactory-local-quickack").is_enabled
    dbd_host = head.check_output("awk -F= '/^DbdHost=/{print $2}' /etc/slurm/slurmdbd.conf")
    address = head.check_output(f"getent ahostsv4 {dbd_host}").split()[0]
    route = head.check_output(f"ip route get {address}")
    assert "quickack 1" in route, f"{dbd_host} ({address}): {route}"
    out = head.run("sacctmgr -nP show cluster format=cluster")
    assert out.rc == 0 and out.stdout.strip(), out.stderr


# generated configuration


def test_slurm_conf_identical_everywhere(configured_site: Site, hosts) -> None:
    digests = {n: sha256(hosts[n], "/etc/slurm/slurm.conf") for n in slurm_host_names(configured_site)}
    assert len(set(digests.values())) == 1, f"slurm.conf differs: {digests}"


def test_slurm_conf_nodes_match_site(slurm: SlurmSettings, head, workers: list[Machine]) -> None:
    text = head.file("/etc/slurm/slurm.conf").content_string
    assert f"ClusterName={slurm.cluster_name}" in text.splitlines()
    nodes = {n["NodeName"]: n for n in conf_lines(text, "NodeName")}
    assert sorted(nodes) == sorted(m.name for m in workers)
    for m in workers:
        n = nodes[m.name]
        assert int(n["CPUs"]) == m.cpus, m.name
        assert int(n["RealMemory"]) == m.memory_gib * 1024, m.name
        assert n["Gres"] == f"gpu:{m.gpu_model}:{m.gpu_count}", m.name


def test_slurm_conf_partitions_and_accounting(
    configured_site: Site, slurm: SlurmSettings, head, workers: list[Machine]
) -> None:
    text = head.file("/etc/slurm/slurm.conf").content_string
    parts = conf_lines(text, "PartitionName")
    assert [p["PartitionName"] for p in parts] == [name for name, _ in slurm.partitions]
    for p in parts:  # any worker may join the slurm pool: drain state, not membership, keeps others out
        assert sorted(p["Nodes"].split(",")) == sorted(m.name for m in workers)
    assert [p["Default"] for p in parts] == ["YES"] + ["NO"] * (len(parts) - 1)
    settings = dict(line.split("=", 1) for line in text.splitlines() if "=" in line and " " not in line)
    assert settings["AccountingStorageType"] == "accounting_storage/slurmdbd"
    assert settings["AccountingStorageEnforce"] == slurm.accounting_enforce
    models = sorted({m.gpu_model for m in workers if m.gpu_model})
    assert settings["AccountingStorageTRES"].split(",") == ["gres/gpu"] + [f"gres/gpu:{x}" for x in models]
    assert settings["GresTypes"] == "gpu"
    assert settings["SelectType"] == "select/cons_tres"
    assert "bf_interval=5" in settings["SchedulerParameters"].split(",")
    if configured_site.emulated:  # nspawn hosts: no cgroup plugins
        assert settings["ProctrackType"] == "proctrack/linuxproc"
        assert settings["TaskPlugin"] == "task/none"
        assert settings["JobAcctGatherType"] == "jobacct_gather/none"


def test_gres_conf_matches_site(configured_site: Site, hosts, workers: list[Machine]) -> None:
    for m in workers:
        host = hosts[m.name]
        text = host.file("/etc/slurm/gres.conf").content_string
        assert "AutoDetect=off" in text.splitlines(), m.name
        (line,) = conf_lines(text, "NodeName")
        assert line["NodeName"] == m.name and line["Name"] == "gpu" and line["Type"] == m.gpu_model
        files = expand(line["File"])
        assert len(files) == m.gpu_count, f"{m.name}: {line['File']}"
        # The driver's devices (the emulated hardware makes the same): character devices, NVIDIA's major.
        assert files == [f"/dev/nvidia{i}" for i in range(m.gpu_count)], f"{m.name}: {files}"
        kinds = host.check_output("stat -c '%F %t' " + " ".join(files)).splitlines()
        assert kinds == ["character special file c3"] * m.gpu_count, f"{m.name}: {kinds}"


# the running cluster


def test_sinfo_lists_every_node_idle_with_gpus(head, slurm_nodes: list[Machine]) -> None:
    want = {m.name: f"gpu:{m.gpu_model}:{m.gpu_count}" for m in slurm_nodes}
    deadline = time.monotonic() + 30  # a job of another test may still be completing
    while True:
        out = head.check_output("sinfo -h -N -o '%n %G %t'")
        seen = {line.split()[0]: line.split()[1:] for line in out.splitlines()}
        if all(seen.get(n) == [g, "idle"] for n, g in want.items()) or time.monotonic() > deadline:
            break
        time.sleep(2)
    for name, gres in want.items():
        assert seen.get(name) == [gres, "idle"], f"{name}: {seen.get(name)} in\n{out}"


def test_kubernetes_pool_is_drained_in_slurm(configured_site: Site, head) -> None:
    """Known to Slurm with their GPUs, never offered to it: drained with the node_pool reason."""
    out = head.check_output("sinfo -h -N -o '%n|%G|%T|%E'")
    seen = {line.split("|")[0]: line.split("|")[1:] for line in out.splitlines()}
    for m in configured_site.in_pool("kubernetes"):
        gres, state, reason = seen[m.name]
        assert gres == f"gpu:{m.gpu_model}:{m.gpu_count}", m.name
        assert (state, reason) == ("drained", "aifactory-pool: serves kubernetes"), m.name


def test_srun_on_every_node(head, slurm_nodes: list[Machine]) -> None:
    out = head.check_output(f"timeout 120 srun -N{len(slurm_nodes)} hostname")
    assert sorted(out.split()) == sorted(m.name for m in slurm_nodes)


def test_gpu_job_gets_cuda_visible_devices(head, slurm_nodes: list[Machine]) -> None:
    assert len(cuda_visible(head.check_output("timeout 120 srun -N1 --gres=gpu:2 env"))) == 2
    m = slurm_nodes[0]  # a whole node's GPUs
    out = head.check_output(f"timeout 120 srun -w {m.name} --gres=gpu:{m.gpu_model}:{m.gpu_count} env")
    assert sorted(cuda_visible(out)) == list(range(m.gpu_count))


def test_cluster_registered_in_accounting(configured_site: Site, slurm: SlurmSettings, head) -> None:
    clusters = head.check_output("sacctmgr --noheader --parsable2 show cluster format=cluster").split()
    assert slurm.cluster_name in clusters
    tres = head.check_output("sacctmgr --noheader --parsable2 show tres format=type,name").splitlines()
    assert "gres|gpu" in tres
    for model in {m.gpu_model for m in configured_site.machines if m.pool and m.gpu_model}:
        assert f"gres|gpu:{model}" in tres


def test_no_secret_in_repository(configured_site: Site, head) -> None:
    """The generated DB password lives on the head (slurmdbd.conf) and the controller, not in git."""
    conf = head.file("/etc/slurm/slurmdbd.conf").content_string
    (password,) = [line.split("=", 1)[1] for line in conf.splitlines() if line.startswith("StoragePass=")]
    strong = len(password) >= 16
    assert strong, "the slurmdbd database password is short"
    files = [p for d in ("playbooks", "sites", "tests") for p in (REPO / d).rglob("*") if p.is_file()]
    leaks = [str(p) for p in files if password in p.read_text(errors="ignore")]
    assert not leaks, "files in the repository hold the slurmdbd database password"
