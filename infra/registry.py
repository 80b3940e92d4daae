"""`ServedImages`: a deploy stops, naming the image, when the site registry lacks one it would run.

Kubelets pull every image from the site registry (site_registry role, on the head). A workload whose
image the registry lacks would wait in ImagePullBackOff while `pulumi up` reports success, so before
anything runs them this resource asks the registry for each image's manifest (the OCI distribution
API: HEAD /v2/<name>/manifests/<tag or digest>) and fails the deploy listing the missing ones.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

import pulumi
import pulumi.dynamic as dynamic

from aifactory.images import MEDIA_INDEX, MEDIA_MANIFEST, SITE_REGISTRY

# What a registry may hold for a ref: an OCI index or manifest, or Docker's schema 2 equivalents.
ACCEPT = ", ".join(
    (
        MEDIA_INDEX,
        MEDIA_MANIFEST,
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    )
)


class RegistryUnreachable(RuntimeError):
    pass


def manifest_path(ref: str) -> str:
    """`registry/name:tag@digest` -> `/v2/name/manifests/<digest, else tag>`."""
    name = ref.split("/", 1)[1]
    name, _, digest = name.partition("@")
    last = name.rsplit("/", 1)[-1]
    tag = "latest"
    if ":" in last:
        name, tag = name.rsplit(":", 1)
    return f"/v2/{name}/manifests/{digest or tag}"


def missing(registry_url: str, refs: Sequence[str], timeout: float = 10) -> list[str]:
    """The refs (of the site registry's name) that the registry at `registry_url` does not serve."""
    absent = []
    for ref in refs:
        if not ref.startswith(SITE_REGISTRY + "/"):
            continue  # another registry's image: not ours to check
        req = urllib.request.Request(
            registry_url.rstrip("/") + manifest_path(ref), method="HEAD", headers={"Accept": ACCEPT}
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout):
                pass
        except urllib.error.HTTPError as e:
            if e.code != 404:
                raise RegistryUnreachable(f"site registry {registry_url}: {ref}: HTTP {e.code}") from None
            absent.append(ref)
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise RegistryUnreachable(f"site registry {registry_url} unreachable: {reason}") from None
    return absent


def _check(props: dict[str, Any]) -> None:
    try:
        absent = missing(props["registry_url"], props["refs"])
    except RegistryUnreachable as e:
        raise Exception(f"{e}: run `aifactory configure` (role site_registry)") from None
    if absent:
        raise Exception(
            f"the site registry {props['registry_url']} lacks {', '.join(absent)}: run `aifactory "
            "toolchain build` and `aifactory configure` (role site_registry pushes the bundle's images)"
        )


class _Provider(dynamic.ResourceProvider):
    def create(self, props: dict[str, Any]) -> dynamic.CreateResult:
        _check(props)
        return dynamic.CreateResult(id_="served-images", outs=props)

    def diff(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> dynamic.DiffResult:
        keys = ("registry_url", "refs")
        return dynamic.DiffResult(changes=any(olds.get(k) != news.get(k) for k in keys))

    def update(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> dynamic.UpdateResult:
        _check(news)
        return dynamic.UpdateResult(outs=news)


class ServedImages(dynamic.Resource):
    """Checked when created and whenever the refs change; workloads depend on it."""

    def __init__(
        self, name: str, registry_url: str, refs: Sequence[str], opts: pulumi.ResourceOptions | None = None
    ):
        super().__init__(_Provider(), name, {"registry_url": registry_url, "refs": sorted(refs)}, opts)
