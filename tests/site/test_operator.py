"""The tenant operator against the site's real kube-apiserver and real Slurm.

The operator runs here as a `kopf run` process, against the admin kubeconfig the roles fetched,
with sacctmgr on the head through ssh. Tenants are named `optest-<random>-...` so nothing of
another test or user is touched, and every test removes what it made (tenants with the force
annotation, then a check that Slurm and Kubernetes are clean).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import itertools
import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config

from aifactory import paths, usage_report
from aifactory.site.model import Site
from operators.tenants import budget, capacity, install, slurm
from operators.tenants import kubernetes_side as kside
from operators.tenants.spec import FORCE_DELETE_ANNOTATION, GROUP, TENANT_LABEL, VERSION
from sandbox import ssh
from tests.screenshot import colours_seen
from tests.site.conftest import say, toolbox_pod, wait_until

pytestmark = pytest.mark.site

TENANTS = f"/apis/{GROUP}/{VERSION}/tenants"
RUN = uuid.uuid4().hex[:5]


def wait_for(what: str, fn: Callable[[], Any], timeout: float = 90, every: float = 1) -> Any:
    """conftest's wait_until with this module's default timeout and interval."""
    return wait_until(fn, timeout, what, every)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Operator:
    """The operator as a child process that tests can SIGKILL and start again."""

    def __init__(self, site: Site, kubeconfig: Path, log: Path):
        self.port = free_port()
        self.env = install.operator_env(site.path, kubeconfig, drift_interval=5, metrics_port=self.port)
        self.env["AIFACTORY_ENERGY_INTERVAL"] = "10"
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(install.kopf_command(), env=self.env, stdout=out, stderr=out)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=10) as r:
            return r.read().decode()


@pytest.fixture(scope="module")
def kubeconfig(configured_site: Site) -> Path:
    path = paths.site_state_dir(configured_site.name) / "kubeconfig"
    assert path.exists(), f"{path} missing: the Kubernetes roles did not run"
    return path


@pytest.fixture(scope="module")
def kube(configured_site: Site, kubeconfig: Path) -> kside.Kube:
    install.install_crd(kubeconfig, sorted(capacity.site_capacity(configured_site)))
    return install.kube(kubeconfig)


@pytest.fixture(scope="module")
def head(configured_site: Site) -> Callable[[str], str]:
    name = configured_site.with_role("head")[0].name

    def run(cmd: str, check: bool = True) -> str:
        r = ssh.run(configured_site, name, cmd, timeout=120)
        if check:
            assert r.returncode == 0, f"{cmd}: {r.stderr}"
        return r.stdout

    return run


@pytest.fixture(scope="module")
def operator(configured_site, kube, kubeconfig, head, tmp_path_factory) -> Iterator[Operator]:
    op = Operator(configured_site, kubeconfig, tmp_path_factory.mktemp("operator") / "operator.log")
    op.start()
    try:
        yield op
    finally:
        leftovers = [
            t["metadata"]["name"] for t in kube.list(TENANTS) if t["metadata"]["name"].startswith("optest-")
        ]
        for name in leftovers:
            force_delete(kube, name)
        for name in leftovers:
            wait_for(f"tenant {name} deleted", lambda n=name: kube.get(f"{TENANTS}/{n}") is None, timeout=120)
        op.stop()
        print(op.log.read_text()[-3000:])


def name(suffix: str) -> str:
    return f"optest-{RUN}-{suffix}"


def create(kube: kside.Kube, tname: str, **spec: Any) -> dict:
    body = {"displayName": f"test {tname}", "gpuQuota": {"h100": 8}, "members": {"slurmUsers": ["root"]}}
    body.update(spec)
    obj = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Tenant", "metadata": {"name": tname}, "spec": body}
    out = kube.request("POST", TENANTS, obj)
    assert out is not None
    return out


def patch_spec(kube: kside.Kube, tname: str, spec: dict) -> None:
    kube.request("PATCH", f"{TENANTS}/{tname}", {"spec": spec}, content_type="application/merge-patch+json")


def force_delete(kube: kside.Kube, tname: str) -> None:
    ann = {"metadata": {"annotations": {FORCE_DELETE_ANNOTATION: "true"}}}
    try:
        kube.request("PATCH", f"{TENANTS}/{tname}", ann, content_type="application/merge-patch+json")
        kube.delete(f"{TENANTS}/{tname}")
    except kside.ApiError as e:
        if e.status != 404:
            raise


def cond(kube: kside.Kube, tname: str, ctype: str) -> dict | None:
    t = kube.get(f"{TENANTS}/{tname}") or {}
    return next((c for c in (t.get("status") or {}).get("conditions") or [] if c["type"] == ctype), None)


def is_true(kube, tname, ctype) -> bool:
    c = cond(kube, tname, ctype)
    return bool(c and c["status"] == "True")


def wait_ready(kube, tname, generation: int | None = None, timeout: float = 90) -> None:
    def ready():
        t = kube.get(f"{TENANTS}/{tname}") or {}
        st = t.get("status") or {}
        c = next((c for c in st.get("conditions") or [] if c["type"] == "Ready"), None)
        gen_ok = generation is None or st.get("observedGeneration", 0) >= generation
        return c is not None and c["status"] == "True" and gen_ok

    wait_for(f"{tname} Ready", ready, timeout)


def gpu_pod(gpus: int, pname: str = "gpu-job") -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": pname},
        "spec": {
            "containers": [
                {"name": "c", "image": "busybox", "resources": {"limits": {"nvidia.com/gpu": str(gpus)}}}
            ]
        },
    }


def pod_gpu_quota(kube, namespace: str) -> str:
    rq = kube.get(f"/api/v1/namespaces/{namespace}/resourcequotas/tenant-gpu-quota")
    return rq["spec"]["hard"]["requests.nvidia.com/gpu"]


def grp_tres(head, account: str) -> str:
    return head(f"sacctmgr -nP show assoc where account={account} user= format=grptres").strip()


def job_states(head, account: str) -> dict[str, tuple[str, str]]:
    out = head(f"squeue -h -A {account} -o '%i|%T|%r'")
    return {i: (s, r) for i, s, r in (ln.split("|") for ln in out.split())}


def submit(head, account: str, gpus: int = 8) -> str:
    return head(f"sbatch --parsable -A {account} --gres=gpu:{gpus} -o /dev/null --wrap 'sleep 600'").strip()


def events(kube, tname: str) -> list[tuple[str, str]]:
    return [
        (e["reason"], e["message"])
        for e in kube.list("/api/v1/namespaces/default/events")
        if e["involvedObject"].get("name") == tname and e["involvedObject"].get("kind") == "Tenant"
    ]


# --- the lifecycle: create, quota effective on both sides, raise, lower, delete ---------------


def test_tenant_quota_enforced_on_kubernetes_and_slurm(operator, kube, head):
    t = name("life")
    create(kube, t)
    try:
        wait_ready(kube, t)
        # Kubernetes: the API server itself rejects a 9-GPU pod; 8 would be admitted.
        wait_for(
            "quota status filled",
            lambda: (
                (kube.get(f"/api/v1/namespaces/{t}/resourcequotas/tenant-gpu-quota") or {})
                .get("status", {})
                .get("hard")
            ),
        )
        with pytest.raises(kside.ApiError) as e:
            kube.request("POST", f"/api/v1/namespaces/{t}/pods", gpu_pod(9))
        assert e.value.status == 403 and "exceeded quota" in str(e.value), e.value
        kube.request("POST", f"/api/v1/namespaces/{t}/pods", gpu_pod(8), query={"dryRun": "All"})

        # Slurm: 8 GPUs run, a second 8 pend on the account's GrpTRES.
        assert "gres/gpu=8" in grp_tres(head, t).split(",")
        first = submit(head, t)
        wait_for("first job running", lambda: job_states(head, t).get(first, ("",))[0] == "RUNNING")
        second = submit(head, t)
        wait_for(
            "second job pending on AssocGrpGRES",
            lambda: job_states(head, t).get(second) == ("PENDING", "AssocGrpGRES"),
        )
        wait_for(
            "usage reported",
            lambda: (
                (kube.get(f"{TENANTS}/{t}")["status"].get("usage") or {}).get("slurm", {}).get("h100") == 8
            ),
        )

        # Raising the quota to 16 starts the pending job; Slurm then holds all 16, so the
        # namespace's share of the one entitlement is 0.
        patch_spec(kube, t, {"gpuQuota": {"h100": 16}})
        wait_ready(kube, t, generation=2)
        status = kube.get(f"{TENANTS}/{t}")["status"]
        assert status["quota"] == "h100=16" and status["observedGeneration"] == 2
        wait_for("second job running", lambda: job_states(head, t).get(second, ("",))[0] == "RUNNING")
        wait_for("the namespace's share is 0", lambda: pod_gpu_quota(kube, t) == "0")

        # Lowering it applies at once to new work; running jobs are not preempted.
        patch_spec(kube, t, {"gpuQuota": {"h100": 8}})
        wait_ready(kube, t, generation=3)
        assert "gres/gpu=8" in grp_tres(head, t).split(",")
        assert pod_gpu_quota(kube, t) == "0"
        assert {s for s, _ in job_states(head, t).values()} == {"RUNNING"}

        # Deleting while jobs run is refused, with a condition and an event...
        kube.delete(f"{TENANTS}/{t}")
        wait_for("DeletionBlocked", lambda: is_true(kube, t, "DeletionBlocked"))
        assert "2 running Slurm job(s)" in cond(kube, t, "DeletionBlocked")["message"]
        assert any(r == "DeletionBlocked" for r, _ in events(kube, t))
        assert head(f"sacctmgr -nP show account where name={t} format=account").strip() == t
        # ...until forced: jobs cancelled, account, QOS and namespace gone.
        force_delete(kube, t)
        wait_for("tenant gone", lambda: kube.get(f"{TENANTS}/{t}") is None, timeout=120)
        assert head(f"sacctmgr -nP show assoc where account={t}").strip() == ""
        assert head(f"sacctmgr -nP show qos where name=tenant-{t} format=name").strip() == ""
        assert job_states(head, t) == {}
        ns = kube.get(f"/api/v1/namespaces/{t}")
        assert ns is None or ns["status"]["phase"] == "Terminating"
    finally:
        force_delete(kube, t)


def test_one_entitlement_across_both_schedulers_and_all_namespaces(operator, kube, head):
    """h100: 4 is the most the tenant holds at once, in Slurm jobs and pods together, whichever
    scheduler takes it first; its two namespaces share it."""
    t = name("one")
    a, b = f"{t}-a", f"{t}-b"
    create(kube, t, gpuQuota={"h100": 4}, namespaces=[a, b])
    try:
        wait_ready(kube, t)
        # Slurm first: a 4-GPU job leaves the namespaces nothing; a 1-GPU pod is refused by quota.
        job = submit(head, t, gpus=4)
        wait_for("4-GPU job running", lambda: job_states(head, t).get(job, ("",))[0] == "RUNNING")
        wait_for("namespaces' share 0", lambda: pod_gpu_quota(kube, a) == pod_gpu_quota(kube, b) == "0")
        with pytest.raises(kside.ApiError) as e:
            kube.request("POST", f"/api/v1/namespaces/{a}/pods", gpu_pod(1), query={"dryRun": "All"})
        assert e.value.status == 403 and "exceeded quota" in str(e.value), e.value
        head(f"scancel {job}")
        wait_for("namespaces' share back to 4", lambda: pod_gpu_quota(kube, a) == "4", timeout=60)

        # Kubernetes first: a pod with 3 GPUs in one namespace leaves the other 1 and Slurm 1.
        post_pod(kube, a, kube.api.sanitize_for_serialization(toolbox_pod("gpus", ["sleep", "3600"], gpus=3)))
        pod = f"/api/v1/namespaces/{a}/pods/gpus"
        wait_for("3-GPU pod running", lambda: kube.get(pod)["status"].get("phase") == "Running", 120)
        wait_for("Slurm limit 1", lambda: "gres/gpu=1" in grp_tres(head, t).split(","), timeout=60)
        assert pod_gpu_quota(kube, b) == "1" and pod_gpu_quota(kube, a) == "4"
        two = submit(head, t, gpus=2)
        wait_for(
            "a 2-GPU job pending on the association limit",
            lambda: job_states(head, t).get(two) == ("PENDING", "AssocGrpGRES"),
        )
        usage = kube.get(f"{TENANTS}/{t}")["status"]["usage"]
        assert usage["summary"] == "k8s=3 slurm=0" and usage["kubernetes"] == {"h100": 3}
        kube.request("DELETE", pod, query={"gracePeriodSeconds": "0"})
        wait_for("the pending job starts", lambda: job_states(head, t).get(two, ("",))[0] == "RUNNING", 90)
        assert "overshoot" not in kube.get(f"{TENANTS}/{t}")["status"]
    finally:
        force_delete(kube, t)


# --- Kueue: the tenant's Jobs enter through its LocalQueue ------------------------------------

KUEUE_API = "/apis/kueue.x-k8s.io/v1beta2"


def queued_job(kube: kside.Kube, namespace: str, jname: str, gpus: int, seconds: int = 3600) -> str:
    """A Job of the toolbox image in the namespace's LocalQueue that sleeps `seconds`; its path."""
    pod = kube.api.sanitize_for_serialization(toolbox_pod(jname, ["sleep", str(seconds)], gpus=gpus))
    body = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": jname, "labels": {"kueue.x-k8s.io/queue-name": "default"}},
        "spec": {"backoffLimit": 0, "template": {"spec": pod["spec"]}},
    }
    path = f"/apis/batch/v1/namespaces/{namespace}/jobs"
    wait_for("the Job accepted", lambda: kube.request("POST", path, body) is not None, timeout=30)
    return f"{path}/{jname}"


