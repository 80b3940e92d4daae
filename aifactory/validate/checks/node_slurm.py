"""Slurm hosts: one munge key everywhere, one slurm.conf, gres.conf and registration per the site file."""

from __future__ import annotations

import pytest

from aifactory import paths
from aifactory.site.model import Machine
from aifactory.validate import roles
from aifactory.validate.context import Context, check, is_slurm_node, slurm_host
from aifactory.validate.parsers import parse_gres_conf

DRAIN_PREFIX = "aifactory validate:"  # reasons of the drains --drain-on-failure sets


def _worker(ctx: Context, m: Machine) -> bool:
    return m.pool is not None


def _only_slurm_nodes(ctx: Context, m: Machine) -> None:
    if not m.has_role("head") and not is_slurm_node(ctx, m):
        pytest.skip(f"not a Slurm node ({m.pool} pool)")


def probes(ctx: Context, m: Machine) -> dict:
    p: dict = {}
    if slurm_host(ctx, m):
        key = roles.default("munge", "munge_key_path")
        p["munge_key"] = f"stat -c '%U %G %a %s' {key} && sha256sum {key}"
        p["slurm_conf"] = "sha256sum /etc/slurm/slurm.conf"
    if m.has_role("head"):
        p["scontrol_nodes"] = "scontrol show node -o"
    if _worker(ctx, m):
        p["gres_conf"] = "cat " + roles.default("slurm_node", "slurm_node_gres_conf_path")
        p["gpu_devices"] = "stat -c '%n %F %t' /dev/nvidia[0-9]* 2>/dev/null; true"
    return p


def _digest(ctx: Context, m: Machine, probe: str) -> str | None:
    out = ctx.probe(m)[probe] if m.name in ctx.probes else None
    return out.out.split()[-2] if out is not None and out.ok else None


def _reference_key(ctx: Context) -> tuple[str | None, str]:
    """The cluster's key: the controller copy the munge role distributes, else the head's."""
    import hashlib

    copy = paths.site_state_dir(ctx.site.name) / "secrets" / "munge.key"
    if copy.exists():
        return hashlib.sha256(copy.read_bytes()).hexdigest(), f"the controller copy {copy}"
    head = ctx.head
    return (_digest(ctx, head, "munge_key"), head.name) if head else (None, "?")


@check("munge.key", applies=slurm_host)
def check_munge_key(ctx: Context, machine: Machine, measure) -> None:
    _only_slurm_nodes(ctx, machine)
    out = ctx.probe(machine)["munge_key"]
    assert out.ok, f"/etc/munge/munge.key: {out.describe()}"
    stat, digest = out.out.splitlines()[0].split(), out.out.splitlines()[1].split()[0]
    ref, ref_name = _reference_key(ctx)
    measure(digest[:16], ref[:16] if ref else None)
    assert stat[:3] == ["munge", "munge", "400"], f"owner/mode {' '.join(stat[:3])}, want munge munge 400"
    assert int(stat[3]) >= 32, f"key of {stat[3]} bytes (munge wants at least 32)"
    assert ref is not None, "no reference key to compare with"
    assert digest == ref, f"munge key sha256 {digest[:16]}... differs from {ref_name} ({ref[:16]}...)"


@check("slurm.conf", applies=slurm_host)
def check_slurm_conf(ctx: Context, machine: Machine, measure) -> None:
    _only_slurm_nodes(ctx, machine)
    digest = _digest(ctx, machine, "slurm_conf")
    assert digest, f"/etc/slurm/slurm.conf: {ctx.probe(machine)['slurm_conf'].describe()}"
    head = ctx.head
    ref = _digest(ctx, head, "slurm_conf") if head else None
    measure(digest[:16], ref[:16] if ref else None)
    assert head is not None and ref, "no slurm.conf on the head to compare with"
    assert digest == ref, f"slurm.conf sha256 {digest[:16]}... differs from {head.name}'s ({ref[:16]}...)"


@check("slurm.gres_conf", applies=_worker)
def check_gres_conf(ctx: Context, machine: Machine, measure) -> None:
    _only_slurm_nodes(ctx, machine)
    out = ctx.probe(machine)["gres_conf"]
    assert out.ok, f"gres.conf: {out.describe()}"
    lines = [g for g in parse_gres_conf(out.out) if g.name == "gpu"]
    count = sum(len(g.files) for g in lines)
    measure(count, machine.gpu_count)
    want = f"{machine.gpu_count} x {machine.gpu_model}"
    if not machine.gpu_count:
        assert not lines, f"gres.conf declares GPUs, the site file none: {lines}"
        return
    assert lines, f"gres.conf declares no GPU, the site file says {want}"
    wrong = [g for g in lines if g.node != machine.name or g.type != machine.gpu_model]
    assert not wrong, (
        f"gres.conf lines for another node or type: {wrong} "
        f"(want NodeName={machine.name} Type={machine.gpu_model})"
    )
    assert count == machine.gpu_count, f"gres.conf lists {count} GPU device files, the site file says {want}"
    devices = {
        ln.split()[0]
        for ln in ctx.probe(machine)["gpu_devices"].out.splitlines()
        if "character special" in ln
    }
    missing = [f for g in lines for f in g.files if f not in devices]
    assert not missing, f"gres.conf GPU device files missing or not character devices: {', '.join(missing)}"


@check("slurm.registration", applies=_worker)
def check_registration(ctx: Context, machine: Machine, measure) -> None:
    _only_slurm_nodes(ctx, machine)
    nodes = ctx.slurm_nodes()
    node = nodes.get(machine.name)
    assert node is not None, f"not a Slurm node of the controller (have {', '.join(sorted(nodes)) or 'none'})"
    want = f"gpu:{machine.gpu_model}:{machine.gpu_count}" if machine.gpu_count else "(null)"
    gres = node.gres.split("(")[0]
    measure(f"{node.state} {gres}", want)
    assert gres == want, f"slurmctld has Gres={node.gres}, the site file says {want}"
    assert node.responding, f"state {node.state}" + (f": {node.reason}" if node.reason else "")
    if machine.pool == "slurm":
        ours = node.reason.startswith(DRAIN_PREFIX)
        assert not node.drained or ours, f"drained: {node.reason or node.state}"
    else:  # a worker of another pool must stay out of Slurm's reach
        assert node.drained, f"a {machine.pool}-pool machine that Slurm may schedule on (state {node.state})"
