"""Tenant spec -> Kubernetes objects, capacity and over-commit (pure logic)."""

from __future__ import annotations

import json

import pytest

from operators.tenants import capacity, crd
from operators.tenants import kubernetes_side as kside
from operators.tenants.spec import STRICT_MEMBER_ROLE, TENANT_LABEL, parse, set_condition

pytestmark = pytest.mark.unit


def spec(**over):
    body = {
        "displayName": "Team A",
        "gpuQuota": {"h100": 8, "a100": 2},
        "members": {"users": ["alice"], "groups": ["ml"], "slurmUsers": ["alice"]},
    }
    body.update(over)
    return parse("team-a", body)


def by_kind(objs):
    out: dict[str, list] = {}
    for o in objs:
        out.setdefault(o["kind"], []).append(o)
    return out


def test_defaults_one_namespace_named_after_the_tenant_and_isolation_on():
    t = parse("team-a", {"displayName": "A", "gpuQuota": {"h100": 1}})
    assert t.namespaces == ("team-a",) and t.network_isolation and t.fairshare == 1 and t.budget is None


def test_every_namespace_gets_quota_limits_binding_and_policy():
    objs = by_kind(kside.desired_objects(spec(namespaces=["a", "b"])))
    assert [o["metadata"]["name"] for o in objs["Namespace"]] == ["a", "b"]
    for kind in ("ResourceQuota", "LimitRange", "RoleBinding", "NetworkPolicy"):
        assert sorted(o["metadata"]["namespace"] for o in objs[kind]) == ["a", "b"], kind
    for o in kside.desired_objects(spec()):
        assert o["metadata"]["labels"][TENANT_LABEL] == "team-a"
    assert "ClusterQueue" not in objs


def test_quota_caps_total_and_per_model_requests():
    (rq,) = by_kind(kside.desired_objects(spec()))["ResourceQuota"]
    assert rq["spec"]["hard"] == {
        "requests.nvidia.com/gpu": "10",
        "requests.nvidia.com/gpu-a100": "2",
        "requests.nvidia.com/gpu-h100": "8",
    }


def test_limitrange_does_not_cap_gpus_so_quota_is_what_rejects():
    (lr,) = by_kind(kside.desired_objects(spec()))["LimitRange"]
    assert not any(
        "nvidia.com" in k
        for lim in lr["spec"]["limits"]
        for part in lim.values()
        if isinstance(part, dict)
        for k in part
    )


def test_rolebinding_subjects_are_the_members():
    (rb,) = by_kind(kside.desired_objects(spec()))["RoleBinding"]
    assert [(s["kind"], s["name"]) for s in rb["subjects"]] == [("User", "alice"), ("Group", "ml")]
    assert rb["roleRef"]["name"] == "edit"


def test_network_policy_admits_only_the_tenants_namespaces_and_can_be_off():
    (np,) = by_kind(kside.desired_objects(spec()))["NetworkPolicy"]
    assert np["spec"]["podSelector"] == {} and np["spec"]["policyTypes"] == ["Ingress"]
    assert np["spec"]["ingress"] == [
        {"from": [{"namespaceSelector": {"matchLabels": {TENANT_LABEL: "team-a"}}}]}
    ]
    assert "NetworkPolicy" not in by_kind(kside.desired_objects(spec(networkIsolation=False)))


def test_kueue_queue_per_tenant_with_one_flavor_per_model():
    objs = by_kind(kside.desired_objects(spec(namespaces=["a", "b"]), kueue=True))
    (cq,) = objs["ClusterQueue"]
    (group,) = cq["spec"]["resourceGroups"]
    assert {f["name"]: f["resources"][0]["nominalQuota"] for f in group["flavors"]} == {
        "gpu-a100": "2",
        "gpu-h100": "8",
    }
    # As the API server returns them, so a drift check of an untouched queue finds nothing.
    live = json.loads(json.dumps(cq))
    assert not kside.drifted(cq, live)
    assert cq["spec"]["namespaceSelector"]["matchLabels"] == {TENANT_LABEL: "team-a"}
    assert sorted(lq["metadata"]["namespace"] for lq in objs["LocalQueue"]) == ["a", "b"]
    assert sorted(f["metadata"]["name"] for f in objs["ResourceFlavor"]) == ["gpu-a100", "gpu-h100"]


