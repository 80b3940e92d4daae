"""The `aifactory` command: one entry point for operators of the factory.

Exit codes follow DeepOps' validation scripts: 0 success, 1 a check or operation failed,
2 the input was wrong or the run could not happen (nothing was changed), 130 interrupted (Ctrl-C).
An expected failure (a missing credential, a stale toolchain, a registry that does not answer) is
one line naming what and where, never a traceback. Commands that print a result take --json.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from aifactory import paths
from aifactory.report import table

DEFAULT_SITE = paths.REPO / "sites" / "local.yaml"

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def _site_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--site",
        type=Path,
        default=DEFAULT_SITE,
        help="site file (default: sites/local.yaml, the local emulated site)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aifactory",
        description=(
            "Build and run a sovereign GPU AI factory: bare-metal GPU servers through their Redfish BMCs, "
            "Slurm and Kubernetes on the same fleet, GPU quota per tenant. The local site "
            "(sites/local.yaml) emulates the hardware on this machine so every step runs for real."
        ),
        epilog="Exit codes: 0 ok, 1 something failed, 2 bad input or the run could not start, 130 "
        "interrupted. Commands that print a result take --json (the result on stdout, progress on stderr).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    site = sub.add_parser(
        "site",
        help="validate a site file; bring the local emulated hardware up or down",
        description="Site files describe machines, BMCs, networks, Slurm and Kubernetes settings.",
    )
    site_sub = site.add_subparsers(dest="site_command", required=True, metavar="ACTION")
    v = site_sub.add_parser(
        "validate",
        help="check a site file and list every finding (ERROR/WARNING) with file, path and line",
        description="Pre-flight check of a site file. Nothing is started. Exit 2 when the file fails.",
    )
    v.add_argument("file", type=Path, help="the site file to check")
    v.add_argument(
        "--validation-failure-level",
        choices=["error", "warning"],
        default="error",
        help="lowest finding level that fails validation (default: error)",
    )
    v.add_argument("--json", action="store_true", help="print findings as JSON")
    gen = site_sub.add_parser(
        "generate",
        help="write an emulated site file of any size (scale tests and benchmarks)",
        description="One head, one or three control-plane machines and N GPU servers split between the "
        "pools, on a management network just large enough inside the test range. The file is checked "
        "as `site validate` would before it is written; `site up --bmc-only` then serves its BMCs.",
    )
    gen.add_argument("--machines", type=int, required=True, help="GPU servers (at least 2)")
    gen.add_argument("--out", type=Path, required=True, help="where to write the site file")
    gen.add_argument("--name", default="scale", help="site name (default: scale)")
    gen.add_argument("--control-planes", type=int, choices=[1, 3], default=1, help="default: 1")
    gen.add_argument(
        "--kubernetes-share", type=float, default=0.5, help="share of the servers in the Kubernetes pool"
    )
    gen.add_argument("--gpus", type=int, default=8, help="GPUs per server (default: 8)")
    gen.add_argument("--model", default="h100", help="GPU model (default: h100)")
    gen.add_argument(
        "--machines-per-bmc",
        type=int,
        default=1,
        help="GPU servers that share one BMC endpoint, each its own system (default: 1); an emulated "
        "site runs one BMC process per endpoint",
    )
    up = site_sub.add_parser(
        "up",
        help="emulate the site's hardware: Redfish BMCs and powered-off Debian hosts (idempotent)",
        description=(
            "For a site marked emulated: create the bridge and guard route, the host image, one nspawn "
            "host per machine (powered off) and one Redfish BMC per machine (sushy-tools) whose power "
            "button boots or stops that host; write the Ansible inventory and ssh config. Then power "
            "machines on through their BMCs (`pulumi up` does this; `--power-on` here for a quick start)."
        ),
    )
    _site_arg(up)
    up.add_argument(
        "--power-on", action="store_true", help="power every machine on through its BMC and wait for ssh"
    )
    up.add_argument(
        "--bmc-only", action="store_true", help="emulate the BMCs alone, no hosts (Redfish-layer scale tests)"
    )
    st = site_sub.add_parser(
        "status",
        help="one table: every BMC's power state and every host's health",
        description="Ask every BMC for its power state (Redfish) and every powered-on host for its health "
        "(ssh, systemctl is-system-running). Exit 1 if any machine is unhealthy.",
    )
    _site_arg(st)
    st.add_argument("--json", action="store_true", help="print the rows as JSON")
    down = site_sub.add_parser(
        "down",
        help="stop everything of the emulated site: no process, mount, cgroup, bridge or route left",
        description="Power every host off, stop the BMCs and the mirror, unmount the host disks, remove the "
        "cgroups, bridge and guard route and the site's state; then check that nothing is left. "
        "Caches (toolchain binaries, host image) are kept.",
    )
    _site_arg(down)

    cf = sub.add_parser(
        "configure",
        help="run the playbooks on the site's machines (GPU stack, Slurm, Kubernetes) with progress",
        description=(
            "Configure the site's machines with Ansible (through ansible-runner): GPU drivers and tools, "
            "munge + Slurm with accounting on the head and the slurm pool, the Kubernetes control plane "
            "on k8s-control machines, the routed pod network, and a node (containerd + crun + kubelet) on "
            "every worker. Prints one line per task and a per-host summary; exit 1 naming the failed task "
            "and host."
        ),
    )
    _site_arg(cf)
    cf.add_argument("--limit", help="only these hosts or groups (Ansible pattern, e.g. gpu-01 or slurm_pool)")
    cf.add_argument("--check", action="store_true", help="dry run: report what would change, change nothing")
    cf.add_argument(
        "--full",
        action="store_true",
        help="run every task of site.yml even when every host is as the last run left it (repairs drift "
        "the hosts' record does not cover: a removed package, an image deleted from containerd)",
    )
    cf.add_argument(
        "--playbook", default="site.yml", help="playbook under playbooks/ (default: site.yml, everything)"
    )
    _json_arg(cf, "the per-host summary and what could not be verified")

    va = sub.add_parser(
        "validate",
        help="testinfra suites over ssh: every node, GPU acceptance, the whole cluster; JSON + JUnit reports",
        description=(
            "Check the site's machines against the site file, in parallel over ssh: OS and kernel settings, "
            "munge key, time, services per role, Slurm registration and gres.conf, Kubernetes Nodes (labels, "
            "container runtime, CNI subnet and routes, NetworkPolicy agent) and pool membership; GPU "
            "acceptance (driver branch, count and model, persistence, ECC, NVLink, DCGM diagnostics at the "
            "level's depth, NCCL bandwidth at burn-in; skipped on emulated sites, which have no GPU); a "
            "1-GPU Slurm job and pod, DNS from a pod, the tenant operator. Writes validate.json (one record "
            "per host and check) and junit.xml. Exit 0 all passed, 1 a check failed, 2 the run could not "
            "happen (bad site file, unreachable host)."
        ),
    )
    _site_arg(va)
    va.add_argument(
        "--level",
        choices=["quick", "standard", "burn-in"],
        default="standard",
        help="quick: no test jobs, DCGM level 1; standard (default): jobs, DCGM level 2; "
        "burn-in: DCGM level 3 and NCCL all_reduce_perf",
    )
    va.add_argument(
        "--drain-on-failure",
        action="store_true",
        help="drain (Slurm) / cordon (Kubernetes) each machine with a failed check, the check as reason; "
        "resume the machines an earlier run drained once they pass",
    )
    va.add_argument("--limit", help="only these machines, comma-separated (site-wide checks still run)")
    va.add_argument(
        "--report-dir", type=Path, help="where validate.json and junit.xml go (default: the site's state dir)"
    )
    _json_arg(va, "the records of validate.json")

    nd = sub.add_parser(
        "node",
        help="move a worker between the Slurm and Kubernetes pools without killing work",
        description="Act on one worker machine of the site.",
    )
    nd_sub = nd.add_subparsers(dest="node_command", required=True, metavar="ACTION")
    mv = nd_sub.add_parser(
        "move",
        help="drain a worker in one scheduler (waiting for its jobs or pods), then offer it to the other",
        description=(
            "Move a worker between pools with playbooks/node-move.yml. To kubernetes: drain it in Slurm and "
            "wait until its running jobs end, then label it aifactory.io/pool=kubernetes and uncordon it. To "
            "slurm: cordon it in Kubernetes and evict its pods, then resume it in Slurm. Its GPUs are never "
            "offered by both. Only after the move succeeded is the machine's `pool:` in the site file "
            "rewritten (that one value; comments and layout stay), so `configure` keeps the new state. "
            "A machine already in that pool gets its state re-asserted (this repairs a failed move). "
            "Exit 0 moved (or already in that pool), 1 the move failed or timed out (the message names the "
            "jobs or pods; the machine is then offered by neither scheduler until a retry or `configure`), "
            "2 bad input (unknown machine, a machine without pool, an invalid resulting site file)."
        ),
    )
    _site_arg(mv)
    mv.add_argument("machine", help="the worker to move, e.g. gpu-03")
    mv.add_argument("--to", required=True, choices=["slurm", "kubernetes"], help="the pool it serves next")
    _json_arg(mv, "the move's outcome")
    mv.add_argument(
        "--timeout",
        type=int,
        default=300,
        help="seconds to wait for running Slurm jobs or evicted pods to end (default: 300)",
    )

    dp = sub.add_parser(
        "deploy",
        help="pulumi up the site: power machines on via Redfish, configure them, populate Kubernetes",
        description=(
            "Run the Pulumi program (Pulumi.yaml, infra/) for a stack with the toolchain's Pulumi CLI, the "
            "local file state backend and the passphrase secrets provider (no SaaS account). Stack 'local' "
            "targets sites/local.yaml. Pulumi prints its own live progress and summary."
        ),
    )
    dp.add_argument("--stack", default="local", help="stack name; stacks/<stack>.yaml names the site file")
    mode = dp.add_mutually_exclusive_group()
    mode.add_argument("--preview", action="store_true", help="dry run: show what would change")
    mode.add_argument(
        "--refresh", action="store_true", help="read the real state (e.g. BMC power) into the stack"
    )
    mode.add_argument(
        "--destroy", action="store_true", help="power every machine off and remove what was deployed"
    )
    dp.add_argument("--yes", action="store_true", help="destroy without asking (scripts, CI)")
    dp.add_argument("pulumi_args", nargs="*", help="extra arguments for pulumi, after --")

    tc = sub.add_parser(
        "toolchain",
        help="build or show the binaries no registry ships (Pulumi, Kubernetes, etcd, kwok) and node images",
        description=(
            "The Pulumi CLI, its Python language host, the Kubernetes provider plugin, etcd, kube-apiserver, "
            "kube-controller-manager, kube-scheduler, kubelet, kube-proxy, CoreDNS, kube-router, pause and "
            f"kwok are built from the Go modules pinned in toolchain/ into {paths.bin_dir()} "
            "(AIFACTORY_CACHE moves it), with the node images (pause, CoreDNS, toolbox) as OCI archives. "
            "Only what a changed pin affects is rebuilt. That folder is also the offline bundle for an "
            "air-gapped site."
        ),
    )
    tc_sub = tc.add_subparsers(dest="toolchain_command", required=True, metavar="ACTION")
    b = tc_sub.add_parser(
        "build",
        help="build missing or stale binaries (cold: 20-40 min on 2 cores)",
        description="Build every binary whose pin (go.mod/go.sum, flags, Go version) changed since it was "
        "built, with progress, then register the language host and Kubernetes provider with Pulumi.",
    )
    b.add_argument("names", nargs="*", help="only these binaries (default: all)")
    b.add_argument("--force", action="store_true", help="rebuild even if up to date")
    bd = tc_sub.add_parser(
        "bundle",
        help="write the offline bundle a site's mirror serves (binaries, image archives, manifest.json)",
        description="Copy every built binary and image archive into DIR, hash each copy again against "
        "what the build recorded, and write manifest.json (versions, sha256) last. Serve DIR at the site "
        "file's bundle_url; the roles verify every download against the manifest. Exit 1 when a binary "
        "is missing or stale, 2 when DIR is a file or holds something other than a bundle.",
    )
    bd.add_argument("--out", type=Path, required=True, metavar="DIR", help="the bundle directory")
    _json_arg(bd, "the manifest")
    ts = tc_sub.add_parser(
        "status",
        help="pinned and reported version, state and path of each binary",
        description="One row per binary: pinned version, state (ok, missing, stale), the version the binary "
        "itself reports, and its path. Exit 1 unless all are ok.",
    )
    _json_arg(ts, "the rows")
    _operator_parser(sub)
    _tenants_parser(sub)
    _energy_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Progress lines of long commands must show up at once, also when piped to a log.
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)
    try:
        if args.command == "site":
            return _site(args)
        if args.command == "toolchain":
            return _toolchain(args)
        if args.command == "configure":
            return _configure(args)
        if args.command == "deploy":
            return _deploy(args)
        if args.command == "node":
            return _node(args)
        if args.command == "validate":
            return _validate(args)
        if args.command == "operator":
            return _operator(args)
        if args.command == "tenants":
            return _tenants(args)
        if args.command == "energy":
            return _energy(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:
        code = _expected_failure(e)
        if code is None:
            raise  # a bug: the traceback is for us
        print(f"aifactory {args.command}: {e}", file=sys.stderr)
        return code
    return EXIT_USAGE


def _expected_failure(e: Exception) -> int | None:
    """The exit code of a failure the user can act on (its message says what and where), or None."""
    from aifactory import credentials, images, toolchain
    from infra.registry import RegistryUnreachable
    from sandbox.hardware import HardwareError
    from sandbox.hosts import UnknownCgroupLayout

    if isinstance(e, (credentials.MissingCredentials, UnknownCgroupLayout)):
        return EXIT_USAGE
    if isinstance(e, (toolchain.ToolchainError, images.ImageError, HardwareError, RegistryUnreachable)):
        return EXIT_FAILED
    return None


def _json_arg(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--json", action="store_true", help=f"print {what} as JSON on stdout (progress goes to stderr)"
    )


def _progress(args) -> Callable[[str], None]:
    """Progress lines: stdout, or stderr when stdout carries the JSON result."""
    if getattr(args, "json", False):
        return lambda line: print(line, file=sys.stderr)
    return print


def _print_findings(findings, as_json: bool) -> None:
    if as_json:
        print(json.dumps([f.__dict__ for f in findings], indent=2))
        return
    for f in findings:
        print(f)


def load_site_or_exit(path: Path):
    """Load a site for a command that acts on it; on any ERROR print all findings and exit 2."""
    from aifactory.site.validate import ERROR, check

    findings, site = check(path)
    if site is None:
        _print_findings(findings, as_json=False)
        errors = sum(f.level == ERROR for f in findings)
        print(f"{path}: {errors} error(s); nothing was started", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)
    return site


def _site(args) -> int:
    if args.site_command == "validate":
        from aifactory.site.validate import ERROR, check

        findings, site = check(args.file)
        _print_findings(findings, args.json)
        errors = sum(f.level == ERROR for f in findings)
        warnings = len(findings) - errors
        failed = errors > 0 or (args.validation_failure_level == "warning" and warnings > 0)
        if not args.json:
            verdict = "FAILED" if failed else "ok"
            summary = f"{site.name}: {len(site.machines)} machines" if site else str(args.file)
            print(f"{verdict}: {summary}; {errors} error(s), {warnings} warning(s)")
        return EXIT_USAGE if failed else EXIT_OK

    if args.site_command == "generate":
        return _site_generate(args)

    site = load_site_or_exit(args.site)
    from sandbox import localsite

    if args.site_command == "up":
        return localsite.up(site, power_on=args.power_on, bmc_only=args.bmc_only)
    if args.site_command == "status":
        rows = localsite.status(site)
        print(json.dumps(rows, indent=2) if args.json else table(rows))
        return EXIT_OK if all(r["health"] in ("ok", "off") for r in rows) else EXIT_FAILED
    if args.site_command == "down":
        return localsite.down(site)
    return EXIT_USAGE


def _site_generate(args) -> int:
    from aifactory.site.generate import generate, write

    try:
        data = generate(
            args.name,
            args.machines,
            args.control_planes,
            args.kubernetes_share,
            args.gpus,
            args.model,
            machines_per_bmc=args.machines_per_bmc,
        )
    except ValueError as e:
        print(f"site generate: {e}", file=sys.stderr)
        return EXIT_USAGE
    site = write(data, args.out)
    gpus = sum(m.gpu_count for m in site.machines)
    print(f"{args.out}: site {site.name}, {len(site.machines)} machines, {gpus} GPUs")
    return EXIT_OK


def _configure(args) -> int:
    from aifactory import configure

    site = load_site_or_exit(args.site)
    if not (configure.PLAYBOOKS / args.playbook).exists():
        print(f"no playbook {args.playbook!r} under {configure.PLAYBOOKS}", file=sys.stderr)
        return EXIT_USAGE
    progress = _progress(args)
    try:
        result = configure.run_playbook(
            site, args.playbook, limit=args.limit, check=args.check, progress=progress, full=args.full or None
        )
    except configure.PlaybookFailed as e:
        if args.json:
            print(json.dumps(_playbook_json(e.result, failed=str(e)), indent=2))
        else:
            print(table(e.result.rows()))
        print(f"configure FAILED: {e}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print(json.dumps(_playbook_json(result), indent=2))
        return EXIT_OK
    print(table(result.rows()))
    for line in result.unverified:
        print(line)
    print(f"configure: {args.playbook} ok in {result.seconds:.0f}s, {result.changed} change(s)")
    return EXIT_OK


def _playbook_json(result, failed: str | None = None) -> dict:
    return {
        "playbook": result.playbook,
        "ok": failed is None,
        "failed": failed,
        "seconds": round(result.seconds, 1),
        "changed": result.changed,
        "hosts": result.rows(),
        "unverified": result.unverified,
    }


def _validate(args) -> int:
    from aifactory.validate import runner

    site = load_site_or_exit(args.site)
    try:
        result = runner.run(
            site,
            args.level,
            limit=args.limit,
            report_dir=args.report_dir,
            drain_on_failure=args.drain_on_failure,
            progress=_progress(args),
        )
    except runner.RunImpossible as e:
        print(f"validate: {e}; nothing was checked", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        print(result.json_path.read_text(), end="")
    return result.exit_code


def _node(args) -> int:
    from aifactory import configure, nodemove

    site = load_site_or_exit(args.site)
    if args.timeout < 0:
        print("node move: --timeout must be 0 or more seconds", file=sys.stderr)
        return EXIT_USAGE
    try:
        result = nodemove.move(site, args.machine, args.to, timeout=args.timeout, progress=_progress(args))
    except nodemove.BadMove as e:
        _print_findings(e.findings, as_json=False)
        print(f"node move: {e}; nothing was moved", file=sys.stderr)
        return EXIT_USAGE
    except configure.PlaybookFailed as e:
        print(f"node move FAILED: {e}", file=sys.stderr)
        pool = site.machine(args.machine).pool
        print(f"{args.site}: {args.machine} still says pool {pool}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print(json.dumps({**result.__dict__, "seconds": round(result.seconds, 1)}, indent=2))
        return EXIT_OK
    if not result.moved:
        print(f"node move: {args.machine} was already in the {args.to} pool; its state re-asserted")
        return EXIT_OK
    print(
        f"node move: {args.machine} moved from {result.old_pool} to {result.new_pool} "
        f"in {result.seconds:.0f}s; {args.site} updated"
    )
    return EXIT_OK


def _deploy(args) -> int:
    from aifactory import deploy, toolchain

    action = "preview" if args.preview else "refresh" if args.refresh else "destroy" if args.destroy else "up"
    if action == "destroy" and not args.yes:
        if not sys.stdin.isatty():
            print("deploy --destroy: powers every machine off; pass --yes to confirm", file=sys.stderr)
            return EXIT_USAGE
        answer = input(f"Destroy stack {args.stack}: power every machine off and remove it all? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("deploy --destroy: not confirmed; nothing was done", file=sys.stderr)
            return EXIT_USAGE
    try:
        return EXIT_OK if deploy.run(args.stack, action, extra=args.pulumi_args) == 0 else EXIT_FAILED
    except (ValueError, toolchain.ToolchainError) as e:
        print(f"deploy: {e}", file=sys.stderr)
        return EXIT_USAGE


def _toolchain(args) -> int:
    from aifactory import toolchain

    if args.toolchain_command == "build":
        unknown = [n for n in args.names if n not in toolchain.BY_NAME]
        if unknown:
            print(f"unknown binaries: {', '.join(unknown)}; known: {', '.join(toolchain.BY_NAME)}")
            return EXIT_USAGE
        toolchain.build(args.names or None, force=args.force)
        return EXIT_OK
    if args.toolchain_command == "bundle":
        out = args.out.resolve()
        try:
            man = toolchain.bundle(out, progress=_progress(args))
        except toolchain.BundleTargetError as e:
            print(f"toolchain bundle: {e}", file=sys.stderr)
            return EXIT_USAGE
        # bundle() has hashed every copy against the build's record: no second pass over 1.2 GB
        if args.json:
            print(json.dumps({"out": str(out), "files": man}, indent=2))
        return EXIT_OK
    rows = toolchain.status_rows()
    print(json.dumps(rows, indent=2) if args.json else table(rows))
    return EXIT_OK if all(r["state"] == "ok" for r in rows) else EXIT_FAILED


def _operator_parser(sub) -> None:
    op = sub.add_parser(
        "operator",
        help="the tenant operator: Tenant objects become GPU quota on Kubernetes and Slurm",
        description=(
            "The kopf tenant operator (operators/tenants). `run` installs the Tenant CRD (GPU models from "
            "the site file) into the site's cluster and runs the operator here, against the admin kubeconfig "
            "the roles fetched, with sacctmgr on the head host through ssh; `start`/`stop` do that in the "
            "background. `crd` prints the CRD."
        ),
    )
    op_sub = op.add_subparsers(dest="operator_command", required=True, metavar="ACTION")
    run = op_sub.add_parser(
        "run",
        help="install the CRD and run the operator in the foreground (JSON log lines, Ctrl-C stops)",
        description="Runs `kopf run` with the site's kubeconfig. Metrics on http://127.0.0.1:PORT/metrics.",
    )
    _site_arg(run)
    run.add_argument(
        "--policy", choices=["warn", "reject"], default="warn", help="over-commit policy (default: warn)"
    )
    run.add_argument("--drift-interval", type=float, default=60, help="seconds between drift checks")
    run.add_argument("--metrics-port", type=int, default=9108, help="Prometheus port, 0 = off (default 9108)")
    start = op_sub.add_parser(
        "start",
        help="`run` in the background (./factory up does it on the local site); log in the state dir",
        description="Starts `aifactory operator run` detached, unless it already runs for this site.",
    )
    _site_arg(start)
    stop = op_sub.add_parser("stop", help="stop the operator `start` started")
    _site_arg(stop)
    crd_p = op_sub.add_parser("crd", help="print the Tenant CRD (YAML) for the site's GPU models")
    _site_arg(crd_p)


def _operator(args) -> int:
    import os

    from operators.tenants import capacity, crd, install

    site = load_site_or_exit(args.site)
    models = sorted(capacity.site_capacity(site))
    if args.operator_command == "crd":
        print(crd.crd_yaml(models), end="")
        return EXIT_OK
    kubeconfig = paths.site_state_dir(site.name) / "kubeconfig"
    pid_file = paths.site_state_dir(site.name) / "operator" / "operator.pid"
    if args.operator_command == "stop":
        from sandbox import daemons

        daemons.stop(pid_file)
        print(f"operator: stopped for site {site.name}")
        return EXIT_OK
    if not kubeconfig.exists():
        print(f"operator: no {kubeconfig}: run `aifactory configure` first", file=sys.stderr)
        return EXIT_USAGE
    if args.operator_command == "start":
        from sandbox import daemons

        log = pid_file.parent / "operator.log"
        argv = [sys.executable, "-m", "aifactory.cli", "operator", "run", "--site", str(args.site)]
        pid = daemons.start(argv, pid_file, log)
        print(f"operator: running for site {site.name} (pid {pid}; log {log}; metrics :9108)")
        return EXIT_OK
    install.install_crd(kubeconfig, models)
    env = install.operator_env(args.site, kubeconfig, args.policy, args.drift_interval, args.metrics_port)
    cmd = install.kopf_command()
    os.execve(cmd[0], cmd, env)
    return EXIT_FAILED  # not reached


def _tenants_parser(sub) -> None:
    tn = sub.add_parser(
        "tenants",
        help="what the tenants used: GPU-hours per tenant and model on each scheduler",
        description="Reports from the Tenants' status, where the tenant operator keeps its GPU-hour ledger.",
    )
    tn_sub = tn.add_subparsers(dest="tenants_command", required=True, metavar="ACTION")
    rep = tn_sub.add_parser(
        "report",
        help="GPU-hours per tenant and model on Slurm and Kubernetes, budget used, peak, over-shoots",
        description=(
            "One row per tenant and GPU model for a period: GPU-hours on Slurm (from sacct) and on "
            "Kubernetes (pods' run times), the budget and the share of it used, the peak of GPUs held at "
            "once and the over-shoots of the entitlement; for monthly periods the tenant's energy (IT kWh, "
            "kgCO2e, litres of water: the operator's status.energy). The current period by default; a "
            "closed one by "
            "name (2026-11, 2026-Q4, 2026 or total, as the tenant's budget period runs). `--format html` "
            "adds a plot per tenant: GPU-hours per hour (current period) or day on each scheduler, and the "
            "running total against the budget. Exit 2 when no tenant has figures for the period."
        ),
    )
    _site_arg(rep)
    rep.add_argument("--period", help="a closed period's name, e.g. 2026-11 (default: the current one)")
    rep.add_argument("--tenant", action="append", help="only this tenant (repeatable; default: all)")
    rep.add_argument("--format", choices=["table", "json", "csv", "html"], default="table")
    rep.add_argument("--out", type=Path, help="write the report to this file (default: standard output)")


def _tenants(args) -> int:
    from aifactory import usage_report
    from operators.tenants import install
    from operators.tenants.spec import GROUP, PLURAL, VERSION

    site = load_site_or_exit(args.site)
    kubeconfig = paths.site_state_dir(site.name) / "kubeconfig"
    if not kubeconfig.exists():
        print(f"tenants: no {kubeconfig}: run `aifactory configure` first", file=sys.stderr)
        return EXIT_USAGE
    tenants = install.kube(kubeconfig).list(f"/apis/{GROUP}/{VERSION}/{PLURAL}")
    if args.tenant:
        tenants = [t for t in tenants if t["metadata"]["name"] in args.tenant]
    try:
        usages = usage_report.collect(tenants, args.period)
    except usage_report.NoUsage as e:
        print(f"tenants report: {e}", file=sys.stderr)
        return EXIT_USAGE
    text = usage_report.render(usages, args.format)
    if args.out:
        args.out.write_text(text)
        print(f"tenants report: {len(usages)} tenant(s), {args.format} -> {args.out}")
    else:
        print(text, end="" if text.endswith("\n") else "\n")
    return EXIT_OK


def _energy_parser(sub) -> None:
    en = sub.add_parser(
        "energy",
        help="the site's energy: kWh, CO2e and water per tenant, each feed against its budget",
        description="Energy reports from the BMCs' power readings (Prometheus on the head) and the GPUs "
        "each Slurm job and pod held.",
    )
    en_sub = en.add_subparsers(dest="energy_command", required=True, metavar="ACTION")
    rep = en_sub.add_parser(
        "report",
        help="per tenant: IT and facility kWh, kgCO2e, litres of water; the overhead; each feed's draw",
        description=(
            "Each machine's energy over the period (its BMC's readings, as Prometheus keeps them) is shared "
            "by the GPUs the tenants' Slurm jobs and pods held on it; a held GPU's idle power is its "
            "holder's. What no tenant held is the site's overhead, a row of its own. Facility energy is IT "
            "energy x PUE, CO2e each hour's energy at that hour's grid intensity, water IT energy x the "
            "site's litres per kWh (site file, power:). Each feed: its peak and mean draw against its "
            "budget. `--format html` adds plots. Exit 2 on a bad period, 1 when a source cannot be read."
        ),
    )
    _site_arg(rep)
    rep.add_argument(
        "--period",
        help="2026-12 (a month), 2026-12-05 (a day) or START/END in ISO 8601 (default: this month so far)",
    )
    rep.add_argument("--format", choices=["table", "json", "csv", "html"], default="table")
    rep.add_argument("--out", type=Path, help="write the report to this file (default: standard output)")


def _energy(args) -> int:
    import datetime as dt

    from aifactory.energy import report, sources
    from operators.tenants.slurm import SlurmError

    site = load_site_or_exit(args.site)
    try:
        start, end = report.period_bounds(args.period, dt.datetime.now(dt.UTC))
    except ValueError as e:
        print(f"energy report: {e}", file=sys.stderr)
        return EXIT_USAGE
    try:
        samples, feeds, holdings = sources.gather(site, start, end)
    except (sources.SourceError, SlurmError, OSError) as e:
        print(f"energy report: {e}", file=sys.stderr)
        return EXIT_FAILED
    text = report.render(report.build(site, start, end, samples, feeds, holdings), site, args.format)
    if args.out:
        args.out.write_text(text)
        print(f"energy report: {args.format} -> {args.out}")
    else:
        print(text, end="" if text.endswith("\n") else "\n")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
