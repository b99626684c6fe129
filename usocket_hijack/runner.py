"""Run a script, a module or a command exactly as ``python`` would.

``python script.py``, ``python -m module`` and ``python -c command`` each prepare ``__main__``,
``sys.argv`` and ``sys.path[0]`` their own way (checked against the interpreter in
tests/test_hijack_runner.py); ``runpy.run_path`` does not reproduce them (it runs in a temporary
module, without ``__loader__``, and ``sys.path[0]`` is left alone). Here:

* script: a fresh ``__main__`` module replaces ``sys.modules["__main__"]`` for good, with
  ``__file__`` absolute, ``__cached__`` None, ``__loader__`` a ``SourceFileLoader`` (or
  ``SourcelessFileLoader`` for a ``.pyc``), ``__spec__`` None; ``sys.path[0]`` is the directory of
  the script's real path; a directory or zip file runs its ``__main__`` module as python does;
* ``-m``: ``runpy._run_module_as_main`` (what the interpreter itself calls), ``sys.path[0]`` the
  current directory;
* ``-c``: compiled as ``<string>``, ``sys.path[0]`` is ``''``; ``-`` reads the program from stdin.

``sys.path[0]`` is left alone under ``-P``/``-I`` (``sys.flags.safe_path``). An uncaught
exception is printed by ``sys.excepthook`` without the runner's frames, and the exit status is 1;
an uncaught ``KeyboardInterrupt`` kills the process with SIGINT after exit handlers, as python.
"""
from __future__ import annotations

import builtins
import importlib.machinery
import os
import runpy
import sys
import types
import zipfile
from typing import Any

_HERE = os.path.dirname(os.path.abspath(__file__))
_OWN_FILES = {os.path.join(_HERE, "runner.py"), os.path.join(_HERE, "__main__.py"), os.path.abspath(runpy.__file__)}


def _fresh_main(**attrs: Any) -> dict[str, Any]:
    mod = types.ModuleType("__main__")
    mod.__dict__.update({"__annotations__": {}, "__builtins__": builtins})
    mod.__dict__.update(attrs)
    sys.modules["__main__"] = mod
    return mod.__dict__


def _set_path0(value: str) -> None:
    if getattr(sys.flags, "safe_path", False) or sys.flags.isolated:
        return
    if sys.path:
        sys.path[0] = value
    else:
        sys.path.insert(0, value)


def _program_name() -> str:
    orig = getattr(sys, "orig_argv", None)
    return orig[0] if orig else os.path.basename(sys.executable)


def _abspath(path: str) -> str:
    """What python makes of a program path: the current directory joined, nothing normalised."""
    if not path or path == ".":
        return os.getcwd()
    if os.path.isabs(path):
        return path
    return os.getcwd() + os.sep + path


def run_stdin(args: list[str]) -> None:
    """``python -``: the program is read from standard input, ``sys.path[0]`` is ``''``."""
    sys.argv[:] = ["-"] + list(args)
    _set_path0("")
    source = sys.stdin.buffer.read() if hasattr(sys.stdin, "buffer") else sys.stdin.read()
    g = _fresh_main(__file__="<stdin>", __cached__=None, __loader__=importlib.machinery.BuiltinImporter)
    try:
        exec(compile(source, "<stdin>", "exec", dont_inherit=True), g)
    finally:  # python removes them once the program is done
        g.pop("__file__", None)
        g.pop("__cached__", None)


def run_script(path: str, args: list[str]) -> None:
    if path == "-":
        run_stdin(args)
        return
    sys.argv[:] = [path] + list(args)
    full = _abspath(path)
    if os.path.isdir(full) or (os.path.isfile(full) and not full.endswith((".py", ".pyc"))
                                and zipfile.is_zipfile(full)):
        _set_path0(full)  # python inserts the directory/zip itself and runs its __main__
        _fresh_main()
        runpy._run_module_as_main("__main__", alter_argv=False)  # type: ignore[attr-defined]
        return
    try:
        with open(full, "rb") as f:
            data = f.read()
    except OSError as e:
        sys.stderr.write(f"{_program_name()}: can't open file {full!r}: [Errno {e.errno}] {e.strerror}\n")
        raise SystemExit(2) from None
    _set_path0(os.path.dirname(os.path.realpath(full)))
    if full.endswith(".pyc"):
        loader: Any = importlib.machinery.SourcelessFileLoader("__main__", full)
        code = loader.get_code("__main__")
    else:
        loader = importlib.machinery.SourceFileLoader("__main__", full)
        code = compile(data, full, "exec", dont_inherit=True)
    g = _fresh_main(__file__=full, __cached__=None, __loader__=loader)
    exec(code, g)


def run_module(name: str, args: list[str]) -> None:
    sys.argv[:] = ["-m"] + list(args)
    _set_path0(os.getcwd())
    _fresh_main()
    runpy._run_module_as_main(name, alter_argv=True)  # type: ignore[attr-defined]


def run_command(command: str, args: list[str]) -> None:
    sys.argv[:] = ["-c"] + list(args)
    _set_path0("")
    g = _fresh_main(__loader__=importlib.machinery.BuiltinImporter)
    exec(compile(command, "<string>", "exec", dont_inherit=True), g)


def report_uncaught(exc: BaseException) -> None:
    """Print ``exc`` as the interpreter does for an uncaught exception, minus our frames."""
    tb = exc.__traceback__
    while tb is not None and os.path.abspath(tb.tb_frame.f_code.co_filename) in _OWN_FILES:
        tb = tb.tb_next
    exc.__traceback__ = tb
    sys.last_type, sys.last_value, sys.last_traceback = type(exc), exc, tb
    try:
        sys.excepthook(type(exc), exc, tb)
    except BaseException:  # noqa: BLE001 - a broken hook: the default one, as python does
        sys.__excepthook__(type(exc), exc, tb)
