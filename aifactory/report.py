"""Plain-text tables for summaries at the end of long commands, and CSV of the same rows."""

import csv
import io
from collections.abc import Sequence
from typing import Any

# The style of the HTML reports (tenants report, energy report).
HTML_STYLE = """<style>
 body { font-family: sans-serif; margin: 2em; color: #222; }
 table { border-collapse: collapse; margin: .5em 0 1.5em; }
 th, td { border: 1px solid #bbb; padding: .25em .6em; text-align: right; }
 th:first-child, td:first-child { text-align: left; }
 .over { color: #c0102a; font-weight: bold; }
</style>
"""


def csv_text(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as CSV, a header from the first row's keys."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def table(rows: Sequence[dict[str, Any]]) -> str:
    if not rows:
        return "(nothing)"
    cols = list(rows[0])
    cells = [[str(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(cols, widths, strict=True)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    return "\n".join(lines)
