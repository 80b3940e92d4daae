"""A highly available control plane on a real emulated site: sites/local-ha.yaml (three
control-plane machines, two workers) moved to scratch index 3 and deployed by `pulumi up`.

One control-plane machine, the one holding the API address, is powered off through its BMC: the
API keeps answering at the site's API address and accepts writes. Powered on again, the machine
rejoins etcd and its own apiserver serves what was written while it was away.
"""

from __future__ import annotations

import json
import time

import pytest
import sushy
import testinfra
import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from aifactory import bmcs, paths
from aifactory.site.model import Machine, Site
from aifactory.site.validate import load_site
from sandbox import localsite, ssh
from sandbox.scratch import scratch_site
from tests.conftest import REPO
from tests.site.conftest import (
    clear_leftovers,
    etcd_request,
    pulumi_deployed,
    say,
    skip_unless_root,
    wait_until,
)

pytestmark = pytest.mark.site


@pytest.fixture(scope="module")
def ha_site(tmp_path_factory, request):
    skip_unless_root()
    tmp = tmp_path_factory.mktemp("ciha")
    path = tmp / "ciha.yaml"
    path.write_text(yaml.safe_dump(scratch_site("ciha", 3, base=REPO / "sites" / "local-ha.yaml")))
    site = load_site(path)
    clear_leftovers(site)
    try:
        assert localsite.up(site) == 0, "site up of the HA site failed (see output above)"
        with pulumi_deployed(site, tmp, request):
            yield site
    finally:
        assert localsite.down(site) == 0


def _host(site: Site, m: Machine):
    return testinfra.get_host(f"ssh://{m.name}", ssh_config=str(ssh.config_path(site)))


def _api(site: Site, address: str | None = None) -> client.CoreV1Api:
    """The admin's API client, at the site's API address or at one machine's own apiserver."""
    cfg = client.Configuration()
    config.load_kube_config(str(paths.site_state_dir(site.name) / "kubeconfig"), client_configuration=cfg)
    if address:
        cfg.host = f"https://{address}:{site.kubernetes.api_port}"
    cfg.retries = False
    return client.CoreV1Api(client.ApiClient(cfg))


def _holders(site: Site, off: Machine | None = None) -> list[Machine]:
    """The control-plane machines holding the API address (asked of those not powered off)."""
    address = str(site.kubernetes.api_address)
    return [
        m
        for m in site.with_role("k8s-control")
        if m != off and _host(site, m).run(f"ip -o -4 addr show to {address}").stdout.strip()
    ]


def _etcd(site: Site, m: Machine, path: str) -> dict:
    result = etcd_request(_host(site, m), path)
    assert result.rc == 0, result.stderr
    return json.loads(result.stdout)


def _write(api: client.CoreV1Api, name: str) -> None:
    body = client.V1ConfigMap(metadata=client.V1ObjectMeta(name=name), data={"written": name})
    api.create_namespaced_config_map("default", body, _request_timeout=(3, 5))


def _wrote(api: client.CoreV1Api, name: str) -> bool:
    try:
        _write(api, name)
        return True
    except (ApiException, HTTPError, OSError):  # the address moving, or a 5xx while etcd elects
        return False


def _power(m: Machine, action: str) -> None:
    bmcs.system(m, *bmcs.store_login(m)).reset_system(action)


def test_the_api_address_is_on_exactly_one_control_plane_machine(ha_site):
    assert len(_holders(ha_site)) == 1
    kubeconfig = yaml.safe_load((paths.site_state_dir(ha_site.name) / "kubeconfig").read_text())
    assert kubeconfig["clusters"][0]["cluster"]["server"] == f"https://{ha_site.kubernetes.api_address}:6443"


def test_etcd_has_a_tls_member_on_every_control_plane_machine(ha_site):
    first = ha_site.with_role("k8s-control")[0]
    members = _etcd(ha_site, first, "/v3/cluster/member/list")["members"]
    assert sorted(m["name"] for m in members) == ["cp-01", "cp-02", "cp-03"]
    assert all(url.startswith("https://") for m in members for url in m["peerURLs"] + m["clientURLs"])


def test_the_api_survives_a_control_plane_machine_powered_off_and_it_rejoins(ha_site, request):
    api = _api(ha_site)
    _write(api, "before-power-off")
    (gone,) = _holders(ha_site)
    _power(gone, sushy.RESET_FORCE_OFF)
    wait_until(lambda: bmcs.power_states(ha_site)[gone.name] == "Off", 60, f"{gone.name} powered off")

    started = time.monotonic()
    wait_until(lambda: _wrote(api, "while-one-is-off"), 90, "a write through the site's API address")
    say(request, f"\nAPI writable again {time.monotonic() - started:.1f} s after {gone.name} was powered off")
    (holder,) = _holders(ha_site, off=gone)
    before = api.read_namespaced_config_map("before-power-off", "default")
    assert before.data == {"written": "before-power-off"}

    _power(gone, sushy.RESET_ON)
    wait_until(lambda: bmcs.power_states(ha_site)[gone.name] == "On", 30, f"{gone.name} powered on")
    own = _api(ha_site, gone.address)

    def serves_what_was_written():
        try:
            return own.read_namespaced_config_map("while-one-is-off", "default", _request_timeout=(3, 5)).data
        except (ApiException, HTTPError, OSError):  # booting, or etcd still catching up
            return None

    started = time.monotonic()
    served = wait_until(serves_what_was_written, 240, f"{gone.name}'s apiserver")
    say(
        request,
        f"{gone.name} powered on: its apiserver served the write after {time.monotonic() - started:.0f} s",
    )
    assert served == {"written": "while-one-is-off"}
    health = _etcd(ha_site, gone, "/v3/maintenance/status")
    assert health["header"]["member_id"] and not health.get("errors")
    # nopreempt: the returning machine does not take the API address back
    assert _holders(ha_site) == [holder]
