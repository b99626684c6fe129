"""Protocols: sans-IO state machines, one module per protocol, driven by the Stack."""
