"""`NetworkPolicyAgent`: NetworkPolicy enforcement on every node, a DaemonSet in kube-system.

kube-router with its firewall alone (no routing, no service proxy: the pod network and kube-proxy
do those): small, maintained, and it enforces with iptables and ipset, which every kernel the
factory meets has (kube-network-policies, which kind uses, needs the nftables `queue` statement).
It runs in the host's network namespace, privileged (it writes the node's iptables and ipsets, and
shares iptables' lock with kube-proxy), on every node whatever its taints, from the site registry's
image (the toolchain's static kube-router with Debian's iptables and ipset: aifactory/images.py).
It reads pods, namespaces, nodes, services, endpoints and NetworkPolicies with its ServiceAccount
(its informers wait for every one of them at start, and it exits after a minute without) and writes
nothing to the API.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

NAMESPACE = "kube-system"
NAME = "kube-router"
ROLE = "aifactory:network-policy"
HEALTH_PORT = 20244
READ = ["get", "list", "watch"]


@dataclass(frozen=True)
class NetworkPolicyAgentArgs:
    image: str  # aifactory/kube-router on the site registry, pinned to the bundle's digest
    service_cidr: str
    # The API server itself, not the `kubernetes` Service: a node's network agent must not need the
    # service proxy (nor a route to the service range, which a host without a default route lacks).
    api_host: str
    api_port: int


class NetworkPolicyAgent(pulumi.ComponentResource):
    def __init__(self, name: str, args: NetworkPolicyAgentArgs, opts: pulumi.ResourceOptions | None = None):
        # Stacks made before the agent was a DaemonSet hold its RBAC under the earlier component type.
        renamed = pulumi.ResourceOptions(
            aliases=[pulumi.Alias(type_="aifactory:infra:NetworkPolicyAgentAccess")]
        )
        super().__init__(
            "aifactory:infra:NetworkPolicyAgent", name, None, pulumi.ResourceOptions.merge(opts, renamed)
        )
        labels = {"app.kubernetes.io/name": NAME, "app.kubernetes.io/managed-by": "aifactory"}
        child = pulumi.ResourceOptions(parent=self)
        self.service_account = k8s.core.v1.ServiceAccount(
            f"{name}-sa",
            metadata=k8s.meta.v1.ObjectMetaArgs(name=NAME, namespace=NAMESPACE, labels=labels),
            opts=child,
        )
        role = k8s.rbac.v1.ClusterRole(
            f"{name}-role",
            metadata=k8s.meta.v1.ObjectMetaArgs(name=ROLE, labels=labels),
            rules=[
                k8s.rbac.v1.PolicyRuleArgs(
                    api_groups=[""],
                    resources=["namespaces", "pods", "services", "nodes", "endpoints"],
                    verbs=READ,
                ),
                k8s.rbac.v1.PolicyRuleArgs(
                    api_groups=["networking.k8s.io"], resources=["networkpolicies"], verbs=READ
                ),
                k8s.rbac.v1.PolicyRuleArgs(
                    api_groups=["discovery.k8s.io"], resources=["endpointslices"], verbs=READ
                ),
            ],
            opts=child,
        )
        binding = k8s.rbac.v1.ClusterRoleBinding(
            f"{name}-binding",
            metadata=k8s.meta.v1.ObjectMetaArgs(name=ROLE, labels=labels),
            role_ref=k8s.rbac.v1.RoleRefArgs(
                api_group="rbac.authorization.k8s.io", kind="ClusterRole", name=ROLE
            ),
            subjects=[k8s.rbac.v1.SubjectArgs(kind="ServiceAccount", name=NAME, namespace=NAMESPACE)],
            opts=pulumi.ResourceOptions(parent=self, depends_on=[role]),
        )
        xtables_lock = k8s.core.v1.VolumeArgs(
            name="xtables-lock",
            host_path=k8s.core.v1.HostPathVolumeSourceArgs(path="/run/xtables.lock", type="FileOrCreate"),
        )
        self.daemon_set = k8s.apps.v1.DaemonSet(
            f"{name}-daemonset",
            metadata=k8s.meta.v1.ObjectMetaArgs(name=NAME, namespace=NAMESPACE, labels=labels),
            spec=k8s.apps.v1.DaemonSetSpecArgs(
                selector=k8s.meta.v1.LabelSelectorArgs(match_labels=labels),
                template=k8s.core.v1.PodTemplateSpecArgs(
                    metadata=k8s.meta.v1.ObjectMetaArgs(labels=labels),
                    spec=k8s.core.v1.PodSpecArgs(
                        service_account_name=NAME,
                        host_network=True,
                        priority_class_name="system-node-critical",
                        tolerations=[k8s.core.v1.TolerationArgs(operator="Exists")],  # every node
                        containers=[
                            k8s.core.v1.ContainerArgs(
                                name=NAME,
                                image=args.image,
                                args=[
                                    "--run-firewall=true",
                                    "--run-router=false",
                                    "--run-service-proxy=false",
                                    "--enable-cni=false",
                                    "--hostname-override=$(NODE_NAME)",
                                    f"--service-cluster-ip-range={args.service_cidr}",
                                    f"--health-port={HEALTH_PORT}",
                                    "--metrics-port=0",
                                ],
                                env=[
                                    # what client-go's in-cluster configuration reads
                                    k8s.core.v1.EnvVarArgs(
                                        name="KUBERNETES_SERVICE_HOST", value=args.api_host
                                    ),
                                    k8s.core.v1.EnvVarArgs(
                                        name="KUBERNETES_SERVICE_PORT", value=str(args.api_port)
                                    ),
                                    k8s.core.v1.EnvVarArgs(
                                        name="NODE_NAME",
                                        value_from=k8s.core.v1.EnvVarSourceArgs(
                                            field_ref=k8s.core.v1.ObjectFieldSelectorArgs(
                                                field_path="spec.nodeName"
                                            )
                                        ),
                                    ),
                                ],
                                security_context=k8s.core.v1.SecurityContextArgs(privileged=True),
                                liveness_probe=k8s.core.v1.ProbeArgs(
                                    http_get=k8s.core.v1.HTTPGetActionArgs(path="/healthz", port=HEALTH_PORT),
                                    initial_delay_seconds=10,
                                    period_seconds=10,
                                ),
                                resources=k8s.core.v1.ResourceRequirementsArgs(
                                    requests={"cpu": "50m", "memory": "64Mi"}
                                ),
                                volume_mounts=[
                                    k8s.core.v1.VolumeMountArgs(
                                        name="xtables-lock", mount_path="/run/xtables.lock"
                                    )
                                ],
                            )
                        ],
                        volumes=[xtables_lock],
                    ),
                ),
            ),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.service_account, binding]),
        )
        self.register_outputs({"daemon_set": self.daemon_set.metadata.name})
