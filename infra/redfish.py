"""A Pulumi dynamic provider for bare-metal machines driven through their Redfish BMC (`sushy`).

create:  enroll (the BMC answers, credentials work, its inventory matches the site file), one-time
         boot to PXE, power on, wait until the host answers on ssh. The inventory compares like with
         like: `cpus` in the unit the site file names (bmc.cpus_count: sockets, cores or threads), the
         GPUs of the system that lists them (bmc.gpu_system: an HGX baseboard; else the host's).
         Then the node power limit (`power_limit_w`, the site file's power.limits_w) is set.
read:    the BMC's power state and, where Pulumi manages it, the power limit, so `pulumi refresh`
         sees a machine powered off or a limit changed behind Pulumi's back.
diff:    a machine that is not On (after refresh), or whose limit differs from what is asked, is
         updated in place.
update:  power on again (drift repair), re-check the inventory, set the limit (or clear the one
         Pulumi set, when the site file no longer asks for one).
delete:  graceful shutdown, forced off after `shutdown_timeout`.

The BMC password is an input Pulumi marks secret: state holds it encrypted, and no message here
ever includes it. Every error names the machine and the cause.
"""

from __future__ import annotations

import contextlib
import pickle
import socket
import time
from collections.abc import Iterator
from typing import Any

import pulumi
import pulumi.dynamic as dynamic
import requests
import sushy
from sushy import auth as sushy_auth
from sushy import exceptions as sushy_exc

from aifactory import bmcs

# Outputs that only the BMC knows; a change in them is drift, not a change of what the operator asked.
READ_ONLY = ("power_state", "bmc_model", "observed", "power_limit_observed")
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


# Where a Redfish ComputerSystem says how many CPUs it has, per unit a site file's `cpus` may count
# (bmc.cpus_count): ProcessorSummary first; per-Processor figures where a BMC leaves the summary out.
SUMMARY_FIELDS = {"sockets": "Count", "cores": "CoreCount", "threads": "LogicalProcessorCount"}
PROCESSOR_FIELDS = {"cores": "TotalCores", "threads": "TotalThreads"}


def _processors(system) -> list[Any]:
    try:
        return list(system.processors.get_members())
    except sushy_exc.MissingAttributeError:  # a System without a Processors collection
        return []


def cpu_counts(summary: dict[str, Any], processors: list[Any]) -> dict[str, int | None]:
    """Sockets, cores and threads of a system: its ProcessorSummary, and what that lacks summed over its
    CPUs (present ones: BMCs list empty sockets as Absent). None where the BMC gives no figure."""
    counts = {unit: summary.get(field) for unit, field in SUMMARY_FIELDS.items()}
    cpus = [
        p
        for p in processors
        # Some BMCs leave ProcessorType out on CPUs; GPUs and other accelerators always carry one.
        if p.processor_type in (None, sushy.ProcessorType.CPU)
        and not (p.status and p.status.state == sushy.State.ABSENT)
    ]
    if counts["sockets"] is None and cpus:
        counts["sockets"] = len(cpus)
    for unit, field in PROCESSOR_FIELDS.items():
        figures = [p.json.get(field) for p in cpus]
        if counts[unit] is None and figures and all(isinstance(f, int) for f in figures):
            counts[unit] = sum(figures)
    return {unit: n if isinstance(n, int) and not isinstance(n, bool) else None for unit, n in counts.items()}


def _observed(props: dict[str, Any], system) -> dict[str, Any]:
    """What the BMC reports, in the site file's terms; the GPUs from the system that lists them."""
    processors = _processors(system)
    gpu_system = props.get("gpu_system")
    if gpu_system:
        try:
            gpu_processors = _processors(system.root.get_system(f"/redfish/v1/Systems/{gpu_system}"))
        except sushy_exc.SushyError as e:
            raise RedfishError(
                f"{props['name']}: BMC {props['endpoint']} has no readable system {gpu_system} "
                f"(bmc.gpu_system): {type(e).__name__}: {str(e)[:200]}"
            ) from None
    else:
        gpu_processors = processors
    gpus = [p for p in gpu_processors if p.processor_type == sushy.ProcessorType.GPU]
    return {
        "cpus": cpu_counts(system.json.get("ProcessorSummary") or {}, processors),
        "memory_gib": int(system.memory_summary.size_gib) if system.memory_summary else None,
        "gpu_count": len(gpus),
        "gpu_model": (gpus[0].model or "").lower() if gpus else None,
    }


def _many(n: int, unit: str) -> str:
    return f"{n} {unit[:-1] if n == 1 else unit}"


