"""A real-site dry run on the local site: the Slurm and Kubernetes playbooks in check mode with
`site_emulated` false, the path a real site's hosts take wherever the difference is not hardware.

(gpu.yml is left out: there the difference is hardware: with no GPU it would install NVIDIA's driver.)
"""

import pytest

from aifactory.configure import run_playbook
from aifactory.site.model import Site

pytestmark = pytest.mark.site


@pytest.mark.parametrize("playbook", ["slurm.yml", "kubernetes.yml"])
def test_the_roles_dry_run_as_on_a_real_site(configured_site: Site, playbook: str):
    lines: list[str] = []
    result = run_playbook(
        configured_site, playbook, check=True, extravars={"site_emulated": False}, progress=lines.append
    )
    assert not result.failures, "\n".join(lines[-40:])
    ok = sum(s.get("ok", 0) for s in result.stats.values())
    assert ok > 50, f"{playbook}: only {ok} task results"
