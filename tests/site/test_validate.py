"""`aifactory validate` against a configured site, through the CLI as an operator (and CI) runs it.

The standard level must pass on a correctly configured site; each injected fault must fail exactly
the check that is about it, on the faulted host, with a message that names it. Every fault is undone
in a `finally`, so the tests after these find the shared site as they expect it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import testinfra
import yaml

from aifactory.site.model import Machine, Site
from aifactory.site.validate import load_site
from aifactory.validate.context import EMULATED_NO_GPU
from sandbox import ssh
from tests.site.conftest import wait_until

pytestmark = pytest.mark.site

CLI = [sys.executable, "-m", "aifactory.cli", "validate"]
GPU_HARDWARE_CHECKS = {
    "gpu.driver",
    "gpu.inventory",
    "gpu.persistence",
    "gpu.ecc",
    "gpu.nvlink",
    "gpu.dcgm_diag",
}


def validate(site_file: Path, report_dir: Path, *args: str) -> tuple[int, list[dict], str]:
    """Run the CLI; return (exit code, JSON records or [], combined output)."""
    p = subprocess.run(
        [*CLI, "--site", str(site_file), "--report-dir", str(report_dir), *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    out = p.stdout + p.stderr
    report = report_dir / "validate.json"
    records = json.loads(report.read_text()) if report.exists() else []
    return p.returncode, records, out


def failed(records: list[dict]) -> set[tuple[str, str]]:
    return {(r["host"], r["check"]) for r in records if r["status"] in ("failed", "error")}


def message(records: list[dict], host: str, check: str) -> str:
    (rec,) = [r for r in records if r["host"] == host and r["check"] == check]
    return rec["message"]


@pytest.fixture(scope="module")
def site(configured_site: Site) -> Site:
    return load_site(configured_site.path)  # as the CLI reads it (earlier tests may move machines)


@pytest.fixture(scope="module", autouse=True)
def tenant_operator(site: Site, tmp_path_factory):
    """A configured site runs its tenant operator once the Tenant CRD is installed. The operator
    tests install the CRD and stop their own operator at the end: here it runs the way operators run
    it (`aifactory operator run`) for this module, unless one already runs."""
    from kubernetes import client, config

    from aifactory import paths
    from aifactory.validate.checks.cluster import TENANT_KIND, _local_operator

    api = config.new_client_from_config(config_file=str(paths.site_state_dir(site.name) / "kubeconfig"))
    crds = client.ApiextensionsV1Api(api).list_custom_resource_definition().items
    api.close()
    if not any(c.spec.names.kind == TENANT_KIND for c in crds) or _local_operator():
        yield None
        return
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    with log.open("wb") as out:
        cmd = [sys.executable, "-m", "aifactory.cli", "operator", "run", "--site", str(site.path)]
        proc = subprocess.Popen([*cmd, "--metrics-port", "0"], stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + 60
        while not _local_operator():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.5)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def host(site: Site, name: str) -> testinfra.host.Host:
    return testinfra.get_host(f"ssh://{name}", ssh_config=str(ssh.config_path(site)))


def head(site: Site) -> testinfra.host.Host:
    return host(site, site.with_role("head")[0].name)


def slurm_node(site: Site, index: int) -> Machine:
    nodes = site.in_pool("slurm")
    assert len(nodes) > index, f"the site needs at least {index + 1} slurm-pool machines"
    return nodes[index]


def wait_slurm_idle(site: Site, name: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    state = ""
    while time.monotonic() < deadline:
        state = head(site).check_output(f"sinfo -h -n {name} -o %t").strip()
        if state in ("idle", "mix", "alloc"):
            return
        time.sleep(1)
    raise AssertionError(f"{name} did not come back in Slurm: {state}")


# --- the whole site, at the standard level (what CI runs) ---------------------------------------


def test_standard_level_passes_on_the_configured_site(site: Site, tmp_path: Path) -> None:
    rc, records, out = validate(site.path, tmp_path, "--level", "standard")
    assert rc == 0, out
    assert records and not failed(records), out
    assert (tmp_path / "junit.xml").read_text().count("<testcase") == len(records)
    assert "validate ok" in out and "HOST" in out  # the summary table
    hosts = {r["host"] for r in records}
    assert hosts == {m.name for m in site.machines} | {"cluster"}
    for r in records:
        assert set(r) >= {"site", "level", "host", "check", "status", "value", "threshold", "message"}
        if r["status"] == "skipped":
            assert r["message"], f"{r['host']} {r['check']} skipped without a reason"
    by = {(r["host"], r["check"]): r for r in records}
    for m in site.machines:
        assert by[(m.name, "time.offset")]["status"] == "passed"
    for m in site.in_pool("slurm"):
        assert by[(m.name, "slurm.registration")]["status"] == "passed"
        assert by[(m.name, "munge.key")]["status"] == "passed"
    for m in site.in_pool("kubernetes"):
        assert by[(m.name, "k8s.node")]["value"] == f"allocatable nvidia.com/gpu={m.gpu_count}"
        # a real node's checks, none skipped on the local site
        for name in ("k8s.runtime", "k8s.cni", "k8s.policy_agent"):
            assert by[(m.name, name)]["status"] == "passed", by[(m.name, name)]
    assert by[("cluster", "cluster.slurm_gpu_job")]["status"] == "passed"
    assert by[("cluster", "cluster.k8s_gpu_pod")]["status"] == "passed"
    assert by[("cluster", "cluster.k8s_dns")]["status"] == "passed", by[("cluster", "cluster.k8s_dns")]


def test_emulated_gpu_checks_are_skipped_not_passed(site: Site, tmp_path: Path) -> None:
    if not site.emulated:
        pytest.skip("real site: the GPU checks run on hardware (marker gpu)")
    rc, records, out = validate(site.path, tmp_path, "--level", "quick")
    assert rc == 0, out
    gpu_machines = {m.name for m in site.machines if m.gpu_count}
    hw = [r for r in records if r["check"] in GPU_HARDWARE_CHECKS]
    assert {r["host"] for r in hw} == gpu_machines
    assert all(r["status"] == "skipped" and r["message"] == EMULATED_NO_GPU for r in hw), hw
    # What an emulated host can show: the role's report matches the site file and the pinned branch.
    report = [r for r in records if r["check"] == "gpu.stack_report"]
    assert {r["host"] for r in report} == gpu_machines and all(r["status"] == "passed" for r in report)


# --- input the run cannot work with: exit 2 -----------------------------------------------------


def test_bad_site_file_and_unknown_or_unreachable_host_exit_2(site: Site, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: Not A Label\nmachines: 3\n")
    rc, _, out = validate(bad, tmp_path / "r1")
    assert rc == 2 and "error" in out.lower(), out

    rc, _, out = validate(site.path, tmp_path / "r2", "--limit", "no-such-host")
    assert rc == 2 and "no-such-host" in out, out

    # A machine the site file has but no host answers for, on the site's own (guarded) network.
    raw = yaml.safe_load(site.path.read_text())
    ghost = dict(raw["machines"][-1])
    ghost.update(name="ghost-99", bmc={**ghost["bmc"], "endpoint": "http://127.0.0.1:8999"})
    address = str(site.management.cidr.network_address + 250)
    assert address not in {m.address for m in site.machines}
    ghost["nics"] = [{"name": "host0", "mac": "02:ee:ee:ee:ee:63", "address": address}]
    raw["machines"].append(ghost)
    copy = tmp_path / "ghost.yaml"
    copy.write_text(yaml.safe_dump(raw, sort_keys=False))
    rc, records, out = validate(copy, tmp_path / "r3", "--limit", "ghost-99")
    assert rc == 2 and "unreachable" in out and "ghost-99" in out, out
    assert records == [], "nothing may be checked when a host is unreachable"


# --- faults: each caught on its host by its check ----------------------------------------------


def test_changed_munge_key_on_one_host(site: Site, tmp_path: Path) -> None:
    m = slurm_node(site, 1)
    h = host(site, m.name)
    h.check_output("cp -p /etc/munge/munge.key /root/munge.key.validate-test")
    try:
        h.check_output(
            "dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none && chown munge:munge "
            "/etc/munge/munge.key && chmod 0400 /etc/munge/munge.key && systemctl restart munge"
        )
        rc, records, out = validate(site.path, tmp_path, "--level", "quick")
        assert rc == 1, out
        assert failed(records) == {(m.name, "munge.key")}, out
        assert "differs" in message(records, m.name, "munge.key")
        assert f"FAILED {m.name} munge.key:" in out
    finally:
        h.check_output("mv /root/munge.key.validate-test /etc/munge/munge.key && systemctl restart munge")


def test_stopped_slurmd(site: Site, tmp_path: Path) -> None:
    m = slurm_node(site, 2 if len(site.in_pool("slurm")) > 2 else 0)
    h = host(site, m.name)
    h.check_output("systemctl stop slurmd")
    try:
        rc, records, out = validate(site.path, tmp_path, "--level", "quick")
        assert rc == 1, out
        assert failed(records) == {(m.name, "services")}, out
        assert "slurmd is inactive" in message(records, m.name, "services")
        assert f"FAILED {m.name} services: slurmd is inactive" in out
    finally:
        h.check_output("systemctl start slurmd")
        wait_slurm_idle(site, m.name)


def test_wrong_gpu_count_in_gres_conf(site: Site, tmp_path: Path) -> None:
    m = slurm_node(site, 3 if len(site.in_pool("slurm")) > 3 else 0)
    assert m.gpu_count >= 2, "the fault needs a machine with at least 2 GPUs"
    h = host(site, m.name)
    h.check_output("cp -p /etc/slurm/gres.conf /root/gres.conf.validate-test")
    try:
        h.check_output(
            rf"sed -i -E 's/nvidia\[0-[0-9]+\]/nvidia[0-{m.gpu_count // 2 - 1}]/' /etc/slurm/gres.conf"
        )
        rc, records, out = validate(site.path, tmp_path, "--level", "quick")
        assert rc == 1, out
        assert failed(records) == {(m.name, "slurm.gres_conf")}, out
        msg = message(records, m.name, "slurm.gres_conf")
        assert f"lists {m.gpu_count // 2} GPU device files" in msg and f"{m.gpu_count} x {m.gpu_model}" in msg
        assert f"FAILED {m.name} slurm.gres_conf:" in out
    finally:
        h.check_output("mv /root/gres.conf.validate-test /etc/slurm/gres.conf && systemctl restart slurmd")
        wait_slurm_idle(site, m.name)


@pytest.fixture(scope="module")
def core(site: Site):
    from kubernetes import client, config

    from aifactory import paths

    api = config.new_client_from_config(config_file=str(paths.site_state_dir(site.name) / "kubeconfig"))
    yield client.CoreV1Api(api)
    api.close()


@contextmanager
def gpu_lost(site: Site, core, m: Machine):
    """A GPU falls off the bus: its device node goes, the device plugin reports it Unhealthy and the
    kubelet's allocatable drops by one (capacity stays); on leaving, the GPU comes back."""
    if not site.emulated:
        pytest.skip("removing a device node fakes a lost GPU for the emulated device plugin only")
    last = f"/dev/nvidia{m.gpu_count - 1}"
    h = host(site, m.name)

    def allocatable(n: int):
        return lambda: (core.read_node(m.name).status.allocatable or {}).get("nvidia.com/gpu") == str(n)

    h.check_output(f"rm {last}")
    try:
        wait_until(allocatable(m.gpu_count - 1), timeout=60, what=f"{m.name} to lose a GPU")
        yield
    finally:
        h.check_output(f"mknod -m 0666 {last} c 195 {m.gpu_count - 1}")
        wait_until(allocatable(m.gpu_count), timeout=60, what=f"{m.name} to get its GPU back")


