"""House rules that keep the code base readable: lint-clean, and layers that only look down."""
from __future__ import annotations

import ast
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PKG = ROOT / "usocket"

# Which top-level parts of usocket each part may import at run time (TYPE_CHECKING imports are
# free). Wire formats know nothing; protocols know wire formats; links and the diversion are
# edges that never import protocol state machines (the diversion implements the stack's
# FlowObserver and PortAllocator interfaces).
ALLOWED = {
    "core": {"core"},
    "wire": {"wire", "core"},
    "proto": {"proto", "wire", "core", "config"},
    "link": {"link", "wire", "core", "netns"},
    "divert": {"divert", "core", "netns", "stack", "proto", "wire"},
    "stack": {"stack", "proto", "core", "config", "wire", "introspect"},
    # reading the stack's state (netstat-like rows): protocol objects, never the runtime
    "introspect": {"introspect", "proto", "wire", "core", "config"},
    # the control endpoint of a running process (served on a thread, asks the runtime)
    "control": {"control", "introspect", "core", "wire"},
    "config": {"config", "wire"},
    # the socket facade sits on the runtime (an edge) and talks to protocol objects on its thread
    "facade": {"facade", "runtime", "resolver", "stack", "proto", "wire", "core", "config"},
    # the hacking API (issue 7) reaches into the stack's layers; it is called with a stack or a
    # runtime (used duck-typed, not imported) and a facade socket, and nothing below imports it
    "hack": {"hack", "stack", "proto", "wire", "core", "config"},
}
# usocket._stdsocket is not a layer: it is the kernel's socket module, bound in usocket/__init__.py
# before anything can replace sys.modules["socket"] (the hijacker), so every edge may use it.
ALWAYS = {"_stdsocket"}


def runtime_imports(path: pathlib.Path) -> set[str]:
    """usocket sub-packages/modules imported by ``path`` outside ``if TYPE_CHECKING:`` blocks."""
    tree = ast.parse(path.read_text())
    rel = path.relative_to(PKG).with_suffix("").parts
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.ImportFrom):
                if child.level:  # relative: resolve against the module's package
                    base = list(rel[:-1])[: len(rel) - child.level]
                    parts = base + (child.module.split(".") if child.module else [])
                    if not parts:  # "from .. import x" at the top: x is the module
                        parts = [a.name for a in child.names][:1]
                    found.add(parts[0])
                elif child.module and child.module.startswith("usocket."):
                    found.add(child.module.split(".")[1])
            elif isinstance(child, ast.Import):
                for a in child.names:
                    if a.name.startswith("usocket."):
                        found.add(a.name.split(".")[1])
            visit(child)

    visit(tree)
    return found


@pytest.mark.parametrize("part", sorted(ALLOWED))
def test_layers_only_import_downwards(part: str) -> None:
    files = sorted((PKG / part).rglob("*.py")) if (PKG / part).is_dir() else [PKG / f"{part}.py"]
    assert files
    bad = {str(f.relative_to(ROOT)): sorted(runtime_imports(f) - ALLOWED[part] - ALWAYS) for f in files}
    bad = {k: v for k, v in bad.items() if v}
    assert not bad, f"{part} imports above its layer: {bad}"


def test_every_module_imports_on_its_own() -> None:
    """No import cycles: each module imports cleanly in a fresh interpreter as the first import."""
    mods = sorted("usocket." + ".".join(p.relative_to(PKG).with_suffix("").parts).replace(".__init__", "")
                  for p in PKG.rglob("*.py") if p.name != "__main__.py")
    code = "import importlib, sys\nfor m in sys.argv[1:]:\n    importlib.import_module(m)\n"
    for m in mods:  # one interpreter per module, so each is imported first, as users might
        r = subprocess.run([sys.executable, "-c", code, m], capture_output=True, text=True)
        assert r.returncode == 0, f"{m}: {r.stderr[-2000:]}"


@pytest.mark.skipif(shutil.which("ruff") is None and not (pathlib.Path(sys.executable).parent / "ruff").exists(),
                    reason="ruff not installed (./dev.sh installs it)")
def test_ruff_is_clean() -> None:
    ruff = str(pathlib.Path(sys.executable).parent / "ruff")
    if not pathlib.Path(ruff).exists():
        ruff = "ruff"
    r = subprocess.run([ruff, "check", "usocket", "usocket_hijack", "tests"], cwd=ROOT, capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stdout[-4000:]


@pytest.mark.skipif(not (pathlib.Path(sys.executable).parent / "mypy").exists(),
                    reason="mypy not installed (./dev.sh installs it)")
def test_mypy_is_clean() -> None:
    r = subprocess.run([str(pathlib.Path(sys.executable).parent / "mypy"), "usocket"], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-4000:]
