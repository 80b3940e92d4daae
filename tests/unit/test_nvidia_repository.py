"""Where GPU machines get NVIDIA's packages: the site file's `nvidia:` section, checked, handed to the
nvidia_gpu role, and rendered by Ansible into the apt sources, pins and driver options a host gets."""

from pathlib import Path

import pytest
import yaml

from aifactory import inventory
from aifactory.site.validate import ERROR, WARNING, check, load_site
from tests.conftest import REPO
from tests.unit.ansible_local import run_local

pytestmark = pytest.mark.unit

EXAMPLE = REPO / "sites" / "example-groningen.yaml"
ROLE = REPO / "playbooks" / "roles" / "nvidia_gpu"


def _with_nvidia(tmp_path: Path, nvidia) -> Path:
    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["nvidia"] = nvidia
    (tmp_path / "keys").mkdir(exist_ok=True)
    (tmp_path / "keys" / "mirror.asc").write_text("-----BEGIN PGP PUBLIC KEY BLOCK-----\n")
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _findings(path: Path) -> list[tuple[str, str, str]]:
    return [(f.level, f.path, f.message) for f in check(path)[0]]


def test_bad_repositories_are_named_field_by_field(tmp_path):
    nvidia = {
        "driver_branch": "r570",
        "repositories": [
            {
                "name": "Cuda",
                "url": "ftp://mirror/x",
                "suite": "/",
                "components": ["main"],
                "key": "keys/nope.asc",
            },
            {"name": "ok", "url": "https://mirror/y", "key": "keys/mirror.txt"},
        ],
        "versions": {"nvidia-driver-570-open": ""},
    }
    found = {(level, path) for level, path, _ in _findings(_with_nvidia(tmp_path, nvidia))}
    assert found == {
        (ERROR, "nvidia.driver_branch"),
        (ERROR, "nvidia.repositories[0].name"),
        (ERROR, "nvidia.repositories[0].url"),
        (ERROR, "nvidia.repositories[0].components"),
        (ERROR, "nvidia.repositories[0].key"),
        (ERROR, "nvidia.repositories[1].key"),
        (ERROR, "nvidia.versions.nvidia-driver-570-open"),
    }


def test_a_real_gpu_site_without_a_repository_is_warned(tmp_path):
    doc = yaml.safe_load(EXAMPLE.read_text())
    del doc["nvidia"]
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(doc))
    assert [(lvl, p) for lvl, p, _ in _findings(path)] == [(WARNING, "nvidia")]


def test_the_role_renders_sources_pins_and_driver_options(tmp_path):
    """The nvidia_gpu role's templates, rendered by Ansible with the variables the inventory gives
    for the example site (its mirror's key, two flat repositories, four pinned packages)."""
    all_vars = inventory.render(load_site(EXAMPLE))["all"]["vars"]
    nvidia_vars = {k: v for k, v in all_vars.items() if k.startswith("nvidia_")}
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    out = tmp_path / "out"
    out.mkdir()
    tasks = [
        {
            "ansible.builtin.template": {
                "src": str(ROLE / "templates" / t),
                "dest": str(out / d),
                "mode": "0644",
            }
        }
        for t, d in (("apt-preferences.j2", "pins"), ("nvidia-modprobe.conf.j2", "modprobe.conf"))
    ] + [
        {
            "ansible.builtin.template": {
                "src": str(ROLE / "templates" / "apt-source.sources.j2"),
                "dest": str(out / "{{ item.name }}.sources"),
                "mode": "0644",
            },
            "loop": "{{ nvidia_gpu_apt_repositories }}",
        }
    ]
    play = [
        {"hosts": "localhost", "gather_facts": False, "vars": {**defaults, **nvidia_vars}, "tasks": tasks}
    ]
    (tmp_path / "render.yml").write_text(yaml.safe_dump(play))
    r = run_local(tmp_path, tmp_path / "render.yml")
    assert r.status == "successful", r.stdout.read()[-2000:]
    source = (out / "nvidia-cuda.sources").read_text()
    assert "URIs: https://artifacts.factory.example/apt/nvidia-cuda\nSuites: /\n" in source
    assert "Components" not in source  # a flat repository
    assert "Signed-By: /etc/apt/keyrings/aifactory-nvidia-cuda.asc" in source
    pins = (out / "pins").read_text()
    assert "Package: nvidia-driver-570-open\nPin: version 570.133.20-1\nPin-Priority: 1001" in pins
    assert pins.count("Package:") == 4
    # profiling counters for root only unless the site file opens them
    assert "NVreg_RestrictProfilingToAdminUsers=1" in (out / "modprobe.conf").read_text()


@pytest.mark.parametrize("pinned", [True, False])
def test_prometheus_scrapes_dcgm_exporter_where_the_site_pins_it(tmp_path, pinned):
    """dcgm-exporter is the release paired with the site's DCGM: installed and scraped on every GPU
    machine where nvidia.versions pins it, left out (not guessed) where it does not."""
    doc = yaml.safe_load(EXAMPLE.read_text())
    if pinned:
        doc["nvidia"]["versions"]["datacenter-gpu-manager-exporter"] = "1:3.3.9-3.6.1"
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(doc))
    (tmp_path / "keys").mkdir()
    for repo in doc["nvidia"]["repositories"]:
        (tmp_path / repo["key"]).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / repo["key"]).write_text("-----BEGIN PGP PUBLIC KEY BLOCK-----\n")
    site = load_site(path)
    rendered = inventory.render(site)
    head = site.with_role("head")[0].name
    role = REPO / "playbooks" / "roles" / "prometheus"
    defaults = yaml.safe_load((role / "defaults" / "main.yml").read_text())
    task = {
        "ansible.builtin.template": {
            "src": str(role / "templates" / "prometheus.yml.j2"),
            "dest": str(tmp_path / "prometheus.yml"),
            "mode": "0644",
        }
    }
    play = [{"hosts": head, "gather_facts": False, "vars": defaults, "tasks": [task]}]
    (tmp_path / "render.yml").write_text(yaml.safe_dump(play))
    r = run_local(tmp_path, tmp_path / "render.yml", inventory=rendered)
    assert r.status == "successful", r.stdout.read()[-2000:]
    jobs = {
        j["job_name"]: j for j in yaml.safe_load((tmp_path / "prometheus.yml").read_text())["scrape_configs"]
    }
    gpu_machines = [m for m in site.machines if m.gpu_count]
    if pinned:
        targets = [c["targets"][0] for c in jobs["dcgm"]["static_configs"]]
        assert targets == [f"{m.address}:9400" for m in gpu_machines] and len(targets) == 64
        assert "datacenter-gpu-manager-exporter" in rendered["all"]["vars"]["nvidia_package_versions"]
    else:
        assert "dcgm" not in jobs and rendered["all"]["vars"]["nvidia_dcgm_exporter"] is False
