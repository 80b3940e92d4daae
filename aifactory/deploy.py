"""Run the Pulumi program (`Pulumi.yaml`, `infra/`) with sovereign state and the built CLI.

State lives in the local file backend (`~/.local/state/aifactory/pulumi`, or PULUMI_BACKEND_URL for
an S3-compatible bucket on site storage) and secrets use the passphrase provider, its passphrase in
the credentials store: no SaaS account is involved anywhere.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from pathlib import Path

import yaml

from aifactory import paths, toolchain


def backend_url() -> str:
    return os.environ.get("PULUMI_BACKEND_URL") or f"file://{paths.state_dir() / 'pulumi'}"


def passphrase_file() -> Path:
    path = paths.credentials_dir() / "pulumi-passphrase"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32))
    return path


def env() -> dict[str, str]:
    if backend_url().startswith("file://"):
        Path(backend_url()[len("file://") :]).mkdir(parents=True, exist_ok=True)
    extra = {"PULUMI_BACKEND_URL": backend_url()}
    if "PULUMI_CONFIG_PASSPHRASE" not in os.environ:
        extra["PULUMI_CONFIG_PASSPHRASE_FILE"] = str(
            os.environ.get("PULUMI_CONFIG_PASSPHRASE_FILE") or passphrase_file()
        )
    return toolchain.pulumi_env(extra)


def pulumi(*args: str, capture: bool = False, check: bool = True) -> subprocess.CompletedProcess[str]:
    exe = toolchain.BY_NAME["pulumi"].path
    if not exe.exists():
        raise toolchain.ToolchainError("the Pulumi CLI is not built: run `aifactory toolchain build`")
    return subprocess.run(
        [str(exe), *args, "--non-interactive"],
        cwd=paths.REPO,
        env=env(),
        text=True,
        capture_output=capture,
        check=check,
    )


def ensure_stack(stack: str) -> None:
    listed = pulumi("stack", "ls", "--json", capture=True)
    if f'"name": "{stack}"' not in listed.stdout:
        pulumi("stack", "init", stack, "--secrets-provider", "passphrase", capture=True)


def stack_file(stack: str, template: Path | None = None) -> Path:
    """Write Pulumi.<stack>.yaml from the tracked template (stacks/<stack>.yaml) plus this machine's salt.

    The passphrase provider keeps its salt in the stack file; it belongs to this machine's state
    and passphrase, so the effective file is generated (and git-ignored) while the template is tracked.
    """
    template = template or paths.REPO / "stacks" / f"{stack}.yaml"
    if not template.exists():
        raise ValueError(f"no stack template {template} (stacks/<stack>.yaml)")
    effective = paths.REPO / f"Pulumi.{stack}.yaml"
    data = yaml.safe_load(template.read_text()) or {}
    if effective.exists():
        salt = (yaml.safe_load(effective.read_text()) or {}).get("encryptionsalt")
        if salt:
            data["encryptionsalt"] = salt
    effective.write_text(
        f"# generated from {template} by `aifactory deploy`; edit that file\n" + yaml.safe_dump(data)
    )
    return effective


def run(
    stack: str, action: str, yes: bool = True, extra: list[str] | None = None, template: Path | None = None
) -> int:
    """action: up, preview, refresh or destroy. Pulumi prints its own live progress."""
    stack_file(stack, template)
    ensure_stack(stack)
    args = [action, "--stack", stack, *(extra or [])]
    if yes and action in ("up", "refresh", "destroy"):
        args += ["--yes", "--skip-preview"] if action != "refresh" else ["--yes"]
    return pulumi(*args, check=False).returncode
