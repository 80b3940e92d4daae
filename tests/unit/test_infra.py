"""Wiring of the Pulumi components under `pulumi.runtime.set_mocks` (no engine, no BMC)."""

import tempfile
from pathlib import Path

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
        urn, bm_urn, pool_urn, password_secret, *_every_bmc = args
        # A URN's type names its parent's type: dynamic resource < BareMetalMachine < NodePool < Site.
        assert urn.endswith("aifactory:infra:BareMetalMachine$pulumi-python:dynamic:Resource::gpu-05-bmc")
        assert bm_urn.endswith("aifactory:infra:NodePool$aifactory:infra:BareMetalMachine::gpu-05")
        assert pool_urn.endswith("aifactory:infra:Site$aifactory:infra:NodePool::local-kubernetes")
        assert password_secret is True
        inputs = dict(_by_type("pulumi-python:dynamic:Resource"))["gpu-05-bmc"]
        assert inputs["endpoint"] == "http://198.18.0.1:8106" and inputs["gpu_count"] == 8
        assert inputs["address"] == "198.18.0.16"
        assert len(_by_type("aifactory:infra:BareMetalMachine")) == len(SITE.machines)

    # Registrations are asynchronous: wait for every machine's BMC resource before counting them.
    every_bmc = [m.bmc.urn for p in site.pools.values() for m in p.machines.values()]
    return pulumi.Output.all(bm.bmc.urn, bm.urn, pool.urn, bm.bmc.password.is_secret(), *every_bmc).apply(
        check
    )


@pulumi.runtime.test
def test_a_pool_move_keeps_every_machine_urn():
    """A URN names its parents' types, not their names: moving gpu-03 to the kubernetes pool
    (`aifactory node move`) must not make Pulumi delete (power off) and recreate a machine."""
    import dataclasses

    moved = dataclasses.replace(
        SITE,
        machines=tuple(
            dataclasses.replace(m, pool="kubernetes") if m.name == "gpu-03" else m for m in SITE.machines
        ),
    )
    before = AiFactorySite("local", AiFactorySiteArgs(SITE, CREDS, configure=False))
    after = AiFactorySite("local", AiFactorySiteArgs(moved, CREDS, configure=False))
    assert "gpu-03" in after.pools["kubernetes"].machines

    def machine_urns(site):
        return {n: bm.urn for pool in site.pools.values() for n, bm in pool.machines.items()}

    old, new = machine_urns(before), machine_urns(after)
    names = sorted(old)

    def check(urns):
        assert urns[: len(names)] == urns[len(names) :]

    return pulumi.Output.all(*(old[n] for n in names), *(new[n] for n in names)).apply(check)


