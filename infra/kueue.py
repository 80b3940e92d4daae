"""`Kueue`: the Kubernetes side of tenant GPU quota, deployed into the site's cluster by Pulumi.

Kueue admits a tenant's Jobs through its ClusterQueue (made by the tenant operator) in the site
cohort. What is applied:
- upstream's own objects at the toolchain's pinned version (`toolchain.KUEUE_MANIFEST_FILES`, copied
  beside the binary when it is built): the CRDs, the manager's RBAC and the webhook configurations,
  named as upstream's release names them (prefix `kueue-`, namespace `kueue-system`);
- ours: the Configuration, the webhook Service, the empty certificate Secret, and a one-replica
  Deployment of the site registry's image (aifactory/images.py: kueue_image).

Webhooks: only those for Kueue's own APIs and the frameworks it integrates here (`FRAMEWORKS`).
Upstream registers one per framework it knows; each is fail-closed, so a hook for a framework the
site does not run would only stop pods, Deployments or StatefulSets cluster-wide whenever Kueue is
down.

Certificates: Kueue's internal certificate management makes its CA and serving certificate into
the Secret and injects the CA bundle into the webhook configurations and the CRDs' conversion
webhooks. Pulumi applies those objects server-side without a caBundle, so the one Kueue injects is
never contested. The API server calls the webhooks at the pod's address (the control plane runs no
kube-proxy: `enable-aggregator-routing`, k8s_control_plane role).
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pulumi
import pulumi_kubernetes as k8s
import yaml

from aifactory import toolchain
from aifactory.images import KUEUE_UID

NAMESPACE = "kueue-system"
PREFIX = "kueue-"
SERVICE_ACCOUNT = "kueue-controller-manager"
WEBHOOK_SERVICE = "kueue-webhook-service"  # Kueue derives its webhook configurations' names from it
CERT_SECRET = "kueue-webhook-server-cert"
CERT_DIR = "/tmp/k8s-webhook-server/serving-certs"
WEBHOOK_PORT, HEALTH_PORT, METRICS_PORT = 9443, 8081, 8443
# Job kinds Kueue manages here: Jobs that name a LocalQueue (label kueue.x-k8s.io/queue-name).
FRAMEWORKS = ("batch/job",)
_FRAMEWORK_PATHS = {"batch/job": "batch-v1-job"}  # as the webhook paths spell them
# The CRDs whose versions Kueue converts (upstream's crd/kustomization.yaml patches these).
CONVERTED = ("localqueues", "clusterqueues", "cohorts", "workloads", "multikueueclusters")
LABELS = {"app.kubernetes.io/name": "kueue", "app.kubernetes.io/part-of": "aifactory"}
SELECTOR = {"app.kubernetes.io/name": "kueue", "control-plane": "controller-manager"}


def configuration(namespace: str = NAMESPACE) -> dict[str, Any]:
    """Kueue's Configuration: internal certificates, Jobs only when they name a queue, fair sharing
    among the cohort's tenants, quota on GPUs alone (CPU and memory are the scheduler's and the
    tenants' LimitRanges'), and no visibility API server (no APIService is deployed for it)."""
    return {
        "apiVersion": "config.kueue.x-k8s.io/v1beta2",
        "kind": "Configuration",
        "namespace": namespace,
        "health": {"healthProbeBindAddress": f":{HEALTH_PORT}"},
        "metrics": {"bindAddress": f":{METRICS_PORT}"},
        "webhook": {"port": WEBHOOK_PORT, "certDir": CERT_DIR},
        "leaderElection": {"leaderElect": True, "resourceName": "c1f6bfd2.kueue.x-k8s.io"},
        "internalCertManagement": {
            "enable": True,
            "webhookServiceName": WEBHOOK_SERVICE,
            "webhookSecretName": CERT_SECRET,
        },
        "manageJobsWithoutQueueName": False,
        "resources": {"excludeResourcePrefixes": ["cpu", "memory", "ephemeral-storage", "hugepages-"]},
        "integrations": {"frameworks": list(FRAMEWORKS)},
        "fairSharing": {"preemptionStrategies": ["LessThanOrEqualToFinalShare", "LessThanInitialShare"]},
        "clientConnection": {"qps": 50, "burst": 100},
        "featureGates": {"VisibilityOnDemand": False},
    }


def _service_ref(path: str) -> dict[str, Any]:
    return {"name": WEBHOOK_SERVICE, "namespace": NAMESPACE, "path": path}


def _kept_webhook(hook: dict[str, Any]) -> bool:
    path = hook["clientConfig"]["service"]["path"]
    return "-kueue-x-k8s-io-" in path or any(_FRAMEWORK_PATHS[f] in path for f in FRAMEWORKS)


def upstream_objects(manifests: Path) -> list[dict[str, Any]]:
    """Upstream's objects from the toolchain's copy, as its release names and wires them."""
    out = []
    for doc in yaml.safe_load_all(manifests.read_text()):
        if not doc:
            continue
        obj = copy.deepcopy(doc)
        kind, meta = obj["kind"], obj["metadata"]
        if kind == "CustomResourceDefinition":
            if meta["name"].split(".")[0] in CONVERTED:
                obj["spec"]["conversion"] = {
                    "strategy": "Webhook",
                    "webhook": {
                        "clientConfig": {"service": _service_ref("/convert")},
                        "conversionReviewVersions": ["v1"],
                    },
                }
        else:
            meta["name"] = PREFIX + meta["name"]
            if "namespace" in meta:
                meta["namespace"] = NAMESPACE
        if kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
            obj["webhooks"] = [h for h in obj["webhooks"] if _kept_webhook(h)]
            for h in obj["webhooks"]:
                h["clientConfig"]["service"] = _service_ref(h["clientConfig"]["service"]["path"])
        meta.setdefault("labels", {}).update(LABELS)
        out.append(obj)
    return out


def bindings(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The manager's ServiceAccount bound to each of upstream's manager roles."""
    subject = {"kind": "ServiceAccount", "name": SERVICE_ACCOUNT, "namespace": NAMESPACE}
    out = []
    for o in objs:
        if o["kind"] not in ("ClusterRole", "Role"):
            continue
        binding_kind = "ClusterRoleBinding" if o["kind"] == "ClusterRole" else "RoleBinding"
        meta = {"name": o["metadata"]["name"].replace("-role", "-rolebinding"), "labels": LABELS}
        if o["kind"] == "Role":
            meta["namespace"] = NAMESPACE
        out.append(
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": binding_kind,
                "metadata": meta,
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": o["kind"],
                    "name": o["metadata"]["name"],
                },
                "subjects": [subject],
            }
        )
    return out


