"""Pre-flight validation of a site file, in the style of Cluster Toolkit's validators.

Every problem becomes a `Finding` (ERROR or WARNING) with the file, the path inside it, the line
and the reason; all findings are collected before anything runs, so an operator fixes a file in
one pass. `load_site` raises `SiteInvalid` (carrying the findings) when any ERROR is present, or
any WARNING when the failure level is "warning".
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import gc
import ipaddress
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from aifactory.site import power
from aifactory.site.gpus import GPU_MODELS
from aifactory.site.model import (
    CPU_UNITS,
    POOLS,
    ROLES,
    AptRepository,
    Bmc,
    Feed,
    HoldSettings,
    KubernetesSettings,
    Machine,
    MonitoringSettings,
    Network,
    Nic,
    NvidiaSettings,
    PowerRange,
    PowerSettings,
    Site,
    SlurmSettings,
    ValidationSettings,
)

ERROR = "ERROR"
WARNING = "WARNING"
# Emulated sites put their hosts here; the sandbox guards this range with an unreachable route,
# so a typo can never send test traffic to a real network.
EMULATED_RANGE = ipaddress.ip_network("198.18.0.0/15")
NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")

TOP_KEYS = {
    "name",
    "emulated",
    "networks",
    "machines",
    "slurm",
    "kubernetes",
    "bundle_url",
    "ssh_user",
    "validation",
    "nvidia",
    "power",
    "monitoring",
}
MACHINE_KEYS = {"name", "roles", "pool", "bmc", "cpus", "memory_gib", "gpus", "nics", "power"}
BMC_KEYS = {"endpoint", "credentials", "system_id", "verify_tls", "ca_bundle", "cpus_count", "gpu_system"}
NIC_KEYS = {"name", "mac", "address"}
NETWORK_KEYS = {"name", "cidr", "gateway", "bridge"}
SLURM_KEYS = {"cluster_name", "partitions", "accounting_enforce"}
KUBE_KEYS = {"version", "service_cidr", "api_port", "pod_cidr", "node_pod_prefix", "api_address"}
NVIDIA_KEYS = {"driver_branch", "repositories", "versions", "profiling_for_all_users"}
REPO_KEYS = {"name", "url", "suite", "components", "key"}
POWER_KEYS = {
    "feeds", "pue", "water_l_per_kwh", "carbon_g_per_kwh", "carbon_file", "gpu_models",
    "limits_w", "gpu_limits_w", "hold"
}  # fmt: skip
FEED_KEYS = {"name", "kw", "budget_kw", "machines"}
HOLD_KEYS = {"at", "release"}


@dataclass(frozen=True)
class Finding:
    level: str
    file: str
    path: str
    line: int | None
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{self.level:7} {where}: {self.path or '(top)'}: {self.message}"


class SiteInvalid(Exception):
    def __init__(self, findings: list[Finding]):
        self.findings = findings
        errors = sum(f.level == ERROR for f in findings)
        super().__init__(f"site file has {errors} error(s), {len(findings) - errors} warning(s)")


class _Checker:
    """Walks the raw YAML, records findings, and builds the model where the input allows."""

    def __init__(self, path: Path, lines: dict[str, int]):
        self.file = str(path)
        self.lines = lines
        self.findings: list[Finding] = []

    def add(self, level: str, path: str, message: str) -> None:
        line, probe = self.lines.get(path), path
        while line is None and probe:
            probe = _parent(probe)
            line = self.lines.get(probe)
        self.findings.append(Finding(level, self.file, path, line, message))

    def keys(self, obj: dict[str, Any], allowed: set[str], path: str) -> None:
        for key in obj:
            if key not in allowed:
                hint = difflib.get_close_matches(str(key), sorted(allowed), n=1)
                extra = f" (did you mean {hint[0]!r}?)" if hint else ""
                self.add(ERROR, _join(path, key), f"unknown key {key!r}{extra}")

    def section(self, raw: Any, path: str, allowed: set[str]) -> dict[str, Any] | None:
        """An optional top-level section: the mapping with its keys checked, or None (reported)."""
        if not isinstance(raw, dict):
            self.add(ERROR, path, "must be a mapping")
            return None
        self.keys(raw, allowed, path)
        return raw

    def field(self, obj: dict[str, Any], key: str, kind: type | tuple[type, ...], path: str, required=True):
        p = _join(path, key)
        if key not in obj or obj[key] is None:
            if required:
                self.add(ERROR, p, "is required")
            return None
        value = obj[key]
        if isinstance(value, bool) and kind is not bool and not (isinstance(kind, tuple) and bool in kind):
            self.add(ERROR, p, f"must be {_kind_name(kind)}, got a boolean")
            return None
        if not isinstance(value, kind):
            self.add(ERROR, p, f"must be {_kind_name(kind)}, got {type(value).__name__} {value!r}")
            return None
        return value


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {int: "an integer", str: "a string", bool: "true or false", list: "a list", dict: "a mapping"}
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _parent(path: str) -> str:
    m = re.match(r"^(.*?)(\.[^.\[\]]+|\[\d+\])$", path)
    return m.group(1) if m else ""


def _join(path: str, key: object) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


def _compose_lines(node: yaml.Node, path: str, lines: dict[str, int]) -> None:
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            child = _join(path, k.value)
            lines[child] = k.start_mark.line + 1
            _compose_lines(v, child, lines)
            lines[child] = k.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            _compose_lines(v, _join(path, i), lines)


# libyaml's parser where PyYAML has it: a 1,000-machine site file parses in a tenth of the time.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@contextlib.contextmanager
def _no_cyclic_gc() -> Iterator[None]:
    """The cyclic collector off while a site file is checked: its nodes, data and model hold no cycle
    (refcounting frees them), and the collections their allocations trigger rescan every object
    made so far (a 1,024-machine check spent a third of its time there: the curve turned
    superlinear)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def read_site_file(path: Path) -> tuple[Any, dict[str, int]]:
    """The data and each path's line, from one parse (the node tree gives both)."""
    loader = _LOADER(path.read_text())
    try:
        node = loader.get_single_node()
        lines: dict[str, int] = {}
        if node is None:
            return None, lines
        _compose_lines(node, "", lines)
        return loader.construct_document(node), lines
    finally:
        loader.dispose()


