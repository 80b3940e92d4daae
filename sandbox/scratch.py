"""Scratch sites: the local site's shape moved to its own bridge, address range and BMC ports.

Tests and benchmarks bring these up and down freely without touching a developer's running local
site. Scratch site `index` k uses bridge aftest<k>, 198.19.<k>.0/24 (inside the guarded range) and
BMC ports 8201 + 100*k onwards on its bridge address.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from aifactory import paths

LOCAL = paths.REPO / "sites" / "local.yaml"


def scratch_site(name: str, index: int, machines: int | None = None, base: Path = LOCAL) -> dict[str, Any]:
    """A local site (sites/local.yaml unless `base` names another) renamed and relocated; `machines`
    keeps the first N, or grows to N GPU workers."""
    data = yaml.safe_load(base.read_text())
    net = f"198.19.{index}"
    data.update(name=name, bundle_url=f"http://{net}.1:{8089 + index}/bundle")
    data["networks"][0].update(cidr=f"{net}.0/24", gateway=f"{net}.1", bridge=f"aftest{index}")
    if data.get("kubernetes", {}).get("api_address"):
        data["kubernetes"]["api_address"] = f"{net}.10"
    head, gpu = data["machines"][0], data["machines"][1]
    if machines is not None and machines > len(data["machines"]):
        workers = [
            {**gpu, "name": f"gpu-{i:03d}", "pool": "slurm" if i % 8 else "kubernetes"}
            for i in range(1, machines)
        ]
        data["machines"] = [head, *workers]
    else:
        data["machines"] = data["machines"][:machines]
    if machines is not None and "power" in data:
        # the base's feeds name its machines: a site of other machines has none (factors stay)
        data["power"].pop("feeds", None)
    for i, m in enumerate(data["machines"]):
        m["nics"] = [
            {**m["nics"][0], "address": f"{net}.{11 + i}", "mac": f"02:ae:00:00:{index:02x}:{11 + i:02x}"}
        ]
        m["bmc"] = {**m["bmc"], "endpoint": f"http://{net}.1:{8201 + 100 * index + i}"}
    return data


def write_scratch_site(
    directory: Path, name: str, index: int, machines: int | None = None, base: Path = LOCAL
) -> Path:
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(scratch_site(name, index, machines, base), sort_keys=False))
    return path
