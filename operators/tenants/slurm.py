"""The Slurm side: one account per tenant, its users, GrpTRES limits, fair-share and a QOS.

GPU-hour budgets are not Slurm's: GrpTRESMins counts decayed usage, so a budget would refill as
fair share decays. The operator's ledger (budget.py, from `sacct`) counts them, and a spent budget
sets the account's GrpTRES to 0 (entitlement.py), so no new job starts and running ones finish.

`SlurmAccounts` is the interface the handlers use; `SacctmgrAccounts` implements it with sacctmgr,
squeue and sacct on the head host through a `Runner` (local subprocess, or ssh when the operator
runs off-site), so a slurmrestd backend can replace it later (platform notes: slurmrestd 22.05
ignored later association changes, so sacctmgr it is for now).

Cost model: every observe or apply is ONE runner call; every apply is ONE `sacctmgr -i` process
reading all its commands from stdin. `GroupCommit` coalesces concurrent handlers' calls so that
200 tenants created at once cost a handful of processes, not 200 (or 200 x fields), and it makes
this process the single writer: slurmdbd mishandles concurrent sacctmgr changes.
"""

from __future__ import annotations

import logging
import re
import shlex
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, Protocol, TypeVar

from operators.tenants.budget import Run
from operators.tenants.entitlement import Holdings, slurm_limits
from operators.tenants.spec import SLURM_ORGANIZATION, TenantSpec, qos_name

log = logging.getLogger("aifactory.tenants.slurm")


class SlurmError(RuntimeError):
    """Slurm could not be read or changed; `reason` is a CamelCase condition reason."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


# --- desired and observed state ------------------------------------------------------------


@dataclass(frozen=True)
class Desired:
    account: str
    description: str
    fairshare: int
    grp_tres: dict[str, int]
    users: frozenset[str]
    qos: str | None  # the per-user caps QOS; None: no caps, the account keeps the site's QOS
    qos_max_tres_pu: dict[str, int]
    qos_max_jobs_pu: int | None


def desired(spec: TenantSpec, held: Holdings | None = None) -> Desired:
    """The account as the spec wants it; its GPU limits are the entitlement less what the tenant's
    pods hold (entitlement.py)."""
    tres = slurm_limits(spec.gpu_quota, held or Holdings())
    per_user = {"gres/gpu": spec.max_gpus_per_user} if spec.max_gpus_per_user is not None else {}
    return Desired(
        account=spec.name,
        description=re.sub(r"[^A-Za-z0-9 ._-]", "", spec.display_name)[:100] or spec.name,
        fairshare=spec.fairshare,
        grp_tres=tres,
        users=frozenset(spec.slurm_users),
        qos=qos_name(spec.name) if per_user or spec.max_jobs_per_user is not None else None,
        qos_max_tres_pu=per_user,
        qos_max_jobs_pu=spec.max_jobs_per_user,
    )


@dataclass
class Observed:
    account: str
    exists: bool = False
    # The account's Organization: SLURM_ORGANIZATION marks the accounts the operator made; it adopts,
    # changes and removes only those.
    organization: str | None = None
    fairshare: int | None = None
    grp_tres: dict[str, int] = field(default_factory=dict)
    grp_tres_mins: dict[str, int] = field(default_factory=dict)
    qos_list: frozenset[str] = frozenset()
    default_qos: str = ""
    users: set[str] = field(default_factory=set)
    qos_exists: bool = False
    qos_max_tres_pu: dict[str, int] = field(default_factory=dict)
    qos_max_jobs_pu: int | None = None
    # from squeue; None when slurmctld could not be asked
    running_jobs: int | None = None
    gpus_in_use: dict[str, int] = field(default_factory=dict)


def parse_tres(text: str) -> dict[str, int]:
    out = {}
    for part in filter(None, text.split(",")):
        key, _, value = part.partition("=")
        if value.lstrip("-").isdigit():
            out[key] = int(value)
    return out


def gpus_by_model(tres: str) -> dict[str, int]:
    """The GPUs per model of an allocation's TRES (`gres/gpu:h100=4`; the untyped total left out)."""
    return {k.split(":", 1)[1]: n for k, n in parse_tres(tres).items() if k.startswith("gres/gpu:") and n > 0}