def check(path: Path) -> tuple[list[Finding], Site | None]:
    """Return every finding for the site file and the model (None if any ERROR)."""
    with _no_cyclic_gc():
        return _check(Path(path))


def _check(path: Path) -> tuple[list[Finding], Site | None]:
    try:
        raw, lines = read_site_file(path)
    except FileNotFoundError:
        return [Finding(ERROR, str(path), "", None, "file not found")], None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark else None
        return [Finding(ERROR, str(path), "", line, f"not valid YAML: {e}")], None
    c = _Checker(path, lines)
    if not isinstance(raw, dict):
        c.add(ERROR, "", "a site file must be a mapping with name, networks and machines")
        return c.findings, None
    site = _check_site(c, raw, path)
    has_error = any(f.level == ERROR for f in c.findings)
    return c.findings, None if has_error else site


def load_site(path: Path | str, failure_level: str = ERROR) -> Site:
    findings, site = check(Path(path))
    failing = {ERROR} if failure_level == ERROR else {ERROR, WARNING}
    if site is None or any(f.level in failing for f in findings):
        raise SiteInvalid(findings)
    return site


def _check_site(c: _Checker, raw: dict[str, Any], path: Path) -> Site | None:
    c.keys(raw, TOP_KEYS, "")
    name = c.field(raw, "name", str, "")
    if name is not None and not NAME_RE.match(name):
        c.add(ERROR, "name", f"{name!r} is not a DNS label (lowercase letters, digits, '-')")
    emulated = c.field(raw, "emulated", bool, "", required=False) or False
    networks = _check_networks(c, raw.get("networks"), emulated)
    machines = _check_machines(c, raw.get("machines"), networks, emulated, path.resolve().parent)
    slurm = _check_slurm(c, raw.get("slurm"), machines)
    kube = _check_kubernetes(c, raw.get("kubernetes"), machines, networks[0] if networks else None)
    bundle_url = c.field(raw, "bundle_url", str, "", required=False)
    ssh_user = c.field(raw, "ssh_user", str, "", required=False) or "root"
    validation = _check_validation(c, raw.get("validation"))
    nvidia = _check_nvidia(c, raw.get("nvidia"), path.resolve().parent, machines, emulated)
    power_settings = _check_power(c, raw.get("power"), path.resolve().parent, machines)
    monitoring = _check_monitoring(c, raw.get("monitoring"))
    if name is None or networks is None or machines is None:
        return None
    if machines is not None:
        machines = _with_power_limits(c, power_settings, machines)
    site = Site(
        name=name,
        emulated=emulated,
        path=path.resolve(),
        networks=tuple(networks),
        machines=tuple(machines),
        slurm=slurm,
        kubernetes=kube,
        bundle_url=bundle_url,
        ssh_user=ssh_user,
        validation=validation,
        nvidia=nvidia,
        power=power_settings,
        monitoring=monitoring,
    )
    _check_feed_loads(c, site)
    return site


def _check_nvidia(
    c: _Checker, raw: Any, base: Path, machines: list[Machine] | None, emulated: bool
) -> NvidiaSettings | None:
    """`nvidia:` where the GPU machines' NVIDIA packages come from: apt repositories (a site's mirror
    of NVIDIA's CUDA and container-toolkit archives) with their signing keys, and version pins."""
    if raw is None:
        if not emulated and machines and any(m.gpu_count for m in machines):
            c.add(
                WARNING,
                "nvidia",
                "GPU machines but no nvidia section: the roles install NVIDIA's packages from whatever "
                "apt sources the hosts already have, unpinned",
            )
        return None
    raw = c.section(raw, "nvidia", NVIDIA_KEYS)
    if raw is None:
        return None
    branch = c.field(raw, "driver_branch", str, "nvidia", required=False) or "570"
    if not branch.isdigit():
        c.add(ERROR, "nvidia.driver_branch", f'{branch!r} is not a driver branch number (e.g. "570")')
    profiling = c.field(raw, "profiling_for_all_users", bool, "nvidia", required=False) or False
    versions = c.field(raw, "versions", dict, "nvidia", required=False) or {}
    for pkg, version in versions.items():
        if not isinstance(version, str) or not version:
            c.add(ERROR, _join("nvidia.versions", pkg), f"must be a Debian version string, got {version!r}")
    repos: list[AptRepository] = []
    for i, r in enumerate(c.field(raw, "repositories", list, "nvidia") or []):
        p = _join("nvidia.repositories", i)
        if not isinstance(r, dict):
            c.add(ERROR, p, "must be a mapping {name, url, suite, components, key}")
            continue
        c.keys(r, REPO_KEYS, p)
        rname, url = c.field(r, "name", str, p), c.field(r, "url", str, p)
        suite = c.field(r, "suite", str, p, required=False) or "/"
        components = c.field(r, "components", list, p, required=False) or []
        key = c.field(r, "key", str, p)
        if rname is not None and not NAME_RE.match(rname):
            c.add(ERROR, _join(p, "name"), f"{rname!r} is not a DNS label (it names files on the hosts)")
        if url is not None and not re.match(r"^https?://[^/\s]+", url):
            c.add(ERROR, _join(p, "url"), f"{url!r} is not an http(s) URL of an apt repository")
        if suite == "/" and components:
            c.add(ERROR, _join(p, "components"), "a flat repository (suite '/') has no components")
        key_path = (base / key) if key else None
        if key_path is not None and key_path.suffix not in (".asc", ".gpg"):
            c.add(ERROR, _join(p, "key"), f"{key!r}: an OpenPGP key file ending .asc (armored) or .gpg")
        elif key_path is not None and not key_path.is_file():
            c.add(ERROR, _join(p, "key"), f"{key_path} does not exist (paths are relative to the site file)")
        if rname and url and key_path is not None:
            repos.append(AptRepository(rname, url, suite, tuple(map(str, components)), key_path))
    return NvidiaSettings(tuple(repos), {str(k): str(v) for k, v in versions.items()}, branch, profiling)


