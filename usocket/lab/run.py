"""``python -m usocket.lab run``: one command runs an unmodified program in the lab, on the stack.

usage::

    python -m usocket.lab run [--mode shared|own] [--hijack-opt OPT ...] [--peer CMD ...]
                              [--port N | --ready REGEX] [--timeout S] -- PROGRAM [ARGS ...]

``PROGRAM`` is what ``python`` takes: ``script.py``, ``-m module`` or ``-c code``. The command
builds a lab (:class:`usocket.lab.Lab`), REJECTs the client namespace's *kernel* TCP/UDP egress
(so only the userland path can work), and runs ``python -m usocket_hijack [OPT ...] PROGRAM
ARGS`` in the client namespace, its output streamed as it comes. The program's environment is
the caller's, minus ``USOCKET_DEFAULT_RUNTIME`` and ``USOCKET_HIJACK*`` (the hijacked program
must start its own stack), plus the stack's settings (:meth:`Lab.env`), ``PYTHONUNBUFFERED=1``
(output appears when printed), ``SSL_CERT_FILE`` and ``REQUESTS_CA_BUNDLE`` set to the lab's CA
(so an unmodified program verifies the lab's HTTPS server with its default settings: OpenSSL's
default verify paths, and requests' bundle) and these variables, which ``examples/`` uses as its
defaults:

====================  ==========================================================================
``LAB_SERVER``        the server's DNS name (``server.usocket.test``; also in the TLS certificate)
``LAB_SERVER_IP``     the server's address
``LAB_CLIENT_IP``     the stack's address: where a program run here is reached (``--mode own``:
                      the stack's own address, not the kernel's)
``LAB_DOMAIN``        the lab's DNS domain (``usocket.test``; ``www.`` is a CNAME of the server)
``LAB_CA_FILE``       PEM of the lab's throwaway CA, which signed the HTTPS server's certificate
``LAB_MODE``          ``shared`` or ``own``
``LAB_<NAME>_PORT``   each server's port: ``HTTP`` 8000 (python http.server: the files, and
                      ``POST`` answers ``<bytes> <sha256>``), ``NGINX`` 80, ``HTTPS`` 443,
                      ``XMLRPC`` 8001, ``TCP_ECHO``/``UDP_ECHO`` 7, ``DNS`` 53, ``BULK_SOURCE``
                      19, ``BULK_SINK`` 9, ``EOF_ECHO`` 2007, ``RESET`` 2019, ``CLOSED`` 9999
====================  ==========================================================================

The servers serve ``/index.html`` (also ``/``), ``/1k.bin``, ``/1m.bin`` and ``/16m.bin``; the
sizes and SHA-256 of each are printed when the lab is up, to compare with what a program prints.

A server program: ``--peer CMD`` (repeatable) runs ``sh -c CMD`` in the *server* namespace once
the program listens, then the program is stopped with SIGINT (as Ctrl-C would). In ``CMD``,
``{client_ip}`` (the stack's address), ``{server_ip}``, ``{server}``, ``{domain}``,
``{http_port}`` (any ``LAB_*`` variable, lower-cased without ``LAB_``), ``{port}`` (``--port``),
``{client_ns}`` and ``{server_ns}`` are replaced; other braces are left alone (``curl -w
'%{http_code}'`` works); the ``LAB_*`` variables are in its environment too. The program
"listens" when a TCP connection from the server namespace to ``{client_ip}:PORT`` is accepted:
``PORT`` is ``--port`` or, without it, the port after ``{client_ip}:`` in ``CMD``. In shared mode
the probe waits first for the stack's NFQUEUE rule for that port, so the kernel never sees (and
never answers with a RST) a probe meant for the stack. ``--ready REGEX`` instead waits for a
line of the program's output matching REGEX (a UDP server, say).

At the end it prints how many packets the kernel's REJECT rules caught (0 when every packet
went through the stack), tears the lab down (on every path: an error, Ctrl-C, SIGTERM) and exits
with the program's exit status; a program stopped by our SIGINT that dies of it counts as 0; if
the program succeeded, a failed peer command's status. Examples::

    python -m usocket.lab run -- examples/urllib_get.py
    python -m usocket.lab run --mode own --hijack-opt --stats -- examples/udp_client.py
    python -m usocket.lab run --peer 'curl -sS http://{client_ip}:8080/README.md' -- \\
        -m http.server 8080 --directory examples

The Python API: :func:`run_program` (one lab, one program) and :class:`LabRunner` (one lab, any
number of :meth:`LabRunner.run` calls), both returning :class:`RunResult`.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import IO, Any

from .netlab import Lab, LabError

USAGE = ("python -m usocket.lab run [--mode shared|own] [--hijack-opt OPT ...] [--peer CMD ...] "
         "[--port N | --ready REGEX] [--timeout S] -- (script.py | -m module | -c code) [args ...]")
STOP_WAIT = 5.0  # after our SIGINT, how long the program gets before SIGTERM (then as long again: SIGKILL)
SELF_INTERRUPT_WAIT = 1.0  # on Ctrl-C the program usually got SIGINT from the terminal too: let it finish
PROBE_TIMEOUT = 0.5


@dataclass
class PeerResult:
    """What one ``--peer`` command did (run in the server namespace)."""

    command: str
    returncode: int
    stdout: str
    stderr: str


@dataclass
class RunResult:
    """One program's run. ``returncode`` is the status the command line exits with (see the module
    docstring); ``program_returncode`` is the raw one (negative: killed by that signal)."""

    returncode: int
    program_returncode: int
    stdout: str
    stderr: str
    rejected: int  # packets the kernel's REJECT rules caught during this run (0: all went through the stack)
    leftover_rules: list[str] = field(default_factory=list)  # usocket rules still in the client ns after it
    peers: list[PeerResult] = field(default_factory=list)
    listened: bool = False  # a peer run: the program was seen listening (else the peers did not run)
    elapsed: float = 0.0
    notes: list[str] = field(default_factory=list)  # the runner's own messages (what the CLI prints)

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def lab_variables(lab: Lab, mode: str) -> dict[str, str]:
    """The ``LAB_*`` environment of a program run in ``lab`` (see the module docstring)."""
    env = {"LAB_SERVER": lab.server_name, "LAB_SERVER_IP": lab.server_ip, "LAB_CLIENT_IP": stack_ip(lab, mode),
           "LAB_DOMAIN": lab.DOMAIN, "LAB_CA_FILE": lab.ca_file, "LAB_MODE": mode}
    env.update({f"LAB_{name.upper()}_PORT": str(port) for name, port in lab.ports.items()})
    return env


def stack_ip(lab: Lab, mode: str) -> str:
    """The address the stack uses: the client's own in shared mode, a separate one in own mode."""
    return lab.own_ip if mode == "own" else lab.client_ip


