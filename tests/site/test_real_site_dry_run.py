"""A real-site dry run on the local site: the Slurm and Kubernetes playbooks in check mode with
`site_emulated` false, the path a real site's hosts take wherever the difference is not hardware.

(gpu.yml is left out: there the difference is hardware: with no GPU it would install NVIDIA's driver.)
The run is limited to the head and control plane and one worker of each pool: every other worker
takes the same path as its pool's first.
"""

import pytest

from aifactory.configure import run_playbook
from aifactory.site.model import Site

pytestmark = pytest.mark.site


@pytest.mark.parametrize("playbook", ["slurm.yml", "kubernetes.yml"])
def test_the_roles_dry_run_as_on_a_real_site(configured_site: Site, playbook: str):
    site = configured_site
    lines: list[str] = []
    servers = [m for m in site.machines if m.pool is None]
    one_per_pool = [site.in_pool(pool)[0] for pool in ("slurm", "kubernetes") if site.in_pool(pool)]
    limit = ",".join(m.name for m in servers + one_per_pool)
    result = run_playbook(
        site, playbook, limit, check=True, extravars={"site_emulated": False}, progress=lines.append
    )
    assert set(result.stats) == set(limit.split(",")), result.stats.keys()
    assert not result.failures, "\n".join(lines[-40:])
    ok = sum(s.get("ok", 0) for s in result.stats.values())
    assert ok > 50, f"{playbook}: only {ok} task results"
