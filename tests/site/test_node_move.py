"""`aifactory node move` on a configured site: a worker changes pools without killing work.

The tests run in order on one slurm-pool worker (the last one, so the Slurm role tests keep their
first node) and on a copy of the site file, which the move rewrites. The module's teardown moves
the worker back to the slurm pool, so other tests on a shared site still see the site file's
pools. The invariant of the hybrid is checked after every step: no worker's GPUs are offered by
Slurm and Kubernetes at once.
"""

from __future__ import annotations

import shutil
import threading
import time
import uuid

import pytest
from kubernetes import client, config
from kubernetes.client.rest import ApiException

from aifactory import cli, images, nodemove, paths
from aifactory.site.model import Machine, Site
from aifactory.site.validate import load_site
from sandbox import ssh
from tests.site.conftest import toolbox_pod, wait_until

pytestmark = pytest.mark.site

MOVING = "aifactory-pool: moving to kubernetes"
SERVES_K8S = "aifactory-pool: serves kubernetes"


@pytest.fixture(scope="module")
def site(configured_site: Site, tmp_path_factory) -> Site:
    """The configured site, loaded from a copy of its file (a move rewrites the file)."""
    copy = tmp_path_factory.mktemp("node-move") / configured_site.path.name
    shutil.copy(configured_site.path, copy)
    return load_site(copy)


@pytest.fixture(scope="module")
def core(site: Site):
    api = config.new_client_from_config(config_file=str(paths.site_state_dir(site.name) / "kubeconfig"))
    yield client.CoreV1Api(api)
    api.close()


def head_run(site: Site, command: str, timeout: float = 60) -> str:
    r = ssh.run(site, site.with_role("head")[0].name, command, timeout=timeout)
    assert r.returncode == 0, f"{command}: rc {r.returncode}: {r.stderr}"
    return r.stdout


def slurm_node(site: Site, name: str) -> tuple[str, str]:
    """(state, reason) of a Slurm node, e.g. ("draining", "aifactory-pool: moving to kubernetes").

    Without sinfo's "*" (not responding right now): on a loaded host a node's heartbeat may be late,
    and a late node keeps its state; it is offered again the moment it answers.
    """
    line = head_run(site, f"sinfo --noheader --Node --nodes={name} --format='%T|%E'").splitlines()[0]
    state, reason = line.split("|", 1)
    return state.rstrip("*"), reason


def offered_by(site: Site, core) -> dict[str, set[str]]:
    """Which schedulers may place new work on each worker now."""
    nodes = {n.metadata.name: n for n in core.list_node().items}
    out: dict[str, set[str]] = {}
    for m in site.machines:
        if not m.pool:
            continue
        state, _ = slurm_node(site, m.name)
        out[m.name] = set()
        if state in ("idle", "mixed", "allocated", "completing"):  # not drained or down
            out[m.name].add("slurm")
        node = nodes.get(m.name)
        ready = node and any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or [])
        if ready and not node.spec.unschedulable:
            out[m.name].add("kubernetes")
    return out


def assert_never_both(site: Site, core) -> dict[str, set[str]]:
    offered = offered_by(site, core)
    both = {name for name, by in offered.items() if by == {"slurm", "kubernetes"}}
    assert not both, f"offered by Slurm and Kubernetes at once: {sorted(both)} ({offered})"
    return offered


def move(site: Site, name: str, to: str, timeout: int, capsys) -> tuple[int, str]:
    rc = cli.main(["node", "move", name, "--to", to, "--site", str(site.path), "--timeout", str(timeout)])
    captured = capsys.readouterr()
    return rc, captured.out + captured.err


def file_pool(site: Site, name: str) -> str:
    return nodemove.current_pool(site.path.read_text(), name)


@pytest.fixture(scope="module")
def worker(site: Site) -> Machine:
    slurm = site.in_pool("slurm")
    if len(slurm) < 2:
        pytest.skip("the site needs two slurm-pool workers: moving its only one would empty the pool")
    return slurm[-1]


