"""Benchmark of the Pulumi program. Prints figures and ratios; asserts nothing.

  .venv/bin/python bench/pulumi.py [--machines 64] [--machines-per-bmc 16] [--local]

- a generated site of N GPU servers (plus head and control plane) with BMCs emulated and no hosts
  (`site up --bmc-only`; --machines-per-bmc servers share one BMC process, each its own system;
  stack with configure=false and waitForSsh=false): `pulumi up` from nothing and a no-change
  `pulumi preview`;
- the engine's floor: the same resource tree whose provider does nothing (bench/floor), `up` from
  nothing (also without intermediate checkpoints) and a no-change preview, and our ratios to it;
- with --local, the seven-machine local-site shape deployed in full (power-on, Ansible, Kubernetes).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from aifactory import deploy, toolchain  # noqa: E402
from aifactory.site.generate import generate, write  # noqa: E402
from aifactory.site.validate import load_site  # noqa: E402
from sandbox import localsite  # noqa: E402
from sandbox.scratch import write_scratch_site  # noqa: E402


def timed(fn) -> tuple[float, object]:
    start = time.monotonic()
    result = fn()
    return time.monotonic() - start, result


def quiet(_: str) -> None:
    pass


def stack_template(tmp: Path, site: Path, **config: str) -> Path:
    path = tmp / f"{site.stem}-stack.yaml"
    cfg = {"aifactory:site": str(site), **{f"aifactory:{k}": v for k, v in config.items()}}
    path.write_text(yaml.safe_dump({"config": cfg}))
    return path


def pulumi_times(stack: str, template: Path) -> dict[str, float]:
    up, rc = timed(lambda: deploy.run(stack, "up", template=template))
    assert rc == 0, f"pulumi up of {stack} failed"
    preview, rc = timed(
        lambda: deploy.run(stack, "preview", template=template, extra=["--expect-no-changes"])
    )
    assert rc == 0, f"{stack}: preview found changes"
    down, _ = timed(lambda: deploy.run(stack, "destroy", template=template))
    deploy.pulumi("stack", "rm", stack, "--yes", "--force", capture=True, check=False)
    (REPO / f"Pulumi.{stack}.yaml").unlink(missing_ok=True)
    return {
        "up_from_nothing_s": round(up, 1),
        "no_change_preview_s": round(preview, 1),
        "destroy_s": round(down, 1),
    }


def floor_times(machines: int) -> dict[str, float]:
    """The engine's floor at the site's resource count: `up` from nothing, a no-change preview, and
    `up` from nothing again with PULUMI_SKIP_CHECKPOINTS (the state written once at the end rather
    than after every step): the difference is what writing the growing checkpoint costs."""
    floor = REPO / "bench" / "floor"
    env = deploy.env()
    exe = str(toolchain.BY_NAME["pulumi"].path)

    def pulumi(*args: str, **extra_env: str) -> None:
        cmd = [exe, *args, "--non-interactive"]
        r = subprocess.run(cmd, cwd=floor, env={**env, **extra_env}, capture_output=True, text=True)
        if r.returncode:
            raise SystemExit(f"floor: pulumi {' '.join(args)} failed:\n{r.stdout[-2000:]}{r.stderr[-2000:]}")

    pulumi("stack", "init", "floor", "--secrets-provider", "passphrase")
    try:
        pulumi("config", "set", "machines", str(machines), "--stack", "floor")
        up, _ = timed(lambda: pulumi("up", "--stack", "floor", "--yes", "--skip-preview"))
        preview, _ = timed(lambda: pulumi("preview", "--stack", "floor", "--expect-no-changes"))
        pulumi("destroy", "--stack", "floor", "--yes", "--skip-preview")
        unsaved, _ = timed(
            lambda: pulumi(
                "up", "--stack", "floor", "--yes", "--skip-preview", PULUMI_SKIP_CHECKPOINTS="true"
            )
        )
        pulumi("destroy", "--stack", "floor", "--yes", "--skip-preview")
    finally:
        pulumi("stack", "rm", "floor", "--yes", "--force")
        (floor / "Pulumi.floor.yaml").unlink(missing_ok=True)
    return {
        "up_from_nothing_s": round(up, 1),
        "no_change_preview_s": round(preview, 1),
        "up_from_nothing_skip_checkpoints_s": round(unsaved, 1),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--machines", type=int, default=64, help="GPU servers of the BMC-only site")
    ap.add_argument("--machines-per-bmc", type=int, default=16, help="servers per emulated BMC process")
    ap.add_argument("--local", action="store_true", help="also deploy the seven-machine site in full")
    args = ap.parse_args()
    figures: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        os.environ["PULUMI_BACKEND_URL"] = f"file://{tmp / 'state'}"
        (tmp / "state").mkdir()
        data = generate("benchbmc", args.machines, machines_per_bmc=args.machines_per_bmc)
        big = write(data, tmp / "benchbmc.yaml")
        assert localsite.up(big, progress=quiet, bmc_only=True) == 0
        try:
            tpl = stack_template(tmp, big.path, configure="false", waitForSsh="false", bmcTimeout="30")
            ours = pulumi_times("benchbmc", tpl)
        finally:
            localsite.down(big, progress=quiet)
        floor = floor_times(len(big.machines))
        figures[f"bmc_only_{args.machines}_machines"] = ours
        figures["floor"] = floor
        figures["floor_no_change_preview_s"] = floor["no_change_preview_s"]
        figures["preview_to_floor_ratio"] = round(
            ours["no_change_preview_s"] / floor["no_change_preview_s"], 2
        )
        figures["up_to_floor_ratio"] = round(ours["up_from_nothing_s"] / floor["up_from_nothing_s"], 2)
        if args.local:
            local = load_site(write_scratch_site(tmp, "benchlocal", 6))
            assert localsite.up(local, progress=quiet) == 0
            try:
                figures["local_site_7_machines"] = pulumi_times(
                    "benchlocal", stack_template(tmp, local.path, bootTimeout="90")
                )
            finally:
                localsite.down(local, progress=quiet)
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
