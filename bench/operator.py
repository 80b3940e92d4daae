"""Benchmark of the tenant operator on a configured site. Prints figures and ratios; asserts nothing.

  .venv/bin/python bench/operator.py --site FILE [--tenants 200] [--rounds 3] [--capacity-of FILE]

With --capacity-of sites/scale.yaml the tenants are sized for a 256-server site (2,048 H100): the
operator takes that capacity and each tenant a share that fits. Beyond its capacity, the site's size
enters the operator's work only through its tenants' pods (it reads the Node of a GPU pod for its
model) and never through Slurm's nodes; the bench's tenants run no pods.

- N tenants created at once: time until all are Ready (both sides applied), and p50/p90 of each
  tenant's time to Ready;
- a quota change on all of them at once: p50/p95 latency from each spec change until the quota is
  effective on each side (Kubernetes: the ResourceQuota's status.hard, what admission checks;
  Slurm: slurmctld's association GrpTRES, `scontrol show assoc_mgr`);
- the operator's peak memory (VmHWM);
- the floor: a plain script, no operator, that makes the requests of the operator's run directly:
  it creates each Tenant (as the bench does for the operator), writes the same Kubernetes objects
  (as many threads as the operator's default Kubernetes concurrency), runs the same sacctmgr
  commands as one batch, then writes each Tenant the status the operator writes; and the ratio of
  the operator's time to it. The floor without the Tenants' own two writes (objects + sacctmgr
  only) is measured and its ratio printed too: those two writes alone take ~1.4x of it on a
  2-core machine, so it leaves a controller next to nothing. Floors and operator alternate in
  rounds and the median ratios are reported.

Everything it makes is named `bench-<random>-...` and removed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import kopf
from kubernetes import client as k8s_client
from kubernetes import watch as k8s_watch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from aifactory import paths  # noqa: E402
from aifactory.site.validate import load_site  # noqa: E402
from operators.tenants import capacity, config, handlers, install, slurm  # noqa: E402
from operators.tenants import kubernetes_side as kside  # noqa: E402
from operators.tenants.spec import (  # noqa: E402
    FORCE_DELETE_ANNOTATION,
    GROUP,
    TENANT_LABEL,
    VERSION,
    TenantSpec,
    parse,
)
from sandbox import daemons  # noqa: E402

TENANTS = f"/apis/{GROUP}/{VERSION}/tenants"
# The site's own operator (infra/tenant_operator.py; not imported: bench/pulumi.py shadows `pulumi`)
OPERATOR_NAMESPACE, OPERATOR_NAME = "aifactory-system", "tenant-operator"
WORKERS = config.KUBE_CONCURRENCY  # the floor writes with as many threads as the operator


def tenant_spec(gpus: int) -> dict:
    return {"displayName": "bench", "gpuQuota": {"h100": gpus}, "members": {"slurmUsers": ["root"]}}


@dataclass(frozen=True)
class Shape:
    """The site the tenants are sized for: its GPU capacity per model and each tenant's H100 quota."""

    capacity: dict[str, int]
    quota: int


def create_tenant(kube: kside.Kube, name: str, quota: int) -> dict:
    created = kube.request(
        "POST",
        TENANTS,
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "Tenant",
            "metadata": {"name": name},
            "spec": tenant_spec(quota),
        },
    )
    assert created is not None
    return created


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))]


def memory_mib(pid: int, key: str) -> float:
    """A process's VmHWM (peak) or VmRSS (now), MiB."""
    found = re.search(rf"{key}:\s+(\d+)", Path(f"/proc/{pid}/status").read_text())
    assert found, f"/proc/{pid}/status has no {key}"
    return int(found.group(1)) / 1024


def is_ready(t: dict) -> bool:
    conds = (t.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conds)


def merge_patch(kube: kside.Kube, name: str, body: dict) -> None:
    kube.request("PATCH", f"{TENANTS}/{name}", body, content_type="application/merge-patch+json")