@dataclass(frozen=True)
class KueueArgs:
    image: str  # on the site's registry (aifactory/images.py: KUEUE_REF)
    manifests: Path | None = None  # upstream's objects; default: the toolchain's copy


class Kueue(pulumi.ComponentResource):
    def __init__(self, name: str, args: KueueArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("aifactory:infra:Kueue", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        manifests = args.manifests or toolchain.kueue_manifests_path()
        if not manifests.exists():
            raise FileNotFoundError(
                f"{manifests}: Kueue's manifests are built with `aifactory toolchain build`"
            )
        upstream = upstream_objects(manifests)
        config = yaml.safe_dump(configuration())
        self.namespace = k8s.core.v1.Namespace(
            f"{name}-ns", metadata=k8s.meta.v1.ObjectMetaArgs(name=NAMESPACE, labels=LABELS), opts=child
        )
        crds = [o for o in upstream if o["kind"] == "CustomResourceDefinition"]
        rest = [o for o in upstream if o["kind"] != "CustomResourceDefinition"]
        self.crds = k8s.yaml.v2.ConfigGroup(f"{name}-crds", objs=crds, opts=child)
        meta = {"namespace": NAMESPACE, "labels": LABELS}
        own: list[dict[str, Any]] = [
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": SERVICE_ACCOUNT, **meta}},
            # Kueue fills it (internal certificate management); it must exist for the pod to mount it.
            {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": CERT_SECRET, **meta}},
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "kueue-manager-config", **meta},
                "data": {"controller_manager_config.yaml": config},
            },
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": WEBHOOK_SERVICE, **meta},
                "spec": {
                    "selector": SELECTOR,
                    "ports": [{"port": 443, "protocol": "TCP", "targetPort": WEBHOOK_PORT}],
                },
            },
        ]
        self.objects = k8s.yaml.v2.ConfigGroup(
            f"{name}-objects",
            objs=[*rest, *bindings(rest), *own],
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.namespace, self.crds]),
        )
        self.deployment = k8s.apps.v1.Deployment(
            f"{name}-controller-manager",
            metadata=k8s.meta.v1.ObjectMetaArgs(
                name="kueue-controller-manager", namespace=NAMESPACE, labels=LABELS
            ),
            spec=k8s.apps.v1.DeploymentSpecArgs(
                replicas=1,
                selector=k8s.meta.v1.LabelSelectorArgs(match_labels=SELECTOR),
                template=_pod_template(args.image, config),
            ),
            opts=pulumi.ResourceOptions(
                parent=self,
                depends_on=[self.objects],
                # the first start waits for its certificate to reach the pod (the kubelet's sync)
                custom_timeouts=pulumi.CustomTimeouts(create="6m", update="6m"),
            ),
        )
        self.register_outputs({"namespace": NAMESPACE, "frameworks": list(FRAMEWORKS)})


