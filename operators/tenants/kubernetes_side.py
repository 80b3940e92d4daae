"""The Kubernetes side: what a tenant gets in the cluster, and how it is applied.

Per namespace: the Namespace (labelled with the tenant), a ResourceQuota on GPUs, a LimitRange,
a RoleBinding of the members to the `edit` ClusterRole, and (networkIsolation) a NetworkPolicy
that only admits traffic from the tenant's own namespaces. With Kueue's CRDs installed, also a
ClusterQueue per tenant in the site cohort (one flavor per GPU model, its fair-sharing weight the
tenant's fairshare, borrowing only up to gpuBorrowingLimit) and a LocalQueue `default` per namespace.

Per-model GPU quota convention: the NVIDIA device plugin is configured (resources.gpus[].name) to
also advertise `nvidia.com/gpu-<model>`; the ResourceQuota caps `requests.nvidia.com/gpu` (the
tenant's total) and `requests.nvidia.com/gpu-<model>` per model. Kueue, when present, enforces the
per-model split through flavors keyed on the node label `aifactory.io/gpu-model`.

A quota is per namespace in Kubernetes; the tenant's namespaces share its one entitlement with each
other and with Slurm (entitlement.py): each namespace's ResourceQuota is what the others and Slurm
leave, recomputed from what the tenant holds every drift interval.

Everything is written with server-side apply (force, one field manager), so re-applying is
idempotent and puts back what someone edited by hand.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

from kubernetes import client as k8s_client

from operators.tenants.budget import Run
from operators.tenants.entitlement import (
    UNKNOWN_MODEL,
    Holdings,
    namespace_limits,
    queue_limits,
)
from operators.tenants.spec import FIELD_MANAGER, MANAGED_BY, STRICT_MEMBER_ROLE, TENANT_LABEL, TenantSpec

GPU = "nvidia.com/gpu"
QUOTA_NAME, LIMITS_NAME, BINDING_NAME, POLICY_NAME = (
    "tenant-gpu-quota",
    "tenant-defaults",
    "tenant-members",
    "tenant-isolation",
)
KUEUE = "kueue.x-k8s.io/v1beta2"
GPU_TOLERATION = {"key": GPU, "operator": "Exists", "effect": "NoSchedule"}
MODEL_LABEL = "aifactory.io/gpu-model"  # set on every GPU node from what its driver reports


# PodSecurity admission on a strict tenant's namespaces: the restricted profile, enforced.
RESTRICTED = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
}
DNS_PEER = {
    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
    "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
}


def _meta(name: str, tenant: str, namespace: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": {TENANT_LABEL: tenant, **MANAGED_BY}}
    if namespace:
        meta["namespace"] = namespace
    return meta


def desired_objects(
    spec: TenantSpec, kueue: bool = False, held: Holdings | None = None
) -> list[dict[str, Any]]:
    """Every object the tenant should have, in apply order (namespaces first). Each namespace's GPU
    quota is its share of the tenant's one entitlement, given what the tenant holds (entitlement.py)."""
    held = held or Holdings()
    subjects = [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": u} for u in spec.users]
    subjects += [{"kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": g} for g in spec.groups]
    objs: list[dict[str, Any]] = []
    for ns in spec.namespaces:
        meta = _meta(ns, spec.name)
        if spec.strict:
            meta["labels"] |= RESTRICTED
        objs.append({"apiVersion": "v1", "kind": "Namespace", "metadata": meta})
    for ns in spec.namespaces:
        share = namespace_limits(spec.ceiling, held, ns)
        hard = {f"requests.{GPU}{'-' + m if m else ''}": str(n) for m, n in sorted(share.items())}
        objs.append(
            {
                "apiVersion": "v1",
                "kind": "ResourceQuota",
                "metadata": _meta(QUOTA_NAME, spec.name, ns),
                "spec": {"hard": hard},
            }
        )
        objs.append(
            {
                # Defaults for containers that ask for nothing, so they are schedulable and
                # accountable; GPUs are left to the quota (a LimitRange max would reject first,
                # with a message that does not say "quota").
                "apiVersion": "v1",
                "kind": "LimitRange",
                "metadata": _meta(LIMITS_NAME, spec.name, ns),
                "spec": {
                    "limits": [
                        {
                            "type": "Container",
                            "defaultRequest": {"cpu": "100m", "memory": "256Mi"},
                            "default": {"memory": "1Gi"},
                        }
                    ]
                },
            }
        )
        objs.append(
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": _meta(BINDING_NAME, spec.name, ns),
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": STRICT_MEMBER_ROLE if spec.strict else "edit",
                },
                "subjects": subjects,
            }
        )
        if spec.network_isolation or spec.strict:
            own = [{"namespaceSelector": {"matchLabels": {TENANT_LABEL: spec.name}}}]
            policy: dict[str, Any] = {
                "podSelector": {},
                "policyTypes": ["Ingress"],
                "ingress": [{"from": own}],
            }
            if spec.strict:  # and nothing out but to its own namespaces and cluster DNS
                dns = [{"protocol": p, "port": 53} for p in ("UDP", "TCP")]
                policy["policyTypes"].append("Egress")
                policy["egress"] = [{"to": own}, {"to": [DNS_PEER], "ports": dns}]
            objs.append(
                {
                    "apiVersion": "networking.k8s.io/v1",
                    "kind": "NetworkPolicy",
                    "metadata": _meta(POLICY_NAME, spec.name, ns),
                    "spec": policy,
                }
            )
    if kueue and spec.gpu_quota:  # a ClusterQueue needs at least one flavor
        objs += kueue_objects(spec, held)
    return objs


