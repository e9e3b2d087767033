"""The conversation pane's widgets: a question, and an answer that streams in and takes feedback."""

from __future__ import annotations

import json
from typing import Any

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.content import Content
from textual.message import Message
from textual.widgets import Collapsible, Markdown, Static

from assistant.turns import Turn
from tui.citations import citation_parser


class QuestionView(Static):
    """The user's message."""

    def __init__(self, text: str) -> None:
        super().__init__(Content(text), classes="question")


def trace_text(turn: Turn) -> Content:
    """The reasoning and every trace step (thoughts, tool calls, observations, votes) as plain lines."""
    lines: list[str] = []
    if turn.reasoning:
        lines += ["Reasoning:", turn.reasoning.strip(), ""]
    for i, step in enumerate(turn.trace, 1):
        kind = step.get("step", "step")
        lines.append(f"{i}. {kind}")
        for key, value in step.items():
            if key == "step" or value in (None, "", [], {}):
                continue
            shown = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
            lines.append(f"   {key}: {shown}")
    return Content("\n".join(lines) or "no trace")


class AnswerActions(Static):
    """The selected answer's actions as clickable words (they wrap on a narrow screen; keys do the same)."""

    ACTIONS = {
        "up": "+ good",
        "down": "- bad",
        "comment": "comment",
        "correct": "correct",
        "regenerate": "regenerate",
        "alternatives": "alternatives",
    }

    def __init__(self) -> None:
        links = [
            Content.from_markup(f"[@click=answer('{a}')]$label[/]", label=t) for a, t in self.ACTIONS.items()
        ]
        super().__init__(Content(" · ").join(links), classes="actions")

    def action_answer(self, action: str) -> None:
        view = self.query_ancestor(AnswerView)
        view.focus()
        view.post_message(AnswerView.Requested(view, action))


class AnswerView(Vertical, can_focus=True):
    """One answer: Markdown with highlighted citations, its badges, its trace, and (when selected) actions."""

    BINDINGS = [
        Binding("plus,equals_sign", "feedback('up')", "Good", key_display="+"),
        Binding("minus", "feedback('down')", "Bad", key_display="-"),
        Binding("c", "feedback('comment')", "Comment"),
        Binding("e", "feedback('correct')", "Correct"),
        Binding("r", "feedback('regenerate')", "Regenerate"),
        Binding("a", "feedback('alternatives')", "Alternatives"),
        Binding("t", "toggle_trace", "Trace"),
        Binding("s", "feedback('sources')", "Sources", show=False),
        Binding("up,k", "move(-1)", "Previous", show=False),
        Binding("down,j", "move(1)", "Next", show=False),
        Binding("i", "feedback('compose')", "Compose", show=False),
    ]

    class Requested(Message):
        """The user asked for `action` ("up", "down", "comment", "correct", "regenerate", ...)."""

        def __init__(self, view: AnswerView, action: str) -> None:
            super().__init__()
            self.view = view
            self.action = action

    class Token(Message):
        def __init__(self, piece: str) -> None:
            super().__init__()
            self.piece = piece

    class Finished(Message):
        """A generation ended: its answer, or the error that stopped it. Posted after its last token."""

        def __init__(self, view: AnswerView, answer: Any, error: str | None) -> None:
            super().__init__()
            self.view, self.answer, self.error = view, answer, error

    def __init__(self, turn: Turn, streaming: bool = False) -> None:
        super().__init__()
        self.turn = turn
        self.streaming = streaming
        self._stream = None

    def compose(self) -> ComposeResult:
        yield Static(self._meta(), classes="meta")
        yield Markdown(self.turn.text, parser_factory=citation_parser, open_links=False)
        yield Static(Content("\n".join(self.turn.notices)), classes="notices")
        with Collapsible(title="Reasoning and trace", classes="trace"):
            yield Static(trace_text(self.turn), classes="trace-text")
        yield AnswerActions()

    def on_mount(self) -> None:
        self.refresh_parts()
        if self.streaming:
            self._stream = Markdown.get_stream(self.query_one(Markdown))

    def _meta(self) -> Content:
        turn = self.turn
        parts = ["Nightjar"]
        if turn.strategy:
            parts.append(turn.strategy)
        if self.streaming:
            parts.append("answering… (Esc cancels)")
        if turn.cancelled:
            parts.append("cancelled")
        elif turn.finish_reason == "length":
            parts.append("cut at the token limit")
        if turn.corrected:
            parts.append("corrected")
        if turn.rating == "up":
            parts.append("rated good")
        elif turn.rating == "down":
            parts.append("rated bad")
        return Content(" · ".join(parts))

    def refresh_parts(self) -> None:
        """Redraw the badges, notices and trace from `self.turn`."""
        self.query_one(".meta", Static).update(self._meta())
        notices = self.query_one(".notices", Static)
        notices.update(Content("\n".join(self.turn.notices)))
        notices.display = bool(self.turn.notices)
        trace = self.query_one(".trace", Collapsible)
        trace.display = bool(self.turn.trace or self.turn.reasoning) and not self.streaming
        steps = len(self.turn.trace)
        trace.title = f"Reasoning and trace ({steps} step{'s' if steps != 1 else ''})"
        self.query_one(".trace-text", Static).update(trace_text(self.turn))
        self.set_class(self.turn.cancelled, "-cancelled")
        self.set_class(self.streaming, "-streaming")

    # ---- streaming ----
    async def on_answer_view_token(self, message: Token) -> None:
        message.stop()
        self.turn.text += message.piece
        if self._stream is not None:
            await self._stream.write(message.piece)

    async def show(self, turn: Turn) -> None:
        """Show `turn` (the finished answer, an alternative or a correction) in place of what is shown."""
        if self._stream is not None:
            await self._stream.stop()
            self._stream = None
        self.streaming = False
        self.turn = turn
        await self.query_one(Markdown).update(turn.text)
        self.refresh_parts()

    async def restart_stream(self, turn: Turn) -> None:
        """Start streaming a new response (a regeneration) in place of the shown one."""
        self.turn = turn
        self.streaming = True
        await self.query_one(Markdown).update("")
        self._stream = Markdown.get_stream(self.query_one(Markdown))
        self.refresh_parts()

    # ---- actions ----
    def action_feedback(self, action: str) -> None:
        self.post_message(self.Requested(self, action))

    def action_toggle_trace(self) -> None:
        trace = self.query_one(".trace", Collapsible)
        if trace.display:
            trace.collapsed = not trace.collapsed

    def action_move(self, step: int) -> None:
        answers = list(self.screen.query(AnswerView))
        index = answers.index(self) + step
        if 0 <= index < len(answers):
            answers[index].focus()
            answers[index].scroll_visible()

    def on_markdown_link_clicked(self, event: Markdown.LinkClicked) -> None:
        event.stop()
        if event.href.startswith("cite:"):
            self.focus()
            self.post_message(self.Requested(self, event.href))
