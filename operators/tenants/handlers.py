"""kopf handlers of the Tenant operator.

    kopf run --all-namespaces --peering=aifactory-tenant-operator -m operators.tenants.handlers
    (or `aifactory operator run --site FILE`)

One idempotent `reconcile` for create, update and resume: it computes the whole desired state of
both sides and applies it (server-side apply; a sacctmgr plan from a fresh observation), so a
handler killed half-way simply runs again after a restart. kopf keeps handler progress in
annotations, so a tenant whose create never finished is picked up where it was.

A timer per tenant re-reads both sides: hand edits are put back (event DriftCorrected), usage is
refreshed, the GPU-hour ledger advances (budget.py; a spent budget holds the tenant on both sides:
condition BudgetExhausted), and a Slurm outage flips SlurmSynced. Deletion goes through kopf's
finalizer: refused (condition DeletionBlocked + event) while GPUs are in use unless the force
annotation is set.

`reconcile` and `drift` are async: their Kubernetes REST calls run in a small thread pool
(AIFACTORY_KUBE_CONCURRENCY) and their Slurm side is a future of the batched sacctmgr writer
(slurm.GroupCommit), so 200 tenants in flight do not hold 200 threads. `cleanup` is sync, in kopf's
thread pool.

Every tenant's quota is kept in a capacity.Ledger: read from the API at startup, updated by each
reconcile and deletion, and read again after a drift interval (a tenant removed without its
finalizer). A kopf index did the same job at 12% of the operator's CPU in a burst: kopf runs it
on every event.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import aiohttp
import kopf
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config

from operators.tenants import budget, capacity, config, energy, metrics, slurm
from operators.tenants import kubernetes_side as kside
from operators.tenants.entitlement import Holdings
from operators.tenants.spec import (
    BUDGET_EXHAUSTED,
    DELETION_BLOCKED,
    FINALIZER,
    FORCE_DELETE_ANNOTATION,
    GROUP,
    K8S_SYNCED,
    OVERCOMMITTED,
    PEERING_LIFETIME_S,
    PLURAL,
    READY,
    SLURM_ORGANIZATION,
    SLURM_SYNCED,
    VERSION,
    TenantSpec,
    condition,
    parse,
    replacing,
    set_condition,
)

TENANTS = (GROUP, VERSION, PLURAL)
R = TypeVar("R")
log = logging.getLogger("aifactory.tenants")


@dataclass
class State:
    cfg: config.Config
    kube: kside.Kube
    slurm: slurm.SacctmgrAccounts
    kueue: bool
    ledger: capacity.Ledger
    # The Kubernetes side's blocking REST calls run here, so many tenants at once write through a
    # bounded number of threads (async handlers wait for them without a thread of their own).
    kube_pool: ThreadPoolExecutor
    ledger_read_at: float = 0.0
    # What each tenant's work held at its last drift round (entitlement.py): observed state, so
    # memory is enough; an operator that restarts starts from the full entitlement on each side
    # until the first round (one drift interval).
    holdings: dict[str, Holdings] = field(default_factory=dict)
    energy_passes: energy.Passes | None = None  # this month's energy in the tenants' status


_state: State | None = None


def state() -> State:
    assert _state is not None, "operator not started"
    return _state


@kopf.on.startup()
def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    global _state
    # kopf's bookkeeping (handler progress, the spec last handled) goes in status.kopf: it is then
    # written in the same status PATCH as our conditions, where annotations cost one more PATCH
    # (and one more watch event) per reconcile.
    settings.persistence.progress_storage = kopf.StatusProgressStorage()
    settings.persistence.diffbase_storage = kopf.StatusDiffBaseStorage()
    settings.persistence.finalizer = FINALIZER
    # The deletion handler is sync: its thread waits for the Slurm batch it joined (GroupCommit), so
    # the thread count bounds how many deletions one sacctmgr call serves (config.DELETION_THREADS).
    workers = int(os.environ.get("AIFACTORY_WORKERS", str(config.DELETION_THREADS)))
    settings.execution.max_workers = workers
    # kopf's own log lines ("Handler succeeded") become events only from warnings up: at INFO they
    # are two extra API writes per reconcile. Our Normal events go through `normal` (kopf.event).
    settings.posting.level = logging.WARNING
    settings.networking.connect_timeout = 10
    settings.watching.server_timeout = 300
    # Peering (spec.PEERING): an operator killed without saying goodbye counts as alive until its
    # keep-alive expires, and an equal-priority successor (a restarted pod, a restarted `operator
    # run`) pauses until then. 15 s instead of kopf's 60 bounds that pause; a keep-alive PATCH every
    # 5-10 s per operator is the price.
    settings.peering.lifetime = PEERING_LIFETIME_S
    cfg = config.load()
    try:
        k8s_config.load_incluster_config()
    except k8s_config.ConfigException:
        k8s_config.load_kube_config()
    kconf = k8s_client.Configuration.get_default_copy()
    # A bounded pool whose threads wait for a free connection: urllib3's default opens one more
    # and discards it under load (291 discards creating 200 tenants with 48), and one per deletion
    # thread opened 256 at once, each a TLS handshake.
    kconf.connection_pool_maxsize = config.kube_concurrency()
    kube = kside.Kube(k8s_client.ApiClient(kconf))
    kube.api.rest_client.pool_manager.connection_pool_kw["block"] = True
    _state = State(
        cfg,
        kube,
        slurm.SacctmgrAccounts(cfg.runner),
        kube.has_kueue(),
        capacity.Ledger(cfg.capacity, cfg.policy),
        ThreadPoolExecutor(config.kube_concurrency(), "kubernetes-side"),
    )
    metrics.serve(cfg.metrics_port, _state.ledger)
    # Complete before any handler runs: kopf starts watching after the startup handlers.
    reread_ledger()
    if (es := energy.settings()) is not None:
        _state.energy_passes = energy.Passes(
            es, kube, cfg.runner, lambda: dt.datetime.fromtimestamp(budget.clock(), dt.UTC)
        )
    else:
        log.info("no Prometheus (AIFACTORY_PROMETHEUS_URL): no energy figures in the tenants' status")
    log.info(
        "tenant operator started: capacity %s, policy %s, drift every %ss, kueue %s",
        cfg.capacity,
        cfg.policy,
        cfg.drift_interval,
        _state.kueue,
    )


@kopf.on.login()
async def login(**kwargs: Any) -> kopf.AiohttpSession | None:
    """kopf's own credentials, in a session that keeps at most `kube_concurrency` connections:
    kopf's default session has no limit, so a burst of status writes opened ~130 connections, each
    a TLS handshake with RSA signatures on both ends. Created here, in the operator's event loop."""
    info = kopf.login_via_client(**kwargs)
    if info is None:
        return None
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=config.kube_concurrency(), ssl=info.as_ssl_context()),
        headers=info.as_http_headers(),
        proxy=info.proxy_url,
        trust_env=info.trust_env,
    )
    return kopf.AiohttpSession(
        aiohttp_session=session, server=info.server, default_namespace=info.default_namespace
    )