def _number(c: _Checker, obj: dict[str, Any], key: str, path: str, low: float, what: str) -> float | None:
    """An optional number at least `low` (ERROR otherwise); None when absent or wrong."""
    value = c.field(obj, key, (int, float), path, required=False)
    if value is not None and value < low:
        c.add(ERROR, _join(path, key), f"must be {what}, got {value}")
        return None
    return value


def _check_power_range(c: _Checker, raw: Any, p: str) -> PowerRange | None:
    """{idle_w, max_w}: watts drawn idle and at most (a machine's, or one GPU's)."""
    if not isinstance(raw, dict):
        c.add(ERROR, p, "must be a mapping {idle_w, max_w} (watts)")
        return None
    c.keys(raw, {"idle_w", "max_w"}, p)
    idle, most = c.field(raw, "idle_w", int, p), c.field(raw, "max_w", int, p)
    if idle is None or most is None:
        return None
    if not 0 <= idle < most:
        c.add(ERROR, p, f"needs 0 <= idle_w < max_w, got idle_w {idle}, max_w {most}")
        return None
    return PowerRange(idle, most)


def _check_power(c: _Checker, raw: Any, base: Path, machines: list[Machine] | None) -> PowerSettings:
    """`power:` feeds (kW each and the machines they supply), PUE, water per kWh, carbon intensity
    (a constant and/or an hourly CSV file) and per-GPU-model figures."""
    if raw is None:
        return PowerSettings()
    raw = c.section(raw, "power", POWER_KEYS)
    if raw is None:
        return PowerSettings()
    pue = _number(c, raw, "pue", "power", 1.0, "at least 1.0 (facility energy over IT energy)")
    water = _number(c, raw, "water_l_per_kwh", "power", 0.0, "a number of litres, 0 or more")
    carbon = _number(c, raw, "carbon_g_per_kwh", "power", 0.0, "a number of gCO2e per kWh, 0 or more")
    carbon_file = None
    if (name := c.field(raw, "carbon_file", str, "power", required=False)) is not None:
        carbon_file = base / name
        try:
            if not power.read_carbon_file(carbon_file):
                c.add(ERROR, "power.carbon_file", f"{carbon_file} holds no hourly values")
        except OSError as e:
            where = "paths are relative to the site file"
            c.add(ERROR, "power.carbon_file", f"{carbon_file}: {e.strerror} ({where})")
        except ValueError as e:
            c.add(ERROR, "power.carbon_file", str(e))
    models: dict[str, PowerRange] = {}
    for model, r in (c.field(raw, "gpu_models", dict, "power", required=False) or {}).items():
        p = _join("power.gpu_models", model)
        if model not in GPU_MODELS:
            c.add(ERROR, p, f"unknown GPU model {model!r}; known: {', '.join(GPU_MODELS)}")
        elif (pr := _check_power_range(c, r, p)) is not None:
            models[model] = pr
    known = {m.name for m in machines or []}
    limits, gpu_limits = (_limits_by_key(c, raw, key, known) for key in ("limits_w", "gpu_limits_w"))
    feeds: list[Feed] = []
    for i, f in enumerate(c.field(raw, "feeds", list, "power", required=False) or []):
        p = _join("power.feeds", i)
        if not isinstance(f, dict):
            c.add(ERROR, p, "must be a mapping {name, kw, machines}")
            continue
        c.keys(f, FEED_KEYS, p)
        fname, kw = c.field(f, "name", str, p), c.field(f, "kw", (int, float), p)
        budget = c.field(f, "budget_kw", (int, float), p, required=False)
        on = c.field(f, "machines", list, p) or []
        if budget is not None and kw is not None and not 0 < budget <= kw:
            c.add(
                ERROR,
                _join(p, "budget_kw"),
                f"must be above 0 and at most the rating ({kw} kW), got {budget}",
            )
            budget = None
        if fname is not None and not NAME_RE.match(fname):
            c.add(ERROR, _join(p, "name"), f"{fname!r} is not a DNS label (it names metrics and alerts)")
        if kw is not None and kw <= 0:
            c.add(ERROR, _join(p, "kw"), f"must be a positive rating in kW, got {kw}")
        for j, m in enumerate(on):
            if machines is not None and m not in known:
                hint = difflib.get_close_matches(str(m), sorted(known), n=1)
                extra = f" (did you mean {hint[0]!r}?)" if hint else ""
                c.add(ERROR, _join(_join(p, "machines"), j), f"no machine {m!r}{extra}")
        if fname and kw and kw > 0:
            feeds.append(Feed(fname, float(kw), tuple(str(m) for m in on if m in known), budget))
    names = [f.name for f in feeds]
    for dup in sorted({n for n in names if names.count(n) > 1}):
        c.add(ERROR, "power.feeds", f"feed {dup!r} is declared twice")
    if feeds and machines:
        fed = {m for f in feeds for m in f.machines}
        unfed = [m.name for m in machines if m.name not in fed]
        if unfed:
            c.add(WARNING, "power.feeds", f"on no feed, so in no power budget: {', '.join(unfed)}")
    return PowerSettings(
        feeds=tuple(feeds),
        pue=float(pue) if pue is not None else 1.0,
        water_l_per_kwh=float(water or 0),
        carbon_g_per_kwh=float(carbon or 0),
        carbon_file=carbon_file,
        gpu_models=models,
        limits_w=limits,
        gpu_limits_w=gpu_limits,
        hold=_check_hold(c, raw.get("hold")),
    )


