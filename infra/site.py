"""`AiFactorySite`: a whole site from one site file, bare metal to a populated Kubernetes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pulumi

from aifactory.site.model import Site
from infra.cluster import KubernetesLayer, KubernetesLayerArgs
from infra.configuration import AnsibleConfiguration
from infra.machine import Timeouts
from infra.pool import NodePool, NodePoolArgs
from infra.tenant_operator import operator_ssh_files


@dataclass(frozen=True)
class AiFactorySiteArgs:
    site: Site
    credentials: Mapping[str, tuple[str, pulumi.Input[str]]]  # BMC credentials ref -> (username, secret)
    timeouts: Timeouts = field(default_factory=Timeouts)
    configure: bool = True  # run Ansible (off: bare metal only, e.g. the 64-machine BMC benchmark)
    device_plugin_image: str | None = None
    tenant_operator_image: str | None = None
    kueue_image: str | None = None


class AiFactorySite(pulumi.ComponentResource):
    def __init__(self, name: str, args: AiFactorySiteArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("aifactory:infra:Site", name, None, opts)
        site = args.site
        groups = {
            "services": tuple(m for m in site.machines if m.pool is None),
            "slurm": tuple(site.in_pool("slurm")),
            "kubernetes": tuple(site.in_pool("kubernetes")),
        }
        self.pools = {
            pool: NodePool(
                f"{name}-{pool}",
                NodePoolArgs(pool, machines, args.credentials, args.timeouts),
                pulumi.ResourceOptions(parent=self),
            )
            for pool, machines in groups.items()
            if machines
        }
        machines = [bm for pool in self.pools.values() for bm in pool.machines.values()]
        outputs: dict[str, pulumi.Input[object]] = {
            "site": site.name,
            "machines": len(site.machines),
            "gpus": sum(m.gpu_count for m in site.machines),
        }
        if args.configure:
            self.configuration = AnsibleConfiguration(
                f"{name}-configuration",
                Path(site.path),
                [m.name for m in site.machines],
                opts=pulumi.ResourceOptions(parent=self, depends_on=[bm.bmc for bm in machines]),
            )
            if site.kubernetes:
                kubeconfig = self.configuration.kubeconfig_path.apply(
                    lambda p: Path(p).read_text() if p else ""
                )
                head = site.with_role("head")[0]
                operator_ssh = self.configuration.operator_access_dir.apply(
                    lambda d: operator_ssh_files(Path(d), head) if d else {}
                )
                self.kubernetes = KubernetesLayer(
                    f"{name}-kubernetes",
                    KubernetesLayerArgs(
                        site,
                        pulumi.Output.secret(kubeconfig),
                        args.device_plugin_image,
                        args.tenant_operator_image,
                        pulumi.Output.secret(operator_ssh),
                        args.kueue_image,
                    ),
                    pulumi.ResourceOptions(parent=self, depends_on=[self.configuration]),
                )
            outputs["ansible_changed"] = self.configuration.changed
        self.register_outputs(outputs)
