"""``python -m usocket_hijack PROGRAM`` runs PROGRAM exactly as ``python PROGRAM`` does.

Each case runs the same program twice, from the same directory with the same arguments and
environment: once with the plain interpreter and once under the hijacker, and compares what the
program saw (``sys.argv``, ``sys.path``, its ``__main__`` globals), printed, and the exit status and
stderr (tracebacks included). No lab and no network: the stack starts at the first AF_INET socket
and none of these programs creates one (``USOCKET_DEFAULT_RUNTIME=0`` makes sure a regression that
did would fail instead of starting a stack on the host's interface); ``import socket`` only
activates the import hook.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path
from typing import Any

import pytest

import usocket
from tests.hijack_helpers import offline_env

PY = sys.executable
HIJACK = [PY, "-m", "usocket_hijack"]
CONSOLE = os.path.join(os.path.dirname(PY), "usocket-hijack")
TIMEOUT = 60.0

# What a program sees of its own start-up: everything python -m usocket_hijack must reproduce.
PROBE = textwrap.dedent('''\
    """probe docstring"""
    import sys


    def _loader(obj):
        if obj is None:
            return None
        kind = obj.__name__ if isinstance(obj, type) else type(obj).__name__
        return (kind, getattr(obj, "name", None), getattr(obj, "path", None))


    _g = globals()
    _spec = _g.get("__spec__")
    print("argv", sys.argv)
    print("path0", repr(sys.path[0]))
    print("path", sys.path)
    print("name", __name__)
    print("file", _g.get("__file__", "<unset>"))
    print("cached", _g.get("__cached__", "<unset>"))
    print("spec", None if _spec is None else (_spec.name, _spec.origin, _spec.parent))
    print("loader", _loader(_g.get("__loader__")))
    print("package", repr(_g.get("__package__", "<unset>")))
    print("builtins", type(__builtins__))
    print("doc", repr(__doc__))
    print("dunders", sorted(k for k in _g if k.startswith("__")))
    print("annotations", _g.get("__annotations__", "<unset>"))
    print("main-is-globals", sys.modules["__main__"].__dict__ is _g)
    print("main-name", sys.modules["__main__"].__name__)
    print("flags", sys.flags.optimize, sys.flags.safe_path, sys.flags.isolated, __debug__)
    print("stdio", sys.stdin.name, sys.stdout.name, sys.stderr.name)
''')


env = offline_env


def run(argv: list[str], cwd: Path, **kw: Any) -> subprocess.CompletedProcess[str]:
    """Output captured as text; stdin empty unless ``input`` is given."""
    kw.setdefault("env", env())
    if "input" not in kw:
        kw.setdefault("stdin", subprocess.DEVNULL)
    if "stdout" not in kw:
        kw["capture_output"] = True
    return subprocess.run(argv, cwd=cwd, text=True, timeout=TIMEOUT, **kw)


def both(args: list[str], cwd: Path, *, py_opts: tuple[str, ...] = (), hijacker: list[str] | None = None,
         **kw: Any) -> tuple[subprocess.CompletedProcess[str], subprocess.CompletedProcess[str]]:
    """(``python [py_opts] args``, ``python [py_opts] -m usocket_hijack args``), same cwd and env."""
    plain = run([PY, *py_opts, *args], cwd, **kw)
    hij = hijacker if hijacker is not None else [PY, *py_opts, "-m", "usocket_hijack"]
    return plain, run([*hij, *args], cwd, **kw)


def assert_same(plain: subprocess.CompletedProcess[str], hij: subprocess.CompletedProcess[str]) -> None:
    assert hij.stdout == plain.stdout
    assert hij.stderr == plain.stderr
    assert hij.returncode == plain.returncode


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """The probe as a script, behind a symlink, as a directory's and a zip's ``__main__``, as a
    module and as a package's ``__main__``."""
    write(tmp_path / "sub" / "probe.py", PROBE)
    (tmp_path / "link.py").symlink_to(tmp_path / "sub" / "probe.py")
    write(tmp_path / "appdir" / "__main__.py", PROBE)
    with zipfile.ZipFile(tmp_path / "app.zip", "w") as z:
        z.writestr("__main__.py", PROBE)
    write(tmp_path / "mods" / "probemod.py", PROBE)
    write(tmp_path / "mods" / "probepkg" / "__init__.py", "")
    write(tmp_path / "mods" / "probepkg" / "__main__.py", PROBE)
    write(tmp_path / "mods" / "probepkg" / "sub.py", PROBE)
    return tmp_path


