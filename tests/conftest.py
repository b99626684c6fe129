"""Shared pytest set-up: the ``lab`` marker and the ``lab`` / ``make_lab`` fixtures.

A test marked ``lab`` (or using a lab fixture, which marks it) needs root and ``ip netns``. When
those are missing it is skipped, except under ``CI=true``, where it fails: CI must not silently
skip the real-network tests. ``USOCKET_LAB_UNAVAILABLE=<reason>`` pretends the lab is missing
(to test that path). At session start, labs left by dead processes are removed.

Lab fixtures tear down with an audit: a usocket/NFQUEUE rule or USOCKET chain left in the lab's
namespaces (a stack that did not undo its diversion), a namespace, /etc/netns dir or temp dir
that survived, or a usocket/NFQUEUE rule in the root namespace fails the test, naming what was left.
"""
from __future__ import annotations

import functools
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from usocket.lab import Lab

# A test that creates a usocket socket without installing a runtime must not start a real stack on
# the host's own interface (shared mode in the root namespace): get_runtime() refuses instead.
os.environ.setdefault("USOCKET_DEFAULT_RUNTIME", "0")

pytest_plugins = ["pytester"]  # tests/test_lab.py checks the skip/fail behaviour in a sub-session
LAB_FIXTURES = {"lab", "make_lab"}


@functools.lru_cache(maxsize=1)
def lab_unavailable() -> str | None:
    """Why lab tests cannot run here, or ``None`` when they can."""
    forced = os.environ.get("USOCKET_LAB_UNAVAILABLE")
    if forced:
        return forced
    if os.geteuid() != 0:
        return "needs root (network namespaces, iptables)"
    if shutil.which("ip") is None:
        return "iproute2 'ip' not found"
    try:
        p = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"'ip netns' unavailable: {e}"
    if p.returncode != 0:
        return f"'ip netns' unavailable: {p.stderr.strip()}"
    return None


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "lab: needs root and network namespaces (the lab)")


def pytest_sessionstart(session: pytest.Session) -> None:
    if lab_unavailable() is None:
        Lab.cleanup_stale()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if LAB_FIXTURES & set(getattr(item, "fixturenames", ())) and not item.get_closest_marker("lab"):
            item.add_marker(pytest.mark.lab)


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("lab") is None:
        return
    reason = lab_unavailable()
    if reason is None:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"lab test cannot run under CI=true: {reason}", pytrace=False)
    pytest.skip(f"lab: {reason}")


def _close_checked(labs: list[Lab]) -> None:
    problems: list[str] = []
    for lab in labs:
        problems += [f"{lab.tag}: {p}" for p in lab.close_and_audit()]
    if problems:
        pytest.fail("lab teardown found leftovers:\n  " + "\n  ".join(problems), pytrace=False)


@pytest.fixture
def lab() -> Iterator[Lab]:
    """A fresh lab with servers, torn down and audited after the test."""
    lab = Lab(servers=True)
    try:
        lab.build()
        yield lab
    finally:
        _close_checked([lab])


@pytest.fixture
def make_lab() -> Iterator[Callable[..., Lab]]:
    """Factory: ``make_lab(loss=..., mtu=..., servers=...)`` returns a built lab; all audited at teardown."""
    labs: list[Lab] = []

    def make(**opts: Any) -> Lab:
        lab = Lab(**opts)
        labs.append(lab)
        return lab.build()

    try:
        yield make
    finally:
        _close_checked(labs)


# -- a stack in the lab's client namespace ------------------------------------------------------------
@pytest.fixture(params=["shared", "own"])
def mode(request: pytest.FixtureRequest) -> str:
    """The stack's mode: sharing the client's address (NFQUEUE diversion) or owning one."""
    return str(request.param)


@pytest.fixture
def runtime(lab: Lab, mode: str) -> Iterator[Any]:
    """A started runtime in ``lab``'s client namespace, the kernel's own TCP/UDP egress REJECTed
    there; teardown fails the test if diversion rules were left or the kernel sent TCP/UDP itself."""
    from lab_runtime import usocket_rules

    from usocket.runtime import Runtime

    lab.block_kernel_egress()
    rt = Runtime(lab.stack_config(mode))
    rt.start()
    try:
        yield rt
    finally:
        rt.stop()
        assert usocket_rules(lab) == [], "the runtime left diversion rules behind"
    assert lab.kernel_egress_rejected() == 0, "the client kernel sent TCP/UDP itself"


# -- the socket facade ------------------------------------------------------------------------------
@pytest.fixture
def loop_runtime() -> Iterator[Any]:
    """A runtime with no network (own mode, 10.0.0.1/24 on one end of an in-memory link pair),
    installed as the process-wide one: ``usocket.socket`` clients and servers in the test talk
    to each other through the stack's own address (10.0.0.1)."""
    from usocket.config import StackConfig
    from usocket.link.memory import link_pair
    from usocket.runtime import Runtime, set_runtime

    end, other = link_pair()
    rt = Runtime(StackConfig(address=bytes([10, 0, 0, 1]), prefix_len=24), link=end, divert=False)
    rt.start()
    prev = set_runtime(rt)
    try:
        yield rt
    finally:
        set_runtime(prev)
        rt.stop()
        other.close()


@pytest.fixture
def facade_runtime(runtime: Any) -> Iterator[Any]:
    """The lab ``runtime`` installed as the process-wide one, so ``usocket.socket`` uses it."""
    from usocket.runtime import set_runtime

    prev = set_runtime(runtime)
    try:
        yield runtime
    finally:
        set_runtime(prev)


@pytest.fixture(scope="module", params=["shared", "own"])
def runner(request: pytest.FixtureRequest) -> Iterator[Any]:
    """A :class:`usocket.lab.run.LabRunner` (examples run hijacked in its client namespace), one
    lab per mode for the whole module; its teardown must leave nothing behind."""
    from usocket.lab.run import LabRunner

    with LabRunner(request.param, cwd=str(Path(__file__).resolve().parent.parent)) as r:
        yield r
    assert r.leftovers == []
    assert Lab.leftovers(os.getpid()) == []