def format_command(command: str, fields: dict[str, str]) -> str:
    """Replace ``{name}`` for the names in ``fields``; every other brace stays (``%{http_code}``)."""
    return re.sub(r"\{(\w+)\}", lambda m: fields.get(m.group(1), m.group(0)), command)


def port_in_command(command: str) -> int | None:
    """The port after ``{client_ip}:`` (or ``$LAB_CLIENT_IP:``) in a peer command, if any."""
    m = re.search(r"(?:\{client_ip\}|\$\{?LAB_CLIENT_IP\}?):(\d+)", command)
    return int(m.group(1)) if m else None


def exit_status(returncode: int) -> int:
    """A Popen return code as a shell would report it (killed by signal N: 128 + N)."""
    return 128 - returncode if returncode < 0 else returncode


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """SIGINT/SIGTERM ignored for the block (a second Ctrl-C must not cut a teardown short);
    a no-op outside the main thread, where handlers cannot be set."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in saved.items():
            signal.signal(s, h)


class _Pump(threading.Thread):
    """Copies one of the program's pipes to ``sink`` (if any) line by line, keeping a copy, and
    sets ``ready`` at the first line matching ``pattern``."""

    def __init__(self, pipe: IO[bytes], sink: IO[bytes] | None, pattern: re.Pattern[str] | None,
                 ready: threading.Event) -> None:
        super().__init__(name="usocket-lab-run-pump", daemon=True)
        self.pipe, self.sink, self.pattern, self.ready = pipe, sink, pattern, ready
        self.chunks: list[bytes] = []

    def run(self) -> None:
        for line in iter(self.pipe.readline, b""):
            self.chunks.append(line)
            if self.sink is not None:
                with contextlib.suppress(OSError, ValueError):
                    self.sink.write(line)
                    self.sink.flush()
            if self.pattern is not None and self.pattern.search(line.decode(errors="replace")):
                self.ready.set()

    def text(self) -> str:
        return b"".join(self.chunks).decode(errors="replace")


class LabRunner:
    """A lab whose client namespace runs programs under the hijacker, one :meth:`run` at a time.

    ``with LabRunner(mode) as runner: result = runner.run(["examples/urllib_get.py"])``. The lab
    is built with the kernel's TCP/UDP egress REJECTed in the client namespace; :meth:`close`
    (the with-block's end) tears it down and returns what was left behind (see
    :meth:`Lab.close_and_audit`: must be empty). ``lab``: a built lab to use instead (its owner
    tears it down; :meth:`close` leaves it alone). ``stream=True`` copies the program's and the
    peers' output to this process's stdout/stderr as it comes, and the runner's notes to stderr.
    """

    def __init__(self, mode: str = "shared", *, stream: bool = False, lab: Lab | None = None,
                 cwd: str | None = None) -> None:
        if mode not in ("shared", "own"):
            raise ValueError(f"mode must be shared or own, not {mode!r}")
        self.mode, self.stream, self.cwd = mode, stream, cwd
        self.lab = lab if lab is not None else Lab()
        self._owns_lab = lab is None
        self.leftovers: list[str] = []
        self._notes: list[str] = []

    # -- lifecycle -----------------------------------------------------------------------------
    def __enter__(self) -> LabRunner:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> LabRunner:
        lab = self.lab
        try:
            if self._owns_lab:
                lab.build()
            lab.block_kernel_egress()
        except BaseException:
            self.close()
            raise
        self._say(f"lab {lab.tag} is up: the program runs in {lab.client_ns}, on the stack at "
                  f"{stack_ip(lab, self.mode)} ({self.mode} mode; the kernel's TCP/UDP egress there is REJECTed); "
                  f"servers in {lab.server_ns} at {lab.server_ip} ({lab.server_name})")
        self._say("  " + " ".join(f"{k}={v}" for k, v in self.variables().items()))
        for path, (size, digest) in lab.http_files.items():
            self._say(f"  {path:<12} {size:>9} B  sha256 {digest}")
        return self

    def close(self) -> list[str]:
        """Tear the lab down (signals deferred meanwhile); returns and remembers the leftovers."""
        if not self._owns_lab:
            return []
        with _signals_deferred():
            problems = self.lab.close_and_audit()
        # A rule the program left in the client namespace vanished with it; only say so.
        for p in problems:
            self._say(("note: " if p.startswith("rule in ") else "LEFT BEHIND: ") + p)
        self.leftovers = [p for p in problems if not p.startswith("rule in ")]
        if not self.leftovers:
            self._say(f"lab {self.lab.tag} torn down, nothing left behind")
        return self.leftovers

    # -- what a program gets -------------------------------------------------------------------
    def variables(self) -> dict[str, str]:
        return lab_variables(self.lab, self.mode)

    def fields(self, port: int | None = None) -> dict[str, str]:
        """The ``{name}`` replacements of a peer command."""
        f = {k[4:].lower(): v for k, v in self.variables().items()}
        f.update(client_ns=self.lab.client_ns, server_ns=self.lab.server_ns, stack_ip=f["client_ip"])
        if port is not None:
            f["port"] = str(port)
        return f

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("USOCKET_DEFAULT_RUNTIME", None)  # the test suite's guard: a hijacked program starts its stack
        for k in [k for k in env if k.startswith("USOCKET_HIJACK")]:
            del env[k]
        env.update(self.lab.env(self.mode))
        env.update(self.variables())
        env["PYTHONUNBUFFERED"] = "1"
        if self.lab.ca_file:  # the default CAs of OpenSSL (ssl.create_default_context) and of requests
            env["SSL_CERT_FILE"] = env["REQUESTS_CA_BUNDLE"] = self.lab.ca_file
        return env

    def argv(self, program: Sequence[str], hijack_opts: Sequence[str] = ()) -> list[str]:
        """``python -m usocket_hijack OPTS PROGRAM ARGS`` (a script named ``-x`` gets ``--`` first)."""
        program = list(program)
        if not program:
            raise ValueError("no program given")
        head = program[0]
        if head.startswith("-") and not head.startswith(("-m", "-c")):
            program = ["--", *program]
        return [sys.executable, "-m", "usocket_hijack", *hijack_opts, *program]

    # -- running -------------------------------------------------------------------------------
    def run(self, program: Sequence[str], *, hijack_opts: Sequence[str] = (), peers: Sequence[str] = (),
            port: int | None = None, ready: str | None = None, timeout: float | None = None,
            ready_timeout: float = 20.0, peer_timeout: float = 60.0) -> RunResult:
        """Run ``program`` (``[script, args...]``, ``["-m", module, ...]`` or ``["-c", code, ...]``)
        hijacked in the client namespace; with ``peers``, run each in the server namespace once
        it listens (``port``, else the port in the first command, or the ``ready`` regex), then
        stop it with SIGINT. ``timeout`` bounds the whole run (then the program is stopped as
        for a peer run and the status is 124). KeyboardInterrupt stops the program, then propagates."""
        lab = self.lab
        if peers and ready is None and port is None:
            port = next((p for p in map(port_in_command, peers) if p is not None), None)
            if port is None:
                raise ValueError("a peer needs --port N or --ready REGEX (no {client_ip}:PORT in the command)")
        pattern = re.compile(ready) if ready else None
        self._notes = []
        rejected_before = lab.kernel_egress_rejected()
        argv = self.argv(program, hijack_opts)
        self._say(f"running: ip netns exec {lab.client_ns} python -m usocket_hijack "
                  f"{shlex.join([*hijack_opts, *program])}")
        t0 = time.monotonic()
        deadline = None if timeout is None else t0 + timeout
        ready_event = threading.Event()
        proc = lab.popen(lab.client_ns, argv, env=self.environment(), cwd=self.cwd,
                         stdin=None if self.stream else subprocess.DEVNULL,  # the terminal's, from the CLI
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.stdout is not None and proc.stderr is not None
        pumps = [_Pump(proc.stdout, sys.stdout.buffer if self.stream else None, pattern, ready_event),
                 _Pump(proc.stderr, sys.stderr.buffer if self.stream else None, pattern, ready_event)]
        for p in pumps:
            p.start()
        peer_results: list[PeerResult] = []
        listened = False
        stopped_by_us = timed_out = False
        try:
            if peers:
                listen_deadline = time.monotonic() + ready_timeout
                if deadline is not None:
                    listen_deadline = min(listen_deadline, deadline)
                if pattern is not None:
                    listened = self._wait_ready_line(proc, ready_event, listen_deadline)
                else:
                    assert port is not None
                    listened = self._wait_listening(proc, port, listen_deadline)
                if listened:
                    fields = self.fields(port)
                    for cmd in peers:
                        peer_results.append(self._run_peer(format_command(cmd, fields), peer_timeout))
                elif proc.poll() is None:
                    self._say(f"the program did not listen within {ready_timeout:g} s: stopping it")
                else:
                    self._say("the program exited before it listened")
                stopped_by_us = self._stop(proc)
            else:
                try:
                    proc.wait(timeout=None if deadline is None else max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    self._say(f"timeout ({timeout:g} s): stopping the program")
                    timed_out = stopped_by_us = self._stop(proc)
        except BaseException:  # Ctrl-C, SIGTERM, an error: the program must not outlive the run
            with _signals_deferred():
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=SELF_INTERRUPT_WAIT)  # a terminal's Ctrl-C reached it too
                self._stop(proc)
            self._say(f"program stopped: exit status {exit_status(proc.returncode)}")
            raise
        finally:
            for p in pumps:
                p.join(timeout=5.0)
        code = proc.wait()
        elapsed = time.monotonic() - t0
        status = exit_status(code)
        if stopped_by_us and code in (-signal.SIGINT, 128 + signal.SIGINT):
            status = 0  # it died of the SIGINT we sent: a clean stop
        if timed_out:
            status = 124
        elif status == 0 and peers and not listened:
            status = 1
        elif status == 0:
            status = next((p.returncode for p in peer_results if p.returncode != 0), 0)
        rejected = lab.kernel_egress_rejected() - rejected_before
        rules = lab.foreign_rules(lab.client_ns)
        self._say(f"program exit status {exit_status(code)} after {elapsed:.2f} s; "
                  f"the kernel's REJECT rules caught {rejected} packet(s)")
        if rules:
            self._say("usocket rules still in the client namespace: " + "; ".join(rules))
        return RunResult(returncode=status, program_returncode=code, stdout=pumps[0].text(), stderr=pumps[1].text(),
                         rejected=rejected, leftover_rules=rules, peers=peer_results, listened=listened,
                         elapsed=elapsed, notes=list(self._notes))

    def _wait_ready_line(self, proc: subprocess.Popen[Any], ready: threading.Event, deadline: float) -> bool:
        while not ready.wait(timeout=0.05):
            if proc.poll() is not None or time.monotonic() > deadline:
                return False
        return True

    def _listener_rule(self, port: int) -> bool:
        """Whether the stack's NFQUEUE rule for a TCP listener on ``port`` is in place (shared mode)."""
        out = self.lab.run(self.lab.client_ns, ["iptables", "-w", "-S", "USOCKET"], check=False).stdout
        return any(re.search(rf"-p tcp .*--dport {port}\b", line) and " -s " not in line
                   for line in out.splitlines())

    def _probe(self, port: int) -> bool:
        """A kernel TCP connect from the server namespace to the stack's ``port``, closed at once."""
        import socket  # the kernel's: this process is not hijacked

        addr = (stack_ip(self.lab, self.mode), port)

        def connect() -> bool:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.settimeout(PROBE_TIMEOUT)
                try:
                    s.connect(addr)
                except OSError:
                    return False
                return True

        return self.lab.call(self.lab.server_ns, connect)

    def _wait_listening(self, proc: subprocess.Popen[Any], port: int, deadline: float) -> bool:
        """Until ``port`` accepts a connection from the server namespace (bounded by ``deadline``)."""
        rule_seen = self.mode != "shared"
        while proc.poll() is None and time.monotonic() < deadline:
            if not rule_seen:
                rule_seen = self._listener_rule(port)
            if rule_seen and self._probe(port):
                return True
            time.sleep(0.02)  # polling is the only way to see a userland listener from outside
        return False

    def _run_peer(self, command: str, timeout: float) -> PeerResult:
        self._say(f"peer: ip netns exec {self.lab.server_ns} sh -c {shlex.quote(command)}")
        env = dict(os.environ, **self.variables())
        try:
            p = self.lab.run(self.lab.server_ns, ["sh", "-c", command], check=False, timeout=timeout, env=env)
            result = PeerResult(command, p.returncode, p.stdout, p.stderr)
        except subprocess.TimeoutExpired as e:
            out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
            result = PeerResult(command, 124, out, f"peer command timed out after {timeout:g} s\n")
        if self.stream:
            sys.stdout.write(result.stdout)
            sys.stdout.flush()
            sys.stderr.write(result.stderr)
            sys.stderr.flush()
        self._say(f"peer exit status {result.returncode}")
        return result

    def _stop(self, proc: subprocess.Popen[Any]) -> bool:
        """SIGINT (as Ctrl-C), then SIGTERM, then SIGKILL, each after a bounded wait. True if
        a signal was sent (the program was still running)."""
        if proc.poll() is not None:
            return False
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
            try:
                proc.wait(timeout=STOP_WAIT)
                break
            except subprocess.TimeoutExpired:
                self._say(f"the program ignored {signal.Signals(sig).name}")
        return True

    def _say(self, message: str) -> None:
        self._notes.append(message)
        if self.stream:
            print(f"usocket.lab run: {message}", file=sys.stderr, flush=True)


