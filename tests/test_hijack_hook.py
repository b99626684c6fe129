"""The hijacker's import hook, rebinding and child injector, as documented in usocket_hijack/__init__.py.

Every check runs in a separate process (a hijacked program, or plain ``python -c`` calling
``usocket_hijack.install()``) that prints what it found as JSON; the test asserts on that. No lab
and no network: no program here creates an AF_INET socket, so no stack starts (and with
``USOCKET_DEFAULT_RUNTIME=0`` one that did would fail instead of starting a stack on the host);
``import socket`` only activates the hook, AF_UNIX sockets and socketpairs stay the kernel's.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import usocket_hijack
from tests.hijack_helpers import offline_env

PY = sys.executable
HIJACK = [PY, "-m", "usocket_hijack"]
TIMEOUT = 60.0
PYENV = Path("/root/.pyenv/versions")
SYSTEM_PY = Path("/usr/bin/python3")


env = offline_env


def run(argv: list[str], cwd: Path, **kw: Any) -> subprocess.CompletedProcess[str]:
    kw.setdefault("env", env())
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT,
                          stdin=subprocess.DEVNULL, **kw)


def run_json(argv: list[str], cwd: Path, **kw: Any) -> Any:
    """Run a program that prints one JSON document last; it must exit 0 with nothing on stderr."""
    p = run(argv, cwd, **kw)
    assert p.returncode == 0, p.stderr
    assert p.stderr == ""
    return json.loads(p.stdout.splitlines()[-1])


def hijacked_json(code: str, cwd: Path, args: list[str] | None = None, **kw: Any) -> Any:
    """``python -m usocket_hijack prog.py [args]`` with ``code`` as prog.py."""
    prog = cwd / "prog.py"
    prog.write_text(textwrap.dedent(code))
    return run_json([*HIJACK, str(prog), *(args or [])], cwd, **kw)


# ------------------------------------------------------------------------------ the import hook
CHECK_SOCKET = '''
import json, sys, _socket
import socket
import usocket
std = usocket._stdsocket
from socket import create_connection, getaddrinfo, socket as S, SocketType, AF_INET
out = {
    "modules": sys.modules["socket"] is usocket,
    "name": socket.__name__,
    "socket": socket.socket is usocket.socket,
    "create_connection": create_connection is usocket.create_connection,
    "not_std_create_connection": create_connection is not std.create_connection,
    "getaddrinfo": getaddrinfo is usocket.getaddrinfo and getaddrinfo is not std.getaddrinfo,
    "S": S is usocket.socket and SocketType is usocket.SocketType,
    "constants": AF_INET is std.AF_INET,
    "std_name": std.__name__, "std_file": std.__file__,
    "_socket_untouched": sys.modules["_socket"] is _socket and _socket.__name__ == "_socket",
    "_socket_base": std.socket.__bases__ == (_socket.socket,),
    "usocket_mro": _socket.socket in usocket.socket.__mro__ and std.socket in usocket.socket.__mro__,
    "spec": socket.__spec__.name,
}
print(json.dumps(out))
'''


def test_import_socket_is_usocket(tmp_path: Path) -> None:
    r = hijacked_json(CHECK_SOCKET, tmp_path)
    assert r.pop("name") == "usocket" and r.pop("spec") == "usocket"
    assert r.pop("std_name") == "socket"
    assert r.pop("std_file") == os.path.join(os.path.dirname(os.__file__), "socket.py")
    assert r == dict.fromkeys(r, True)


# module -> dotted attributes (from the module) that must be usocket's module or object
MODULES: dict[str, dict[str, str]] = {
    "ssl": {"_socket": "usocket", "socket": "usocket.socket", "create_connection": "usocket.create_connection"},
    "selectors": {},
    "asyncio": {"base_events.socket": "usocket", "selector_events.socket": "usocket", "streams.socket": "usocket"},
    "http.client": {"socket": "usocket"},
    "http.server": {"socket": "usocket", "socketserver.socket": "usocket"},
    "urllib.request": {"socket": "usocket", "http.client.socket": "usocket"},
    "urllib3": {"connection.socket": "usocket", "util.connection.socket": "usocket"},
    "requests": {"adapters.socket": "usocket"},
    "socketserver": {"socket": "usocket"},
    "xmlrpc.client": {"http.client.socket": "usocket"},
    "multiprocessing.connection": {"socket": "usocket"},
    "smtplib": {"socket": "usocket"},
    "ftplib": {"socket": "usocket"},
    "logging.handlers": {"socket": "usocket"},
}

IMPORT_FIRST = '''
import importlib, json, sys
name, attrs = json.loads(sys.argv[1]), json.loads(sys.argv[2])
mod = importlib.import_module(name)  # the program's first import: it activates the hook (or not)
import socket
usocket = sys.modules["usocket"]
def resolve(want):  # "usocket" or "usocket.NAME"
    return usocket if want == "usocket" else getattr(usocket, want.split(".", 1)[1])
found = {}
for attr, want in attrs.items():
    obj = mod
    for part in attr.split("."):
        obj = getattr(obj, part)
    found[attr] = obj is resolve(want)
extra = {}
if name == "ssl":
    extra["sslsocket_class"] = issubclass(mod.SSLContext.sslsocket_class, usocket.socket)
if name == "asyncio":  # a loop's self-pipe is a socketpair: the kernel's, no stack needed
    extra["asyncio_run"] = mod.run(mod.sleep(0, result=42)) == 42
print(json.dumps({"found": found, "socket": socket.__name__, "extra": extra,
                  "runtime": sys.modules["usocket.runtime"]._runtime is None}))
'''


def _module_params() -> list[Any]:
    params: list[Any] = []
    for name in MODULES:
        params.append(pytest.param(name, id=name))
    return params


@pytest.mark.parametrize("name", _module_params())
def test_library_imports_first(tmp_path: Path, name: str) -> None:
    """A program whose first import is NAME runs, and NAME's socket globals are usocket's."""
    prog = tmp_path / "prog.py"
    prog.write_text(IMPORT_FIRST)
    r = run_json([*HIJACK, str(prog), json.dumps(name), json.dumps(MODULES[name])], tmp_path)
    assert r["found"] == dict.fromkeys(MODULES[name], True)
    assert r["socket"] == "usocket"
    assert r["extra"] == {"ssl": {"sslsocket_class": True}, "asyncio": {"asyncio_run": True}}.get(name, {})
    assert r["runtime"] is True  # importing is not starting a stack


@pytest.mark.parametrize("how", ["hijacked", "install"])
def test_import_usocket_first(tmp_path: Path, how: str) -> None:
    """A program may import usocket itself (e.g. to check ``socket.socket is usocket.socket``)."""
    code = ("import json, sys\n"
            + ("import usocket_hijack\nusocket_hijack.install()\n" if how == "install" else "")
            + "import usocket\nimport socket\n"
            "print(json.dumps([socket is usocket, usocket._stdsocket.__name__, sys.modules['socket'] is usocket]))\n")
    argv = [*HIJACK, "-c", code] if how == "hijacked" else [PY, "-c", code]
    assert run_json(argv, tmp_path) == [True, "socket", True]


def test_libraries_after_socket(tmp_path: Path) -> None:
    """All of them, ``ssl`` included, imported after ``import socket`` (ssl was loaded by usocket with
    the stdlib socket and rebound) and before it, in one program."""
    code = '''
        import importlib, json, sys
        import http.client  # activates the hook: modules imported before are rebound, after get usocket
        import socket, usocket
        MODULES = json.loads(sys.argv[1])
        found = {}
        for name, attrs in MODULES.items():
            mod = importlib.import_module(name)
            for attr, want in attrs.items():
                obj = mod
                for part in attr.split("."):
                    obj = getattr(obj, part)
                found[name + ":" + attr] = obj is (usocket if want == "usocket" else getattr(usocket, want[8:]))
        found["http.client"] = http.client.socket is usocket
        found["ssl-class"] = issubclass(sys.modules["ssl"].SSLContext.sslsocket_class, usocket.socket)
        print(json.dumps(found))
    '''
    r = hijacked_json(code, tmp_path, args=[json.dumps(MODULES)])
    assert len(r) == sum(map(len, MODULES.values())) + 2
    assert r == dict.fromkeys(r, True)


def test_install_rebinds_earlier_imports_and_uninstall_restores(tmp_path: Path) -> None:
    """``install()`` after ``http.client`` and a ``from socket import ...`` module were imported:
    their globals now are usocket's (by identity); ``uninstall()`` puts the stdlib's back."""
    (tmp_path / "early.py").write_text("from socket import create_connection, getaddrinfo, socket as S\n"
                                       "import socket as sockmod\n")
    code = textwrap.dedent('''
        import json, sys
        import http.client, early
        import socket as std
        import usocket_hijack
        STD = [std]  # rebinding finds module globals (like __main__.std), not list items
        r = {}
        r["before"] = [usocket_hijack.installed(), usocket_hijack.active(), "usocket" in sys.modules]
        usocket_hijack.install()
        import usocket
        r["installed"] = [usocket_hijack.installed(), usocket_hijack.active()]
        r["on"] = {
            "sys.modules": sys.modules["socket"] is usocket,
            "http.client.socket": http.client.socket is usocket,
            "early.create_connection": early.create_connection is usocket.create_connection,
            "early.getaddrinfo": early.getaddrinfo is usocket.getaddrinfo,
            "early.S": early.S is usocket.socket,
            "early.sockmod": early.sockmod is usocket,
            "__main__.std": std is usocket,
            "usocket._stdsocket": usocket._stdsocket is STD[0],
        }
        import socket
        r["on"]["import"] = socket is usocket
        usocket_hijack.uninstall()
        r["uninstalled"] = [usocket_hijack.installed(), usocket_hijack.active()]
        r["off"] = {
            "__main__.std": std is STD[0],
            "sys.modules": sys.modules["socket"] is std,
            "http.client.socket": http.client.socket is std,
            "early.create_connection": early.create_connection is std.create_connection,
            "early.getaddrinfo": early.getaddrinfo is std.getaddrinfo,
            "early.S": early.S is std.socket,
            "early.sockmod": early.sockmod is std,
        }
        del sys.modules["socket"]
        import socket
        r["off"]["import"] = socket.__name__ == "socket" and socket is not usocket
        print(json.dumps(r))
    ''')
    path = os.pathsep.join(p for p in [str(tmp_path), os.environ.get("PYTHONPATH", "")] if p)
    r = run_json([PY, "-c", code], tmp_path, env=env(PYTHONPATH=path))
    assert r["before"] == [False, False, False]
    assert r["installed"] == [True, True]
    assert r["on"] == dict.fromkeys(r["on"], True)
    assert r["uninstalled"] == [False, False]
    assert r["off"] == dict.fromkeys(r["off"], True)


def test_install_is_lazy_until_import_socket(tmp_path: Path) -> None:
    code = textwrap.dedent('''
        import json, sys
        import usocket_hijack
        usocket_hijack.install()
        r = [usocket_hijack.installed(), usocket_hijack.active(), "usocket" in sys.modules, "socket" in sys.modules]
        import socket
        r += [usocket_hijack.active(), socket.__name__]
        print(json.dumps(r))
    ''')
    assert run_json([PY, "-c", code], tmp_path) == [True, False, False, False, True, "usocket"]


def test_reimport_gives_usocket(tmp_path: Path) -> None:
    """``del sys.modules['socket']; import socket`` and ``importlib.import_module`` still give usocket."""
    code = '''
        import importlib, json, sys
        import socket, usocket
        first = socket
        del sys.modules["socket"]
        import socket
        r = [first is usocket, socket is usocket, sys.modules["socket"] is usocket,
             importlib.import_module("socket") is usocket, socket.__spec__.name, socket.__name__]
        print(json.dumps(r))
    '''
    assert hijacked_json(code, tmp_path) == [True, True, True, True, "usocket", "usocket"]


RELOAD = '''
    import importlib, json, sys
    import socket, usocket
    std = usocket._stdsocket
    sock_cls = usocket.socket
    m = importlib.reload(socket)
    print(json.dumps({"same": m is usocket and sys.modules["socket"] is usocket, "name": m.__name__,
                      "socket": m.socket is sock_cls, "std": usocket._stdsocket is std}))
'''


@pytest.fixture(scope="module")
def reloaded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """What ``importlib.reload(socket)`` did in a hijacked program (one run for both tests)."""
    return hijacked_json(RELOAD, tmp_path_factory.mktemp("reload"))  # type: ignore[no-any-return]


def test_reload_keeps_usocket(reloaded: dict[str, Any]) -> None:
    assert (reloaded["same"], reloaded["name"], reloaded["socket"]) == (True, "usocket", True)


def test_reload_keeps_kernel_module(reloaded: dict[str, Any]) -> None:
    assert reloaded["std"] is True


def test_unix_sockets_stay_kernel(tmp_path: Path) -> None:
    """AF_UNIX sockets and ``socketpair()`` in a hijacked program are kernel sockets and work; the
    stack never starts for them."""
    code = '''
        import json, os, sys, threading
        import socket
        assert socket.__name__ == "usocket"
        r = {}
        a, b = socket.socketpair()
        with a, b:
            a.sendall(b"ping" * 1000)
            a.shutdown(socket.SHUT_WR)
            got = b""
            while len(got) < 4000:
                chunk = b.recv(65536)
                if not chunk:
                    break
                got += chunk
            r["pair"] = [a.family == socket.AF_UNIX, got == b"ping" * 1000, b.recv(1) == b"",
                         os.readlink("/proc/self/fd/%d" % a.fileno()).startswith("socket:"), a.getsockname()]
        path = os.path.join(sys.argv[1], "srv.sock")
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        srv.bind(path)
        srv.listen()
        def serve():
            conn, _ = srv.accept()
            with conn:
                conn.sendall(conn.recv(100).upper())
        t = threading.Thread(target=serve)
        t.start()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
            c.settimeout(10)
            c.connect(path)
            c.sendall(b"hello unix")
            reply = c.recv(100)
            r["unix"] = [reply.decode(), c.getpeername() == path, srv.getsockname() == path]
        t.join(10)
        srv.close()
        r["joined"] = not t.is_alive()
        d = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        d.bind(os.path.join(sys.argv[1], "dgram.sock"))
        with d, socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as e:
            e.sendto(b"dgram", d.getsockname())
            r["dgram"] = d.recv(10).decode()
        r["stack_started"] = sys.modules["usocket.runtime"]._runtime is not None
        print(json.dumps(r))
    '''
    prog = tmp_path / "prog.py"
    prog.write_text(textwrap.dedent(code))
    r = run_json([*HIJACK, str(prog), str(tmp_path)], tmp_path)
    assert r["pair"] == [True, True, True, True, ""]
    assert r["unix"] == ["HELLO UNIX", True, True]
    assert r["joined"] is True and r["dgram"] == "dgram"
    assert r["stack_started"] is False


def test_program_without_socket_never_loads_usocket(tmp_path: Path) -> None:
    """Lazy: a program that never imports socket runs without the stack's code loaded (and a late
    ``import socket`` still activates the hook)."""
    code = ("import json, os, subprocess, sys, threading, logging, selectors\n"
            "import usocket_hijack\n"
            "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('socket', 'usocket', 'scapy', 'ssl'))\n"
            "state = [usocket_hijack.installed(), usocket_hijack.active()]\n"
            "import socket\n"
            "print(json.dumps([loaded, state, socket.__name__, 'usocket' in sys.modules]))\n")
    p = run([*HIJACK, "-c", code], tmp_path)
    assert p.returncode == 0 and p.stderr == ""
    assert json.loads(p.stdout) == [[], [True, False], "usocket", True]


# ------------------------------------------------------------------------------ the child injector
CHILD = '''\
import os, sys
import socket
mark = os.environ.get("SITE1_MARK")
sys.stdout.write("%s site1=%s\\n" % (socket.__name__, mark == str(os.getpid())))
'''

PARENT = '''\
import json, os, subprocess, sys
argv, extra = json.loads(sys.argv[1]), json.loads(sys.argv[2])
child_env = dict(os.environ)
child_env.update(extra)
p = subprocess.run(argv, capture_output=True, text=True, env=child_env, stdin=subprocess.DEVNULL)
print(json.dumps({"rc": p.returncode, "out": p.stdout, "err": p.stderr, "parent_has_socket": "socket" in sys.modules}))
'''


@pytest.fixture
def family(tmp_path: Path) -> Path:
    (tmp_path / "child.py").write_text(CHILD)
    (tmp_path / "parent.py").write_text(PARENT)
    return tmp_path


def run_child(tmp: Path, child_argv: list[str], *, opts: list[str] | None = None,
              child_env: dict[str, str] | None = None, parent_env: dict[str, str] | None = None,
              parent_stderr: str = "") -> dict[str, Any]:
    """A hijacked parent runs ``child_argv`` with subprocess.run and reports what the child printed."""
    argv = [*HIJACK, *(opts or []), str(tmp / "parent.py"), json.dumps(child_argv), json.dumps(child_env or {})]
    p = run(argv, tmp, env=env(**(parent_env or {})))
    assert p.returncode == 0, p.stderr
    assert p.stderr == parent_stderr
    r = json.loads(p.stdout)
    assert r["parent_has_socket"] is False  # the parent itself never loaded the stack
    return r


def test_child_is_hijacked(family: Path) -> None:
    r = run_child(family, [PY, str(family / "child.py")])
    assert (r["rc"], r["out"], r["err"]) == (0, "usocket site1=False\n", "")


def test_grandchild_is_hijacked(family: Path) -> None:
    middle = "import subprocess, sys; sys.exit(subprocess.run([sys.executable, sys.argv[1]]).returncode)"
    r = run_child(family, [PY, "-c", middle, str(family / "child.py")])
    assert (r["rc"], r["out"], r["err"]) == (0, "usocket site1=False\n", "")


def test_no_children(family: Path) -> None:
    r = run_child(family, [PY, str(family / "child.py")], opts=["--no-children"])
    assert (r["rc"], r["out"], r["err"]) == (0, "socket site1=False\n", "")


def test_child_opts_out(family: Path) -> None:
    r = run_child(family, [PY, str(family / "child.py")], child_env={"USOCKET_HIJACK": "0"})
    assert (r["rc"], r["out"], r["err"]) == (0, "socket site1=False\n", "")


def test_existing_sitecustomize_still_runs(family: Path) -> None:
    """A sitecustomize the program's environment already had runs in the child (it marks the
    child's own pid), and the child is hijacked too."""
    site1 = family / "site1"
    site1.mkdir()
    (site1 / "sitecustomize.py").write_text('import os\nos.environ["SITE1_MARK"] = str(os.getpid())\n')
    r = run_child(family, [PY, str(family / "child.py")], parent_env={"PYTHONPATH": str(site1)})
    assert (r["rc"], r["out"], r["err"]) == (0, "usocket site1=True\n", "")


