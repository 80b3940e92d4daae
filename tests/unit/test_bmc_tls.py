"""A BMC whose certificate the site's own CA signed (`bmc.ca_bundle`): verified with that CA, refused
without it. A real TLS handshake with a small Redfish service on loopback."""

import http.server
import json
import ssl
import subprocess
import threading

import pytest

from aifactory import bmcs
from aifactory.site.validate import ERROR, check, load_site

pytestmark = pytest.mark.unit

ROOT = {"@odata.id": "/redfish/v1/", "Id": "RootService", "Name": "Root", "RedfishVersion": "1.6.0"}
REDFISH = {
    "/redfish/v1": {**ROOT, "UUID": "00000000-0000-0000-0000-000000000001",
                    "Systems": {"@odata.id": "/redfish/v1/Systems"}},
    "/redfish/v1/Systems": {"@odata.id": "/redfish/v1/Systems", "Name": "Systems", "Members@odata.count": 1,
                            "Members": [{"@odata.id": "/redfish/v1/Systems/1"}]},
    "/redfish/v1/Systems/1": {"@odata.id": "/redfish/v1/Systems/1", "Id": "1", "Name": "gpu-01",
                              "PowerState": "On"},
}  # fmt: skip


def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture
def tls_bmc(tmp_path):
    """A CA, a certificate it signs for 127.0.0.1, and a Redfish root served over HTTPS with it."""
    new_key = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    ca = ("-keyout", "ca.key", "-out", "ca.crt", "-subj", "/CN=site bmc ca", "-days", "2")
    _openssl("req", "-x509", *new_key, *ca, cwd=tmp_path)
    _openssl("req", *new_key, "-keyout", "bmc.key", "-out", "bmc.csr", "-subj", "/CN=bmc", cwd=tmp_path)
    (tmp_path / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", "bmc.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "bmc.crt", "-days", "2", "-extfile", "san.ext", cwd=tmp_path)  # fmt: skip

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = REDFISH.get(self.path.rstrip("/"))
            data = json.dumps(body).encode()
            self.send_response(200 if body else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp_path / "bmc.crt", tmp_path / "bmc.key")
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"https://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


SITE = """
name: tlstest
networks:
  - {name: mgmt, cidr: 10.40.0.0/24, gateway: 10.40.0.1}
machines:
  - name: head-01
    roles: [head]
    bmc: {endpoint: "ENDPOINT", credentials: tls-bmc CA}
    cpus: 16
    memory_gib: 64
    nics: [{name: eno1, mac: "02:af:00:00:01:0b", address: 10.40.0.11}]
"""


def _site(tmp_path, endpoint: str, ca: str | None):
    text = SITE.replace("ENDPOINT", endpoint).replace(" CA", f", ca_bundle: {ca}" if ca else "")
    (tmp_path / "site.yaml").write_text(text)
    return tmp_path / "site.yaml"


def test_the_sites_ca_verifies_its_bmc_and_nothing_else_does(tls_bmc, tmp_path):
    login = lambda m: ("admin", "secret")  # noqa: E731
    with_ca = load_site(_site(tmp_path, tls_bmc, "ca.crt"))
    assert with_ca.machines[0].bmc.tls_verify == str(tmp_path / "ca.crt")
    assert bmcs.power_states(with_ca, login) == {"head-01": "On"}
    without = load_site(_site(tmp_path, tls_bmc, None))
    for state in bmcs.power_states(without, login).values():
        assert state.startswith("unreachable") and "CERTIFICATE_VERIFY_FAILED" in state, state


def test_a_missing_or_contradicting_ca_bundle_is_an_error(tmp_path):
    findings = check(_site(tmp_path, "https://10.41.0.12", "nope.crt"))[0]
    assert [(f.level, f.path) for f in findings] == [(ERROR, "machines[0].bmc.ca_bundle")]
    (tmp_path / "ca.crt").write_text("x")
    text = (tmp_path / "site.yaml").read_text().replace("nope.crt", "ca.crt, verify_tls: false")
    (tmp_path / "site.yaml").write_text(text)
    findings = check(tmp_path / "site.yaml")[0]
    assert (ERROR, "machines[0].bmc.ca_bundle") in [(f.level, f.path) for f in findings]
