"""Helpers shared by the lab tests that run a stack in the client namespace (their ``mode`` and
``runtime`` fixtures live in conftest.py)."""
from __future__ import annotations


def usocket_rules(lab, ns=None):
    """usocket's diversion rules (``-A`` lines) and ipsets (``ipset NAME``) in the client namespace."""
    ns = ns or lab.client_ns
    return [r for r in lab.iptables_rules(ns) if "usocket" in r.lower() or "NFQUEUE" in r] + [
        f"ipset {name}" for name in lab.usocket_sets(ns)]


def stack_ip(lab, mode):
    return lab.client_ip if mode == "shared" else lab.own_ip
