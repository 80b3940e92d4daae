"""The Tenant CustomResourceDefinition: OpenAPI schema + CEL rules with messages that name the field.

Cluster-scoped on purpose: a tenant owns cluster-wide things (namespaces, a Slurm account, a Kueue
ClusterQueue), and its name is the Slurm account name, which must be unique site-wide; a namespaced
Tenant would need a namespace to exist before the namespaces it creates.

The GPU models a quota may name are the site's (`known_models`): a model the site does not have is
rejected at the API, naming the key, instead of becoming a quota nobody can use.
"""

from __future__ import annotations

from typing import Any

import yaml

from operators.tenants.spec import FINALIZER, GROUP, KIND, PEERING, PLURAL, STRICT_MEMBER_ROLE, VERSION

DNS_LABEL = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
# Kubernetes user and group names are free-form strings; this keeps them printable and unambiguous
# (emails, OIDC subjects, system:serviceaccount:ns:name).
K8S_SUBJECT = "^[A-Za-z0-9][A-Za-z0-9@._:/+=-]*$"
POSIX_USER = "^[a-z_][a-z0-9_-]*$"
RESERVED_ACCOUNTS = ["root", "normal", "default"]
SYSTEM_NAMESPACES = ["default", "kube-system", "kube-public", "kube-node-lease"]


def _cel_list(items: list[str]) -> str:
    return "[" + ", ".join(f"'{i}'" for i in items) + "]"


def _int(minimum: int, maximum: int, description: str) -> dict[str, Any]:
    return {"type": "integer", "minimum": minimum, "maximum": maximum, "description": description}


def _names(pattern: str, max_len: int, what: str, max_items: int = 256) -> dict[str, Any]:
    return {
        "type": "array",
        "maxItems": max_items,
        "x-kubernetes-list-type": "set",
        "items": {
            "type": "string",
            "maxLength": max_len,
            "x-kubernetes-validations": [
                {
                    "rule": f"self.matches('{pattern}')",
                    "messageExpression": f"'\"' + self + '\" is not a valid {what}'",
                }
            ],
        },
    }


