"""Small modal dialogs: pick from a list, write a comment, correct an answer. Esc closes without a result."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, OptionList, Static, TextArea
from textual.widgets.option_list import Option


class PickScreen(ModalScreen[str | None]):
    """Choose one option (a strategy, an alternative answer, a conversation); returns its id."""

    BINDINGS = [Binding("escape", "dismiss(None)", "Close")]

    def __init__(
        self,
        title: str,
        options: list[tuple[str, str]],
        highlighted: str | None = None,
        hint: str = "Enter chooses · Esc closes",
    ) -> None:
        super().__init__()
        self.title_text = title
        self.options = options
        self.initial = highlighted
        self.hint = hint

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static(self.title_text, classes="dialog-title")
            yield OptionList(*(Option(label, id=key) for key, label in self.options))
            yield Static(self.hint, classes="dialog-hint")

    def on_mount(self) -> None:
        options = self.query_one(OptionList)
        keys = [key for key, _ in self.options]
        if self.initial in keys:
            options.highlighted = keys.index(self.initial)

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(event.option.id)


class CommentScreen(ModalScreen[str | None]):
    """One line of text (a comment on an answer); Enter saves."""

    BINDINGS = [Binding("escape", "dismiss(None)", "Close")]

    def __init__(self, title: str, placeholder: str = "") -> None:
        super().__init__()
        self.title_text = title
        self.placeholder = placeholder

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static(self.title_text, classes="dialog-title")
            yield Input(placeholder=self.placeholder)
            yield Static("Enter saves · Esc closes", classes="dialog-hint")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value.strip() or None)


class CorrectionScreen(ModalScreen[str | None]):
    """Edit an answer into the one you wanted; Ctrl+S saves it as the preferred answer."""

    BINDINGS = [Binding("escape", "dismiss(None)", "Close"), Binding("ctrl+s", "save", "Save", priority=True)]

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog tall"):
            yield Static("Correct the answer (saved as the preferred one)", classes="dialog-title")
            yield TextArea(self.text, soft_wrap=True)
            yield Static("Ctrl+S saves · Esc closes", classes="dialog-hint")

    def action_save(self) -> None:
        text = self.query_one(TextArea).text.strip()
        self.dismiss(text or None)
