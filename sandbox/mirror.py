"""The site's artifact mirror: how an air-gapped site hands the toolchain bundle to its hosts.

The emulated site serves the toolchain's bin directory over HTTP on the bridge address, with a
manifest of versions and sha256 sums; the roles download from `bundle_url` and verify each sum,
exactly as they would from a real site's internal mirror.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from urllib.parse import urlparse

from aifactory import paths, toolchain
from aifactory.site.model import Site
from sandbox import daemons


def mirror_dir(site: Site) -> Path:
    return paths.site_state_dir(site.name) / "mirror"


def publish(site: Site) -> dict[str, dict[str, str]]:
    """Link the built binaries into the mirror and write manifest.json; return the manifest."""
    url = urlparse(site.bundle_url or "")
    bundle = mirror_dir(site) / url.path.strip("/")
    bundle.mkdir(parents=True, exist_ok=True)
    man = toolchain.manifest()
    for name in man:
        link = bundle / name
        link.unlink(missing_ok=True)
        link.symlink_to(paths.bin_dir() / name)
    (bundle / "manifest.json").write_text(json.dumps(man, indent=2, sort_keys=True))
    return man


def start(site: Site) -> int:
    url = urlparse(site.bundle_url or "")
    if not url.hostname or url.hostname != str(site.management.gateway):
        raise ValueError(
            f"bundle_url {site.bundle_url!r} must point at the bridge address {site.management.gateway}"
        )
    d = mirror_dir(site)
    argv = [
        sys.executable,
        "-m",
        "http.server",
        "--bind",
        url.hostname,
        "--directory",
        str(d),
        str(url.port or 80),
    ]
    return daemons.start(argv, d / "mirror.pid", d / "mirror.log")


def stop(site: Site) -> None:
    daemons.stop(mirror_dir(site) / "mirror.pid")
