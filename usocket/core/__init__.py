"""Core primitives shared by every layer: timers, counters, errors.

Nothing in here does I/O or reads a clock: time is always passed in.
"""
