"""Site files of any size, for scale tests and benchmarks: `aifactory site generate`.

One head, one or three Kubernetes control-plane machines and N GPU servers split between the Slurm
and Kubernetes pools, on a management network just large enough (inside the guarded test range for
an emulated site), with a pod range that gives every machine its subnet. Emulated BMCs listen on
consecutive loopback ports; `site up --bmc-only` serves them without hosts. With machines_per_bmc
above 1, GPU servers share a BMC endpoint in groups (each names its own system), so that a site of
hundreds of servers runs tens of emulator processes. Power feeds take eight GPU servers each, rated
for their worst case at 85%; the head and control plane share a feed of their own.
"""

from __future__ import annotations

import ipaddress
import math
from pathlib import Path
from typing import Any

import yaml

from aifactory.site import power
from aifactory.site.gpus import GPU_MODELS
from aifactory.site.model import Site
from aifactory.toolchain import K8S_VERSION

FIRST_HOST = 11  # management addresses below this are the gateway's and the API address's
# Inside the range the sandbox guards (198.18.0.0/15), clear of the local site (198.18.0.0/24) and
# the scratch sites of tests and benchmarks (198.19.<k>.0/24).
EMULATED_BASE = ipaddress.IPv4Network("198.19.128.0/17")


def generate(
    name: str,
    machines: int,
    control_planes: int = 1,
    kubernetes_share: float = 0.5,
    gpus: int = 8,
    model: str = "h100",
    bmc_port: int = 20101,  # clear of the local site's (8101...) and the scratch sites' (8201...)
    machines_per_bmc: int = 1,
) -> dict[str, Any]:
    """The site file as data: `machines` GPU servers, `kubernetes_share` of them in the Kubernetes
    pool (the rest in Slurm's), plus the head and the control plane."""
    if machines < 2:
        raise ValueError("a site needs at least 2 GPU machines (one per pool)")
    if control_planes not in (1, 3):
        raise ValueError("control_planes must be 1 or 3")
    if not 0 < kubernetes_share < 1:
        raise ValueError("kubernetes_share must be between 0 and 1 (both pools need machines)")
    if machines_per_bmc < 1:
        raise ValueError("machines_per_bmc must be at least 1")
    if model not in GPU_MODELS:
        raise ValueError(f"unknown GPU model {model!r}; known: {', '.join(sorted(GPU_MODELS))}")
    total = 1 + control_planes + machines
    # the smallest network with room for every machine above FIRST_HOST
    prefix = 32 - math.ceil(math.log2(total + FIRST_HOST + 1))
    if prefix < EMULATED_BASE.prefixlen:
        raise ValueError(f"{total} machines do not fit in {EMULATED_BASE}")
    mgmt = next(EMULATED_BASE.subnets(new_prefix=prefix))
    hosts = list(mgmt.hosts())
    # one /24 of pods per management address (node n routes pod subnet n)
    pod_prefix = 24 - math.ceil(math.log2(mgmt.num_addresses))
    kubernetes: dict[str, Any] = {
        "version": K8S_VERSION,
        "service_cidr": "10.96.0.0/16",
        "pod_cidr": f"10.{128 if pod_prefix < 16 else 244}.0.0/{min(pod_prefix, 16)}",
    }
    if control_planes > 1:
        kubernetes["api_address"] = str(hosts[9])
    to_kubernetes = max(1, min(machines - 1, round(machines * kubernetes_share)))
    credentials = f"{name}-bmc"

    def machine(
        i: int, host: str, roles: list[str], cpus: int, memory: int, bmc: int | None = None, **more: Any
    ) -> dict[str, Any]:
        endpoint = {"endpoint": f"http://127.0.0.1:{bmc_port + (i if bmc is None else bmc)}"}
        if bmc is not None and machines_per_bmc > 1:
            endpoint["system_id"] = host
        return {
            "name": host,
            "roles": roles,
            **({"pool": more.pop("pool")} if "pool" in more else {}),
            "bmc": {**endpoint, "credentials": credentials},
            "cpus": cpus,
            "memory_gib": memory,
            **more,
            "nics": [
                {
                    "name": "host0",
                    "mac": f"02:5c:{(i >> 16) & 255:02x}:{(i >> 8) & 255:02x}:{i & 255:02x}:01",
                    "address": str(hosts[FIRST_HOST - 1 + i]),
                }
            ],
        }

    out = [machine(0, "head-01", ["head"], 32, 256)]
    out += [machine(i, f"cp-{i:02d}", ["k8s-control"], 16, 64) for i in range(1, control_planes + 1)]
    first = control_planes + 1
    for n in range(machines):
        pool = "kubernetes" if n < to_kubernetes else "slurm"
        out.append(
            machine(
                first + n,
                f"gpu-{n + 1:04d}",
                ["gpu"],
                GPU_SERVER_THREADS,
                2048,
                bmc=first + n // machines_per_bmc,
                pool=pool,
                gpus={"model": model, "count": gpus},
            )
        )
    return {
        "name": name,
        "emulated": True,
        "ssh_user": "root",
        "networks": [
            {"name": "mgmt", "cidr": str(mgmt), "gateway": str(hosts[0]), "bridge": f"af{name[:10]}"}
        ],
        "slurm": {"cluster_name": name, "partitions": [{"name": "gpu", "pool": "slurm"}]},
        "kubernetes": kubernetes,
        "power": _power(out, model, gpus),
        "machines": out,
    }


GPU_SERVER_THREADS = 112
SERVERS_PER_FEED = 8


def _power(machines: list[dict[str, Any]], model: str, gpus: int) -> dict[str, Any]:
    """Feeds of eight GPU servers (and one for the rest), each rated for its worst case at 85%."""
    server_w = power.host_estimate(GPU_SERVER_THREADS).max_w + gpus * GPU_MODELS[model].max_w
    servers = [m["name"] for m in machines if "gpu" in m["roles"]]
    others = [m for m in machines if "gpu" not in m["roles"]]
    others_w = sum(power.host_estimate(m["cpus"]).max_w for m in others)
    feeds = [
        {"name": "services", "kw": math.ceil(others_w / 0.85 / 1000), "machines": [m["name"] for m in others]}
    ]
    for k in range(0, len(servers), SERVERS_PER_FEED):
        group = servers[k : k + SERVERS_PER_FEED]
        feeds.append(
            {
                "name": f"feed-{k // SERVERS_PER_FEED + 1:03d}",
                "kw": math.ceil(len(group) * server_w / 0.85 / 1000),
                "machines": group,
            }
        )
    return {"pue": 1.2, "water_l_per_kwh": 0.5, "carbon_g_per_kwh": 270, "feeds": feeds}


def write(data: dict[str, Any], out: Path) -> Site:
    """Write the generated site file, after the checks `site validate` makes (a generator bug would
    otherwise surface as a confusing failure later)."""
    from aifactory.site.validate import ERROR, check

    text = "# Generated by `aifactory site generate`; regenerate rather than edit.\n"
    text += yaml.safe_dump(data, sort_keys=False)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    findings, site = check(out)
    errors = [f for f in findings if f.level == ERROR]
    if errors or site is None:
        out.unlink()
        raise AssertionError(f"generated site file is invalid: {errors}")
    return site
