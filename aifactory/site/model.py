"""The site definition: one schema for the local emulated site and for a real datacenter.

A site file is YAML. `load_site` returns a `Site` only when `validate.check` found no ERROR;
use `aifactory site validate FILE` to see every finding at once.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

ROLES = ("head", "gpu", "cpu", "k8s-control")
POOLS = ("slurm", "kubernetes")
# What a machine's `cpus` counts, in the BMC's terms (Redfish ProcessorSummary): Count (physical
# processors), CoreCount or LogicalProcessorCount. Threads is what Slurm's CPUs= and the kubelet count.
CPU_UNITS = ("threads", "cores", "sockets")


@dataclass(frozen=True)
class Nic:
    name: str
    mac: str
    address: ipaddress.IPv4Address


@dataclass(frozen=True)
class Bmc:
    endpoint: str  # Redfish service root, e.g. https://10.1.0.17 or http://127.0.0.1:8101
    credentials: str  # reference into the credentials store, never the secret itself
    system_id: str | None = None  # Redfish System to drive; None: the BMC's only system
    verify_tls: bool = True
    ca_bundle: Path | None = None  # the CA that signed the BMC's certificate (a site's own PKI)
    cpus_count: str = "threads"  # what the machine's `cpus` counts (CPU_UNITS), as the BMC reports it
    # The Redfish System that lists the GPUs when it is not the host's own (NVIDIA HGX: HGX_Baseboard_0).
    gpu_system: str | None = None

    @property
    def tls_verify(self) -> bool | str:
        """What an HTTPS client verifies the BMC with: the site's CA bundle, else the system's CAs (or
        nothing, where verify_tls is false)."""
        return str(self.ca_bundle) if self.ca_bundle and self.verify_tls else self.verify_tls


@dataclass(frozen=True)
class PowerRange:
    """Watts a machine (or one GPU) draws idle and at most."""

    idle_w: int
    max_w: int


@dataclass(frozen=True)
class Machine:
    name: str
    roles: tuple[str, ...]
    pool: str | None  # scheduler the machine serves now; only for gpu/cpu workers
    bmc: Bmc
    cpus: int
    memory_gib: int
    gpu_model: str | None
    gpu_count: int
    nics: tuple[Nic, ...]
    power: PowerRange | None = None  # the site file's figure; None: estimated (aifactory.site.power)
    power_limit_w: int | None = None  # node power limit its BMC holds it to (power.limits_w)
    gpu_power_limit_w: int | None = None  # per GPU, set with nvidia-smi (power.gpu_limits_w)

    @property
    def address(self) -> str:
        """The management address (first NIC): ssh, Slurm and Kubernetes talk here."""
        return str(self.nics[0].address)

    def has_role(self, role: str) -> bool:
        return role in self.roles


@dataclass(frozen=True)
class Network:
    name: str
    cidr: ipaddress.IPv4Network
    gateway: ipaddress.IPv4Address | None
    bridge: str | None  # emulated sites: the host bridge the sandbox creates


@dataclass(frozen=True)
class SlurmSettings:
    cluster_name: str
    partitions: tuple[tuple[str, str], ...]  # (partition name, pool)
    accounting_enforce: str = "associations,limits,qos,safe"


@dataclass(frozen=True)
class KubernetesSettings:
    version: str
    service_cidr: str
    api_port: int = 6443
    # Pods: each node routes one /node_pod_prefix of pod_cidr, numbered by its management address
    # (stable when machines are added or reordered; see node_pod_cidr).
    pod_cidr: str = "10.244.0.0/16"
    node_pod_prefix: int = 24
    # A virtual address on the management network that one control-plane machine holds at a time
    # (keepalived, VRRP): the stable API endpoint of a site with several control-plane machines.
    api_address: ipaddress.IPv4Address | None = None

    def node_pod_cidr(self, address: ipaddress.IPv4Address, mgmt: ipaddress.IPv4Network) -> str:
        """The pod subnet of the node at `address`: the n-th subnet for the n-th management address."""
        index = int(address) - int(mgmt.network_address)
        subnets = ipaddress.ip_network(self.pod_cidr).subnets(new_prefix=self.node_pod_prefix)
        for i, subnet in enumerate(subnets):
            if i == index:
                return str(subnet)
        raise ValueError(f"{address}: pod_cidr {self.pod_cidr} has no /{self.node_pod_prefix} number {index}")


@dataclass(frozen=True)
class ValidationSettings:
    # `aifactory validate --level burn-in`: minimum NCCL all_reduce_perf average bus bandwidth in
    # GB/s per platform, keyed "<gpus per server>x<model>" (e.g. "8xh100": 420).
    nccl_min_busbw_gbps: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class AptRepository:
    """An apt repository the roles add to hosts: a site's mirror of a vendor's archive."""

    name: str
    url: str
    suite: str  # "/" for a flat repository (NVIDIA's layout)
    components: tuple[str, ...]
    key: Path  # its signing key (OpenPGP, .asc armored or .gpg binary), resolved against the site file


@dataclass(frozen=True)
class NvidiaSettings:
    """Where the GPU machines get NVIDIA's driver, Fabric Manager, DCGM and container toolkit."""

    repositories: tuple[AptRepository, ...]
    versions: dict[str, str]  # Debian package -> the version apt is pinned to
    driver_branch: str = "570"
    # NVreg_RestrictProfilingToAdminUsers=0: every user may read the GPUs' profiling counters
    # (a side channel between tenants); off unless the site asks for it.
    profiling_for_all_users: bool = False