def job_running(kube: kside.Kube, job: str) -> bool:
    j = kube.get(job) or {}
    return not j["spec"].get("suspend") and (j.get("status") or {}).get("ready", 0) >= 1


def workload(kube: kside.Kube, namespace: str, jname: str) -> dict | None:
    """The Workload Kueue made for Job `jname` (None until it has)."""
    found = [
        w
        for w in kube.list(f"{KUEUE_API}/namespaces/{namespace}/workloads")
        if w["metadata"]["ownerReferences"][0]["name"] == jname
    ]
    return found[0] if found else None


def nominal(kube: kside.Kube, tname: str) -> str:
    cq = kube.get(f"{KUEUE_API}/clusterqueues/tenant-{tname}") or {
        "spec": {"resourceGroups": [{"flavors": []}]}
    }
    flavors = cq["spec"]["resourceGroups"][0]["flavors"]
    return flavors[0]["resources"][0]["nominalQuota"] if flavors else ""


def test_kueue_admits_a_tenants_job_only_within_what_slurm_leaves_and_slurm_waits_for_kubernetes(
    operator, kube, head, request
):
    """h100: 4 across both schedulers, with Kueue: a 4-GPU Slurm job keeps a 1-GPU Job in the
    tenant's LocalQueue pending until it ends; then that Job holds 1, and a 4-GPU sbatch pends on the
    association limit."""
    t = name("kq")
    create(kube, t, gpuQuota={"h100": 4})
    try:
        wait_ready(kube, t)
        wait_for("the LocalQueue", lambda: kube.get(f"{KUEUE_API}/namespaces/{t}/localqueues/default"))
        job = submit(head, t, gpus=4)
        wait_for("4-GPU Slurm job running", lambda: job_states(head, t).get(job, ("",))[0] == "RUNNING")
        wait_for("the ClusterQueue leaves Slurm's 4", lambda: nominal(kube, t) == "0", timeout=60)
        k8s_job = queued_job(kube, t, "one-gpu", 1)
        wait_for("its Workload", lambda: workload(kube, t, "one-gpu"), timeout=30)
        time.sleep(12)  # two drift rounds: nothing changes while Slurm holds the entitlement
        wl = workload(kube, t, "one-gpu")
        reserved = next(c for c in wl["status"]["conditions"] if c["type"] == "QuotaReserved")
        assert reserved["status"] == "False" and (kube.get(k8s_job) or {})["spec"]["suspend"] is True, wl
        started = time.monotonic()
        head(f"scancel {job}")
        wait_for("the queued Job runs", lambda: job_running(kube, k8s_job), timeout=120, every=0.5)
        say(request, f"kueue: Job admitted and running {time.monotonic() - started:.1f} s after scancel")
        admission = workload(kube, t, "one-gpu")["status"]["admission"]
        assert admission["clusterQueue"] == f"tenant-{t}"
        assert admission["podSetAssignments"][0]["flavors"] == {"nvidia.com/gpu": "gpu-h100"}
        (pod,) = kube.list(f"/api/v1/namespaces/{t}/pods", "job-name=one-gpu")
        assert pod["spec"]["nodeSelector"][kside.MODEL_LABEL] == "h100"

        # Kubernetes first: Slurm is left 3, so a 4-GPU job pends on the association limit.
        wait_for("Slurm limit 3", lambda: "gres/gpu=3" in grp_tres(head, t).split(","), timeout=60)
        four = submit(head, t, gpus=4)
        wait_for(
            "a 4-GPU job pending on the association limit",
            lambda: job_states(head, t).get(four) == ("PENDING", "AssocGrpGRES"),
        )
        kube.request("DELETE", k8s_job, query={"propagationPolicy": "Background", "gracePeriodSeconds": "0"})
        wait_for("the pending job starts", lambda: job_states(head, t).get(four, ("",))[0] == "RUNNING", 90)
        assert "overshoot" not in kube.get(f"{TENANTS}/{t}")["status"]
    finally:
        force_delete(kube, t)


