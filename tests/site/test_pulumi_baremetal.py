"""`pulumi up` of bare metal through Redfish, with the engine built by the toolchain.

A two-machine emulated site, stack configured with `aifactory:configure: false` (Ansible is covered
by the full deployment test): power-on from nothing, no-change preview, drift after a power-off
behind Pulumi's back, the three BMC failures an operator meets, secrets, destroy.
"""

import json

import pytest
import yaml

from aifactory import bmcs, credentials, deploy, paths, toolchain
from aifactory.site.validate import load_site
from sandbox import bmc, hosts, localsite
from tests.conftest import REPO
from tests.site.conftest import clear_leftovers, site_yaml

pytestmark = [pytest.mark.site, pytest.mark.toolchain]

STACK = "cipulumi"


@pytest.fixture(scope="module")
def bm(tmp_path_factory):
    for name in ("pulumi", "pulumi-language-python"):
        if not toolchain.BY_NAME[name].path.exists():
            pytest.skip(f"toolchain not built ({name}): run `aifactory toolchain build`")
    tmp = tmp_path_factory.mktemp("pulumi")
    site_file = tmp / "cipulumi.yaml"
    site_file.write_text(site_yaml(STACK, 2, machines=2))
    config = tmp / "stack.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "config": {
                    "aifactory:site": str(site_file),
                    "aifactory:configure": "false",
                    "aifactory:bootTimeout": "60",
                    "aifactory:shutdownTimeout": "20",
                    "aifactory:bmcTimeout": "3",
                    "aifactory:bmcRetries": "1",
                }
            }
        )
    )
    mp = pytest.MonkeyPatch()
    mp.setenv("PULUMI_BACKEND_URL", f"file://{tmp / 'state'}")
    (tmp / "state").mkdir()
    site = load_site(site_file)
    clear_leftovers(site)
    try:
        assert localsite.up(site) == 0
        yield site, config, tmp
        deploy.run(STACK, "destroy", template=config)
    finally:
        deploy.pulumi("stack", "rm", STACK, "--yes", "--force", capture=True, check=False)
        (REPO / f"Pulumi.{STACK}.yaml").unlink(missing_ok=True)
        localsite.down(site)
        mp.undo()


def pulumi_run(bm, action, *extra):
    _, config, _ = bm
    return deploy.run(STACK, action, template=config, extra=list(extra))


def power(site, name):
    return localsite.status(site)[[m.name for m in site.machines].index(name)]["power"]


def test_up_from_nothing_powers_every_machine_on(bm, capfd):
    site, _, _ = bm
    assert pulumi_run(bm, "up") == 0
    for m in site.machines:
        assert localsite.wait_for_ssh(site, m, timeout=30) == "running"
        assert power(site, m.name) == "On"
    out = capfd.readouterr().out
    assert "created" in out


def test_second_preview_expects_no_changes(bm):
    assert pulumi_run(bm, "preview", "--expect-no-changes") == 0


def test_refresh_sees_drift_and_up_repairs_it(bm, capfd):
    site, _, _ = bm
    m = site.machine("gpu-01")
    c = credentials.load(m.bmc.credentials)
    bmc.set_power(m, c.username, c.password, "ForceOff")
    assert bmc.wait_for_power(m, c.username, c.password, "Off")
    assert not hosts.is_running(site, "gpu-01")
    capfd.readouterr()
    assert pulumi_run(bm, "refresh") == 0
    assert "updated" in capfd.readouterr().out  # the power state changed behind Pulumi's back
    assert pulumi_run(bm, "preview", "--expect-no-changes") != 0
    assert pulumi_run(bm, "up") == 0
    assert localsite.wait_for_ssh(site, m, timeout=30) == "running"
    assert pulumi_run(bm, "preview", "--expect-no-changes") == 0


def _fails_naming(bm, capfd, *needles):
    capfd.readouterr()
    assert pulumi_run(bm, "up", "--refresh") != 0
    out = "".join(capfd.readouterr())
    for needle in needles:
        assert needle in out, out[-3000:]