def format_tres(tres: dict[str, int]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(tres.items()))


def _tres_change(want: dict[str, int], have: dict[str, int]) -> dict[str, int] | None:
    """What to set so `have` becomes `want`; -1 clears a limit. None when nothing differs."""
    change = {k: v for k, v in want.items() if have.get(k) != v}
    change |= {k: -1 for k in have if k not in want}
    return change or None


# --- the plan: sacctmgr commands (pure, unit tested) ---------------------------------------


def check_owned(have: Observed) -> None:
    """An account of the same name that the operator did not make (a hand-made one, another tool's)
    is never taken over: adopting it would change its limits, and deleting the tenant would remove it."""
    if have.exists and have.organization != SLURM_ORGANIZATION:
        raise SlurmError(
            "AccountNotOwned",
            f"Slurm account {have.account} exists and was not made by the tenant operator "
            f"(Organization={have.organization or 'none'}, not {SLURM_ORGANIZATION}); left untouched: "
            "rename the tenant, or remove or re-mark that account",
        )


def plan(want: Desired, have: Observed) -> list[str]:
    """The sacctmgr commands, in order, that turn `have` into `want`. [] when in sync."""
    check_owned(have)
    cmds: list[str] = []
    # A tenant without per-user caps has no QOS (one commit less per tenant); one that had caps
    # keeps its QOS with the limits cleared. `add account` commands merge in a batch only for
    # accounts with the same settings (description included, which is the display name).
    qos = want.qos or (qos_name(want.account) if have.qos_exists else None)
    qos_set = {}
    if want.qos_max_tres_pu or have.qos_max_tres_pu:
        change = _tres_change(want.qos_max_tres_pu, have.qos_max_tres_pu)
        if change:
            qos_set["MaxTRESPerUser"] = format_tres(change)
    if want.qos_max_jobs_pu != have.qos_max_jobs_pu:
        qos_set["MaxJobsPerUser"] = str(want.qos_max_jobs_pu if want.qos_max_jobs_pu is not None else -1)
    if qos and not have.qos_exists:
        added = {k: v for k, v in qos_set.items() if not v.endswith("=-1") and v != "-1"}
        cmds.append(_cmd(f"add qos {qos}", added))
    elif qos and qos_set:
        cmds.append(_cmd(f"modify qos where name={qos} set", qos_set))

    acct: dict[str, str] = {}
    if have.fairshare != want.fairshare:
        acct["Fairshare"] = str(want.fairshare)
    tres = _tres_change(want.grp_tres, have.grp_tres)
    if tres:
        acct["GrpTRES"] = format_tres(tres)
    # budgets are the ledger's: a GrpTRESMins from before (it decays) is cleared
    mins = _tres_change({}, have.grp_tres_mins)
    if mins:
        acct["GrpTRESMins"] = format_tres(mins)
    if qos and have.qos_list != frozenset({qos}):
        acct["QOS"] = qos
    if qos and have.default_qos != qos:
        acct["DefaultQOS"] = qos
    if not have.exists:
        acct = {k: v for k, v in acct.items() if "=-1" not in v}
        head = (
            f'add account {want.account} Description="{want.description}" '
            f"Organization={SLURM_ORGANIZATION} Parent=root"
        )
        cmds.append(_cmd(head, acct))
    elif acct:
        cmds.append(_cmd(f"modify account where name={want.account} set", acct))

    for user in sorted(want.users - have.users):
        cmds.append(f"add user {user} Account={want.account}")
    for user in sorted(have.users - want.users):
        cmds.append(f"remove user where name={user} account={want.account}")
    return cmds


def delete_plan(account: str) -> list[str]:
    # Users first: an account with associations below it cannot be removed.
    return [
        f"remove user where account={account}",
        f"remove account where name={account}",
        f"remove qos where name={qos_name(account)}",
    ]


