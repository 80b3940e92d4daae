"""Parsers for what the checks read on hosts: Slurm, systemd, sysctl, nvidia-smi, dcgmi, nccl-tests.

Pure functions of text, unit-tested with recorded outputs (tests/unit/data/). A parser raises
`ParseError` when the text is not what the tool prints, so a check fails with the reason instead
of passing on an empty result.
"""

from __future__ import annotations

import csv
import io
import json
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any


class ParseError(ValueError):
    pass


# --- Slurm ------------------------------------------------------------------------------------


def expand_hostlist(text: str) -> list[str]:
    """Slurm's bracket notation as the roles write it: nvidia[0-7], nvidia[0-3,6], gpu-[01-04], nvidia0."""
    m = re.fullmatch(r"(.*)\[([^\]]+)\](.*)", text)
    if not m:
        return [text]
    out = []
    for part in m.group(2).split(","):
        lo, _, hi = part.partition("-")
        width = len(lo)
        for i in range(int(lo), int(hi or lo) + 1):
            out.append(f"{m.group(1)}{i:0{width}d}{m.group(3)}")
    return out


def conf_lines(text: str, key: str) -> list[dict[str, str]]:
    """`Key=Value Key=Value` lines of a Slurm config file that start with `key=` (comments skipped)."""
    out = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith(f"{key}="):
            out.append(dict(word.split("=", 1) for word in line.split() if "=" in word))
    return out


@dataclass(frozen=True)
class GresLine:
    node: str
    name: str
    type: str | None
    files: tuple[str, ...]


def parse_gres_conf(text: str) -> list[GresLine]:
    return [
        GresLine(
            node=d.get("NodeName", ""),
            name=d.get("Name", ""),
            type=d.get("Type"),
            files=tuple(expand_hostlist(d["File"])) if "File" in d else (),
        )
        for d in conf_lines(text, "NodeName")
    ]


@dataclass(frozen=True)
class SlurmNode:
    name: str
    state: str  # e.g. IDLE, MIXED, IDLE+DRAIN, DOWN*+NOT_RESPONDING
    gres: str  # e.g. gpu:h100:8
    reason: str

    @property
    def flags(self) -> set[str]:
        return {f.rstrip("*~#!%$@^-") for f in self.state.split("+")}

    @property
    def drained(self) -> bool:
        return bool(self.flags & {"DRAIN", "DRAINED", "DRAINING"})

    @property
    def responding(self) -> bool:
        return (
            not (self.flags & {"DOWN", "NOT_RESPONDING", "FAIL", "UNKNOWN", "FUTURE"})
            and "*" not in self.state
        )

    @property
    def schedulable(self) -> bool:
        return self.responding and not self.drained


def parse_scontrol_nodes(text: str) -> dict[str, SlurmNode]:
    """`scontrol show node -o`: one line per node. Reason= is last and may contain spaces."""
    nodes = {}
    for line in text.splitlines():
        if not line.startswith("NodeName="):
            continue
        head, _, reason = line.partition(" Reason=")
        fields = dict(w.split("=", 1) for w in head.split() if "=" in w)
        name = fields["NodeName"]
        nodes[name] = SlurmNode(
            name=name,
            state=fields.get("State", "UNKNOWN"),
            gres=fields.get("Gres", "(null)"),
            reason=re.sub(r" \[[^\]]*\]$", "", reason.strip()),  # drop the trailing [user@time]
        )
    if text.strip() and not nodes:
        raise ParseError(f"not `scontrol show node -o` output: {text.strip()[:200]!r}")
    return nodes


# --- systemd, sysctl, files -------------------------------------------------------------------


def parse_systemctl_show(text: str) -> dict[str, dict[str, str]]:
    """`systemctl show -p Id,UnitFileState,ActiveState,SubState a b ...`: blank-line separated blocks."""
    units = {}
    for block in re.split(r"\n\s*\n", text.strip()):
        props = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        if "Id" in props:
            units[props["Id"].removesuffix(".service")] = props
    return units


def parse_sysctl(text: str) -> dict[str, str]:
    """`sysctl key ...` lines `key = value`; keys the kernel lacks are absent."""
    out = {}
    for line in text.splitlines():
        k, sep, v = line.partition(" = ")
        if sep:
            out[k.strip()] = v.strip()
    return out


def active_swaps(text: str) -> list[str]:
    """/proc/swaps without its header."""
    return [line.split()[0] for line in text.splitlines()[1:] if line.strip()]


# --- nvidia-smi -------------------------------------------------------------------------------

