"""OS and kernel: release, clock, and the kernel settings the k8s_worker role sets."""

from __future__ import annotations

import pytest

from aifactory.site.model import Machine
from aifactory.validate import roles
from aifactory.validate.context import Context, check
from aifactory.validate.parsers import active_swaps, parse_sysctl

# Munge credentials and Slurm tolerate a few minutes of skew; anything above a second means the
# host's time service is broken.
MAX_CLOCK_OFFSET_S = 1.0


def _k8s_worker(ctx: Context, m: Machine) -> bool:
    return m.pool == "kubernetes"


# A host whose /proc/sys is read-only does not own its kernel: it runs on a machine (as a container)
# whose kernel, clock and modules are that machine's (the k8s_worker role reads the same fact).
OWNS_KERNEL = (
    'awk \'$2 == "/proc/sys" {split($4, o, ","); ro = (o[1] == "ro")} END {print ro ? "no" : "yes"}\' '
    "/proc/self/mounts"
)


def probes(ctx: Context, m: Machine) -> dict:
    p = {
        "os_release": '. /etc/os-release && echo "$ID $VERSION_ID $PRETTY_NAME" && uname -r',
        "ntp": "timedatectl show -p NTPSynchronized --value",
        "owns_kernel": OWNS_KERNEL,
    }
    if _k8s_worker(ctx, m):
        sysctls = roles.default("k8s_worker", "k8s_worker_sysctls")
        modules = roles.default("k8s_worker", "k8s_worker_kernel_modules")
        p["sysctl"] = "sysctl " + " ".join(sysctls) + " 2>/dev/null; true"
        p["modules"] = " ; ".join(f"[ -d /sys/module/{mod} ] && echo {mod}" for mod in modules) + " ; true"
        p["modules_conf"] = "cat /etc/modules-load.d/kubernetes.conf"
        p["swaps"] = "cat /proc/swaps"
    return p


def _owns_kernel(ctx: Context, m: Machine) -> bool:
    return ctx.probe(m)["owns_kernel"].out.strip() != "no"


@check("os.release", applies=lambda ctx, m: True)
def check_os_release(ctx: Context, machine: Machine, measure) -> None:
    out = ctx.probe(machine)["os_release"]
    assert out.ok, f"cannot read /etc/os-release: {out.describe()}"
    first, _, kernel = out.out.strip().partition("\n")
    os_id, version, pretty = [*first.split(" ", 2), "", ""][:3]
    measure(f"{pretty} / kernel {kernel.strip()}", "Debian 12")
    assert (os_id, version) == ("debian", "12"), f"{pretty}: the roles support Debian 12 only"


@check("time.offset", applies=lambda ctx, m: True)
def check_time_offset(ctx: Context, machine: Machine, measure) -> None:
    p = ctx.probe(machine)
    assert p.clock_offset_s is not None, "no clock sample"
    measure(round(p.clock_offset_s, 3), MAX_CLOCK_OFFSET_S)
    err = abs(p.clock_offset_s) - (p.clock_uncertainty_s or 0)
    assert err <= MAX_CLOCK_OFFSET_S, (
        f"clock is {p.clock_offset_s:+.3f}s off this machine's (max {MAX_CLOCK_OFFSET_S}s): munge and "
        "Slurm reject skewed credentials"
    )


@check("time.ntp_synchronized", applies=lambda ctx, m: True)
def check_ntp(ctx: Context, machine: Machine, measure) -> None:
    if not _owns_kernel(ctx, machine):
        pytest.skip(
            "the host does not own its kernel (read-only /proc/sys): its clock is its machine's "
            "(offset checked)"
        )
    out = ctx.probe(machine)["ntp"]
    measure(out.out.strip())
    assert out.ok and out.out.strip() == "yes", f"NTPSynchronized={out.out.strip() or out.describe()}"


@check("kernel.sysctls", applies=_k8s_worker)
def check_sysctls(ctx: Context, machine: Machine, measure) -> None:
    want = {k: str(v) for k, v in roles.default("k8s_worker", "k8s_worker_sysctls").items()}
    have = parse_sysctl(ctx.probe(machine)["sysctl"].out)
    measure(have, want)
    wrong = [f"{k}={have.get(k, 'missing')} (want {v})" for k, v in want.items() if have.get(k) != v]
    assert not wrong, "sysctls not as the k8s_worker role sets them: " + ", ".join(wrong)


@check("kernel.modules", applies=_k8s_worker)
def check_modules(ctx: Context, machine: Machine, measure) -> None:
    want = roles.default("k8s_worker", "k8s_worker_kernel_modules")
    conf = ctx.probe(machine)["modules_conf"]
    listed = [ln.strip() for ln in conf.out.splitlines() if ln.strip() and not ln.startswith("#")]
    assert conf.ok and set(want) <= set(listed), f"/etc/modules-load.d/kubernetes.conf lists {listed}"
    loaded = ctx.probe(machine)["modules"].out.split()
    measure(loaded, want)
    missing = [mod for mod in want if mod not in loaded]
    if missing and not _owns_kernel(ctx, machine):
        pytest.skip(
            f"the host does not own its kernel (read-only /proc/sys): {', '.join(missing)} listed, not loaded"
        )
    assert not missing, f"kernel modules not loaded: {', '.join(missing)}"


@check("kernel.swap_off", applies=_k8s_worker)
def check_swap(ctx: Context, machine: Machine, measure) -> None:
    swaps = active_swaps(ctx.probe(machine)["swaps"].out)
    measure(len(swaps), 0)
    assert not swaps, f"swap is on ({', '.join(swaps)}): the kubelet requires it off"
