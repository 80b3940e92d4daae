import textwrap

import pytest
import yaml

from aifactory.site.validate import ERROR, WARNING, SiteInvalid, check, load_site
from tests.conftest import REPO

pytestmark = pytest.mark.unit

LOCAL = REPO / "sites" / "local.yaml"


def mutate(write_site, fn):
    """The local site file with one change applied."""
    data = yaml.safe_load(LOCAL.read_text())
    fn(data)
    return write_site(yaml.safe_dump(data, sort_keys=False))


def messages(path):
    findings, _ = check(path)
    return [(f.level, f.path, f.message) for f in findings]


def test_shipped_sites_are_valid():
    for name in ("local.yaml", "local-ha.yaml", "example-groningen.yaml"):
        findings, site = check(REPO / "sites" / name)
        assert findings == [], findings
        assert site is not None
    local = load_site(LOCAL)
    assert local.emulated
    assert [m.name for m in local.with_role("head")] == ["head-01"]
    assert len(local.in_pool("slurm")) == 4 and len(local.in_pool("kubernetes")) == 2
    assert all(m.gpu_model == "h100" and m.gpu_count == 8 for m in local.with_role("gpu"))
    real = load_site(REPO / "sites" / "example-groningen.yaml")
    assert len(real.with_role("gpu")) == 64 and not real.emulated
    assert len(real.with_role("k8s-control")) == 3 and real.api_host == "10.40.0.10"
    assert local.api_host == "198.18.0.11"  # one control-plane machine: its own address


HA = REPO / "sites" / "local-ha.yaml"


def ha_with(write_site, fn):
    data = yaml.safe_load(HA.read_text())
    fn(data)
    return write_site(yaml.safe_dump(data, sort_keys=False))


def test_several_control_planes_need_an_api_address(write_site):
    p = ha_with(write_site, lambda d: d["kubernetes"].pop("api_address"))
    ((level, msg),) = [(lvl, m) for lvl, path, m in messages(p) if path == "kubernetes.api_address"]
    assert level == ERROR and msg.startswith("is required with 3 k8s-control machines")


@pytest.mark.parametrize(
    "address, problem",
    [
        ("198.18.0.300", "'198.18.0.300' is not an IPv4 address"),
        ("10.0.0.10", "10.0.0.10 is not a free host address of the management network 198.18.0.0/24"),
        ("198.18.0.1", "198.18.0.1 is not a free host address of the management network 198.18.0.0/24"),
        ("198.18.0.255", "198.18.0.255 is not a free host address of the management network 198.18.0.0/24"),
        ("198.18.0.12", "198.18.0.12 is the address of machine cp-02; the API address must be free"),
    ],
)
def test_api_address_must_be_a_free_management_address(write_site, address, problem):
    p = ha_with(write_site, lambda d: d["kubernetes"].update(api_address=address))
    assert (ERROR, "kubernetes.api_address", problem) in messages(p)


def test_duplicate_address_names_both_places(write_site):
    p = mutate(write_site, lambda d: d["machines"][2]["nics"][0].update(address="198.18.0.11"))
    (level, path, msg), *_ = [m for m in messages(p) if "duplicate address" in m[2]]
    assert level == ERROR and path == "machines[2].nics[0].address"
    assert "machines[0].nics[0].address" in msg


def test_impossible_gpu_count(write_site):
    p = mutate(write_site, lambda d: d["machines"][1]["gpus"].update(count=9))
    assert (ERROR, "machines[1].gpus.count", "h100 servers come with 1, 2, 4, 8 GPUs, not 9") in messages(p)


def test_unknown_role_suggests_the_right_one(write_site):
    p = mutate(write_site, lambda d: d["machines"][1].update(roles=["gpus"]))
    found = [m for m in messages(p) if m[1] == "machines[1].roles[0]"]
    assert found and "did you mean 'gpu'" in found[0][2]


def test_pool_with_no_machines(write_site):
    def all_kubernetes(d):
        for m in d["machines"][1:]:
            m["pool"] = "kubernetes"

    p = mutate(write_site, all_kubernetes)
    assert any(lvl == ERROR and path == "slurm" and "no machines" in msg for lvl, path, msg in messages(p))


def test_slurm_pool_needs_a_head(write_site):
    p = mutate(write_site, lambda d: d["machines"][0].update(roles=["k8s-control"]))
    assert (
        ERROR,
        "machines",
        "the slurm pool needs a machine with role head (slurmctld, slurmdbd)",
    ) in messages(p)


def test_emulated_site_must_stay_in_the_guarded_range(write_site):
    def move(d):
        d["networks"][0]["cidr"] = "10.1.0.0/24"
        d["networks"][0]["gateway"] = "10.1.0.1"

    p = mutate(write_site, move)
    assert any("198.18.0.0/15" in msg for _, path, msg in messages(p) if path == "networks[0].cidr")


