"""`TenantOperator`: the tenant operator deployed into the site's cluster by Pulumi.

The Tenant CRD (with the site's GPU models in its CEL rules), a namespace, a ServiceAccount with
exactly the rights the handlers use, and a one-replica Deployment (Recreate: two operators must
never reconcile the same tenant) running `kopf run`. Slurm is reached the way an off-site operator
reaches it: sacctmgr on the head host through ssh, with the key, known_hosts and ssh config from a
Secret the site operator creates (`slurm_ssh_secret`; keys never go through Pulumi state here).
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from aifactory.site.model import Site
from operators.tenants import capacity, crd
from operators.tenants.spec import GROUP

NAMESPACE = "aifactory-system"
NAME = "tenant-operator"
METRICS_PORT = 9108


@dataclass(frozen=True)
class TenantOperatorArgs:
    site: Site
    image: str  # the operator image on the site's registry (this repository + its venv)
    slurm_ssh_secret: str = "tenant-operator-ssh"  # keys: config, id_ed25519, known_hosts
    overcommit_policy: str = "warn"
    drift_interval_s: int = 60


def rbac_rules() -> list[k8s.rbac.v1.PolicyRuleArgs]:
    def rule(groups: list[str], resources: list[str], verbs: list[str]) -> k8s.rbac.v1.PolicyRuleArgs:
        return k8s.rbac.v1.PolicyRuleArgs(api_groups=groups, resources=resources, verbs=verbs)

    write = ["get", "list", "watch", "create", "patch", "update", "delete"]
    return [
        rule([GROUP], ["tenants"], ["get", "list", "watch", "patch", "update"]),
        rule([GROUP], ["tenants/status"], ["get", "patch", "update"]),
        rule([""], ["namespaces", "resourcequotas", "limitranges"], write),
        rule([""], ["pods"], ["get", "list"]),
        rule([""], ["events"], ["create", "patch"]),
        rule(["events.k8s.io"], ["events"], ["create", "patch"]),
        rule(["networking.k8s.io"], ["networkpolicies"], write),
        rule(["rbac.authorization.k8s.io"], ["rolebindings"], write),
        # Binding members to `edit` needs `bind` on it, and on nothing else (cluster-admin included).
        k8s.rbac.v1.PolicyRuleArgs(
            api_groups=["rbac.authorization.k8s.io"],
            resources=["clusterroles"],
            resource_names=["edit"],
            verbs=["bind"],
        ),
        rule(["kueue.x-k8s.io"], ["clusterqueues", "localqueues", "resourceflavors"], write),
        rule(["apiextensions.k8s.io"], ["customresourcedefinitions"], ["get", "list", "watch"]),
    ]


class TenantOperator(pulumi.ComponentResource):
    def __init__(self, name: str, args: TenantOperatorArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("aifactory:infra:TenantOperator", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        models = sorted(capacity.site_capacity(args.site))
        self.crd = k8s.yaml.v2.ConfigGroup(
            f"{name}-crd", objs=[crd.crd(models), *crd.finalizer_policy()], opts=child
        )
        labels = {"app.kubernetes.io/name": NAME, "app.kubernetes.io/part-of": "aifactory"}
        self.namespace = k8s.core.v1.Namespace(
            f"{name}-ns", metadata=k8s.meta.v1.ObjectMetaArgs(name=NAMESPACE, labels=labels), opts=child
        )
        meta = k8s.meta.v1.ObjectMetaArgs(name=NAME, namespace=NAMESPACE, labels=labels)
        after_ns = pulumi.ResourceOptions(parent=self, depends_on=[self.namespace])
        self.service_account = k8s.core.v1.ServiceAccount(f"{name}-sa", metadata=meta, opts=after_ns)
        self.cluster_role = k8s.rbac.v1.ClusterRole(
            f"{name}-role",
            metadata=k8s.meta.v1.ObjectMetaArgs(name=f"aifactory-{NAME}", labels=labels),
            rules=rbac_rules(),
            opts=child,
        )
        self.binding = k8s.rbac.v1.ClusterRoleBinding(
            f"{name}-binding",
            metadata=k8s.meta.v1.ObjectMetaArgs(name=f"aifactory-{NAME}", labels=labels),
            role_ref=k8s.rbac.v1.RoleRefArgs(
                api_group="rbac.authorization.k8s.io", kind="ClusterRole", name=f"aifactory-{NAME}"
            ),
            subjects=[k8s.rbac.v1.SubjectArgs(kind="ServiceAccount", name=NAME, namespace=NAMESPACE)],
            opts=child,
        )
        cap = ",".join(f"{m}={n}" for m, n in sorted(capacity.site_capacity(args.site).items()))
        env = {
            "AIFACTORY_GPU_CAPACITY": cap,
            "AIFACTORY_OVERCOMMIT_POLICY": args.overcommit_policy,
            "AIFACTORY_DRIFT_INTERVAL": str(args.drift_interval_s),
            "AIFACTORY_METRICS_PORT": str(METRICS_PORT),
            "AIFACTORY_SLURM_SSH_CONFIG": "/etc/aifactory/ssh/config",
            "AIFACTORY_SLURM_HEAD": args.site.with_role("head")[0].name,
        }
        self.deployment = k8s.apps.v1.Deployment(
            f"{name}-deployment",
            metadata=meta,
            spec=k8s.apps.v1.DeploymentSpecArgs(
                replicas=1,
                strategy=k8s.apps.v1.DeploymentStrategyArgs(type="Recreate"),
                selector=k8s.meta.v1.LabelSelectorArgs(match_labels=labels),
                template=k8s.core.v1.PodTemplateSpecArgs(
                    metadata=k8s.meta.v1.ObjectMetaArgs(labels=labels),
                    spec=k8s.core.v1.PodSpecArgs(
                        service_account_name=NAME,
                        containers=[
                            k8s.core.v1.ContainerArgs(
                                name="operator",
                                image=args.image,
                                args=[
                                    "kopf",
                                    "run",
                                    "--standalone",
                                    "--all-namespaces",
                                    "--log-format=json",
                                    "-m",
                                    "operators.tenants.handlers",
                                ],
                                env=[k8s.core.v1.EnvVarArgs(name=k, value=v) for k, v in env.items()],
                                ports=[
                                    k8s.core.v1.ContainerPortArgs(name="metrics", container_port=METRICS_PORT)
                                ],
                                resources=k8s.core.v1.ResourceRequirementsArgs(
                                    requests={"cpu": "100m", "memory": "256Mi"}, limits={"memory": "1Gi"}
                                ),
                                volume_mounts=[
                                    k8s.core.v1.VolumeMountArgs(
                                        name="ssh", mount_path="/etc/aifactory/ssh", read_only=True
                                    )
                                ],
                            )
                        ],
                        volumes=[
                            k8s.core.v1.VolumeArgs(
                                name="ssh",
                                secret=k8s.core.v1.SecretVolumeSourceArgs(
                                    secret_name=args.slurm_ssh_secret, default_mode=0o400
                                ),
                            )
                        ],
                    ),
                ),
            ),
            opts=pulumi.ResourceOptions(
                parent=self, depends_on=[self.service_account, self.binding, self.crd]
            ),
        )
        self.register_outputs(
            {"namespace": NAMESPACE, "gpu_models": models, "deployment": self.deployment.metadata.name}
        )
