"""Attribution's inputs on a running site, read where they are kept:

- power samples: Prometheus on the head, `aifactory_node_power_watts` (the power exporter's BMC
  readings) and `aifactory_feed_power_watts`, over the HTTP API's query_range;
- Slurm holdings: `sacct` on the head, every job allocation that overlaps the period, its account
  (the tenant), nodes and allocated GPUs, with Slurm's own start and end to the second;
- Kubernetes holdings: the tenants' pods that ask for GPUs, their node and run time (a pod runs
  from its start to its containers' last finish). Deleted pods are gone from the API: their energy
  falls to the site's overhead, where the report shows it.
"""

from __future__ import annotations

import json
import math
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping
from typing import Any

from aifactory import paths
from aifactory.energy.attribution import Holding
from aifactory.site.model import Site
from aifactory.validate.parsers import expand_hostlist
from operators.tenants import kubernetes_side as kside
from operators.tenants import slurm
from operators.tenants.spec import GROUP, PLURAL, VERSION, parse

PROMETHEUS_PORT = 9090
MAX_POINTS = 10_000  # Prometheus answers at most 11,000 points per series
SCRAPE_S = 15  # prometheus_scrape_interval: no finer step has more to say
RAW_MAX_S = 6 * 3600  # periods up to this long read the samples as scraped (5,760 a machine at most)

Samples = dict[str, list[tuple[float, float]]]


class SourceError(RuntimeError):
    """A source could not be read: what, and why."""


def prometheus_url(site: Site) -> str:
    return f"http://{site.with_role('head')[0].address}:{PROMETHEUS_PORT}"


def step_for(start: float, end: float) -> float:
    """The query step: the scrape interval, or coarser so a series stays under MAX_POINTS."""
    return float(max(SCRAPE_S, math.ceil((end - start) / MAX_POINTS)))


def query_range(url: str, query: str, label: str, start: float, end: float, timeout: float = 60) -> Samples:
    """{the series' `label` value: [(t, value), ...]} over [start, end], reaching past both ends so
    that energy is interpolated inside the samples. Up to RAW_MAX_S, the samples as scraped (a
    range selector); longer, a range query on a grid of whole steps (at most MAX_POINTS a series)."""
    if end - start <= RAW_MAX_S:
        lo, hi = start - 2 * SCRAPE_S, end + 2 * SCRAPE_S
        path = "query"
        args = {"query": f"{query}[{math.ceil(hi - lo)}s]", "time": hi}
    else:
        step = step_for(start, end)
        path = "query_range"
        args = {"query": query, "start": math.floor(start / step) * step, "end": math.ceil(end / step) * step}
        args["step"] = step
    try:
        with urllib.request.urlopen(
            f"{url}/api/v1/{path}?{urllib.parse.urlencode(args)}", timeout=timeout
        ) as r:
            body = json.load(r)
    except (OSError, ValueError) as e:
        raise SourceError(f"Prometheus at {url}: {e}") from e
    if body.get("status") != "success":
        raise SourceError(f"Prometheus at {url}: {body.get('error', body)}")
    return {
        s["metric"].get(label, ""): [(float(t), float(v)) for t, v in s["values"]]
        for s in body["data"]["result"]
    }


def power_samples(url: str, start: float, end: float) -> Samples:
    return query_range(url, "aifactory_node_power_watts", "machine", start, end)


def feed_samples(url: str, start: float, end: float) -> Samples:
    return query_range(url, "aifactory_feed_power_watts", "feed", start, end)


def sacct_script(start: float, end: float) -> str:
    """Every job allocation that ran in [start, end]: id, account, nodes, TRES, start, end (epoch)."""
    return (
        f"SLURM_TIME_FORMAT=%s sacct -X -n -P -a -S $(date -d @{int(start)} +%Y-%m-%dT%H:%M:%S) "
        f"-E $(date -d @{math.ceil(end)} +%Y-%m-%dT%H:%M:%S) "
        "-o JobID,Account,NodeList,AllocTRES,Start,End"
    )


def parse_sacct(text: str, end: float) -> list[Holding]:
    """Holdings from `sacct_script`'s output: a job's GPUs spread evenly over its nodes (Slurm
    gives the allocation's total); a job still running holds them until `end`."""
    out = []
    for line in text.splitlines():
        f = line.strip().split("|")
        if len(f) < 6 or not f[4].isdigit() or f[2] in ("", "None assigned"):
            continue
        gpus = sum(slurm.gpus_by_model(f[3]).values()) or slurm.parse_tres(f[3]).get("gres/gpu", 0)
        nodes = expand_hostlist(f[2])
        if not gpus or not nodes:
            continue
        stop = float(f[5]) if f[5].isdigit() else end
        for node in nodes:
            out.append(Holding(f[1], "slurm", node, gpus // len(nodes), float(f[4]), stop, f[0]))
    return out


def slurm_holdings(runner: slurm.Runner, start: float, end: float) -> list[Holding]:
    r = runner.run(sacct_script(start, end), timeout=120)
    if r.rc != 0:
        raise SourceError(f"sacct on the head: {r.err.strip()[:300] or f'exit {r.rc}'}")
    return parse_sacct(r.out, end)


def tenant_namespaces(tenants: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """{namespace: tenant} of the Tenants (malformed ones are left out: they own nothing)."""
    out = {}
    for t in tenants:
        name = t["metadata"]["name"]
        try:
            spec = parse(name, dict(t.get("spec") or {}))
        except ValueError:
            continue
        out.update({ns: name for ns in spec.namespaces})
    return out


def head_runner(site: Site) -> slurm.SshRunner:
    """ssh to the head: an emulated site's generated config, else the operator's own ssh setup."""
    head, cfg = site.with_role("head")[0], paths.ssh_config(site.name)
    if cfg.exists():
        return slurm.SshRunner(cfg, head.name)
    return slurm.SshRunner(None, f"{site.ssh_user}@{head.address}")


def gather(site: Site, start: float, end: float) -> tuple[Samples, Samples, list[Holding]]:
    """Node and feed power samples, and every GPU holding of [start, end], on both schedulers."""
    from operators.tenants import install

    url = prometheus_url(site)
    samples, feeds = power_samples(url, start, end), feed_samples(url, start, end)
    holdings = slurm_holdings(head_runner(site), start, end) if site.slurm else []
    kubeconfig = paths.site_state_dir(site.name) / "kubeconfig"
    if site.kubernetes and kubeconfig.exists():
        kube = install.kube(kubeconfig)
        tenants = kube.list(f"/apis/{GROUP}/{VERSION}/{PLURAL}")
        holdings += pod_holdings(kube, tenant_namespaces(tenants), end)
    return samples, feeds, holdings


def pod_holdings(kube: kside.Kube, namespaces: Mapping[str, str], end: float) -> list[Holding]:
    """The tenants' GPU pods that have started, on their node; one still running holds until `end`.
    One list of every namespace's pods: a thousand tenants' namespaces are not a thousand calls."""
    out = []
    for p in kside.gpu_pods(kube, None):
        if p.namespace not in namespaces or p.run is None or not p.node:
            continue
        stop = end if p.run.end is None else p.run.end
        job = f"{p.namespace}/{p.run.key.split('/')[0]}"
        out.append(Holding(namespaces[p.namespace], "kubernetes", p.node, p.gpus, p.run.start, stop, job))
    return out