def test_broken_sitecustomize_is_reported_and_child_still_hijacked(family: Path) -> None:
    """As site.py does for a failing sitecustomize: a message on stderr, and the child goes on."""
    site1 = family / "site1"
    site1.mkdir()
    (site1 / "sitecustomize.py").write_text('raise RuntimeError("site1 is broken")\n')
    plain = run([PY, str(family / "child.py")], family, env=env(PYTHONPATH=str(site1)))
    assert "RuntimeError: site1 is broken" in plain.stderr and plain.stdout == "socket site1=False\n"
    r = run_child(family, [PY, str(family / "child.py")], parent_env={"PYTHONPATH": str(site1)},
                  parent_stderr=plain.stderr)  # the parent itself starts with the same message
    assert (r["rc"], r["out"]) == (0, "usocket site1=False\n")
    assert "RuntimeError: site1 is broken" in r["err"]


OTHER_VERSIONS = ["2.7.18", "3.10.13", "3.12.1", "3.13.0"]


@pytest.mark.parametrize("version", OTHER_VERSIONS)
def test_other_python_version_is_left_alone(family: Path, version: str) -> None:
    """Another version runs the child normally, with its stdlib socket and not a word on stderr."""
    exe = PYENV / version / "bin" / "python"
    if not exe.exists():
        pytest.skip(f"{exe} not installed")
    r = run_child(family, [str(exe), str(family / "child.py")])
    assert (r["rc"], r["out"], r["err"]) == (0, "socket site1=False\n", "")