def ctld_grp_gpus(runner: slurm.Runner, accounts: list[str]) -> dict[str, int]:
    """slurmctld's own view of each account's GrpTRES gres/gpu (what it enforces)."""
    out = runner.run(f"scontrol show assoc_mgr flags=assoc accounts={','.join(accounts)}").out
    seen: dict[str, int] = {}
    current = None
    for line in out.splitlines():
        m = re.search(r"Account=(\S+) UserName= ", line)
        if m:
            current = m.group(1)
            continue
        m = re.search(r"GrpTRES=.*?gres/gpu=(\d+)", line)
        if m and current:
            seen[current] = int(m.group(1))
            current = None
    return seen


def watch_until(
    list_fn: Callable, seen: Callable[[dict], None], done: Callable[[], bool], deadline: float, **kw
) -> None:
    """Feeds every object of `list_fn` (those there at the start, then each change) to `seen` until
    `done()`. A watch, not a polling list: the measurement must not load the API server it measures."""
    while not done():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{list_fn.__name__}: not done in time")
        w = k8s_watch.Watch()
        try:
            for event in w.stream(list_fn, deserialize=False, timeout_seconds=30, **kw):
                seen(event["object"])
                if done():
                    w.stop()
                    break
        except KeyError:  # an ERROR event (its resourceVersion compacted away under load): list anew
            continue


def wait_namespaces_gone(kube: kside.Kube, names: list[str]) -> None:
    """The namespace controller empties and removes deleted namespaces in the background: wait, so
    that work does not fall into the next measurement."""
    deadline = time.monotonic() + 600
    while {ns["metadata"]["name"] for ns in kube.list(kside.path("v1", "Namespace"))} & set(names):
        if time.monotonic() > deadline:
            raise TimeoutError("deleted namespaces are not gone after 10 min")
        time.sleep(1)


def delete_all(kube: kside.Kube, names: list[str]) -> float:
    """Force-delete the tenants through the operator (its finalizers); seconds until all are gone."""
    start = time.monotonic()
    wanted = set(names)
    there = [t["metadata"]["name"] for t in kube.list(TENANTS) if t["metadata"]["name"] in wanted]
    ann = {"metadata": {"annotations": {FORCE_DELETE_ANNOTATION: "true"}}}
    with ThreadPoolExecutor(WORKERS) as pool:
        list(pool.map(lambda n: merge_patch(kube, n, ann), there))
        list(pool.map(lambda n: kube.delete(f"{TENANTS}/{n}"), there))
    while any(t["metadata"]["name"] in wanted for t in kube.list(TENANTS)):
        if time.monotonic() - start > 1800:
            raise TimeoutError("tenants not deleted after 30 min")
        time.sleep(0.5)
    return time.monotonic() - start