def _limits_by_key(c: _Checker, raw: dict[str, Any], field: str, known: set[str]) -> dict[str, int]:
    """`power.<field>: {machine or pool: watts}`: positive whole watts, keyed by what exists."""
    limits: dict[str, int] = {}
    for key, watts in (c.field(raw, field, dict, "power", required=False) or {}).items():
        p = _join(f"power.{field}", key)
        if key not in known and key not in POOLS:
            c.add(ERROR, p, f"{key!r} is neither a machine nor a pool ({', '.join(POOLS)})")
        elif isinstance(watts, bool) or not isinstance(watts, int) or watts <= 0:
            c.add(ERROR, p, f"must be a positive number of watts, got {watts!r}")
        else:
            limits[key] = watts
    return limits


def _check_hold(c: _Checker, raw: Any) -> HoldSettings:
    """`power.hold: {at, release}`: shares of each feed's budget, 0 < release < at <= 1."""
    if raw is None or (raw := c.section(raw, "power.hold", HOLD_KEYS)) is None:
        return HoldSettings()
    at = _number(c, raw, "at", "power.hold", 0.0, "a share of the budget")
    release = _number(c, raw, "release", "power.hold", 0.0, "a share of the budget")
    hold = HoldSettings(
        HoldSettings.at if at is None else float(at),
        HoldSettings.release if release is None else float(release),
    )
    if not 0 < hold.release < hold.at <= 1:
        c.add(ERROR, "power.hold", f"needs 0 < release < at <= 1, got at {hold.at}, release {hold.release}")
        return HoldSettings()
    return hold


def _with_power_limits(c: _Checker, settings: PowerSettings, machines: list[Machine]) -> list[Machine]:
    """Each machine with the node power limit that applies to it (its own, else its pool's), which
    must lie within what the machine can be held to: its idle..maximum draw."""
    out = []
    for m in machines:
        key = m.name if m.name in settings.limits_w else m.pool
        watts = settings.limits_w.get(key) if key else None
        if watts is not None:
            span = power.machine_power(settings, m)
            if not span.idle_w <= watts <= span.max_w:
                c.add(
                    ERROR,
                    _join("power.limits_w", key),
                    f"{watts} W for {m.name} is outside what it can be held to: "
                    f"{span.idle_w}..{span.max_w} W",
                )
        gkey = m.name if m.name in settings.gpu_limits_w else m.pool
        gpu_watts = settings.gpu_limits_w.get(gkey) if gkey else None
        if gpu_watts is not None and (not m.gpu_model or not m.gpu_count):
            if gkey == m.name:
                c.add(ERROR, _join("power.gpu_limits_w", gkey), f"{m.name} has no GPUs to limit")
            gpu_watts = None
        elif gpu_watts is not None and m.gpu_model in GPU_MODELS:
            low, high = GPU_MODELS[m.gpu_model].limit_min_w, power.gpu_power(settings, m.gpu_model).max_w
            if not low <= gpu_watts <= high:
                c.add(
                    ERROR,
                    _join("power.gpu_limits_w", gkey),
                    f"{gpu_watts} W per {m.gpu_model} GPU of {m.name} is outside what the driver accepts: "
                    f"{low}..{high} W",
                )
        out.append(dataclasses.replace(m, power_limit_w=watts, gpu_power_limit_w=gpu_watts))
    return out


def _check_feed_loads(c: _Checker, site: Site) -> None:
    """Each feed's worst case (every machine on it at its maximum) against its rating."""
    for i, load in enumerate(power.feed_loads(site)):
        if load.share <= power.FEED_WARNING_SHARE:
            continue
        f = load.feed
        worst = ", ".join(f"{m} {power.worst_w(site.power, site.machine(m))} W" for m in f.machines[:8])
        if len(f.machines) > 8:
            worst += f" and {len(f.machines) - 8} more"
        level, verdict = (ERROR, "cannot carry") if load.share > 1 else (WARNING, "is above 90% with")
        c.add(
            level,
            _join("power.feeds", i),
            f"feed {f.name!r} ({f.kw:g} kW) {verdict} its machines at their maximum: "
            f"{load.worst_w / 1000:.1f} kW ({load.share:.0%}) from {worst}",
        )


def _check_monitoring(c: _Checker, raw: Any) -> MonitoringSettings:
    """`monitoring:` how long Prometheus on the head keeps its samples."""
    if raw is None:
        return MonitoringSettings()
    raw = c.section(raw, "monitoring", {"retention"})
    if raw is None:
        return MonitoringSettings()
    retention = c.field(raw, "retention", str, "monitoring", required=False)
    if retention is None:
        return MonitoringSettings()
    if not re.fullmatch(r"[1-9]\d*[hdwy]", retention):
        c.add(ERROR, "monitoring.retention", f"{retention!r} is not a duration like 15d, 12w or 1y")
        return MonitoringSettings()
    return MonitoringSettings(retention)