def _cmd(head: str, settings: dict[str, str]) -> str:
    return " ".join([head, *(f"{k}={v}" for k, v in settings.items())])


# --- coalescing a batch: one commit per distinct setting, not per tenant --------------------

# slurmdbd commits (and tells slurmctld) once per sacctmgr command: about 0.5 s each on a loaded
# head. Commands that differ only in the account/QOS name become one command with a name list.
_PATTERNS = [  # (phase, regex with the name group, template)
    (0, re.compile(r"add qos (?P<n>\S+)(?P<s>.*)"), "add qos {n}{s}"),
    (1, re.compile(r"modify qos where name=(?P<n>\S+) set (?P<s>.*)"), "modify qos where name={n} set {s}"),
    (2, re.compile(r"add account (?P<n>\S+)(?P<s>.*)"), "add account {n}{s}"),
    (
        3,
        re.compile(r"modify account where name=(?P<n>\S+) set (?P<s>.*)"),
        "modify account where name={n} set {s}",
    ),
    (4, re.compile(r"add user (?P<s>\S+) Account=(?P<n>\S+)"), "add user {s} Account={n}"),
    (
        5,
        re.compile(r"remove user where name=(?P<s>\S+) account=(?P<n>\S+)"),
        "remove user where name={s} account={n}",
    ),
    (6, re.compile(r"remove user where account=(?P<n>\S+)"), "remove user where account={n}{s}"),
    (7, re.compile(r"remove account where name=(?P<n>\S+)"), "remove account where name={n}{s}"),
    (8, re.compile(r"remove qos where name=(?P<n>\S+)"), "remove qos where name={n}{s}"),
]


# ... but not without bound: slurmdbd's cost of one command grows faster than its name list.
# Measured on the local site, 1,000 accounts added / removed with K names per command: K=1,000 over
# 61 s / 15 min (and slurmdbd wedged), 250: 38.6 / 31.6 s, 100: 33.0 / 19.1 s, 50: 27.5 / 16.0 s,
# 25: 24.7 / 15.3 s, 10: 21.4 / 13.1 s; 200 accounts take 0.7-0.8 s whatever K.
NAMES_PER_COMMAND = 25


def coalesce(batches: Sequence[Sequence[str]]) -> list[str]:
    """The commands of several tenants' plans, merged per phase and identical settings.

    Plans (add/modify) and deletions are kept in separate consecutive segments, so a tenant deleted
    and created again within one batch keeps its order. Unknown commands are kept as they are.
    """
    out: list[str] = []
    segment: list[Sequence[str]] = []
    kind = None
    for cmds in [*batches, None]:
        this = None if cmds is None else any(c.startswith("remove user where account=") for c in cmds)
        if segment and (cmds is None or this != kind):
            out += _merge([c for b in segment for c in b])
            segment = []
        if cmds is not None:
            segment.append(cmds)
            kind = this
    return out


def _merge(commands: list[str]) -> list[str]:
    groups: dict[tuple[int, str], list[str]] = {}
    loose: list[str] = []
    for c in commands:
        for phase, rx, _ in _PATTERNS:
            m = rx.fullmatch(c)
            if m:
                names = groups.setdefault((phase, m.groupdict().get("s") or ""), [])
                if m.group("n") not in names:
                    names.append(m.group("n"))
                break
        else:
            loose.append(c)
    merged = [
        _PATTERNS[phase][2].format(n=",".join(names[i : i + NAMES_PER_COMMAND]), s=settings)
        for (phase, settings), names in sorted(groups.items(), key=lambda kv: kv[0][0])
        for i in range(0, len(names), NAMES_PER_COMMAND)
    ]
    return merged + loose


# --- parsing what sacctmgr / squeue / sacct print -----------------------------------------

ASSOC_FORMAT = "account,user,fairshare,grptres,grptresmins,qos,defaultqos"
QOS_FORMAT = "name,maxtrespu,maxjobspu"


