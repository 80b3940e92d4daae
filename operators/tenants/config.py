"""Operator settings, from the environment (the CLI and the Deployment set them).

AIFACTORY_SITE              site file: GPU capacity, known models, head host and its ssh config
AIFACTORY_SLURM_RUNNER      `ssh` (default with a site file: sacctmgr on the head through ssh) or
                            `local` (the operator runs on the head host)
AIFACTORY_SLURM_SSH_CONFIG  with AIFACTORY_SLURM_HEAD: ssh config (key, known_hosts) to reach the
                            head without a site file (in-cluster: mounted from a Secret)
AIFACTORY_GPU_CAPACITY      `h100=16,...`: capacity without a site file (in-cluster)
AIFACTORY_OVERCOMMIT_POLICY `warn` (default) or `reject`
AIFACTORY_DRIFT_INTERVAL    seconds between drift checks of each tenant (default 60)
AIFACTORY_METRICS_PORT      Prometheus port (default 9108, 0 = off)
AIFACTORY_WORKERS           deletion handler threads (default 64; bounds deletions per Slurm batch)
AIFACTORY_KUBE_CONCURRENCY  tenants writing Kubernetes objects at a time (default 32)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from operators.tenants import capacity, slurm


@dataclass(frozen=True)
class Config:
    capacity: dict[str, int]
    policy: str
    drift_interval: float
    metrics_port: int
    runner: slurm.Runner


# Measured with 200 new tenants on the local site: all Ready in 10.0 s with 32, 10.6 s with 16.
KUBE_CONCURRENCY = 32


# Measured with 1,000 tenants deleted at once on the local site: 64 threads peak at 169 MiB and take
# 241 s, 256 threads 270 MiB and 190 s (each thread's allocations spread over glibc's arenas, and
# what is freed stays with them).
DELETION_THREADS = 64


def kube_concurrency() -> int:
    return int(os.environ.get("AIFACTORY_KUBE_CONCURRENCY", str(KUBE_CONCURRENCY)))


def load() -> Config:
    site_file = os.environ.get("AIFACTORY_SITE")
    cap: dict[str, int] = {}
    runner: slurm.Runner = slurm.LocalRunner()
    if site_file:
        from aifactory import paths
        from aifactory.site.validate import load_site

        site = load_site(Path(site_file))
        cap = capacity.site_capacity(site)
        if os.environ.get("AIFACTORY_SLURM_RUNNER", "ssh") == "ssh":
            head = site.with_role("head")[0].name
            runner = slurm.SshRunner(paths.ssh_config(site.name), head)
    if os.environ.get("AIFACTORY_SLURM_SSH_CONFIG"):
        ssh_config = Path(os.environ["AIFACTORY_SLURM_SSH_CONFIG"])
        runner = slurm.SshRunner(ssh_config, os.environ["AIFACTORY_SLURM_HEAD"])
    if os.environ.get("AIFACTORY_GPU_CAPACITY"):
        cap = capacity.parse_capacity(os.environ["AIFACTORY_GPU_CAPACITY"])
    policy = os.environ.get("AIFACTORY_OVERCOMMIT_POLICY", "warn")
    if policy not in capacity.POLICIES:
        raise ValueError(f"AIFACTORY_OVERCOMMIT_POLICY: {policy!r} is not one of {capacity.POLICIES}")
    return Config(
        capacity=cap,
        policy=policy,
        drift_interval=float(os.environ.get("AIFACTORY_DRIFT_INTERVAL", "60")),
        metrics_port=int(os.environ.get("AIFACTORY_METRICS_PORT", "9108")),
        runner=runner,
    )


def drift_interval() -> float:
    """Read at import time: kopf's timer decorator needs the interval then."""
    return float(os.environ.get("AIFACTORY_DRIFT_INTERVAL", "60"))