@pulumi.runtime.test
def test_configuration_waits_for_machines_and_feeds_kubernetes():
    site = AiFactorySite("local", AiFactorySiteArgs(SITE, CREDS))

    layer = site.kubernetes
    children = [
        r.urn
        for r in (
            *layer.priority_classes,
            *layer.node_patches,
            layer.dns.deployment,
            layer.dns.service,
            layer.network_policy.daemon_set,
        )
    ]

    def check(args):
        _, layer_urn, *_ = args
        inputs = dict(_by_type("pulumi-python:dynamic:Resource"))["local-configuration"]
        assert inputs["playbook"] == "site.yml"
        assert inputs["machines"] == [m.name for m in SITE.machines]
        assert len(inputs["site_digest"]) == 16 and len(inputs["playbooks_digest"]) == 16
        assert len(inputs["bundle_digest"]) == 16  # a rebuilt binary or image reruns the roles
        assert layer_urn.endswith("aifactory:infra:Site$aifactory:infra:KubernetesLayer::local-kubernetes")
        priority = [n for n, _ in _by_type("kubernetes:scheduling.k8s.io/v1:PriorityClass")]
        assert priority == ["aifactory-gpu-production", "aifactory-gpu-batch", "aifactory-gpu-opportunistic"]
        patches = dict(_by_type("kubernetes:core/v1:NodePatch"))
        # Every worker, whichever pool: a pool move (Ansible's label and cordon) changes no patch.
        assert set(patches) == {f"node-gpu-0{i}" for i in range(1, 7)}
        assert "labels" not in patches["node-gpu-05"]["metadata"]  # the kubelet's, from the hardware
        assert patches["node-gpu-05"]["spec"]["taints"][0]["key"] == "nvidia.com/gpu"
        assert all("labels" not in p["metadata"] for p in patches.values())  # no pool label either
        dns = dict(_by_type("kubernetes:core/v1:Service"))["local-kubernetes-dns-service"]
        assert dns["metadata"]["name"] == "kube-dns" and dns["spec"]["clusterIP"] == "10.96.0.10"
        (coredns,) = dict(_by_type("kubernetes:apps/v1:Deployment")).values()
        # the bundle's image, pinned to its digest where the bundle is built
        image = coredns["spec"]["template"]["spec"]["containers"][0]["image"]
        assert image.partition("@")[0] == "registry.aifactory.local/aifactory/coredns:1.15.0"
        # the NetworkPolicy agent: on every node whatever its taints, in the host's network
        agent = dict(_by_type("kubernetes:apps/v1:DaemonSet"))["local-kubernetes-network-policy-daemonset"]
        pod = agent["spec"]["template"]["spec"]
        assert agent["metadata"]["namespace"] == "kube-system" and pod["hostNetwork"] is True
        assert pod["tolerations"] == [{"operator": "Exists"}]
        assert pod["containers"][0]["image"].startswith(
            "registry.aifactory.local/aifactory/kube-router:v2.1.0"
        )
        (binding,) = [
            i
            for n, i in _by_type("kubernetes:rbac.authorization.k8s.io/v1:ClusterRoleBinding")
            if "network" in n
        ]
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "kube-router", "namespace": "kube-system"}
        ]
        # The local stack names no device plugin image: its emulated GPUs bring their own plugin.
        assert [n for n, _ in _by_type("kubernetes:apps/v1:DaemonSet")] == [
            "local-kubernetes-network-policy-daemonset"
        ]

    return pulumi.Output.all(site.configuration.urn, layer.urn, *children).apply(check)


@pulumi.runtime.test
def test_real_site_gets_the_device_plugin():
    real = load_site(REPO / "sites" / "example-groningen.yaml")
    creds = {"hall-a-bmc": ("ops", pulumi.Output.secret("x"))}
    site = AiFactorySite("g", AiFactorySiteArgs(real, creds, device_plugin_image="reg/dp:v1"))

    def check(_):
        inputs = dict(_by_type("kubernetes:apps/v1:DaemonSet"))["nvidia-device-plugin"]
        assert inputs["spec"]["template"]["spec"]["containers"][0]["image"] == "reg/dp:v1"
        assert len(_by_type("aifactory:infra:BareMetalMachine")) == 68

    return site.kubernetes.device_plugin.urn.apply(check)


# the tenant operator