@dataclass(frozen=True)
class Feed:
    """A power feed (a busway, a PDU pair's circuit): what it may carry, and the machines on it."""

    name: str
    kw: float
    machines: tuple[str, ...]
    # The draw the site holds it to at run time (the power governor, `power.hold`): its rating
    # unless lowered, e.g. while the grid operator asks for less.
    budget_kw: float | None = None

    @property
    def budget_w(self) -> float:
        return 1000 * (self.kw if self.budget_kw is None else self.budget_kw)


@dataclass(frozen=True)
class HoldSettings:
    """`power.hold`: shares of a feed's budget. Above `at`, the power governor lowers node power
    limits on the feed; once the draw is under `release`, it gives them back (hysteresis)."""

    at: float = 0.9
    release: float = 0.8


@dataclass(frozen=True)
class PowerSettings:
    """`power:` the site's feeds and the factors that turn IT energy into facility energy, CO2e
    and cooling water."""

    feeds: tuple[Feed, ...] = ()
    pue: float = 1.0  # power usage effectiveness: facility kWh per IT kWh
    water_l_per_kwh: float = 0.0  # water usage effectiveness: litres per IT kWh
    carbon_g_per_kwh: float = 0.0  # grid carbon intensity where no hourly file covers an hour
    carbon_file: Path | None = None  # hourly intensities: CSV rows "2026-11-01T00:00Z,312"
    gpu_models: dict[str, PowerRange] = field(default_factory=dict)  # per GPU, over the defaults
    # Node power limits set through each BMC, by machine name or by pool (a machine's own wins).
    limits_w: dict[str, int] = field(default_factory=dict)
    # GPU power limits (nvidia-smi -pl) per GPU, by machine name or by pool (a machine's own wins).
    gpu_limits_w: dict[str, int] = field(default_factory=dict)
    hold: HoldSettings = field(default_factory=HoldSettings)


@dataclass(frozen=True)
class MonitoringSettings:
    """`monitoring:` Prometheus on the head."""

    retention: str = "30d"  # how long samples are kept (Prometheus duration: 15d, 12w, 1y)


@dataclass(frozen=True)
class Site:
    name: str
    emulated: bool
    path: Path
    networks: tuple[Network, ...]
    machines: tuple[Machine, ...]
    slurm: SlurmSettings | None
    kubernetes: KubernetesSettings | None
    bundle_url: str | None  # where hosts fetch the toolchain bundle (an air-gapped mirror)
    ssh_user: str = "root"
    validation: ValidationSettings = field(default_factory=ValidationSettings)
    nvidia: NvidiaSettings | None = None
    power: PowerSettings = field(default_factory=PowerSettings)
    monitoring: MonitoringSettings = field(default_factory=MonitoringSettings)
    extra: dict[str, object] = field(default_factory=dict)

    def machine(self, name: str) -> Machine:
        for m in self.machines:
            if m.name == name:
                return m
        raise KeyError(f"site {self.name!r} has no machine {name!r}")

    def in_pool(self, pool: str) -> list[Machine]:
        return [m for m in self.machines if m.pool == pool]

    def with_role(self, role: str) -> list[Machine]:
        return [m for m in self.machines if m.has_role(role)]

    @property
    def api_host(self) -> str:
        """Where kubelets, Pulumi and clients reach the API server: the site's API address, or the
        address of its one control-plane machine."""
        assert self.kubernetes, f"site {self.name!r} has no kubernetes section"
        if self.kubernetes.api_address:
            return str(self.kubernetes.api_address)
        return self.with_role("k8s-control")[0].address

    @property
    def management(self) -> Network:
        return self.networks[0]
