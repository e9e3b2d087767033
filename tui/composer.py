"""The composer: a multi-line input where Enter sends, Ctrl+J (or Shift+Enter) adds a line, Up/Down recall."""

from __future__ import annotations

from textual import events
from textual.binding import Binding
from textual.message import Message
from textual.widgets import TextArea


class Composer(TextArea):
    BINDINGS = [
        Binding("enter", "send", "Send"),
        Binding("ctrl+j,shift+enter", "newline", "New line", key_display="^j"),
    ]

    class Submitted(Message):
        def __init__(self, text: str) -> None:
            super().__init__()
            self.text = text

    def __init__(self, **kwargs) -> None:
        super().__init__(soft_wrap=True, show_line_numbers=False, tab_behavior="focus", **kwargs)
        self.sent: list[str] = []
        self._recall: int | None = None  # index into history while recalling
        self._draft = ""

    def remember(self, text: str) -> None:
        """Add a sent (or restored) question to the recall history."""
        if text and (not self.sent or self.sent[-1] != text):
            self.sent.append(text)
        self._recall = None

    def action_send(self) -> None:
        text = self.text.strip()
        if not text:
            return
        self.remember(text)
        self.clear()
        self.post_message(self.Submitted(text))

    def action_newline(self) -> None:
        self.insert("\n")

    async def _on_key(self, event: events.Key) -> None:
        # keys are handled here, in the order typed: a binding could see Enter before the text typed before it
        row, _ = self.cursor_location
        if event.key == "enter":
            event.prevent_default()
            event.stop()
            self.action_send()
            return
        if event.key == "up" and row == 0 and self.sent:
            event.prevent_default()
            event.stop()
            self._step(-1)
            return
        if event.key == "down" and row == self.document.line_count - 1 and self._recall is not None:
            event.prevent_default()
            event.stop()
            self._step(1)
            return
        await super()._on_key(event)

    def _step(self, delta: int) -> None:
        if self._recall is None:
            self._draft = self.text
            index = len(self.sent) + delta
        else:
            index = self._recall + delta
        if index >= len(self.sent):
            self._recall = None
            self.load_text(self._draft)
        else:
            self._recall = max(0, index)
            self.load_text(self.sent[self._recall])
        self.move_cursor(self.document.end)
