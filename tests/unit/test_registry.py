"""infra/registry.py against a small HTTP server that answers as a registry does (HEAD manifests)."""

import http.server
import threading

import pytest

from infra import registry

pytestmark = pytest.mark.unit

SERVED = {"/v2/aifactory/toolbox/manifests/1.0", "/v2/aifactory/op/manifests/sha256:abc"}


@pytest.fixture
def registry_url():
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self):
            ok = self.path in SERVED and "manifest" in self.headers.get("Accept", "")
            self.send_response(200 if ok else 404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_manifest_path_prefers_the_digest():
    assert registry.manifest_path("r.local/a/b:1.0") == "/v2/a/b/manifests/1.0"
    assert registry.manifest_path("r.local/a/b:1.0@sha256:ff") == "/v2/a/b/manifests/sha256:ff"
    assert registry.manifest_path("r.local:5000/a/b") == "/v2/a/b/manifests/latest"


def test_missing_names_exactly_the_images_the_registry_lacks(registry_url):
    site = registry.SITE_REGISTRY
    refs = [
        f"{site}/aifactory/toolbox:1.0",
        f"{site}/aifactory/op:0.1.0@sha256:abc",
        f"{site}/aifactory/op:0.1.0@sha256:def",
        f"{site}/aifactory/nope:1",
        "nvcr.io/nvidia/k8s-device-plugin:v0.17",  # another registry's: not checked here
    ]
    assert registry.missing(registry_url, refs) == [
        f"{site}/aifactory/op:0.1.0@sha256:def",
        f"{site}/aifactory/nope:1",
    ]


def test_an_unreachable_registry_is_an_error_not_a_missing_image():
    with pytest.raises(registry.RegistryUnreachable, match="unreachable"):
        registry.missing("http://127.0.0.1:9", [f"{registry.SITE_REGISTRY}/aifactory/toolbox:1.0"], timeout=2)
