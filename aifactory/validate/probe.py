"""Gather what the checks need from every host, in parallel, in one ssh round trip per host.

Each check module declares `probes(site, machine, level) -> {name: command}`; the commands of a
host are joined into one shell script whose output is one line per command (name, exit status,
base64 output), so a host with 20 checks costs one ssh exchange over its ControlMaster instead of
20. Long commands (dcgmi diag, all_reduce_perf) then run on all GPU hosts at the same time.
"""

from __future__ import annotations

import base64
import shlex
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import testinfra

from aifactory.site.model import Machine, Site

DEFAULT_TIMEOUT = 30


@dataclass(frozen=True)
class Output:
    rc: int
    out: str

    @property
    def ok(self) -> bool:
        return self.rc == 0

    def describe(self) -> str:
        """The output for a failure message: rc 127 is 'command not found', 124 a timeout."""
        why = {124: "timed out", 127: "command not found"}.get(self.rc, f"exit {self.rc}")
        text = " ".join(self.out.split())
        return f"{why}: {text[:300]}" if text else why


@dataclass
class HostProbe:
    host: str
    outputs: dict[str, Output] = field(default_factory=dict)
    error: str | None = None  # the probe itself failed (ssh)
    clock_offset_s: float | None = None  # host clock minus this machine's, mid round trip
    clock_uncertainty_s: float | None = None

    def __getitem__(self, name: str) -> Output:
        if self.error:
            raise RuntimeError(f"{self.host}: probe failed: {self.error}")
        if name not in self.outputs:
            raise KeyError(f"{self.host}: no probe {name!r} was gathered")
        return self.outputs[name]


Command = str | tuple[str, int]  # a shell command, or (command, timeout in seconds)


def script(commands: dict[str, Command]) -> str:
    parts = []
    for name, cmd in commands.items():
        text, timeout = cmd if isinstance(cmd, tuple) else (cmd, DEFAULT_TIMEOUT)
        parts.append(
            f"o=$(timeout {timeout} sh -c {shlex.quote(text)} 2>&1 </dev/null); rc=$?; "
            f'printf "%s %d %s\\n" {shlex.quote(name)} "$rc" "$(printf "%s" "$o" | base64 -w0)"'
        )
    return "\n".join(parts) or "true"


def parse(output: str) -> dict[str, Output]:
    outputs = {}
    for line in output.splitlines():
        words = line.split(" ")
        if len(words) == 3 and words[1].lstrip("-").isdigit():
            outputs[words[0]] = Output(int(words[1]), base64.b64decode(words[2]).decode(errors="replace"))
    return outputs


def connect(site: Site, machine: Machine, ssh_config: Path) -> testinfra.host.Host:
    # By address, never by name: the site's ssh config lists both, and a machine missing from it
    # must not send a name lookup anywhere.
    return testinfra.get_host(
        f"ssh://{machine.address}", ssh_config=str(ssh_config), sudo=site.ssh_user != "root"
    )


def _why(e: Exception) -> str:
    """ssh's own message when testinfra wraps a failed ssh (exit 255) in a RuntimeError."""
    result = e.args[0] if e.args else None
    stderr = getattr(result, "stderr", None)
    if isinstance(stderr, str) and stderr.strip():
        return " ".join(stderr.split())
    return f"{type(e).__name__}: {e}"


def reach(host: testinfra.host.Host, probe: HostProbe) -> None:
    """First contact: opens the ControlMaster, proves ssh works, samples the host's clock."""
    try:
        t0 = time.time()
        r = host.run("date +%s.%N")
        t1 = time.time()
    except Exception as e:  # testinfra raises on ssh's exit 255 (unreachable, auth), bad config, ...
        probe.error = _why(e)
        return
    if r.rc != 0:
        probe.error = (r.stderr or r.stdout).strip() or f"ssh exit {r.rc}"
        return
    try:
        probe.clock_offset_s = float(r.stdout.strip()) - (t0 + t1) / 2
        probe.clock_uncertainty_s = (t1 - t0) / 2
    except ValueError:
        probe.error = f"unexpected `date` output: {r.stdout.strip()[:100]!r}"


def gather(host: testinfra.host.Host, probe: HostProbe, commands: dict[str, Command]) -> None:
    if probe.error or not commands:
        return
    try:
        r = host.run(script(commands))
    except Exception as e:
        probe.error = _why(e)
        return
    probe.outputs = parse(r.stdout)
    missing = [n for n in commands if n not in probe.outputs]
    if missing:
        probe.error = (
            f"probe script incomplete (ssh exit {r.rc}; missing {', '.join(missing)}): {r.stderr[:300]}"
        )


def _parallel(fn, names) -> None:
    if names:
        with ThreadPoolExecutor(max_workers=min(32, len(names))) as pool:
            list(pool.map(fn, names))


def reach_all(hosts: dict[str, testinfra.host.Host]) -> dict[str, HostProbe]:
    """Reach every host in parallel; `HostProbe.error` says why a host could not be reached."""
    probes = {name: HostProbe(name) for name in hosts}
    _parallel(lambda n: reach(hosts[n], probes[n]), list(hosts))
    return probes


def gather_all(
    hosts: dict[str, testinfra.host.Host],
    probes: dict[str, HostProbe],
    commands: dict[str, dict[str, Command]],
) -> None:
    """Run every host's commands, in parallel across hosts."""
    _parallel(lambda n: gather(hosts[n], probes[n], commands.get(n, {})), list(hosts))
