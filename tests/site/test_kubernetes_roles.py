"""The Kubernetes roles (playbooks/kubernetes.yml) on the live local site.

Over ssh with testinfra: the control-plane services, the PKI file modes, the binaries against the
bundle manifest, the worker's runtime settings as its host decides them and its running kubelet.
With the official `kubernetes` client and the admin kubeconfig the roles hand back: every worker
is a Ready Node with its GPUs (the device plugin's), schedulable in the kubernetes pool and cordoned
in the slurm pool (node_pool role), a ResourceQuota gets its status from the controller manager, a
pod asking for 2 GPUs sees exactly 2 GPU devices, and pods on different nodes reach each other.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import re
import shlex
import time
import urllib.request
import uuid
from pathlib import Path
from urllib.parse import urlparse

import pytest
import testinfra
import yaml
from kubernetes import client, config
from kubernetes.client.rest import ApiException

from aifactory import configure, converged, images, inventory, paths
from aifactory.site.model import Site
from infra import registry
from sandbox import mirror, ssh
from tests.site.conftest import etcd_request, toolbox_pod, wait_until

pytestmark = pytest.mark.site


CONTROL_SERVICES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")
CONTROL_BINARIES = CONTROL_SERVICES
NODE_BINARIES = ("kubelet", "kube-proxy")
PKI = "/etc/kubernetes/pki"


def _host(site: Site, name: str):
    return testinfra.get_host(f"ssh://{name}", ssh_config=str(ssh.config_path(site)))


@pytest.fixture(scope="module")
def control(configured_site):
    """The first control-plane machine: it holds the site's PKI and issues the workers' identities."""
    return configured_site.with_role("k8s-control")[0]


@pytest.fixture(scope="module")
def control_host(configured_site, control):
    return _host(configured_site, control.name)


@pytest.fixture(scope="module")
def workers(configured_site):
    machines = configured_site.in_pool("kubernetes")
    assert machines, "the site has no kubernetes-pool machine"
    return machines


@pytest.fixture(scope="module")
def all_workers(configured_site):
    """Every worker is prepared and registered, whichever pool it serves now."""
    return [m for m in configured_site.machines if m.pool]


@pytest.fixture(scope="module")
def kubeconfig(configured_site) -> Path:
    return paths.site_state_dir(configured_site.name) / "kubeconfig"


@pytest.fixture(scope="module")
def core(kubeconfig):
    api = config.new_client_from_config(config_file=str(kubeconfig))
    yield client.CoreV1Api(api)
    api.close()


def _manifest(site: Site) -> dict:
    bundle = mirror.mirror_dir(site) / urlparse(site.bundle_url or "").path.strip("/")
    return json.loads((bundle / "manifest.json").read_text())


# --- control plane over ssh -------------------------------------------------------------------


def test_control_plane_services_enabled_and_running(control_host):
    for name in CONTROL_SERVICES:
        svc = control_host.service(name)
        assert svc.is_enabled, f"{name} is not enabled"
        assert svc.is_running, f"{name} is not running"


def test_etcd_speaks_tls_to_etcd_ca_clients_only(configured_site, control, control_host, all_workers):
    assert control_host.socket(f"tcp://{control.address}:2379").is_listening
    assert control_host.socket(f"tcp://{configured_site.kubernetes.api_port}").is_listening
    health = etcd_request(control_host, "/v3/maintenance/status")
    assert health.rc == 0 and json.loads(health.stdout)["header"]["member_id"], health.stderr
    # a certificate of the cluster CA (here a kubelet's) is refused at the TLS handshake
    refused = etcd_request(control_host, "/v3/maintenance/status", cert=f"kubelet-{all_workers[0].name}")
    assert refused.rc != 0 and "SSL" in refused.stderr, refused.stdout
    with pytest.raises(OSError):  # and nothing talks plain http to it
        urllib.request.urlopen(f"http://{control.address}:2379/health", timeout=5)


def test_secrets_are_encrypted_in_etcd(control_host, core, namespace):
    marker = f"plaintext-{uuid.uuid4().hex}"
    core.create_namespaced_secret(
        namespace, client.V1Secret(metadata=client.V1ObjectMeta(name="at-rest"), string_data={"v": marker})
    )
    key = base64.b64encode(f"/registry/secrets/{namespace}/at-rest".encode()).decode()
    result = etcd_request(control_host, "/v3/kv/range", {"key": key})
    assert result.rc == 0, result.stderr
    (kv,) = json.loads(result.stdout)["kvs"]
    stored = base64.b64decode(kv["value"])
    assert stored.startswith(b"k8s:enc:secretbox:v1:key1:") and marker.encode() not in stored
    assert (
        core.read_namespaced_secret("at-rest", namespace).data["v"]
        == base64.b64encode(marker.encode()).decode()
    )


def test_pki_keys_are_private_and_certs_signed_by_the_ca(control_host, all_workers):
    pki = control_host.file(PKI)
    assert pki.is_directory and pki.user == "root" and pki.mode == 0o700
    names = [
        "apiserver",
        "apiserver-kubelet-client",
        "admin",
        "controller-manager",
        "scheduler",
        "kube-proxy",
    ]
    names += [f"kubelet-{m.name}" for m in all_workers]
    etcd_names = ["etcd", "apiserver-etcd-client"]
    for key in ["ca", "etcd-ca", "sa", "encryption", *names, *etcd_names]:
        f = control_host.file(f"{PKI}/{key}.key")
        assert f.is_file and f.user == "root" and f.mode == 0o600, f"{key}.key: mode {oct(f.mode)}"
    for ca, signed in (("ca", names), ("etcd-ca", etcd_names)):
        for name in signed:
            crt = f"{PKI}/{name}.crt"
            assert control_host.file(crt).mode == 0o644
            control_host.check_output(f"openssl verify -CAfile {PKI}/{ca}.crt {crt}")
    # the two CAs are distinct: a cluster certificate is no etcd client
    assert control_host.run(f"openssl verify -CAfile {PKI}/etcd-ca.crt {PKI}/admin.crt").rc != 0
    for conf in ("admin", "controller-manager", "scheduler"):
        assert control_host.file(f"/etc/kubernetes/{conf}.conf").mode == 0o600


def test_apiserver_cert_names_the_control_plane_and_first_service_ip(configured_site, control, control_host):
    sans = control_host.check_output(f"openssl x509 -noout -ext subjectAltName -in {PKI}/apiserver.crt")
    first_service_ip = str(ipaddress.ip_network(configured_site.kubernetes.service_cidr)[1])
    for want in (
        f"IP Address:{control.address}",
        "IP Address:127.0.0.1",
        f"IP Address:{first_service_ip}",
        f"DNS:{control.name}",
        "DNS:kubernetes.default.svc.cluster.local",
    ):
        assert want in sans, f"{want} missing from the apiserver SANs: {sans}"
    admin = control_host.check_output(f"openssl x509 -noout -subject -in {PKI}/admin.crt")
    assert "O = system:masters" in admin


def test_binaries_match_the_bundle_manifest(configured_site, control_host, all_workers):
    manifest = _manifest(configured_site)
    installed = [(control_host, name) for name in CONTROL_BINARIES]
    installed += [(_host(configured_site, m.name), b) for m in all_workers for b in NODE_BINARIES]
    for host, name in installed:
        f = host.file(f"/usr/local/bin/{name}")
        assert f.is_file and f.mode == 0o755, name
        assert name in manifest, f"the site's bundle manifest lacks {name}: republish the mirror (site up)"
        assert f.sha256sum == manifest[name]["sha256"], f"{name} differs from the bundle manifest"


def test_admin_kubeconfig_points_at_the_sites_api_endpoint(configured_site, kubeconfig):
    assert kubeconfig.stat().st_mode & 0o777 == 0o600
    kc = yaml.safe_load(kubeconfig.read_text())
    server = kc["clusters"][0]["cluster"]["server"]
    assert server == f"https://{configured_site.api_host}:{configured_site.kubernetes.api_port}"


# --- workers over ssh -------------------------------------------------------------------------


def test_workers_run_containerd_with_crun_and_a_kubelet(configured_site, all_workers):
    for m in all_workers:
        host = _host(configured_site, m.name)
        for name in ("containerd", *NODE_BINARIES):
            svc = host.service(name)
            assert svc.is_enabled and svc.is_running, f"{m.name}: {name}"
        # The effective configuration, not just the file: containerd 1.6 lets an imported file replace
        # the whole CRI table.
        dump = host.check_output("containerd config dump")
        assert f'sandbox_image = "{images.SITE_REGISTRY}/aifactory/pause:{images.PAUSE_TAG}"' in dump
        assert 'default_runtime_name = "crun"' in dump  # no NVIDIA runtime on these hosts
        assert re.search(r'runtimes\.crun\.options\]\s+BinaryName = "/usr/bin/crun"', dump)
        # What the host reveals decides the cgroup driver and the snapshotter (tasks/host_facts.yml).
        v2 = host.check_output("stat -f -c %T /sys/fs/cgroup") == "cgroup2fs"
        overlay_disk = host.check_output("stat -f -c %T /var/lib") == "overlayfs"
        assert f'snapshotter = "{"native" if overlay_disk else "overlayfs"}"' in dump
        kubelet_conf = yaml.safe_load(host.file("/var/lib/kubelet/config.yaml").content_string)
        assert kubelet_conf["kind"] == "KubeletConfiguration"
        assert kubelet_conf["cgroupDriver"] == ("systemd" if v2 else "cgroupfs")
        init_cgroup = host.check_output("awk -F: '$2 ~ /(^|,)cpu(,|$)/ {print $3}' /proc/1/cgroup")
        assert kubelet_conf["cgroupRoot"] == ("/" if v2 else init_cgroup)
        key = host.file("/var/lib/kubelet/pki/kubelet-client.key")
        assert key.mode == 0o600 and key.user == "root"
        assert host.file("/etc/kubernetes/kubelet.conf").mode == 0o600
        assert host.sysctl("net.ipv4.ip_forward") == 1
        assert host.file("/proc/swaps").content_string.strip().count("\n") == 0, f"{m.name}: swap on"
        labels = json.loads(host.file("/etc/aifactory/k8s-node-labels.json").content_string)
        assert labels["aifactory.io/pool"] == m.pool
        assert labels["aifactory.io/gpu-model"] == m.gpu_model
        assert labels["nvidia.com/gpu.count"] == str(m.gpu_count)
        report = json.loads(host.file("/etc/aifactory/k8s-worker.json").content_string)
        assert "kubelet enabled and running" in report["verified"], report
        # The pod sandbox comes from the bundle, imported with the CRI's snapshotter; every other image
        # from the site registry on the head.
        refs = host.check_output("ctr -n k8s.io images list -q").split()
        assert f"{images.SITE_REGISTRY}/aifactory/pause:{images.PAUSE_TAG}" in refs, refs
        hosts_toml = host.file(f"/etc/containerd/certs.d/{images.SITE_REGISTRY}/hosts.toml").content_string
        head = configured_site.with_role("head")[0]
        assert f'server = "http://{head.address}:5000"' in hosts_toml


def test_pod_routes_reach_every_other_worker(configured_site, all_workers, control):
    inv = inventory.render(configured_site)["all"]["hosts"]
    for m in [control, *all_workers]:
        routes = _host(configured_site, m.name).check_output("ip -4 route show")
        for peer in all_workers:
            if peer.name != m.name:
                want = f"{inv[peer.name]['k8s_pod_cidr']} via {peer.address}"
                assert want in routes, f"{m.name} lacks the route {want}:\n{routes}"


def test_the_idempotence_probe_reads_a_hosts_services_and_pod_routes(configured_site, all_workers):
    """fingerprint.py's `state` and `converged` (what an idempotent `aifactory configure` asks each
    host) on a real host: systemd's answer for the services, the links that enable them, the kernel's
    route table; a route gone and a service disabled are named."""
    from infra.configuration import FINGERPRINT

    worker, peer = all_workers[0], all_workers[1]
    host = _host(configured_site, worker.name)
    cidr = inventory.render(configured_site)["all"]["hosts"][peer.name]["k8s_pod_cidr"]
    spec = json.dumps(
        {
            "patterns": [],
            "trees": [],
            "units": ["kubelet.service", "containerd*.service", "no-such-unit-*.service"],
            "sysctl_conf": "/etc/sysctl.d/90-kubernetes.conf",
            "modules_conf": "/etc/modules-load.d/kubernetes.conf",
        }
    )
    record = "/run/aifactory-test-probe.json"
    script = FINGERPRINT.read_text()

    def fingerprint(*args: str) -> dict:
        return json.loads(host.check_output(f"python3 - {shlex.join(args)} <<'EOF'\n{script}\nEOF"))

    fingerprint("state", record, "d1", spec)
    state = json.loads(host.check_output(f"cat {record}"))["state"]
    assert state["units"] == {"kubelet.service": "active", "containerd.service": "active"}
    wants = "/etc/systemd/system/multi-user.target.wants"
    assert state["unit_links"] == {
        f"{wants}/kubelet.service": "/etc/systemd/system/kubelet.service",
        f"{wants}/containerd.service": "/lib/systemd/system/containerd.service",
    }
    assert any(r.startswith(f"{cidr} via {peer.address} dev ") for r in state["routes"]), state["routes"]
    assert fingerprint("converged", record) == {"inputs": "d1", "differs": []}
    host.run_expect([0], f"ip route del {cidr}")
    try:
        assert fingerprint("converged", record)["differs"] == ["routes"]
    finally:
        host.run_expect([0], f"ip route replace {cidr} via {peer.address}")
    host.run_expect([0], "systemctl disable --quiet kubelet.service")  # not stopped: only not at boot
    try:
        assert fingerprint("converged", record)["differs"] == [f"unit_links: {wants}/kubelet.service"]
    finally:
        host.run_expect([0], f"systemctl enable --quiet kubelet.service; rm -f {record}")
    assert host.service("kubelet.service").is_enabled


def test_configure_asks_every_host_over_ssh_and_hears_what_changed(configured_site, all_workers):
    """aifactory/converged.py through the site's own inventory, as `aifactory configure` asks: every
    host answers its verdict (none unreachable or unanswered), a digest no run had is named on each,
    and a file added where the playbooks manage files is named on that host alone."""
    hostvars = converged.hosts(configure.inventory_for(configured_site), None)
    assert set(hostvars) == {m.name for m in configured_site.machines}
    before = converged.ask(hostvars, "no run had this digest")
    assert all(v[:1] == [converged.INPUTS_DIFFER] for v in before.values()), before
    worker = all_workers[0].name
    added = f"/etc/aifactory/probe-test-{uuid.uuid4().hex[:8]}"
    host = _host(configured_site, worker)
    host.run_expect([0], f"touch {added}")
    try:
        after = converged.ask(hostvars, "no run had this digest")
    finally:
        host.run_expect([0], f"rm -f {added}")
    assert [h for h in after if after[h] != before[h]] == [worker], after
    assert any(added in d for d in after[worker]), after[worker]


# --- the cluster, through the official client -------------------------------------------------


def _ready(node) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or [])


def test_pool_machines_are_ready_gpu_nodes(core, workers):
    nodes = {n.metadata.name: n for n in core.list_node().items}
    for m in workers:
        assert m.name in nodes, f"{m.name} is not a Node (have {sorted(nodes)})"
        node = nodes[m.name]
        assert _ready(node), f"{m.name} is not Ready: {node.status.conditions}"
        # GPUs from the device plugin; CPU and memory as the host reveals them (a real kubelet).
        assert node.status.allocatable["nvidia.com/gpu"] == str(m.gpu_count)
        assert node.status.capacity["nvidia.com/gpu"] == str(m.gpu_count)
        assert node.status.capacity["cpu"] == str(os.cpu_count())
        assert not any(t.key == "node.kubernetes.io/not-ready" for t in node.spec.taints or [])
        labels = node.metadata.labels
        assert labels["aifactory.io/pool"] == "kubernetes"
        assert labels["aifactory.io/gpu-model"] == m.gpu_model
        assert labels["nvidia.com/gpu.count"] == str(m.gpu_count)
        assert labels["kubernetes.io/hostname"] == m.name
        assert not node.spec.unschedulable


def test_slurm_pool_machines_are_cordoned_nodes(configured_site, core):
    """Registered with their GPUs, never schedulable while Slurm has them (no GPU offered twice)."""
    nodes = {n.metadata.name: n for n in core.list_node().items}
    for m in configured_site.in_pool("slurm"):
        node = nodes[m.name]
        assert _ready(node), m.name
        assert node.status.capacity["nvidia.com/gpu"] == str(m.gpu_count)
        assert node.spec.unschedulable is True, f"{m.name} is schedulable but serves Slurm"
        assert node.metadata.labels["aifactory.io/pool"] == "slurm"
        assert node.metadata.annotations["aifactory.io/pool-cordon"] == "serves slurm"


@pytest.fixture
def namespace(core):
    name = f"aif-test-{uuid.uuid4().hex[:8]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    core.delete_namespace(name)


def _create_pod(core, namespace: str, body) -> None:
    # The ServiceAccount admission plugin rejects pods until the controller manager has created
    # the namespace's default ServiceAccount (a second or so).
    deadline = time.monotonic() + 30
    while True:
        try:
            core.create_namespaced_pod(namespace, body)
            return
        except ApiException as e:
            if time.monotonic() > deadline or "serviceaccount" not in str(e.body).lower():
                raise
            time.sleep(0.5)


def test_quota_filled_and_gpu_pod_runs_on_a_pool_node(core, namespace, workers):
    gpus = "nvidia.com/gpu"
    created = core.create_namespaced_resource_quota(
        namespace,
        client.V1ResourceQuota(
            metadata=client.V1ObjectMeta(name="gpus"),
            spec=client.V1ResourceQuotaSpec(hard={f"requests.{gpus}": "8"}),
        ),
    )

    # The apiserver stores a new quota without status: filling it is the controller manager's job.
    assert not (created.status and created.status.hard), created.status

    def filled():
        q = core.read_namespaced_resource_quota("gpus", namespace)
        return q if q.status and q.status.hard and q.status.used is not None else None

    started = time.monotonic()
    quota = wait_until(filled, timeout=20, what="the controller manager to fill the ResourceQuota status")
    took = time.monotonic() - started
    print(f"quota status after {took:.1f}s: hard={quota.status.hard} used={quota.status.used}")
    assert quota.status.hard == {f"requests.{gpus}": "8"}
    assert quota.status.used == {f"requests.{gpus}": "0"}

    _create_pod(core, namespace, toolbox_pod("one-gpu", ["sleep", "3600"], gpus=1))
    pod = wait_until(
        lambda: (p := core.read_namespaced_pod("one-gpu", namespace)).status.phase == "Running" and p,
        timeout=60,
        what="the 1-GPU pod to run",
    )
    print(f"pod one-gpu: node={pod.spec.node_name} phase={pod.status.phase} ip={pod.status.pod_ip}")
    assert pod.spec.node_name in {m.name for m in workers}

    def counted():
        used = core.read_namespaced_resource_quota("gpus", namespace).status.used or {}
        return used if used.get(f"requests.{gpus}") == "1" else None

    used = wait_until(counted, timeout=20, what="the quota to count the pod's GPU")
    assert used == {f"requests.{gpus}": "1"}


def _phase(core, namespace: str, name: str, *phases: str):
    p = core.read_namespaced_pod(name, namespace)
    return p if p.status.phase in phases else None


def _finished(core, namespace: str, name: str, timeout: float = 90):
    pod = wait_until(
        lambda: _phase(core, namespace, name, "Succeeded", "Failed"),
        timeout=timeout,
        what=f"pod {name} to finish",
    )
    return pod, core.read_namespaced_pod_log(name, namespace)


def test_a_pod_with_two_gpus_sees_exactly_two_devices(core, namespace, workers):
    node = workers[0].name
    script = "ls /dev | grep -E '^nvidia[0-9]+$' | sort | tr '\\n' ' '; echo; echo $NVIDIA_VISIBLE_DEVICES"
    _create_pod(core, namespace, toolbox_pod("two-gpus", ["sh", "-c", script], node=node, gpus=2))
    pod, log = _finished(core, namespace, "two-gpus")
    print(f"two-gpus on {pod.spec.node_name}: {log!r}")
    assert pod.status.phase == "Succeeded", log
    devices, visible = log.strip().splitlines()
    assert len(devices.split()) == 2, f"the container sees {devices!r}, not 2 GPU devices"
    # Exactly the allocated ones: NVIDIA_VISIBLE_DEVICES names the same indices.
    assert sorted(devices.split()) == sorted(f"nvidia{i}" for i in visible.split(",")), log


def test_a_pod_asking_more_gpus_than_any_node_has_stays_pending_with_the_reason(core, namespace, workers):
    most = max(m.gpu_count for m in workers)
    _create_pod(core, namespace, toolbox_pod("too-many", ["true"], node=workers[0].name, gpus=most + 1))

    def unschedulable():
        p = core.read_namespaced_pod("too-many", namespace)
        cond = next((c for c in p.status.conditions or [] if c.type == "PodScheduled"), None)
        return cond if cond and cond.reason == "Unschedulable" else None

    cond = wait_until(unschedulable, timeout=30, what="the scheduler to refuse the pod")
    assert "Insufficient nvidia.com/gpu" in cond.message, cond.message
    assert core.read_namespaced_pod("too-many", namespace).status.phase == "Pending"


@pytest.mark.parametrize("by", ["pod address", "service name"])
def test_a_pod_reaches_a_pod_on_another_node(core, namespace, workers, by):
    """Pod to pod across nodes over the routed pod network; by Service name through the cluster DNS
    (CoreDNS, deployed by Pulumi) and the Service address (kube-proxy)."""
    if len(workers) < 2:
        pytest.skip("one kubernetes-pool machine: no second node to connect from")
    a, b = workers[0].name, workers[1].name
    serve = "echo hello-from-$(hostname) | nc -l -p 8080"
    _create_pod(core, namespace, toolbox_pod("server", ["sh", "-c", serve], node=a, labels={"app": "server"}))
    server = wait_until(lambda: _phase(core, namespace, "server", "Running"), timeout=60, what="the server")
    target = server.status.pod_ip
    if by == "service name":
        core.create_namespaced_service(
            namespace,
            client.V1Service(
                metadata=client.V1ObjectMeta(name="web"),
                spec=client.V1ServiceSpec(
                    selector={"app": "server"}, ports=[client.V1ServicePort(port=80, target_port=8080)]
                ),
            ),
        )
        target = f"web.{namespace}.svc.cluster.local"
    port = 80 if by == "service name" else 8080
    # Retries: the Service's endpoints reach kube-proxy and CoreDNS a moment after it is created.
    client_cmd = f"for i in $(seq 20); do nc -w 2 {target} {port} && exit 0; sleep 1; done; exit 1"
    _create_pod(core, namespace, toolbox_pod("client", ["sh", "-c", client_cmd], node=b))
    pod, log = _finished(core, namespace, "client")
    print(f"client on {pod.spec.node_name} ({pod.status.pod_ip}) -> {target}:{port}: {log!r}")
    assert pod.status.phase == "Succeeded" and log.strip() == "hello-from-server", log
    assert pod.spec.node_name != server.spec.node_name


def test_kubelets_renew_their_client_certificates(configured_site, workers, kubeconfig, tmp_path):
    """Certificate rotation: the kubelet keeps its client certificate in its own store, and the CSR a
    node makes for its identity (what the kubelet sends before the certificate expires) is approved
    and signed by the cluster, here made by the test with the node's credentials."""
    import base64
    import subprocess

    node = workers[0].name
    host = _host(configured_site, node)
    # the kubelet's store starts from the PKI's pair; kubelet-client-current.pem appears at the first renewal
    assert "rotateCertificates: true" in host.file("/var/lib/kubelet/config.yaml").content_string
    for name in ("kubelet-client.crt", "kubelet-client.key"):
        (tmp_path / name).write_text(host.file(f"/var/lib/kubelet/pki/{name}").content_string)
    subject = f"/O=system:nodes/CN=system:node:{node}"
    subprocess.run(
        ["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", tmp_path / "new.key", "-out", tmp_path / "new.csr", "-subj", subject],
        check=True, capture_output=True,
    )  # fmt: skip
    admin = config.new_client_from_config(config_file=str(kubeconfig))
    as_node = client.Configuration()
    as_node.host = admin.configuration.host
    as_node.ssl_ca_cert = admin.configuration.ssl_ca_cert
    as_node.cert_file, as_node.key_file = (
        str(tmp_path / "kubelet-client.crt"),
        str(tmp_path / "kubelet-client.key"),
    )
    name = f"renewal-test-{uuid.uuid4().hex[:6]}"
    csr = client.V1CertificateSigningRequest(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1CertificateSigningRequestSpec(
            request=base64.b64encode((tmp_path / "new.csr").read_bytes()).decode(),
            signer_name="kubernetes.io/kube-apiserver-client-kubelet",
            usages=["digital signature", "client auth"],
            expiration_seconds=600,
        ),
    )
    with client.ApiClient(as_node) as node_api:
        client.CertificatesV1Api(node_api).create_certificate_signing_request(csr)
    certs = client.CertificatesV1Api(admin)
    try:
        issued = wait_until(
            lambda: certs.read_certificate_signing_request(name).status.certificate,
            timeout=60,
            what="the node's CSR approved and signed",
        )
        conditions = certs.read_certificate_signing_request(name).status.conditions
        assert [(c.type, c.reason) for c in conditions] == [("Approved", "AutoApproved")]
        (tmp_path / "issued.crt").write_bytes(base64.b64decode(issued))
        out = subprocess.run(
            ["openssl", "x509", "-noout", "-subject", "-issuer", "-in", tmp_path / "issued.crt"],
            check=True, capture_output=True, text=True,
        ).stdout  # fmt: skip
        assert f"CN = system:node:{node}" in out and "O = system:nodes" in out, out
    finally:
        certs.delete_certificate_signing_request(name)
        admin.close()


