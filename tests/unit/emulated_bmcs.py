"""Emulated BMCs for unit tests: free loopback ports, and generated sites whose BMCs listen there."""

import socket
from collections.abc import Sequence
from pathlib import Path

from aifactory.site.generate import generate, write
from aifactory.site.model import Machine, Site


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def exporter_bmcs(machines: Sequence[Machine], username: str, password: str) -> list[dict]:
    """The power exporter's config entries (`bmcs`) for these machines' emulated BMCs."""
    return [
        {
            "machine": m.name,
            "endpoint": m.bmc.endpoint,
            "system_id": m.bmc.system_id,
            "username": username,
            "password": password,
            "verify": True,
        }
        for m in machines
    ]


def generated_site(directory: Path, name: str, machines: int, machines_per_bmc: int) -> Site:
    """`aifactory site generate`'s site, each BMC endpoint moved to a free loopback port."""
    data = generate(name, machines, machines_per_bmc=machines_per_bmc)
    ports = {e: free_port() for e in dict.fromkeys(m["bmc"]["endpoint"] for m in data["machines"])}
    for m in data["machines"]:
        m["bmc"]["endpoint"] = f"http://127.0.0.1:{ports[m['bmc']['endpoint']]}"
    return write(data, directory / f"{name}.yaml")
