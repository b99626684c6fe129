"""usocket_hijack: run unmodified Python programs on the userland stack.

``python -m usocket_hijack [options] script.py [args]`` (or ``-m module``, ``-c command``) runs a
program exactly as ``python`` would, except that its ``socket`` module is :mod:`usocket`. This
package is the machinery; :mod:`usocket_hijack.__main__` is the command line.

How a process is hijacked (:func:`install`):

* A ``sys.meta_path`` finder answers ``import socket`` with the ``usocket`` module. It is lazy: a
  program that never imports ``socket`` never loads the stack. At the first ``import socket``
  (or at once, when ``socket`` was imported before :func:`install`) the hook *activates*: it
  imports the stdlib ``socket``, ``usocket`` and the edges the stack needs at start (scapy's
  link socket, the NFQUEUE reader) with the stdlib module in ``sys.modules``, then makes
  ``sys.modules["socket"]`` the ``usocket`` module. ``_socket`` is never touched (``_ssl`` and C
  extensions use it); usocket's own code reaches the kernel's module as ``usocket._stdsocket``.
* Modules imported before activation are *rebound*: every module global that is the stdlib
  ``socket`` module, or one of the stdlib objects usocket replaces (``socket``, ``SocketType``,
  ``create_connection``, ``getaddrinfo``...), found by identity, so ``from socket import
  create_connection`` done earlier also gets usocket's. Objects captured elsewhere (default
  arguments, class attributes, instances) are not found; classes that *subclass* the stdlib
  ``socket.socket`` keep the kernel's (``ssl.SSLSocket`` is handled by ``usocket.facade.tls``).
* The runtime starts at the first AF_INET socket (``usocket.runtime.get_runtime``) and, at exit,
  closes what the program left open and waits a bounded grace for closing connections
  (:meth:`usocket.runtime.Runtime.finish`); SIGTERM and SIGHUP (when at their default action)
  do the same, then kill the process with the same signal, so its exit status is unchanged.

Child processes: :func:`child_environment` returns the environment variables that make every
Python child (``subprocess``, ``multiprocessing`` spawn/forkserver) run
``usocket_hijack/inject/sitecustomize.py`` at start-up, which chains to the ``sitecustomize`` it
shadows and then calls :func:`install_from_env`. A child of another Python version or ABI is
left alone; ``USOCKET_HIJACK=0`` in a child's environment opts it out; ``python -I``/``-E``/``-S``
children skip ``sitecustomize`` entirely and are not hijacked.

Environment (read by :func:`install_from_env`; the command line sets them for children):

=========================  ===============================================================
``USOCKET_HIJACK``         ``1``: hijack this process (children); ``0``: opt out
``USOCKET_HIJACK_ABI``     the parent's interpreter ABI; other interpreters are left alone
``USOCKET_HIJACK_PATH``    directories a child appends to ``sys.path`` to find usocket
``USOCKET_LOG_LEVEL``      log level of the ``usocket`` logger (to stderr), e.g. ``INFO``
``USOCKET_PCAP``           pcap file of every frame; ``{pid}`` is replaced by the process
                           id (children get ``FILE.{pid}`` when the parent's has none)
``USOCKET_STATS``          ``1``: per-layer counters on stderr at exit
``USOCKET_STOP_GRACE``     seconds closing connections get at exit (default 2)
``USOCKET_IFACE`` ...      the stack's configuration: see :mod:`usocket.config`
=========================  ===============================================================
"""
from __future__ import annotations

import atexit
import importlib
import importlib.abc
import importlib.machinery
import logging
import os
import signal
import sys
import threading
import types
from dataclasses import dataclass
from typing import Any

__all__ = ["HijackOptions", "install", "uninstall", "installed", "active", "rebind_modules",
           "child_environment", "install_from_env", "finish", "INJECT_DIR"]

INJECT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "inject")

# Modules whose globals are never rebound: they need the kernel's socket module.
KEEP_PREFIXES = ("usocket", "usocket_hijack", "scapy", "socket", "_socket",
                 "importlib", "_frozen_importlib")


