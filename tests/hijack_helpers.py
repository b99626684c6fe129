"""Running programs under ``python -m usocket_hijack`` in the lab's client namespace (tests)."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from usocket.lab import Lab
from usocket.netns import ns_cmd


def hijack_env(lab: Lab | None = None, mode: str = "shared", **extra: str) -> dict[str, str]:
    """The test process's environment for a hijacked child: the lab's stack settings, without
    the test suite's ``USOCKET_DEFAULT_RUNTIME=0`` (a hijacked program must start its stack)."""
    env = dict(os.environ)
    env.pop("USOCKET_DEFAULT_RUNTIME", None)
    for k in [k for k in env if k.startswith("USOCKET_HIJACK")]:
        del env[k]
    if lab is not None:
        env.update(lab.env(mode))
    env.update(extra)
    return env


def offline_env(**extra: str) -> dict[str, str]:
    """The hijacker's environment without a lab: a stray AF_INET socket fails instead of
    starting a stack."""
    return hijack_env(USOCKET_DEFAULT_RUNTIME="0", **extra)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_script(tmp_path: Path, name: str, code: str) -> str:
    """``code`` (dedented) as ``tmp_path/name``; its path."""
    path = tmp_path / name
    path.write_text(textwrap.dedent(code))
    return str(path)


def hijack_argv(args: list[str], opts: list[str] | None = None) -> list[str]:
    """``python -m usocket_hijack [opts] args``."""
    return [sys.executable, "-m", "usocket_hijack", *(opts or []), *args]


def run_hijacked(lab: Lab, mode: str, args: list[str], *, opts: list[str] | None = None, timeout: float = 60.0,
                 env: dict[str, str] | None = None, **kw: Any) -> subprocess.CompletedProcess[str]:
    """Run ``python -m usocket_hijack [opts] args`` in the client namespace; text output captured."""
    return subprocess.run(ns_cmd(lab.client_ns, hijack_argv(args, opts)), env=env or hijack_env(lab, mode),
                          capture_output=True, text=True, timeout=timeout, **kw)


def popen_hijacked(lab: Lab, mode: str, args: list[str], *, opts: list[str] | None = None,
                   env: dict[str, str] | None = None, **kw: Any) -> subprocess.Popen[Any]:
    """Start it (terminated at lab teardown if still running)."""
    kw.setdefault("text", True)
    return lab.popen(lab.client_ns, hijack_argv(args, opts), env=env or hijack_env(lab, mode), **kw)


def usocket_rules(lab: Lab) -> list[str]:
    """usocket's diversion rules and chains in the client namespace (none must outlive a run)."""
    return lab.foreign_rules(lab.client_ns)


def example(runner: Any, name: str, *args: str, **kw: Any) -> Any:
    """Run ``examples/<name>`` hijacked with a ``LabRunner``; assert the run was clean on the
    stack's side. The ``RunResult``."""
    result = runner.run([f"examples/{name}", *args], timeout=60, **kw)
    assert result.returncode == 0, result.output
    assert result.rejected == 0, "the client's kernel sent TCP/UDP itself"
    assert result.leftover_rules == []
    return result