def _check_validation(c: _Checker, raw: Any) -> ValidationSettings:
    """`validation:` thresholds of `aifactory validate`; platforms are "<count>x<model>"."""
    if raw is None:
        return ValidationSettings()
    if not isinstance(raw, dict):
        c.add(ERROR, "validation", "must be a mapping")
        return ValidationSettings()
    c.keys(raw, {"nccl_min_busbw_gbps"}, "validation")
    bw = c.field(raw, "nccl_min_busbw_gbps", dict, "validation", required=False) or {}
    out: dict[str, float] = {}
    for platform, value in bw.items():
        p = _join("validation.nccl_min_busbw_gbps", platform)
        count, _, model = str(platform).partition("x")
        if not count.isdigit() or model not in GPU_MODELS:
            c.add(
                ERROR, p, f"platform {platform!r} is not '<count>x<model>' (models: {', '.join(GPU_MODELS)})"
            )
        elif isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            c.add(ERROR, p, f"must be a positive number of GB/s, got {value!r}")
        else:
            out[f"{int(count)}x{model}"] = float(value)
    return ValidationSettings(out)


def _check_networks(c: _Checker, raw: Any, emulated: bool) -> list[Network] | None:
    if not isinstance(raw, list) or not raw:
        c.add(ERROR, "networks", "needs a list with at least the management network")
        return None
    out: list[Network] = []
    for i, n in enumerate(raw):
        p = _join("networks", i)
        if not isinstance(n, dict):
            c.add(ERROR, p, "must be a mapping with name and cidr")
            continue
        c.keys(n, NETWORK_KEYS, p)
        name = c.field(n, "name", str, p)
        cidr_s = c.field(n, "cidr", str, p)
        gw_s = c.field(n, "gateway", str, p, required=False)
        bridge = c.field(n, "bridge", str, p, required=False)
        try:
            cidr = ipaddress.ip_network(cidr_s) if cidr_s else None
        except ValueError as e:
            c.add(ERROR, _join(p, "cidr"), f"not an IPv4 network: {e}")
            cidr = None
        gateway = None
        if gw_s:
            try:
                gateway = ipaddress.ip_address(gw_s)
            except ValueError:
                c.add(ERROR, _join(p, "gateway"), f"{gw_s!r} is not an IP address")
            if gateway and cidr and gateway not in cidr:
                c.add(ERROR, _join(p, "gateway"), f"{gateway} is outside {cidr}")
        if emulated and cidr and not cidr.subnet_of(EMULATED_RANGE):  # type: ignore[arg-type]
            c.add(
                ERROR,
                _join(p, "cidr"),
                f"an emulated site must use addresses inside {EMULATED_RANGE}, the range the sandbox guards",
            )
        if emulated and i == 0 and not bridge:
            c.add(ERROR, _join(p, "bridge"), "an emulated site needs the bridge name for its hosts")
        if bridge and len(bridge) > 15:
            c.add(ERROR, _join(p, "bridge"), f"{bridge!r} is longer than Linux's 15-character limit")
        if name and cidr is not None:
            out.append(Network(name, cidr, gateway, bridge))  # type: ignore[arg-type]
    return out if len(out) == len(raw) else None


def _check_machines(c: _Checker, raw: Any, networks: list[Network] | None, emulated: bool, base: Path):
    if not isinstance(raw, list) or not raw:
        c.add(ERROR, "machines", "needs a non-empty list of machines")
        return None
    out: list[Machine] = []
    for i, m in enumerate(raw):
        p = _join("machines", i)
        if not isinstance(m, dict):
            c.add(ERROR, p, "must be a mapping")
            continue
        machine = _check_machine(c, m, p, networks, emulated, base)
        if machine:
            out.append(machine)
    _check_unique(c, raw, out)
    return out if len(out) == len(raw) else None


def _check_machine(
    c: _Checker, m: dict[str, Any], p: str, networks, emulated: bool, base: Path
) -> Machine | None:
    c.keys(m, MACHINE_KEYS, p)
    name = c.field(m, "name", str, p)
    if name and not NAME_RE.match(name):
        c.add(ERROR, _join(p, "name"), f"{name!r} is not a valid hostname (lowercase letters, digits, '-')")
    roles = c.field(m, "roles", list, p) or []
    for j, r in enumerate(roles):
        if r not in ROLES:
            hint = difflib.get_close_matches(str(r), ROLES, n=1)
            extra = f" (did you mean {hint[0]!r}?)" if hint else ""
            c.add(ERROR, _join(_join(p, "roles"), j), f"unknown role {r!r}{extra}; known: {', '.join(ROLES)}")
    if "roles" in m and not roles:
        c.add(ERROR, _join(p, "roles"), "needs at least one role")
    pool = c.field(m, "pool", str, p, required=False)
    is_worker = any(r in ("gpu", "cpu") for r in roles)
    if pool is not None and pool not in POOLS:
        c.add(ERROR, _join(p, "pool"), f"unknown pool {pool!r}; known: {', '.join(POOLS)}")
    elif is_worker and pool is None:
        c.add(ERROR, _join(p, "pool"), "a gpu/cpu worker must say which scheduler pool it serves now")
    elif pool is not None and not is_worker:
        c.add(ERROR, _join(p, "pool"), "only gpu/cpu workers belong to a pool")
    cpus = c.field(m, "cpus", int, p)
    if cpus is not None and cpus < 1:
        c.add(ERROR, _join(p, "cpus"), f"must be at least 1, got {cpus}")
    mem = c.field(m, "memory_gib", int, p)
    if mem is not None and mem < 1:
        c.add(ERROR, _join(p, "memory_gib"), f"must be at least 1, got {mem}")
    gpu_model, gpu_count = _check_gpus(c, m.get("gpus"), _join(p, "gpus"), "gpu" in roles)
    gateway = networks[0].gateway if networks else None
    bmc = _check_bmc(c, m.get("bmc"), _join(p, "bmc"), emulated, base, gpu_count, gateway)
    nics = _check_nics(c, m.get("nics"), _join(p, "nics"), networks)
    power = _check_power_range(c, m["power"], _join(p, "power")) if "power" in m else None
    if None in (name, cpus, mem, bmc, nics) or not roles or not set(roles) <= set(ROLES):
        return None
    if pool is not None and pool not in POOLS:
        return None
    return Machine(name, tuple(roles), pool, bmc, cpus, mem, gpu_model, gpu_count, tuple(nics), power)  # type: ignore[arg-type]


