"""The whole factory from one `pulumi up`: bare metal via Redfish, Ansible, Kubernetes objects.

`deployed_site` (conftest) runs `pulumi up` on the seven-machine citest site from nothing; its
teardown runs `pulumi destroy` and checks every machine is off.
"""

import json

import pytest
from kubernetes import client, config

from aifactory import credentials, deploy, paths
from sandbox import bmc, hosts, localsite, ssh

pytestmark = [pytest.mark.site, pytest.mark.toolchain]


def kube(site):
    return config.new_client_from_config(str(paths.site_state_dir(site.name) / "kubeconfig"))


def test_up_from_nothing_gives_slurm_and_kubernetes(deployed_site):
    site, _ = deployed_site
    assert {r["health"] for r in localsite.status(site)} == {"ok"}
    core = client.CoreV1Api(kube(site))
    nodes = {n.metadata.name: n for n in core.list_node().items}
    for m in site.in_pool("kubernetes"):
        node = nodes[m.name]
        assert node.status.allocatable["nvidia.com/gpu"] == str(m.gpu_count)
        assert node.metadata.labels["aifactory.io/pool"] == "kubernetes"  # node_pool role
        assert any(t.key == "nvidia.com/gpu" for t in node.spec.taints or [])
        ready = {c.type: c.status for c in node.status.conditions}
        assert ready["Ready"] == "True"
    classes = {pc.metadata.name for pc in client.SchedulingV1Api(kube(site)).list_priority_class().items}
    assert {"aifactory-gpu-production", "aifactory-gpu-batch", "aifactory-gpu-opportunistic"} <= classes
    head = site.with_role("head")[0].name
    # Kubernetes-pool machines may be known to Slurm, but only drained: no GPU offered by both.
    out = ssh.run(site, head, "sinfo -h -N -o '%N %t'").stdout.split("\n")
    states = dict(line.split() for line in out if line)
    offered = sorted(n for n, state in states.items() if not state.startswith("drain"))
    assert offered == [m.name for m in site.in_pool("slurm")]


def test_second_preview_expects_no_changes(deployed_site):
    _, template = deployed_site
    assert deploy.run("citest", "preview", template=template, extra=["--expect-no-changes"]) == 0


def test_power_off_behind_pulumis_back_is_seen_and_repaired(deployed_site):
    site, template = deployed_site
    m = site.machine("gpu-03")
    c = credentials.load(m.bmc.credentials)
    bmc.set_power(m, c.username, c.password, "ForceOff")
    assert bmc.wait_for_power(m, c.username, c.password, "Off")
    assert not hosts.is_running(site, m.name)
    assert deploy.run("citest", "refresh", template=template) == 0
    assert deploy.run("citest", "preview", template=template, extra=["--expect-no-changes"]) != 0
    assert deploy.run("citest", "up", template=template) == 0
    assert localsite.wait_for_ssh(site, m, timeout=60) == "running"
    assert deploy.run("citest", "preview", template=template, extra=["--expect-no-changes"]) == 0


def hosts_state(stack: str) -> str:
    """The Ansible configuration's `hosts_state` as the stack's state holds it."""
    exported = json.loads(deploy.pulumi("stack", "export", "--stack", stack, capture=True).stdout)
    for resource in exported["deployment"]["resources"]:
        if resource["urn"].endswith(f"::{stack}-configuration"):
            return resource["outputs"]["hosts_state"]
    raise AssertionError(f"no {stack}-configuration resource in the state of stack {stack}")


def test_a_file_edited_behind_pulumis_back_is_named_by_refresh_and_restored_by_up(deployed_site):
    site, template = deployed_site
    stack = site.name
    # From a clean start: earlier tests may have left drift of their own (up is a no-op otherwise).
    assert deploy.run(stack, "refresh", template=template) == 0
    assert deploy.run(stack, "up", template=template) == 0
    assert ssh.run(site, "gpu-01", "echo '# edited by hand' >> /etc/slurm/slurm.conf").returncode == 0
    assert deploy.run(stack, "refresh", template=template) == 0
    assert hosts_state(stack) == "drifted: gpu-01: /etc/slurm/slurm.conf (changed)"
    assert deploy.run(stack, "preview", template=template, extra=["--expect-no-changes"]) != 0
    assert deploy.run(stack, "up", template=template) == 0
    assert "edited by hand" not in ssh.run(site, "gpu-01", "cat /etc/slurm/slurm.conf").stdout
    assert hosts_state(stack) == "as-configured"
    assert deploy.run(stack, "refresh", template=template) == 0
    assert hosts_state(stack) == "as-configured"
    assert deploy.run(stack, "preview", template=template, extra=["--expect-no-changes"]) == 0