@pytest.fixture(scope="module")
def namespace(core):
    name = f"aif-move-{uuid.uuid4().hex[:8]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    core.delete_namespace(name)


@pytest.fixture(scope="module", autouse=True)
def back_to_slurm(site: Site, worker: Machine):
    """Whatever happened, end with the worker in the slurm pool, in the copy and on the machines."""
    yield
    head_run(site, f"scancel --nodelist={worker.name} || true")
    nodemove.move(load_site(site.path), worker.name, "slurm", timeout=60, progress=lambda _: None)


def submit(site: Site, node: str, seconds: int) -> str:
    job = head_run(site, f"sbatch --parsable --nodelist={node} --job-name=move-test --wrap 'sleep {seconds}'")
    job = job.strip().split(";")[0]
    wait_until(
        lambda: head_run(site, f"squeue --noheader --jobs={job} --format=%T").strip() == "RUNNING",
        timeout=60,
        what=f"job {job} to run on {node}",
    )
    return job


def job_state(site: Site, job: str) -> str:
    return head_run(site, f"sacct --noheader --allocations --jobs={job} --format=State --parsable2").strip()


def test_every_worker_is_offered_by_exactly_its_pool(site: Site, core):
    offered = assert_never_both(site, core)
    assert offered == {m.name: {m.pool} for m in site.machines if m.pool}


def test_move_to_kubernetes_waits_for_the_running_job(site: Site, core, worker: Machine, capsys):
    job = submit(site, worker.name, seconds=20)
    rc, out = move(site, worker.name, "kubernetes", timeout=180, capsys=capsys)
    assert rc == 0, out
    assert f"{worker.name} moved from slurm to kubernetes" in out
    # The job was left to finish: it ended on its own, nothing cancelled it.
    ended = wait_until(lambda: job_state(site, job) not in ("", "RUNNING", "COMPLETING"), 30, "accounting")
    assert ended and job_state(site, job) == "COMPLETED"
    assert slurm_node(site, worker.name) == ("drained", SERVES_K8S)
    node = core.read_node(worker.name)
    assert not node.spec.unschedulable and node.metadata.labels["aifactory.io/pool"] == "kubernetes"
    assert file_pool(site, worker.name) == "kubernetes"
    assert assert_never_both(site, core)[worker.name] == {"kubernetes"}


def gpu_pod(name: str, node: str, labels: dict[str, str] | None = None) -> client.V1Pod:
    return toolbox_pod(name, ["sleep", "3600"], node=node, gpus=1, labels=labels, restart="Always")


def run_pod(core, namespace: str, pod: client.V1Pod) -> None:
    wait_until(lambda: _create(core, namespace, pod), 30, "the namespace's service account")
    wait_until(
        lambda: core.read_namespaced_pod(pod.metadata.name, namespace).status.phase == "Running",
        60,
        f"pod {pod.metadata.name} to run",
    )