def run_program(program: Sequence[str], mode: str = "shared", *, stream: bool = False,
                **kw: Any) -> tuple[RunResult, list[str]]:
    """One lab, one program: ``(result, leftovers)`` (leftovers must be empty); ``kw`` as for
    :meth:`LabRunner.run`."""
    with LabRunner(mode, stream=stream) as runner:
        result = runner.run(program, **kw)
    return result, runner.leftovers


# -- the command line ---------------------------------------------------------------------------
def _split(argv: list[str]) -> tuple[list[str], list[str]]:
    """Our options and the program (after ``--``, or from the first non-option on). A
    ``--hijack-opt`` value may itself start with ``-``: it is glued to the option first."""
    if "--" in argv:
        i = argv.index("--")
        ours, program = argv[:i], argv[i + 1:]
    else:
        ours, program = argv, []
    glued: list[str] = []
    it = iter(ours)
    for a in it:
        if a == "--hijack-opt":
            value = next(it, None)
            glued.append(a if value is None else f"--hijack-opt={value}")
        else:
            glued.append(a)
    return glued, program


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m usocket.lab run", usage=USAGE,
                                description="Run an unmodified Python program in the lab under usocket_hijack.")
    p.add_argument("--mode", choices=["shared", "own"], default="shared",
                   help="the stack shares the client's address (default) or has its own")
    p.add_argument("--hijack-opt", action="append", default=[], metavar="OPT",
                   help="an option for usocket_hijack, e.g. --hijack-opt --stats (repeatable; "
                        "a value with spaces is split like a shell would)")
    p.add_argument("--peer", action="append", default=[], metavar="CMD",
                   help="run CMD in the server namespace once the program listens, then stop it (repeatable)")
    p.add_argument("--port", type=int, help="the TCP port the program listens on (default: from the --peer CMD)")
    p.add_argument("--ready", metavar="REGEX", help="the program is ready at an output line matching REGEX")
    p.add_argument("--ready-timeout", type=float, default=20.0, help="seconds to wait for it (default 20)")
    p.add_argument("--timeout", type=float, help="stop the program after this many seconds (status 124)")
    p.add_argument("program", nargs="*", help="-- script.py [args] | -m module [args] | -c code [args]")
    return p


