"""The BMC inventory check compares like with like: `cpus` in the unit the site file names
(bmc.cpus_count), the GPUs of the system that lists them (bmc.gpu_system, an HGX baseboard).

The figures a BMC gives, the comparison and its messages; the site file's checks; and the Redfish
provider against a real emulated BMC (sushy-emulator on a free loopback port) with a GPU baseboard.
"""

from types import SimpleNamespace

import pytest
import requests
import sushy

from aifactory.bmcs import PowerReading, power_reading, set_power_limit, system
from aifactory.site import power
from aifactory.site.validate import ERROR, WARNING, check, load_site
from infra import redfish
from infra.machine import Timeouts, redfish_props
from sandbox import bmc
from tests.unit.emulated_bmcs import free_port, generated_site

pytestmark = pytest.mark.unit

HGX_BMC = {"sockets": 2, "cores": 112, "threads": 224}


def cpu(cores=None, threads=None, state=sushy.State.ENABLED, kind=sushy.ProcessorType.CPU):
    body = {k: v for k, v in (("TotalCores", cores), ("TotalThreads", threads)) if v is not None}
    return SimpleNamespace(processor_type=kind, status=SimpleNamespace(state=state), json=body)


def test_the_summary_gives_each_unit():
    summary = {"Count": 2, "CoreCount": 112, "LogicalProcessorCount": 224}
    assert redfish.cpu_counts(summary, []) == HGX_BMC


def test_what_the_summary_lacks_is_summed_over_the_present_cpus():
    empty_socket, gpu = cpu(state=sushy.State.ABSENT), cpu(0, 0, kind=sushy.ProcessorType.GPU)
    processors = [cpu(56, 112), cpu(56, 112), empty_socket, gpu]
    assert redfish.cpu_counts({"Count": 2}, processors) == HGX_BMC
    assert redfish.cpu_counts({}, processors) == HGX_BMC
    # A CPU without a thread figure: threads unknown, never a partial sum.
    assert redfish.cpu_counts({}, [cpu(56, 112), cpu(56)]) == {"sockets": 2, "cores": 112, "threads": None}


def props(cpus: int, unit: str, gpus: int = 8, gpu_system: str | None = "HGX_Baseboard_0") -> dict:
    return {"name": "hgx-001", "cpus": float(cpus), "cpus_count": unit, "memory_gib": 2048.0,
            "gpu_model": "h100", "gpu_count": float(gpus), "gpu_system": gpu_system}  # fmt: skip


def seen(gpus: int = 8) -> dict:
    return {"cpus": HGX_BMC, "memory_gib": 2048, "gpu_count": gpus, "gpu_model": "nvidia h100 80gb hbm3"}


@pytest.mark.parametrize("cpus,unit", [(2, "sockets"), (112, "cores"), (224, "threads")])
def test_the_site_figure_matches_in_its_own_unit(cpus, unit):
    assert redfish.inventory_mismatches(props(cpus, unit), seen()) == []


def test_a_figure_in_another_unit_is_named_with_both_sides_and_the_unit_it_is():
    wrong = redfish.inventory_mismatches(props(112, "threads"), seen())
    assert wrong == [
        "cpus: site file says 112 threads (bmc.cpus_count: threads), BMC reports 224 threads "
        "(2 sockets, 112 cores); 112 is its core count: bmc.cpus_count: cores?"
    ]
    wrong = redfish.inventory_mismatches(props(96, "cores"), seen())
    assert wrong == ["cpus: site file says 96 cores (bmc.cpus_count: cores), BMC reports 112 cores "
                     "(2 sockets, 224 threads)"]  # fmt: skip


def test_a_unit_the_bmc_does_not_report_is_not_compared():
    unknown = {**seen(), "cpus": {"sockets": 2, "cores": None, "threads": None}}
    assert redfish.inventory_mismatches(props(112, "cores"), unknown) == []


def test_gpus_missing_from_the_host_system_point_at_the_baseboard():
    wrong = redfish.inventory_mismatches(props(112, "cores", gpu_system=None), seen(gpus=0))
    assert wrong == ["gpu_count: site file says 8, BMC reports 0 (an NVIDIA HGX server lists its GPUs "
                     "under a system of their own: bmc.gpu_system)"]  # fmt: skip
    wrong = redfish.inventory_mismatches(props(112, "cores"), seen(gpus=4))
    assert wrong == ["gpu_count: site file says 8, BMC reports 4 in system HGX_Baseboard_0 (bmc.gpu_system)"]