PROBE_CASES = {
    "script-relative-subdir": (".", ["sub/probe.py", "a", "--help", "-c"]),
    "script-in-cwd": ("sub", ["probe.py", "x"]),
    "script-absolute": (".", ["<tree>/sub/probe.py", "abs"]),
    "dot-directory": ("appdir", [".", "d"]),
    "script-symlink": (".", ["link.py", "1"]),
    "script-after-dashdash": (".", ["--", "sub/probe.py", "-m", "x"]),
    "directory": (".", ["appdir", "a"]),
    "zipfile": (".", ["app.zip", "b"]),
    "module": ("mods", ["-m", "probemod", "a", "-c"]),
    "module-joined": ("mods", ["-mprobemod", "z"]),
    "package-main": ("mods", ["-m", "probepkg", "p"]),
    "package-submodule": ("mods", ["-m", "probepkg.sub"]),
    "command": (".", ["-c", PROBE, "--mode", "x", "-m"]),
    "command-noargs": ("sub", ["-c", PROBE]),
}


@pytest.mark.parametrize("case", list(PROBE_CASES))
def test_probe_matches_python(tree: Path, case: str) -> None:
    """What the program sees of its start-up is python's, for every way of naming it."""
    cwd, args = PROBE_CASES[case]
    args = [a.replace("<tree>", str(tree)) for a in args]
    plain, hij = both(args, tree / cwd)
    assert plain.returncode == 0, plain.stderr
    assert "main-is-globals True" in plain.stdout  # the probe ran to the end
    assert_same(plain, hij)


@pytest.mark.parametrize("py_opts", [("-P",), ("-I",), ("-O",), ("-B", "-OO")], ids=" ".join)
def test_probe_matches_python_with_interpreter_flags(tree: Path, py_opts: tuple[str, ...]) -> None:
    """``python -P -m usocket_hijack script`` leaves ``sys.path[0]`` alone as ``python -P script``
    does (so ``-m`` does not find a module of the current directory, both ways); -O/-OO reach the
    program's compilation (``__debug__``, docstrings)."""
    plain, hij = both(["sub/probe.py", "a"], tree, py_opts=py_opts)
    assert plain.returncode == 0, plain.stderr
    assert_same(plain, hij)
    plain, hij = both(["-m", "probemod"], tree / "mods", py_opts=py_opts)
    assert (plain.returncode == 0) == (py_opts[0] not in ("-P", "-I")), plain.stderr
    assert_same(plain, hij)


@pytest.mark.parametrize("cwd,args", [(".", ["./sub/probe.py"]), ("mods", ["../sub/probe.py"]),
                                      (".", ["sub/../sub/probe.py"]), (".", ["sub//probe.py"]),
                                      ("mods", ["../appdir"]), (".", ["./app.zip"]), (".", ["./missing.py"])],
                         ids=lambda v: " ".join(v) if isinstance(v, list) else v)
def test_unnormalised_relative_paths(tree: Path, cwd: str, args: list[str]) -> None:
    """python makes a relative program path absolute by prefixing the current directory, nothing more."""
    plain, hij = both(args, tree / cwd)
    assert f"{tree / cwd}/{args[0]}" in plain.stdout + plain.stderr  # python's form, as documented
    assert_same(plain, hij)


def test_program_on_stdin(tree: Path) -> None:
    plain, hij = both(["-", "a", "b"], tree, input=PROBE)
    assert "argv ['-', 'a', 'b']" in plain.stdout
    assert_same(plain, hij)


