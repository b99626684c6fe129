"""Helpers shared by the lab tests that run a stack in the client namespace (their ``mode`` and
``runtime`` fixtures live in conftest.py)."""
from __future__ import annotations


def usocket_rules(lab, ns=None):
    return [r for r in lab.iptables_rules(ns or lab.client_ns) if "usocket" in r.lower() or "NFQUEUE" in r]


def stack_ip(lab, mode):
    return lab.client_ip if mode == "shared" else lab.own_ip