def test_move_to_slurm_blocked_by_a_disruption_budget_names_the_pod(
    site: Site, core, worker: Machine, namespace: str, capsys
):
    policy = client.PolicyV1Api(core.api_client)
    run_pod(core, namespace, gpu_pod("guarded", worker.name, labels={"app": "guarded"}))
    policy.create_namespaced_pod_disruption_budget(
        namespace,
        client.V1PodDisruptionBudget(
            metadata=client.V1ObjectMeta(name="guarded"),
            spec=client.V1PodDisruptionBudgetSpec(
                min_available=1, selector=client.V1LabelSelector(match_labels={"app": "guarded"})
            ),
        ),
    )

    # The disruption controller must have counted the pod, or the eviction is refused for another reason.
    def budget_counts_the_pod() -> bool:
        status = policy.read_namespaced_pod_disruption_budget("guarded", namespace).status
        return (status.current_healthy or 0) == 1

    wait_until(budget_counts_the_pod, 30, "the budget to count the pod")
    rc, out = move(site, worker.name, "slurm", timeout=4, capsys=capsys)
    assert rc == 1, out
    assert f"{worker.name} still has 1 pod(s)" in out and f"{namespace}/guarded" in out, out
    assert file_pool(site, worker.name) == "kubernetes"
    assert core.read_node(worker.name).spec.unschedulable
    assert slurm_node(site, worker.name)[0] == "drained"
    assert assert_never_both(site, core)[worker.name] == set()
    assert core.read_namespaced_pod("guarded", namespace).status.phase == "Running"

    # Re-asserting the site file's pool uncordons it; the pod was never disturbed.
    rc, out = move(site, worker.name, "kubernetes", timeout=30, capsys=capsys)
    assert rc == 0 and "already in the kubernetes pool" in out, out
    assert not core.read_node(worker.name).spec.unschedulable
    assert assert_never_both(site, core)[worker.name] == {"kubernetes"}
    policy.delete_namespaced_pod_disruption_budget("guarded", namespace)


def test_move_back_to_slurm_evicts_the_pods(site: Site, core, worker: Machine, namespace: str, capsys):
    """Evictions go in rounds, as with kubectl drain: a pod a budget protects at first goes once the
    budget allows it (here: the budget is removed after the first round was refused)."""
    policy = client.PolicyV1Api(core.api_client)
    run_pod(core, namespace, gpu_pod("on-the-mover", worker.name))
    run_pod(core, namespace, gpu_pod("guarded-later", worker.name, labels={"app": "later"}))
    budget = client.V1PodDisruptionBudget(
        metadata=client.V1ObjectMeta(name="later"),
        spec=client.V1PodDisruptionBudgetSpec(
            min_available=1, selector=client.V1LabelSelector(match_labels={"app": "later"})
        ),
    )
    policy.create_namespaced_pod_disruption_budget(namespace, budget)
    wait_until(
        lambda: (
            (policy.read_namespaced_pod_disruption_budget("later", namespace).status.current_healthy or 0)
            == 1
        ),
        30,
        "the budget to count the pod",
    )

    def lift_after_the_first_round() -> None:
        # The move cordons, then sends its first evictions at once; the budget goes while that
        # round waits, so only a later round can evict the pod.
        wait_until(
            lambda: core.read_node(worker.name).spec.unschedulable, 120, "the move to cordon", interval=0.2
        )
        time.sleep(5)
        policy.delete_namespaced_pod_disruption_budget("later", namespace)

    lift = threading.Thread(target=lift_after_the_first_round)
    lift.start()
    try:
        rc, out = move(site, worker.name, "slurm", timeout=120, capsys=capsys)
    finally:
        lift.join()
    assert rc == 0, out
    pods = core.list_namespaced_pod(namespace).items
    assert [p.metadata.name for p in pods] == [], "the move left the pod on the machine"
    node = core.read_node(worker.name)
    assert node.spec.unschedulable and node.metadata.labels["aifactory.io/pool"] == "slurm"
    assert slurm_node(site, worker.name)[0] == "idle"
    assert file_pool(site, worker.name) == "slurm"
    assert assert_never_both(site, core)[worker.name] == {"slurm"}


def _create(core, namespace: str, pod) -> bool:
    try:
        core.create_namespaced_pod(namespace, pod)
        return True
    except ApiException as e:
        if "serviceaccount" in str(e.body).lower():
            return False
        raise