def schema(known_models: list[str]) -> dict[str, Any]:
    models = sorted(set(known_models))
    cel_models = _cel_list(models)
    spec = {
        "type": "object",
        "required": ["displayName", "gpuQuota"],
        "properties": {
            "displayName": {"type": "string", "minLength": 1, "maxLength": 128},
            "members": {
                "type": "object",
                "description": "Who may use the tenant's quota, on each scheduler.",
                "properties": {
                    "users": _names(K8S_SUBJECT, 253, "Kubernetes user name"),
                    "groups": _names(K8S_SUBJECT, 253, "Kubernetes group name"),
                    "slurmUsers": _names(
                        POSIX_USER, 32, "Slurm user name (POSIX: lower case, digits, _ and -)"
                    ),
                },
            },
            "gpuQuota": {
                "type": "object",
                "description": f"GPUs per model, e.g. {{h100: 16}}. This site: {', '.join(models)}.",
                "maxProperties": 16,
                "additionalProperties": _int(0, 100000, "GPUs of this model"),
                "x-kubernetes-validations": [
                    {
                        "rule": f"self.all(m, m in {cel_models})",
                        "messageExpression": (
                            f"'unknown GPU model ' + self.filter(m, !(m in {cel_models}))[0] "
                            f"+ '; this site has {', '.join(models) or 'none'}'"
                        ),
                    }
                ],
            },
            "cohort": {
                "type": "string",
                "description": (
                    "The Kueue cohort whose members lend each other idle GPUs (e.g. a consortium's "
                    "tenants). Default: the site cohort, aifactory."
                ),
                "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
                "maxLength": 63,
            },
            "gpuBorrowingLimit": {
                "type": "object",
                "description": (
                    "GPUs per model the tenant may borrow on Kubernetes beyond its gpuQuota while "
                    "other tenants leave theirs idle (Kueue cohort); reclaimed by preemption when "
                    "a lender needs its quota back. Default: none."
                ),
                "maxProperties": 16,
                "additionalProperties": _int(0, 100000, "GPUs of this model"),
            },
            "gpuHourBudget": {
                "type": "object",
                "description": (
                    "GPU-hours per period on both schedulers together (the operator's ledger: "
                    "Slurm jobs from sacct, pods' run times; it never decays). Spent: no new Slurm "
                    "job or Kubernetes workload starts for the tenant until the next period."
                ),
                "required": ["gpuHours"],
                "properties": {
                    "gpuHours": {
                        "type": "number",
                        "minimum": 0,
                        "maximum": 10**9,
                        "description": "GPU-hours the tenant may use per period (fractions allowed)",
                    },
                    "period": {
                        "type": "string",
                        "enum": ["Monthly", "Quarterly", "Yearly", "Total"],
                        "default": "Monthly",
                    },
                },
            },
            "slurm": {
                "type": "object",
                "properties": {
                    "fairshare": _int(
                        1,
                        1000000,
                        "fair share: the Slurm account's Fairshare and the Kueue fair-sharing weight",
                    ),
                    "maxGPUsPerUser": _int(0, 100000, "QOS MaxTRESPerUser=gres/gpu"),
                    "maxJobsPerUser": _int(1, 1000000, "QOS MaxJobsPerUser"),
                },
            },
            "namespaces": {
                **_names(DNS_LABEL, 63, "namespace name (DNS label)", max_items=32),
                "description": "Namespaces to create (default: one named after the tenant).",
                "x-kubernetes-validations": [
                    {
                        "rule": f"self.all(n, !(n in {_cel_list(SYSTEM_NAMESPACES)}) "
                        "&& !n.startsWith('kube-'))",
                        "message": "system namespaces cannot belong to a tenant",
                    }
                ],
            },
            "networkIsolation": {
                "type": "boolean",
                "default": True,
                "description": "Default-deny ingress from other tenants' namespaces.",
            },
            "isolation": {
                "type": "string",
                "enum": ["standard", "strict"],
                "default": "standard",
                "description": "strict (sensitive data): default-deny ingress and egress except DNS and "
                "the tenant's own namespaces, PodSecurity restricted on its namespaces, and members "
                "who cannot edit NetworkPolicies, ResourceQuotas or LimitRanges.",
            },
            "namespaceDeletionPolicy": {
                "type": "string",
                "enum": ["Retain", "Delete"],
                "default": "Retain",
                "description": "A namespace removed from `namespaces`: Retain releases it with its "
                "workloads (the tenant's quota, queue, policy and member binding are removed); Delete "
                "deletes it once no pod runs there (until then: condition NamespaceInUse).",
            },
        },
        "x-kubernetes-validations": [
            {
                "rule": "!has(self.slurm) || !has(self.slurm.maxGPUsPerUser) || "
                "self.slurm.maxGPUsPerUser <= self.gpuQuota.map(m, self.gpuQuota[m]).sum()",
                "message": "slurm.maxGPUsPerUser cannot exceed the tenant's total gpuQuota",
                "fieldPath": ".slurm.maxGPUsPerUser",
            },
            {
                "rule": "!has(self.gpuBorrowingLimit) || self.gpuBorrowingLimit.all(m, m in self.gpuQuota)",
                "messageExpression": (
                    "'gpuBorrowingLimit names ' + self.gpuBorrowingLimit.filter(m, !(m in self.gpuQuota))[0]"
                    " + ', which is not in gpuQuota'"
                ),
                "fieldPath": ".gpuBorrowingLimit",
            },
        ],
    }
    condition = {
        "type": "object",
        "required": ["type", "status"],
        "properties": {
            "type": {"type": "string"},
            "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
            "reason": {"type": "string"},
            "message": {"type": "string"},
            "lastTransitionTime": {"type": "string", "format": "date-time"},
            "observedGeneration": {"type": "integer"},
        },
    }
    usage = {"type": "object", "additionalProperties": {"type": "integer"}}
    status = {
        "type": "object",
        "properties": {
            "conditions": {
                "type": "array",
                "items": condition,
                # Written whole, by the operator alone (a merge patch replaces a list anyway), so
                # atomic: a list-map makes the API server track fields per condition. Measured,
                # 200 status writes: 1.9 s of API server CPU as a list-map, 0.95 s atomic.
                "x-kubernetes-list-type": "atomic",
            },
            "observedGeneration": {"type": "integer", "description": "spec generation last applied"},
            "quota": {"type": "string", "description": "applied quota, e.g. h100=8"},
            "namespaces": {"type": "array", "items": {"type": "string"}},
            "usage": {
                "type": "object",
                "description": "GPUs in use now, per model",
                "properties": {"kubernetes": usage, "slurm": usage, "summary": {"type": "string"}},
            },
            "overshoot": {
                **usage,
                "description": "GPUs held beyond the entitlement on both schedulers together, per "
                "model and total (two admissions within one drift interval); absent when within it",
            },
            "budget": {
                "type": "object",
                "description": "this period's GPU-hours against the budget, per scheduler and model",
                "x-kubernetes-preserve-unknown-fields": True,
            },
            "budgetHistory": {
                "type": "object",
                "description": "closed periods' GPU-hours per scheduler and model, and peak GPUs",
                "x-kubernetes-preserve-unknown-fields": True,
            },
            "ledger": {
                "type": "object",
                "description": "the operator's GPU-second ledger for this period (pods by uid)",
                "x-kubernetes-preserve-unknown-fields": True,
            },
            "energy": {
                "type": "object",
                "description": "this month's energy: IT and facility kWh, kgCO2e, litres of water",
                "properties": {
                    "period": {"type": "string"},
                    "itKWh": {"type": "number"},
                    "facilityKWh": {"type": "number"},
                    "co2eKg": {"type": "number"},
                    "waterL": {"type": "number"},
                    "updated": {"type": "string"},
                },
            },
            "energyHistory": {
                "type": "object",
                "description": "closed months' energy, as status.energy had it at the month's end",
                "x-kubernetes-preserve-unknown-fields": True,
            },
            "kopf": {
                "type": "object",
                "description": "the operator's bookkeeping: handler progress, the spec last handled",
                "x-kubernetes-preserve-unknown-fields": True,
            },
        },
    }
    return {
        "type": "object",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
        "x-kubernetes-validations": [
            {
                # The name becomes the Slurm account (and QOS suffix): short, lower case, no dots.
                "rule": "self.metadata.name.matches('^[a-z][a-z0-9-]{0,38}[a-z0-9]$') && "
                f"!(self.metadata.name in {_cel_list(RESERVED_ACCOUNTS)})",
                "message": "metadata.name must be 2-40 characters of a-z, 0-9 and '-', start with a "
                "letter, and not be root/normal/default (it becomes the Slurm account name)",
            }
        ],
    }


