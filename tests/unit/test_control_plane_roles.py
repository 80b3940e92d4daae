"""The control-plane roles' templates for a site with three control-plane machines (the example
site), rendered by Ansible with the variables its inventory gives: one etcd cluster over TLS with a
member per machine, and keepalived holding the site's API address."""

import pytest
import yaml

from aifactory import inventory
from aifactory.site.validate import load_site
from tests.conftest import REPO
from tests.unit.ansible_local import run_local

pytestmark = pytest.mark.unit

ROLE = REPO / "playbooks" / "roles" / "k8s_control_plane"
EXAMPLE = REPO / "sites" / "example-groningen.yaml"


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("render")
    out = tmp / "out"
    out.mkdir()
    role_vars = {
        **yaml.safe_load((ROLE / "defaults" / "main.yml").read_text()),
        **yaml.safe_load((ROLE / "vars" / "main.yml").read_text()),
        "k8s_control_plane_vrrp_interface": "eno1",
        "k8s_control_plane_vrrp_prefix": "22",
    }
    tasks = [
        {
            "ansible.builtin.template": {
                "src": str(ROLE / "templates" / template),
                "dest": str(out / ("{{ inventory_hostname }}-" + template.removesuffix(".j2"))),
                "mode": "0644",
            }
        }
        for template in ("etcd.service.j2", "keepalived.conf.j2", "kube-apiserver.service.j2")
    ]
    play = [{"hosts": "k8s_control", "gather_facts": False, "vars": role_vars, "tasks": tasks}]
    (tmp / "render.yml").write_text(yaml.safe_dump(play))
    r = run_local(tmp, tmp / "render.yml", inventory=inventory.render(load_site(EXAMPLE)))
    assert r.status == "successful", r.stdout.read()[-3000:]
    return out


def test_etcd_has_a_tls_member_on_each_control_plane_machine(rendered):
    unit = (rendered / "k8s-cp-02-etcd.service").read_text()
    assert (
        "--initial-cluster=k8s-cp-01=https://10.40.0.12:2380,k8s-cp-02=https://10.40.0.13:2380,"
        "k8s-cp-03=https://10.40.0.14:2380 \\" in unit
    )
    assert "--listen-client-urls=https://127.0.0.1:2379,https://10.40.0.13:2379 \\" in unit
    for flag in ("--client-cert-auth=true", "--peer-client-cert-auth=true"):
        assert flag in unit
    assert "--trusted-ca-file=/etc/kubernetes/pki/etcd-ca.crt" in unit
    assert "http://" not in unit


def test_the_apiserver_uses_etcd_over_tls_and_encrypts_secrets(rendered):
    unit = (rendered / "k8s-cp-01-kube-apiserver.service").read_text()
    assert "--etcd-servers=https://127.0.0.1:2379" in unit
    assert "--etcd-certfile=/etc/kubernetes/pki/apiserver-etcd-client.crt" in unit
    assert "--encryption-provider-config=/etc/kubernetes/encryption-config.yaml" in unit


def test_keepalived_holds_the_api_address_among_the_control_plane_machines(rendered):
    confs = {h: (rendered / f"{h}-keepalived.conf").read_text() for h in ("k8s-cp-01", "k8s-cp-02")}
    conf = confs["k8s-cp-02"]
    assert "10.40.0.10/22 dev eno1" in conf
    assert "unicast_src_ip 10.40.0.13" in conf
    peers = conf.split("unicast_peer {")[1].split("}")[0].split()
    assert peers == ["10.40.0.12", "10.40.0.14"]
    assert "state BACKUP" in conf and "nopreempt" in conf
    # distinct priorities, so one machine wins an election
    assert "priority 150" in confs["k8s-cp-01"] and "priority 149" in conf
