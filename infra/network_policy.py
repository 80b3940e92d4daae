"""What the NetworkPolicy agent on every node may read: its ClusterRole and binding.

The agent (kube-router, firewall only; k8s_worker role) runs as a systemd unit under the client
identity `system:aifactory:network-policy` from the cluster PKI. It watches pods, namespaces,
nodes, services and their endpoints and NetworkPolicies (its informers wait for every one of them
at start, and it exits after a minute without) and writes nothing but its node's iptables and ipsets.
"""

from __future__ import annotations

import pulumi
import pulumi_kubernetes as k8s

USER = "system:aifactory:network-policy"
ROLE = "aifactory:network-policy"
READ = ["get", "list", "watch"]


class NetworkPolicyAgentAccess(pulumi.ComponentResource):
    def __init__(self, name: str, opts: pulumi.ResourceOptions | None = None):
        super().__init__("aifactory:infra:NetworkPolicyAgentAccess", name, None, opts)
        meta = k8s.meta.v1.ObjectMetaArgs(name=ROLE, labels={"app.kubernetes.io/managed-by": "aifactory"})
        role = k8s.rbac.v1.ClusterRole(
            f"{name}-role",
            metadata=meta,
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
            opts=pulumi.ResourceOptions(parent=self),
        )
        k8s.rbac.v1.ClusterRoleBinding(
            f"{name}-binding",
            metadata=meta,
            role_ref=k8s.rbac.v1.RoleRefArgs(
                api_group="rbac.authorization.k8s.io", kind="ClusterRole", name=ROLE
            ),
            subjects=[k8s.rbac.v1.SubjectArgs(api_group="rbac.authorization.k8s.io", kind="User", name=USER)],
            opts=pulumi.ResourceOptions(parent=self, depends_on=[role]),
        )
        self.register_outputs({"user": USER})
