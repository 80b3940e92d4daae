"""The sandbox on both cgroup layouts a Debian machine comes with, from /proc/self/mounts as each has
it, and a clear refusal of any other (site up exits 2 before anything starts)."""

from pathlib import Path

import pytest

from aifactory import cli
from sandbox import hosts

pytestmark = pytest.mark.unit

# Debian 11 / this project's CI machines: systemd's hybrid layout.
HYBRID = """\
sysfs /sys sysfs rw,nosuid,nodev,noexec,relatime 0 0
tmpfs /sys/fs/cgroup tmpfs ro,nosuid,nodev,noexec,mode=755 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,nosuid,nodev,noexec,relatime,nsdelegate 0 0
cgroup /sys/fs/cgroup/systemd cgroup rw,nosuid,nodev,noexec,relatime,xattr,name=systemd 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,nosuid,nodev,noexec,relatime,memory 0 0
cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,nosuid,nodev,noexec,relatime,cpu,cpuacct 0 0
cgroup /sys/fs/cgroup/pids cgroup rw,nosuid,nodev,noexec,relatime,pids 0 0
"""
# A stock Debian 12: cgroup2 alone.
UNIFIED = """\
sysfs /sys sysfs rw,nosuid,nodev,noexec,relatime 0 0
cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec,relatime,nsdelegate,memory_recursiveprot 0 0
"""
# systemd's legacy layout: v1 only, no cgroup2 at all.
LEGACY = """\
tmpfs /sys/fs/cgroup tmpfs ro,nosuid,nodev,noexec,mode=755 0 0
cgroup /sys/fs/cgroup/systemd cgroup rw,nosuid,nodev,noexec,relatime,xattr,name=systemd 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,nosuid,nodev,noexec,relatime,memory 0 0
"""
CG = Path("/sys/fs/cgroup")


def test_hybrid_hosts_live_in_every_hierarchy():
    assert hosts.cgroup_layout(HYBRID) == hosts.HYBRID
    assert hosts.cgroup_roots(HYBRID) == sorted(
        [CG / "unified", CG / "systemd", CG / "memory", CG / "cpu,cpuacct", CG / "pids"]
    )


def test_unified_hosts_live_in_the_one_tree():
    assert hosts.cgroup_layout(UNIFIED) == hosts.UNIFIED
    assert hosts.cgroup_roots(UNIFIED) == [CG]


@pytest.mark.parametrize("mounts", [LEGACY, "", "proc /proc proc rw 0 0\n"], ids=["legacy", "empty", "none"])
def test_another_layout_is_refused_naming_what_is_mounted(mounts):
    with pytest.raises(hosts.UnknownCgroupLayout, match=r"neither hybrid .* nor unified"):
        hosts.cgroup_layout(mounts)
    if mounts == LEGACY:
        with pytest.raises(hosts.UnknownCgroupLayout, match=r"/sys/fs/cgroup/systemd \(cgroup\)"):
            hosts.cgroup_roots(mounts)


def test_cgroup2_children_get_their_parents_controllers(tmp_path):
    """make_cgroup in a cgroup2 tree (a fake one: plain files where the kernel has its own)."""
    root = tmp_path / "cg"
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (root / "cpuset.cpus").write_text("0-1\n")
    (root / "cpuset.mems").write_text("0\n")
    host = root / "aifactory" / "local" / "gpu-05"
    hosts.make_cgroup(host)
    assert host.is_dir()
    assert (root / "cgroup.subtree_control").read_text() == "+cpuset +cpu +io +memory +pids"
    # the kernel would give aifactory/ its cgroup.controllers; the fake has none: nothing further to enable
    assert not (root / "aifactory" / "cgroup.subtree_control").exists()


def test_site_up_on_an_unknown_layout_exits_2_before_anything_starts(monkeypatch, capsys, tmp_path):
    from sandbox import localsite

    real = hosts._cgroup_mounts
    monkeypatch.setattr(hosts, "_cgroup_mounts", lambda mounts: real(LEGACY))
    started = []  # the first step after the pre-flight checks
    monkeypatch.setattr(localsite, "ensure_host_tools", lambda *a, **k: started.append(a))
    monkeypatch.setattr("os.geteuid", lambda: 0)
    assert cli.main(["site", "up", "--site", "sites/local.yaml"]) == 2
    err = capsys.readouterr().err
    assert "neither hybrid" in err and "Traceback" not in err and not started