def run_operator(
    site, kube: kside.Kube, kubeconfig: Path, runner, names: list[str], log: Path, shape: Shape
) -> dict:
    env = install.operator_env(site.path, kubeconfig, drift_interval=3600, metrics_port=0)
    env["AIFACTORY_GPU_CAPACITY"] = capacity.format_capacity(shape.capacity)
    with open(log, "wb") as out:
        proc = subprocess.Popen(install.kopf_command(), env=env, stdout=out, stderr=out)
    figures: dict = {}
    try:
        time.sleep(5)  # started and watching (excluded: a long-running operator is already up)
        start = time.monotonic()
        with ThreadPoolExecutor(WORKERS) as pool:
            list(pool.map(lambda n: create_tenant(kube, n, shape.quota), names))
        wanted = set(names)
        ready: set[str] = set()
        ready_at: list[float] = []  # seconds from the start, per tenant

        def tenant_seen(t: dict) -> None:
            if is_ready(t) and t["metadata"]["name"] not in ready:
                ready.add(t["metadata"]["name"])
                ready_at.append(time.monotonic() - start)

        watch_until(
            k8s_client.CustomObjectsApi(kube.api).list_cluster_custom_object,
            tenant_seen,
            lambda: wanted <= ready,
            start + 1800,
            group=GROUP,
            version=VERSION,
            plural="tenants",
        )
        figures["all_ready_s"] = time.monotonic() - start
        figures["ready_p50_s"], figures["ready_p90_s"] = pct(ready_at, 50), pct(ready_at, 90)

        # Spec change on every tenant at once; per-tenant latency to effective quota on each side.
        changed: dict[str, float] = {}

        def change(n: str) -> None:
            changed[n] = time.monotonic()
            merge_patch(kube, n, {"spec": {"gpuQuota": {"h100": 16}}})

        k8s_done: dict[str, float] = {}
        slurm_done: dict[str, float] = {}

        def quota_seen(rq: dict) -> None:
            ns = rq["metadata"]["namespace"]
            hard = (rq.get("status") or {}).get("hard", {})
            if ns in wanted and ns not in k8s_done and hard.get("requests.nvidia.com/gpu") == "16":
                k8s_done[ns] = time.monotonic()

        def watch_k8s() -> None:
            watch_until(
                k8s_client.CoreV1Api(kube.api).list_resource_quota_for_all_namespaces,
                quota_seen,
                lambda: len(k8s_done) == len(names),
                time.monotonic() + 900,
                label_selector=TENANT_LABEL,
            )

        def watch_slurm() -> None:
            while len(slurm_done) < len(names):
                for a, n in ctld_grp_gpus(runner, names).items():
                    if n == 16 and a not in slurm_done:
                        slurm_done[a] = time.monotonic()
                time.sleep(0.2)

        watchers = [
            threading.Thread(target=watch_k8s, daemon=True),
            threading.Thread(target=watch_slurm, daemon=True),
        ]
        for w in watchers:
            w.start()
        with ThreadPoolExecutor(WORKERS) as pool:
            list(pool.map(change, names))
        for w in watchers:
            w.join(900)
        k8s_lat = [k8s_done[n] - changed[n] for n in names if n in k8s_done]
        slurm_lat = [slurm_done[n] - changed[n] for n in names if n in slurm_done]
        figures["k8s_p50_s"], figures["k8s_p95_s"] = pct(k8s_lat, 50), pct(k8s_lat, 95)
        figures["slurm_p50_s"], figures["slurm_p95_s"] = pct(slurm_lat, 50), pct(slurm_lat, 95)
        figures["peak_rss_mib"] = memory_mib(proc.pid, "VmHWM")
        figures["rss_mib"] = memory_mib(proc.pid, "VmRSS")

        # Clean up through the operator (finalizers), timed for information.
        figures["all_deleted_s"] = delete_all(kube, names)
        figures["peak_rss_deleting_mib"] = memory_mib(proc.pid, "VmHWM")
        wait_namespaces_gone(kube, names)
    finally:
        if "all_deleted_s" not in figures:  # a failed run leaves nothing behind either
            delete_all(kube, names)
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    return figures


def operator_status(t: TenantSpec, created: dict, ledger: capacity.Ledger) -> dict:
    """The status write the operator makes for a new tenant with both sides applied: its
    conditions and figures (handlers.write_status) and kopf's record of the spec it handled."""
    patch = kopf.Patch()
    out = handlers.Outcome(observed=slurm.Observed(t.name, exists=True, running_jobs=0))
    verdict = ledger.verdict(t.name)
    handlers.write_status(patch, {}, t, created["metadata"]["generation"], out, verdict, ledger.policy)
    essence = json.dumps({"spec": created["spec"]}, separators=(",", ":"))
    patch.status["kopf"] = {"last-handled-configuration": essence}
    return dict(patch)


