# usocket_hijack's child injector. A hijacked program's environment puts this directory first on
# PYTHONPATH, so `site` imports this file at the start of every Python child process. It first
# runs the sitecustomize it shadows (if any), then hijacks the child when the parent asked for it
# (USOCKET_HIJACK=1) and the child's interpreter has the parent's ABI; any other interpreter
# (another Python version, Python 2 included) is left alone without a word. Keep this file
# importable by every Python version: no f-strings, no annotations.
# ruff: noqa: UP031, UP032
# mypy: ignore-errors
import os
import sys


def _usocket_report(what, exc):
    try:
        sys.stderr.write("%s; set PYTHONVERBOSE for traceback:\n%s: %s\n" % (what, type(exc).__name__, exc))
    except Exception:
        pass


def _usocket_chain():
    here = os.path.dirname(os.path.abspath(__file__))
    me = sys.modules.get("sitecustomize")
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    sys.modules.pop("sitecustomize", None)
    try:
        import sitecustomize  # noqa: F401 - the one this file shadows, if there is one
    except ImportError as exc:
        if getattr(exc, "name", "sitecustomize") != "sitecustomize":
            _usocket_report("Error in sitecustomize", exc)
        sys.modules["sitecustomize"] = me
    except Exception as exc:  # as site.py does: report and go on
        _usocket_report("Error in sitecustomize", exc)
        sys.modules["sitecustomize"] = me


def _usocket_abi():
    impl = getattr(sys, "implementation", None)
    return "%s%s" % (getattr(impl, "cache_tag", None), getattr(sys, "abiflags", ""))


def _usocket_hijack():
    env = os.environ
    if env.get("USOCKET_HIJACK") != "1" or env.get("USOCKET_HIJACK_ABI") != _usocket_abi():
        return
    for p in env.get("USOCKET_HIJACK_PATH", "").split(os.pathsep):
        if p and p not in sys.path:
            sys.path.append(p)
    try:
        import usocket_hijack
        usocket_hijack.install_from_env()
    except Exception as exc:
        _usocket_report("usocket_hijack: this process is NOT hijacked", exc)


_usocket_chain()
_usocket_hijack()
