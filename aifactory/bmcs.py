"""A site's BMCs seen from this machine: Redfish System resources and every machine's power state.

Real and emulated sites alike: the emulated BMCs are Redfish services too. Basic auth (every BMC
has it; the emulator has no SessionService); TLS verified unless the site file says otherwise.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import sushy
from sushy import auth as sushy_auth
from sushy import utils as sushy_utils
from sushy.resources import base
from sushy.resources.chassis.power import power as sushy_power

from aifactory import credentials
from aifactory.site.model import Machine, Site

Login = Callable[[Machine], tuple[str, str]]  # machine -> (username, password)


def store_login(machine: Machine) -> tuple[str, str]:
    """The machine's BMC credentials from the credentials store (MissingCredentials names the ref)."""
    c = credentials.load(machine.bmc.credentials)
    return c.username, c.password


def system(machine: Machine, username: str, password: str, timeout: float = 10):
    """The machine's `sushy` System resource."""
    root = sushy.Sushy(
        machine.bmc.endpoint,
        auth=sushy_auth.BasicAuth(username, password),
        verify=machine.bmc.tls_verify,
        read_timeout=timeout,
        connect_timeout=timeout,
        server_side_retries=0,
    )
    system_id = machine.bmc.system_id
    return root.get_system(f"/redfish/v1/Systems/{system_id}" if system_id else None)


# --- power readings and limits (the Chassis' Redfish Power resource) ------------------------
# sushy's Power resource has the power supplies only; PowerControl (the server's draw and its
# limit, DMTF Power.v1) is what BMCs report the server's consumption in.


class _PowerLimitField(base.CompositeField):
    limit_in_watts = base.Field("LimitInWatts")


class _PowerControlListField(base.ListField):
    power_consumed_watts = base.Field("PowerConsumedWatts")
    power_capacity_watts = base.Field("PowerCapacityWatts")
    power_limit = _PowerLimitField("PowerLimit")


class ChassisPower(sushy_power.Power):
    power_control = _PowerControlListField("PowerControl", default=[])


@dataclass(frozen=True)
class PowerReading:
    consumed_w: float | None  # None: the BMC does not measure it
    capacity_w: float | None
    limit_w: float | None  # None: no limit set


def chassis_power(sys_) -> ChassisPower:
    """The Power resource of the chassis a `sushy` System resides in."""
    (chassis, *_) = sys_.chassis
    path = sushy_utils.get_sub_resource_path_by(chassis, "Power")
    return ChassisPower(chassis._conn, path, redfish_version=chassis.redfish_version, root=chassis.root)


def read_power(p: ChassisPower) -> PowerReading:
    """The server's draw, capacity and power limit (PowerControl[0])."""
    if not p.power_control:
        return PowerReading(None, None, None)
    c = p.power_control[0]
    limit = c.power_limit.limit_in_watts if c.power_limit else None
    return PowerReading(c.power_consumed_watts, c.power_capacity_watts, limit)


def write_power_limit(p: ChassisPower, watts: int | None) -> None:
    """Set (or with None clear) the server's power limit."""
    p._conn.patch(p.path, data={"PowerControl": [{"PowerLimit": {"LimitInWatts": watts}}]})


def power_reading(machine: Machine, login: Login = store_login, timeout: float = 5) -> PowerReading:
    return read_power(chassis_power(system(machine, *login(machine), timeout)))


def set_power_limit(
    machine: Machine, watts: int | None, login: Login = store_login, timeout: float = 5
) -> None:
    write_power_limit(chassis_power(system(machine, *login(machine), timeout)), watts)


def power_states(site: Site, login: Login = store_login, timeout: float = 3) -> dict[str, str]:
    """Each machine's power state ("On", "Off", ... or "unreachable: <reason>"), BMCs asked in parallel."""
    logins = {m.name: login(m) for m in site.machines}  # a missing credential fails before any request

    def one(machine: Machine) -> str:
        try:
            return system(machine, *logins[machine.name], timeout).power_state.value
        except Exception as e:  # any failure is a status to show, not an error to raise
            return f"unreachable: {e}"

    with ThreadPoolExecutor(max_workers=max(1, len(site.machines))) as pool:
        return dict(zip([m.name for m in site.machines], pool.map(one, site.machines), strict=True))


def _ssh_open(address: str, timeout: float = 2) -> str:
    try:
        with socket.create_connection((address, 22), timeout=timeout):
            return "open"
    except OSError as e:
        return f"closed: {e.strerror or e}"


def site_status(site: Site, login: Login = store_login, timeout: float = 3) -> list[dict[str, str]]:
    """A real site's machines: power from each BMC, whether ssh answers on the management address."""
    powers = power_states(site, login, timeout)
    with ThreadPoolExecutor(max_workers=max(1, len(site.machines))) as pool:
        ports = pool.map(lambda m: _ssh_open(m.address), site.machines)
        ssh = dict(zip([m.name for m in site.machines], ports, strict=True))
    rows = []
    for m in site.machines:
        power, port = powers[m.name], ssh[m.name]
        if power.startswith("unreachable"):
            health = f"bmc {power}"
        elif power == "Off":
            health = "off" if port != "open" else "fault: powered off but ssh answers"
        else:
            health = "ok" if port == "open" else f"fault: powered {power} but ssh {port}"
        rows.append(status_row(m, power, ssh=port, health=health))
    return rows


def status_row(m: Machine, power: str, **more: str) -> dict[str, str]:
    """One machine's row of `site status`: who it is, where its BMC is, its power, then `more`."""
    row = {
        "machine": m.name,
        "roles": ",".join(m.roles),
        "pool": m.pool or "-",
        "address": m.address,
        "bmc": m.bmc.endpoint,
        "power": power,
    }
    return {**row, **more}
