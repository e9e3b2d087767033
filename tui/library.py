"""The sources panel: what is indexed (chunks, when), and forgetting a source (the file itself stays)."""

from __future__ import annotations

from pathlib import Path

from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from assistant.grounding import user_errors
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
        self.sources = self.app.assistant.documents.list_sources()
        table = self.query_one(DataTable)
        table.clear(columns=True)
        table.add_columns("chunks", "indexed", "source")
        for source in self.sources:
            indexed = source["indexed_at"][:16].replace("T", " ")
            table.add_row(source["chunks"], indexed, source["source"], key=source["source"])
        total = sum(s["chunks"] for s in self.sources)
        self.query_one("#library-total", Static).update(
            f"{len(self.sources)} documents, {total} chunks"
            if self.sources
            else "Nothing is indexed yet: Ctrl+P, then “Index a folder”."
        )

    def action_forget(self) -> None:
        if not self.sources:
            return
        path = self.sources[self.query_one(DataTable).cursor_row]["source"]

        def confirmed(answer: str | None) -> None:
            if answer == "forget":
                with reported(self), user_errors():
                    self.app.assistant.documents.index.forget([Path(path)])
                    self.notify(f"Forgot {path}.")
                self.refresh_sources()
                self.app.index_changed()

        options = [("keep", "No, keep it"), ("forget", f"Yes, forget {path}")]
        self.app.push_screen(PickScreen("Remove this source from the index?", options, "keep"), confirmed)