SMI_QUERY = (
    "index,name,uuid,pci.bus_id,driver_version,persistence_mode,"
    "ecc.mode.current,ecc.errors.uncorrected.volatile.total,ecc.errors.uncorrected.aggregate.total"
)


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    uuid: str
    bus_id: str
    driver_version: str
    persistence: bool
    ecc_enabled: bool | None
    uncorrected_volatile: int | None  # None: not supported ([N/A])
    uncorrected_aggregate: int | None
    remapping_failed: bool | None = None  # row remapping failure (from -q -x only)


def _int_or_none(s: str) -> int | None:
    s = s.strip()
    return None if s.startswith("[") or s in ("N/A", "") else int(s)


def parse_smi_csv(text: str) -> list[Gpu]:
    """`nvidia-smi --query-gpu=<SMI_QUERY> --format=csv,noheader`."""
    gpus = []
    for row in csv.reader(io.StringIO(text.strip()), skipinitialspace=True):
        if not row:
            continue
        if len(row) != len(SMI_QUERY.split(",")):
            raise ParseError(f"nvidia-smi CSV row has {len(row)} fields, expected 9: {row}")
        idx, name, uuid, bus, drv, pm, ecc, vol, agg = (c.strip() for c in row)
        gpus.append(
            Gpu(
                index=int(idx),
                name=name,
                uuid=uuid,
                bus_id=bus,
                driver_version=drv,
                persistence=pm == "Enabled",
                ecc_enabled=None if ecc.startswith("[") else ecc == "Enabled",
                uncorrected_volatile=_int_or_none(vol),
                uncorrected_aggregate=_int_or_none(agg),
            )
        )
    return gpus


def _xml_int(el: ET.Element | None) -> int | None:
    if el is None or el.text is None:
        return None
    return _int_or_none(el.text)


def _sum_uncorrectable(ecc: ET.Element | None, scope: str) -> int | None:
    """Uncorrectable ECC errors of one scope (volatile/aggregate), across the layouts drivers use:
    <dram_uncorrectable>/<sram_uncorrectable> (R515+), or <total><uncorrectable>/<double_bit><total>."""
    if ecc is None:
        return None
    node = ecc.find(scope)
    if node is None:
        return None
    values = [_xml_int(node.find(tag)) for tag in ("dram_uncorrectable", "sram_uncorrectable")]
    values += [_xml_int(e) for e in node.findall("sram_uncorrectable_parity")]
    values += [_xml_int(e) for e in node.findall("sram_uncorrectable_secded")]
    if all(v is None for v in values):
        values = [_xml_int(node.find("double_bit/total")), _xml_int(node.find("total/uncorrectable"))]
    known = [v for v in values if v is not None]
    return sum(known) if known else None


@dataclass(frozen=True)
class SmiXml:
    driver_version: str
    cuda_version: str
    gpus: list[Gpu] = field(default_factory=list)


def parse_smi_xml(text: str) -> SmiXml:
    """`nvidia-smi -q -x`."""
    try:
        root = ET.fromstring(text[text.find("<nvidia_smi_log") :] if "<nvidia_smi_log" in text else text)
    except ET.ParseError as e:
        raise ParseError(f"not nvidia-smi XML: {e}") from e
    if root.tag != "nvidia_smi_log":
        raise ParseError(f"not nvidia-smi XML: root <{root.tag}>")
    driver = root.findtext("driver_version", "").strip()
    gpus = []
    for i, g in enumerate(root.findall("gpu")):
        ecc_mode = g.findtext("ecc_mode/current_ecc", "").strip()
        remap = g.findtext("remapped_rows/remapped_row_failure", "").strip()
        gpus.append(
            Gpu(
                index=i,  # nvidia-smi lists GPUs in index order
                name=g.findtext("product_name", "").strip(),
                uuid=g.findtext("uuid", "").strip(),
                bus_id=g.get("id", ""),
                driver_version=driver,
                persistence=g.findtext("persistence_mode", "").strip() == "Enabled",
                ecc_enabled=None if not ecc_mode or ecc_mode == "N/A" else ecc_mode == "Enabled",
                uncorrected_volatile=_sum_uncorrectable(g.find("ecc_errors"), "volatile"),
                uncorrected_aggregate=_sum_uncorrectable(g.find("ecc_errors"), "aggregate"),
                remapping_failed=None if remap in ("", "N/A") else remap == "Yes",
            )
        )
    attached = root.findtext("attached_gpus", "").strip()
    if attached.isdigit() and int(attached) != len(gpus):
        raise ParseError(f"nvidia-smi XML says {attached} GPUs attached but lists {len(gpus)}")
    return SmiXml(driver, root.findtext("cuda_version", "").strip(), gpus)


