"""Background processes of an emulated site (BMCs, the bundle mirror): pid files and log tails.

Each daemon starts in its own session so it outlives the command that started it, writes its
output to a log, and is found again through its pid file by `status` and `down`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path


def task_state(stat: Path) -> str:
    """The state letter (R, S, D, Z...) in a /proc/PID[/task/TID]/stat file: the field after the
    command, which is in parentheses and may itself contain them."""
    return stat.read_text().rpartition(")")[2].split()[0]


def pid_of(pid_file: Path) -> int | None:
    """The pid in the file if that process runs (a zombie waiting for its parent counts as gone)."""
    try:
        pid = int(pid_file.read_text())
        state = task_state(Path(f"/proc/{pid}/stat"))
    except (OSError, ValueError):
        return None
    return None if state == "Z" else pid


def start(argv: list[str], pid_file: Path, log: Path, env: dict[str, str] | None = None) -> int:
    """Start argv detached unless the pid file names a live process; return the pid."""
    running = pid_of(pid_file)
    if running:
        return running
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
        )
    pid_file.write_text(str(proc.pid))
    return proc.pid


def stop(pid_file: Path, timeout: float = 10) -> None:
    pid = pid_of(pid_file)
    if pid:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and pid_of(pid_file):
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    pid_file.unlink(missing_ok=True)


def tail(log: Path, lines: int = 15) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {log})"


def rss_mib(pid: int, with_children: bool = True) -> float:
    """Resident memory of a process (and, by default, all its descendants)."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
            for t in Path(f"/proc/{p}/task").iterdir() if with_children else ():
                with contextlib.suppress(OSError):
                    todo += [int(c) for c in (t / "children").read_text().split()]
    return total / 1024