def test_move_that_times_out_names_the_job_and_offers_the_machine_to_neither(
    site: Site, core, worker: Machine, capsys
):
    job = submit(site, worker.name, seconds=600)
    before = site.path.read_text()
    rc, out = move(site, worker.name, "kubernetes", timeout=4, capsys=capsys)
    assert rc == 1, out
    assert f"{worker.name} still runs 1 Slurm job(s)" in out and job in out, out
    assert site.path.read_text() == before, "a failed move must not touch the site file"
    assert slurm_node(site, worker.name) == ("draining", MOVING)
    assert core.read_node(worker.name).spec.unschedulable
    assert assert_never_both(site, core)[worker.name] == set()
    assert job_state(site, job) == "RUNNING", "the move must not kill the job"

    # Re-asserting the site file's pool repairs it: the job goes on, Slurm offers the machine again.
    rc, out = move(site, worker.name, "slurm", timeout=30, capsys=capsys)
    assert rc == 0 and "already in the slurm pool" in out, out
    assert slurm_node(site, worker.name)[0] in ("allocated", "mixed")
    assert job_state(site, job) == "RUNNING"
    assert assert_never_both(site, core)[worker.name] == {"slurm"}
    head_run(site, f"scancel {job}")


def test_move_refuses_a_node_someone_else_drained(site: Site, core, worker: Machine, capsys):
    reason = "disk swap, ticket 4711"
    head_run(site, f"scontrol update nodename={worker.name} state=drain reason='{reason}'")
    try:
        before = site.path.read_text()
        rc, out = move(site, worker.name, "kubernetes", timeout=30, capsys=capsys)
        assert rc == 1, out
        assert f'{worker.name} is drained in Slurm for another reason ("{reason}")' in out, out
        assert site.path.read_text() == before
        assert slurm_node(site, worker.name)[1] == reason, "the operator's reason must survive"
    finally:
        head_run(site, f"scontrol update nodename={worker.name} state=resume")


def test_move_to_slurm_stops_a_deployments_pod_and_its_replacement_runs_on_another_node(
    site: Site, core, namespace: str, capsys
):
    """A real eviction: the container's process on the moved machine is gone, and the Deployment's
    replacement pod runs on another kubernetes-pool machine."""
    pool = {m.name for m in site.in_pool("kubernetes")}
    if len(pool) < 2:
        pytest.skip("the kubernetes pool needs two machines: the replacement must run somewhere")
    apps = client.AppsV1Api(core.api_client)
    labels = {"app": "mover"}
    pod = images.toolbox_pod("mover", ["sleep", "3601"], restart="Always")
    pod.spec.node_selector = {"aifactory.io/pool": "kubernetes"}
    apps.create_namespaced_deployment(
        namespace,
        client.V1Deployment(
            metadata=client.V1ObjectMeta(name="mover"),
            spec=client.V1DeploymentSpec(
                replicas=1,
                selector=client.V1LabelSelector(match_labels=labels),
                template=client.V1PodTemplateSpec(metadata=client.V1ObjectMeta(labels=labels), spec=pod.spec),
            ),
        ),
    )

    def running(exclude: str = ""):
        pods = core.list_namespaced_pod(namespace, label_selector="app=mover").items
        return next((p for p in pods if p.status.phase == "Running" and p.metadata.name != exclude), None)

    first = wait_until(running, 60, "the Deployment's pod to run")
    moved = first.spec.node_name
    sleeping = "pgrep -f 'sleep [3]601'"  # [3]: the pattern does not match this command itself
    assert ssh.run(site, moved, sleeping).returncode == 0, f"no container process on {moved}"
    try:
        rc, out = move(site, moved, "slurm", timeout=120, capsys=capsys)
        assert rc == 0, out
        replacement = wait_until(lambda: running(exclude=first.metadata.name), 60, "the replacement pod")
        assert replacement.spec.node_name in pool - {moved}, replacement.spec.node_name
        assert ssh.run(site, moved, sleeping).returncode == 1, f"the evicted container still runs on {moved}"
        assert assert_never_both(site, core)[moved] == {"slurm"}
    finally:
        apps.delete_namespaced_deployment("mover", namespace)
        nodemove.move(load_site(site.path), moved, "kubernetes", timeout=60, progress=lambda _: None)
