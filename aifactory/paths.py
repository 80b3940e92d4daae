"""Where aifactory keeps things outside the repository.

Caches (built binaries, host images) survive `site down`; state (a running site's processes,
overlays, keys) belongs to one site and is removed by `site down`.
"""

import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def cache_dir() -> Path:
    return Path(os.environ.get("AIFACTORY_CACHE", Path.home() / ".cache" / "aifactory"))


def bin_dir() -> Path:
    return cache_dir() / "bin"


def state_dir() -> Path:
    return Path(os.environ.get("AIFACTORY_STATE", Path.home() / ".local" / "state" / "aifactory"))


def site_state_dir(site_name: str) -> Path:
    return state_dir() / "sites" / site_name


def credentials_dir() -> Path:
    return Path(
        os.environ.get("AIFACTORY_CREDENTIALS_DIR", Path.home() / ".config" / "aifactory" / "credentials")
    )


def ssh_config(site_name: str) -> Path:
    """The ssh config the local site writes for its hosts (real sites use the operator's own)."""
    return site_state_dir(site_name) / "ssh" / "config"
