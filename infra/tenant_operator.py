"""`TenantOperator`: the tenant operator deployed into the site's cluster by Pulumi.

The Tenant CRD (with the site's GPU models in its CEL rules), kopf's peering resource, a namespace,
a ServiceAccount with exactly the rights the handlers use, and a one-replica Deployment (Recreate:
two operators must never reconcile the same tenant) of the site registry's operator image
(aifactory/images.py). A developer's `aifactory operator run` joins the same kopf peering with a
higher priority: the Deployment pauses while it runs and resumes when it exits.

Slurm is reached as an off-site operator reaches it: sacctmgr on the head through ssh, with a key of
the operator's own that the head accepts from the pod network only (tenant_operator_access role).
The key, the head's host key and an ssh config are a Secret, secret in Pulumi's state too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pulumi
import pulumi_kubernetes as k8s

from aifactory.site.model import Machine, Site
from operators.tenants import capacity, crd, energy
from operators.tenants.spec import GROUP, PEERING, PEERING_PRIORITY_IN_CLUSTER, STRICT_MEMBER_ROLE

NAMESPACE = "aifactory-system"
NAME = "tenant-operator"
METRICS_PORT = 9108
METRICS_SERVICE = f"{NAME}-metrics"
PROMETHEUS_USER = "aifactory:prometheus"  # the head's Prometheus (playbooks/roles/prometheus)
SSH_DIR = "/etc/aifactory/ssh"  # where the Secret is mounted
UID = 65532  # the image's user (aifactory/images.py: OPERATOR_UID)


def operator_ssh_files(access_dir: Path, head: Machine) -> dict[str, str]:
    """The Secret's files from what the tenant_operator_access role handed back: the key, the head's
    host key as known_hosts, and an ssh config naming the head as the operator does (its name)."""
    host_key = (access_dir / "ssh_host_ed25519_key.pub").read_text().split()[:2]
    config = f"""Host {head.name}
  HostName {head.address}
  User root
  IdentityFile {SSH_DIR}/id_ed25519
  IdentitiesOnly yes
  UserKnownHostsFile {SSH_DIR}/known_hosts
  StrictHostKeyChecking yes
  BatchMode yes
  ConnectTimeout 10
  ControlMaster auto
  ControlPath /tmp/ssh-%C
  ControlPersist 120