def test_queue_is_in_the_site_cohort_weighted_by_fairshare_and_borrows_only_what_is_allowed():
    t = spec(gpuQuota={"h100": 4, "a100": 2}, gpuBorrowingLimit={"h100": 2}, slurm={"fairshare": 3})
    objs = by_kind(kside.desired_objects(t, kueue=True))
    (cq,) = objs["ClusterQueue"]
    assert cq["apiVersion"] == "kueue.x-k8s.io/v1beta2"
    assert cq["spec"]["cohortName"] == "aifactory" and cq["spec"]["fairSharing"] == {"weight": "3"}
    assert cq["spec"]["preemption"]["reclaimWithinCohort"] == "Any"
    limits = {
        f["name"]: f["resources"][0]["borrowingLimit"] for f in cq["spec"]["resourceGroups"][0]["flavors"]
    }
    assert limits == {"gpu-a100": "0", "gpu-h100": "2"}
    # what may be borrowed is room in the namespace's ResourceQuota too (pods Kueue admits must start)
    (rq,) = objs["ResourceQuota"]
    assert rq["spec"]["hard"] == {
        "requests.nvidia.com/gpu": "8",
        "requests.nvidia.com/gpu-a100": "2",
        "requests.nvidia.com/gpu-h100": "6",
    }
    # pods Kueue admits onto a flavor's nodes tolerate the GPU nodes' taint
    for f in objs["ResourceFlavor"]:
        assert f["spec"]["tolerations"] == [kside.GPU_TOLERATION]


def test_no_kueue_queue_without_quota():
    assert "ClusterQueue" not in by_kind(kside.desired_objects(spec(gpuQuota={}), kueue=True))


def test_paths():
    assert kside.path("v1", "Namespace", "a") == "/api/v1/namespaces/a"
    assert kside.path("v1", "ResourceQuota", "q", "ns") == "/api/v1/namespaces/ns/resourcequotas/q"
    assert kside.path("networking.k8s.io/v1", "NetworkPolicy", namespace="n") == (
        "/apis/networking.k8s.io/v1/namespaces/n/networkpolicies"
    )


def test_drift_is_a_lost_or_changed_field_not_an_extra_one():
    (rq,) = by_kind(kside.desired_objects(spec()))["ResourceQuota"]
    live = {
        "metadata": {"labels": dict(rq["metadata"]["labels"], extra="x"), "uid": "1"},
        "spec": {"hard": dict(rq["spec"]["hard"])},
        "status": {},
    }
    assert not kside.drifted(rq, live)
    live["spec"]["hard"]["requests.nvidia.com/gpu"] = "100"
    assert kside.drifted(rq, live)
    assert kside.drifted(rq, None)
    (rb,) = by_kind(kside.desired_objects(parse("t", {"displayName": "t", "gpuQuota": {}})))["RoleBinding"]
    live_rb = {"metadata": {"labels": rb["metadata"]["labels"]}, "roleRef": rb["roleRef"]}  # no subjects
    assert not kside.drifted(rb, live_rb)


def test_conditions_keep_transition_time_until_status_flips():
    c1 = set_condition([], "Ready", True, "Synced", "ok", 1)
    c1[0]["lastTransitionTime"] = "2020-01-01T00:00:00Z"
    c2 = set_condition(c1, "Ready", True, "Synced", "still ok", 2)
    assert c2[0]["lastTransitionTime"] == "2020-01-01T00:00:00Z" and c2[0]["observedGeneration"] == 2
    c3 = set_condition(c2, "Ready", False, "SlurmctldUnavailable", "down", 2)
    assert c3[0]["lastTransitionTime"] != "2020-01-01T00:00:00Z" and c3[0]["status"] == "False"


# capacity


def tq(name, created, **quota):
    return capacity.TenantQuota(name, created, quota)


def test_capacity_of_a_site_sums_machines_per_model():
    from aifactory.site.validate import load_site
    from tests.conftest import REPO

    assert capacity.site_capacity(load_site(REPO / "sites" / "local.yaml")) == {"h100": 48}


def ledger(tenants: list[capacity.TenantQuota], cap: dict[str, int], policy="reject") -> capacity.Ledger:
    book = capacity.Ledger(cap, policy)
    for t in tenants:
        book.put(t)
    return book


def assess_all(
    tenants: list[capacity.TenantQuota], cap: dict[str, int], policy="reject"
) -> dict[str, capacity.Verdict]:
    book = ledger(tenants, cap, policy)
    return {t.name: book.verdict(t.name) for t in tenants}


def test_no_overcommit_within_capacity():
    v = assess_all([tq("a", "1", h100=8), tq("b", "2", h100=8)], {"h100": 16})
    assert all(not x.overcommitted and x.admitted for x in v.values())


