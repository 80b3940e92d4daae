"""What the Ansible roles configure, read from their defaults: the expectations of the node checks.

Reading playbooks/roles/*/defaults/main.yml (rather than repeating the values here) keeps the
checks and the roles from drifting apart. Only plain (untemplated) values are read this way.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import yaml

from aifactory import paths

ROLES_DIR = paths.REPO / "playbooks" / "roles"


@cache
def defaults(role: str) -> dict[str, Any]:
    return yaml.safe_load((ROLES_DIR / role / "defaults" / "main.yml").read_text()) or {}


def default(role: str, key: str) -> Any:
    value = defaults(role)[key]
    if isinstance(value, str) and "{{" in value:
        raise ValueError(f"{role}.{key} is templated ({value!r}): not usable as an expectation")
    return value


# Services each role leaves enabled and running (the roles' systemd_service tasks).
SERVICES: dict[str, tuple[str, ...]] = {
    "head": ("munge", "mariadb", "slurmdbd", "slurmctld"),
    "k8s-control": ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"),
    "slurm": ("munge", "slurmd"),  # pool
    "kubernetes": ("containerd", "kubelet", "kube-proxy"),  # pool (the policy agent is a pod)
}
