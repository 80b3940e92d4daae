"""Benchmark of Kueue's admission of tenants' Jobs on a deployed site. Prints figures; asserts nothing.

  .venv/bin/python bench/kueue.py --site FILE [--tenants 10,50] [--jobs 20]

For each size: that many Tenants (quota h100: --jobs each), made into ClusterQueues and LocalQueues
by the operator the site runs (the Deployment `pulumi up` made), then --jobs one-GPU Jobs per tenant
submitted at once to its LocalQueue; the time until every Workload is admitted, the admissions per
second, and how the time per Workload grows with the size (1.0: linear). Admission is quota
only: most pods then wait for a node (the local site's Kubernetes pool has 16 GPUs), which Kueue
does not wait for. Everything is named `kqbench-<random>-...` and removed at the end.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from kubernetes import client

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from aifactory import paths  # noqa: E402
from aifactory.images import toolbox_pod  # noqa: E402
from aifactory.site.validate import load_site  # noqa: E402
from operators.tenants import install  # noqa: E402
from operators.tenants import kubernetes_side as kside  # noqa: E402
from operators.tenants.spec import FORCE_DELETE_ANNOTATION, GROUP, VERSION  # noqa: E402

TENANTS = f"/apis/{GROUP}/{VERSION}/tenants"
KUEUE = "/apis/kueue.x-k8s.io/v1beta2"
WORKERS = 16


def wait(what: str, fn, timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    while not fn():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not after {timeout:.0f} s")
        time.sleep(0.5)


def job(name: str) -> dict:
    spec = client.ApiClient().sanitize_for_serialization(toolbox_pod(name, ["sleep", "600"], gpus=1))["spec"]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "labels": {"kueue.x-k8s.io/queue-name": "default"}},
        "spec": {"backoffLimit": 0, "template": {"spec": spec}},
    }


def admitted(kube: kside.Kube, namespaces: list[str]) -> int:
    n = 0
    for w in kube.list(f"{KUEUE}/workloads"):
        if w["metadata"]["namespace"] in namespaces:
            conds = (w.get("status") or {}).get("conditions") or []
            n += any(c["type"] == "Admitted" and c["status"] == "True" for c in conds)
    return n


def measure(kube: kside.Kube, tenants: int, jobs: int, report: Callable[[float], None]) -> None:
    """Admission of `tenants` x `jobs` Jobs; `report` gets the seconds before the cleanup starts."""
    run = uuid.uuid4().hex[:5]
    names = [f"kqbench-{run}-{i}" for i in range(tenants)]
    with ThreadPoolExecutor(WORKERS) as pool:
        list(
            pool.map(
                lambda n: kube.request(
                    "POST",
                    TENANTS,
                    {
                        "apiVersion": f"{GROUP}/{VERSION}",
                        "kind": "Tenant",
                        "metadata": {"name": n},
                        "spec": {"displayName": "bench", "gpuQuota": {"h100": jobs}},
                    },
                ),
                names,
            )
        )
        try:
            wait(
                "LocalQueues",
                lambda: (
                    sum(kube.get(f"{KUEUE}/namespaces/{n}/localqueues/default") is not None for n in names)
                    == tenants
                ),
            )
            posts = [(n, f"j{i}") for n in names for i in range(jobs)]
            start = time.monotonic()
            list(
                pool.map(
                    lambda p: kube.request("POST", f"/apis/batch/v1/namespaces/{p[0]}/jobs", job(p[1])), posts
                )
            )
            wait("every Workload admitted", lambda: admitted(kube, names) == len(posts))
            report(time.monotonic() - start)
        finally:
            force = {"metadata": {"annotations": {FORCE_DELETE_ANNOTATION: "true"}}}
            for n in names:
                kube.request("PATCH", f"{TENANTS}/{n}", force, content_type="application/merge-patch+json")
            list(pool.map(lambda n: kube.delete(f"{TENANTS}/{n}"), names))
            wait("tenants gone", lambda: not any(kube.get(f"{TENANTS}/{n}") for n in names))
            # Kueue holds each ClusterQueue (a finalizer) until its Workloads are gone: wait, so
            # that nothing is left for a later `pulumi destroy` to wait on once Kueue is gone.
            queues = [kside.path(kside.KUEUE, "ClusterQueue", f"tenant-{n}") for n in names]
            wait("ClusterQueues gone", lambda: not any(kube.get(q) for q in queues))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--site", type=Path, required=True, help="a deployed site (Kueue and the operator running)"
    )
    ap.add_argument("--tenants", default="10,50", help="tenant counts (comma-separated)")
    ap.add_argument("--jobs", type=int, default=20, help="one-GPU Jobs per tenant")
    args = ap.parse_args()
    site = load_site(args.site)
    kube = install.kube(paths.site_state_dir(site.name) / "kubeconfig")
    if not kube.has_kueue():
        print("bench/kueue.py: Kueue is not installed on this site (pulumi up deploys it)", file=sys.stderr)
        return 2
    print(f"Kueue admission: --jobs {args.jobs} one-GPU Jobs per tenant, submitted at once")
    print(f"  {'tenants':>7}  {'workloads':>9}  {'seconds':>8}  {'admitted/s':>10}  {'growth':>6}")
    first: list[float] = []

    def row(n: int, secs: float) -> None:
        per = secs / (n * args.jobs)
        first.append(per)
        rate = n * args.jobs / secs
        print(
            f"  {n:>7}  {n * args.jobs:>9}  {secs:>8.1f}  {rate:>10.1f}  {per / first[0]:>6.2f}", flush=True
        )

    for n in [int(x) for x in args.tenants.split(",")]:
        measure(kube, n, args.jobs, lambda secs, n=n: row(n, secs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
