"""Parsers of aifactory validate, fed with recorded tool outputs (tests/unit/data/)."""

from __future__ import annotations

from pathlib import Path

import pytest

from aifactory.validate import parsers as p

pytestmark = pytest.mark.unit
DATA = Path(__file__).parent / "data"


def data(name: str) -> str:
    return (DATA / name).read_text()


# Slurm, systemd, sysctl


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("nvidia[0-7]", [f"nvidia{i}" for i in range(8)]),
        ("/dev/aifactory-gpu/nvidia[0-3]", [f"/dev/aifactory-gpu/nvidia{i}" for i in range(4)]),
        ("nvidia[0-1,4]", ["nvidia0", "nvidia1", "nvidia4"]),
        ("gpu-[01-03]", ["gpu-01", "gpu-02", "gpu-03"]),
        ("/dev/nvidia0", ["/dev/nvidia0"]),
    ],
)
def test_expand_hostlist(text, want):
    assert p.expand_hostlist(text) == want


def test_gres_conf_as_the_role_writes_it():
    text = "# Ansible managed\nAutoDetect=off\n"
    text += "NodeName=gpu-01 Name=gpu Type=h100 File=/dev/aifactory-gpu/nvidia[0-7]\n"
    (line,) = p.parse_gres_conf(text)
    assert (line.node, line.name, line.type, len(line.files)) == ("gpu-01", "gpu", "h100", 8)
    assert line.files[-1] == "/dev/aifactory-gpu/nvidia7"


def test_scontrol_nodes_states_gres_and_reasons():
    nodes = p.parse_scontrol_nodes(data("scontrol-show-node.txt"))
    assert sorted(nodes) == ["gpu-01", "gpu-02", "gpu-03", "gpu-04"]
    assert nodes["gpu-01"].schedulable and nodes["gpu-01"].gres == "gpu:h100:8"
    assert nodes["gpu-02"].drained and nodes["gpu-02"].responding and not nodes["gpu-02"].schedulable
    assert nodes["gpu-02"].reason == "aifactory validate: munge.key failed"
    assert not nodes["gpu-03"].responding and nodes["gpu-03"].reason.startswith(
        "gres/gpu count reported lower"
    )
    assert nodes["gpu-04"].schedulable and nodes["gpu-04"].gres.split("(")[0] == "gpu:h100:8"


def test_scontrol_garbage_is_an_error_not_an_empty_cluster():
    with pytest.raises(p.ParseError):
        p.parse_scontrol_nodes("slurm_load_node error: Unable to contact slurm controller (connect failure)")
    assert p.parse_scontrol_nodes("") == {}


def test_systemctl_show_blocks():
    text = (
        "Id=munge.service\nActiveState=active\nSubState=running\nUnitFileState=enabled\n\n"
        "Id=slurmd.service\nActiveState=inactive\nSubState=dead\nUnitFileState=enabled\n"
    )
    units = p.parse_systemctl_show(text)
    assert units["munge"]["ActiveState"] == "active" and units["slurmd"]["SubState"] == "dead"


def test_sysctl_and_swaps():
    assert p.parse_sysctl("net.ipv4.ip_forward = 1\nsysctl: cannot stat /proc/sys/x: No such file\n") == {
        "net.ipv4.ip_forward": "1"
    }
    assert p.active_swaps("Filename\tType\tSize\tUsed\tPriority\n") == []
    assert p.active_swaps("Filename Type Size Used Priority\n/dev/sda2 partition 8388604 0 -2\n") == [
        "/dev/sda2"
    ]


# nvidia-smi


def test_smi_csv_8xh100():
    gpus = p.parse_smi_csv(data("nvidia-smi-query-gpu-8xh100.csv"))
    assert len(gpus) == 8 and [g.index for g in gpus] == list(range(8))
    assert {g.name for g in gpus} == {"NVIDIA H100 80GB HBM3"}
    assert {g.driver_version for g in gpus} == {"570.172.08"}
    assert all(g.persistence and g.ecc_enabled for g in gpus)
    assert all(g.uncorrected_volatile == 0 and g.uncorrected_aggregate == 0 for g in gpus)


def test_smi_csv_not_supported_fields_and_bad_rows():
    (g,) = p.parse_smi_csv("0, NVIDIA L40S, GPU-x, 00000000:01:00.0, 570.1, Disabled, [N/A], [N/A], [N/A]\n")
    assert not g.persistence and g.ecc_enabled is None and g.uncorrected_volatile is None
    with pytest.raises(p.ParseError):
        p.parse_smi_csv("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.")


def test_smi_xml_8xh100():
    smi = p.parse_smi_xml(data("nvidia-smi-q-x-8xh100.xml"))
    assert smi.driver_version == "570.172.08" and smi.cuda_version == "12.8"
    assert len(smi.gpus) == 8 and smi.gpus[3].bus_id == "00000000:5D:00.0"
    assert all(g.persistence and g.ecc_enabled for g in smi.gpus)
    # Correctable errors (GPU2: 3, GPU7: 12 aggregate) are not uncorrectable ones.
    assert [g.uncorrected_volatile for g in smi.gpus] == [0] * 8
    assert [g.uncorrected_aggregate for g in smi.gpus] == [0] * 8
    assert [g.remapping_failed for g in smi.gpus] == [False] * 8