def normal(body: kopf.Body, reason: str, message: str) -> None:
    """A Normal event, posted whatever settings.posting.level (kopf.info would be filtered)."""
    kopf.event(body, type="Normal", reason=reason, message=message)


# --- capacity: every tenant's quota ------------------------------------------------------


def tenant_quota(name: str, quota: Mapping[str, Any], meta: Mapping[str, Any]) -> capacity.TenantQuota:
    per_model = {str(k): int(v) for k, v in quota.items()}
    return capacity.TenantQuota(name, str(meta.get("creationTimestamp", "")), per_model)


def reread_ledger() -> None:
    """Add the tenants the ledger lacks (at startup: all) and drop those gone without their
    finalizer. Tenants added meanwhile by reconciles are newer than the listing: kept as they are."""
    st = state()
    st.ledger_read_at = time.monotonic()
    known = st.ledger.names()
    try:
        tenants = st.kube.list(f"/apis/{GROUP}/{VERSION}/{PLURAL}")
    except Exception as e:  # the next reconcile tries again; reconciles keep the ledger current
        log.warning("re-reading the tenants' quotas failed: %s", e)
        return
    for name in known - {t["metadata"]["name"] for t in tenants}:
        st.ledger.drop(name)
    for t in tenants:
        st.ledger.add(
            tenant_quota(t["metadata"]["name"], t.get("spec", {}).get("gpuQuota") or {}, t["metadata"])
        )


# --- the two sides -----------------------------------------------------------------------