def _sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through the runner, which stops the program and tears down


def main(argv: list[str] | None = None) -> int:
    ours, program = _split(list(sys.argv[1:] if argv is None else argv))
    p = parser()
    args = p.parse_args(ours)
    program = program or args.program
    if not program:
        p.error("no program given (put it after --)")
    opts = [o for value in args.hijack_opt for o in shlex.split(value)]
    if args.peer and args.port is None and args.ready is None and all(port_in_command(c) is None for c in args.peer):
        p.error("--peer needs --port N or --ready REGEX when the command has no {client_ip}:PORT")
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, _sigterm)
        previous[signal.SIGINT] = signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with `&`
    status = 1
    try:
        with LabRunner(args.mode, stream=True) as runner:
            result = runner.run(program, hijack_opts=opts, peers=args.peer, port=args.port, ready=args.ready,
                                timeout=args.timeout, ready_timeout=args.ready_timeout)
            status = result.returncode
        if runner.leftovers and status == 0:
            status = 1
    except KeyboardInterrupt:
        print("usocket.lab run: interrupted", file=sys.stderr)
        status = 128 + signal.SIGINT
    except (LabError, ValueError) as e:
        print(f"usocket.lab run: error: {e}", file=sys.stderr)
        status = 1
    except SystemExit as e:
        status = e.code if isinstance(e.code, int) else 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return status


__all__: list[str] = ["LabRunner", "PeerResult", "RunResult", "lab_variables", "main", "run_program", "stack_ip"]
