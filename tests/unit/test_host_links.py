"""What a power-off waits for and reports when a stopped host's network lingers (hosts.LINK_TEARDOWN_S):
its link by index, the threads still in its network namespace, the bridge's remaining ports."""

import os
import socket
import threading

import pytest

from sandbox import hosts

pytestmark = pytest.mark.unit


def test_a_link_still_there_is_waited_for_then_reported():
    assert hosts._wait_link_gone(socket.if_nametoindex("lo"), timeout=0.3) is False


def test_a_link_gone_or_never_known_is_not_waited_for():
    unused = max(i for i, _ in socket.if_nameindex()) + 1000
    assert hosts._wait_link_gone(unused, timeout=30) is True
    assert hosts._wait_link_gone(None, timeout=30) is True


def test_every_thread_in_the_namespace_is_named_with_its_state():
    stop = threading.Event()
    worker = threading.Thread(target=stop.wait, name="holder")
    worker.start()
    try:
        found = hosts._in_netns(os.stat("/proc/self/ns/net").st_ino)
    finally:
        stop.set()
        worker.join()
    tids = {f.split(" ")[0]: f for f in found}
    pid = os.getpid()
    assert f"{pid}/{pid}" in tids and f"{pid}/{worker.native_id}" in tids
    assert tids[f"{pid}/{worker.native_id}"].endswith("(S)")  # waiting on the event
    assert hosts._in_netns(None) == []


def test_a_bridge_that_is_not_there_has_no_ports():
    assert hosts.wait_bridge_ports_gone("aifnosuchbr0", timeout=30) == []