def _check_gpus(c: _Checker, raw: Any, p: str, is_gpu: bool) -> tuple[str | None, int]:
    if raw is None:
        if is_gpu:
            c.add(ERROR, p, "a machine with role gpu needs gpus: {model, count}")
        return None, 0
    if not isinstance(raw, dict):
        c.add(ERROR, p, "must be a mapping {model, count}")
        return None, 0
    c.keys(raw, {"model", "count"}, p)
    model = c.field(raw, "model", str, p)
    count = c.field(raw, "count", int, p)
    if model is not None and model not in GPU_MODELS:
        hint = difflib.get_close_matches(model.lower(), GPU_MODELS, n=1)
        extra = f" (did you mean {hint[0]!r}?)" if hint else ""
        c.add(ERROR, _join(p, "model"), f"unknown GPU model {model!r}{extra}; known: {', '.join(GPU_MODELS)}")
        return None, 0
    if model is not None and count is not None:
        allowed = GPU_MODELS[model].counts
        if count not in allowed:
            c.add(
                ERROR,
                _join(p, "count"),
                f"{model} servers come with {', '.join(map(str, sorted(allowed)))} GPUs, not {count}",
            )
            return None, 0
    if not is_gpu and count:
        c.add(WARNING, p, "machine has GPUs but not the gpu role: they will not be scheduled")
    return model, count or 0


def _check_bmc(
    c: _Checker,
    raw: Any,
    p: str,
    emulated: bool,
    base: Path,
    gpu_count: int,
    gateway: ipaddress.IPv4Address | None,
) -> Bmc | None:
    if not isinstance(raw, dict):
        c.add(ERROR, p, "needs a mapping {endpoint, credentials}")
        return None
    c.keys(raw, BMC_KEYS, p)
    endpoint = c.field(raw, "endpoint", str, p)
    cred = c.field(raw, "credentials", str, p)
    system_id = c.field(raw, "system_id", str, p, required=False)
    verify = c.field(raw, "verify_tls", bool, p, required=False)
    ca = c.field(raw, "ca_bundle", str, p, required=False)
    ca_path = base / ca if ca else None
    cpus_count = c.field(raw, "cpus_count", str, p, required=False) or Bmc.cpus_count
    if cpus_count not in CPU_UNITS:
        hint = difflib.get_close_matches(str(cpus_count), CPU_UNITS, n=1)
        extra = f" (did you mean {hint[0]!r}?)" if hint else ""
        units = ", ".join(CPU_UNITS)
        c.add(ERROR, _join(p, "cpus_count"), f"unknown unit {cpus_count!r}{extra}; what cpus counts: {units}")
    gpu_system = c.field(raw, "gpu_system", str, p, required=False)
    if gpu_system is not None:
        q = _join(p, "gpu_system")
        if not re.match(r"^[A-Za-z0-9._-]+$", gpu_system):
            c.add(ERROR, q, f"{gpu_system!r} is not a Redfish System Id (e.g. HGX_Baseboard_0)")
        elif gpu_system == system_id:
            c.add(ERROR, q, "is the host's own system (system_id): leave gpu_system out")
        elif system_id is None:
            # The BMC then lists two systems, and only the site file can say which one is the host.
            c.add(ERROR, q, "needs system_id too: the BMC lists the host's system beside the GPUs'")
        if not gpu_count:
            c.add(WARNING, q, "unused: the machine has no GPUs")
    if ca_path is not None and not ca_path.is_file():
        c.add(ERROR, _join(p, "ca_bundle"), f"{ca_path} does not exist (paths are relative to the site file)")
    if ca_path is not None and verify is False:
        c.add(ERROR, _join(p, "ca_bundle"), "a CA bundle to verify the BMC with, but verify_tls is false")
    if endpoint and not re.match(r"^https?://[^/\s]+(:\d+)?/?$", endpoint):
        c.add(
            ERROR,
            _join(p, "endpoint"),
            f"{endpoint!r} is not a Redfish service root URL (http(s)://host[:port])",
        )
        return None
    # Emulated BMCs run on this machine: on loopback, or on the bridge's address (the management
    # gateway), where the hosts reach them as a real head reaches its BMCs (the power exporter).
    local = r"127\.\d+\.\d+\.\d+|localhost" + (f"|{re.escape(str(gateway))}" if gateway else "")
    if endpoint and emulated and not re.match(rf"^https?://({local})(:\d+)?/?$", endpoint):
        c.add(
            ERROR,
            _join(p, "endpoint"),
            "an emulated site's BMCs listen on loopback or on the management network's gateway "
            f"({gateway or 'none given'}), the bridge address of the machine that runs them",
        )
    if endpoint and not emulated and endpoint.startswith("http://"):
        c.add(WARNING, _join(p, "endpoint"), "plain http to a real BMC sends its credentials unencrypted")
    if verify is False and not emulated:
        c.add(WARNING, _join(p, "verify_tls"), "TLS verification is off for a real BMC")
    if cred is not None and not NAME_RE.match(cred):
        c.add(ERROR, _join(p, "credentials"), "must be a credentials reference name, not a secret")
    if endpoint is None or cred is None:
        return None
    if ca_path is not None and endpoint.startswith("http://"):
        c.add(WARNING, _join(p, "ca_bundle"), "unused: the endpoint is plain http")
    if cpus_count not in CPU_UNITS:
        return None
    verify_tls = True if verify is None else verify
    return Bmc(endpoint.rstrip("/"), cred, system_id, verify_tls, ca_path, cpus_count, gpu_system)


