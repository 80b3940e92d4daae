"""The pytest plugin that turns check functions into per-host items and their outcomes into records.

Registered by runner.py for one in-process pytest session: it provides the `ctx`, `machine` and
`measure` fixtures, parametrizes each check over the machines it applies to, and records one
`Record` per item (the assertion message is the record's message), with a live progress line.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import pytest

from aifactory.site.model import Machine
from aifactory.validate.context import Context
from aifactory.validate.report import CLUSTER, ERROR, FAILED, PASSED, SKIPPED, Record


class ValidatePlugin:
    def __init__(self, ctx: Context, live: bool, on_bad: Callable[[Record], None]):
        self.context = ctx
        self.live = live  # rewrite one progress line (a terminal) or stay quiet until failures
        self.on_bad = on_bad
        self.records: list[Record] = []
        self.total = 0
        self._where: dict[str, tuple[str, str]] = {}

    @pytest.fixture(scope="session")
    def ctx(self) -> Context:
        return self.context

    @pytest.fixture
    def measure(self, request: pytest.FixtureRequest) -> Callable[..., None]:
        def record(value: Any, threshold: Any = None) -> None:
            request.node.user_properties[:] = [("value", value), ("threshold", threshold)]

        return record

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        applies = getattr(metafunc.function, "aif_applies", None)
        if "machine" in metafunc.fixturenames and applies is not None:
            machines = [m for m in self.context.machines if applies(self.context, m)]
            metafunc.parametrize("machine", machines, ids=[m.name for m in machines])

    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        keep = []
        for item in items:
            fn = getattr(item, "function", None)
            name = getattr(fn, "aif_check", None)
            if name is None:
                continue
            machine = getattr(item, "callspec", None) and item.callspec.params.get("machine")  # type: ignore[attr-defined]
            if "machine" in getattr(item, "fixturenames", ()) and not isinstance(machine, Machine):
                continue  # no machine of this run has what the check is about
            self._where[item.nodeid] = (machine.name if isinstance(machine, Machine) else CLUSTER, name)
            keep.append(item)
        # Site-wide checks last: per-host failures are the likelier explanation of theirs.
        keep.sort(key=lambda i: self._where[i.nodeid][0] == CLUSTER)
        items[:] = keep
        self.total = len(keep)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo[None]):
        report = yield
        host, check = self._where.get(item.nodeid, ("?", item.name))
        exc = call.excinfo
        if call.when == "call" or (call.when == "setup" and exc is not None):
            if exc is None:
                status, message = PASSED, ""
            elif exc.errisinstance(pytest.skip.Exception):
                status, message = SKIPPED, str(getattr(exc.value, "msg", exc.value))
            elif exc.errisinstance(AssertionError):
                status, message = FAILED, " ".join(str(exc.value).split()) or "assertion failed"
            else:
                status, message = ERROR, f"{exc.typename}: {' '.join(str(exc.value).split())[:500]}"
            props = dict(item.user_properties)
            rec = Record(
                host,
                check,
                status,
                message,
                props.get("value"),
                props.get("threshold"),
                round(call.duration, 3),
            )
            self.records.append(rec)
            self._progress(rec)
        return report

    def _progress(self, rec: Record) -> None:
        n, err = len(self.records), sys.__stderr__ or sys.stderr
        if self.live:
            line = f"\r  [{n:3d}/{self.total}] {rec.host} {rec.check} {rec.status}"
            err.write(line[:100].ljust(100) + ("\n" if n == self.total else ""))
            err.flush()
        if rec.bad:
            if self.live:
                err.write("\n")
            self.on_bad(rec)
