"""The sources panel: the cited sources of the selected answer, and the chunk text of the highlighted one."""

from __future__ import annotations

from typing import Any

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.content import Content
from textual.widgets import OptionList, Static
from textual.widgets.option_list import Option

from assistant.sources import Source


class SourcesPanel(Vertical):
    """Lists an answer's sources; highlighting one shows its path, location and chunk text."""

    BINDINGS = [Binding("x", "flag", "Flag source")]

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.view: Any = None  # the AnswerView whose sources are shown
        self.sources: list[Source] = []

    def compose(self) -> ComposeResult:
        yield Static("Sources", classes="panel-title")
        yield OptionList(id="source-list")
        with VerticalScroll(id="source-chunk-scroll"):
            yield Static(id="source-chunk")

    def show(self, view: Any, number: int | None = None) -> None:
        """List the sources of `view` (an AnswerView); highlight the one cited as `number`, else the first."""
        self.view = view
        self.sources = sources = view.turn.sources
        options = self.query_one(OptionList)
        options.clear_options()
        options.add_options(Option(s.label(), id=str(s.n)) for s in sources)
        self.display = bool(sources)
        if sources:
            ids = [str(s.n) for s in sources]
            options.highlighted = ids.index(str(number)) if str(number) in ids else 0

    def on_option_list_option_highlighted(self, event: OptionList.OptionHighlighted) -> None:
        source = self.sources[event.option_index]
        header = source.source + (f"\n{source.location}" if source.location else "")
        self.query_one("#source-chunk", Static).update(Content(f"{header}\n\n{source.text}"))

    def action_flag(self) -> None:
        """Flag the highlighted source as wrong or irrelevant for this answer (feedback for training)."""
        index = self.query_one(OptionList).highlighted
        if self.view is not None and index is not None:
            number = self.sources[index].n
            self.view.post_message(self.view.Requested(self.view, f"flag:{number}"))