def _check_nics(c: _Checker, raw: Any, p: str, networks: list[Network] | None) -> list[Nic] | None:
    if not isinstance(raw, list) or not raw:
        c.add(ERROR, p, "needs at least one NIC (the first is the management interface)")
        return None
    out: list[Nic] = []
    for i, n in enumerate(raw):
        q = _join(p, i)
        if not isinstance(n, dict):
            c.add(ERROR, q, "must be a mapping {name, mac, address}")
            continue
        c.keys(n, NIC_KEYS, q)
        name = c.field(n, "name", str, q)
        mac = c.field(n, "mac", str, q)
        addr_s = c.field(n, "address", str, q)
        if mac is not None and not MAC_RE.match(mac):
            c.add(ERROR, _join(q, "mac"), f"{mac!r} is not a MAC address like 02:af:00:00:00:11 (lowercase)")
            mac = None
        addr = None
        if addr_s is not None:
            try:
                addr = ipaddress.IPv4Address(addr_s)
            except ValueError:
                c.add(ERROR, _join(q, "address"), f"{addr_s!r} is not an IPv4 address")
        if addr is not None and networks and i == 0:
            mgmt = networks[0]
            if addr not in mgmt.cidr:
                c.add(ERROR, _join(q, "address"), f"{addr} is outside the management network {mgmt.cidr}")
            elif addr in (mgmt.cidr.network_address, mgmt.cidr.broadcast_address, mgmt.gateway):
                c.add(ERROR, _join(q, "address"), f"{addr} is the network, broadcast or gateway address")
        if name and mac and addr:
            out.append(Nic(name, mac, addr))
    return out if len(out) == len(raw) else None


def _check_unique(c: _Checker, raw: list[Any], machines: list[Machine]) -> None:
    """Names, addresses, MACs and BMC endpoints must each be unique across the site."""

    def dupes(values: list[tuple[str, str]], what: str) -> None:
        seen: dict[str, str] = {}
        for path, v in values:
            if v in seen:
                c.add(ERROR, path, f"duplicate {what} {v!r} (also at {seen[v]})")
            else:
                seen[v] = path

    names, addrs, macs, bmcs = [], [], [], []
    for i, m in enumerate(raw):
        if not isinstance(m, dict):
            continue
        p = _join("machines", i)
        if isinstance(m.get("name"), str):
            names.append((_join(p, "name"), m["name"]))
        for j, n in enumerate(m.get("nics") or []):
            if isinstance(n, dict):
                if n.get("address"):
                    addrs.append((_join(_join(_join(p, "nics"), j), "address"), str(n["address"])))
                if n.get("mac"):
                    macs.append((_join(_join(_join(p, "nics"), j), "mac"), str(n["mac"]).lower()))
        bmc = m.get("bmc")
        if isinstance(bmc, dict) and isinstance(bmc.get("endpoint"), str):
            key = bmc["endpoint"].rstrip("/") + "#" + str(bmc.get("system_id") or "")
            bmcs.append((_join(_join(p, "bmc"), "endpoint"), key))
    dupes(names, "machine name")
    dupes(addrs, "address")
    dupes(macs, "MAC address")
    dupes(
        [(p, v.split("#")[0] + (f" system {v.split('#')[1]}" if v.split("#")[1] else "")) for p, v in bmcs],
        "BMC",
    )
    roles = Counter(r for m in machines for r in m.roles)
    if machines and len(machines) == len(raw):
        if roles["head"] == 0 and any(m.pool == "slurm" for m in machines):
            c.add(ERROR, "machines", "the slurm pool needs a machine with role head (slurmctld, slurmdbd)")
        if roles["head"] > 1:
            c.add(WARNING, "machines", "more than one head: only the first runs slurmctld/slurmdbd")
        if roles["k8s-control"] == 0 and any(m.pool == "kubernetes" for m in machines):
            c.add(ERROR, "machines", "the kubernetes pool needs a machine with role k8s-control")
        if roles["k8s-control"] > 1 and roles["k8s-control"] % 2 == 0:
            c.add(
                WARNING,
                "machines",
                "an even number of k8s-control machines gives etcd no extra fault tolerance",
            )