@pulumi.runtime.test
def test_tenant_operator_deploys_crd_rbac_and_one_recreate_replica():
    from infra.tenant_operator import NAMESPACE, TenantOperator, TenantOperatorArgs
    from operators.tenants.spec import STRICT_MEMBER_ROLE

    ssh_files = {"config": "Host head-01", "id_ed25519": "KEY", "known_hosts": "10.0.0.1 ssh-ed25519 X"}
    op = TenantOperator("tenants", TenantOperatorArgs(SITE, "registry.site/aifactory:1", ssh_files))

    def check(_):
        (crd_inputs,) = [i for _, i in _by_type("kubernetes:yaml/v2:ConfigGroup")]
        crd, peering_crd, member_role = crd_inputs["objs"]
        assert peering_crd["spec"]["group"] == "kopf.dev"
        assert member_role["metadata"]["name"] == STRICT_MEMBER_ROLE
        (policy,) = [
            i for _, i in _by_type("kubernetes:admissionregistration.k8s.io/v1:MutatingAdmissionPolicy")
        ]
        (binding,) = [
            i
            for _, i in _by_type("kubernetes:admissionregistration.k8s.io/v1:MutatingAdmissionPolicyBinding")
        ]
        (peering,) = [i for _, i in _by_type("kubernetes:kopf.dev/v1:ClusterKopfPeering")]
        assert crd["metadata"]["name"] == "tenants.aifactory.io" and crd["spec"]["scope"] == "Cluster"
        assert (policy["kind"], binding["kind"]) == (
            "MutatingAdmissionPolicy",
            "MutatingAdmissionPolicyBinding",
        )
        assert binding["spec"]["policyName"] == policy["metadata"]["name"]
        (dep,) = [i for _, i in _by_type("kubernetes:apps/v1:Deployment")]
        assert dep["metadata"]["namespace"] == NAMESPACE
        assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"]["type"] == "Recreate"
        (container,) = dep["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["AIFACTORY_GPU_CAPACITY"] == "h100=48" and env["AIFACTORY_SLURM_HEAD"] == "head-01"
        # it joins the operators' peering at the lowest priority: one started by hand takes over
        assert f"--peering={peering['metadata']['name']}" in container["args"]
        assert "--priority=0" in container["args"] and "--standalone" not in container["args"]
        assert dep["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
        (secret,) = [i for _, i in _by_type("kubernetes:core/v1:Secret")]
        data = secret["stringData"]  # a secret: the mocks see Pulumi's secret wrapper around it
        assert secret["metadata"]["name"] == "tenant-operator-ssh" and data.get("value") == ssh_files
        (role,) = [i for _, i in _by_type("kubernetes:rbac.authorization.k8s.io/v1:ClusterRole")]
        resources = {r for rule in role["rules"] for r in rule["resources"]}
        assert {"tenants/status", "resourcequotas", "networkpolicies", "rolebindings", "nodes"} <= resources
        bind = [r for r in role["rules"] if r["resources"] == ["clusterroles"]]
        assert (
            bind and bind[0]["verbs"] == ["bind"] and bind[0]["resourceNames"] == ["edit", STRICT_MEMBER_ROLE]
        )
        # Prometheus on the head may get the operator's metrics through the service proxy, nothing else
        (svc,) = [i for _, i in _by_type("kubernetes:core/v1:Service")]
        assert svc["spec"]["ports"][0]["name"] == "metrics" and svc["spec"]["selector"]
        (scrape,) = [i for _, i in _by_type("kubernetes:rbac.authorization.k8s.io/v1:Role")]
        assert scrape["rules"] == [
            {
                "apiGroups": [""],
                "resources": ["services/proxy"],
                "resourceNames": [f"{svc['metadata']['name']}:metrics"],
                "verbs": ["get"],
            }
        ]
        (rb,) = [i for _, i in _by_type("kubernetes:rbac.authorization.k8s.io/v1:RoleBinding")]
        assert rb["subjects"][0]["kind"] == "User" and rb["subjects"][0]["name"] == "aifactory:prometheus"

    # The scrape RoleBinding registers only after its Role resolves, later than the Deployment: wait
    # for the last resources too, or the check races them.
    return pulumi.Output.all(op.deployment.urn, op.metrics_service.urn, op.scrape_binding.urn).apply(check)


# Kueue

UPSTREAM_KUEUE = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: clusterqueues.kueue.x-k8s.io}
spec: {group: kueue.x-k8s.io}
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: resourceflavors.kueue.x-k8s.io}
spec: {group: kueue.x-k8s.io}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: leader-election-role, namespace: system}
rules: []
---
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata: {name: mutating-webhook-configuration}
webhooks:
- name: mpod.kb.io
  clientConfig: {service: {name: webhook-service, namespace: system, path: /mutate--v1-pod}}
- name: mjob.kb.io
  clientConfig: {service: {name: webhook-service, namespace: system, path: /mutate-batch-v1-job}}
