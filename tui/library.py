"""The sources panel: what is indexed (chunks, when), and forgetting a source (the file itself stays)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from tui.dialogs import PickScreen
from tui.errors import reported


class SourcesScreen(Screen):
    BINDINGS = [Binding("escape", "app.pop_screen", "Back"), Binding("delete,d", "forget", "Forget")]

    def compose(self) -> ComposeResult:
        yield Static("Indexed sources", classes="screen-title")
        yield DataTable(cursor_type="row", zebra_stripes=True, id="library")
        yield Static(id="library-total", classes="muted")
        yield Footer()

    def on_mount(self) -> None:
        self.refresh_sources()

    def refresh_sources(self) -> None:
        self.sources = self.app.assistant.sources()
        table = self.query_one(DataTable)
        table.clear(columns=True)
        table.add_columns("chunks", "indexed", "source")
        for doc in self.sources:
            indexed = datetime.fromtimestamp(doc.indexed_at).strftime("%Y-%m-%d %H:%M")
            table.add_row(doc.chunks, indexed, doc.path, key=doc.path)
        total = sum(doc.chunks for doc in self.sources)
        self.query_one("#library-total", Static).update(
            f"{len(self.sources)} documents, {total} chunks"
            if self.sources
            else "Nothing is indexed yet: Ctrl+P, then “Index a folder”."
        )

    def action_forget(self) -> None:
        if not self.sources:
            return
        path = self.sources[self.query_one(DataTable).cursor_row].path

        def confirmed(answer: str | None) -> None:
            if answer == "forget":
                with reported(self):
                    self.app.assistant.forget([Path(path)])
                    self.notify(f"Forgot {path}.")
                self.refresh_sources()
                self.app.index_changed()

        options = [("keep", "No, keep it"), ("forget", f"Yes, forget {path}")]
        self.app.push_screen(PickScreen("Remove this source from the index?", options, "keep"), confirmed)
