"""The status bar: served model version, strategy, index size, last and next training run."""

from __future__ import annotations

from textual.content import Content
from textual.reactive import reactive
from textual.widgets import Static


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


class StatusBar(Static):
    model = reactive("…")
    strategy = reactive("")
    index = reactive("…")
    training = reactive("")
    activity = reactive("")  # answering…
    indexing = reactive("")  # indexing 3/10 files

    def render(self) -> Content:
        parts = [self.activity, self.indexing, f"model {self.model}", f"strategy {self.strategy}"]
        parts += [f"index {self.index}", self.training]
        return Content(" │ ".join(p for p in parts if p))
