"""``python -m usocket demo``: the README's main job runs and says what it proved."""
from __future__ import annotations

import os

import pytest

from usocket.demo import run_demo
from usocket.lab import Lab

pytestmark = pytest.mark.lab


@pytest.mark.parametrize("mode", ["shared", "own"])
def test_demo_fetches_with_unmodified_urllib_through_the_stack(mode, capsys):
    assert run_demo(mode=mode) == 0
    out = capsys.readouterr().out
    assert out.count("sha256 match") == 3 and "MISMATCH" not in out
    assert "REJECT rules caught 0 packet(s)" in out  # the kernel sent nothing itself
    assert "tcp: active_open=3" in out
    assert Lab.leftovers(os.getpid()) == []