SITE = """
name: hgxtest
emulated: true
networks:
  - {name: mgmt, cidr: 198.18.0.0/24, gateway: 198.18.0.1, bridge: afbr9}
machines:
  - name: hgx-001
    roles: [head, gpu]
    pool: slurm
    bmc: {endpoint: "http://127.0.0.1:PORT", credentials: test-bmc BMC}
    cpus: 112
    memory_gib: 2048
    gpus: {model: h100, count: 8}
    nics: [{name: host0, mac: "02:af:00:00:09:0b", address: 198.18.0.11}]
"""
HGX = ", system_id: System_0, cpus_count: cores, gpu_system: HGX_Baseboard_0"


def findings(write_site, bmc_extra: str) -> list[tuple[str, str, str]]:
    found = check(write_site(SITE.replace("PORT", "8101").replace(" BMC", bmc_extra)))[0]
    return [(f.level, f.path, f.message) for f in found]


def test_the_site_file_says_what_cpus_counts_and_where_the_gpus_are(write_site):
    site = load_site(write_site(SITE.replace("PORT", "8101").replace(" BMC", HGX)))
    b = site.machines[0].bmc
    assert (b.cpus_count, b.gpu_system, b.system_id) == ("cores", "HGX_Baseboard_0", "System_0")
    default = load_site(write_site(SITE.replace("PORT", "8101").replace(" BMC", "")))
    assert (default.machines[0].bmc.cpus_count, default.machines[0].bmc.gpu_system) == ("threads", None)


@pytest.mark.parametrize(
    "extra,level,message",
    [
        (", cpus_count: core", ERROR,
         "unknown unit 'core' (did you mean 'cores'?); what cpus counts: threads, cores, sockets"),
        (", gpu_system: HGX_Baseboard_0", ERROR,
         "needs system_id too: the BMC lists the host's system beside the GPUs'"),
        (", system_id: HGX_Baseboard_0, gpu_system: HGX_Baseboard_0", ERROR,
         "is the host's own system (system_id): leave gpu_system out"),
        (", system_id: '1', gpu_system: /redfish/v1/Systems/HGX", ERROR,
         "'/redfish/v1/Systems/HGX' is not a Redfish System Id (e.g. HGX_Baseboard_0)"),
    ],
)  # fmt: skip
def test_wrong_bmc_inventory_settings_are_named(write_site, extra, level, message):
    path = "machines[0].bmc.cpus_count" if "cpus_count" in extra else "machines[0].bmc.gpu_system"
    assert (level, path, message) in findings(write_site, extra)


def test_a_baseboard_for_a_machine_without_gpus_is_unused(write_site):
    text = (
        SITE.replace("PORT", "8101").replace(" BMC", HGX).replace("    gpus: {model: h100, count: 8}\n", "")
    )
    found = check(write_site(text.replace("roles: [head, gpu]", "roles: [head, cpu]")))[0]
    assert [(f.level, f.path) for f in found] == [(WARNING, "machines[0].bmc.gpu_system")]


@pytest.fixture
def hgx_bmc(tmp_path, write_site):
    """hgx-001 behind a real emulated BMC: host system System_0, its GPUs under HGX_Baseboard_0."""
    site = load_site(write_site(SITE.replace("PORT", str(free_port())).replace(" BMC", HGX)))
    state = tmp_path / "state"
    bmc.start_bmcs(site, state, "admin", "bmc-secret", hook=[])
    try:
        yield site.machines[0]
    finally:
        bmc.stop_bmcs(state)