def inventory_mismatches(props: dict[str, Any], seen: dict[str, Any]) -> list[str]:
    """Each figure of the site file the BMC contradicts, both sides in the same unit."""
    wrong = []
    unit = props.get("cpus_count") or "threads"
    cpus, counts = int(props["cpus"]), seen["cpus"]  # numbers cross the engine as floats
    if counts.get(unit) is not None and counts[unit] != cpus:
        others = [u for u in SUMMARY_FIELDS if u != unit and counts.get(u) is not None]
        also = ", ".join(_many(counts[u], u) for u in others)
        hint = "".join(
            f"; {cpus} is its {u[:-1]} count: bmc.cpus_count: {u}?" for u in others if counts[u] == cpus
        )
        wrong.append(
            f"cpus: site file says {_many(cpus, unit)} (bmc.cpus_count: {unit}), "
            f"BMC reports {_many(counts[unit], unit)}" + (f" ({also})" if also else "") + hint
        )
    memory = int(props["memory_gib"])
    if seen.get("memory_gib") is not None and seen["memory_gib"] != memory:
        wrong.append(f"memory_gib: site file says {memory}, BMC reports {seen['memory_gib']}")
    gpus, gpu_system = int(props["gpu_count"]), props.get("gpu_system")
    if seen["gpu_count"] != gpus:
        if gpu_system:
            where = f" in system {gpu_system} (bmc.gpu_system)"
        elif not seen["gpu_count"]:
            where = " (an NVIDIA HGX server lists its GPUs under a system of their own: bmc.gpu_system)"
        else:
            where = ""
        wrong.append(f"gpu_count: site file says {gpus}, BMC reports {seen['gpu_count']}{where}")
    model = props.get("gpu_model")
    if seen["gpu_count"] and model and seen.get("gpu_model") and model not in seen["gpu_model"]:
        wrong.append(f"gpu_model: site file says {model}, BMC reports {seen['gpu_model']}")
    return wrong


def _check_inventory(props: dict[str, Any], seen: dict[str, Any]) -> None:
    wrong = inventory_mismatches(props, seen)
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
    seen = _observed(props, system)
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
    return {
        **props,
        "power_state": str(system.power_state.value),
        "observed": seen,
        "power_limit_observed": _set_limit(props, system, clear=False),
    }


def _set_limit(props: dict[str, Any], system, clear: bool) -> float | None:
    """Hold the machine to `power_limit_w` (or clear the limit Pulumi had set); the BMC's figure."""
    want = props.get("power_limit_w")
    if want is None and not clear:
        return None  # not managed here
    try:
        power = bmcs.chassis_power(system)
        if bmcs.read_power(power).limit_w != want:
            bmcs.write_power_limit(power, want)
            power.refresh()
        return bmcs.read_power(power).limit_w
    except sushy_exc.SushyError as e:
        raise RedfishError(f"{props['name']}: BMC refused power limit {want} W: {e}") from None


def _read_limit(props: dict[str, Any], system) -> float | None:
    if props.get("power_limit_w") is None:
        return None
    return bmcs.read_power(bmcs.chassis_power(system)).limit_w


class RedfishMachineProvider(dynamic.ResourceProvider):
    def create(self, props: dict[str, Any]) -> dynamic.CreateResult:
        return dynamic.CreateResult(id_=props["name"], outs=_power_on(props))

    def read(self, id_: str, props: dict[str, Any]) -> dynamic.ReadResult:
        limit = props.get("power_limit_observed")
        try:
            system = _connect(props)
            state = str(system.power_state.value)
            limit = _read_limit(props, system)
        except (RedfishError, sushy_exc.SushyError) as e:
            state = f"unreachable: {e}"
        outs = {**props, "power_state": state, "power_limit_observed": limit}
        return dynamic.ReadResult(id_=id_, outs=outs)

    def diff(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> dynamic.DiffResult:
        changed = [k for k in news if k not in READ_ONLY and olds.get(k) != news.get(k)]
        if olds.get("power_state") != "On":
            changed.append("power_state")
        want = news.get("power_limit_w")  # Pulumi leaves out inputs that are None
        if want is not None and olds.get("power_limit_observed") != want:
            changed.append("power_limit_observed")  # set behind Pulumi's back
        if want is None and olds.get("power_limit_w") is not None:
            changed.append("power_limit_w")  # taken out of the site file: cleared
        return dynamic.DiffResult(changes=bool(changed), replaces=[], delete_before_replace=False)

    def update(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> dynamic.UpdateResult:
        outs = _power_on(news)
        if news.get("power_limit_w") is None and olds.get("power_limit_w") is not None:
            outs["power_limit_observed"] = _set_limit(news, _connect(news), clear=True)
        return dynamic.UpdateResult(outs=outs)

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


@contextlib.contextmanager
def pickler_restored() -> Iterator[None]:
    """Around a dynamic resource's creation: pulumi 3.272's serialize_provider wraps
    pickle._Pickler._batch_setitems anew for every dynamic resource and never unwraps it, so each
    provider is pickled through one more wrapper than the last: O(n^2) for n machines, and a
    RecursionError past about 600 (measured: the 512-machine bench's floor failed)."""
    saved = pickle._Pickler._batch_setitems, pickle._Pickler.save_dict  # type: ignore[attr-defined]
    try:
        yield
    finally:
        pickle._Pickler._batch_setitems, pickle._Pickler.save_dict = saved  # type: ignore[attr-defined]


class RedfishMachine(dynamic.Resource):
    power_state: pulumi.Output[str]
    observed: pulumi.Output[dict]

    def __init__(self, name: str, props: dict[str, Any], opts: pulumi.ResourceOptions | None = None):
        with pickler_restored():
            super().__init__(
                RedfishMachineProvider(),
                name,
                {**props, "power_state": None, "observed": None, "power_limit_observed": None},
                opts,
            )