"""
    return {
        "config": config,
        "id_ed25519": (access_dir / "id_ed25519").read_text(),
        "known_hosts": f"{head.address} {' '.join(host_key)}\n",
    }


@dataclass(frozen=True)
class TenantOperatorArgs:
    site: Site
    image: str  # the operator image on the site's registry (aifactory/images.py: OPERATOR_REF)
    # operator_ssh_files(); a secret. None: the site operator creates the Secret `slurm_ssh_secret`.
    slurm_ssh: pulumi.Input[dict[str, str]] | None = None
    slurm_ssh_secret: str = "tenant-operator-ssh"  # keys: config, id_ed25519, known_hosts
    overcommit_policy: str = "warn"
    drift_interval_s: int = 60


def _forced(obj: dict) -> dict:
    """`obj` applied over another field manager: `aifactory operator run` applies the same CRD,
    policy and peering (operators/tenants/install.py) and may have done so first."""
    metadata = obj["metadata"]
    annotations = {**metadata.get("annotations", {}), "pulumi.com/patchForce": "true"}
    return {**obj, "metadata": {**metadata, "annotations": annotations}}


def rbac_rules() -> list[k8s.rbac.v1.PolicyRuleArgs]:
    def rule(groups: list[str], resources: list[str], verbs: list[str]) -> k8s.rbac.v1.PolicyRuleArgs:
        return k8s.rbac.v1.PolicyRuleArgs(api_groups=groups, resources=resources, verbs=verbs)

    write = ["get", "list", "watch", "create", "patch", "update", "delete"]
    return [
        rule([GROUP], ["tenants"], ["get", "list", "watch", "patch", "update"]),
        rule([GROUP], ["tenants/status"], ["get", "patch", "update"]),
        rule([""], ["namespaces", "resourcequotas", "limitranges"], write),
        rule([""], ["pods"], ["get", "list"]),
        rule([""], ["nodes"], ["get"]),  # the GPU model a pod holds: its node's model label
        rule([""], ["events"], ["create", "patch"]),
        rule(["events.k8s.io"], ["events"], ["create", "patch"]),
        rule(["networking.k8s.io"], ["networkpolicies"], write),
        rule(["rbac.authorization.k8s.io"], ["rolebindings"], write),
        # Binding members needs `bind` on their roles, and on nothing else (cluster-admin included).
        k8s.rbac.v1.PolicyRuleArgs(
            api_groups=["rbac.authorization.k8s.io"],
            resources=["clusterroles"],
            resource_names=["edit", STRICT_MEMBER_ROLE],
            verbs=["bind"],
        ),
        rule(["kueue.x-k8s.io"], ["clusterqueues", "localqueues", "resourceflavors"], write),
        rule(["apiextensions.k8s.io"], ["customresourcedefinitions"], ["get", "list", "watch"]),
        # kopf's peering: keep-alives in the status, pause while a higher-priority operator runs
        rule(["kopf.dev"], ["clusterkopfpeerings"], ["get", "list", "watch", "patch"]),
    ]


class TenantOperator(pulumi.ComponentResource):
    def __init__(self, name: str, args: TenantOperatorArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("aifactory:infra:TenantOperator", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        models = sorted(capacity.site_capacity(args.site))
        peering_crd, peering = (_forced(o) for o in crd.peering())
        self.crd = k8s.yaml.v2.ConfigGroup(
            f"{name}-crd",
            objs=[_forced(crd.crd(models)), peering_crd, _forced(crd.strict_member_role())],
            opts=child,
        )
        # One by one, not in the ConfigGroup: the SDK cannot read back kinds it has no class for
        # (MutatingAdmissionPolicy v1 is newer than pulumi-kubernetes 4.25).
        self.crd_objects = [
            k8s.apiextensions.CustomResource(
                f"{name}-{obj['kind'].lower()}",
                api_version=obj["apiVersion"],
                kind=obj["kind"],
                metadata=obj["metadata"],
                spec=obj.get("spec"),
                opts=pulumi.ResourceOptions(parent=self, depends_on=[self.crd]),
            )
            for obj in (*map(_forced, crd.finalizer_policy()), peering)
        ]
        labels = {"app.kubernetes.io/name": NAME, "app.kubernetes.io/part-of": "aifactory"}
        self.namespace = k8s.core.v1.Namespace(
            f"{name}-ns", metadata=k8s.meta.v1.ObjectMetaArgs(name=NAMESPACE, labels=labels), opts=child
        )
        meta = k8s.meta.v1.ObjectMetaArgs(name=NAME, namespace=NAMESPACE, labels=labels)
        after_ns = pulumi.ResourceOptions(parent=self, depends_on=[self.namespace])
        self.service_account = k8s.core.v1.ServiceAccount(f"{name}-sa", metadata=meta, opts=after_ns)
        self.ssh_secret = None
        if args.slurm_ssh is not None:
            self.ssh_secret = k8s.core.v1.Secret(
                f"{name}-ssh",
                metadata=k8s.meta.v1.ObjectMetaArgs(
                    name=args.slurm_ssh_secret, namespace=NAMESPACE, labels=labels
                ),
                string_data=pulumi.Output.secret(args.slurm_ssh),
                opts=after_ns,
            )
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
        env = {
            "AIFACTORY_GPU_CAPACITY": capacity.format_capacity(capacity.site_capacity(args.site)),
            "AIFACTORY_OVERCOMMIT_POLICY": args.overcommit_policy,
            "AIFACTORY_DRIFT_INTERVAL": str(args.drift_interval_s),
            "AIFACTORY_METRICS_PORT": str(METRICS_PORT),
            "AIFACTORY_SLURM_SSH_CONFIG": f"{SSH_DIR}/config",
            "AIFACTORY_SLURM_HEAD": args.site.with_role("head")[0].name,
            # this month's energy in each tenant's status (operators/tenants/energy.py)
            **energy.env_for(energy.site_settings(args.site)),
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
                        # it holds no GPU, but the workers of a GPU site are all GPU machines
                        tolerations=[
                            k8s.core.v1.TolerationArgs(
                                key="nvidia.com/gpu", operator="Exists", effect="NoSchedule"
                            )
                        ],
                        # the Secret's files are group-readable by the image's user, owned by root
                        security_context=k8s.core.v1.PodSecurityContextArgs(
                            run_as_user=UID, run_as_group=UID, fs_group=UID, run_as_non_root=True
                        ),
                        containers=[
                            k8s.core.v1.ContainerArgs(
                                name="operator",
                                image=args.image,
                                # the image's entrypoint is `python -m kopf`
                                args=[
                                    "run",
                                    "--all-namespaces",
                                    f"--peering={PEERING}",
                                    f"--priority={PEERING_PRIORITY_IN_CLUSTER}",
                                    "--log-format=json",
                                    "-m",
                                    "operators.tenants.handlers",
                                ],
                                env=[
                                    *(k8s.core.v1.EnvVarArgs(name=k, value=v) for k, v in env.items()),
                                    # kopf names itself in the peering by its pod
                                    k8s.core.v1.EnvVarArgs(
                                        name="POD_ID",
                                        value_from=k8s.core.v1.EnvVarSourceArgs(
                                            field_ref=k8s.core.v1.ObjectFieldSelectorArgs(
                                                field_path="metadata.name"
                                            )
                                        ),
                                    ),
                                ],
                                security_context=k8s.core.v1.SecurityContextArgs(
                                    allow_privilege_escalation=False,
                                    capabilities=k8s.core.v1.CapabilitiesArgs(drop=["ALL"]),
                                ),
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
                                    secret_name=args.slurm_ssh_secret, default_mode=0o440
                                ),
                            )
                        ],
                    ),
                ),
            ),
            opts=pulumi.ResourceOptions(
                parent=self,
                depends_on=[self.service_account, self.binding, self.crd, *self.crd_objects]
                + ([self.ssh_secret] if self.ssh_secret else []),
                # an image the registry lacks fails the deploy (naming it) in minutes, not 10
                custom_timeouts=pulumi.CustomTimeouts(create="4m", update="4m"),
            ),
        )
        # Prometheus on the head scrapes the operator through the API server's service proxy, with
        # a client certificate (k8s_pki: CN aifactory:prometheus) allowed that and nothing else.
        self.metrics_service = k8s.core.v1.Service(
            f"{name}-metrics",
            metadata=k8s.meta.v1.ObjectMetaArgs(name=METRICS_SERVICE, namespace=NAMESPACE, labels=labels),
            spec=k8s.core.v1.ServiceSpecArgs(
                selector=labels,
                ports=[k8s.core.v1.ServicePortArgs(name="metrics", port=METRICS_PORT, target_port="metrics")],
            ),
            opts=after_ns,
        )
        scrape = k8s.meta.v1.ObjectMetaArgs(name=f"{NAME}-scrape", namespace=NAMESPACE, labels=labels)
        self.scrape_role = k8s.rbac.v1.Role(
            f"{name}-scrape-role",
            metadata=scrape,
            rules=[
                k8s.rbac.v1.PolicyRuleArgs(
                    api_groups=[""],
                    resources=["services/proxy"],
                    resource_names=[f"{METRICS_SERVICE}:metrics"],
                    verbs=["get"],
                )
            ],
            opts=after_ns,
        )
        self.scrape_binding = k8s.rbac.v1.RoleBinding(
            f"{name}-scrape-binding",
            metadata=scrape,
            role_ref=k8s.rbac.v1.RoleRefArgs(
                api_group="rbac.authorization.k8s.io", kind="Role", name=f"{NAME}-scrape"
            ),
            subjects=[
                k8s.rbac.v1.SubjectArgs(
                    kind="User", name=PROMETHEUS_USER, api_group="rbac.authorization.k8s.io"
                )
            ],
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.scrape_role]),
        )
        self.register_outputs(
            {"namespace": NAMESPACE, "gpu_models": models, "deployment": self.deployment.metadata.name}
        )