def test_the_provider_reads_cores_and_the_baseboards_gpus_from_a_real_bmc(hgx_bmc):
    login = {"username": "admin", "password": "bmc-secret"}
    p = {**redfish_props(hgx_bmc, Timeouts(bmc_timeout=5, bmc_retries=0, wait_ssh=False)), **login}
    systems = requests.get(
        f"{hgx_bmc.bmc.endpoint}/redfish/v1/Systems", auth=("admin", "bmc-secret"), timeout=5
    )
    assert sorted(m["@odata.id"] for m in systems.json()["Members"]) == [
        "/redfish/v1/Systems/HGX_Baseboard_0", "/redfish/v1/Systems/System_0"]  # fmt: skip
    host = redfish._connect(p)
    summary = host.json["ProcessorSummary"]
    assert [summary[k] for k in ("Count", "CoreCount", "LogicalProcessorCount")] == [1, 112, 224]
    assert not [x for x in host.processors.get_members() if x.processor_type == sushy.ProcessorType.GPU]
    seen = redfish._observed(p, host)
    assert seen == {"cpus": {"sockets": 1, "cores": 112, "threads": 224}, "memory_gib": 2048,
                    "gpu_count": 8, "gpu_model": "h100"}  # fmt: skip
    # The site file counting threads, or not naming the baseboard, is a mismatch naming both sides.
    assert redfish.inventory_mismatches({**p, "cpus_count": "threads"}, seen) == [
        "cpus: site file says 112 threads (bmc.cpus_count: threads), BMC reports 224 threads "
        "(1 socket, 112 cores); 112 is its core count: bmc.cpus_count: cores?"]  # fmt: skip
    without = {**p, "gpu_system": None}
    assert redfish.inventory_mismatches(without, redfish._observed(without, host)) == [
        "gpu_count: site file says 8, BMC reports 0 (an NVIDIA HGX server lists its GPUs under a system "
        "of their own: bmc.gpu_system)"]  # fmt: skip
    with pytest.raises(
        redfish.RedfishError, match=r"hgx-001: BMC http://127\.0\.0\.1:\d+ has no readable system HGX_9"
    ):
        redfish._observed({**p, "gpu_system": "HGX_9"}, host)
    # Enrolment and power-on through the provider; the baseboard is powered with its host.
    outs = redfish.RedfishMachineProvider().create(p).outs
    assert outs["power_state"] == "On" and outs["observed"] == seen
    baseboard = host.root.get_system("/redfish/v1/Systems/HGX_Baseboard_0")
    assert baseboard.power_state == sushy.POWER_STATE_ON


@pytest.mark.parametrize(
    "old, new, changes",
    [
        ({"power_limit_w": 3000, "power_limit_observed": 3000}, {"power_limit_w": 3000}, False),
        # set behind Pulumi's back (refresh read 2500)
        ({"power_limit_w": 3000, "power_limit_observed": 2500}, {"power_limit_w": 3000}, True),
        ({"power_limit_w": None, "power_limit_observed": None}, {"power_limit_w": 4000}, True),
        # taken out of the site file: cleared (Pulumi leaves None inputs out)
        ({"power_limit_w": 3000, "power_limit_observed": 3000}, {}, True),
        # never managed: a limit someone set on the BMC is not Pulumi's
        ({"power_limit_observed": None}, {}, False),
    ],
)
def test_the_provider_sees_a_power_limit_to_set_or_repair(old, new, changes):
    olds = {"name": "gpu-01", "power_state": "On", **old}
    news = {"name": "gpu-01", **new}
    assert redfish.RedfishMachineProvider().diff("gpu-01", olds, news).changes is changes


def test_servers_sharing_a_bmc_each_have_their_system_chassis_power_and_limit(tmp_path):
    """A generated site with two GPU servers per BMC endpoint: one emulator process per endpoint,
    each server its own System (system_id), its own Chassis and power limit."""
    site = generated_site(tmp_path, "shared", 4, machines_per_bmc=2)
    assert [len(g) for g in bmc.endpoint_groups(site)] == [1, 1, 2, 2]
    state = tmp_path / "state"
    bmc.start_bmcs(site, state, "admin", "bmc-secret", hook=[])
    try:
        assert len(bmc.running_pids(state)) == 4
        login = lambda m: ("admin", "bmc-secret")  # noqa: E731
        a, b = site.machine("gpu-0001"), site.machine("gpu-0002")
        assert a.bmc.endpoint == b.bmc.endpoint
        for m in (a, b):
            assert system(m, *login(m)).name == m.name
        set_power_limit(b, 3000, login)
        assert power_reading(a, login) == PowerReading(0, power.machine_power(site.power, a).max_w, None)
        assert power_reading(b, login).limit_w == 3000
    finally:
        bmc.stop_bmcs(state)
