"""The Ansible inventory of a site, derived from the site file (never edited by hand).

Groups follow roles and pools (head, gpu, k8s_control, slurm_pool, kubernetes_pool), plus
`workers`: every machine with a pool, whichever it serves now. Both schedulers know every worker
(a move between pools changes node states, not configuration), so the Slurm and Kubernetes node
roles run on `workers`. Host variables carry what the roles template from: GPU model and count,
CPUs, memory, pool.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from aifactory import paths
from aifactory.site import power
from aifactory.site.model import Site


def render(site: Site, ssh_config: Path | None = None) -> dict[str, Any]:
    groups: dict[str, dict[str, Any]] = {}

    def add(group: str, host: str) -> None:
        groups.setdefault(group, {"hosts": {}})["hosts"][host] = None

    hostvars: dict[str, Any] = {}
    for m in site.machines:
        hostvars[m.name] = {
            "ansible_host": m.address,
            "cpus": m.cpus,
            "memory_gib": m.memory_gib,
            "gpu_model": m.gpu_model,
            "gpu_count": m.gpu_count,
            "pool": m.pool,
            # where the head's power exporter reads the machine's draw
            "bmc_endpoint": m.bmc.endpoint,
            "bmc_system_id": m.bmc.system_id,
            "bmc_credentials": m.bmc.credentials,
            "bmc_verify_tls": m.bmc.verify_tls,
            "bmc_ca_bundle": str(m.bmc.ca_bundle) if m.bmc.ca_bundle else None,
            # the power governor's bounds: it never caps below idle, and gives back the site's limit
            "power_idle_w": power.machine_power(site.power, m).idle_w,
            "power_limit_w": m.power_limit_w,
            "gpu_power_limit_w": m.gpu_power_limit_w,  # nvidia_gpu sets it with nvidia-smi -pl
        }
        if site.kubernetes and m.pool:
            hostvars[m.name]["k8s_pod_cidr"] = site.kubernetes.node_pod_cidr(
                m.nics[0].address, site.management.cidr
            )
        for role in m.roles:
            add(role.replace("-", "_"), m.name)
        if m.pool:
            add(f"{m.pool}_pool", m.name)
            add("workers", m.name)
    all_vars: dict[str, Any] = {
        "site_name": site.name,
        "site_file": str(site.path),
        "site_emulated": site.emulated,
        "ansible_user": site.ssh_user,
        "ansible_python_interpreter": "/usr/bin/python3",
    }
    if site.ssh_user == "root":  # the plays become root, which root is already: no sudo per task and host
        all_vars["ansible_become"] = False
    all_vars["bmc_credentials_dir"] = str(paths.credentials_dir())  # the controller's store
    all_vars["power_feeds"] = [
        {
            "name": f.name,
            "watts": round(f.kw * 1000),
            "budget_watts": round(f.budget_w),
            "machines": list(f.machines),
        }
        for f in site.power.feeds
    ]
    all_vars["power_hold"] = {"at": site.power.hold.at, "release": site.power.hold.release}
    all_vars["monitoring_retention"] = site.monitoring.retention
    if site.bundle_url:
        all_vars["bundle_url"] = site.bundle_url
    if site.slurm:
        all_vars["slurm_cluster_name"] = site.slurm.cluster_name
        all_vars["slurm_partitions"] = [{"name": n, "pool": p} for n, p in site.slurm.partitions]
        all_vars["slurm_accounting_enforce"] = site.slurm.accounting_enforce
    if site.kubernetes:
        all_vars["kubernetes_version"] = site.kubernetes.version
        all_vars["kubernetes_service_cidr"] = site.kubernetes.service_cidr
        all_vars["kubernetes_api_port"] = site.kubernetes.api_port
        all_vars["kubernetes_pod_cidr"] = site.kubernetes.pod_cidr
        all_vars["kubernetes_api_host"] = site.api_host
        if site.kubernetes.api_address:
            all_vars["kubernetes_api_address"] = str(site.kubernetes.api_address)
    if site.nvidia:
        all_vars["nvidia_driver_branch"] = site.nvidia.driver_branch
        all_vars["nvidia_profiling_for_all_users"] = site.nvidia.profiling_for_all_users
        all_vars["nvidia_package_versions"] = dict(site.nvidia.versions)
        # dcgm-exporter where the site pins it (playbooks/roles/nvidia_gpu); Prometheus scrapes it
        all_vars["nvidia_dcgm_exporter"] = "datacenter-gpu-manager-exporter" in site.nvidia.versions
        all_vars["nvidia_apt_repositories"] = [
            {
                "name": r.name,
                "url": r.url,
                "suite": r.suite,
                "components": list(r.components),
                "key": str(r.key),
            }
            for r in site.nvidia.repositories
        ]
    if ssh_config:
        all_vars["ansible_ssh_common_args"] = f"-F {ssh_config}"
    return {"all": {"hosts": hostvars, "vars": all_vars, "children": groups}}


def write(site: Site, path: Path, ssh_config: Path | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(render(site, ssh_config), sort_keys=False))
    return path
