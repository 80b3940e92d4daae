"""One validation run: reach the hosts, gather their probes in parallel, run the checks through
pytest in this process, then write the reports, print the summary and (optionally) drain.

Exit codes: 0 every check passed or was skipped with a reason, 1 a check failed, 2 the run could
not happen (unknown host in --limit, unreachable host, no checks collected).
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import import_module
from pathlib import Path

import pytest

from aifactory import paths
from aifactory.site.model import Machine, Site
from aifactory.validate import checks, probe
from aifactory.validate.context import LEVELS, Context
from aifactory.validate.plugin import ValidatePlugin
from aifactory.validate.report import Record, exit_code, summary, write_json

CHECKS_DIR = Path(checks.__file__).parent
# Never prompt, fail fast, and one connection per host reused by every command (as the local site's
# generated ssh config does).
REAL_SITE_SSH = (
    "-o BatchMode=yes -o ConnectTimeout=10 -o ControlMaster=auto -o ControlPersist=120s "
    "-o ControlPath=~/.ssh/aifactory-validate-%C"
)


class RunImpossible(Exception):
    """The run could not happen (exit 2): nothing was checked."""


@dataclass
class Result:
    records: list[Record]
    seconds: float
    json_path: Path
    junit_path: Path
    drained: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return exit_code(self.records)


def select(site: Site, limit: str | None) -> list[Machine]:
    if not limit:
        return list(site.machines)
    names = [n.strip() for n in limit.split(",") if n.strip()]
    unknown = [n for n in names if n not in {m.name for m in site.machines}]
    if unknown:
        raise RunImpossible(f"--limit names machines the site {site.name} lacks: {', '.join(unknown)}")
    return [m for m in site.machines if m.name in names]


def make_context(site: Site, level: str, machines: list[Machine]) -> Context:
    cfg = paths.ssh_config(site.name)
    ctx = Context(site, level, machines, cfg, paths.site_state_dir(site.name) / "kubeconfig")
    # The head is always probed: the controller's view of Slurm and the reference munge key.
    probed = machines + [m for m in site.with_role("head")[:1] if m not in machines]
    for m in probed:
        if cfg.exists():
            ctx.hosts[m.name] = probe.connect(site, m, cfg)
        else:  # a real site: the operator's own ssh configuration and keys, by address
            import testinfra

            ctx.hosts[m.name] = testinfra.get_host(
                f"ssh://{site.ssh_user}@{m.address}",
                sudo=site.ssh_user != "root",
                ssh_extra_args=REAL_SITE_SSH,
            )
    return ctx


def commands_for(ctx: Context, m: Machine) -> dict[str, probe.Command]:
    out: dict[str, probe.Command] = {}
    for name in checks.MODULES:
        out.update(import_module(f"{checks.__name__}.{name}").probes(ctx, m))
    return out


def run_checks(ctx: Context, junit: Path, live: bool, on_bad: Callable[[Record], None]) -> list[Record]:
    plugin = ValidatePlugin(ctx, live, on_bad)
    with tempfile.TemporaryDirectory(prefix="aifactory-validate-") as tmp:
        ini = Path(tmp) / "pytest.ini"
        # Our own ini: the checks must not pick up a project's pytest settings or conftest files.
        ini.write_text(
            "[pytest]\npython_files = *.py\npython_functions = check_*\naddopts =\n"
            f"junit_suite_name = aifactory-validate-{ctx.site.name}\njunit_family = xunit1\n"
        )
        args = [
            *(str(CHECKS_DIR / f"{name}.py") for name in checks.MODULES),
            "-c", str(ini), "--rootdir", str(CHECKS_DIR), "--junitxml", str(junit),
            "-p", "no:terminal", "-p", "no:cacheprovider", "-p", "no:warnings", "-p", "no:xdist",
            "--assert=plain", "--capture=sys",
        ]  # fmt: skip
        rc = pytest.main(args, plugins=[plugin])
    if rc in (
        pytest.ExitCode.INTERNAL_ERROR,
        pytest.ExitCode.USAGE_ERROR,
        pytest.ExitCode.NO_TESTS_COLLECTED,
    ) or (rc == pytest.ExitCode.INTERRUPTED and not plugin.records):
        raise RunImpossible(f"the check suites did not run (pytest exit {int(rc)})")
    return plugin.records


def _ignore(fn: Callable[[], object]) -> None:
    with contextlib.suppress(Exception):  # remembered by Context.cached; the checks report it
        fn()


def run(
    site: Site,
    level: str = "standard",
    limit: str | None = None,
    report_dir: Path | None = None,
    drain_on_failure: bool = False,
    progress: Callable[[str], None] = print,
) -> Result:
    if level not in LEVELS:
        raise RunImpossible(f"unknown level {level!r}; known: {', '.join(LEVELS)}")
    t0 = time.monotonic()
    machines = select(site, limit)
    ctx = make_context(site, level, machines)
    progress(f"validate: {site.name}, level {level}, {len(machines)} machine(s)")
    ctx.probes = probe.reach_all(ctx.hosts)
    unreachable = {n: p.error for n, p in ctx.probes.items() if p.error}
    if unreachable:
        raise RunImpossible("unreachable: " + "; ".join(f"{n}: {e}" for n, e in sorted(unreachable.items())))
    # The Kubernetes Nodes are read while the hosts are probed (errors are kept for the checks).
    nodes = threading.Thread(target=lambda: _ignore(ctx.k8s_nodes), daemon=True)
    if site.kubernetes:
        nodes.start()
    probe.gather_all(ctx.hosts, ctx.probes, {n: commands_for(ctx, site.machine(n)) for n in ctx.hosts})
    if site.kubernetes:
        nodes.join()
    progress(f"  {len(ctx.hosts)} host(s) probed in {time.monotonic() - t0:.1f}s; running checks")

    report_dir = report_dir or paths.site_state_dir(site.name) / "validate"
    report_dir.mkdir(parents=True, exist_ok=True)
    junit, json_path = report_dir / "junit.xml", report_dir / "validate.json"
    live = sys.stderr.isatty()
    records = run_checks(ctx, junit, live, on_bad=lambda r: progress("  " + r.line()))
    result = Result(records, time.monotonic() - t0, json_path, junit)
    write_json(json_path, records, site.name, level)
    if drain_on_failure:
        from aifactory.validate import drain

        result.drained = drain.apply(ctx, records, progress)
    progress(summary(records, result.seconds))
    progress(f"reports: {json_path} {junit}")
    return result