def test_console_script_matches_python(tree: Path) -> None:
    """``usocket-hijack`` (the console script) is ``python -m usocket_hijack``."""
    assert os.access(CONSOLE, os.X_OK)
    for cwd, args in (".", ["sub/probe.py", "a"]), ("mods", ["-m", "probepkg", "b"]), (".", ["-c", PROBE, "c"]):
        plain, hij = both(args, tree / cwd, hijacker=[CONSOLE])
        assert plain.returncode == 0, plain.stderr
        assert_same(plain, hij)


def test_console_script_traceback(tmp_path: Path) -> None:
    write(tmp_path / "boom.py", BOOM)
    plain, hij = both(["boom.py"], tmp_path, hijacker=[CONSOLE])
    assert plain.returncode == 1 and "ZeroDivisionError" in plain.stderr
    assert_same(plain, hij)


# ------------------------------------------------------------------------------ exit status, stderr
BOOM = '''\
import sys
print("before", flush=True)


def inner(x):
    return {"a": 1}[x] / 0


def outer():
    try:
        inner("b")
    except KeyError as e:
        raise ValueError("wrapped") from e


try:
    outer()
except ValueError:
    inner("a")
'''

EXIT_PROGRAMS = {
    "normal": 'print("ok")\n',
    "exit-3": 'import sys\nprint("out")\nsys.exit(3)\n',
    "exit-msg": 'import sys\nsys.exit("fatal: the message")\n',
    "exit-none": 'raise SystemExit\n',
    "exit-in-finally": 'import sys\ntry:\n    sys.exit(4)\nfinally:\n    print("finally")\n',
    "uncaught": BOOM,
    "syntax-error": 'print("never")\ndef f(:\n    pass\n',
    "indentation-error": 'if True:\nprint("x")\n',
    "atexit": 'import atexit\natexit.register(print, "at exit")\nraise RuntimeError("late")\n',
    "excepthook": 'import sys\nsys.excepthook = lambda t, v, tb: print("hook", t.__name__, v)\n1/0\n',
    "custom-exception": 'class Oops(Exception):\n    pass\n\nraise Oops("in __main__")\n',
    "sigterm": 'import os, signal\nprint("before", flush=True)\nos.kill(os.getpid(), signal.SIGTERM)\nprint("after")\n',
}


@pytest.mark.parametrize("name", list(EXIT_PROGRAMS))
@pytest.mark.parametrize("kind", ["script", "module", "command"])
def test_exit_and_stderr_match_python(tmp_path: Path, name: str, kind: str) -> None:
    """Exit statuses and stderr (tracebacks: no usocket_hijack frames) are python's."""
    source = EXIT_PROGRAMS[name]
    write(tmp_path / "prog.py", source)
    args = {"script": ["prog.py"], "module": ["-m", "prog"], "command": ["-c", source]}[kind]
    plain, hij = both(args, tmp_path)
    if name == "uncaught":
        assert plain.returncode == 1 and "The above exception was the direct cause" in plain.stderr
    if name == "sigterm":  # the hijacker's SIGTERM handler finishes the stack, then dies of the signal
        assert plain.returncode == -signal.SIGTERM and plain.stdout == "before\n"
    assert "usocket" not in hij.stderr
    assert_same(plain, hij)


def test_uncaught_traceback_has_no_runner_frames(tmp_path: Path) -> None:
    """The script's traceback starts at the script (python's has no runpy frame for a script)."""
    write(tmp_path / "boom.py", BOOM)
    plain, hij = both(["boom.py"], tmp_path)
    frames = re.findall(r'^  File "([^"]+)"', hij.stderr, re.M)
    assert frames and set(frames) == {str(tmp_path / "boom.py")}
    assert "runpy" not in hij.stderr and "runner.py" not in hij.stderr
    assert hij.stdout == "before\n"
    assert_same(plain, hij)


def test_keyboard_interrupt_kills_with_sigint(tmp_path: Path) -> None:
    """An uncaught KeyboardInterrupt: the traceback, atexit handlers, then death by SIGINT."""
    write(tmp_path / "ki.py", 'import atexit\natexit.register(print, "atexit ran")\n'
          'def f():\n    raise KeyboardInterrupt\nf()\n')
    plain, hij = both(["ki.py"], tmp_path)
    assert plain.returncode == -signal.SIGINT
    assert hij.stdout == "atexit ran\n"
    assert_same(plain, hij)


