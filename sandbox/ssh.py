"""ssh access to the emulated hosts: one site key, per-host host keys, a config with ControlMaster.

Host keys are generated here rather than on the hosts, so known_hosts is exact from the start and
ssh never has to trust on first use.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from aifactory import paths
from aifactory.site.model import Site


def ssh_dir(site: Site) -> Path:
    return paths.site_state_dir(site.name) / "ssh"


def config_path(site: Site) -> Path:
    return paths.ssh_config(site.name)


def ensure_keys(site: Site) -> tuple[str, Path]:
    """Return (site public key, dir of host keys); generate what is missing."""
    d = ssh_dir(site)
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = d / "id_ed25519"
    if not key.exists():
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"aifactory@{site.name}", "-f", str(key)],
            check=True,
        )
    host_keys = d / "host_keys"
    host_keys.mkdir(exist_ok=True)
    known = []
    for m in site.machines:
        hk = host_keys / f"{m.name}_ssh_host_ed25519_key"
        if not hk.exists():
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", m.name, "-f", str(hk)], check=True
            )
        pub = Path(str(hk) + ".pub").read_text().split()
        known.append(f"{m.name},{m.address} {pub[0]} {pub[1]}")
    (d / "known_hosts").write_text("\n".join(known) + "\n")
    write_config(site)
    return Path(str(key) + ".pub").read_text(), host_keys


def write_config(site: Site) -> None:
    d = ssh_dir(site)
    lines = []
    for m in site.machines:
        lines += [f"Host {m.name} {m.address}", f"  HostName {m.address}", ""]
    lines += [
        "Host *",
        f"  User {site.ssh_user}",
        f"  IdentityFile {d / 'id_ed25519'}",
        "  IdentitiesOnly yes",
        f"  UserKnownHostsFile {d / 'known_hosts'}",
        "  StrictHostKeyChecking yes",
        # One connection per host, reused: 15 testinfra checks take 1 s instead of 13 s.
        "  ControlMaster auto",
        f"  ControlPath {d}/cm-%h",  # not %C: its 40 hex overflow the unix socket path limit
        "  ControlPersist 120s",
        "  ConnectTimeout 5",
        "  BatchMode yes",
        "  LogLevel ERROR",
    ]
    config_path(site).write_text("\n".join(lines) + "\n")


def run(site: Site, host: str, command: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ssh", "-F", str(config_path(site)), host, command],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def close_masters(site: Site) -> None:
    for m in site.machines:
        subprocess.run(
            ["ssh", "-F", str(config_path(site)), "-O", "exit", m.name],
            capture_output=True,
            check=False,
            timeout=10,
        )
