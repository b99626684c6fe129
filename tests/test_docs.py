"""The documentation cannot rot silently: every relative link in README.md and docs/*.md points
at a file or folder that exists, and every test a link names (``file.py::test`` or
``file.py::Class::test`` in its text, as in docs/compliance.md) exists in that file."""
from __future__ import annotations

import ast
import functools
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
LINK = re.compile(r"\[([^\]]*)\]\(([^)\s]+)\)")
TEST_REF = re.compile(r"([\w./-]+\.py)::([\w:]+)")


def links(doc: pathlib.Path) -> list[tuple[str, str]]:
    text = re.sub(r"```.*?```", "", doc.read_text(), flags=re.S)  # code blocks hold no links
    return [(label, target) for label, target in LINK.findall(text)
            if not re.match(r"^(https?|mailto):|^#", target)]


@functools.cache
def _module(path: pathlib.Path) -> ast.Module:
    return ast.parse(path.read_text())


def defines(path: pathlib.Path, dotted: str) -> bool:
    """Whether ``path`` defines ``Class::method`` or ``function`` (at the top level)."""
    body: list[ast.stmt] = _module(path.resolve()).body
    for name in dotted.split("::"):
        found = [n for n in body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                 and n.name == name]
        if not found:
            return False
        body = found[0].body
    return True


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_exist(doc: pathlib.Path) -> None:
    missing = [t for _, t in links(doc) if not (doc.parent / t.split("#")[0]).exists()]
    assert not missing, f"{doc.name}: links to missing files: {missing}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_linked_tests_exist(doc: pathlib.Path) -> None:
    bad = []
    for label, target in links(doc):
        ref = TEST_REF.search(label)
        if ref is None:
            continue
        path = doc.parent / target.split("#")[0]
        if path.name != pathlib.Path(ref.group(1)).name or not path.is_file() or not defines(path, ref.group(2)):
            bad.append(f"{label} -> {target}")
    assert not bad, f"{doc.name}: tests named in links do not exist: {bad}"


def test_the_compliance_table_links_a_test_for_most_yes_rows() -> None:
    """A "yes" row carries a test link unless its note says why none can exist."""
    doc = ROOT / "docs" / "compliance.md"
    rows = [ln for ln in doc.read_text().splitlines() if ln.startswith("|") and "**yes**" in ln]
    assert len(rows) > 100
    unlinked = [r for r in rows if "](../tests/" not in r
                and not any(w in r for w in ("never", "no code path", "none are sent", "nothing to test"))]
    assert not unlinked, unlinked
    assert sum("](../tests/" in ln for ln in rows) >= len(rows) - 10


def test_the_checker_catches_a_broken_reference(tmp_path: pathlib.Path) -> None:
    (tmp_path / "t.py").write_text("class TestA:\n    def test_b(self):\n        pass\n\ndef test_c():\n    pass\n")
    assert defines(tmp_path / "t.py", "TestA::test_b") and defines(tmp_path / "t.py", "test_c")
    assert not defines(tmp_path / "t.py", "test_b") and not defines(tmp_path / "t.py", "TestA::test_c")
    doc = tmp_path / "d.md"
    doc.write_text("[`t.py::test_c`](t.py) [x](missing.md) [y](https://example.org) ```[z](nope)```")
    assert links(doc) == [("`t.py::test_c`", "t.py"), ("x", "missing.md")]
