"""Benchmark of the Kubernetes data plane on a configured site: pod start latency. Asserts nothing.

  .venv/bin/python bench/pods.py [--site sites/local.yaml] [--pods 50]

The site must be up and deployed (`./factory up`). First one pod alone, then N pods created at once,
spread over the kubernetes pool (toolbox image, no GPU). A pod's start latency is from its create
call returning to a watch event showing it Running, on this machine's clock. Prints p50/p95/max,
the ratio of the burst's p50 to the lone pod, pods per second, and the memory of the running site
(proportional set size of every process of its hosts, idle and with the pods, and of the node
daemons among them).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from kubernetes import client, config, watch  # noqa: E402

from aifactory import images, paths  # noqa: E402
from aifactory.site.validate import load_site  # noqa: E402
from sandbox import hosts  # noqa: E402


def start_pods(
    core: client.CoreV1Api, ns: str, names: list[str], nodes: list[str], timeout: float
) -> dict[str, float]:
    """Create the pods at once; return name -> seconds from its create call to Running."""
    created: dict[str, float] = {}
    running: dict[str, float] = {}
    done = threading.Event()

    wanted = set(names)

    def observe() -> None:
        w = watch.Watch()
        for ev in w.stream(core.list_namespaced_pod, ns, timeout_seconds=int(timeout)):
            p = ev["object"]
            # Only this call's pods: the namespace also holds the earlier ones, still running.
            if p.metadata.name in wanted and p.status.phase == "Running" and p.metadata.name not in running:
                running[p.metadata.name] = time.monotonic()
                if len(running) == len(names):
                    break
        w.stop()
        done.set()

    watcher = threading.Thread(target=observe, daemon=True)
    watcher.start()
    time.sleep(0.5)  # the watch is open before the first create
    for i, name in enumerate(names):
        core.create_namespaced_pod(ns, images.toolbox_pod(name, ["sleep", "600"], node=nodes[i % len(nodes)]))
        created[name] = time.monotonic()
    done.wait(timeout)
    missing = sorted(set(names) - set(running))
    if missing:
        why = []
        for name in missing[:3]:
            p = core.read_namespaced_pod(name, ns)
            waiting = [c.state.waiting for c in p.status.container_statuses or [] if c.state.waiting]
            reasons = "; ".join(f"{w.reason}: {w.message}" for w in waiting)
            why.append(f"{name} on {p.spec.node_name}: {p.status.phase} {reasons}")
        raise SystemExit(
            f"bench: {len(missing)} pod(s) not Running after {timeout:.0f}s:\n  " + "\n  ".join(why)
        )
    return {n: running[n] - created[n] for n in names}


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _pss_mib(pid: int) -> float:
    """Proportional set size: shared pages (the same binaries in every host) counted once overall."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def memory_mib(site) -> dict[str, float]:
    """PSS of every process of the site's hosts, and of the node daemons among them."""
    by = {"kubelet": 0.0, "containerd": 0.0, "kube-proxy": 0.0, "kube-router": 0.0}
    total = 0.0
    for pid in hosts.cgroup_pids(hosts.cgroup_dirs(site)):
        pss = _pss_mib(pid)
        total += pss
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        if comm in by:
            by[comm] += pss
    return {"hosts_total": round(total), **{f"{k}_total": round(v) for k, v in by.items()}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--site", type=Path, default=REPO / "sites" / "local.yaml")
    ap.add_argument("--pods", type=int, default=50)
    ap.add_argument("--timeout", type=float, default=300)
    args = ap.parse_args()
    if args.pods < 1:
        ap.error("--pods must be at least 1")
    site = load_site(args.site)
    kubeconfig = paths.site_state_dir(site.name) / "kubeconfig"
    if not kubeconfig.exists():
        ap.error(f"{kubeconfig} missing: deploy the site first (./factory up)")
    api = config.new_client_from_config(config_file=str(kubeconfig))
    core = client.CoreV1Api(api)
    nodes = [m.name for m in site.in_pool("kubernetes")]
    ns = f"bench-pods-{uuid.uuid4().hex[:6]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
    try:
        # The namespace's default ServiceAccount appears a moment after the namespace.
        while not core.list_namespaced_service_account(ns).items:
            time.sleep(0.2)
        idle = memory_mib(site)
        lone = start_pods(core, ns, ["lone"], nodes, args.timeout)["lone"]
        t0 = time.monotonic()
        lat = list(start_pods(core, ns, [f"p{i}" for i in range(args.pods)], nodes, args.timeout).values())
        wall = time.monotonic() - t0
        figures = {
            "nodes": len(nodes),
            "lone_pod_start_s": round(lone, 2),
            "pods": args.pods,
            "start_s": {
                "p50": round(statistics.median(lat), 2),
                "p95": round(quantile(lat, 0.95), 2),
                "max": round(max(lat), 2),
            },
            "all_running_s": round(wall, 1),
            "pods_per_s": round(args.pods / wall, 1),
            "burst_p50_to_lone_ratio": round(statistics.median(lat) / lone, 1),
            "memory_mib_idle": idle,
            "memory_mib_with_pods": memory_mib(site),
        }
    finally:
        core.delete_namespace(ns)
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