def test_every_finding_is_listed_with_line_numbers(write_site):
    p = write_site(
        textwrap.dedent(
            """\
            name: x
            emulated: false
            networks: [{name: mgmt, cidr: 10.0.0.0/24}]
            machines:
              - name: a
                roles: [gpu]
                pool: slurm
                bmc: {endpoint: "ftp://bmc", credentials: c}
                cpus: two
                memory_gib: 8
                gpus: {model: h100, count: 8}
                nics: [{name: eno1, mac: "02:00:00:00:00:01", address: 10.0.0.9}]
                colour: red
            """
        )
    )
    findings, site = check(p)
    assert site is None
    by_path = {f.path: f for f in findings}
    assert by_path["machines[0].cpus"].line == 9
    assert "must be an integer" in by_path["machines[0].cpus"].message
    assert by_path["machines[0].colour"].line == 13
    assert "Redfish service root" in by_path["machines[0].bmc.endpoint"].message
    with pytest.raises(SiteInvalid) as e:
        load_site(p)
    assert len(e.value.findings) == len(findings) == 3


def test_warnings_fail_only_at_warning_level(write_site):
    p = mutate(write_site, lambda d: d["slurm"].update(accounting_enforce="associations"))
    findings, site = check(p)
    assert [f.level for f in findings] == [WARNING] and site is not None
    load_site(p)  # default level: warnings pass
    with pytest.raises(SiteInvalid):
        load_site(p, failure_level=WARNING)


@pytest.mark.parametrize(
    "text,expected",
    [
        ("", "must be a mapping"),
        ("name: [unclosed", "not valid YAML"),
        ("- a\n- b\n", "must be a mapping"),
    ],
)
def test_not_a_site_at_all(write_site, text, expected):
    findings, site = check(write_site(text))
    assert site is None and expected in findings[0].message


def test_missing_file(tmp_path):
    findings, _ = check(tmp_path / "nope.yaml")
    assert findings[0].message == "file not found"


def test_pod_subnets_follow_the_management_address():
    from aifactory import inventory

    site = load_site(LOCAL)
    hosts = inventory.render(site)["all"]["hosts"]
    # 198.18.0.16 is address 16 of the management network: pod subnet 16 of 10.244.0.0/16.
    assert hosts["gpu-05"]["k8s_pod_cidr"] == "10.244.16.0/24"
    assert "k8s_pod_cidr" not in hosts["head-01"]  # no pool: runs no pods
    cidrs = [h["k8s_pod_cidr"] for h in hosts.values() if "k8s_pod_cidr" in h]
    assert len(set(cidrs)) == len(cidrs)


def test_the_inventory_becomes_root_only_for_a_user_that_is_not(write_site):
    """Root needs no sudo: every task on every host would pay a process for nothing."""
    from aifactory import inventory

    assert inventory.render(load_site(LOCAL))["all"]["vars"]["ansible_become"] is False
    admin = load_site(mutate(write_site, lambda d: d.update(ssh_user="admin")))
    assert "ansible_become" not in inventory.render(admin)["all"]["vars"]


def test_pod_cidr_overlapping_services_or_too_small(write_site):
    p = mutate(write_site, lambda d: d["kubernetes"].update(pod_cidr="10.96.0.0/12"))
    assert (ERROR, "kubernetes.pod_cidr", "10.96.0.0/12 overlaps service_cidr 10.96.0.0/16") in messages(p)
    p = mutate(write_site, lambda d: d["kubernetes"].update(pod_cidr="10.244.0.0/28", node_pod_prefix=28))
    found = [m for m in messages(p) if m[1] == "kubernetes.node_pod_prefix"]
    assert found and "longer than pod_cidr's /28" in found[0][2]
    p = mutate(write_site, lambda d: d["kubernetes"].update(pod_cidr="10.244.0.0/20"))
    found = [m for m in messages(p) if m[1] == "kubernetes.pod_cidr"]
    assert found and "has 16 node subnets of /24; gpu-05 (198.18.0.16) needs number 16" in found[0][2]


@pytest.mark.parametrize(
    "endpoint, ok",
    [
        ("http://127.0.0.1:8199", True),
        ("http://198.18.0.1:8199", True),  # the bridge: the management gateway
        ("http://198.18.0.12:8101", False),  # a host's address: the BMC runs on this machine
        ("http://10.1.0.17", False),
    ],
)
def test_emulated_bmcs_listen_on_loopback_or_the_bridge(write_site, endpoint, ok):
    p = mutate(write_site, lambda d: d["machines"][1]["bmc"].update(endpoint=endpoint))
    found = [m for _, path, m in messages(p) if path == "machines[1].bmc.endpoint"]
    assert (found == []) is ok, found