def sync_kubernetes(
    t: TenantSpec, check_drift: bool = False, fresh: bool = False, held: Holdings | None = None
) -> tuple[list[str], list[str]]:
    """Apply every object; remove what the tenant no longer has (nothing to look for when `fresh`,
    a first creation) and let go of the namespaces it no longer lists. Returns what had drifted,
    and what was done with each namespace let go."""
    st = state()
    let_go: list[str] = []
    with metrics.timed("kubernetes"):
        want = kside.desired_objects(t, st.kueue, held)
        drifted = kside.write(st.kube, t.name, want, fresh, check_drift)
        wanted = {kside.object_path(o) for o in want}
        for p in [] if fresh else kside.owned(st.kube, t.name, st.kueue):
            if p in wanted:
                continue
            if p.startswith(kside.path("v1", "Namespace") + "/"):
                # never deleted with its workloads (namespaceDeletionPolicy)
                ns = p.rsplit("/", 1)[1]
                let_go.append(kside.let_go(st.kube, t.name, ns, t.namespace_deletion_policy, st.kueue))
            else:
                st.kube.delete(p)
                drifted.append(f"leftover {p}")
        if not (t.network_isolation or t.strict) and not fresh:
            for ns in t.namespaces:
                p = kside.path("networking.k8s.io/v1", "NetworkPolicy", kside.POLICY_NAME, ns)
                if st.kube.get(p) is not None:
                    st.kube.delete(p)
    if check_drift and drifted:
        metrics.DRIFT.labels("kubernetes").inc(len(drifted))
    return drifted, let_go


def sync_limits(t: TenantSpec, held: Holdings) -> None:
    """Only the Kubernetes side's GPU limits (the namespaces' ResourceQuotas, the ClusterQueue): what
    moves when Slurm's jobs start or end, the rest being as the round just applied it."""
    st = state()
    with metrics.timed("kubernetes"):
        want = kside.desired_objects(t, st.kueue, held)
        kside.write(st.kube, t.name, [o for o in want if o["kind"] in kside.LIMIT_KINDS])


def sync_slurm(t: TenantSpec, held: Holdings | None = None) -> Future[tuple[list[str], slurm.Observed]]:
    """Observe, plan, apply, queued to the batch writer (no thread waits for it meanwhile): the
    commands that were needed and the observation."""
    start = time.monotonic()
    done = state().slurm.sync(slurm.desired(t, held))
    done.add_done_callback(lambda f: metrics.record("slurm", start, f.exception()))
    return done


# --- status --------------------------------------------------------------------------------


@dataclass
class Outcome:
    k8s_error: str | None = None
    k8s_reason: str = ""
    slurm_reason: str = ""
    slurm_error: str | None = None
    observed: slurm.Observed | None = None
    held: Holdings | None = None  # observed this round on both sides (drift rounds only)


def write_status(
    patch: kopf.Patch,
    status: Mapping[str, Any],
    t: TenantSpec,
    generation: int,
    out: Outcome,
    v: capacity.Verdict,
    policy: str,
) -> None:
    conds = _conditions(patch, status)
    rejected = policy == "reject" and not v.admitted
    if rejected:
        msg = f"not applied: over capacity ({v.message()})"
        conds = set_condition(conds, K8S_SYNCED, False, "Overcommitted", msg, generation)
        conds = set_condition(conds, SLURM_SYNCED, False, "Overcommitted", msg, generation)
    else:
        conds = set_condition(
            conds,
            K8S_SYNCED,
            out.k8s_error is None,
            "Applied" if out.k8s_error is None else out.k8s_reason,
            out.k8s_error or f"quota {t.quota_summary()} in {', '.join(t.namespaces)}",
            generation,
        )
        conds = set_condition(
            conds,
            SLURM_SYNCED,
            out.slurm_error is None,
            "Applied" if out.slurm_error is None else out.slurm_reason,
            out.slurm_error or f"account {t.name}: GrpTRES gres/gpu={t.total_gpus}",
            generation,
        )
    conds = set_condition(
        conds,
        OVERCOMMITTED,
        bool(v.overcommitted),
        "QuotaExceedsCapacity" if v.overcommitted else "WithinCapacity",
        v.message(),
        generation,
    )
    bad = [c for c in conds if c["type"] in (K8S_SYNCED, SLURM_SYNCED) and c["status"] != "True"]
    conds = set_condition(
        conds,
        READY,
        not bad,
        "Synced" if not bad else bad[0]["reason"],
        "quota effective on Kubernetes and Slurm" if not bad else bad[0]["message"],
        generation,
    )
    patch.status["conditions"] = conds
    if not bad:
        patch.status["observedGeneration"] = generation
        patch.status["quota"] = t.quota_summary()
        patch.status["namespaces"] = list(t.namespaces)
    if out.held is not None:
        pods = {m: out.held.pods(m) for ns in out.held.kubernetes.values() for m in ns}
        usage = {
            "kubernetes": pods,
            "slurm": dict(out.held.slurm),
            "summary": f"k8s={out.held.pods()} slurm={out.held.jobs()}",
        }
        patch.status["usage"] = replacing(status.get("usage"), usage)
        # null clears it once the tenant is back within its entitlement (merge patch)
        patch.status["overshoot"] = out.held.overshoot(t.ceiling) or None