def parse_topo_matrix(text: str) -> dict[tuple[int, int], str]:
    """`nvidia-smi topo -m`: {(i, j): link} for GPU pairs i != j (NV18, PIX, SYS, ...)."""
    lines = [ln.rstrip() for ln in text.splitlines() if ln.strip()]
    header = next(
        (ln for ln in lines if re.match(r"^\s+GPU0\b", ln) or ln.lstrip().startswith("GPU0\t")), None
    )
    if header is None:
        raise ParseError("no GPU header row in `nvidia-smi topo -m` output")
    # Strip ANSI escapes (some drivers colour the header).
    cols = re.sub(r"\x1b\[[0-9;]*m", "", header).split()
    gpu_cols = [c for c in cols if re.fullmatch(r"GPU\d+", c)]
    links = {}
    for ln in lines:
        words = re.sub(r"\x1b\[[0-9;]*m", "", ln).split()
        if not words or not re.fullmatch(r"GPU\d+", words[0]) or ln is header:
            continue
        i = int(words[0][3:])
        for c, v in zip(gpu_cols, words[1 : 1 + len(gpu_cols)], strict=False):
            j = int(c[3:])
            if i != j:
                links[(i, j)] = v
    if not links and len(gpu_cols) > 1:
        raise ParseError("no GPU rows in `nvidia-smi topo -m` output")
    return links


# --- DCGM -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DiagResult:
    test: str
    gpu: str  # GPU id(s) the result is about, "" for whole-system tests
    status: str  # pass, fail, warn, skip, notrun
    messages: tuple[str, ...]


def _status(raw: str) -> str:
    s = raw.strip().lower()
    return {
        "passed": "pass",
        "failed": "fail",
        "warning": "warn",
        "skipped": "skip",
        "not run": "notrun",
    }.get(s, s)


def _messages(result: dict[str, Any]) -> tuple[str, ...]:
    out = []
    for key in ("warnings", "errors"):
        for w in result.get(key) or []:
            out.append(
                w.get("warning") or w.get("message") or json.dumps(w) if isinstance(w, dict) else str(w)
            )
    return tuple(out)


def parse_dcgmi_diag(text: str) -> list[DiagResult]:
    """`dcgmi diag -r N -j`, DCGM 3.x ("DCGM GPU Diagnostic" > test_categories > tests > results with
    gpu_ids) and 4.x ("DCGM Diagnostic", results per entity). Leading non-JSON lines are ignored."""
    start = text.find("{")
    if start < 0:
        raise ParseError(f"no JSON in dcgmi output: {text.strip()[:200]!r}")
    try:
        data = json.loads(text[start : text.rfind("}") + 1])
    except json.JSONDecodeError as e:
        raise ParseError(f"dcgmi JSON does not parse: {e}") from e
    root = data.get("DCGM GPU Diagnostic") or data.get("DCGM Diagnostic")
    if not isinstance(root, dict):
        raise ParseError("no 'DCGM GPU Diagnostic' / 'DCGM Diagnostic' object in dcgmi JSON")
    if root.get("runtime_error"):
        raise ParseError(f"dcgmi runtime error: {root['runtime_error']}")
    tests = [t for cat in root.get("test_categories") or [] for t in cat.get("tests") or [] if t]
    tests += [t for t in root.get("tests") or [] if t]
    out = []
    for t in tests:
        for r in t.get("results") or []:
            if "gpu_ids" in r:
                gpu = str(r["gpu_ids"])
            elif r.get("entity_group", "GPU") == "GPU" and "entity_id" in r:
                gpu = str(r["entity_id"])
            else:
                gpu = ""
            out.append(DiagResult(t.get("name", "?"), gpu, _status(r.get("status", "")), _messages(r)))
    if not out:
        raise ParseError("dcgmi JSON holds no test results")
    return out


# --- nccl-tests -------------------------------------------------------------------------------


@dataclass(frozen=True)
class NcclResult:
    avg_busbw_gbps: float
    max_busbw_gbps: float  # out-of-place busbw of the largest message size
    wrong: int  # data errors reported in the #wrong columns
    sizes: int


def parse_all_reduce_perf(text: str) -> NcclResult:
    """nccl-tests `all_reduce_perf` output: the per-size table and '# Avg bus bandwidth : X'."""
    m = re.search(r"#\s*Avg bus bandwidth\s*:\s*([0-9.]+)", text)
    if not m:
        raise ParseError("no '# Avg bus bandwidth' line in all_reduce_perf output")
    rows = []
    for line in text.splitlines():
        words = line.split()
        # size count type redop root | time algbw busbw #wrong | time algbw busbw #wrong
        if (
            len(words) >= 13
            and words[0].isdigit()
            and words[2] in ("float", "half", "bfloat16", "double", "int32")
        ):
            rows.append(words)
    if not rows:
        raise ParseError("no result rows in all_reduce_perf output")
    wrong = 0
    for w in rows:
        for v in (w[8], w[12]):
            wrong += int(v) if v.isdigit() else 0
    return NcclResult(float(m.group(1)), float(rows[-1][7]), wrong, len(rows))