def test_overcommit_is_reported_on_every_tenant_of_that_model_only():
    v = assess_all(
        [tq("a", "1", h100=8), tq("b", "2", h100=10), tq("c", "3", a100=1)], {"h100": 16, "a100": 4}
    )
    assert v["a"].overcommitted == {"h100": (18, 16)} and v["b"].overcommitted == {"h100": (18, 16)}
    assert not v["c"].overcommitted
    assert "h100: tenants' quotas sum to 18, site has 16" in v["a"].message()
    tenants = [tq("a", "1", h100=8), tq("b", "2", h100=10), tq("c", "3", a100=1)]
    assert ledger(tenants, {"h100": 16, "a100": 4}).overcommitted_tenants() == 2  # a and b


def test_ledger_follows_quota_changes_and_removals():
    book = ledger([tq("old", "1", h100=8), tq("new", "2", h100=8)], {"h100": 12})
    assert not book.verdict("new").admitted and book.overcommitted_tenants() == 2
    book.put(tq("new", "2", h100=4))  # lowered: fits in what "old" left
    assert book.verdict("new") == capacity.Verdict({}, True) and book.overcommitted_tenants() == 0
    book.put(tq("old", "1", h100=10))  # raised: now "new" no longer fits, "old" still does
    assert book.verdict("old").admitted and not book.verdict("new").admitted
    assert book.verdict("new").overcommitted == {"h100": (14, 12)}
    book.drop("new")
    assert book.names() == {"old"} and book.overcommitted_tenants() == 0 and book.verdict("new").admitted
    book.add(tq("old", "1", h100=2))  # a listing older than the reconcile that put h100=10
    book.add(tq("new", "2", h100=4))
    assert book.verdict("new") == capacity.Verdict({"h100": (14, 12)}, False)


def test_reject_admits_oldest_first_and_warn_admits_all():
    tenants = [tq("new", "2026-02", h100=10), tq("old", "2026-01", h100=8)]
    v = assess_all(tenants, {"h100": 16})
    assert v["old"].admitted and not v["new"].admitted
    v = assess_all(tenants, {"h100": 16}, "warn")
    assert v["old"].admitted and v["new"].admitted and v["new"].overcommitted == {"h100": (18, 16)}


def test_a_model_the_site_lacks_is_overcommitted_by_any_quota():
    v = assess_all([tq("a", "1", b200=1)], {"h100": 16})
    assert v["a"].overcommitted == {"b200": (1, 0)} and not v["a"].admitted


def test_capacity_from_text():
    assert capacity.parse_capacity("h100=16, a100=8") == {"h100": 16, "a100": 8}
    assert capacity.format_capacity({"h100": 16, "a100": 8}) == "a100=8,h100=16"
    assert capacity.parse_capacity(capacity.format_capacity({"h100": 16, "a100": 8})) == {
        "h100": 16,
        "a100": 8,
    }
    with pytest.raises(ValueError, match="'h100' is not MODEL=COUNT"):
        capacity.parse_capacity("h100")


def test_crd_lists_the_site_models_in_the_cel_rule_and_has_status_columns():
    c = crd.crd(["h100", "a100"])
    version = c["spec"]["versions"][0]
    quota = version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["gpuQuota"]
    assert "['a100', 'h100']" in quota["x-kubernetes-validations"][0]["rule"]
    assert c["spec"]["scope"] == "Cluster" and version["subresources"] == {"status": {}}
    assert [col["name"] for col in version["additionalPrinterColumns"]][:4] == [
        "Display",
        "Quota",
        "In use",
        "Ready",
    ]


class RecordingKube:
    """Records the REST calls of kubernetes_side.let_go; `pods` are the namespace's pods."""

    def __init__(self, pods: list[dict]):
        self.pods, self.calls = pods, []

    def list(self, url_path, selector=None):
        return self.pods

    def delete(self, url_path):
        self.calls.append(("DELETE", url_path))

    def request(self, method, url_path, body=None, query=None, content_type="application/json"):
        self.calls.append((method, url_path, body))