def _normalise_program(text: str) -> str:
    """The interpreter names itself first on these lines; that part may differ."""
    return re.sub(r"^\S+: ", "PROGRAM: ", text, flags=re.M)


@pytest.mark.parametrize("args", [["missing.py", "a"], ["nodir/missing.py"], ["missingdir"], ["-m", "no_such_mod"],
                                  ["-m", "json.no_such_sub"], ["-m", ".relative"]], ids=" ".join)
def test_missing_target_matches_python(tmp_path: Path, args: list[str]) -> None:
    plain, hij = both(args, tmp_path)
    assert plain.returncode in (1, 2) and plain.stderr
    assert hij.returncode == plain.returncode
    assert hij.stdout == plain.stdout == ""
    assert _normalise_program(hij.stderr) == _normalise_program(plain.stderr)


def test_missing_script_message(tmp_path: Path) -> None:
    """The message's form: ``PROGRAM: can't open file '/abs/missing.py': [Errno 2] ...``, status 2."""
    _, hij = both(["missing.py"], tmp_path)
    assert hij.returncode == 2
    assert _normalise_program(hij.stderr) == (
        f"PROGRAM: can't open file {str(tmp_path / 'missing.py')!r}: [Errno 2] No such file or directory\n")


def test_stdin_passes_through(tmp_path: Path) -> None:
    write(tmp_path / "echo.py", 'import sys\nfirst = input()\nrest = sys.stdin.read()\n'
          'print(repr(first), repr(rest), sys.stdin.isatty())\n')
    data = "hello\nworld\n\xe9t\xe9\n"
    plain, hij = both(["echo.py"], tmp_path, input=data)
    assert plain.stdout == f"{'hello'!r} {'world' + chr(10) + 'été' + chr(10)!r} False\n"
    assert_same(plain, hij)


@pytest.mark.parametrize("unbuffered", [False, True], ids=["buffered", "PYTHONUNBUFFERED"])
def test_stdout_stderr_ordering(tmp_path: Path, unbuffered: bool) -> None:
    """Same buffering as python: with both on one pipe, the unflushed stdout comes out at exit
    after the (line-buffered) stderr lines, flushed lines in program order; unbuffered, in order."""
    write(tmp_path / "order.py", textwrap.dedent('''\
        import sys
        for i in range(3):
            print("out", i)
            print("err", i, file=sys.stderr)
        print("flushed", flush=True)
        sys.stderr.write("partial-err")
        print("last")
    '''))
    e = env()
    e.pop("PYTHONUNBUFFERED", None)
    if unbuffered:
        e["PYTHONUNBUFFERED"] = "1"
    plain, hij = both(["order.py"], tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=e)
    assert (plain.stdout.index("err 0") < plain.stdout.index("out 0")) != unbuffered
    assert hij.stdout == plain.stdout
    assert hij.returncode == plain.returncode == 0


def test_main_guard_and_self_import(tmp_path: Path) -> None:
    """``if __name__ == "__main__"`` runs once; importing the script by name gives a second,
    non-main copy (sys.path[0] is the script's directory)."""
    write(tmp_path / "sub" / "guard.py", textwrap.dedent('''\
        import sys
        print("executing as", __name__)
        if __name__ == "__main__":
            import guard
            print("main; guard is main:", guard is sys.modules["__main__"], guard.__name__)
    '''))
    plain, hij = both(["sub/guard.py"], tmp_path)
    assert plain.stdout == "executing as __main__\nexecuting as guard\nmain; guard is main: False guard\n"
    assert_same(plain, hij)


PICKLE = textwrap.dedent('''\
    import dataclasses
    import pickle
    import sys


    @dataclasses.dataclass
    class Point:
        x: int
        y: int

        def norm1(self):
            return abs(self.x) + abs(self.y)


    def double(v):
        return 2 * v


    class Sub(Point):
        pass


    if __name__ == "__main__":
        p = pickle.loads(pickle.dumps(Sub(3, -4)))
        f = pickle.loads(pickle.dumps(double))
        print(p, type(p) is Sub, p.norm1(), f is double, f(21), Point.__module__, Point.__qualname__)
        print(sys.modules[Point.__module__].Point is Point)
''')