def parse_observation(text: str, accounts: Sequence[str]) -> dict[str, Observed]:
    """Parse the sections printed by `observe_script`."""
    obs = {a: Observed(a) for a in accounts}
    by_qos = {qos_name(a): a for a in accounts}
    section = ""
    errors: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("#"):
            section = line[1:].split(" ", 1)[0]
            if section == "error":
                _, what, msg = [*line.split(" ", 2), "", ""][:3]
                errors["sacctmgr" if what in ("assoc", "qos") else "squeue"] = msg
            continue
        f = [x.strip() for x in line.split("|")]
        if section == "assoc" and len(f) >= 7 and f[0] in obs:
            o = obs[f[0]]
            if f[1]:
                o.users.add(f[1])
                continue
            o.exists = True
            o.fairshare = int(f[2]) if f[2].isdigit() else None
            o.grp_tres, o.grp_tres_mins = parse_tres(f[3]), parse_tres(f[4])
            o.qos_list = frozenset(filter(None, f[5].split(",")))
            o.default_qos = f[6]
        elif section == "acct" and len(f) >= 2 and f[0] in obs:
            obs[f[0]].organization = f[1]
        elif section == "qos" and len(f) >= 3 and f[0] in by_qos:
            o = obs[by_qos[f[0]]]
            o.qos_exists = True
            o.qos_max_tres_pu = parse_tres(f[1])
            o.qos_max_jobs_pu = int(f[2]) if f[2].isdigit() else None
        elif section == "jobs" and len(f) >= 2 and f[0] in obs:
            o = obs[f[0]]
            o.running_jobs = (o.running_jobs or 0) + 1
            for model, n in gpus_by_model(f[1]).items():
                o.gpus_in_use[model] = o.gpus_in_use.get(model, 0) + n
    if "sacctmgr" in errors:
        raise SlurmError("SlurmdbdUnavailable", f"sacctmgr failed: {errors['sacctmgr']}")
    if "squeue" not in errors:
        for o in obs.values():
            o.running_jobs = o.running_jobs or 0
    else:
        # slurmdbd answered, slurmctld did not: limits are stored but nothing enforces them now.
        raise SlurmError("SlurmctldUnavailable", f"slurmctld not answering: {errors['squeue']}")
    return obs


# Each section's failure is reported in-band ("#error <section> <message>"), so ONE runner call
# tells the whole state, including which daemon is down.
_SECTION_FN = (
    'sec() { n=$1; shift; echo "#$n"; if out=$("$@" 2>&1); then [ -n "$out" ] && echo "$out"; '
    'else echo "#error $n $(echo "$out" | tr "\\n" " " | head -c 300)"; fi; return 0; }; '
)


def observe_script(accounts: Sequence[str]) -> str:
    names = ",".join(accounts)
    qos = ",".join(qos_name(a) for a in accounts)
    return _SECTION_FN + "; ".join(
        [
            f"sec assoc sacctmgr -nP show assoc where account={names} format={ASSOC_FORMAT}",
            f"sec acct sacctmgr -nP show account where name={names} format=account,organization",
            f"sec qos sacctmgr -nP show qos where name={qos} format={QOS_FORMAT}",
            f"sec jobs squeue -h -t R -A {names} -O 'Account:|,tres-alloc:|'",
        ]
    )


def usage_script(accounts: Sequence[str], since: float) -> str:
    """Every job allocation of the accounts that ran since `since` (epoch): account, allocated TRES,
    start and end as epoch seconds (end Unknown while it runs)."""
    return (
        f"SLURM_TIME_FORMAT=%s sacct -X -n -P -a -A {','.join(accounts)} "
        f"-S $(date -d @{int(since)} +%Y-%m-%dT%H:%M:%S) -E now -o Account,AllocTRES,Start,End"
    )


def parse_usage(text: str) -> dict[str, list[Run]]:
    """Per account, its jobs' GPU runs (per model) from `usage_script`'s output. Jobs that never
    started hold nothing."""
    out: dict[str, list[Run]] = {}
    for line in text.splitlines():
        f = line.strip().split("|")
        if len(f) < 4 or not f[2].isdigit():
            continue
        end = float(f[3]) if f[3].isdigit() else None
        for model, n in gpus_by_model(f[1]).items():
            out.setdefault(f[0], []).append(Run(model, n, float(f[2]), end))
    return out