def _conditions(patch: kopf.Patch, status: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The conditions to build on: this round's (account_usage writes its verdict first), else the
    status's."""
    return list(patch.status.get("conditions") or status.get("conditions") or [])


def in_kube_pool(fn: Callable[..., R], *args: Any) -> asyncio.Future[R]:
    return asyncio.get_running_loop().run_in_executor(state().kube_pool, fn, *args)


async def converge(
    t: TenantSpec,
    meta: kopf.Meta,
    check_drift: bool,
    body: kopf.Body,
    fresh: bool = False,
    held: Holdings | None = None,
) -> tuple[Outcome, capacity.Verdict]:
    st = state()
    if time.monotonic() - st.ledger_read_at > st.cfg.drift_interval:
        # Stamped here, not only when the pool gets to it: one re-read, not one per reconcile in flight.
        st.ledger_read_at = time.monotonic()
        st.kube_pool.submit(reread_ledger)  # drops tenants removed without their finalizer
    st.ledger.put(tenant_quota(t.name, t.gpu_quota, meta))
    v = st.ledger.verdict(t.name)
    out = Outcome()
    if st.cfg.policy == "reject" and not v.admitted:
        return out, v
    # The two sides are independent: the Slurm side waits for its sacctmgr batches while the
    # Kubernetes objects are written.
    slurm_side = asyncio.wrap_future(sync_slurm(t, held))
    try:
        drifted, let_go = await in_kube_pool(sync_kubernetes, t, check_drift, fresh, held)
        if drifted:
            kopf.warn(body, reason="DriftCorrected", message="restored: " + ", ".join(drifted)[:900])
        if let_go:
            normal(body, reason="NamespaceLetGo", message="; ".join(let_go)[:900])
    except Exception as e:  # reported in status; the handler retries
        out.k8s_error = str(e)[:500]
        reasons: dict[type[Exception], str] = {
            kside.NamespaceConflict: "NamespaceConflict",
            kside.NamespaceInUse: "NamespaceInUse",
        }
        out.k8s_reason = reasons.get(type(e), "ApiError")
    try:
        cmds, out.observed = await slurm_side
        if check_drift and cmds:
            metrics.DRIFT.labels("slurm").inc()
            kopf.warn(body, reason="DriftCorrected", message="Slurm restored: " + "; ".join(cmds)[:900])
    except slurm.SlurmError as e:
        out.slurm_reason, out.slurm_error = e.reason, str(e)
    return out, v


# --- handlers ------------------------------------------------------------------------------


@kopf.on.resume(*TENANTS)
@kopf.on.create(*TENANTS)
@kopf.on.update(*TENANTS, field="spec")
async def reconcile(
    name: str,
    spec: kopf.Spec,
    meta: kopf.Meta,
    status: kopf.Status,
    patch: kopf.Patch,
    body: kopf.Body,
    **kwargs: Any,
) -> None:
    t = parse(name, dict(spec))
    fresh = kwargs.get("reason") == "create" and kwargs.get("retry", 0) == 0
    held = state().holdings.get(name) or Holdings(spent=bool(t.budget) and budget_spent(status))
    out, v = await converge(t, meta, check_drift=False, body=body, fresh=fresh, held=held)
    write_status(patch, status, t, int(meta.get("generation", 0)), out, v, state().cfg.policy)
    if out.k8s_error or out.slurm_error:
        # The status above is written anyway (kopf applies the patch); the retry converges later.
        raise kopf.TemporaryError(out.k8s_error or out.slurm_error or "", delay=10)


# `idle`: a tenant changed in the last seconds is left to its update handler; kopf runs timers
# beside change handlers, so a drift round that started from the old spec could write it back.
@kopf.timer(*TENANTS, interval=config.drift_interval(), initial_delay=config.drift_interval(), idle=5)
async def drift(
    name: str,
    spec: kopf.Spec,
    meta: kopf.Meta,
    status: kopf.Status,
    patch: kopf.Patch,
    body: kopf.Body,
    **kwargs: Any,
) -> None:
    st = state()
    if st.energy_passes is not None:
        st.energy_passes.due()
    if meta.get("deletionTimestamp") or not await in_kube_pool(spec_unchanged, name, meta):
        return
    t = parse(name, dict(spec))
    before = st.holdings.get(name, Holdings())
    # The pods first, so Slurm's limit this round leaves them their GPUs; Slurm's jobs are seen by
    # this round's observation (the Kubernetes side follows at once when they changed).
    pods = await in_kube_pool(kside.gpu_pods, st.kube, list(t.namespaces))
    held = Holdings(before.slurm, kside.held_by(pods), before.spent)
    held = replace(held, spent=await account_usage(t, meta, status, patch, body, pods, held))
    # A limit that moved with the tenant's own work is no hand edit: applied, not reported as drift.
    out, v = await converge(t, meta, check_drift=held == before, body=body, held=held)
    if out.observed is not None and out.slurm_error is None:
        held = replace(held, slurm=dict(out.observed.gpus_in_use))
        if held.slurm != before.slurm and out.k8s_error is None:
            await in_kube_pool(sync_limits, t, held)
    st.holdings[name] = out.held = held
    over = held.overshoot(t.ceiling)
    if over and not status.get("overshoot"):
        metrics.OVERSHOOT.inc()
        for counted in (patch.status.get("ledger"), patch.status.get("budget")):
            if counted:  # this period's over-shoots, for the usage report
                counted["overshoots"] = (counted.get("overshoots") or 0) + 1
        kopf.warn(
            body,
            reason="Overshoot",
            message=f"GPUs held beyond the entitlement {t.quota_summary()}: {over} "
            f"(Slurm jobs {held.jobs()}, pods {held.pods()})",
        )
    old = condition(status.get("conditions"), OVERCOMMITTED)
    if bool(v.overcommitted) != (old is not None and old.get("status") == "True"):
        kind = kopf.warn if v.overcommitted else normal
        kind(body, reason="Overcommitted" if v.overcommitted else "WithinCapacity", message=v.message())
    write_status(patch, status, t, int(meta.get("generation", 0)), out, v, state().cfg.policy)


def budget_spent(status: Mapping[str, Any]) -> bool:
    c = condition(status.get("conditions"), BUDGET_EXHAUSTED)
    return c is not None and c.get("status") == "True"


async def account_usage(
    t: TenantSpec,
    meta: kopf.Meta,
    status: kopf.Status,
    patch: kopf.Patch,
    body: kopf.Body,
    pods: list[kside.GpuPod],
    held: Holdings,
) -> bool:
    """Advance the tenant's GPU-hour ledger by this round (status.ledger, status.budget; a tenant
    without a budget is accounted per month) and say whether its budget is spent. When Slurm's
    accounting cannot be read, the ledger waits a round and the last verdict stands."""
    now = budget.clock()
    created = dt.datetime.fromisoformat(str(meta.get("creationTimestamp")).replace("Z", "+00:00"))
    kind = t.budget.period if t.budget else "Monthly"
    name, start = budget.period(kind, dt.datetime.fromtimestamp(now, dt.UTC), created)
    try:
        jobs = await asyncio.wrap_future(state().slurm.usage(t.name, start.timestamp()))
    except slurm.SlurmError as e:
        log.warning("tenant %s: GPU-hour ledger not advanced: %s", t.name, e)
        return held.spent
    before = budget.UsageLedger.from_status(status.get("ledger"))
    runs = [p.run for p in pods if p.run is not None]
    ledger, closed = budget.advance(
        before, name, start.timestamp(), now, jobs, runs, held.jobs() + held.pods()
    )
    patch.status["ledger"] = replacing(status.get("ledger"), ledger.to_status())
    used = ledger.hours()
    summary: dict[str, Any] = {
        "period": name,
        "periodStart": start.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "usedGPUHours": round(used, 4),
        **ledger.summary(),
    }
    verdict = budget.BudgetState(used, t.budget.gpu_hours, name) if t.budget else None
    if verdict is not None:
        summary |= {"limitGPUHours": verdict.limit_hours, "percentUsed": round(verdict.percent, 1)}
    patch.status["budget"] = replacing(status.get("budget"), summary)
    if closed is not None:
        patch.status["budgetHistory"] = budget.closing(
            status.get("budgetHistory") or {},
            closed.period,
            {**closed.closed_summary(), "limitGPUHours": t.budget.gpu_hours if t.budget else None},
        )
        if verdict is not None:
            normal(body, reason="BudgetPeriodStarted", message=f"GPU-hour budget renewed for period {name}")
    spent = verdict is not None and verdict.spent
    had = condition(status.get("conditions"), BUDGET_EXHAUSTED)
    if verdict is not None or had is not None:
        conds = set_condition(
            _conditions(patch, status),
            BUDGET_EXHAUSTED,
            spent,
            "GPUHoursSpent" if spent else "WithinBudget" if verdict else "NoBudget",
            verdict.message() if verdict else "the tenant has no GPU-hour budget",
            int(meta.get("generation", 0)),
        )
        patch.status["conditions"] = conds
    if spent and verdict is not None and not (budget_spent(status) and closed is None):
        metrics.BUDGET_EXHAUSTED.inc()
        kopf.warn(body, reason="BudgetExhausted", message=verdict.message() + ": new work held on both sides")
    return spent


def spec_unchanged(name: str, meta: Mapping[str, Any]) -> bool:
    """Whether the tenant's spec is still the one this drift round started from (a spec edited
    since belongs to the update handler, which applies the new one)."""
    live = state().kube.get(f"/apis/{GROUP}/{VERSION}/{PLURAL}/{name}")
    return live is not None and live["metadata"].get("generation") == meta.get("generation")


@kopf.on.delete(*TENANTS)
def cleanup(
    name: str,
    spec: kopf.Spec,
    meta: kopf.Meta,
    status: kopf.Status,
    patch: kopf.Patch,
    body: kopf.Body,
    **_: Any,
) -> None:
    st = state()
    t = parse(name, dict(spec))
    force = meta.get("annotations", {}).get(FORCE_DELETE_ANNOTATION) == "true"
    namespaces = [p.rsplit("/", 1)[1] for p in kside.owned(st.kube, name, False)]
    observed = st.slurm.observe(name)  # SlurmError -> kopf retries the deletion later
    # An account of that name the operator did not make (condition AccountNotOwned) is not the
    # tenant's: its jobs do not block, and it is left as it is.
    ours = observed.organization == SLURM_ORGANIZATION
    pods = Holdings(kubernetes=kside.gpus_held(st.kube, namespaces)).pods()
    if ((ours and observed.running_jobs) or pods) and not force:
        msg = (
            f"GPUs still in use: {observed.running_jobs} running Slurm job(s), "
            f"{pods} GPU(s) in pods; set annotation {FORCE_DELETE_ANNOTATION}=true to force"
        )
        conds = set_condition(
            list(status.get("conditions") or []), DELETION_BLOCKED, True, "GPUsInUse", msg, None
        )
        patch.status["conditions"] = conds
        kopf.warn(body, reason="DeletionBlocked", message=msg)
        raise kopf.TemporaryError(msg, delay=15)
    with metrics.timed("delete"):
        if ours:
            st.slurm.delete(name, cancel_jobs=True)
        for p in kside.owned(st.kube, name, st.kueue):
            st.kube.delete(p)
        if st.kueue:
            kside.drop_unused_flavors(st.kube, list(t.gpu_quota))
    st.ledger.drop(name)
    st.holdings.pop(name, None)
    account = f"account {name}" if ours else f"no account ({name} is not the operator's)"
    normal(body, reason="Deleted", message=f"removed {account} and namespaces {', '.join(namespaces)}")
    log.info("tenant %s deleted (forced=%s, namespaces %s)", t.name, force, namespaces)