@pytest.mark.parametrize("kind", ["script", "module", "command"])
def test_pickle_class_defined_in_main(tmp_path: Path, kind: str) -> None:
    write(tmp_path / "pick.py", PICKLE)
    args = {"script": ["pick.py"], "module": ["-m", "pick"], "command": ["-c", PICKLE]}[kind]
    plain, hij = both(args, tmp_path)
    assert plain.stdout == "Sub(x=3, y=-4) True 7 True 42 __main__ Point\nTrue\n"
    assert_same(plain, hij)


MP = textwrap.dedent('''\
    import multiprocessing
    import socket
    import sys


    def work(x):
        import socket
        return x * x, socket.__name__, __name__


    if __name__ == "__main__":
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(1) as pool:
            print(pool.map(work, [2, 3]))
        q = ctx.SimpleQueue()
        p = ctx.Process(target=q.put, args=(work(5),))
        p.start()
        p.join()
        print(q.get(), p.exitcode)
        print("parent", socket.__name__)
''')


def test_multiprocessing_spawn(tmp_path: Path) -> None:
    """A spawned child re-imports the script as ``__mp_main__`` (from ``__main__.__file__``), runs a
    function defined there and is itself hijacked."""
    write(tmp_path / "mp.py", MP)
    plain, hij = both(["mp.py"], tmp_path)
    assert plain.stdout == ("[(4, 'socket', '__mp_main__'), (9, 'socket', '__mp_main__')]\n"
                            "(25, 'socket', '__main__') 0\nparent socket\n"), plain.stderr
    assert hij.stdout == ("[(4, 'usocket', '__mp_main__'), (9, 'usocket', '__mp_main__')]\n"
                          "(25, 'usocket', '__main__') 0\nparent usocket\n"), hij.stderr
    assert hij.stderr == plain.stderr == ""
    assert hij.returncode == 0


# ------------------------------------------------------------------------------ the command line
@pytest.mark.parametrize("argv", [HIJACK, [CONSOLE]], ids=["-m", "console-script"])
def test_help(tmp_path: Path, argv: list[str]) -> None:
    p = run([*argv, "--help"], tmp_path)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("usage: python -m usocket_hijack [options]")
    for opt in ("--mode", "--no-children", "--pcap", "--stats", "--version"):
        assert opt in p.stdout
    assert p.stderr == ""
    assert run([*argv, "-h"], tmp_path).stdout == p.stdout


def test_help_after_target_belongs_to_target(tmp_path: Path) -> None:
    """Options after the program are the program's (``-c ... --help`` is not our help)."""
    p = run([*HIJACK, "-c", "import sys; print(sys.argv)", "--help", "--version"], tmp_path)
    assert p.returncode == 0 and p.stdout == "['-c', '--help', '--version']\n"


def test_version(tmp_path: Path) -> None:
    p = run([*HIJACK, "--version"], tmp_path)
    assert p.returncode == 0
    assert p.stdout == f"usocket-hijack {usocket.__version__}\n"
    assert run([CONSOLE, "--version"], tmp_path).stdout == p.stdout


@pytest.mark.parametrize("args", [[], ["-m"], ["-c"], ["--"], ["--mode", "bad", "x.py"], ["--mode"],
                                  ["--grace", "soon", "x.py"], ["--bogus", "x.py"], ["--log-level", "LOUD", "x.py"]],
                         ids=lambda a: " ".join(a) or "no-target")
def test_usage_errors_exit_2(tmp_path: Path, args: list[str]) -> None:
    write(tmp_path / "x.py", 'print("ran")\n')
    p = run([*HIJACK, *args], tmp_path)
    assert p.returncode == 2
    assert p.stdout == ""  # the target never ran
    assert "usage:" in p.stderr and "error:" in p.stderr

