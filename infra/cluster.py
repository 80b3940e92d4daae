"""`KubernetesLayer`: what Pulumi puts into the cluster Ansible built.

A pulumi-kubernetes provider from the kubeconfig the control-plane role fetched, then: priority
classes for GPU work, the GPU taint on every GPU worker's Node (server-side apply patches, so the
kubelets keep owning the Node objects and their hardware labels), the cluster DNS (infra/dns.py),
the nodes' NetworkPolicy agent (infra/network_policy.py), on real sites the NVIDIA
device plugin, Kueue (infra/kueue.py) and the tenant operator (infra/tenant_operator.py); the
site registry must serve every image these run first (infra/registry.py).

Every worker is a Node whichever pool it serves; which pool is Ansible's business (node_pool role:
label aifactory.io/pool, cordon), because `aifactory node move` changes it without `pulumi up`.
So these patches name machines, not pools, and never set the pool label: a move changes no
resource here.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from aifactory import toolchain
from aifactory.images import COREDNS_REF, KUBE_ROUTER_REF, SITE_REGISTRY_PORT
from aifactory.site.model import Site
from infra.dns import ClusterDns, ClusterDnsArgs
from infra.kueue import Kueue, KueueArgs
from infra.network_policy import NetworkPolicyAgent, NetworkPolicyAgentArgs
from infra.registry import ServedImages
from infra.tenant_operator import TenantOperator, TenantOperatorArgs

PRIORITY_CLASSES = {
    # name: (value, description)
    "aifactory-gpu-production": (100000, "Tenant services and inference: preempts batch GPU work"),
    "aifactory-gpu-batch": (10000, "Training and batch GPU jobs"),
    "aifactory-gpu-opportunistic": (100, "Backfill: first to be preempted"),
}
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}


@dataclass(frozen=True)
class KubernetesLayerArgs:
    site: Site
    kubeconfig: pulumi.Input[str]  # contents; a secret (it holds the admin client key)
    device_plugin_image: str | None = None  # real sites: from the site's registry mirror
    tenant_operator_image: str | None = None  # the tenant operator (infra/tenant_operator.py), if set
    # its ssh files to reach Slurm on the head (infra/tenant_operator.py: operator_ssh_files); a secret
    tenant_operator_ssh: pulumi.Input[dict[str, str]] | None = None
    kueue_image: str | None = None  # Kueue (infra/kueue.py), if set; before the tenant operator


class KubernetesLayer(pulumi.ComponentResource):
    def __init__(self, name: str, args: KubernetesLayerArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("aifactory:infra:KubernetesLayer", name, None, opts)
        self.provider = k8s.Provider(
            f"{name}-provider",
            kubeconfig=args.kubeconfig,
            enable_server_side_apply=True,
            opts=pulumi.ResourceOptions(parent=self),
        )
        child = pulumi.ResourceOptions(parent=self, provider=self.provider)
        self.priority_classes = [
            k8s.scheduling.v1.PriorityClass(
                pc,
                metadata=k8s.meta.v1.ObjectMetaArgs(
                    name=pc, labels={"app.kubernetes.io/managed-by": "aifactory"}
                ),
                value=value,
                description=desc,
                global_default=False,
                opts=child,
            )
            for pc, (value, desc) in PRIORITY_CLASSES.items()
        ]
        # Kubelets renew their client certificates (rotateCertificates, k8s_worker role): the
        # controller manager approves a node's CSR for its own identity.
        self.node_cert_renewal = k8s.rbac.v1.ClusterRoleBinding(
            "node-client-cert-renewal",
            metadata=k8s.meta.v1.ObjectMetaArgs(
                name="aifactory:node-client-cert-renewal",
                labels={"app.kubernetes.io/managed-by": "aifactory"},
            ),
            role_ref=k8s.rbac.v1.RoleRefArgs(
                api_group="rbac.authorization.k8s.io",
                kind="ClusterRole",
                name="system:certificates.k8s.io:certificatesigningrequests:selfnodeclient",
            ),
            subjects=[
                k8s.rbac.v1.SubjectArgs(
                    api_group="rbac.authorization.k8s.io", kind="Group", name="system:nodes"
                )
            ],
            opts=child,
        )
        # GPU nodes are for GPU work: tainted. (Their GPU labels come from the hardware, through the
        # kubelet: k8s_worker role.)
        self.node_patches = [
            k8s.core.v1.NodePatch(
                f"node-{m.name}",
                metadata=k8s.meta.v1.ObjectMetaPatchArgs(
                    name=m.name, annotations={"pulumi.com/patchForce": "true"}
                ),
                spec=k8s.core.v1.NodeSpecPatchArgs(taints=[k8s.core.v1.TaintPatchArgs(**GPU_TAINT)]),
                opts=child,
            )
            for m in args.site.machines
            if m.pool and m.gpu_count
        ]
        assert args.site.kubernetes, "a KubernetesLayer needs the site's kubernetes settings"
        service_cidr = args.site.kubernetes.service_cidr
        dns_args = ClusterDnsArgs(service_cidr, image=toolchain.image_ref(COREDNS_REF))
        api = (args.site.api_host, args.site.kubernetes.api_port)
        policy_args = NetworkPolicyAgentArgs(toolchain.image_ref(KUBE_ROUTER_REF), service_cidr, *api)
        head = args.site.with_role("head")[0]
        self.images = ServedImages(
            f"{name}-images",
            f"http://{head.address}:{SITE_REGISTRY_PORT}",
            [dns_args.image, policy_args.image]
            + [
                i
                for i in (args.device_plugin_image, args.tenant_operator_image, args.kueue_image)
                if i is not None
            ],
            pulumi.ResourceOptions(parent=self),
        )
        # what runs images waits for the registry to have them
        child = pulumi.ResourceOptions(parent=self, provider=self.provider, depends_on=[self.images])
        self.dns = ClusterDns(f"{name}-dns", dns_args, child)
        self.network_policy = NetworkPolicyAgent(f"{name}-network-policy", policy_args, child)
        self.device_plugin = None
        if args.device_plugin_image:  # the local stack sets none: its hardware brings its own
            self.device_plugin = _device_plugin(args.device_plugin_image, child)
        self.kueue = None
        if args.kueue_image:
            self.kueue = Kueue("kueue", KueueArgs(args.kueue_image), child)
        self.tenant_operator = None
        if args.tenant_operator_image:
            # after Kueue: the operator looks for its CRDs once, when it starts
            self.tenant_operator = TenantOperator(
                "tenant-operator",
                TenantOperatorArgs(args.site, args.tenant_operator_image, args.tenant_operator_ssh),
                pulumi.ResourceOptions(
                    parent=self,
                    provider=self.provider,
                    depends_on=[self.images, *([self.kueue] if self.kueue else [])],
                ),
            )
        self.register_outputs(
            {
                "priority_classes": list(PRIORITY_CLASSES),
                "gpu_nodes": [m.name for m in args.site.machines if m.pool and m.gpu_count],
            }
        )


def _device_plugin(image: str, opts: pulumi.ResourceOptions) -> k8s.apps.v1.DaemonSet:
    """NVIDIA's device plugin, advertising nvidia.com/gpu on real GPU nodes (the emulated GPUs come with
    their own, sandbox/gpu-device-plugin)."""
    labels = {"app.kubernetes.io/name": "nvidia-device-plugin"}
    return k8s.apps.v1.DaemonSet(
        "nvidia-device-plugin",
        metadata=k8s.meta.v1.ObjectMetaArgs(name="nvidia-device-plugin", namespace="kube-system"),
        spec=k8s.apps.v1.DaemonSetSpecArgs(
            selector=k8s.meta.v1.LabelSelectorArgs(match_labels=labels),
            template=k8s.core.v1.PodTemplateSpecArgs(
                metadata=k8s.meta.v1.ObjectMetaArgs(labels=labels),
                spec=k8s.core.v1.PodSpecArgs(
                    priority_class_name="system-node-critical",
                    node_selector={"aifactory.io/pool": "kubernetes"},
                    tolerations=[k8s.core.v1.TolerationArgs(key="nvidia.com/gpu", operator="Exists")],
                    containers=[
                        k8s.core.v1.ContainerArgs(
                            name="device-plugin",
                            image=image,
                            security_context=k8s.core.v1.SecurityContextArgs(privileged=True),
                            volume_mounts=[
                                k8s.core.v1.VolumeMountArgs(
                                    name="dp", mount_path="/var/lib/kubelet/device-plugins"
                                )
                            ],
                        )
                    ],
                    volumes=[
                        k8s.core.v1.VolumeArgs(
                            name="dp",
                            host_path=k8s.core.v1.HostPathVolumeSourceArgs(
                                path="/var/lib/kubelet/device-plugins"
                            ),
                        )
                    ],
                ),
            ),
        ),
        opts=opts,
    )
