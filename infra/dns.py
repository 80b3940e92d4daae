"""`ClusterDns`: CoreDNS as the cluster's DNS, the kube-dns Service every kubelet points pods at.

The image is the toolchain's CoreDNS (toolchain/coredns) from the site's offline bundle, pulled
from the site registry (site_registry role). The Service's address
is the tenth of the service range, the one the kubelets' `clusterDNS` names. Names outside the
cluster are forwarded to `upstreams` when the site has resolvers; without them (an air-gapped site)
CoreDNS answers for the cluster alone.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from aifactory.images import COREDNS_REF

NAMESPACE = "kube-system"
NAME = "coredns"
LABELS = {
    "k8s-app": "kube-dns",
    "app.kubernetes.io/name": "coredns",
    "app.kubernetes.io/managed-by": "aifactory",
}


def service_ip(service_cidr: str) -> str:
    """The tenth address of the service range (k8s_worker's clusterDNS, as kubeadm does)."""
    return str(ipaddress.ip_network(service_cidr)[10])


def corefile(domain: str, upstreams: Sequence[str]) -> str:
    forward = f"    forward . {' '.join(upstreams)}\n" if upstreams else ""
    return (
        ".:53 {\n"
        "    errors\n"
        "    health {\n        lameduck 5s\n    }\n"
        "    ready\n"
        f"    kubernetes {domain} in-addr.arpa ip6.arpa {{\n"
        "        pods insecure\n"
        "        fallthrough in-addr.arpa ip6.arpa\n"
        "    }\n"
        "    prometheus :9153\n"
        f"{forward}"
        "    cache 30\n"
        "    loop\n"
        "    reload\n"
        "    loadbalance\n"
        "}\n"
    )


@dataclass(frozen=True)
class ClusterDnsArgs:
    service_cidr: str
    image: str = COREDNS_REF
    domain: str = "cluster.local"
    upstreams: tuple[str, ...] = ()
    replicas: int = 2


class ClusterDns(pulumi.ComponentResource):
    def __init__(self, name: str, args: ClusterDnsArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("aifactory:infra:ClusterDns", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        meta = k8s.meta.v1.ObjectMetaArgs(name=NAME, namespace=NAMESPACE, labels=LABELS)
        account = k8s.core.v1.ServiceAccount(f"{name}-account", metadata=meta, opts=child)
        role = k8s.rbac.v1.ClusterRole(
            f"{name}-role",
            metadata=k8s.meta.v1.ObjectMetaArgs(name="system:coredns", labels=LABELS),
            rules=[
                k8s.rbac.v1.PolicyRuleArgs(
                    api_groups=[""],
                    resources=["endpoints", "services", "pods", "namespaces"],
                    verbs=["list", "watch"],
                ),
                k8s.rbac.v1.PolicyRuleArgs(
                    api_groups=["discovery.k8s.io"], resources=["endpointslices"], verbs=["list", "watch"]
                ),
            ],
            opts=child,
        )
        k8s.rbac.v1.ClusterRoleBinding(
            f"{name}-binding",
            metadata=k8s.meta.v1.ObjectMetaArgs(name="system:coredns", labels=LABELS),
            role_ref=k8s.rbac.v1.RoleRefArgs(
                api_group="rbac.authorization.k8s.io", kind="ClusterRole", name="system:coredns"
            ),
            subjects=[k8s.rbac.v1.SubjectArgs(kind="ServiceAccount", name=NAME, namespace=NAMESPACE)],
            opts=pulumi.ResourceOptions(parent=self, depends_on=[role, account]),
        )
        config = k8s.core.v1.ConfigMap(
            f"{name}-config",
            metadata=meta,
            data={"Corefile": corefile(args.domain, args.upstreams)},
            opts=child,
        )
        self.deployment = k8s.apps.v1.Deployment(
            f"{name}-deployment",
            metadata=meta,
            spec=k8s.apps.v1.DeploymentSpecArgs(
                replicas=args.replicas,
                selector=k8s.meta.v1.LabelSelectorArgs(match_labels={"k8s-app": "kube-dns"}),
                template=k8s.core.v1.PodTemplateSpecArgs(
                    metadata=k8s.meta.v1.ObjectMetaArgs(labels=LABELS),
                    spec=k8s.core.v1.PodSpecArgs(
                        service_account_name=NAME,
                        priority_class_name="system-cluster-critical",
                        # GPU nodes are tainted for GPU work; DNS runs there too (never on cordoned
                        # slurm-pool nodes: only the GPU taint is tolerated).
                        tolerations=[
                            k8s.core.v1.TolerationArgs(
                                key="nvidia.com/gpu", operator="Exists", effect="NoSchedule"
                            )
                        ],
                        topology_spread_constraints=[
                            k8s.core.v1.TopologySpreadConstraintArgs(
                                max_skew=1,
                                topology_key="kubernetes.io/hostname",
                                when_unsatisfiable="ScheduleAnyway",
                                label_selector=k8s.meta.v1.LabelSelectorArgs(
                                    match_labels={"k8s-app": "kube-dns"}
                                ),
                            )
                        ],
                        containers=[
                            k8s.core.v1.ContainerArgs(
                                name="coredns",
                                image=args.image,
                                image_pull_policy="IfNotPresent",
                                args=["-conf", "/etc/coredns/Corefile"],
                                ports=[
                                    k8s.core.v1.ContainerPortArgs(
                                        name="dns", container_port=53, protocol="UDP"
                                    ),
                                    k8s.core.v1.ContainerPortArgs(
                                        name="dns-tcp", container_port=53, protocol="TCP"
                                    ),
                                    k8s.core.v1.ContainerPortArgs(name="metrics", container_port=9153),
                                ],
                                # Port 53: the one capability binding it needs, nothing else.
                                security_context=k8s.core.v1.SecurityContextArgs(
                                    allow_privilege_escalation=False,
                                    read_only_root_filesystem=True,
                                    capabilities=k8s.core.v1.CapabilitiesArgs(
                                        add=["NET_BIND_SERVICE"], drop=["ALL"]
                                    ),
                                ),
                                resources=k8s.core.v1.ResourceRequirementsArgs(
                                    requests={"cpu": "50m", "memory": "64Mi"}, limits={"memory": "170Mi"}
                                ),
                                liveness_probe=k8s.core.v1.ProbeArgs(
                                    http_get=k8s.core.v1.HTTPGetActionArgs(path="/health", port=8080),
                                    initial_delay_seconds=30,
                                ),
                                readiness_probe=k8s.core.v1.ProbeArgs(
                                    http_get=k8s.core.v1.HTTPGetActionArgs(path="/ready", port=8181)
                                ),
                                volume_mounts=[
                                    k8s.core.v1.VolumeMountArgs(name="config", mount_path="/etc/coredns")
                                ],
                            )
                        ],
                        volumes=[
                            k8s.core.v1.VolumeArgs(
                                name="config", config_map=k8s.core.v1.ConfigMapVolumeSourceArgs(name=NAME)
                            )
                        ],
                    ),
                ),
            ),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[config, account]),
        )
        self.service = k8s.core.v1.Service(
            f"{name}-service",
            metadata=k8s.meta.v1.ObjectMetaArgs(name="kube-dns", namespace=NAMESPACE, labels=LABELS),
            spec=k8s.core.v1.ServiceSpecArgs(
                cluster_ip=service_ip(args.service_cidr),
                selector={"k8s-app": "kube-dns"},
                ports=[
                    k8s.core.v1.ServicePortArgs(name="dns", port=53, protocol="UDP"),
                    k8s.core.v1.ServicePortArgs(name="dns-tcp", port=53, protocol="TCP"),
                    k8s.core.v1.ServicePortArgs(name="metrics", port=9153, protocol="TCP"),
                ],
            ),
            opts=child,
        )
        self.register_outputs({"service_ip": service_ip(args.service_cidr), "image": args.image})
