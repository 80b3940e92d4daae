"""The site tests run against a real emulated site: bridge, nspawn hosts, Redfish BMCs.

They use a copy of sites/local.yaml moved to its own bridge, range and ports (`citest`), so a
developer's running local site is never touched.
"""

import contextlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from aifactory.images import toolbox_pod  # noqa: F401 - the site tests' pod, imported from here
from aifactory.site.model import Site
from aifactory.site.validate import load_site
from sandbox.scratch import scratch_site
from tests.conftest import REPO


def wait_until(pred, timeout: float, what: str, interval: float = 0.5):
    """Poll until pred() is truthy and return that value; the timeout bounds a hang, it is not what
    is tested."""
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {value!r})")


# A request to etcd's JSON gateway, run on a control-plane machine with a client certificate of its
# PKI (the apiserver's by default): etcd accepts only certificates of the etcd CA.
ETCD_REQUEST = """python3 - {path} '{body}' {cert} <<'EOF'
import ssl, sys, urllib.request
pki = "/etc/kubernetes/pki"
context = ssl.create_default_context(cafile=f"{{pki}}/etcd-ca.crt")
context.load_cert_chain(f"{{pki}}/{{sys.argv[3]}}.crt", f"{{pki}}/{{sys.argv[3]}}.key")
request = urllib.request.Request("https://127.0.0.1:2379" + sys.argv[1], data=sys.argv[2].encode())
print(urllib.request.urlopen(request, context=context, timeout=5).read().decode())
EOF"""


def etcd_request(host, path: str, body: dict | None = None, cert: str = "apiserver-etcd-client"):
    """The command result of an etcd v3 gateway call (`path` like /v3/kv/range) on `host` (testinfra)."""
    return host.run(ETCD_REQUEST.format(path=path, body=json.dumps(body or {}), cert=cert))


def skip_unless_root():
    if os.geteuid() != 0:
        pytest.skip("site tests need root: bridge, overlay mounts and systemd-nspawn")


def site_yaml(name: str, index: int, machines: int | None = None) -> str:
    return yaml.safe_dump(scratch_site(name, index, machines), sort_keys=False)


def citest_yaml() -> str:
    return site_yaml("citest", 0)


@pytest.fixture(scope="session")
def citest_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("citest") / "citest.yaml"
    path.write_text(citest_yaml())
    return path


def clear_leftovers(site: Site) -> None:
    """Take down what an earlier, interrupted run left of `site` (a CI run killed at its time limit):
    `up` keeps what runs, so its hosts would start as that run left them, not from nothing."""
    from aifactory import paths
    from sandbox import localsite

    left = localsite.leftovers(site)
    if left or paths.site_state_dir(site.name).exists():
        print(f"{site.name}: taking down what an earlier run left: {'; '.join(left)[:300] or 'its state'}")
        assert localsite.down(site) == 0, f"what an earlier run left of {site.name} stays (see above)"


@pytest.fixture(scope="session")
def site_up(citest_file):
    """The citest site, up for the whole session (hosts powered off), taken down at the end."""
    skip_unless_root()
    from sandbox import localsite

    site = load_site(citest_file)
    clear_leftovers(site)
    try:
        assert localsite.up(site) == 0, "site up failed (see output above)"
        yield site
    finally:
        assert localsite.down(site) == 0


def say(request: pytest.FixtureRequest, line: str) -> None:
    """A line in the test run's own output (not captured): figures CI logs should show."""
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print(line, flush=True)


@contextlib.contextmanager
def pulumi_deployed(site: Site, tmp: Path, request: pytest.FixtureRequest) -> Iterator[Path]:
    """An emulated site that is up, deployed from nothing by `pulumi up` (Redfish power-on, Ansible,
    Kubernetes objects) on the stack named like the site. Yields the stack template; on exit
    `pulumi destroy` must power every machine off."""
    from aifactory import deploy, toolchain
    from sandbox import hosts

    missing = [b.name for b in toolchain.BINARIES if not b.path.exists()]
    if missing:
        pytest.skip(f"toolchain not built ({', '.join(missing)}): run `aifactory toolchain build`")
    template = tmp / f"{site.name}-stack.yaml"
    template.write_text(
        yaml.safe_dump({"config": {"aifactory:site": str(site.path), "aifactory:bootTimeout": "90"}})
    )
    mp = pytest.MonkeyPatch()
    (tmp / "state").mkdir()
    mp.setenv("PULUMI_BACKEND_URL", f"file://{tmp / 'state'}")
    started = time.monotonic()
    assert deploy.run(site.name, "up", template=template) == 0, f"pulumi up of the {site.name} site failed"
    say(request, f"\n{site.name}: pulumi up from nothing took {time.monotonic() - started:.0f} s")
    try:
        yield template
        assert deploy.run(site.name, "destroy", template=template) == 0
        assert not any(hosts.is_running(site, m.name) for m in site.machines)
    finally:
        deploy.pulumi("stack", "rm", site.name, "--yes", "--force", capture=True, check=False)
        (REPO / f"Pulumi.{site.name}.yaml").unlink(missing_ok=True)
        mp.undo()


@pytest.fixture(scope="session")
def deployed_site(site_up, tmp_path_factory, request):
    """citest deployed from nothing by `pulumi up`. Yields (site, stack template)."""
    with pulumi_deployed(site_up, tmp_path_factory.mktemp("deploy"), request) as template:
        yield site_up, template


@pytest.fixture(scope="session")
def configured_site(request):
    """A site with Slurm and Kubernetes configured by the playbooks.

    By default citest as `pulumi up` left it. AIFACTORY_TEST_SITE=FILE points the role, operator and
    validation tests at a site that is already up and configured instead (a developer's local site,
    or real hardware), without deploying or destroying anything.
    """
    existing = os.environ.get("AIFACTORY_TEST_SITE")
    if existing:
        return load_site(existing)
    return request.getfixturevalue("deployed_site")[0]