def test_wrong_credentials_fail_naming_machine_then_converge(bm, capfd):
    site, _, _ = bm
    ref = site.machines[0].bmc.credentials
    store = paths.credentials_dir() / f"{ref}.json"
    good = store.read_text()
    # Break gpu-01's power so `up` has to talk to its BMC, then break the password.
    m = site.machine("gpu-01")
    c = credentials.load(ref)
    bmc.set_power(m, c.username, c.password, "ForceOff")
    assert bmc.wait_for_power(m, c.username, c.password, "Off")
    store.write_text(json.dumps({"username": c.username, "password": "wrong"}))
    try:
        _fails_naming(bm, capfd, "gpu-01", "rejected the credentials")
    finally:
        store.write_text(good)
    assert pulumi_run(bm, "up", "--refresh") == 0
    assert power(site, "gpu-01") == "On"


def test_bmc_that_does_not_answer_fails_naming_machine_then_converges(bm, capfd):
    site, _, _ = bm
    state = localsite.bmc_state_dir(site)
    m = site.machine("gpu-01")
    c = credentials.load(m.bmc.credentials)
    bmc.set_power(m, c.username, c.password, "ForceOff")
    assert bmc.wait_for_power(m, c.username, c.password, "Off")
    bmc.stop_bmcs(state)
    try:
        _fails_naming(bm, capfd, "gpu-01", "did not answer")
    finally:
        assert localsite.up(site) == 0  # restarts the BMCs
    assert pulumi_run(bm, "up", "--refresh") == 0
    assert power(site, "gpu-01") == "On"


def test_inventory_mismatch_fails_naming_machine_then_converges(bm, capfd):
    site, _, _ = bm
    site_file = site.path
    original = site_file.read_text()
    data = yaml.safe_load(original)
    data["machines"][1]["cpus"] = 96  # the BMC reports 64
    site_file.write_text(yaml.safe_dump(data, sort_keys=False))
    try:
        _fails_naming(
            bm,
            capfd,
            "gpu-01",
            "inventory mismatch",
            "cpus: site file says 96 threads (bmc.cpus_count: threads), BMC reports 64 threads",
        )
    finally:
        site_file.write_text(original)
    assert pulumi_run(bm, "up", "--refresh") == 0
    assert pulumi_run(bm, "preview", "--expect-no-changes") == 0


def test_node_power_limit_is_set_read_back_and_its_drift_repaired(bm, capfd):
    """power.limits_w in the site file: `pulumi up` holds the machine to it through its BMC (the
    reported draw stays under it); a limit changed behind Pulumi's back shows on refresh and `up`
    sets it again; taken out of the site file, `up` clears it."""
    site, _, _ = bm
    m = site.machine("gpu-01")
    login = credentials.load(m.bmc.credentials)
    reading = lambda: bmcs.power_reading(m, lambda _: (login.username, login.password))  # noqa: E731
    site_file = site.path
    original = site_file.read_text()
    data = yaml.safe_load(original)
    data.setdefault("power", {})["limits_w"] = {"gpu-01": 3000}
    site_file.write_text(yaml.safe_dump(data, sort_keys=False))
    try:
        assert pulumi_run(bm, "up") == 0
        r = reading()
        assert r.limit_w == 3000 and 0 < r.consumed_w <= 3000, r
        assert pulumi_run(bm, "preview", "--expect-no-changes") == 0
        bmcs.set_power_limit(m, 2500, lambda _: (login.username, login.password))
        capfd.readouterr()
        assert pulumi_run(bm, "refresh") == 0
        assert "updated" in capfd.readouterr().out  # the limit changed behind Pulumi's back
        assert pulumi_run(bm, "preview", "--expect-no-changes") != 0
        assert pulumi_run(bm, "up") == 0
        assert reading().limit_w == 3000
    finally:
        site_file.write_text(original)
    assert pulumi_run(bm, "up") == 0
    assert reading().limit_w is None
    assert pulumi_run(bm, "preview", "--expect-no-changes") == 0


def test_no_bmc_password_in_state_or_output(bm, capfd):
    site, _, tmp = bm
    password = credentials.load(site.machines[0].bmc.credentials).password
    capfd.readouterr()
    assert pulumi_run(bm, "up", "--refresh") == 0
    out = "".join(capfd.readouterr())
    assert password not in out
    state_files = [p for p in (tmp / "state").rglob("*") if p.is_file()]
    assert state_files
    for p in state_files:
        assert password.encode() not in p.read_bytes(), p


def test_destroy_powers_everything_off(bm):
    site, _, _ = bm
    assert pulumi_run(bm, "destroy") == 0
    assert {r["power"] for r in localsite.status(site)} == {"Off"}
    assert not any(hosts.is_running(site, m.name) for m in site.machines)