@dataclass
class HijackOptions:
    """What :func:`install` does besides the import hook (stack settings come from the
    ``USOCKET_*`` environment, see :mod:`usocket.config`)."""

    log_level: str | None = None
    pcap: str | None = None  # path; "{pid}" is replaced by the process id
    stats: bool = False
    grace: float | None = None  # seconds closing connections get at exit (None: the runtime's)
    signals: bool = True  # SIGTERM/SIGHUP at their default action finish the stack first

    @classmethod
    def from_env(cls, env: Any = None) -> HijackOptions:
        env = os.environ if env is None else env
        grace = env.get("USOCKET_STOP_GRACE")
        return cls(log_level=env.get("USOCKET_LOG_LEVEL") or None, pcap=env.get("USOCKET_PCAP") or None,
                   stats=env.get("USOCKET_STATS", "") not in ("", "0"),
                   grace=float(grace) if grace else None)


class _State:
    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.installed = False
        self.active = False
        self.loading = False
        self.finder: SocketFinder | None = None
        self.options = HijackOptions()
        self.stdlib: types.ModuleType | None = None
        self.usocket: types.ModuleType | None = None
        self.rebound: list[tuple[dict[str, Any], str, Any]] = []
        self.exit_signal = 0  # set by the runner for an uncaught KeyboardInterrupt
        self.finished = False
        self.signals: dict[int, Any] = {}


_state = _State()
log = logging.getLogger("usocket.hijack")


# ------------------------------------------------------------------------------ import hook
# Imports that activate the hijack. ``socket`` is answered with usocket for good; ``usocket``
# and ``ssl`` (which usocket imports, and which imports socket) only while the hijack is not
# active: a program whose first such import is one of them gets them loaded in the right order
# (the stdlib socket, then usocket and ssl with it in sys.modules), not half-initialised.
ACTIVATE_ON = ("socket", "usocket", "ssl")


class SocketFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """``import socket`` -> the ``usocket`` module (activating the hijack at the first one)."""

    def __init__(self) -> None:
        self._specs: dict[str, Any] = {}

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if _state.loading or fullname not in ACTIVATE_ON:
            return None
        if fullname != "socket" and (_state.active or fullname in sys.modules):
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec: Any) -> types.ModuleType:
        usocket = _activate()
        module = usocket if spec.name == "socket" else sys.modules[spec.name]
        self._specs[spec.name] = module.__spec__
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        # the import system set __spec__ to ours; the module keeps its own
        ours = module.__spec__
        if ours is not None:
            module.__spec__ = self._specs.pop(ours.name, ours)


def _activate() -> types.ModuleType:
    """Load the stdlib socket, usocket and the stack's edges, rebind, swap sys.modules."""
    with _state.lock:
        if _state.active and _state.usocket is not None:
            return _state.usocket
        _state.loading = True
        try:
            std = sys.modules.get("socket")
            if std is None or std.__name__ != "socket":
                sys.modules.pop("socket", None)
                std = importlib.import_module("socket")
            _state.stdlib = std
            usocket = importlib.import_module("usocket")
            # What the runtime imports lazily at start: load it now, with the kernel's socket
            # module in sys.modules (scapy asks the kernel about interfaces at import).
            for name in ("usocket.runtime", "usocket.link.packet", "usocket.link.bpf", "usocket.link.pcap",
                         "usocket.divert", "scapy.arch.linux", "scapy.interfaces"):
                try:
                    importlib.import_module(name)
                except ImportError:  # a broken install: said when the stack starts
                    pass
            _state.usocket = usocket
            rebind_modules(std, usocket)
            _configure_runtime()
        finally:
            _state.loading = False
        sys.modules["socket"] = usocket
        _state.active = True
        return usocket


def _replacements(std: types.ModuleType, new: types.ModuleType) -> dict[int, tuple[Any, Any]]:
    repl: dict[int, tuple[Any, Any]] = {id(std): (std, new)}
    for name in dir(std):
        if name.startswith("__"):
            continue
        old = getattr(std, name)
        ours = getattr(new, name, old)
        if ours is not old:
            repl[id(old)] = (old, ours)
    return repl


def rebind_modules(std: types.ModuleType, new: types.ModuleType, modules: Any = None) -> int:
    """Point every module global that is ``std`` (the stdlib socket module) or one of its
    objects that ``new`` replaces at ``new``'s (by identity). Modules named in
    :data:`KEEP_PREFIXES` are left alone. Returns how many names were rebound."""
    repl = _replacements(std, new)
    n = 0
    for name, mod in list((modules if modules is not None else sys.modules).items()):
        if not isinstance(mod, types.ModuleType) or name.split(".")[0] in KEEP_PREFIXES:
            continue
        try:
            namespace = mod.__dict__
            items = list(namespace.items())
        except Exception:  # noqa: BLE001 - lazy or odd module objects
            continue
        for key, value in items:
            hit = repl.get(id(value))
            if hit is not None and hit[0] is value:
                namespace[key] = hit[1]
                _state.rebound.append((namespace, key, value))
                n += 1
    return n


