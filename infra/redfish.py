"""A Pulumi dynamic provider for bare-metal machines driven through their Redfish BMC (`sushy`).

create:  enroll (the BMC answers, credentials work, its inventory matches the site file), one-time
         boot to PXE, power on, wait until the host answers on ssh.
read:    the BMC's power state, so `pulumi refresh` sees a machine powered off behind Pulumi's back.
diff:    a machine that is not On (after refresh) is replaced in place by powering it on again.
update:  power on again (drift repair) and re-check the inventory.
delete:  graceful shutdown, forced off after `shutdown_timeout`.

The BMC password is an input Pulumi marks secret: state holds it encrypted, and no message here
ever includes it. Every error names the machine and the cause.
"""

from __future__ import annotations

import socket
import time
from typing import Any

import pulumi
import pulumi.dynamic as dynamic
import requests
import sushy
from sushy import auth as sushy_auth
from sushy import exceptions as sushy_exc

# Outputs that only the BMC knows; a change in them is drift, not a change of what the operator asked.
READ_ONLY = ("power_state", "bmc_model", "observed")
FORCE_OFF_TIMEOUT = 30  # seconds a BMC may take to report Off after ForceOff


class RedfishError(Exception):
    pass


def _connect(props: dict[str, Any]):
    name, endpoint = props["name"], props["endpoint"]
    timeout = float(props.get("bmc_timeout", 10))
    retries = int(props.get("bmc_retries", 2))
    last: Exception | None = None
    for attempt in range(retries + 1):
        try:
            root = sushy.Sushy(
                endpoint,
                auth=sushy_auth.BasicAuth(props["username"], props["password"]),
                verify=props.get("verify_tls", True),  # a bool, or a CA bundle's path
                read_timeout=timeout,
                connect_timeout=timeout,
                server_side_retries=0,
            )
            system_id = props.get("system_id")
            return root.get_system(f"/redfish/v1/Systems/{system_id}" if system_id else None)
        except sushy_exc.AccessError as e:
            if getattr(e, "status_code", None) in (401, 403):
                raise RedfishError(
                    f"{name}: BMC {endpoint} rejected the credentials (HTTP {e.status_code})"
                ) from None
            last = e
        except (sushy_exc.ConnectionError, requests.exceptions.RequestException) as e:
            last = e
        except sushy_exc.SushyError as e:
            last = e
        if attempt < retries:
            time.sleep(min(2**attempt, 5))
    raise RedfishError(
        f"{name}: BMC {endpoint} did not answer after {retries + 1} tries ({timeout:.0f}s timeout each): "
        f"{type(last).__name__}: {str(last)[:200]}"
    )


def _observed(system) -> dict[str, Any]:
    gpus = [p for p in system.processors.get_members() if p.processor_type == sushy.ProcessorType.GPU]
    return {
        "cpus": system.processors.summary.count,
        "memory_gib": int(system.memory_summary.size_gib) if system.memory_summary else None,
        "gpu_count": len(gpus),
        "gpu_model": (gpus[0].model or "").lower() if gpus else None,
    }


def _check_inventory(props: dict[str, Any], seen: dict[str, Any]) -> None:
    wrong = []
    for key in ("cpus", "memory_gib", "gpu_count"):
        want = int(props[key])  # numbers cross the engine as floats
        if seen.get(key) is not None and seen[key] != want:
            wrong.append(f"{key}: site file says {want}, BMC reports {seen[key]}")
    model = props.get("gpu_model")
    if seen.get("gpu_count") and model and seen.get("gpu_model") and model not in seen["gpu_model"]:
        wrong.append(f"gpu_model: site file says {model}, BMC reports {seen['gpu_model']}")
    if wrong:
        raise RedfishError(f"{props['name']}: inventory mismatch: " + "; ".join(wrong))


def _wait_ssh(props: dict[str, Any]) -> float:
    deadline = time.monotonic() + float(props.get("boot_timeout", 180))
    start = time.monotonic()
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((props["address"], 22), timeout=2) as s:
                if s.recv(4).startswith(b"SSH"):
                    return time.monotonic() - start
        except OSError:
            time.sleep(0.5)
    limit = props.get("boot_timeout", 180)
    raise RedfishError(f"{props['name']}: powered on but no ssh on {props['address']} within {limit}s")


def _power_on(props: dict[str, Any]) -> dict[str, Any]:
    system = _connect(props)
    seen = _observed(system)
    _check_inventory(props, seen)
    if system.power_state != sushy.POWER_STATE_ON:
        try:
            system.set_system_boot_options(
                sushy.BOOT_SOURCE_TARGET_PXE, enabled=sushy.BOOT_SOURCE_ENABLED_ONCE
            )
        except sushy_exc.SushyError as e:
            raise RedfishError(f"{props['name']}: BMC refused one-time PXE boot: {e}") from None
        system.reset_system(sushy.RESET_ON)
    if props.get("wait_ssh", True):
        _wait_ssh(props)
    system.refresh()
    return {**props, "power_state": str(system.power_state.value), "observed": seen}


class RedfishMachineProvider(dynamic.ResourceProvider):
    def create(self, props: dict[str, Any]) -> dynamic.CreateResult:
        return dynamic.CreateResult(id_=props["name"], outs=_power_on(props))

    def read(self, id_: str, props: dict[str, Any]) -> dynamic.ReadResult:
        try:
            state = str(_connect(props).power_state.value)
        except RedfishError as e:
            state = f"unreachable: {e}"
        return dynamic.ReadResult(id_=id_, outs={**props, "power_state": state})

    def diff(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> dynamic.DiffResult:
        changed = [k for k in news if k not in READ_ONLY and olds.get(k) != news.get(k)]
        if olds.get("power_state") != "On":
            changed.append("power_state")
        return dynamic.DiffResult(changes=bool(changed), replaces=[], delete_before_replace=False)

    def update(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> dynamic.UpdateResult:
        return dynamic.UpdateResult(outs=_power_on(news))

    def delete(self, id_: str, props: dict[str, Any]) -> None:
        system = _connect(props)
        if system.power_state == sushy.POWER_STATE_OFF:
            return
        timeout = float(props.get("shutdown_timeout", 60))
        system.reset_system(sushy.RESET_GRACEFUL_SHUTDOWN)
        if _wait_off(system, timeout):
            return
        pulumi.log.warn(f"{props['name']}: no graceful shutdown in {timeout:.0f}s; forcing off")
        system.reset_system(sushy.RESET_FORCE_OFF)
        if not _wait_off(system, FORCE_OFF_TIMEOUT):
            raise RedfishError(f"{props['name']}: still On {FORCE_OFF_TIMEOUT}s after ForceOff")


def _wait_off(system, timeout: float) -> bool:
    """The BMC reports Off once the machine is off; wait for that, not just for the request."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(1)
        system.refresh()
        if system.power_state == sushy.POWER_STATE_OFF:
            return True
    return False


class RedfishMachine(dynamic.Resource):
    power_state: pulumi.Output[str]
    observed: pulumi.Output[dict]

    def __init__(self, name: str, props: dict[str, Any], opts: pulumi.ResourceOptions | None = None):
        super().__init__(
            RedfishMachineProvider(),
            name,
            {**props, "power_state": None, "observed": None},
            opts,
        )
