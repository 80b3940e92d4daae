"""Validation results as flat records (one per host and check), in the style of DeepOps' scripts.

JSON: a list of records {site, level, host, check, status, value, threshold, message, duration_s}.
Exit code: 0 when nothing failed, 1 when a check failed or errored. (2, the run could not happen,
is decided before any check runs: see runner.py.)
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from aifactory.report import table

PASSED, FAILED, SKIPPED, ERROR = "passed", "failed", "skipped", "error"
CLUSTER = "cluster"  # the host of site-wide checks
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


@dataclass
class Record:
    host: str
    check: str
    status: str
    message: str = ""
    value: Any = None
    threshold: Any = None
    duration_s: float = 0.0

    @property
    def bad(self) -> bool:
        return self.status in (FAILED, ERROR)

    def line(self) -> str:
        return f"{self.status.upper()} {self.host} {self.check}: {self.message}"


def exit_code(records: list[Record]) -> int:
    return EXIT_FAILED if any(r.bad for r in records) else EXIT_OK


def to_json(records: list[Record], site: str, level: str) -> str:
    return json.dumps([{"site": site, "level": level, **asdict(r)} for r in records], indent=1, default=str)


def write_json(path: Path, records: list[Record], site: str, level: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_json(records, site, level) + "\n")


def summary_rows(records: list[Record]) -> list[dict[str, Any]]:
    """One row per host: counts per status, and the failed checks by name."""
    hosts: dict[str, list[Record]] = {}
    for r in records:
        hosts.setdefault(r.host, []).append(r)
    rows = []
    for host, rs in hosts.items():
        n = Counter(r.status for r in rs)
        rows.append(
            {
                "host": host,
                PASSED: n[PASSED],
                FAILED: n[FAILED] + n[ERROR],
                SKIPPED: n[SKIPPED],
                "failed checks": ", ".join(r.check for r in rs if r.bad) or "-",
            }
        )
    return rows


def summary(records: list[Record], seconds: float) -> str:
    n = Counter(r.status for r in records)
    hosts_bad = sorted({r.host for r in records if r.bad})
    lines = [table(summary_rows(records)), ""]
    lines += [r.line() for r in records if r.bad]
    skipped = Counter(r.message for r in records if r.status == SKIPPED)
    lines += [f"skipped x{count}: {reason}" for reason, count in skipped.most_common()]
    verdict = "FAILED" if hosts_bad else "ok"
    lines.append(
        f"validate {verdict}: {n[PASSED]} passed, {n[FAILED] + n[ERROR]} failed, {n[SKIPPED]} skipped "
        f"in {seconds:.1f}s" + (f"; failing hosts: {', '.join(hosts_bad)}" if hosts_bad else "")
    )
    return "\n".join(lines)