def test_kueue_lends_idle_quota_and_preempts_to_reclaim_it(operator, kube, head):
    """Two tenants in the site cohort: one borrows the other's idle GPUs (gpuBorrowingLimit) and
    gives them back, preempted, when the lender submits."""
    lender, borrower = name("lend"), name("borrow")
    cohort = name("cohort")  # of these two alone: the site cohort holds other tenants' idle quota
    create(kube, lender, gpuQuota={"h100": 2}, cohort=cohort)
    create(kube, borrower, gpuQuota={"h100": 2}, gpuBorrowingLimit={"h100": 2}, cohort=cohort)
    try:
        for t in (lender, borrower):
            wait_ready(kube, t)
            wait_for(
                f"{t}'s LocalQueue", lambda t=t: kube.get(f"{KUEUE_API}/namespaces/{t}/localqueues/default")
            )
        big = queued_job(kube, borrower, "four", 4)
        wait_for("the borrower runs 4 GPUs (2 borrowed)", lambda: job_running(kube, big), timeout=120)
        mine = queued_job(kube, lender, "mine", 2)
        wait_for("the lender's Job runs", lambda: job_running(kube, mine), timeout=120)
        wl = workload(kube, borrower, "four") or {}
        conditions = {c["type"]: c for c in wl["status"]["conditions"]}
        assert conditions["QuotaReserved"]["status"] == "False", conditions
        assert conditions["Preempted"]["reason"] == "InCohortReclamation", conditions
        assert (kube.get(big) or {})["spec"]["suspend"] is True
    finally:
        force_delete(kube, lender)
        force_delete(kube, borrower)


