import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from aifactory import paths, toolchain


def _skip_unless_built(*names):
    missing = [n for n in names if not toolchain.BY_NAME[n].path.exists()]
    if missing:
        pytest.skip(f"toolchain not built ({', '.join(missing)}): run `aifactory toolchain build`")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def built():
    return _skip_unless_built


@pytest.fixture(scope="module")
def loopback_control_plane(tmp_path_factory):
    """The built etcd and kube-apiserver on loopback, one per test module (a start costs ~7 s);
    yields a kubeconfig path."""
    tmp_path = tmp_path_factory.mktemp("control-plane")
    _skip_unless_built("etcd", "kube-apiserver")
    bin_dir = paths.bin_dir()
    client, peer, secure = free_port(), free_port(), free_port()
    key = tmp_path / "sa.key"
    subprocess.run(["openssl", "genrsa", "-out", key, "2048"], check=True, capture_output=True)
    subprocess.run(
        ["openssl", "rsa", "-in", tmp_path / "sa.key", "-pubout", "-out", tmp_path / "sa.pub"],
        check=True,
        capture_output=True,
    )
    token = os.urandom(16).hex()
    (tmp_path / "tokens.csv").write_text(f"{token},admin,admin-uid,system:masters\n")
    procs = {}
    logs = []

    def start(name, args):
        log = open(tmp_path / f"{name}.log", "wb")  # noqa: SIM115 - closed at teardown
        logs.append(log)
        procs[name] = subprocess.Popen([str(bin_dir / name), *args], stdout=log, stderr=subprocess.STDOUT)

    start(
        "etcd",
        [
            f"--data-dir={tmp_path / 'etcd'}",
            f"--listen-client-urls=http://127.0.0.1:{client}",
            f"--advertise-client-urls=http://127.0.0.1:{client}",
            f"--listen-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-cluster=default=http://127.0.0.1:{peer}",
        ],
    )
    start(
        "kube-apiserver",
        [
            f"--etcd-servers=http://127.0.0.1:{client}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={secure}",
            # a loopback advertise address is refused by the default endpoint reconciler
            "--endpoint-reconciler-type=none",
            f"--cert-dir={tmp_path / 'certs'}",
            f"--token-auth-file={tmp_path / 'tokens.csv'}",
            "--authorization-mode=RBAC",
            "--service-cluster-ip-range=10.96.0.0/16",
            "--service-account-issuer=https://kubernetes.default.svc",
            f"--service-account-key-file={tmp_path / 'sa.pub'}",
            f"--service-account-signing-key-file={tmp_path / 'sa.key'}",
        ],
    )
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: smoke\n"
        "clusters: [{name: smoke, cluster: "
        f"{{server: 'https://127.0.0.1:{secure}', insecure-skip-tls-verify: true}}}}]\n"
        f"users: [{{name: admin, user: {{token: {token}}}}}]\n"
        "contexts: [{name: smoke, context: {cluster: smoke, user: admin}}]\n"
    )
    try:
        _wait_listening(secure, procs, tmp_path)
        yield kubeconfig
    finally:
        for p in reversed(procs.values()):
            p.terminate()
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        for log in logs:
            log.close()
        shutil.rmtree(tmp_path / "etcd", ignore_errors=True)


def _wait_listening(port, procs, logdir, timeout=90):
    """Wait for the apiserver port; fail at once, with its log, if a process exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name, proc in procs.items():
            if proc.poll() is not None:
                pytest.fail(f"{name} exited with {proc.returncode}:\n{log_tail(logdir / f'{name}.log')}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    pytest.fail(f"kube-apiserver not listening after {timeout}s:\n{log_tail(logdir / 'kube-apiserver.log')}")


def wait_ready(fn, timeout=60):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            return fn()
        except Exception as e:  # retried until the deadline, then reported
            last = e
            time.sleep(0.5)
    raise AssertionError(f"not ready after {timeout}s: {last}")


def log_tail(path: Path) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-20:]) if path.exists() else ""