def _condition_column(name: str, ctype: str) -> dict[str, Any]:
    return {"name": name, "type": "string", "jsonPath": f'.status.conditions[?(@.type=="{ctype}")].status'}


def crd(known_models: list[str]) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{GROUP}", "labels": {"app.kubernetes.io/part-of": "aifactory"}},
        "spec": {
            "group": GROUP,
            "scope": "Cluster",
            "names": {"kind": KIND, "plural": PLURAL, "singular": "tenant", "shortNames": ["tn"]},
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "schema": {"openAPIV3Schema": schema(known_models)},
                    "additionalPrinterColumns": [
                        {"name": "Display", "type": "string", "jsonPath": ".spec.displayName"},
                        {"name": "Quota", "type": "string", "jsonPath": ".status.quota"},
                        {"name": "In use", "type": "string", "jsonPath": ".status.usage.summary"},
                        _condition_column("Ready", "Ready"),
                        _condition_column("K8s", "KubernetesSynced"),
                        _condition_column("Slurm", "SlurmSynced"),
                        _condition_column("Overcommit", "Overcommitted"),
                        {"name": "Budget %", "type": "number", "jsonPath": ".status.budget.percentUsed"},
                        {"name": "kWh", "type": "number", "jsonPath": ".status.energy.itKWh"},
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                    ],
                }
            ],
        },
    }


def crd_yaml(known_models: list[str]) -> str:
    return yaml.safe_dump(crd(known_models), sort_keys=False)


