"""Real and emulated sites take one code path: outside sandbox/, only the places listed here read the
site's `emulated` flag, each for a hardware fact an emulated machine lacks. A new one fails this test
until it is listed with its reason, so the count cannot grow silently (issue: at most 5)."""

import re

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.unit

# Reading the flag: Ansible's `site_emulated` (or a role variable derived from it), Python's `.emulated`.
READS_FLAG = re.compile(r"\bsite_emulated\b|\b\w+_emulated\b|\.emulated\b")
SCANNED = ("aifactory", "infra", "operators", "playbooks", "bench")
# The site schema declares and validates the flag (where an emulated site's addresses may be).
DECLARED = ("aifactory/site/",)

ALLOWED = {
    "aifactory/inventory.py": "hands the flag to the roles below (the one place Ansible learns it)",
    "aifactory/validate/checks/gpu.py": "an emulated GPU machine has no GPU: nothing for nvidia-smi or DCGM",
    "playbooks/roles/nvidia_gpu": "an emulated GPU machine has no GPU: no NVIDIA driver to install or load",
    "playbooks/roles/slurm_common": "an emulated machine lacks the cores it declares: jobs not bound to them",
    "playbooks/roles/kwok": "kwok's fake Nodes are for scale simulation on emulated sites only",
}


def _place(path) -> str:
    rel = path.relative_to(REPO).as_posix()
    parts = rel.split("/")
    return "/".join(parts[:3]) if parts[0] == "playbooks" and parts[1] == "roles" else rel


def _code(line: str) -> str:
    """The line without its comment (YAML, Jinja and Python comments start with #)."""
    return line.split("#", 1)[0]


def test_only_the_listed_places_read_the_emulated_flag():
    found: dict[str, list[str]] = {}
    for top in SCANNED:
        for path in sorted((REPO / top).rglob("*")):
            rel = path.relative_to(REPO).as_posix()
            if not path.is_file() or path.suffix not in (".py", ".yml", ".j2") or rel.startswith(DECLARED):
                continue
            in_docstring = False
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if path.suffix == ".py" and line.count('"""') % 2 == 1:
                    in_docstring = not in_docstring
                    continue
                if in_docstring:
                    continue
                if READS_FLAG.search(_code(line)):
                    found.setdefault(_place(path), []).append(f"{rel}:{n}: {line.strip()}")
    unlisted = {p: lines for p, lines in found.items() if p not in ALLOWED}
    assert not unlisted, (
        "the emulated flag is read outside the listed places (discover the hardware fact "
        f"from the host instead, or list it with its reason): {unlisted}"
    )
    assert len(ALLOWED) <= 5
    stale = set(ALLOWED) - set(found)
    assert not stale, f"listed but no longer reading the flag (remove from ALLOWED): {sorted(stale)}"