def test_the_policy_agent_runs_in_kube_system_on_every_node(configured_site, core, all_workers):
    """kube-router is a DaemonSet pod (from the site registry) on every worker, cordoned ones too; no
    node runs it as a unit any more."""
    pods = core.list_namespaced_pod("kube-system", label_selector="app.kubernetes.io/name=kube-router").items
    by_node = {p.spec.node_name: p for p in pods}
    assert set(by_node) == {m.name for m in all_workers}, sorted(by_node)
    for node, pod in by_node.items():
        assert pod.spec.host_network and pod.spec.containers[0].image.startswith(images.KUBE_ROUTER_REF)
        wait_until(
            lambda n=node: any(
                c.type == "Ready" and c.status == "True"
                for c in core.read_namespaced_pod(by_node[n].metadata.name, "kube-system").status.conditions
                or []
            ),
            timeout=120,
            what=f"the policy agent on {node} Ready",
        )
        assert not _host(configured_site, node).file("/etc/systemd/system/kube-router.service").exists


def test_a_network_policy_admits_its_own_namespace_and_refuses_another(
    configured_site, core, namespace, workers
):
    """Two tenants' namespaces: a policy admitting only its own namespace is enforced on the node
    (the NetworkPolicy agent); the same connection works from inside and is refused from outside."""
    if len(workers) < 2:
        pytest.skip("one kubernetes-pool machine: no second node to connect from")
    # Right after a deploy the agents' pods may still be starting: wait until each reports healthy
    # (host network: the node's port).
    health = "python3 -c \"import urllib.request; urllib.request.urlopen('http://127.0.0.1:20244/healthz')\""
    for m in workers[:2]:
        h = _host(configured_site, m.name)
        wait_until(lambda h=h: h.run(health).rc == 0, timeout=150, what=f"the policy agent on {m.name}")
    other = f"{namespace}-other"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=other)))
    try:
        serve = "while true; do echo hello | nc -l -p 8080; done"
        _create_pod(
            core,
            namespace,
            toolbox_pod("server", ["sh", "-c", serve], node=workers[0].name, labels={"app": "s"}),
        )
        server = wait_until(
            lambda: _phase(core, namespace, "server", "Running"), timeout=60, what="the server"
        )
        client.NetworkingV1Api(core.api_client).create_namespaced_network_policy(
            namespace,
            client.V1NetworkPolicy(
                metadata=client.V1ObjectMeta(name="own-namespace-only"),
                spec=client.V1NetworkPolicySpec(
                    pod_selector=client.V1LabelSelector(),
                    policy_types=["Ingress"],
                    ingress=[
                        client.V1NetworkPolicyIngressRule(
                            _from=[
                                client.V1NetworkPolicyPeer(
                                    namespace_selector=client.V1LabelSelector(
                                        match_labels={"kubernetes.io/metadata.name": namespace}
                                    )
                                )
                            ]
                        )
                    ],
                ),
            ),
        )
        ip = server.status.pod_ip
        # The agent applies the policy within seconds: the outsider is retried until it is refused,
        # then the insider must still get through.
        refused = f"for i in $(seq 30); do nc -w 2 {ip} 8080 || exit 0; sleep 1; done; exit 1"
        _create_pod(core, other, toolbox_pod("outsider", ["sh", "-c", refused], node=workers[1].name))
        outsider, log = _finished(core, other, "outsider")
        assert outsider.status.phase == "Succeeded", f"the other namespace still reaches the pod: {log!r}"
        admitted = f"nc -w 5 {ip} 8080"
        _create_pod(core, namespace, toolbox_pod("insider", ["sh", "-c", admitted], node=workers[1].name))
        insider, log = _finished(core, namespace, "insider")
        assert insider.status.phase == "Succeeded" and log.strip() == "hello", log
    finally:
        core.delete_namespace(other)


