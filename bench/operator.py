"""Benchmark of the tenant operator on a configured site. Prints figures and ratios; asserts nothing.

  .venv/bin/python bench/operator.py --site FILE [--tenants 200]

- N tenants created at once: time until all are Ready (both sides applied);
- a quota change on all of them at once: p50/p95 latency from each spec change until the quota is
  effective on each side (Kubernetes: the ResourceQuota's status.hard, what admission checks;
  Slurm: slurmctld's association GrpTRES, `scontrol show assoc_mgr`);
- the operator's peak memory (VmHWM);
- the floor: a plain script that server-side-applies the same Kubernetes objects (same number of
  threads as the operator's workers) and runs the same sacctmgr commands as one batch, and the
  ratio of the operator's time to it.

Everything it makes is named `bench-<random>-...` and removed at the end.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from aifactory import paths  # noqa: E402
from aifactory.site.validate import load_site  # noqa: E402
from operators.tenants import capacity, install, slurm  # noqa: E402
from operators.tenants import kubernetes_side as kside  # noqa: E402
from operators.tenants.spec import FORCE_DELETE_ANNOTATION, GROUP, TENANT_LABEL, VERSION, parse  # noqa: E402

TENANTS = f"/apis/{GROUP}/{VERSION}/tenants"
WORKERS = 16


def tenant_spec(gpus: int) -> dict:
    return {"displayName": "bench", "gpuQuota": {"h100": gpus}, "members": {"slurmUsers": ["root"]}}


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))]


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


def run_operator(site, kube: kside.Kube, kubeconfig: Path, runner, names: list[str], log: Path) -> dict:
    env = install.operator_env(site.path, kubeconfig, drift_interval=3600, metrics_port=0)
    with open(log, "wb") as out:
        proc = subprocess.Popen(install.kopf_command(), env=env, stdout=out, stderr=out)
    figures: dict = {}
    try:
        time.sleep(5)  # started and watching (excluded: a long-running operator is already up)
        start = time.monotonic()
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
                            "spec": tenant_spec(8),
                        },
                    ),
                    names,
                )
            )
        wanted = set(names)
        while True:
            ready = {
                t["metadata"]["name"]
                for t in kube.list(TENANTS)
                if any(
                    c["type"] == "Ready" and c["status"] == "True"
                    for c in (t.get("status") or {}).get("conditions") or []
                )
            }
            if wanted <= ready:
                break
            if time.monotonic() - start > 1800:
                raise TimeoutError(f"{len(wanted - ready)} tenants not Ready after 30 min")
            time.sleep(0.5)
        figures["all_ready_s"] = time.monotonic() - start

        # Spec change on every tenant at once; per-tenant latency to effective quota on each side.
        changed: dict[str, float] = {}

        def change(n: str) -> None:
            changed[n] = time.monotonic()
            kube.request(
                "PATCH",
                f"{TENANTS}/{n}",
                {"spec": {"gpuQuota": {"h100": 16}}},
                content_type="application/merge-patch+json",
            )

        k8s_done: dict[str, float] = {}
        slurm_done: dict[str, float] = {}

        def watch_k8s() -> None:
            while len(k8s_done) < len(names):
                for rq in kube.list("/api/v1/resourcequotas", f"{TENANT_LABEL}"):
                    ns = rq["metadata"]["namespace"]
                    hard = (rq.get("status") or {}).get("hard", {})
                    if ns in wanted and ns not in k8s_done and hard.get("requests.nvidia.com/gpu") == "16":
                        k8s_done[ns] = time.monotonic()
                time.sleep(0.2)

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
        status = Path(f"/proc/{proc.pid}/status").read_text()
        figures["peak_rss_mib"] = int(re.search(r"VmHWM:\s+(\d+)", status).group(1)) / 1024  # type: ignore[union-attr]
        figures["rss_mib"] = int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024  # type: ignore[union-attr]

        # Clean up through the operator (finalizers), timed for information.
        start = time.monotonic()
        ann = {"metadata": {"annotations": {FORCE_DELETE_ANNOTATION: "true"}}}
        with ThreadPoolExecutor(WORKERS) as pool:
            list(
                pool.map(
                    lambda n: kube.request(
                        "PATCH", f"{TENANTS}/{n}", ann, content_type="application/merge-patch+json"
                    ),
                    names,
                )
            )
            list(pool.map(lambda n: kube.delete(f"{TENANTS}/{n}"), names))
        while any(t["metadata"]["name"] in wanted for t in kube.list(TENANTS)):
            if time.monotonic() - start > 1800:
                raise TimeoutError("tenants not deleted after 30 min")
            time.sleep(0.5)
        figures["all_deleted_s"] = time.monotonic() - start
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    return figures


def run_floor(kube: kside.Kube, runner: slurm.Runner, names: list[str]) -> float:
    """The same Kubernetes objects and sacctmgr commands, written directly: no operator."""
    specs = [parse(n, tenant_spec(8)) for n in names]
    start = time.monotonic()
    accounts = slurm.SacctmgrAccounts(runner)
    cmds = [c for t in specs for c in slurm.plan(slurm.desired(t), slurm.Observed(t.name))]
    sacct = threading.Thread(target=accounts.apply, args=(cmds,))
    sacct.start()
    with ThreadPoolExecutor(WORKERS) as pool:
        list(pool.map(lambda t: [kube.apply(o) for o in kside.desired_objects(t)], specs))
    sacct.join()
    elapsed = time.monotonic() - start
    # cleanup
    accounts.apply([c for t in specs for c in slurm.delete_plan(t.name)])
    with ThreadPoolExecutor(WORKERS) as pool:
        list(pool.map(lambda n: kube.delete(kside.path("v1", "Namespace", n)), names))
    return elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--site", type=Path, required=True, help="a configured site (Slurm + Kubernetes)")
    ap.add_argument("--tenants", type=int, default=200)
    args = ap.parse_args()
    site = load_site(args.site)
    kubeconfig = paths.site_state_dir(site.name) / "kubeconfig"
    install.install_crd(kubeconfig, sorted(capacity.site_capacity(site)))
    kube = install.kube(kubeconfig)
    runner = slurm.SshRunner(paths.ssh_config(site.name), site.with_role("head")[0].name)
    run = uuid.uuid4().hex[:4]

    floor = run_floor(kube, runner, [f"bench-{run}-f{i:03d}" for i in range(args.tenants)])
    log = Path(tempfile.mkdtemp()) / "operator.log"
    op = run_operator(
        site, kube, kubeconfig, runner, [f"bench-{run}-o{i:03d}" for i in range(args.tenants)], log
    )

    n = args.tenants
    print(f"tenant operator, {n} tenants created at once (site {site.name}; operator log {log})")
    print(f"  all Ready:                       {op['all_ready_s']:7.1f} s")
    print(f"  floor (same objects + sacctmgr): {floor:7.1f} s")
    print(f"  ratio operator / floor:          {op['all_ready_s'] / floor:7.2f} x   (target <= 1.5)")
    for side, key in (("Kubernetes", "k8s"), ("Slurm", "slurm")):
        p50, p95 = op[f"{key}_p50_s"], op[f"{key}_p95_s"]
        print(f"  spec change -> quota effective, {side + ':':11} p50 {p50:.2f} s, p95 {p95:.2f} s")
    print(f"  operator memory: peak {op['peak_rss_mib']:.0f} MiB, now {op['rss_mib']:.0f} MiB")
    print(f"  all deleted (finalizers):        {op['all_deleted_s']:7.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