def kueue_objects(spec: TenantSpec, held: Holdings) -> list[dict[str, Any]]:
    # Quantities as strings: the API server returns them so, and drift compares what it returns.
    flavors = [
        {
            "apiVersion": KUEUE,
            "kind": "ResourceFlavor",
            "metadata": {"name": f"gpu-{m}", "labels": dict(MANAGED_BY)},  # shared by all tenants
            # the GPU nodes' taint is tolerated by the pods Kueue admits on them
            "spec": {"nodeLabels": {MODEL_LABEL: m}, "tolerations": [GPU_TOLERATION]},
        }
        for m in sorted(spec.gpu_quota)
    ]
    cq = {
        "apiVersion": KUEUE,
        "kind": "ClusterQueue",
        "metadata": _meta(f"tenant-{spec.name}", spec.name),
        "spec": {
            "namespaceSelector": {"matchLabels": {TENANT_LABEL: spec.name}},
            "cohortName": spec.cohort,
            "fairSharing": {"weight": str(spec.fairshare)},
            # A lender gets its quota back by preempting what borrowed it; within the queue,
            # higher priority work preempts lower.
            "preemption": {"reclaimWithinCohort": "Any", "withinClusterQueue": "LowerPriority"},
            # a spent budget admits nothing new; what runs, runs to its end
            "stopPolicy": "Hold" if held.spent else "None",
            "resourceGroups": [
                {
                    "coveredResources": [GPU],
                    "flavors": [
                        {
                            "name": f"gpu-{m}",
                            "resources": [
                                {
                                    "name": GPU,
                                    "nominalQuota": str(n),
                                    "borrowingLimit": str(spec.gpu_borrowing.get(m, 0)),
                                }
                            ],
                        }
                        for m, n in sorted(queue_limits(spec.gpu_quota, held).items())
                    ],
                }
            ],
        },
    }
    lqs = [
        {
            "apiVersion": KUEUE,
            "kind": "LocalQueue",
            "metadata": _meta("default", spec.name, ns),
            "spec": {"clusterQueue": f"tenant-{spec.name}"},
        }
        for ns in spec.namespaces
    ]
    return [*flavors, cq, *lqs]


# --- REST paths ----------------------------------------------------------------------------

_PLURALS = {
    "Namespace": "namespaces",
    "ResourceQuota": "resourcequotas",
    "LimitRange": "limitranges",
    "RoleBinding": "rolebindings",
    "NetworkPolicy": "networkpolicies",
    "ResourceFlavor": "resourceflavors",
    "ClusterQueue": "clusterqueues",
    "LocalQueue": "localqueues",
    "Pod": "pods",
    "Node": "nodes",
    "CustomResourceDefinition": "customresourcedefinitions",
    "Tenant": "tenants",
    "MutatingAdmissionPolicy": "mutatingadmissionpolicies",
    "MutatingAdmissionPolicyBinding": "mutatingadmissionpolicybindings",
    "ClusterKopfPeering": "clusterkopfpeerings",
    "ClusterRole": "clusterroles",
}