def run_floor(
    kubeconfig: Path, kube: kside.Kube, runner: slurm.Runner, names: list[str], tenants: bool, shape: Shape
) -> float:
    """The same Kubernetes objects and sacctmgr commands, written directly: no operator. With
    `tenants`, also each Tenant's create and, once both sides are applied, its status write."""
    specs = [parse(n, tenant_spec(shape.quota)) for n in names]
    ledger = capacity.Ledger(shape.capacity, "warn")
    status_kube = install.kube(kubeconfig)
    kueue = kube.has_kueue()  # the operator writes each tenant's queues too where Kueue runs
    start = time.monotonic()
    accounts = slurm.SacctmgrAccounts(runner)
    cmds = [c for t in specs for c in slurm.plan(slurm.desired(t), slurm.Observed(t.name))]
    sacct = threading.Thread(target=accounts.apply, args=(cmds,))
    sacct.start()

    def status(t: TenantSpec, created: dict) -> None:
        sacct.join()  # both sides applied
        body = operator_status(t, created, ledger)
        status_kube.request(
            "PATCH", f"{TENANTS}/{t.name}/status", body, content_type="application/merge-patch+json"
        )

    # Status writes have threads and connections of their own (the operator's go through kopf's)
    # and start once the tenant's objects are written and the Slurm batch is done.
    with ThreadPoolExecutor(WORKERS) as pool, ThreadPoolExecutor(WORKERS) as status_pool:
        statuses = []

        def objects(t: TenantSpec) -> None:
            kside.write(kube, t.name, kside.desired_objects(t, kueue), fresh=True)

        def tenant(t: TenantSpec) -> None:
            created = create_tenant(kube, t.name, shape.quota)
            ledger.put(handlers.tenant_quota(t.name, t.gpu_quota, created["metadata"]))
            objects(t)
            statuses.append(status_pool.submit(status, t, created))

        list(pool.map(tenant if tenants else objects, specs))
        sacct.join()
        for done in statuses:
            done.result()
    elapsed = time.monotonic() - start
    # cleanup (no operator runs to remove the Tenants' finalizer)
    accounts.apply([c for t in specs for c in slurm.delete_plan(t.name)])
    with ThreadPoolExecutor(WORKERS) as pool:
        if tenants:
            no_finalizer = {"metadata": {"finalizers": None}}
            list(pool.map(lambda n: merge_patch(kube, n, no_finalizer), names))
            list(pool.map(lambda n: kube.delete(f"{TENANTS}/{n}"), names))
        list(pool.map(lambda n: kube.delete(kside.path("v1", "Namespace", n)), names))
        if kueue:
            list(
                pool.map(lambda n: kube.delete(kside.path(kside.KUEUE, "ClusterQueue", f"tenant-{n}")), names)
            )
    wait_namespaces_gone(kube, names)
    return elapsed