# --- GPU-hour budgets: a ledger on both schedulers ----------------------------------------------


def budget_status(kube: kside.Kube, tname: str) -> dict:
    return (kube.get(f"{TENANTS}/{tname}") or {}).get("status", {}).get("budget") or {}


def epoch(stamp: str) -> float:
    return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def cli_report(argv: list[str], fmt: str, out: Path) -> Path:
    """`aifactory <argv> --format fmt --out out`, as an operator runs it; the file it wrote."""
    r = subprocess.run(
        [sys.executable, "-m", "aifactory.cli", *argv, "--format", fmt, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert r.returncode == 0, r.stderr
    return out


def check_usage_report(site: Site, t: str, period: str, slurm_h: float, pods_h: float, tmp: Path) -> None:
    """`aifactory tenants report` for the closed period: its JSON and CSV give sacct's and the pod's
    GPU-hours, and its HTML, rendered by headless Chromium, shows the plot in both schedulers' colours."""

    def report(fmt: str) -> str:
        argv = ["tenants", "report", "--site", str(site.path), "--tenant", t, "--period", period]
        return cli_report(argv, fmt, tmp / f"report.{fmt}").read_text()

    (doc,) = json.loads(report("json"))["tenants"]
    assert abs(doc["models"]["h100"]["slurm"] - slurm_h) < 0.0001, doc
    assert abs(doc["models"]["h100"]["kubernetes"] - pods_h) < 0.0001, doc
    (row,) = csv.DictReader(io.StringIO(report("csv")))
    assert abs(float(row["gpu_hours"]) - slurm_h - pods_h) < 0.001 and float(row["budget_used_pct"]) >= 100
    report("html")
    seen = colours_seen(tmp / "report.html", PLOT_COLOURS)
    assert all(n > 30 for n in seen.values()), f"plot colours in the screenshot: {seen}"


PLOT_COLOURS = {"slurm": usage_report.SLURM_COLOR, "kubernetes": usage_report.KUBERNETES_COLOR}


def test_a_spent_budget_holds_both_schedulers_survives_a_sigkill_and_renews_once(
    operator, kube, head, request, configured_site, tmp_path
):
    """0.01 GPU-hours (36 GPU-seconds): a 2-GPU Slurm job and a 1-GPU Kueue Job of 20 s each spend
    it. The operator is SIGKILLed while they run; the ledger still equals what sacct and the pod's run
    time give. Spent, no new work starts on either side; at the next period (the operator's clock
    moved past the month's end) the budget renews once and the held work starts."""
    t = name("budget")
    create(kube, t, gpuQuota={"h100": 4}, gpuHourBudget={"gpuHours": 0.01})
    try:
        wait_ready(kube, t)
        wait_for("the LocalQueue", lambda: kube.get(f"{KUEUE_API}/namespaces/{t}/localqueues/default"))
        job = head(f"sbatch --parsable -A {t} --gres=gpu:2 -o /dev/null --wrap 'sleep 20'").strip()
        pod_job = queued_job(kube, t, "short", 1, seconds=20)
        wait_for(
            "some GPU-seconds counted", lambda: budget_status(kube, t).get("usedGPUHours", 0) > 0.001, 60
        )
        operator.kill()
        operator.start()
        wait_for("BudgetExhausted", lambda: is_true(kube, t, "BudgetExhausted"), timeout=120)
        # Both finish; then the ledger equals sacct's allocation times and the pod's run time.
        wait_for("the Slurm job done", lambda: job not in job_states(head, t), timeout=60)
        wait_for(
            "the pod done", lambda: (kube.get(pod_job) or {}).get("status", {}).get("succeeded") == 1, 60
        )
        elapsed, tres = head(f"sacct -X -n -P -j {job} -o ElapsedRaw,AllocTRES").strip().split("|")
        slurm_s = int(elapsed) * slurm.parse_tres(tres)["gres/gpu:h100"]
        (pod,) = kube.list(f"/api/v1/namespaces/{t}/pods", "job-name=short")
        finished = pod["status"]["containerStatuses"][0]["state"]["terminated"]["finishedAt"]
        pod_s = epoch(finished) - epoch(pod["status"]["startTime"])
        want = (slurm_s + pod_s) / 3600

        def settled() -> bool:
            used = budget_status(kube, t)
            return abs(used.get("usedGPUHours", 0) - want) < 0.0002 and used["slurm"]["h100"] > 0

        wait_for(
            f"the ledger at {want:.4f} GPU-hours (sacct {slurm_s} GPU-s, pod {pod_s:.0f} GPU-s)", settled
        )
        used = budget_status(kube, t)
        say(request, f"budget: ledger {used['usedGPUHours']} GPU-h = sacct {slurm_s} + pod {pod_s:.0f} GPU-s")
        assert used["percentUsed"] >= 100 and any(r == "BudgetExhausted" for r, _ in events(kube, t))

        # Held on both sides: the account's GPUs at 0, the ClusterQueue admitting nothing new.
        wait_for("GrpTRES 0", lambda: "gres/gpu=0" in grp_tres(head, t).split(","), timeout=30)
        held = submit(head, t, gpus=1)
        wait_for("sbatch held", lambda: job_states(head, t).get(held) == ("PENDING", "AssocGrpGRES"))
        cq = kube.get(f"{KUEUE_API}/clusterqueues/tenant-{t}")
        assert cq["spec"]["stopPolicy"] == "Hold", cq["spec"]
        waiting = queued_job(kube, t, "waiting", 1)
        time.sleep(6)
        assert (kube.get(waiting) or {})["spec"]["suspend"] is True
        # (gone before the renewal: at 1 GPU it would spend the new period's 36 GPU-seconds at once)
        kube.request("DELETE", waiting, query={"propagationPolicy": "Background"})

        # The next period: the operator's clock 30 s past the end of this month.
        now = dt.datetime.now(dt.UTC)
        month_end = dt.datetime(now.year + now.month // 12, now.month % 12 + 1, 1, tzinfo=dt.UTC)
        operator.stop()
        operator.env[budget.CLOCK_OFFSET_ENV] = str(month_end.timestamp() + 30 - time.time())
        operator.start()
        wait_for("the budget renewed", lambda: cond(kube, t, "BudgetExhausted")["status"] == "False", 120)
        # (checked before the held job runs: by the test clock it began before the period, so the
        # new period is charged from its first second and 36 GPU-seconds go fast)
        queue = f"{KUEUE_API}/clusterqueues/tenant-{t}"
        wait_for("the queue admitting again", lambda: kube.get(queue)["spec"]["stopPolicy"] == "None", 30)
        # Slurm starts it at its next scheduling pass (sched_interval: up to a minute)
        wait_for("the held sbatch starts", lambda: job_states(head, t).get(held, ("",))[0] == "RUNNING", 120)
        history = kube.get(f"{TENANTS}/{t}")["status"]["budgetHistory"]
        ((period, closed),) = history.items()
        assert abs(sum(closed["slurm"].values()) + sum(closed["kubernetes"].values()) - want) < 0.0002
        check_usage_report(configured_site, t, period, slurm_s / 3600, pod_s / 3600, tmp_path)
        time.sleep(12)  # more rounds: still renewed once
        renewals = [r for r, _ in events(kube, t) if r == "BudgetPeriodStarted"]
        assert len(renewals) == 1, events(kube, t)
    finally:
        force_delete(kube, t)
        wait_for(f"{t} deleted", lambda: kube.get(f"{TENANTS}/{t}") is None, timeout=120)
        if operator.env.pop(budget.CLOCK_OFFSET_ENV, None) is not None:
            operator.stop()
            operator.start()


# --- energy: each tenant's share of what the BMCs measured ------------------------------------


def series_kwh(site: Site, machine: str, t0: float, t1: float, share: float) -> float:
    """`share` of the machine's energy in [t0, t1] from Prometheus' samples of its draw as scraped,
    computed here on its own: the trapezoids between the samples, cut at t0 and t1 by linear
    interpolation."""
    query = f'aifactory_node_power_watts{{machine="{machine}"}}[{int(t1 - t0) + 120}s]'
    url = f"http://{site.with_role('head')[0].address}:9090/api/v1/query?" + urllib.parse.urlencode(
        {"query": query, "time": t1 + 60}
    )
    with urllib.request.urlopen(url, timeout=30) as r:
        ((series),) = json.load(r)["data"]["result"]
    pts = [(float(t), float(w)) for t, w in series["values"]]
    joules = 0.0
    for (ta, wa), (tb, wb) in itertools.pairwise(pts):
        a, b = max(ta, t0), min(tb, t1)
        if a < b:
            wa_, wb_ = (wa + (wb - wa) * (x - ta) / (tb - ta) for x in (a, b))
            joules += (b - a) * (wa_ + wb_) / 2
    return share * joules / 3.6e6


def test_the_energy_report_gives_each_tenant_its_gpus_share_of_the_measured_energy(
    operator, kube, head, request, configured_site, tmp_path
):
    """One tenant's 2-GPU Slurm job and another's 1-GPU Kueue Job, 30 s each: `aifactory energy
    report` gives each within 5% of its node's energy over its run time (Prometheus' samples, sacct's
    start and end, the pod's) times its share of the node's 8 GPUs, CO2e and water from the site
    file's factors, and the rest of the site as overhead; its HTML renders with its plots; each
    Tenant's status shows the same kWh for this month."""
    a, b = name("energy-a"), name("energy-b")
    create(kube, a, gpuQuota={"h100": 2})
    create(kube, b, gpuQuota={"h100": 1})
    try:
        wait_ready(kube, a)
        wait_ready(kube, b)
        wait_for("the LocalQueue", lambda: kube.get(f"{KUEUE_API}/namespaces/{b}/localqueues/default"))
        job = head(f"sbatch --parsable -A {a} --gres=gpu:2 -o /dev/null --wrap 'sleep 30'").strip()
        pod_job = queued_job(kube, b, "energy", 1, seconds=30)
        wait_for("the Slurm job done", lambda: job not in job_states(head, a), timeout=240)
        wait_for(
            "the pod done", lambda: (kube.get(pod_job) or {}).get("status", {}).get("succeeded") == 1, 240
        )
        start, end, node = head(f"SLURM_TIME_FORMAT=%s sacct -X -n -P -j {job} -o Start,End,NodeList").split(
            "|"
        )
        (pod,) = kube.list(f"/api/v1/namespaces/{b}/pods", "job-name=energy")
        finished = pod["status"]["containerStatuses"][0]["state"]["terminated"]["finishedAt"]
        pod_t = (epoch(pod["status"]["startTime"]), epoch(finished))
        slurm_t = (float(start), float(end))
        time.sleep(20)  # Prometheus' scrape after the last end
        want_a = series_kwh(configured_site, node.strip(), *slurm_t, 2 / 8)
        want_b = series_kwh(configured_site, pod["spec"]["nodeName"], *pod_t, 1 / 8)
        t0, t1 = min(slurm_t[0], pod_t[0]) - 30, max(slurm_t[1], pod_t[1]) + 15
        period = "/".join(
            dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ") for t in (t0, t1)
        )

        def energy(fmt: str) -> Path:
            argv = ["energy", "report", "--site", str(configured_site.path), "--period", period]
            return cli_report(argv, fmt, tmp_path / f"energy.{fmt}")

        doc = json.loads(energy("json").read_text())
        got_a, got_b = doc["tenants"][a], doc["tenants"][b]
        say(
            request,
            f"energy: {a} {got_a['itKWh']:.5f} kWh (independently {want_a:.5f}), "
            f"{b} {got_b['itKWh']:.5f} kWh ({want_b:.5f}), overhead {doc['overhead']['itKWh']:.4f} kWh",
        )
        assert got_a["itKWh"] == pytest.approx(want_a, rel=0.05) and got_a["bySchedulerKWh"].keys() == {
            "slurm"
        }
        assert got_b["itKWh"] == pytest.approx(want_b, rel=0.05) and got_b["bySchedulerKWh"].keys() == {
            "kubernetes"
        }
        factors = configured_site.power
        for got in (got_a, got_b):
            assert got["facilityKWh"] == pytest.approx(got["itKWh"] * factors.pue, rel=1e-3)
            assert got["co2eKg"] == pytest.approx(got["itKWh"] * factors.carbon_g_per_kwh / 1000, rel=1e-3)
            assert got["waterL"] == pytest.approx(got["itKWh"] * factors.water_l_per_kwh, rel=1e-3)
        assert doc["overhead"]["itKWh"] > 0 and set(doc["overhead"]["byMachineKWh"]) >= {"head-01"}
        assert sum(t["itKWh"] for t in doc["tenants"].values()) + doc["overhead"]["itKWh"] == pytest.approx(
            doc["itKWh"], rel=1e-3
        )

        # The Tenants' status: this month's figures, the same attribution (the operator's pass).
        def status_kwh(t: str) -> float:
            return float(
                ((kube.get(f"{TENANTS}/{t}") or {}).get("status") or {}).get("energy", {}).get("itKWh", 0)
            )

        wait_for(
            "this month's kWh in both tenants' status",
            lambda: all(
                abs(status_kwh(t) - got["itKWh"]) <= 0.05 * got["itKWh"]
                for t, got in ((a, got_a), (b, got_b))
            ),
            timeout=90,
        )
        seen = colours_seen(energy("html"), ENERGY_COLOURS, size="1000,2200")
        assert all(n > 30 for n in seen.values()), f"plot colours in the screenshot: {seen}"
    finally:
        for t in (a, b):
            force_delete(kube, t)
        for t in (a, b):
            wait_for(f"{t} deleted", lambda t=t: kube.get(f"{TENANTS}/{t}") is None, timeout=120)


ENERGY_COLOURS = {"feed draw": "#1f5fbf", "budget": "#c0102a", "overhead": "#999999"}


def test_delete_of_an_idle_tenant_needs_no_force(operator, kube, head):
    t = name("idle")
    create(kube, t, namespaces=[f"{t}-a", f"{t}-b"])
    wait_ready(kube, t)
    assert sorted(o["metadata"]["name"] for o in kube.list("/api/v1/namespaces", f"{TENANT_LABEL}={t}")) == [
        f"{t}-a",
        f"{t}-b",
    ]
    kube.delete(f"{TENANTS}/{t}")
    wait_for("tenant gone", lambda: kube.get(f"{TENANTS}/{t}") is None, timeout=120)
    assert head(f"sacctmgr -nP show account where name={t} format=account").strip() == ""
    live = [
        o
        for o in kube.list("/api/v1/namespaces", f"{TENANT_LABEL}={t}")
        if o["status"]["phase"] != "Terminating"
    ]
    assert live == []


def test_a_namespace_that_is_not_the_tenants_is_never_taken_over(operator, kube):
    """A tenant listing an existing namespace (a system component's, another tenant's) must not
    label it as its own: deleting the tenant would delete it."""
    t, other = name("grab"), name("foreign")
    kube.request("POST", "/api/v1/namespaces", {"metadata": {"name": other}})
    try:
        create(kube, t, namespaces=[other])
        wait_for(
            f"{t} NamespaceConflict",
            lambda: (cond(kube, t, "KubernetesSynced") or {}).get("reason") == "NamespaceConflict",
            timeout=60,
        )
        c = cond(kube, t, "Ready")
        assert c and c["status"] == "False" and f"namespace {other} already exists" in c["message"], c
        labels = kube.get(f"/api/v1/namespaces/{other}")["metadata"].get("labels") or {}
        assert (
            TENANT_LABEL not in labels
            and kube.get(f"/api/v1/namespaces/{other}/resourcequotas/tenant-gpu-quota") is None
        )
        force_delete(kube, t)
        wait_for("tenant gone", lambda: kube.get(f"{TENANTS}/{t}") is None, timeout=120)
        assert kube.get(f"/api/v1/namespaces/{other}")["status"]["phase"] == "Active"
    finally:
        force_delete(kube, t)
        kube.delete(f"/api/v1/namespaces/{other}")


def post_pod(kube: kside.Kube, namespace: str, body: dict) -> None:
    """Create a pod; in a namespace made a moment ago the ServiceAccount admission plugin refuses it
    until the controller manager has made the default ServiceAccount (a second or so)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            kube.request("POST", f"/api/v1/namespaces/{namespace}/pods", body)
            return
        except kside.ApiError as e:
            if time.monotonic() > deadline or "serviceaccount" not in str(e).lower():
                raise
            time.sleep(0.5)


def run_pod(kube: kside.Kube, namespace: str) -> str:
    """A pod that keeps running in `namespace` (the toolbox image, no GPU); its uid once Running."""
    post_pod(kube, namespace, kube.api.sanitize_for_serialization(toolbox_pod("worker", ["sleep", "3600"])))
    pod = f"/api/v1/namespaces/{namespace}/pods/worker"
    wait_for(f"pod in {namespace} Running", lambda: kube.get(pod)["status"].get("phase") == "Running", 120)
    return kube.get(pod)["metadata"]["uid"]


def test_a_namespace_removed_from_the_spec_keeps_its_running_workloads(operator, kube):
    t = name("nsgo")
    kept, deleted = f"{t}-kept", f"{t}-deleted"
    create(kube, t, namespaces=[f"{t}-a", kept, deleted])
    try:
        wait_ready(kube, t)
        uid = run_pod(kube, kept)
        # Retain (the default): released with its pod; the tenant's quota and binding leave it.
        patch_spec(kube, t, {"namespaces": [f"{t}-a", deleted]})
        wait_ready(kube, t, generation=2)
        ns = kube.get(f"/api/v1/namespaces/{kept}")
        assert ns["status"]["phase"] == "Active" and TENANT_LABEL not in (ns["metadata"].get("labels") or {})
        assert kube.get(f"/api/v1/namespaces/{kept}/pods/worker")["metadata"]["uid"] == uid
        assert kube.get(f"/api/v1/namespaces/{kept}/resourcequotas/tenant-gpu-quota") is None
        assert kube.get(f"/api/v1/namespaces/{kept}/rolebindings/tenant-members") is None
        assert any(r == "NamespaceLetGo" and f"released namespace {kept}" in m for r, m in events(kube, t))

        # Delete: refused while a pod runs there, with the reason; done once it has finished.
        run_pod(kube, deleted)
        patch_spec(kube, t, {"namespaces": [f"{t}-a"], "namespaceDeletionPolicy": "Delete"})
        wait_for(
            "NamespaceInUse",
            lambda: (cond(kube, t, "KubernetesSynced") or {}).get("reason") == "NamespaceInUse",
            timeout=60,
        )
        assert "1 pod(s) still run there" in cond(kube, t, "Ready")["message"]
        assert kube.get(f"/api/v1/namespaces/{deleted}/pods/worker")["status"]["phase"] == "Running"
        kube.request("DELETE", f"/api/v1/namespaces/{deleted}/pods/worker", query={"gracePeriodSeconds": "0"})
        wait_ready(kube, t, generation=3, timeout=120)
        ns = kube.get(f"/api/v1/namespaces/{deleted}")
        assert ns is None or ns["status"]["phase"] == "Terminating"
    finally:
        force_delete(kube, t)
        kube.delete(f"/api/v1/namespaces/{kept}")


def test_a_tenant_named_like_a_hand_made_slurm_account_leaves_it_alone(operator, kube, head):
    t = name("clash")
    head(f"sacctmgr -i add account {t} Description=physics Organization=physics GrpTRES=gres/gpu=2")
    try:
        create(kube, t)
        wait_for(
            "AccountNotOwned",
            lambda: (cond(kube, t, "SlurmSynced") or {}).get("reason") == "AccountNotOwned",
            timeout=60,
        )
        assert (
            "was not made by the tenant operator (Organization=physics" in cond(kube, t, "Ready")["message"]
        )
        assert grp_tres(head, t) == "gres/gpu=2"
        # Deleting the tenant leaves the account as it was.
        kube.delete(f"{TENANTS}/{t}")
        wait_for("tenant gone", lambda: kube.get(f"{TENANTS}/{t}") is None, timeout=120)
        account = head(f"sacctmgr -nP show account where name={t} format=account,organization").strip()
        assert account == f"{t}|physics" and grp_tres(head, t) == "gres/gpu=2"
    finally:
        force_delete(kube, t)
        head(f"sacctmgr -i remove account where name={t}", check=False)


def restricted_pod(pname: str, command: list[str], kube: kside.Kube) -> dict:
    """A toolbox pod that PodSecurity's restricted profile admits."""
    body = kube.api.sanitize_for_serialization(toolbox_pod(pname, command))
    body["spec"]["securityContext"] = {
        "runAsNonRoot": True,
        "runAsUser": 65532,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    body["spec"]["containers"][0]["securityContext"] = {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
    }
    return body


def pod_ip(kube: kside.Kube, namespace: str, pname: str) -> str:
    path = f"/api/v1/namespaces/{namespace}/pods/{pname}"
    wait_for(f"{pname} running", lambda: kube.get(path)["status"].get("phase") == "Running", 120)
    return kube.get(path)["status"]["podIP"]


def run_probe(kube: kside.Kube, namespace: str, pname: str, script: str) -> list[str]:
    """The verdicts (`what=how`) a restricted pod running `script` printed, in order."""
    post_pod(kube, namespace, restricted_pod(pname, ["sh", "-c", script], kube))
    path = f"/api/v1/namespaces/{namespace}/pods/{pname}"
    wait_for(
        f"{pname} finished", lambda: kube.get(path)["status"].get("phase") in ("Succeeded", "Failed"), 150
    )
    log = kube.api.call_api(*kube.api.param_serialize("GET", path + "/log", auth_settings=["BearerToken"]))
    return re.findall(r"^\w+=\w+$", log.read().decode(), re.MULTILINE)


def test_a_strict_tenant_is_fenced_in_restricted_and_its_members_cannot_loosen_it(
    configured_site, operator, kube, kubeconfig
):
    t = name("strict")
    a, b, outside = f"{t}-a", f"{t}-b", f"{t}-outside"
    serve = ["sh", "-c", "while true; do echo hello | nc -l -p 8080; done"]
    create(kube, t, isolation="strict", namespaces=[a, b], members={"users": ["carol"]})
    kube.request("POST", "/api/v1/namespaces", {"metadata": {"name": outside}})
    try:
        wait_ready(kube, t)
        post_pod(kube, b, restricted_pod("own", serve, kube))
        post_pod(kube, outside, restricted_pod("other", serve, kube))
        # PodSecurity restricted: a pod that could run as root is refused at admission
        with pytest.raises(kside.ApiError) as e:
            kube.request("POST", f"/api/v1/namespaces/{b}/pods", gpu_pod(0), query={"dryRun": "All"})
        assert e.value.status == 403 and "violates PodSecurity" in str(e.value), e.value
        own, other = pod_ip(kube, b, "own"), pod_ip(kube, outside, "other")
        head = configured_site.with_role("head")[0].address
        # Each probe prints its verdicts; the policy agent applies the policy within seconds, so the
        # connection meant to be refused is retried until it is.
        other_reached = f"nc -w 2 {other} 8080 </dev/null 2>/dev/null | grep -q hello"
        head_reached = f"nc -w 3 {head} 22 </dev/null 2>/dev/null | grep -q SSH"
        probe = (
            f"nc -w 3 {own} 8080 </dev/null 2>/dev/null | grep -q hello && echo own=ok || echo own=refused; "
            f"for i in $(seq 20); do {other_reached} || break; sleep 1; done; "
            f"{other_reached} && echo other=reached || echo other=refused; "
            f"{head_reached} && echo outside=reached || echo outside=refused; "
            "nslookup kubernetes.default.svc.cluster.local >/dev/null 2>&1 && echo dns=ok || echo dns=failed"
        )
        # the same address from a namespace without the fence: reachable, so a refusal is the policy's
        control = f"{head_reached} && echo outside=reached || echo outside=refused"
        assert run_probe(kube, outside, "control", control) == ["outside=reached"]
        assert run_probe(kube, a, "probe", probe) == ["own=ok", "other=refused", "outside=refused", "dns=ok"]

        # The member may run work but not loosen the fence (403 from the API server itself).
        member = k8s_config.new_client_from_config(config_file=str(kubeconfig))
        member.set_default_header("Impersonate-User", "carol")
        with pytest.raises(k8s_client.ApiException) as denied:
            k8s_client.NetworkingV1Api(member).patch_namespaced_network_policy(
                "tenant-isolation", a, {"spec": {"policyTypes": ["Ingress"]}}
            )
        assert denied.value.status == 403
        with pytest.raises(k8s_client.ApiException) as denied:
            k8s_client.CoreV1Api(member).patch_namespaced_resource_quota(
                "tenant-gpu-quota", a, {"spec": {"hard": {"requests.nvidia.com/gpu": "100"}}}
            )
        assert denied.value.status == 403
        k8s_client.CoreV1Api(member).create_namespaced_config_map(
            a, {"metadata": {"name": "carols"}}, dry_run="All"
        )
        member.close()
    finally:
        force_delete(kube, t)
        kube.delete(f"/api/v1/namespaces/{outside}")


@pytest.mark.parametrize(
    ("spec", "field", "words"),
    [
        ({"gpuQuota": {"h100": -1}}, "spec.gpuQuota.h100", "greater than or equal to 0"),
        ({"gpuQuota": {"x900": 1}}, "spec.gpuQuota", "unknown GPU model x900"),
        (
            {"members": {"slurmUsers": ["Robert'); DROP"]}},
            "spec.members.slurmUsers[0]",
            "not a valid Slurm user",
        ),
    ],
)
def test_malformed_tenants_are_rejected_naming_the_field(kube, spec, field, words):
    with pytest.raises(kside.ApiError) as e:
        create(kube, name("bad"), **spec)
    assert e.value.status == 422 and field in str(e.value) and words in str(e.value), e.value


def test_hand_edits_are_put_back_with_an_event(operator, kube, head):
    t = name("drift")
    create(kube, t)
    try:
        wait_ready(kube, t)
        rq = f"/api/v1/namespaces/{t}/resourcequotas/tenant-gpu-quota"
        kube.request(
            "PATCH",
            rq,
            {"spec": {"hard": {"requests.nvidia.com/gpu": "100"}}},
            content_type="application/merge-patch+json",
        )
        head(f"sacctmgr -i modify account where name={t} set GrpTRES=gres/gpu=99")
        wait_for("quota restored", lambda: kube.get(rq)["spec"]["hard"]["requests.nvidia.com/gpu"] == "8")
        wait_for("Slurm restored", lambda: "gres/gpu=8" in grp_tres(head, t).split(","))

        def both_reported():
            msgs = [m for r, m in events(kube, t) if r == "DriftCorrected"]
            rq_event = any("ResourceQuota" in m for m in msgs)
            return rq_event and any("GrpTRES" in m for m in msgs) and msgs

        msgs = wait_for("drift events for both sides", both_reported, timeout=60)
        assert not any("RoleBinding" in m or "LimitRange" in m for m in msgs), msgs  # only what was edited
    finally:
        force_delete(kube, t)


def test_overcommit_is_reported_on_every_affected_tenant(configured_site, operator, kube):
    cap = capacity.site_capacity(configured_site)["h100"]
    a, b = name("oc-a"), name("oc-b")
    create(kube, a, gpuQuota={"h100": cap - 1})
    create(kube, b, gpuQuota={"h100": 2})
    try:
        for t in (a, b):
            wait_for(f"{t} Overcommitted", lambda t=t: is_true(kube, t, "Overcommitted"))
            assert f"site has {cap}" in cond(kube, t, "Overcommitted")["message"]
        force_delete(kube, b)
        wait_for(f"{a} no longer Overcommitted", lambda: cond(kube, a, "Overcommitted")["status"] == "False")
    finally:
        force_delete(kube, a)
        force_delete(kube, b)


def test_slurmctld_down_marks_slurm_unsynced_then_converges(operator, kube, head):
    t = name("ctld")
    create(kube, t)
    try:
        wait_ready(kube, t)
        head("systemctl stop slurmctld")
        try:
            c = wait_for(
                "SlurmSynced=False",
                lambda: (c := cond(kube, t, "SlurmSynced")) and c["status"] == "False" and c,
            )
            assert c["reason"] == "SlurmctldUnavailable", c
            assert cond(kube, t, "Ready")["status"] == "False"
        finally:
            head("systemctl start slurmctld")
        wait_for("SlurmSynced=True again", lambda: is_true(kube, t, "SlurmSynced"), timeout=120)
        wait_ready(kube, t)
    finally:
        head("systemctl start slurmctld", check=False)
        force_delete(kube, t)


def test_sigkill_while_creating_50_tenants_converges_without_duplicates_or_orphans(operator, kube, head):
    names = [name(f"k{i:02d}") for i in range(50)]
    # Per-user caps, so each tenant also has its QOS (what a half-applied create could duplicate).
    threads = [
        threading.Thread(target=create, args=(kube, n), kwargs={"slurm": {"maxGPUsPerUser": 4}})
        for n in names
    ]
    for th in threads:
        th.start()

    def started() -> bool:  # a handler has begun writing (a namespace of one of them exists)
        return any(ns["metadata"]["name"] in names for ns in kube.list("/api/v1/namespaces", TENANT_LABEL))

    wait_for("the operator working on the new tenants", started, every=0.05)
    operator.kill()
    for th in threads:
        th.join()
    ready_before = sum(is_true(kube, n, "Ready") for n in names)
    operator.start()
    try:
        for n in names:
            wait_ready(kube, n, timeout=300)
        accounts = head(f"sacctmgr -nP show account format=account | grep '^optest-{RUN}-k' || true").split()
        assert sorted(accounts) == sorted(names)
        qos = head(f"sacctmgr -nP show qos format=name | grep '^tenant-optest-{RUN}-k' || true").split()
        assert sorted(qos) == sorted(f"tenant-{n}" for n in names)
        for n in names:
            assert [
                o["metadata"]["name"] for o in kube.list("/api/v1/namespaces", f"{TENANT_LABEL}={n}")
            ] == [n]
            assert len(kube.list(f"/api/v1/namespaces/{n}/resourcequotas")) == 1
        print(f"{ready_before}/50 Ready when the operator was killed")
    finally:
        for n in names:
            force_delete(kube, n)
        for n in names:
            wait_for(f"{n} deleted", lambda n=n: kube.get(f"{TENANTS}/{n}") is None, timeout=300)
    assert head(f"sacctmgr -nP show account format=account | grep '^optest-{RUN}-k' || true").strip() == ""
    assert head(f"sacctmgr -nP show qos format=name | grep '^tenant-optest-{RUN}-k' || true").strip() == ""


def test_metrics_count_reconciles(operator):
    text = operator.metrics()
    assert 'aifactory_tenant_reconcile_total{result="ok",side="kubernetes"}' in text
    assert 'aifactory_tenant_reconcile_total{result="ok",side="slurm"}' in text
    assert "aifactory_tenant_reconcile_seconds_bucket" in text
    # Counted from the ledger when scraped
    gauges = dict(re.findall(r"^(aifactory_tenants(?:_overcommitted)?) (\S+)$", text, re.M))
    assert set(gauges) == {"aifactory_tenants", "aifactory_tenants_overcommitted"}
    assert 0 <= float(gauges["aifactory_tenants_overcommitted"]) <= float(gauges["aifactory_tenants"])


def test_nothing_left_behind(operator, kube, head):
    """Runs last in this module: no tenant, namespace, account or QOS of this run remains."""
    for t in [
        t["metadata"]["name"] for t in kube.list(TENANTS) if t["metadata"]["name"].startswith(f"optest-{RUN}")
    ]:
        wait_for(f"{t} deleted", lambda t=t: kube.get(f"{TENANTS}/{t}") is None, timeout=120)
    assert head(f"sacctmgr -nP show account format=account | grep '^optest-{RUN}' || true").strip() == ""
    assert head(f"sacctmgr -nP show qos format=name | grep '^tenant-optest-{RUN}' || true").strip() == ""
