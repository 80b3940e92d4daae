"""`NodePool`: the machines that serve one scheduler (or the site's service machines)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import pulumi

from aifactory.site.model import Machine
from infra.machine import BareMetalMachine, BareMetalMachineArgs, Timeouts


@dataclass(frozen=True)
class NodePoolArgs:
    pool: str  # slurm, kubernetes, or "services" for head and control-plane machines
    machines: tuple[Machine, ...]
    credentials: Mapping[str, tuple[str, pulumi.Input[str]]]  # BMC credentials ref -> (username, secret)
    timeouts: Timeouts = field(default_factory=Timeouts)


class NodePool(pulumi.ComponentResource):
    machines: dict[str, BareMetalMachine]

    def __init__(self, name: str, args: NodePoolArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("aifactory:infra:NodePool", name, None, opts)
        self.machines = {
            m.name: BareMetalMachine(
                m.name,
                BareMetalMachineArgs(m, *args.credentials[m.bmc.credentials], args.timeouts),
                pulumi.ResourceOptions(parent=self),
            )
            for m in args.machines
        }
        self.register_outputs(
            {
                "pool": args.pool,
                "gpus": sum(m.gpu_count for m in args.machines),
                "power": {n: bm.power_state for n, bm in self.machines.items()},
            }
        )
