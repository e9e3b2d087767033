"""Documents in the app: index a folder from the UI, answers with their sources, citations, forgetting."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from test_tui_chat import FALCON, ask, make_app, run_command, seed_conversation
from textual.widgets import DataTable, OptionList, ProgressBar
from textual.widgets._markdown import MarkdownParagraph

from retrieval import indexer
from tui.composer import Composer
from tui.indexing import IndexScreen
from tui.library import SourcesScreen


def test_index_a_folder_from_the_app_then_answer_from_it(home: Path, engine, tmp_path: Path, monkeypatch):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "falcon.md").write_text(
        "# Falcon\n\nProject Falcon is led by Ada Lovelace, who works in Zurich.\n"
    )
    (docs / "freedonia.txt").write_text("The capital of Freedonia is Fredville.\n")
    (docs / "broken.txt").write_bytes(bytes(range(256)) * 8)
    app = make_app(home, engine, max_tokens=12, folder=docs)
    # the real indexer, held at its start until the test has typed into the chat: on a fast machine three
    # small files would otherwise be indexed before the test could look
    release = threading.Event()
    update = indexer.update

    def held_update(*args, **kwargs):
        assert release.wait(60)
        return update(*args, **kwargs)

    monkeypatch.setattr(indexer, "update", held_update)

    async def scenario() -> None:
        async with app.run_test(size=(80, 24)) as pilot:
            assert app.chat.status.index == "empty"
            await run_command(pilot, "Index a folder")
            screen = app.screen
            assert isinstance(screen, IndexScreen)
            assert screen.query_one("#index-path").value == str(docs)
            await pilot.press("enter")
            assert screen.running
            await pilot.press("escape")  # back to the chat: indexing goes on in the background
            composer = app.chat.query_one(Composer)
            await pilot.press("x", "y", "z")  # and the app stays responsive meanwhile
            assert screen.running and composer.text == "xyz"
            release.set()
            while screen.running:
                await pilot.pause(0.1)
            composer.clear()
            assert app.chat.status.index == "2 docs, 2 chunks" and app.chat.status.indexing == ""
            await run_command(pilot, "Index a folder")  # its progress and outcome are kept
            assert app.screen is screen
            assert screen.query_one(ProgressBar).percentage == 1
            assert "3/3 files · 2 chunks" in str(screen.query_one("#index-counts").render())
            summary = str(screen.query_one("#index-summary").render())
            assert "indexed 2 files" in summary and f"{docs / 'broken.txt'}: binary" in summary
            await pilot.press("escape")

            view = await ask(pilot, app, "Who leads Project Falcon?")
            assert [s.source for s in view.turn.sources][:1] == [str(docs / "falcon.md")]
            options = app.chat.query_one("#source-list", OptionList)
            assert app.chat.query_one("#sources").display
            assert "[1] falcon.md · § Falcon" in str(options.get_option_at_index(0).prompt)
            assert "Ada Lovelace" in str(app.chat.query_one("#source-chunk").render())

            await run_command(pilot, "Sources")
            assert isinstance(app.screen, SourcesScreen)
            table = app.screen.query_one(DataTable)
            assert table.row_count == 2
            paths = [table.get_row_at(i)[2] for i in range(2)]
            table.move_cursor(row=paths.index(str(docs / "freedonia.txt")))
            await pilot.press("d")  # forget it: a confirmation, then the table and status bar update
            await pilot.press("down", "enter")
            await pilot.pause()
            assert [table.get_row_at(i)[2] for i in range(table.row_count)] == [str(docs / "falcon.md")]
            assert app.chat.status.index == "1 doc, 1 chunk"
        assert (docs / "freedonia.txt").exists()  # forgetting leaves the file alone

    asyncio.run(scenario())


def test_citations_are_highlighted_links_to_their_source(home: Path):
    seed_conversation(home)
    app = make_app(home)

    async def scenario() -> None:
        async with app.run_test(size=(80, 24)) as pilot:
            first = app.chat.answers()[0]
            paragraph = first.query_one(MarkdownParagraph)
            content = paragraph._content
            start = content.plain.index("[1]")
            styled = [str(span.style) for span in content.spans if span.start <= start < span.end]
            assert any("cite:1" in s for s in styled)  # a link to source 1...
            assert paragraph.link_style.bold and paragraph.link_style.bgcolor  # ...that stands out

            await pilot.click(paragraph, offset=(start + 1, 0))
            await pilot.pause()
            assert app.focused is app.chat.query_one("#source-list")
            assert app.chat.query_one("#source-list", OptionList).highlighted == 0
            assert FALCON["text"] in str(app.chat.query_one("#source-chunk").render())
            await pilot.press("x", "down", "enter")  # flag the source as irrelevant to this answer
            flags = app.assistant.feedback_store.get(first.turn.interaction_id).feedback
            assert [(f.kind, f.text, f.target) for f in flags] == [("flag", "irrelevant", FALCON["id"])]

            second = app.chat.answers()[1]
            second.focus()
            await pilot.pause()
            options = app.chat.query_one("#source-list", OptionList)
            assert options.option_count == 2 and "[2] budget.pdf · p. 4" in str(
                options.get_option_at_index(1).prompt
            )
            await pilot.press("t")  # the trace: reasoning and every step
            trace = str(second.query_one(".trace-text").render())
            assert "Two parts" in trace and "search" in trace and "query: Falcon budget" in trace

    asyncio.run(scenario())
