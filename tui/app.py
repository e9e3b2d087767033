"""Nightjar's terminal app: chat with streamed, cited answers; feedback, strategies and panels at a glance.

Presentation only: every answer, feedback event and index or model change goes through the assistant's API
(the same calls the CLI makes). The panels (index a folder, sources, model versions, training runs) are
screens reached from the command palette (Ctrl+P).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from textual import work
from textual.app import App, SystemCommand
from textual.screen import Screen
from textual.worker import Worker, WorkerState

from assistant.config import STRATEGIES
from tui.chat_screen import ChatScreen
from tui.dialogs import PickScreen
from tui.indexing import IndexScreen
from tui.library import SourcesScreen
from tui.models import ModelsScreen
from tui.status import plural
from tui.training import TrainingScreen


class NightjarApp(App):
    CSS_PATH = "app.tcss"
    TITLE = "Nightjar"

    def __init__(
        self,
        assistant: Any,
        *,
        strategy: str | None = None,
        retrieval: bool | None = None,
        restore: bool = True,
        folder: Path | None = None,
    ) -> None:
        super().__init__()
        self.assistant = assistant
        self.strategy = strategy or assistant.config.ask.strategy
        self.retrieval = retrieval
        self.restore = restore
        self.folder = folder or Path.cwd()  # where the index screen's file picker starts
        self.warm = threading.Event()  # set once the warm-up is over: generation waits for it

    def get_default_screen(self) -> Screen:
        latest = self.assistant.conversations(limit=1) if self.restore else []
        return ChatScreen(latest[0].id if latest else None)

    @property
    def chat(self) -> ChatScreen:
        """The chat screen: always at the bottom of the screen stack."""
        return self.screen_stack[0]  # type: ignore[return-value]

    def on_mount(self) -> None:
        # kept when closed, so that indexing goes on in the background and its progress is there on return
        self.install_screen(IndexScreen(self.folder), "index")
        self.call_after_refresh(self.warm_up)  # after the first paint, which a loading thread could stall

    @work(thread=True, group="warm-up", exit_on_error=False)
    def warm_up(self) -> None:
        """Load the model (and the embedder) now, while the user types the first question."""
        try:
            self.assistant.warm_up()
        finally:
            self.warm.set()

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.worker.group == "warm-up" and event.state == WorkerState.ERROR:
            self.notify(f"Loading failed: {event.worker.error}", severity="error", timeout=30)

    def index_changed(self) -> None:
        self.chat.refresh_status()

    def model_changed(self) -> None:
        """After `use` or `rollback` (the assistant already serves the new version): load it now."""
        self.warm.clear()
        self.warm_up()
        self.chat.refresh_status()

    # ---- strategies and conversations ----
    def action_pick_strategy(self) -> None:
        options = [(name, name) for name in STRATEGIES]
        self.push_screen(PickScreen("Reasoning strategy", options, self.strategy), self.set_strategy)

    def set_strategy(self, name: str | None) -> None:
        if name:
            self.strategy = name
            self.chat.refresh_status()

    def action_pick_conversation(self) -> None:
        conversations = self.assistant.conversations()
        if not conversations:
            self.notify("No conversations yet.")
            return
        options = [(c.id, f"{c.title[:60]} ({plural(c.turns, 'turn')})") for c in conversations]
        self.push_screen(
            PickScreen("Conversations", options, self.chat.conversation_id), self.chat.open_conversation
        )

    def action_models(self) -> None:
        if self.chat.generating is not None:
            self.notify("Still answering: wait, or press Esc to cancel.", severity="warning")
            return
        self.push_screen(ModelsScreen())

    def action_index(self) -> None:
        self.push_screen("index")

    def action_sources(self) -> None:
        self.push_screen(SourcesScreen())

    def action_training(self) -> None:
        self.push_screen(TrainingScreen())

    # ---- command palette ----
    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        chat = self.chat
        yield SystemCommand(
            "New conversation", "Start an empty conversation (Ctrl+N)", chat.action_new_conversation
        )
        yield SystemCommand(
            "Conversations", "Reopen a recorded conversation (Ctrl+O)", self.action_pick_conversation
        )
        yield SystemCommand("Strategy", "Pick how the model reasons (F2)", self.action_pick_strategy)
        for name in STRATEGIES:
            yield SystemCommand(
                f"Strategy: {name}",
                f"Answer with the {name} strategy",
                lambda name=name: self.set_strategy(name),
                discover=False,
            )
        yield SystemCommand("Index a folder", "Add documents to answer from", self.action_index)
        yield SystemCommand("Sources", "What is indexed; forget a source", self.action_sources)
        yield SystemCommand("Model versions", "Metrics per version; switch or roll back", self.action_models)
        yield SystemCommand(
            "Training runs", "The nightly schedule, each run's outcome and report", self.action_training
        )
