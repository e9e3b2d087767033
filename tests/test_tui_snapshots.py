"""Snapshots of the app's main screens at 80×24, dark and light.

Their content is fixed (a seeded conversation, a fixed folder), never model-generated. After a deliberate
change to the look, regenerate them with `pytest tests/test_tui_snapshots.py --snapshot-update`.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_tui_chat import make_app, run_command, seed_conversation


def steps(*keys: str, theme: str | None = None, then=None):
    """A `run_before` that sets the theme, presses `keys`, runs `then`, and stops cursors blinking."""

    async def run_before(pilot) -> None:
        if theme:
            pilot.app.theme = theme
        await pilot.press(*keys)
        if then is not None:
            await then(pilot)
        await pilot.pause()
        for screen in pilot.app.screen_stack:
            for widget in screen.query("Input, TextArea"):
                widget.cursor_blink = False  # a blinking cursor would make the picture depend on timing
        await pilot.pause()

    return run_before


@pytest.mark.parametrize("theme", ["textual-dark", "textual-light"])
def test_conversation_with_a_selected_answer(snap_compare, home: Path, engine, theme: str):
    seed_conversation(home)
    assert snap_compare(
        make_app(home, engine), run_before=steps("escape", theme=theme), terminal_size=(80, 24)
    )


def test_welcome_and_strategy_picker(snap_compare, home: Path, engine):
    assert snap_compare(make_app(home, engine), run_before=steps("f2"), terminal_size=(80, 24))


def test_correction_dialog(snap_compare, home: Path, engine):
    seed_conversation(home)
    assert snap_compare(make_app(home, engine), run_before=steps("escape", "e"), terminal_size=(80, 24))


def test_index_screen(snap_compare, home: Path, engine, tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a relative folder: the same picture on every machine
    docs = Path("docs")
    (docs / "papers").mkdir(parents=True)
    (docs / "falcon.md").write_text("# Falcon\n")
    (docs / "papers" / "attention.pdf").write_bytes(b"%PDF-1.4\n")

    async def open_index(pilot) -> None:
        await run_command(pilot, "Index a folder")
        tree = pilot.app.screen.query_one("#index-tree")
        while not tree.root.children:  # the picker reads the folder in the background
            await pilot.pause(0.05)

    app = make_app(home, engine, folder=docs)
    assert snap_compare(
        app,
        run_before=steps(then=open_index),
        terminal_size=(80, 24),
    )