def test_node_with_a_lost_gpu(site: Site, tmp_path: Path, core) -> None:
    m = site.in_pool("kubernetes")[0]
    with gpu_lost(site, core, m):
        rc, records, out = validate(site.path, tmp_path, "--level", "quick")
        assert rc == 1, out
        # Both schedulers' views of the machine see it: Slurm's gres device and the kubelet's GPUs.
        assert failed(records) == {(m.name, "k8s.node"), (m.name, "slurm.gres_conf")}, out
        assert f"/dev/nvidia{m.gpu_count - 1}" in message(records, m.name, "slurm.gres_conf")
        want = f"allocatable nvidia.com/gpu={m.gpu_count - 1}, the site file says {m.gpu_count}"
        assert want in message(records, m.name, "k8s.node")
        assert f"FAILED {m.name} k8s.node: allocatable nvidia.com/gpu={m.gpu_count - 1}" in out


# --- --drain-on-failure ------------------------------------------------------------------------


def test_drain_on_failure_drains_then_resumes(site: Site, tmp_path: Path, core) -> None:
    s, k = slurm_node(site, 0), site.in_pool("kubernetes")[-1]
    h = host(site, s.name)
    h.check_output(
        "cp -p /etc/slurm/gres.conf /root/gres.conf.validate-test && echo '# drift' >> /etc/slurm/gres.conf"
    )
    h.check_output("sed -i 's/Type=/Type=x/' /etc/slurm/gres.conf")
    try:
        with gpu_lost(site, core, k):
            rc, _, out = validate(site.path, tmp_path / "1", "--level", "quick", "--drain-on-failure")
        assert rc == 1, out
        node = head(site).check_output(f"scontrol show node {s.name} -o")
        assert "DRAIN" in node and "Reason=aifactory validate: slurm.gres_conf failed" in node, node
        cordoned = core.read_node(k.name)
        assert cordoned.spec.unschedulable
        assert "k8s.node" in cordoned.metadata.annotations["aifactory.io/cordon-reason"]
    finally:
        h.check_output("mv /root/gres.conf.validate-test /etc/slurm/gres.conf")
    try:
        # Fixed: the next periodic run passes and returns the machines it drained.
        rc, _, out = validate(site.path, tmp_path / "2", "--level", "quick", "--drain-on-failure")
        assert rc == 0, out
        assert f"{s.name}: slurm resume" in out and f"{k.name}: kubernetes uncordon" in out, out
        wait_slurm_idle(site, s.name)
        assert not core.read_node(k.name).spec.unschedulable
    finally:  # whatever happened above, leave both in service
        head(site).run(f"scontrol update NodeName={s.name} State=RESUME")
        core.patch_node(
            k.name,
            {
                "spec": {"unschedulable": False},
                "metadata": {"annotations": {"aifactory.io/cordon-reason": None}},
            },
        )