def finalizer_policy() -> list[dict[str, Any]]:
    """A MutatingAdmissionPolicy (GA in Kubernetes 1.36) that gives every new Tenant the operator's
    finalizer as it is created. A tenant is then never without it, even before the operator has
    seen it, and kopf starts the handlers on the first event instead of first PATCHing the
    finalizer in (one write and one watch event less per tenant). `Ignore`: where the policy cannot
    run, kopf adds the finalizer itself."""
    name = f"{PLURAL}.{GROUP}-finalizer"
    add_finalizer = f'Object{{metadata: Object.metadata{{finalizers: ["{FINALIZER}"]}}}}'
    labels = {"app.kubernetes.io/part-of": "aifactory"}
    api = "admissionregistration.k8s.io/v1"
    return [
        {
            "apiVersion": api,
            "kind": "MutatingAdmissionPolicy",
            "metadata": {"name": name, "labels": labels},
            "spec": {
                "matchConstraints": {
                    "resourceRules": [
                        {
                            "apiGroups": [GROUP],
                            "apiVersions": ["*"],
                            "operations": ["CREATE"],
                            "resources": [PLURAL],
                        }
                    ]
                },
                "failurePolicy": "Ignore",
                "reinvocationPolicy": "Never",
                "mutations": [
                    {
                        # metadata.finalizers is a set: the apply merges ours with any others.
                        "patchType": "ApplyConfiguration",
                        "applyConfiguration": {"expression": add_finalizer},
                    }
                ],
            },
        },
        {
            "apiVersion": api,
            "kind": "MutatingAdmissionPolicyBinding",
            "metadata": {"name": name, "labels": labels},
            "spec": {"policyName": name},
        },
    ]


def strict_member_role() -> dict[str, Any]:
    """The ClusterRole a strict tenant's members get in its namespaces: their workloads, and the
    isolation, quotas and limits only to read."""
    every = ["get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"]
    read = ["get", "list", "watch"]

    def rule(groups: list[str], resources: list[str], verbs: list[str]) -> dict[str, Any]:
        return {"apiGroups": groups, "resources": resources, "verbs": verbs}

    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": STRICT_MEMBER_ROLE, "labels": {"app.kubernetes.io/part-of": "aifactory"}},
        "rules": [
            rule(
                [""],
                [
                    "pods",
                    "pods/log",
                    "pods/exec",
                    "pods/attach",
                    "pods/portforward",
                    "services",
                    "configmaps",
                    "secrets",
                    "persistentvolumeclaims",
                ],
                every,
            ),
            rule([""], ["events", "serviceaccounts", "resourcequotas", "limitranges"], read),
            rule(["apps"], ["deployments", "statefulsets", "replicasets", "daemonsets"], every),
            rule(["batch"], ["jobs", "cronjobs"], every),
            rule(["policy"], ["poddisruptionbudgets"], every),
            rule(["networking.k8s.io"], ["networkpolicies"], read),
            rule(["kueue.x-k8s.io"], ["localqueues", "workloads"], read),
        ],
    }


def peering() -> list[dict[str, Any]]:
    """kopf's cluster-wide peering resource (its own CRD, as kopf documents it) and the one peering
    every tenant operator joins (spec.PEERING): kopf keeps the live operators in its status."""
    labels = {"app.kubernetes.io/part-of": "aifactory"}
    return [
        {
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": "clusterkopfpeerings.kopf.dev", "labels": labels},
            "spec": {
                "scope": "Cluster",
                "group": "kopf.dev",
                "names": {
                    "kind": "ClusterKopfPeering",
                    "plural": "clusterkopfpeerings",
                    "singular": "clusterkopfpeering",
                },
                "versions": [
                    {
                        "name": "v1",
                        "served": True,
                        "storage": True,
                        "schema": {
                            "openAPIV3Schema": {
                                "type": "object",
                                "properties": {
                                    "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
                                },
                            }
                        },
                    }
                ],
            },
        },
        {
            "apiVersion": "kopf.dev/v1",
            "kind": "ClusterKopfPeering",
            "metadata": {"name": PEERING, "labels": labels},
        },
    ]