def _pod_template(image: str, config: str) -> k8s.core.v1.PodTemplateSpecArgs:
    # a changed Configuration rolls the pod: Kueue reads it once, at start
    digest = hashlib.sha256(config.encode()).hexdigest()[:16]
    return k8s.core.v1.PodTemplateSpecArgs(
        metadata=k8s.meta.v1.ObjectMetaArgs(
            labels={**LABELS, **SELECTOR}, annotations={"aifactory.io/config-sha256": digest}
        ),
        spec=k8s.core.v1.PodSpecArgs(
            service_account_name=SERVICE_ACCOUNT,
            termination_grace_period_seconds=10,
            # it holds no GPU, but the workers of a GPU site are all GPU machines
            tolerations=[
                k8s.core.v1.TolerationArgs(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")
            ],
            security_context=k8s.core.v1.PodSecurityContextArgs(
                run_as_non_root=True,
                run_as_user=KUEUE_UID,
                seccomp_profile=k8s.core.v1.SeccompProfileArgs(type="RuntimeDefault"),
            ),
            containers=[
                k8s.core.v1.ContainerArgs(
                    name="manager",
                    image=image,
                    args=["--config=/controller_manager_config.yaml", "--zap-log-level=2"],
                    ports=[
                        k8s.core.v1.ContainerPortArgs(name="webhook-server", container_port=WEBHOOK_PORT),
                        k8s.core.v1.ContainerPortArgs(name="metrics", container_port=METRICS_PORT),
                    ],
                    security_context=k8s.core.v1.SecurityContextArgs(
                        allow_privilege_escalation=False,
                        read_only_root_filesystem=True,
                        capabilities=k8s.core.v1.CapabilitiesArgs(drop=["ALL"]),
                    ),
                    liveness_probe=_probe("/healthz", 15, 20),
                    readiness_probe=_probe("/readyz", 5, 10),
                    resources=k8s.core.v1.ResourceRequirementsArgs(
                        requests={"cpu": "100m", "memory": "256Mi"}, limits={"memory": "512Mi"}
                    ),
                    volume_mounts=[
                        k8s.core.v1.VolumeMountArgs(name="cert", mount_path=CERT_DIR, read_only=True),
                        k8s.core.v1.VolumeMountArgs(
                            name="manager-config",
                            mount_path="/controller_manager_config.yaml",
                            sub_path="controller_manager_config.yaml",
                        ),
                    ],
                )
            ],
            volumes=[
                k8s.core.v1.VolumeArgs(
                    name="cert",
                    secret=k8s.core.v1.SecretVolumeSourceArgs(secret_name=CERT_SECRET, default_mode=0o644),
                ),
                k8s.core.v1.VolumeArgs(
                    name="manager-config",
                    config_map=k8s.core.v1.ConfigMapVolumeSourceArgs(name="kueue-manager-config"),
                ),
            ],
        ),
    )


def _probe(path: str, delay: int, period: int) -> k8s.core.v1.ProbeArgs:
    return k8s.core.v1.ProbeArgs(
        http_get=k8s.core.v1.HTTPGetActionArgs(path=path, port=HEALTH_PORT),
        initial_delay_seconds=delay,
        period_seconds=period,
    )