# --- runners ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Result:
    rc: int
    out: str
    err: str


class Runner(Protocol):
    def run(self, script: str, stdin: str = "", timeout: float = 60) -> Result: ...


class LocalRunner:
    """The operator runs on the head host (in-cluster there, or as a service)."""

    def run(self, script: str, stdin: str = "", timeout: float = 60) -> Result:
        p = subprocess.run(
            ["bash", "-c", script], input=stdin, capture_output=True, text=True, timeout=timeout, check=False
        )
        return Result(p.returncode, p.stdout, p.stderr)


class SshRunner:
    """The operator runs off-site (development, tests): the same script through ssh to the head.

    The ssh config's ControlMaster keeps one connection; sshd allows 10 sessions on it, so calls
    are capped below that.
    """

    def __init__(self, config: Path | None, host: str, max_sessions: int = 6):
        self.config, self.host = config, host
        self._slots = threading.BoundedSemaphore(max_sessions)

    def run(self, script: str, stdin: str = "", timeout: float = 60) -> Result:
        with self._slots:
            try:
                p = subprocess.run(
                    [
                        "ssh",
                        *(["-F", str(self.config)] if self.config else []),
                        self.host,
                        "bash -c " + shlex.quote(script),
                    ],
                    input=stdin,
                    capture_output=True,
                    text=True,
                    timeout=timeout,
                    check=False,
                )
            except subprocess.TimeoutExpired as e:
                raise SlurmError("SlurmTimeout", f"{self.host}: no answer in {timeout}s") from e
        if p.returncode == 255:
            raise SlurmError("HeadUnreachable", f"ssh {self.host}: {p.stderr.strip()[:300]}")
        return Result(p.returncode, p.stdout, p.stderr)


# --- coalescing -------------------------------------------------------------------------------

T = TypeVar("T")
R = TypeVar("R")


class GroupCommit(Generic[T, R]):
    """Calls from many threads become few batched calls (group commit).

    A worker thread, started when the first item arrives, runs the batch of everything queued;
    items arriving meanwhile queue up and the next batch takes them all; it ends when the queue is
    empty. A batch that is not full starts once nothing has arrived for `quiet` seconds and no
    announced item (`expect`) is still on its way, or once its oldest item has waited `max_wait`:
    a burst becomes one batch instead of one per arrival, and a lone caller waits only `quiet`.
    `fn` gets a list of items and returns one result per item (or an exception per item).
    Callers get a Future: one waiting for its batch costs no thread of its own.
    """

    def __init__(
        self,
        fn: Callable[[list[T]], list[R | BaseException]],
        max_batch: int = 250,
        quiet: float = 0.0,
        max_wait: float = 0.0,
    ):
        self.fn, self.max_batch, self.quiet, self.max_wait = fn, max_batch, quiet, max(quiet, max_wait)
        self._lock = threading.Condition()  # notified when the start condition may have changed
        self._queue: list[tuple[T, Future[R], float]] = []
        self._last_arrival = 0.0
        self._expected = 0
        self._running = False

    def expect(self) -> None:
        """An item is being prepared: the next batch waits for it (up to `max_wait`). Each call is
        followed by `submit_async(..., expected=True)` or `unexpect()`."""
        with self._lock:
            self._expected += 1
            self._last_arrival = time.monotonic()

    def unexpect(self) -> None:
        with self._lock:
            self._expected -= 1
            self._lock.notify()

    def submit_async(self, item: T, expected: bool = False) -> Future[R]:
        fut: Future[R] = Future()
        with self._lock:
            self._expected -= expected
            self._last_arrival = time.monotonic()
            self._queue.append((item, fut, self._last_arrival))
            self._lock.notify()
            start = not self._running
            self._running = True
        if start:
            threading.Thread(target=self._drain, name="group-commit", daemon=True).start()
        return fut

    def submit(self, item: T) -> R:
        return self.submit_async(item).result()

    def _drain(self) -> None:
        while True:
            with self._lock:
                while 0 < len(self._queue) < self.max_batch:
                    start = self._queue[0][2] + self.max_wait
                    if not self._expected:
                        start = min(start, self._last_arrival + self.quiet)
                    now = time.monotonic()
                    if start <= now:
                        break
                    self._lock.wait(start - now)
                batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch :]
                if not batch:
                    self._running = False
                    return
            try:
                results = self.fn([item for item, _, _ in batch])
            except BaseException as e:  # the whole batch failed: every caller gets the error
                results = [e] * len(batch)
            for (_, fut, _), res in zip(batch, results, strict=True):
                if isinstance(res, BaseException):
                    fut.set_exception(res)
                else:
                    fut.set_result(res)


