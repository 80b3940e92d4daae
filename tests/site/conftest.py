"""The site tests run against a real emulated site: bridge, nspawn hosts, Redfish BMCs.

They use a copy of sites/local.yaml moved to its own bridge, range and ports (`citest`), so a
developer's running local site is never touched.
"""

import os

import pytest
import yaml

from aifactory.site.validate import load_site
from tests.conftest import REPO

BRIDGE, NET, PORT_OFFSET = "aftest0", "198.19.0", 100


def _skip_unless_root():
    if os.geteuid() != 0:
        pytest.skip("site tests need root: bridge, overlay mounts and systemd-nspawn")


def citest_yaml() -> str:
    data = yaml.safe_load((REPO / "sites" / "local.yaml").read_text())
    data["name"] = "citest"
    data["bundle_url"] = f"http://{NET}.1:8089/bundle"
    data["networks"][0].update(cidr=f"{NET}.0/24", gateway=f"{NET}.1", bridge=BRIDGE)
    for m in data["machines"]:
        nic = m["nics"][0]
        nic["address"] = nic["address"].replace("198.18.0", NET)
        nic["mac"] = nic["mac"].replace("02:af", "02:ae")
        port = int(m["bmc"]["endpoint"].rsplit(":", 1)[1]) + PORT_OFFSET
        m["bmc"]["endpoint"] = f"http://127.0.0.1:{port}"
    return yaml.safe_dump(data, sort_keys=False)


@pytest.fixture(scope="session")
def citest_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("citest") / "citest.yaml"
    path.write_text(citest_yaml())
    return path


@pytest.fixture(scope="session")
def site_up(citest_file):
    """The citest site, up for the whole session (hosts powered off), taken down at the end."""
    _skip_unless_root()
    from sandbox import localsite

    site = load_site(citest_file)
    assert localsite.up(site) == 0, "site up failed (see output above)"
    yield site
    assert localsite.down(site) == 0