@contextlib.contextmanager
def site_operator_paused(kube: kside.Kube) -> Iterator[None]:
    """The site's own operator (the Deployment `pulumi up` made) would reconcile the floor's tenants:
    scaled to 0 replicas for the bench, and back afterwards."""
    deployment = f"/apis/apps/v1/namespaces/{OPERATOR_NAMESPACE}/deployments/{OPERATOR_NAME}"
    replicas = ((kube.get(deployment) or {}).get("spec") or {}).get("replicas", 0)

    def scale(n: int) -> None:
        kube.request(
            "PATCH", deployment, {"spec": {"replicas": n}}, content_type="application/merge-patch+json"
        )

    if replicas:
        scale(0)
        pods = kside.path("v1", "Pod", namespace=OPERATOR_NAMESPACE)
        deadline = time.monotonic() + 120
        while kube.list(pods, f"app.kubernetes.io/name={OPERATOR_NAME}") and time.monotonic() < deadline:
            time.sleep(1)
    try:
        yield
    finally:
        if replicas:
            scale(replicas)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--site", type=Path, required=True, help="a configured site (Slurm + Kubernetes)")
    ap.add_argument("--tenants", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3, help="floors + operator rounds; ratios are medians")
    ap.add_argument(
        "--capacity-of",
        type=Path,
        help="size the tenants for this site file's GPUs instead (e.g. sites/scale.yaml, 256 servers): "
        "the operator takes its capacity, and each tenant a share of it (1-8 H100) so that all fit",
    )
    args = ap.parse_args()
    if args.tenants < 1 or args.rounds < 1:
        ap.error("--tenants and --rounds must be at least 1")
    site = load_site(args.site)
    kubeconfig = paths.site_state_dir(site.name) / "kubeconfig"
    running = daemons.pid_of(paths.site_state_dir(site.name) / "operator" / "operator.pid")
    if running:
        # Two operators would both reconcile the bench's tenants: the figures would mean nothing.
        print(
            f"bench/operator.py: the site's operator runs (pid {running}); stop it first: "
            f".venv/bin/aifactory operator stop --site {args.site}",
            file=sys.stderr,
        )
        return 2
    own = capacity.site_capacity(site)
    if args.capacity_of:
        cap = capacity.site_capacity(load_site(args.capacity_of))
        shape = Shape(cap, max(1, min(8, cap.get("h100", 0) // args.tenants)))
    else:  # the deployed site's own capacity, every tenant 8 H100 (over-committed: policy warn)
        shape = Shape(own, 8)
    install.install_crd(kubeconfig, sorted(own))
    kube = install.kube(kubeconfig)
    runner = slurm.SshRunner(paths.ssh_config(site.name), site.with_role("head")[0].name)
    run = uuid.uuid4().hex[:4]

    # The 2-core machine is noisy (the floor alone varies by a third between runs): rounds of both
    # floors then operator, each ratio from one round, and the median of those.
    rounds = []
    with site_operator_paused(kube):
        for r in range(args.rounds):
            names = [f"bench-{run}-{r}-{i:03d}" for i in range(args.tenants)]
            objects_floor = run_floor(kubeconfig, kube, runner, [f"{n}j" for n in names], False, shape)
            floor = run_floor(kubeconfig, kube, runner, [f"{n}f" for n in names], True, shape)
            log = Path(tempfile.mkdtemp()) / "operator.log"
            op = run_operator(site, kube, kubeconfig, runner, [f"{n}o" for n in names], log, shape)
            rounds.append((floor, objects_floor, op, log))
            print(
                f"  round {r + 1}: floor {floor:5.1f} s (objects + sacctmgr only {objects_floor:4.1f} s),"
                f" operator all Ready {op['all_ready_s']:5.1f} s",
                flush=True,
            )

    floors, objects_floors = [r[0] for r in rounds], [r[1] for r in rounds]
    readies = [r[2]["all_ready_s"] for r in rounds]

    def ratio_line(label: str, floors: list[float], target: str = "") -> str:
        ratios = sorted(o / f for o, f in zip(readies, floors, strict=True))
        median = statistics.median(ratios)
        return f"  {label:33s}{median:7.2f} x median ({', '.join(f'{x:.2f}' for x in ratios)}){target}"

    _, _, op, log = rounds[-1]
    n = args.tenants
    print(f"tenant operator, {n} tenants created at once (site {site.name}; last operator log {log})")
    gpus = ", ".join(f"{n} {m}" for m, n in sorted(shape.capacity.items()))
    print(
        f"  capacity {gpus}"
        + (f" ({args.capacity_of})" if args.capacity_of else "")
        + f"; quota {shape.quota} H100 each"
    )
    ready = statistics.median(readies)
    print(f"  all Ready (median of {len(rounds)} rounds):  {ready:7.1f} s")
    print(f"  each tenant Ready (last round): p50 {op['ready_p50_s']:.1f} s, p90 {op['ready_p90_s']:.1f} s")
    print(f"  floor (the run's requests, direct): {statistics.median(floors):4.1f} s")
    print(f"  floor, objects + sacctmgr only:     {statistics.median(objects_floors):4.1f} s")
    print(ratio_line("ratio operator / floor:", floors, "   (target <= 1.5)"))
    print(ratio_line("ratio operator / objects only:", objects_floors))
    for side, key in (("Kubernetes", "k8s"), ("Slurm", "slurm")):
        p50, p95 = op[f"{key}_p50_s"], op[f"{key}_p95_s"]
        print(f"  spec change -> quota effective, {side + ':':11} p50 {p50:.2f} s, p95 {p95:.2f} s")
    print(f"  operator memory: peak {op['peak_rss_mib']:.0f} MiB, now {op['rss_mib']:.0f} MiB")
    print(f"  all deleted (finalizers):        {op['all_deleted_s']:7.1f} s")
    print(f"  operator memory, peak while deleting them all: {op['peak_rss_deleting_mib']:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
