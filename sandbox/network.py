"""The emulated site's network: one Linux bridge for the hosts, guarded so nothing leaves the machine.

The guard is an `unreachable` route for the whole emulated range, added before the bridge exists:
a packet for a test address that is not on the bridge (a typo, a host not yet up, a daemon started
early) is dropped here instead of following the default route out of the machine. The site's pod and
service ranges get the same guard: the hosts route pod traffic among themselves, and a pod packet
that reaches this machine must die here too.
"""

from __future__ import annotations

import subprocess

from aifactory.site.model import Site
from aifactory.site.validate import EMULATED_RANGE

GUARD_METRIC = "4242"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc


def guarded_ranges(site: Site | None = None) -> list[str]:
    ranges = [str(EMULATED_RANGE)]
    if site is not None and site.kubernetes:
        ranges += [site.kubernetes.pod_cidr, site.kubernetes.service_cidr]
    return ranges


def guard_present(cidr: str = str(EMULATED_RANGE)) -> bool:
    out = _ip("route", "show", "type", "unreachable", cidr).stdout
    return f"metric {GUARD_METRIC}" in out


def bridge_present(name: str) -> bool:
    return _ip("link", "show", "dev", name, check=False).returncode == 0


def ensure(site: Site) -> None:
    """Guard route first, then the bridge with the gateway address (idempotent)."""
    net = site.management
    assert net.bridge and net.gateway, "validated emulated sites have a bridge and gateway"
    for cidr in guarded_ranges(site):
        _ip("route", "replace", "unreachable", cidr, "metric", GUARD_METRIC)
    if not bridge_present(net.bridge):
        _ip("link", "add", net.bridge, "type", "bridge")
    gw = f"{net.gateway}/{net.cidr.prefixlen}"
    if gw not in _ip("-o", "addr", "show", "dev", net.bridge).stdout:
        _ip("addr", "add", gw, "dev", net.bridge)
    _ip("link", "set", net.bridge, "up")


def remove(site: Site, keep_guard: bool = False) -> None:
    """Delete the bridge; the guard too unless another emulated site still needs it."""
    bridge = site.management.bridge
    if bridge and bridge_present(bridge):
        _ip("link", "del", bridge)
    for cidr in guarded_ranges(site):
        while not keep_guard and guard_present(cidr):
            _ip("route", "del", "unreachable", cidr, "metric", GUARD_METRIC)
