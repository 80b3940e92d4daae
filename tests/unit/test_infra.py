"""Wiring of the Pulumi components under `pulumi.runtime.set_mocks` (no engine, no BMC)."""

import pulumi
import pytest

from aifactory.site.validate import load_site
from tests.conftest import REPO

pytestmark = pytest.mark.unit

CREATED: list[tuple[str, str, dict]] = []


class Mocks(pulumi.runtime.Mocks):
    def new_resource(self, args: pulumi.runtime.MockResourceArgs):
        CREATED.append((args.typ, args.name, args.inputs))
        outputs = dict(args.inputs)
        if args.typ == "pulumi-python:dynamic:Resource" and "kubeconfig_path" in outputs:
            outputs["kubeconfig_path"] = None
        return [f"{args.name}-id", outputs]

    def call(self, args: pulumi.runtime.MockCallArgs):
        return {}


pulumi.runtime.set_mocks(Mocks(), preview=False)

from infra.site import AiFactorySite, AiFactorySiteArgs  # noqa: E402 - after set_mocks

SITE = load_site(REPO / "sites" / "local.yaml")
CREDS = {"local-bmc": ("admin", pulumi.Output.secret("s3cret-password"))}


@pytest.fixture(autouse=True)
def _clear():
    CREATED.clear()


def _by_type(typ):
    return [(name, inputs) for t, name, inputs in CREATED if t == typ]


@pulumi.runtime.test
def test_every_machine_gets_a_bmc_resource_under_its_pool():
    site = AiFactorySite("local", AiFactorySiteArgs(SITE, CREDS, configure=False))
    assert set(site.pools) == {"services", "slurm", "kubernetes"}
    assert sorted(site.pools["slurm"].machines) == ["gpu-01", "gpu-02", "gpu-03", "gpu-04"]
    bm = site.pools["kubernetes"].machines["gpu-05"]

    pool = site.pools["kubernetes"]

    def check(args):
        urn, bm_urn, pool_urn, password_secret = args
        # A URN's type names its parent's type: dynamic resource < BareMetalMachine < NodePool < Site.
        assert urn.endswith("aifactory:infra:BareMetalMachine$pulumi-python:dynamic:Resource::gpu-05-bmc")
        assert bm_urn.endswith("aifactory:infra:NodePool$aifactory:infra:BareMetalMachine::gpu-05")
        assert pool_urn.endswith("aifactory:infra:Site$aifactory:infra:NodePool::local-kubernetes")
        assert password_secret is True
        inputs = dict(_by_type("pulumi-python:dynamic:Resource"))["gpu-05-bmc"]
        assert inputs["endpoint"] == "http://127.0.0.1:8106" and inputs["gpu_count"] == 8
        assert inputs["address"] == "198.18.0.16"
        assert len(_by_type("aifactory:infra:BareMetalMachine")) == len(SITE.machines)

    return pulumi.Output.all(bm.bmc.urn, bm.urn, pool.urn, bm.bmc.password.is_secret()).apply(check)


@pulumi.runtime.test
def test_configuration_waits_for_machines_and_feeds_kubernetes():
    site = AiFactorySite("local", AiFactorySiteArgs(SITE, CREDS))

    layer = site.kubernetes
    children = [r.urn for r in (*layer.priority_classes, *layer.node_patches)]

    def check(args):
        _, layer_urn, *_ = args
        inputs = dict(_by_type("pulumi-python:dynamic:Resource"))["local-configuration"]
        assert inputs["playbook"] == "site.yml"
        assert inputs["machines"] == [m.name for m in SITE.machines]
        assert len(inputs["site_digest"]) == 16 and len(inputs["playbooks_digest"]) == 16
        assert layer_urn.endswith("aifactory:infra:Site$aifactory:infra:KubernetesLayer::local-kubernetes")
        priority = [n for n, _ in _by_type("kubernetes:scheduling.k8s.io/v1:PriorityClass")]
        assert priority == ["aifactory-gpu-production", "aifactory-gpu-batch", "aifactory-gpu-opportunistic"]
        patches = dict(_by_type("kubernetes:core/v1:NodePatch"))
        assert set(patches) == {"node-gpu-05", "node-gpu-06"}
        assert patches["node-gpu-05"]["metadata"]["labels"]["aifactory.io/gpu-model"] == "h100"
        assert patches["node-gpu-05"]["spec"]["taints"][0]["key"] == "nvidia.com/gpu"
        assert not _by_type("kubernetes:apps/v1:DaemonSet")  # emulated: kwok advertises the GPUs

    return pulumi.Output.all(site.configuration.urn, layer.urn, *children).apply(check)


@pulumi.runtime.test
def test_real_site_gets_the_device_plugin():
    real = load_site(REPO / "sites" / "example-groningen.yaml")
    creds = {"hall-a-bmc": ("ops", pulumi.Output.secret("x"))}
    site = AiFactorySite("g", AiFactorySiteArgs(real, creds, device_plugin_image="reg/dp:v1"))

    def check(_):
        ((name, inputs),) = _by_type("kubernetes:apps/v1:DaemonSet")
        assert name == "nvidia-device-plugin"
        assert inputs["spec"]["template"]["spec"]["containers"][0]["image"] == "reg/dp:v1"
        assert len(_by_type("aifactory:infra:BareMetalMachine")) == 68

    return site.kubernetes.device_plugin.urn.apply(check)