def test_a_namespace_let_go_is_released_with_its_workloads_by_default():
    kube = RecordingKube(pods=[{"status": {"phase": "Running"}}])
    assert (
        kside.let_go(kube, "team-a", "old", "Retain", kueue=False)
        == "released namespace old (its workloads kept)"
    )
    deleted = [c[1] for c in kube.calls if c[0] == "DELETE"]
    assert "/api/v1/namespaces/old" not in deleted and not any("/pods" in p for p in deleted)
    assert "/api/v1/namespaces/old/resourcequotas/tenant-gpu-quota" in deleted
    assert "/apis/rbac.authorization.k8s.io/v1/namespaces/old/rolebindings/tenant-members" in deleted
    (patch,) = [c for c in kube.calls if c[0] == "PATCH"]
    assert patch[2]["metadata"]["labels"][TENANT_LABEL] is None  # no longer the tenant's


def test_a_namespace_to_delete_waits_for_its_pods():
    busy = RecordingKube(pods=[{"status": {"phase": "Running"}}, {"status": {"phase": "Succeeded"}}])
    with pytest.raises(kside.NamespaceInUse, match="1 pod\\(s\\) still run there"):
        kside.let_go(busy, "team-a", "old", "Delete", kueue=False)
    assert busy.calls == []
    idle = RecordingKube(pods=[{"status": {"phase": "Succeeded"}}])
    assert kside.let_go(idle, "team-a", "old", "Delete", kueue=False) == "deleted namespace old"
    assert idle.calls == [("DELETE", "/api/v1/namespaces/old")]


def test_namespaces_are_retained_unless_the_spec_says_delete():
    assert parse("t", {}).namespace_deletion_policy == "Retain"
    assert parse("t", {"namespaceDeletionPolicy": "Delete"}).namespace_deletion_policy == "Delete"


def test_a_strict_tenant_is_fenced_in_both_ways_restricted_and_its_members_cannot_loosen_it():
    objs = by_kind(kside.desired_objects(spec(isolation="strict", networkIsolation=False)))
    (ns,) = objs["Namespace"]
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    (policy,) = objs["NetworkPolicy"]
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    own, dns = policy["spec"]["egress"]
    assert own["to"] == [{"namespaceSelector": {"matchLabels": {TENANT_LABEL: "team-a"}}}]
    assert dns["to"][0]["podSelector"] == {"matchLabels": {"k8s-app": "kube-dns"}}
    assert {p["port"] for p in dns["ports"]} == {53}
    (binding,) = objs["RoleBinding"]
    assert binding["roleRef"]["name"] == STRICT_MEMBER_ROLE
    role = crd.strict_member_role()
    writes = {
        r
        for rule in role["rules"]
        if {"create", "update", "patch", "delete"} & set(rule["verbs"])
        for r in rule["resources"]
    }
    assert "pods" in writes and not {"networkpolicies", "resourcequotas", "limitranges"} & writes
    standard = by_kind(kside.desired_objects(spec()))
    assert standard["RoleBinding"][0]["roleRef"]["name"] == "edit"
    assert "pod-security.kubernetes.io/enforce" not in standard["Namespace"][0]["metadata"]["labels"]


class PagedQueues(kside.Kube):
    """ClusterQueues served a page at a time, as the apiserver does with limit/continue."""

    def __init__(self, queues: list[dict]):
        self.queues, self.reads, self.deleted = queues, [], []

    def request(self, method, url_path, body=None, query=None, content_type="application/json"):
        if method == "DELETE":
            self.deleted.append(url_path.rsplit("/", 1)[1])
            return {}
        start, size = int((query or {}).get("continue", 0)), int((query or {})["limit"])
        self.reads.append(start)
        more = start + size < len(self.queues)
        return {
            "items": self.queues[start : start + size],
            "metadata": {"continue": str(start + size) if more else ""},
        }


def cq(flavor: str, gone: bool = False) -> dict:
    meta = {"deletionTimestamp": "2026-12-05T00:00:00Z"} if gone else {}
    return {"metadata": meta, "spec": {"resourceGroups": [{"flavors": [{"name": flavor}]}]}}


def test_the_last_tenant_of_a_model_takes_its_flavor_along():
    # the leaving tenant's queue is terminating: it no longer counts as a use of gpu-a100
    kube = PagedQueues([cq("gpu-h100")] * 250 + [cq("gpu-a100", gone=True)])
    assert kside.drop_unused_flavors(kube, ["a100", "h100"]) == ["gpu-a100"]
    assert kube.deleted == ["gpu-a100"] and kube.reads == [0, 100, 200]


def test_flavors_still_in_use_are_kept_and_the_reading_stops_once_all_are_seen():
    kube = PagedQueues([cq("gpu-a100")] * 120 + [cq("gpu-h100")] * 300)
    assert kside.drop_unused_flavors(kube, ["a100", "h100"]) == []
    assert kube.deleted == [] and kube.reads == [0, 100]