# ------------------------------------------------------------------------------ runtime set-up
def _configure_runtime() -> None:
    from usocket import runtime

    opts = _state.options
    if opts.pcap:
        runtime.default_options["pcap"] = opts.pcap.replace("{pid}", str(os.getpid()))
    if opts.grace is not None:
        runtime.Runtime.stop_grace = opts.grace
    # the control endpoint (python -m usocket ss PID): on unless USOCKET_CONTROL=0
    off = os.environ.get("USOCKET_CONTROL", "") in ("0", "no", "false", "off")
    runtime.default_options.setdefault("control", not off)


def _current_runtime() -> Any:
    rtmod = sys.modules.get("usocket.runtime")
    return getattr(rtmod, "_runtime", None) if rtmod is not None else None


def finish(timeout: float | None = None) -> None:
    """Close what the program left open and stop the stack (bounded: a stack that does not stop
    in time is left to the next run's stale-rule cleanup). Safe from a signal handler."""
    with _state.lock:
        if _state.finished:
            return
        _state.finished = True
    rt = _current_runtime()
    if rt is None:
        return
    grace = rt.stop_grace if _state.options.grace is None else _state.options.grace
    t = threading.Thread(target=rt.finish, kwargs={"grace": grace}, name="usocket-finish", daemon=True)
    t.start()
    t.join(grace + 10.0 if timeout is None else timeout)


def _print_stats() -> None:
    rt = _current_runtime()
    stack = getattr(rt, "stack", None)
    if stack is None:
        return
    try:
        from usocket.wire.addr import ip_ntoa

        cfg = rt.config
        lines = [f"usocket stats (pid {os.getpid()}, {cfg.mode} mode, {cfg.iface} {ip_ntoa(cfg.address)}):"]
        for layer, counters in sorted(stack.counters.snapshot().items()):
            items = " ".join(f"{k}={v}" for k, v in sorted(counters.items()) if v)
            if items:
                lines.append(f"  {layer:>8}: {items}")
        sys.stderr.write("\n".join(lines) + "\n")
        sys.stderr.flush()
    except Exception:  # noqa: BLE001 - stderr closed, or a broken stack: nothing more to say
        pass


def _at_exit() -> None:
    """Registered at install, so it runs after the runtime's own ``finish`` (atexit is LIFO)."""
    finish()
    if _state.options.stats:
        _print_stats()
    sig = _state.exit_signal
    if sig:  # an uncaught KeyboardInterrupt: die of SIGINT as python does
        for f in (sys.stdout, sys.stderr):
            try:
                f.flush()
            except Exception:  # noqa: BLE001
                pass
        signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
        os._exit(128 + sig)


def _on_signal(signum: int, frame: Any) -> None:
    """SIGTERM/SIGHUP at their default action: finish the stack, then die of the signal."""
    finish()
    if _state.options.stats:
        _print_stats()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


_on_signal.usocket_graceful = True  # type: ignore[attr-defined]  # the Diverter leaves SIGTERM to us


def _install_signals() -> None:
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) is signal.SIG_DFL:
            _state.signals[sig] = signal.SIG_DFL
            signal.signal(sig, _on_signal)


def _configure_logging(level: str | None) -> None:
    if not level:
        return
    logger = logging.getLogger("usocket")
    logger.setLevel(level.upper() if isinstance(level, str) else level)
    if not any(getattr(h, "usocket_hijack", False) for h in logger.handlers):
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter(f"%(asctime)s usocket[{os.getpid()}] %(name)s %(levelname)s %(message)s"))
        h.usocket_hijack = True  # type: ignore[attr-defined]
        logger.addHandler(h)
        logger.propagate = False  # the program's own logging configuration stays its own