def _check_slurm(c: _Checker, raw: Any, machines: list[Machine] | None) -> SlurmSettings | None:
    if raw is None:
        return None
    raw = c.section(raw, "slurm", SLURM_KEYS)
    if raw is None:
        return None
    cluster = c.field(raw, "cluster_name", str, "slurm")
    parts_raw = c.field(raw, "partitions", list, "slurm") or []
    enforce = c.field(raw, "accounting_enforce", str, "slurm", required=False)
    parts: list[tuple[str, str]] = []
    for i, part in enumerate(parts_raw):
        p = _join("slurm.partitions", i)
        if not isinstance(part, dict):
            c.add(ERROR, p, "must be a mapping {name, pool}")
            continue
        c.keys(part, {"name", "pool"}, p)
        pname = c.field(part, "name", str, p)
        pool = c.field(part, "pool", str, p)
        if pool is not None and pool != "slurm":
            c.add(ERROR, _join(p, "pool"), f"Slurm partitions serve the slurm pool, not {pool!r}")
        if pname and pool:
            parts.append((pname, pool))
    if machines is not None and not any(m.pool == "slurm" for m in machines):
        c.add(ERROR, "slurm", "the slurm pool has no machines: give at least one gpu/cpu worker pool: slurm")
    if enforce is not None and "limits" not in enforce.split(","):
        c.add(WARNING, "slurm.accounting_enforce", "without 'limits' tenant GPU quotas are not enforced")
    if cluster is None:
        return None
    return SlurmSettings(cluster, tuple(parts), enforce or SlurmSettings.accounting_enforce)


def _check_kubernetes(
    c: _Checker, raw: Any, machines: list[Machine] | None, network: Network | None
) -> KubernetesSettings | None:
    mgmt = network.cidr if network else None
    if raw is None:
        if machines and any(m.pool == "kubernetes" for m in machines):
            c.add(
                ERROR,
                "kubernetes",
                "machines are in the kubernetes pool but the site has no kubernetes section",
            )
        return None
    raw = c.section(raw, "kubernetes", KUBE_KEYS)
    if raw is None:
        return None
    version = c.field(raw, "version", str, "kubernetes")
    svc = c.field(raw, "service_cidr", str, "kubernetes")
    port = c.field(raw, "api_port", int, "kubernetes", required=False)
    pods = c.field(raw, "pod_cidr", str, "kubernetes", required=False) or KubernetesSettings.pod_cidr
    prefix = c.field(raw, "node_pod_prefix", int, "kubernetes", required=False) or 24
    api_address = _check_api_address(c, raw, machines, network)
    if version and not re.match(r"^v\d+\.\d+\.\d+$", version):
        c.add(ERROR, "kubernetes.version", f"{version!r} is not a version like v1.37.2")
    nets: dict[str, ipaddress.IPv4Network | ipaddress.IPv6Network] = {}
    for key, value in (("service_cidr", svc), ("pod_cidr", pods)):
        if value:
            try:
                nets[key] = ipaddress.ip_network(value)
            except ValueError as e:
                c.add(ERROR, f"kubernetes.{key}", f"not a network: {e}")
    if len(nets) == 2 and nets["service_cidr"].overlaps(nets["pod_cidr"]):
        c.add(ERROR, "kubernetes.pod_cidr", f"{pods} overlaps service_cidr {svc}")
    if "pod_cidr" in nets and not nets["pod_cidr"].prefixlen < prefix <= 28:
        c.add(
            ERROR,
            "kubernetes.node_pod_prefix",
            f"/{prefix} must be longer than pod_cidr's /{nets['pod_cidr'].prefixlen} and at most /28",
        )
    elif "pod_cidr" in nets and machines and mgmt is not None:
        # Node n of the management network gets pod subnet n: it must exist.
        room = 2 ** (prefix - nets["pod_cidr"].prefixlen)
        for m in machines:
            if m.pool:
                index = int(ipaddress.ip_address(m.address)) - int(mgmt.network_address)
                if index >= room:
                    c.add(
                        ERROR,
                        "kubernetes.pod_cidr",
                        f"{pods} has {room} node subnets of /{prefix}; "
                        f"{m.name} ({m.address}) needs number {index}",
                    )
    if machines is not None and not any(m.pool == "kubernetes" for m in machines):
        c.add(
            WARNING, "kubernetes", "the kubernetes pool has no machines: the control plane will have no nodes"
        )
    if version is None or svc is None:
        return None
    return KubernetesSettings(version, svc, port or 6443, pods, prefix, api_address)


def _check_api_address(
    c: _Checker, raw: dict[str, Any], machines: list[Machine] | None, mgmt: Network | None
) -> ipaddress.IPv4Address | None:
    """The virtual API address: required with several control-plane machines (kubelets and clients
    need one endpoint that survives the loss of any of them), a free address of the management network."""
    p = "kubernetes.api_address"
    value = c.field(raw, "api_address", str, "kubernetes", required=False)
    controls = [m for m in machines or [] if "k8s-control" in m.roles]
    if value is None:
        if len(controls) > 1:
            c.add(
                ERROR,
                p,
                f"is required with {len(controls)} k8s-control machines: a free address of the management "
                "network that keepalived moves to a live control-plane machine (the API endpoint)",
            )
        return None
    try:
        address = ipaddress.IPv4Address(value)
    except ValueError:
        c.add(ERROR, p, f"{value!r} is not an IPv4 address")
        return None
    if mgmt is not None and (
        address not in mgmt.cidr
        or address in (mgmt.cidr.network_address, mgmt.cidr.broadcast_address, mgmt.gateway)
    ):
        c.add(ERROR, p, f"{address} is not a free host address of the management network {mgmt.cidr}")
    for m in machines or []:
        if m.address == str(address):
            c.add(ERROR, p, f"{address} is the address of machine {m.name}; the API address must be free")
    return address