def test_the_site_registry_serves_the_bundles_images(configured_site):
    head = configured_site.with_role("head")[0]
    manifest = _manifest(configured_site)
    served = {name: rec for name, rec in manifest.items() if "image" in rec}
    assert served, "the bundle has no images"
    for name, rec in served.items():
        repo, tag = rec["image"].split("/", 1)[1].rsplit(":", 1)
        req = urllib.request.Request(
            f"http://{head.address}:5000/v2/{repo}/manifests/{tag}",
            method="HEAD",
            headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.headers["Docker-Content-Digest"] == rec["digest"], (
                f"{name}: the registry serves another image"
            )
    # what `pulumi up` checks before it runs an image (infra/registry.py): the bundle's images by
    # digest are served, one the registry never got is named
    refs = [f"{rec['image']}@{rec['digest']}" for rec in served.values()]
    absent = f"{images.SITE_REGISTRY}/aifactory/not-in-the-bundle:1"
    url = f"http://{head.address}:{images.SITE_REGISTRY_PORT}"
    assert registry.missing(url, [*refs, absent]) == [absent]


def test_a_pod_pulls_its_image_from_the_site_registry(core, namespace, workers):
    pod = toolbox_pod("puller", ["true"], node=workers[0].name)
    pod.spec.containers[0].image_pull_policy = "Always"
    _create_pod(core, namespace, pod)
    done, _ = _finished(core, namespace, "puller")
    assert done.status.phase == "Succeeded"
    events = core.list_namespaced_event(namespace, field_selector="involvedObject.name=puller").items
    pulled = [e.message for e in events if e.reason == "Pulled"]
    assert pulled and images.TOOLBOX_REF in pulled[0], [e.message for e in events]
