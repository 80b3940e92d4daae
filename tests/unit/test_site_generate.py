"""`aifactory site generate`: site files of any size that validate, and sites/scale.yaml kept equal
to what the generator writes."""

import pytest
import yaml

from aifactory import cli
from aifactory.site.generate import generate, write
from aifactory.site.validate import check, load_site
from tests.conftest import REPO

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("machines", [2, 64, 1024])
def test_generated_sites_validate_and_fit_their_networks(tmp_path, machines):
    site = write(generate("gen", machines), tmp_path / "gen.yaml")
    assert check(tmp_path / "gen.yaml")[0] == []
    servers = [m for m in site.machines if m.pool]
    assert len(servers) == machines and {m.pool for m in servers} == {"slurm", "kubernetes"}
    assert sum(m.gpu_count for m in servers) == 8 * machines
    assert site.management.cidr.subnet_of(site.management.cidr.supernet(new_prefix=17))


def test_three_control_planes_get_an_api_address(tmp_path):
    site = write(generate("gen", 16, control_planes=3), tmp_path / "gen.yaml")
    assert len(site.with_role("k8s-control")) == 3
    assert site.kubernetes and site.api_host == str(site.kubernetes.api_address)


def test_bad_sizes_are_usage_errors_naming_the_problem(tmp_path, capsys):
    assert cli.main(["site", "generate", "--machines", "1", "--out", str(tmp_path / "x.yaml")]) == 2
    assert "at least 2 GPU machines" in capsys.readouterr().err
    assert not (tmp_path / "x.yaml").exists()


def test_the_scale_site_is_what_the_generator_writes(tmp_path):
    """sites/scale.yaml: 256 GPU servers (2,048 GPUs), regenerated rather than edited by hand."""
    assert cli.main(["site", "generate", "--machines", "256", "--out", str(tmp_path / "scale.yaml")]) == 0
    assert (tmp_path / "scale.yaml").read_text() == (REPO / "sites" / "scale.yaml").read_text()
    scale = load_site(REPO / "sites" / "scale.yaml")
    assert sum(m.gpu_count for m in scale.machines) == 2048
    assert yaml.safe_load((REPO / "sites" / "scale.yaml").read_text())["emulated"] is True