def path(api_version: str, kind: str, name: str | None = None, namespace: str | None = None) -> str:
    base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    parts = [base]
    if namespace:
        parts += ["namespaces", namespace]
    parts.append(_PLURALS[kind])
    if name:
        parts.append(quote(name))
    return "/".join(parts)


def object_path(obj: dict[str, Any]) -> str:
    meta = obj["metadata"]
    return path(obj["apiVersion"], obj["kind"], meta["name"], meta.get("namespace"))


class ApiError(RuntimeError):
    def __init__(self, status: int, message: str):
        super().__init__(f"{status}: {message}")
        self.status = status


@dataclass
class Kube:
    """Plain REST on the kubernetes client's connection pool and auth: server-side apply needs
    a content type the generated typed clients cannot send, and paths are all we need."""

    api: k8s_client.ApiClient

    def request(
        self,
        method: str,
        url_path: str,
        body: Any = None,
        query: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> dict[str, Any] | None:
        if query:
            url_path += "?" + urlencode(query)
        m, url, headers, _, _ = self.api.param_serialize(
            method, url_path, header_params={"Content-Type": content_type}, auth_settings=["BearerToken"]
        )
        headers["Accept"] = "application/json"
        # The client serializes a dict itself for */json, */*+json and */*+yaml (apply patches).
        resp = self.api.call_api(m, url, headers, body, _request_timeout=30)
        data = resp.read()
        if resp.status == 404 and method in ("GET", "DELETE"):
            return None
        if resp.status >= 400:
            try:
                msg = json.loads(data).get("message", data.decode())
            except ValueError:
                msg = data.decode(errors="replace")
            raise ApiError(resp.status, msg)
        return json.loads(data) if data else {}

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        out = self.request(
            "PATCH",
            object_path(obj),
            obj,
            query={"fieldManager": FIELD_MANAGER, "force": "true"},
            content_type="application/apply-patch+yaml",
        )
        assert out is not None
        return out

    def get(self, url_path: str) -> dict[str, Any] | None:
        return self.request("GET", url_path)

    def delete(self, url_path: str) -> None:
        self.request("DELETE", url_path, query={"propagationPolicy": "Background"})

    def list(self, url_path: str, selector: str | None = None) -> list[dict[str, Any]]:
        out = self.request("GET", url_path, query={"labelSelector": selector} if selector else None)
        return list((out or {}).get("items", []))

    def pages(self, url_path: str, size: int = 100) -> Iterator[dict[str, Any]]:
        """The collection's items a page at a time (limit/continue): a reader that stops early
        reads no further, and no more than one page is held at once."""
        query = {"limit": str(size)}
        while True:
            out = self.request("GET", url_path, query=query) or {}
            yield from out.get("items", [])
            if not (token := out.get("metadata", {}).get("continue")):
                return
            query["continue"] = token

    def has_kueue(self) -> bool:
        return (
            self.get(
                path("apiextensions.k8s.io/v1", "CustomResourceDefinition", "clusterqueues.kueue.x-k8s.io")
            )
            is not None
        )


def differs(want: Any, have: Any) -> bool:
    """Whether the live object lost something we set (extra fields others own are fine).

    An empty list or map we set reads back as absent (the API server omits it)."""
    if want in ([], {}) and have is None:
        return False
    if isinstance(want, dict):
        return not isinstance(have, dict) or any(differs(v, have.get(k)) for k, v in want.items())
    if isinstance(want, list):
        return (
            not isinstance(have, list)
            or len(want) != len(have)
            or any(differs(w, h) for w, h in zip(want, have, strict=True))
        )
    return want != have


def drifted(want: dict[str, Any], live: dict[str, Any] | None) -> bool:
    if live is None:
        return True
    body = {k: v for k, v in want.items() if k not in ("apiVersion", "kind", "metadata")}
    return differs(body, live) or differs(want["metadata"].get("labels", {}), live["metadata"].get("labels"))


class NamespaceConflict(RuntimeError):
    """A namespace the tenant lists exists and is not the tenant's: it is never taken over."""


def claim_namespaces(
    kube: Kube, tenant: str, namespaces: list[dict[str, Any]], create: bool = False
) -> set[str]:
    """Refuse namespaces that exist without this tenant's label (another tenant's, a system
    component's): labelling them would make them the tenant's, and its deletion would delete them.

    With `create` (a tenant's first creation) each Namespace object is created at once: a 201 proves
    it is the tenant's in one request, where a read and an apply take two. Returns those created."""
    created = set()
    for obj in namespaces:
        ns = obj["metadata"]["name"]
        if create:
            try:
                kube.request("POST", path("v1", "Namespace"), obj, query={"fieldManager": FIELD_MANAGER})
                created.add(ns)
                continue
            except ApiError as e:
                if e.status != 409:  # 409: it exists; whose it is decides below
                    raise
        live = kube.get(path("v1", "Namespace", ns))
        owner = ((live or {}).get("metadata", {}).get("labels") or {}).get(TENANT_LABEL)
        if live is not None and owner != tenant:
            whose = f"tenant {owner}" if owner else "no tenant (created outside the operator)"
            raise NamespaceConflict(f"namespace {ns} already exists and belongs to {whose}; not taken over")
    return created


def write(
    kube: Kube, tenant: str, want: list[dict[str, Any]], fresh: bool = False, check_drift: bool = False
) -> list[str]:
    """Claim the tenant's namespaces (created at once when `fresh`, a first creation), then apply
    every other object; with `check_drift`, only those that differ from the live ones. Returns
    the objects that had drifted."""
    created = claim_namespaces(kube, tenant, [o for o in want if o["kind"] == "Namespace"], fresh)
    changed = []
    for obj in want:
        if obj["kind"] == "Namespace" and obj["metadata"]["name"] in created:
            continue
        if check_drift:
            if not drifted(obj, kube.get(object_path(obj))):
                continue
            changed.append(f"{obj['kind']} {obj['metadata'].get('namespace', '')}/{obj['metadata']['name']}")
        kube.apply(obj)
    return changed


def owned(kube: Kube, tenant: str, kueue: bool) -> list[str]:
    """Paths of every object the tenant owns now (found by label), for cleanup of leftovers."""
    sel = f"{TENANT_LABEL}={tenant}"
    paths = [path("v1", "Namespace", o["metadata"]["name"]) for o in kube.list(path("v1", "Namespace"), sel)]
    if kueue:
        paths += [
            path(KUEUE, "ClusterQueue", o["metadata"]["name"])
            for o in kube.list(path(KUEUE, "ClusterQueue"), sel)
        ]
    return paths


class NamespaceInUse(RuntimeError):
    """A namespace to delete (namespaceDeletionPolicy Delete) still runs pods: it stays, for now."""


# The objects that carry the tenant's GPU limits (entitlement.py): re-applied alone when only what
# the tenant holds has moved.
LIMIT_KINDS = ("ResourceQuota", "ClusterQueue")


def drop_unused_flavors(kube: Kube, models: list[str]) -> list[str]:
    """Delete the shared ResourceFlavors of `models` that no live ClusterQueue names any more: the
    last tenant of a model takes its flavor along while Kueue runs to release it (Kueue's finalizer
    would otherwise hold it, and a `pulumi destroy` waiting for Kueue's CRDs, after Kueue is gone).
    A later tenant of the model makes it again."""
    # Read page by page and stop once every flavor is seen in use: with many tenants, each deletion
    # would otherwise read (and hold) every ClusterQueue of the site.
    left = {f"gpu-{m}" for m in models}
    for cq in kube.pages(path(KUEUE, "ClusterQueue")):
        if not cq["metadata"].get("deletionTimestamp"):
            left -= {
                f["name"] for group in cq["spec"].get("resourceGroups", []) for f in group.get("flavors", [])
            }
        if not left:
            break
    unused = sorted(left)
    for name in unused:
        kube.delete(path(KUEUE, "ResourceFlavor", name))
    return unused


def _unfinished_pods(kube: Kube, namespace: str) -> list[dict[str, Any]]:
    pods = kube.list(path("v1", "Pod", namespace=namespace))
    return [p for p in pods if p.get("status", {}).get("phase") not in ("Succeeded", "Failed")]


def let_go(kube: Kube, tenant: str, namespace: str, policy: str, kueue: bool) -> str:
    """A namespace the tenant no longer lists. Retain: release it, its workloads untouched (the
    tenant's objects in it removed, its labels dropped, so no quota or queue applies there any more).
    Delete: delete it, only when no pod runs there. Returns what was done."""
    if policy == "Delete":
        running = len(_unfinished_pods(kube, namespace))
        if running:
            raise NamespaceInUse(
                f"namespace {namespace} left the tenant's spec but {running} pod(s) still run there: "
                "not deleted (namespaceDeletionPolicy: Delete) until they finish"
            )
        kube.delete(path("v1", "Namespace", namespace))
        return f"deleted namespace {namespace}"
    for kind, name, api_version in (
        ("ResourceQuota", QUOTA_NAME, "v1"),
        ("LimitRange", LIMITS_NAME, "v1"),
        ("RoleBinding", BINDING_NAME, "rbac.authorization.k8s.io/v1"),
        ("NetworkPolicy", POLICY_NAME, "networking.k8s.io/v1"),
    ):
        kube.delete(path(api_version, kind, name, namespace))
    if kueue:
        kube.delete(path(KUEUE, "LocalQueue", "default", namespace))
    labels = {TENANT_LABEL: None, **dict.fromkeys(MANAGED_BY)}
    kube.request(
        "PATCH",
        path("v1", "Namespace", namespace),
        {"metadata": {"labels": labels}},
        content_type="application/merge-patch+json",
    )
    return f"released namespace {namespace} (its workloads kept)"


@dataclass(frozen=True)
class GpuPod:
    namespace: str
    model: str
    gpus: int
    finished: bool
    run: Run | None  # None until it has started
    node: str | None = None  # where it runs (energy attribution), None until scheduled


def _epoch(stamp: str | None) -> float | None:
    return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() if stamp else None


def _finished_at(pod: dict[str, Any]) -> float | None:
    ends = [
        _epoch((cs.get("state") or {}).get("terminated", {}).get("finishedAt"))
        for cs in (pod.get("status") or {}).get("containerStatuses") or []
    ]
    return max((e for e in ends if e is not None), default=None)


def gpu_pods(kube: Kube, namespaces: list[str] | None) -> list[GpuPod]:
    """The pods that ask for GPUs, finished or not, in the namespaces (None: all, in one call): the
    model from a per-model resource name, else from the node's `aifactory.io/gpu-model` label (pods
    not yet on a node, and nodes without it, count as UNKNOWN_MODEL); a pod runs from its start to
    its containers' last finish."""
    models: dict[str, str] = {}

    def node_model(node: str | None) -> str:
        if not node:
            return UNKNOWN_MODEL
        if node not in models:
            labels = ((kube.get(path("v1", "Node", node)) or {}).get("metadata") or {}).get("labels") or {}
            models[node] = labels.get(MODEL_LABEL, UNKNOWN_MODEL)
        return models[node]

    if namespaces is None:
        pods = [(pod["metadata"]["namespace"], pod) for pod in kube.list(path("v1", "Pod"))]
    else:
        pods = [(ns, pod) for ns in namespaces for pod in kube.list(path("v1", "Pod", namespace=ns))]
    out = []
    for ns, pod in pods:
        status = pod.get("status") or {}
        finished = status.get("phase") in ("Succeeded", "Failed")
        start = _epoch(status.get("startTime"))
        end = _finished_at(pod) if finished else None
        for c in pod["spec"].get("containers", []):
            for res, qty in (c.get("resources", {}).get("limits") or {}).items():
                if res.startswith(GPU) and int(qty):
                    model = res[len(GPU) :].lstrip("-") or node_model(pod["spec"].get("nodeName"))
                    uid = f"{pod['metadata']['uid']}/{c['name']}"
                    run = Run(model, int(qty), start, end, uid) if start is not None else None
                    node = pod["spec"].get("nodeName")
                    out.append(GpuPod(ns, model, int(qty), finished, run, node))
    return out


def held_by(pods: list[GpuPod]) -> dict[str, dict[str, int]]:
    """GPUs held by the pods that are not finished, per namespace and model."""
    held: dict[str, dict[str, int]] = {}
    for p in pods:
        if not p.finished:
            per_model = held.setdefault(p.namespace, {})
            per_model[p.model] = per_model.get(p.model, 0) + p.gpus
    return held


def gpus_held(kube: Kube, namespaces: list[str]) -> dict[str, dict[str, int]]:
    return held_by(gpu_pods(kube, namespaces))