def test_smi_xml_counts_uncorrectable_errors_and_row_remap_failure():
    text = data("nvidia-smi-q-x-8xh100.xml")
    gpu5 = text.index('<gpu id="00000000:AB:00.0">')
    head, tail = text[:gpu5], text[gpu5:]
    tail = tail.replace(
        "<dram_uncorrectable>0</dram_uncorrectable>", "<dram_uncorrectable>2</dram_uncorrectable>", 1
    )
    tail = tail.replace(
        "<remapped_row_failure>No</remapped_row_failure>",
        "<remapped_row_failure>Yes</remapped_row_failure>",
        1,
    )
    smi = p.parse_smi_xml(head + tail)
    assert [g.uncorrected_volatile for g in smi.gpus] == [0, 0, 0, 0, 0, 2, 0, 0]
    assert smi.gpus[5].remapping_failed and not smi.gpus[4].remapping_failed


def test_smi_xml_older_ecc_layout():
    text = """<nvidia_smi_log><driver_version>470.82.01</driver_version><attached_gpus>1</attached_gpus>
      <gpu id="00000000:07:00.0"><product_name>NVIDIA A100-SXM4-80GB</product_name>
      <persistence_mode>Enabled</persistence_mode><ecc_mode><current_ecc>Enabled</current_ecc></ecc_mode>
      <ecc_errors><volatile><sram_correctable>0</sram_correctable><sram_uncorrectable>1</sram_uncorrectable>
      <dram_correctable>0</dram_correctable><dram_uncorrectable>0</dram_uncorrectable></volatile>
      <aggregate><sram_correctable>0</sram_correctable><sram_uncorrectable>4</sram_uncorrectable>
      <dram_correctable>0</dram_correctable><dram_uncorrectable>1</dram_uncorrectable></aggregate></ecc_errors>
      </gpu></nvidia_smi_log>"""
    (g,) = p.parse_smi_xml(text).gpus
    assert (g.uncorrected_volatile, g.uncorrected_aggregate) == (1, 5)


def test_smi_xml_rejects_other_text_and_missing_gpus():
    with pytest.raises(p.ParseError):
        p.parse_smi_xml("No devices were found")
    with pytest.raises(p.ParseError):
        p.parse_smi_xml("<nvidia_smi_log><attached_gpus>8</attached_gpus></nvidia_smi_log>")


def test_topo_matrix_hgx_h100_all_pairs_nv18():
    links = p.parse_topo_matrix(data("nvidia-smi-topo-m-8xh100.txt"))
    assert len(links) == 8 * 7
    assert set(links.values()) == {"NV18"}  # NIC columns are not GPU pairs


def test_topo_matrix_degraded_link_and_pcie_only():
    text = data("nvidia-smi-topo-m-8xh100.txt").splitlines()
    text[3] = text[3].replace(" NV18", " NV12", 1)  # GPU2's link to GPU0
    links = p.parse_topo_matrix("\n".join(text))
    assert links[(2, 0)] == "NV12" and links[(0, 2)] == "NV18"
    pcie = "\tGPU0\tGPU1\tCPU Affinity\tNUMA Affinity\nGPU0\t X \tSYS\t0-31\t0\nGPU1\tSYS\t X \t32-63\t1\n"
    assert p.parse_topo_matrix(pcie) == {(0, 1): "SYS", (1, 0): "SYS"}
    with pytest.raises(p.ParseError):
        p.parse_topo_matrix("Failed to initialize NVML: Driver/library version mismatch")


# DCGM


def test_dcgmi_diag_3x_level2_all_pass():
    results = p.parse_dcgmi_diag(data("dcgmi-diag-r2-8xh100.json"))
    assert {r.status for r in results} == {"pass"}
    pcie = [r for r in results if r.test == "PCIe"]
    assert sorted(r.gpu for r in pcie) == [str(i) for i in range(8)]
    assert any(r.test == "Denylist" and r.gpu == "0,1,2,3,4,5,6,7" for r in results)


def test_dcgmi_diag_4x_failure_names_test_gpu_and_reason():
    results = p.parse_dcgmi_diag(data("dcgmi-diag-r1-dcgm4-pcie-fail.json"))
    (fail,) = [r for r in results if r.status == "fail"]
    assert (fail.test, fail.gpu) == ("pcie", "3")
    assert "PCIe replay count 142" in fail.messages[0]
    assert {r.status for r in results if r.test == "memory"} == {"skip"}


def test_dcgmi_diag_errors():
    with pytest.raises(p.ParseError, match="no JSON"):
        p.parse_dcgmi_diag("Error: unable to establish a connection to the specified host: localhost")
    with pytest.raises(p.ParseError, match="runtime error"):
        p.parse_dcgmi_diag(
            '{"DCGM GPU Diagnostic": {"runtime_error": "NVVS could not start", "version": "3.3.9"}}'
        )
    with pytest.raises(p.ParseError, match="no test results"):
        p.parse_dcgmi_diag('{"DCGM GPU Diagnostic": {"version": "4.2.3"}}')


# nccl-tests


def test_all_reduce_perf_8xh100():
    r = p.parse_all_reduce_perf(data("all_reduce_perf-8xh100.txt"))
    assert r.avg_busbw_gbps == pytest.approx(112.693)
    assert r.max_busbw_gbps == pytest.approx(460.28)  # out-of-place, 8 GiB
    assert r.wrong == 0 and r.sizes == 31


def test_all_reduce_perf_wrong_results_and_truncated_output():
    text = data("all_reduce_perf-8xh100.txt").replace("460.28      0", "460.28      3")
    assert p.parse_all_reduce_perf(text).wrong == 3
    with pytest.raises(p.ParseError):
        p.parse_all_reduce_perf(
            "# nThread 1 nGpus 8\nnccl-tests: NCCL failure common.cu:1005 'unhandled cuda error'"
        )