# ------------------------------------------------------------------------------ public API
def install(options: HijackOptions | None = None) -> None:
    """Hijack this process: the import hook (activated now if ``socket`` is already imported,
    else at the first ``import socket``), logging, exit and signal handling. Idempotent."""
    with _state.lock:
        if options is not None:
            _state.options = options
        if _state.installed:
            return
        _state.installed = True
        _state.finished = False
        _configure_logging(_state.options.log_level)
        atexit.register(_at_exit)
        if _state.options.signals:
            _install_signals()
        std = sys.modules.get("socket")
        if std is not None and std.__name__ == "socket":
            _activate()
        finder = _state.finder = SocketFinder()
        sys.meta_path.insert(0, finder)


def install_from_env() -> bool:
    """Install with the options of the environment (the child injector). False if opted out."""
    if os.environ.get("USOCKET_HIJACK") == "0":
        return False
    opts = HijackOptions.from_env()
    if opts.pcap and "{pid}" not in opts.pcap:
        opts.pcap += ".{pid}"  # a child must not overwrite its parent's capture
    install(opts)
    return True


def installed() -> bool:
    return _state.installed


def active() -> bool:
    """True once ``sys.modules["socket"]`` is usocket."""
    return _state.active


def uninstall() -> None:
    """Undo :func:`install` (tests, embedding): the stdlib ``socket`` back in ``sys.modules``,
    rebound names restored, hook and signal handlers removed. Sockets already made stay usocket's,
    and the runtime keeps running until exit."""
    with _state.lock:
        if _state.finder is not None and _state.finder in sys.meta_path:
            sys.meta_path.remove(_state.finder)
        _state.finder = None
        for namespace, key, value in reversed(_state.rebound):
            namespace[key] = value
        _state.rebound.clear()
        if _state.active and _state.stdlib is not None:
            sys.modules["socket"] = _state.stdlib
            rtmod = sys.modules.get("usocket.runtime")
            if rtmod is not None:
                rtmod.default_options.pop("pcap", None)
                rtmod.default_options.pop("control", None)
        for sig, previous in _state.signals.items():
            if signal.getsignal(sig) is _on_signal:
                signal.signal(sig, previous)
        _state.signals.clear()
        atexit.unregister(_at_exit)
        _state.installed = _state.active = False


def child_environment(env: Any = None, *, children: bool = True,
                      options: HijackOptions | None = None) -> dict[str, str]:
    """The environment variables that hijack this interpreter's Python children (or, with
    ``children=False``, make sure none is)."""
    env = dict(os.environ if env is None else env)
    parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and os.path.abspath(p) != INJECT_DIR]
    if not children:
        env["USOCKET_HIJACK"] = "0"
        if parts:
            env["PYTHONPATH"] = os.pathsep.join(parts)
        else:
            env.pop("PYTHONPATH", None)
        return env
    env["PYTHONPATH"] = os.pathsep.join([INJECT_DIR] + parts)
    env["USOCKET_HIJACK"] = "1"
    env["USOCKET_HIJACK_ABI"] = abi_tag()
    env["USOCKET_HIJACK_PATH"] = os.pathsep.join(_package_dirs())
    opts = options or _state.options
    if opts.log_level:
        env["USOCKET_LOG_LEVEL"] = str(opts.log_level)
    if opts.pcap:
        env["USOCKET_PCAP"] = opts.pcap
    if opts.stats:
        env["USOCKET_STATS"] = "1"
    if opts.grace is not None:
        env["USOCKET_STOP_GRACE"] = str(opts.grace)
    return env


def abi_tag() -> str:
    """What a child's interpreter must match to be hijacked (the injector computes the same)."""
    return f"{sys.implementation.cache_tag}{getattr(sys, 'abiflags', '')}"


def _package_dirs() -> list[str]:
    """Where this interpreter finds usocket and its dependencies (for a child interpreter of the
    same ABI whose own sys.path lacks them, e.g. the system python3 next to a venv)."""
    import importlib.util

    dirs: list[str] = []
    for name in ("usocket", "usocket_hijack", "scapy"):
        if name in sys.modules:
            spec = sys.modules[name].__spec__
        else:
            loading, _state.loading = _state.loading, True  # the real spec, not the hook's
            try:
                spec = importlib.util.find_spec(name)
            finally:
                _state.loading = loading
        origin = getattr(spec, "origin", None)
        if spec is None or not origin:
            continue
        d = os.path.dirname(origin)
        if spec.submodule_search_locations:  # a package: its parent directory
            d = os.path.dirname(d)
        if d not in dirs:
            dirs.append(d)
    return dirs
