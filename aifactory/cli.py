"""The `aifactory` command: one entry point for operators of the factory.

Exit codes follow DeepOps' validation scripts: 0 success, 1 a check or operation failed,
2 the input was wrong or the run could not happen (nothing was changed).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from aifactory import paths
from aifactory.report import table

DEFAULT_SITE = paths.REPO / "sites" / "local.yaml"

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


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
        epilog="Exit codes: 0 ok, 1 something failed, 2 bad input or the run could not start.",
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
            "on k8s-control machines and worker preparation on the kubernetes pool (kwok nodes on emulated "
            "sites). Prints one line per task and a per-host summary; exit 1 naming the failed task and host."
        ),
    )
    _site_arg(cf)
    cf.add_argument("--limit", help="only these hosts or groups (Ansible pattern, e.g. gpu-01 or slurm_pool)")
    cf.add_argument("--check", action="store_true", help="dry run: report what would change, change nothing")
    cf.add_argument(
        "--playbook", default="site.yml", help="playbook under playbooks/ (default: site.yml, everything)"
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
    dp.add_argument("pulumi_args", nargs="*", help="extra arguments for pulumi, after --")

    tc = sub.add_parser(
        "toolchain",
        help="build or show the binaries no registry ships (Pulumi, Kubernetes, etcd, kwok)",
        description=(
            "The Pulumi CLI, its Python language host, the Kubernetes provider plugin, etcd, kube-apiserver, "
            "kube-controller-manager, kube-scheduler and kwok are built from the Go modules pinned in "
            f"toolchain/ into {paths.bin_dir()} (AIFACTORY_CACHE moves it). Only what a changed pin affects "
            "is rebuilt. That folder is also the offline bundle for an air-gapped site."
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
    tc_sub.add_parser(
        "status",
        help="pinned and reported version, state and path of each binary",
        description="One row per binary: pinned version, state (ok, missing, stale), the version the binary "
        "itself reports, and its path. Exit 1 unless all are ok.",
    )
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
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_USAGE


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


def _configure(args) -> int:
    from aifactory import configure

    site = load_site_or_exit(args.site)
    if not (configure.PLAYBOOKS / args.playbook).exists():
        print(f"no playbook {args.playbook!r} under {configure.PLAYBOOKS}", file=sys.stderr)
        return EXIT_USAGE
    try:
        result = configure.run_playbook(site, args.playbook, limit=args.limit, check=args.check)
    except configure.PlaybookFailed as e:
        print(table(e.result.rows()))
        print(f"configure FAILED: {e}", file=sys.stderr)
        return EXIT_FAILED
    print(table(result.rows()))
    for line in result.unverified:
        print(line)
    print(f"configure: {args.playbook} ok in {result.seconds:.0f}s, {result.changed} change(s)")
    return EXIT_OK


def _deploy(args) -> int:
    from aifactory import deploy, toolchain

    action = "preview" if args.preview else "refresh" if args.refresh else "destroy" if args.destroy else "up"
    try:
        return EXIT_OK if deploy.run(args.stack, action, extra=args.pulumi_args) == 0 else EXIT_FAILED
    except (ValueError, toolchain.ToolchainError) as e:
        print(f"deploy: {e}", file=sys.stderr)
        return EXIT_USAGE


def _toolchain(args) -> int:
    from aifactory import toolchain

    try:
        if args.toolchain_command == "build":
            unknown = [n for n in args.names if n not in toolchain.BY_NAME]
            if unknown:
                print(f"unknown binaries: {', '.join(unknown)}; known: {', '.join(toolchain.BY_NAME)}")
                return EXIT_USAGE
            toolchain.build(args.names or None, force=args.force)
            return EXIT_OK
        rows = toolchain.status_rows()
        print(table(rows))
        return EXIT_OK if all(r["state"] == "ok" for r in rows) else EXIT_FAILED
    except toolchain.ToolchainError as e:
        print(f"toolchain: {e}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