- name: mworkload.kb.io
  clientConfig:
    service: {name: webhook-service, namespace: system, path: /mutate-kueue-x-k8s-io-v1beta2-workload}
"""


@pulumi.runtime.test
def test_kueue_gets_upstreams_objects_wired_to_its_service_and_webhooks_only_for_what_it_manages(tmp_path):
    import yaml

    from infra.kueue import NAMESPACE, WEBHOOK_SERVICE, Kueue, KueueArgs

    manifests = tmp_path / "kueue-manifests.yaml"
    manifests.write_text(UPSTREAM_KUEUE)
    kueue = Kueue("kueue", KueueArgs("registry.site/kueue:v1", manifests))

    def check(_):
        groups = {n: i["objs"] for n, i in _by_type("kubernetes:yaml/v2:ConfigGroup")}
        crds = {o["metadata"]["name"]: o for o in groups["kueue-crds"]}
        # the API server converts the versions Kueue converts through its webhook; the others not
        service = crds["clusterqueues.kueue.x-k8s.io"]["spec"]["conversion"]["webhook"]["clientConfig"][
            "service"
        ]
        assert service == {"name": WEBHOOK_SERVICE, "namespace": NAMESPACE, "path": "/convert"}
        assert "conversion" not in crds["resourceflavors.kueue.x-k8s.io"]["spec"]
        objs = {(o["kind"], o["metadata"]["name"]): o for o in groups["kueue-objects"]}
        role = objs[("Role", "kueue-leader-election-role")]
        assert role["metadata"]["namespace"] == NAMESPACE
        binding = objs[("RoleBinding", "kueue-leader-election-rolebinding")]
        assert binding["subjects"][0]["name"] == "kueue-controller-manager"
        hooks = objs[("MutatingWebhookConfiguration", "kueue-mutating-webhook-configuration")]["webhooks"]
        # no fail-closed hook on every pod: the pod framework is not integrated here
        assert [h["name"] for h in hooks] == ["mjob.kb.io", "mworkload.kb.io"]
        assert {h["clientConfig"]["service"]["name"] for h in hooks} == {WEBHOOK_SERVICE}
        config = yaml.safe_load(
            objs[("ConfigMap", "kueue-manager-config")]["data"]["controller_manager_config.yaml"]
        )
        assert config["integrations"]["frameworks"] == ["batch/job"] and config["namespace"] == NAMESPACE
        assert config["internalCertManagement"]["webhookServiceName"] == WEBHOOK_SERVICE
        assert config["manageJobsWithoutQueueName"] is False
        # tenant quota is on GPUs: a Job's CPU and memory requests never keep it pending
        assert "cpu" in config["resources"]["excludeResourcePrefixes"]
        (dep,) = [i for _, i in _by_type("kubernetes:apps/v1:Deployment")]
        pod = dep["spec"]["template"]["spec"]
        assert pod["containers"][0]["image"] == "registry.site/kueue:v1"
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert {v["name"] for v in pod["volumes"]} == {"cert", "manager-config"}

    return kueue.deployment.urn.apply(check)


def test_many_machines_leave_the_pickler_as_they_found_it():
    """pulumi 3.272 wraps pickle's _batch_setitems once more for every dynamic resource: a site of
    1,000 machines hit a RecursionError. Each machine puts it back (infra.redfish.pickler_restored)."""
    import pickle

    from aifactory.site.generate import generate, write
    from infra.machine import BareMetalMachine, BareMetalMachineArgs

    before = pickle._Pickler._batch_setitems
    big = generate("big", 1000)
    machines = big["machines"]
    for m in machines:
        m["bmc"]["credentials"] = "local-bmc"
    site = write(big, Path(tempfile.mkdtemp()) / "big.yaml")
    for m in site.machines:
        BareMetalMachine(m.name, BareMetalMachineArgs(m, *CREDS["local-bmc"]))
    assert pickle._Pickler._batch_setitems is before