# --- the interface and its sacctmgr backend -------------------------------------------------


class SlurmAccounts(Protocol):
    def observe(self, account: str) -> Observed: ...
    def apply(self, commands: list[str]) -> None: ...
    def sync(self, want: Desired) -> Future[tuple[list[str], Observed]]: ...
    def delete(self, account: str, cancel_jobs: bool) -> None: ...
    def usage(self, account: str, since: float) -> Future[list[Run]]: ...


# A burst of 200 new tenants starts its syncs over 2-3 s. Measured on the local site: their 200
# accounts added in one batch cost MariaDB 1.1-1.2 s of CPU, in 4 batches (6, 24, 84, 86) 1.9-4.6 s
# (every batch renumbers the association tree around the accounts already there).
APPLY_QUIET = 0.3  # seconds without a new sync (and none still observing) before a batch starts
APPLY_MAX_WAIT = 3.0  # the longest the first plan of a burst waits for the rest
# Each observation costs the head about 50 ms of CPU (ssh, three sacctmgr, squeue) whatever
# its size. Started back to back, a burst of 200 syncs took 11-17 of them; gathered for up to
# 0.5 s, a handful. A lone sync waits 0.05 s.
OBSERVE_QUIET = 0.05
OBSERVE_MAX_WAIT = 0.5