@pytest.mark.parametrize("exe", [SYSTEM_PY, PYENV / "3.11.7" / "bin" / "python"],
                         ids=["usr-bin-python3", "pyenv-3.11.7"])
def test_same_abi_interpreter_without_usocket_is_hijacked(family: Path, exe: Path) -> None:
    """An interpreter of the same ABI whose own sys.path has neither usocket nor scapy (the system
    python3 next to the venv, the venv's base) finds them through USOCKET_HIJACK_PATH."""
    if not exe.exists():
        pytest.skip(f"{exe} not installed")
    probe = subprocess.run([str(exe), "-c", "import sys; print(sys.implementation.cache_tag + sys.abiflags)"],
                           capture_output=True, text=True, timeout=TIMEOUT)
    if probe.stdout.strip() != usocket_hijack.abi_tag():
        pytest.skip(f"{exe} has another ABI: {probe.stdout.strip()}")
    alone = run([str(exe), "-c", "import usocket"], family)
    assert alone.returncode != 0  # it really lacks usocket on its own
    r = run_child(family, [str(exe), str(family / "child.py")])
    assert (r["rc"], r["out"], r["err"]) == (0, "usocket site1=False\n", "")


@pytest.mark.parametrize("flag", ["-I", "-E", "-S"])
def test_isolated_children_are_not_hijacked(family: Path, flag: str) -> None:
    """Documented limit: ``python -I``/``-E``/``-S`` children skip the injector (PYTHONPATH or
    sitecustomize ignored) and run on the kernel's sockets."""
    r = run_child(family, [PY, flag, str(family / "child.py")])
    assert (r["rc"], r["out"], r["err"]) == (0, "socket site1=False\n", "")
