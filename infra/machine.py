"""`BareMetalMachine`: one server of the site, enrolled and powered on through its Redfish BMC."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pulumi

from aifactory.site.model import Machine
from infra.redfish import RedfishMachine


@dataclass(frozen=True)
class Timeouts:
    bmc_timeout: float = 10  # seconds per BMC request
    bmc_retries: int = 2
    boot_timeout: float = 180  # power-on until ssh answers
    shutdown_timeout: float = 60  # graceful shutdown before forcing off
    wait_ssh: bool = True  # off only for BMC-only emulation (no hosts behind the BMCs)


@dataclass(frozen=True)
class BareMetalMachineArgs:
    machine: Machine
    username: pulumi.Input[str]
    password: pulumi.Input[str]  # pass a secret: it stays encrypted in state
    timeouts: Timeouts = field(default_factory=Timeouts)


def redfish_props(m: Machine, t: Timeouts) -> dict[str, Any]:
    """The Redfish provider's inputs for a machine, less the BMC login."""
    return {
        "name": m.name,
        "endpoint": m.bmc.endpoint,
        "system_id": m.bmc.system_id,
        "verify_tls": m.bmc.tls_verify,  # or the path of the site's CA bundle
        "address": m.address,
        "cpus": m.cpus,
        "cpus_count": m.bmc.cpus_count,
        "gpu_system": m.bmc.gpu_system,
        "memory_gib": m.memory_gib,
        "gpu_model": m.gpu_model,
        "gpu_count": m.gpu_count,
        "power_limit_w": m.power_limit_w,
        "bmc_timeout": t.bmc_timeout,
        "bmc_retries": t.bmc_retries,
        "boot_timeout": t.boot_timeout,
        "shutdown_timeout": t.shutdown_timeout,
        "wait_ssh": t.wait_ssh,
    }


class BareMetalMachine(pulumi.ComponentResource):
    power_state: pulumi.Output[str]

    def __init__(self, name: str, args: BareMetalMachineArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("aifactory:infra:BareMetalMachine", name, None, opts)
        m, t = args.machine, args.timeouts
        self.bmc = RedfishMachine(
            f"{name}-bmc",
            {
                **redfish_props(m, t),
                "username": args.username,
                "password": pulumi.Output.secret(args.password),
            },
            pulumi.ResourceOptions(parent=self, additional_secret_outputs=["password"]),
        )
        self.power_state = self.bmc.power_state
        self.register_outputs({"power_state": self.power_state, "address": m.address})