class SacctmgrAccounts:
    def __init__(self, runner: Runner):
        self.runner = runner
        self._observe = GroupCommit(self._observe_batch, quiet=OBSERVE_QUIET, max_wait=OBSERVE_MAX_WAIT)
        self._usage = GroupCommit(self._usage_batch, quiet=OBSERVE_QUIET, max_wait=OBSERVE_MAX_WAIT)
        # Each sacctmgr batch costs slurmdbd a commit per command and MariaDB a rewrite of the
        # association tree: a burst is cheaper as few, large batches.
        self._apply = GroupCommit(self._apply_batch, quiet=APPLY_QUIET, max_wait=APPLY_MAX_WAIT)

    def observe(self, account: str) -> Observed:
        return self._observe.submit(account)

    def usage(self, account: str, since: float) -> Future[list[Run]]:
        """The account's GPU runs since `since` (the ledger's Slurm side), batched with others'."""
        return self._usage.submit_async((account, since))

    def _usage_batch(self, items: list[tuple[str, float]]) -> list[list[Run] | BaseException]:
        accounts = sorted({a for a, _ in items})
        # never from a time still to come (a test clock runs ahead): sacct refuses that window
        since = min(min(s for _, s in items), time.time())
        r = self.runner.run(usage_script(accounts, since), timeout=120)
        if r.rc != 0:
            err = SlurmError("SlurmdbdUnavailable", f"sacct failed: {(r.err or r.out).strip()[:300]}")
            return [err] * len(items)
        runs = parse_usage(r.out)
        return [[j for j in runs.get(a, []) if j.end is None or j.end > s] for a, s in items]

    def apply(self, commands: list[str]) -> None:
        if commands:
            self._apply.submit(commands)

    def sync(self, want: Desired) -> Future[tuple[list[str], Observed]]:
        """Observe, plan, apply: each step queued to its batch and the next chained to it, so the
        caller's thread is free meanwhile. The result: the commands that were needed, and the
        observation (before them)."""
        done: Future[tuple[list[str], Observed]] = Future()

        def observed(f: Future[Observed]) -> None:
            try:
                have = f.result()
                cmds = plan(want, have)
            except BaseException as e:
                self._apply.unexpect()
                done.set_exception(e)
                return
            if not cmds:
                self._apply.unexpect()
                done.set_result((cmds, have))
                return

            def applied(a: Future[None]) -> None:
                err = a.exception()
                if err is not None:
                    done.set_exception(err)
                else:
                    done.set_result((cmds, have))

            self._apply.submit_async(cmds, expected=True).add_done_callback(applied)

        # Its plan is on the way: a batch of other tenants' plans waits for it (see APPLY_QUIET).
        self._apply.expect()
        self._observe.submit_async(want.account).add_done_callback(observed)
        return done

    def delete(self, account: str, cancel_jobs: bool) -> None:
        if cancel_jobs:
            # Jobs hold the account; wait (bounded) until slurmctld has let them go.
            self.runner.run(
                f"scancel -A {account}; for i in $(seq 30); do "
                f'[ -z "$(squeue -h -A {account} -o %i)" ] && break; sleep 1; done'
            )
        # Through the same single writer as every change: slurmdbd mixes up concurrent removals
        # ("Database is possibly corrupted", or silently nothing deleted).
        self._apply.submit(delete_plan(account))
        # Batched like every observation: a batch takes only what was queued before it started, so
        # this one is read after the removal above.
        left = self.observe(account)
        if left.exists or left.qos_exists:
            raise SlurmError("DeleteIncomplete", f"account {account} or its QOS still present after delete")

    def observe_many(self, accounts: Sequence[str]) -> dict[str, Observed]:
        start = time.monotonic()
        res = self.runner.run(observe_script(accounts))
        log.info("slurm: observed %d account(s) in %.2f s", len(accounts), time.monotonic() - start)
        return parse_observation(res.out, accounts)

    def _observe_batch(self, accounts: list[str]) -> list[Observed | BaseException]:
        unique = sorted(set(accounts))
        try:
            obs = self.observe_many(unique)
        except SlurmError as e:
            return [e] * len(accounts)
        return [obs[a] for a in accounts]

    def _apply_batch(self, batches: list[list[str]]) -> list[BaseException | None]:
        try:
            start, commands = time.monotonic(), coalesce(batches)
            self._run_sacctmgr(commands)
            log.info(
                "slurm: %d tenant plan(s) applied as %d sacctmgr command(s) in %.2f s",
                len(batches),
                len(commands),
                time.monotonic() - start,
            )
            return [None] * len(batches)
        except SlurmError as e:
            if len(batches) == 1:
                return [e]
        # One bad command must not fail the others: retry one tenant at a time to attribute it.
        out: list[BaseException | None] = []
        for b in batches:
            try:
                self._run_sacctmgr(b)
                out.append(None)
            except SlurmError as e:
                out.append(e)
        return out

    def _run_sacctmgr(self, commands: Iterable[str]) -> None:
        # `sacctmgr -i` reads one command per line from stdin and commits each at once. Its exit
        # status is 1 for a harmless "Nothing modified/deleted" too; real failures (unknown account
        # or TRES, slurmdbd down) are the lines it writes to stderr.
        lines = list(commands)
        stdin = "\n".join(lines) + "\nquit\n"
        # about 0.5 s per commit on a loaded head, and per account or user a merged command names
        # (`add account a,b,c ...`: a burst of 1,000 tenants took over a minute as one command)
        names = sum(1 + ln.count(",") for ln in lines)
        res = self.runner.run("sacctmgr -i", stdin=stdin, timeout=60 + 0.5 * names)
        errors = [ln.strip() for ln in res.err.splitlines() if ln.strip()]
        if errors:
            detail = "; ".join(errors)
            reason = "SlurmdbdUnavailable" if "slurmdbd" in detail.lower() else "SacctmgrFailed"
            raise SlurmError(reason, f"sacctmgr: {detail[:500]}")
