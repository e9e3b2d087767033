"""The house rules of the code: which package may import which (read from the source, not by running it)."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT

PACKAGES = ("assistant", "retrieval", "trainer", "tui")


def imported_packages(path: Path) -> set[str]:
    """The project packages a module imports, at the top or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        found |= {name.split(".")[0] for name in names} & set(PACKAGES)
    return found


def imports_of(package: str, skip: str | None = None) -> dict[str, set[str]]:
    return {
        str(path.relative_to(ROOT)): imported_packages(path) - {package}
        for path in (ROOT / package).rglob("*.py")
        if skip is None or skip not in path.parts
    }


def test_retrieval_imports_none_of_the_others():
    assert {m: p for m, p in imports_of("retrieval").items() if p} == {}


def test_the_assistant_imports_neither_trainer_nor_tui_but_in_its_command():
    bad = {m: p & {"trainer", "tui"} for m, p in imports_of("assistant", skip="cli").items()}
    assert {m: p for m, p in bad.items() if p} == {}


def test_the_terminal_app_calls_the_assistant_only():
    assert {m: p for m, p in imports_of("tui").items() if p - {"assistant"}} == {}


def test_the_server_is_a_face_of_the_assistant_api_only():
    server = {m: p for m, p in imports_of("assistant").items() if "/server/" in m}
    assert server and all(not p for p in server.values())  # nothing outside the assistant package
