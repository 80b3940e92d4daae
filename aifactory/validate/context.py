"""What a validation run knows: the site, the level, the hosts, their probes, API clients.

One `Context` per run, handed to the checks as the `ctx` fixture. Kubernetes objects are read
once per run and shared by every check (lazily: a site without Kubernetes never connects).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import testinfra

from aifactory.site.model import Machine, Site
from aifactory.validate.parsers import SlurmNode, parse_scontrol_nodes
from aifactory.validate.probe import Command, HostProbe

LEVELS = ("quick", "standard", "burn-in")
DCGM_LEVEL = {"quick": 1, "standard": 2, "burn-in": 3}
EMULATED_NO_GPU = "emulated site: no GPU hardware"


@dataclass
class Context:
    site: Site
    level: str
    machines: list[Machine]  # the machines validated (all, or --limit)
    ssh_config: Path
    kubeconfig: Path
    hosts: dict[str, testinfra.host.Host] = field(default_factory=dict)
    probes: dict[str, HostProbe] = field(default_factory=dict)
    _cache: dict[str, Any] = field(default_factory=dict)
    _lock: threading.RLock = field(default_factory=threading.RLock)

    def at_least(self, level: str) -> bool:
        return LEVELS.index(self.level) >= LEVELS.index(level)

    def probe(self, machine: Machine | str) -> HostProbe:
        return self.probes[machine if isinstance(machine, str) else machine.name]

    def host(self, machine: Machine | str) -> testinfra.host.Host:
        return self.hosts[machine if isinstance(machine, str) else machine.name]

    @property
    def head(self) -> Machine | None:
        heads = self.site.with_role("head")
        return heads[0] if heads else None

    def cached(self, key: str, make: Callable[[], Any]) -> Any:
        with self._lock:
            if key not in self._cache:
                try:
                    self._cache[key] = make()
                except Exception as e:  # remembered: every check that needs it fails the same way
                    self._cache[key] = e
        value = self._cache[key]
        if isinstance(value, Exception):
            raise value
        return value

    def slurm_nodes(self) -> dict[str, SlurmNode]:
        """The controller's view of the Slurm nodes (head probe `scontrol show node -o`)."""

        def make() -> dict[str, SlurmNode]:
            if self.head is None:
                raise RuntimeError("the site has no head machine (Slurm controller)")
            out = self.probe(self.head)["scontrol_nodes"]
            if not out.ok:
                raise RuntimeError(f"scontrol show node on {self.head.name}: {out.describe()}")
            return parse_scontrol_nodes(out.out)

        return self.cached("slurm_nodes", make)

    def kube_api(self) -> Any:
        def make() -> Any:
            from kubernetes import config

            if not self.kubeconfig.exists():
                raise RuntimeError(f"no admin kubeconfig at {self.kubeconfig}: run `aifactory configure`")
            return config.new_client_from_config(config_file=str(self.kubeconfig))

        return self.cached("kube_api", make)

    def core(self) -> Any:
        from kubernetes import client

        return client.CoreV1Api(self.kube_api())

    def k8s_nodes(self) -> dict[str, Any]:
        """Every Kubernetes Node by name, read once."""
        return self.cached(
            "k8s_nodes",
            lambda: {n.metadata.name: n for n in self.core().list_node(_request_timeout=15).items},
        )


# Each check module declares what it needs from each host.
Probes = Callable[[Context, Machine], dict[str, Command]]


def check(name: str, applies: Callable[[Context, Machine], bool] | None = None):
    """Mark a function as the check `name`, run once per machine for which `applies` is true, or
    once for the whole site (host 'cluster') when `applies` is None."""

    def mark(fn):
        fn.aif_check = name
        fn.aif_applies = applies
        return fn

    return mark


def slurm_host(ctx: Context, m: Machine) -> bool:
    """May run Slurm daemons: the head and every worker (whether a kubernetes-pool worker is a
    drained Slurm node or not a Slurm node at all depends on the roles; the checks ask slurmctld)."""
    return m.has_role("head") or m.pool is not None


def is_slurm_node(ctx: Context, m: Machine) -> bool:
    """A slurm-pool machine must be a Slurm node; another worker is one if slurmctld knows it."""
    if m.pool == "slurm":
        return True
    try:
        return m.pool is not None and m.name in ctx.slurm_nodes()
    except Exception:
        return False


def is_k8s_node(ctx: Context, m: Machine) -> bool:
    if m.pool == "kubernetes":
        return True
    try:
        return m.pool is not None and ctx.site.kubernetes is not None and m.name in ctx.k8s_nodes()
    except Exception:
        return False


def gpu_host(ctx: Context, m: Machine) -> bool:
    return m.gpu_count > 0
