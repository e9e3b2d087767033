"""The chat screen: the conversation, the sources panel, the composer and the status bar.

Generation runs in a thread worker that streams pieces to the answer's widget as messages, so the UI stays
responsive; Esc sets the cancel event and the partial answer is kept, marked as cancelled.
"""

from __future__ import annotations

import threading

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Static

from assistant import schedule
from assistant.feedback.store import FLAG_REASONS
from assistant.turns import Turn, history
from tui.chat import AnswerView, QuestionView
from tui.composer import Composer
from tui.dialogs import CommentScreen, CorrectionScreen, PickScreen
from tui.errors import reported
from tui.sources import SourcesPanel
from tui.status import StatusBar, plural

WELCOME = (
    "Ask about your documents.\n"
    "Enter sends · Ctrl+J new line · Up recalls · Esc selects answers · Ctrl+P commands"
)
BUSY = "Still answering: wait, or press Esc to cancel."


class ChatScreen(Screen):
    BINDINGS = [
        Binding("escape", "escape", "Cancel/select", show=False),
        Binding("f2", "app.pick_strategy", "Strategy"),
        Binding("ctrl+n", "new_conversation", "New chat"),
        Binding("ctrl+o", "app.pick_conversation", "Chats"),
    ]

    def __init__(self, conversation_id: str | None) -> None:
        super().__init__()
        self.conversation_id = conversation_id  # None until the first answer of a new conversation
        self.generating: AnswerView | None = None
        self._cancel = threading.Event()

    @property
    def assistant(self):
        return self.app.assistant

    def compose(self) -> ComposeResult:
        with Horizontal(id="main"):
            yield VerticalScroll(*self.conversation_widgets(self.conversation_id), id="conversation")
            yield SourcesPanel(id="sources")
        yield Composer(id="composer", placeholder="Ask a question…")
        yield StatusBar(id="status")
        yield Footer()

    def on_mount(self) -> None:
        self.refresh_status()
        self.ready()

    def ready(self) -> None:
        """After the conversation pane is filled: sources hidden, questions recallable, composer focused."""
        self.query_one(SourcesPanel).display = False
        composer = self.query_one(Composer)
        for view in self.answers():
            composer.remember(view.turn.question)
        composer.focus()
        self.conversation.scroll_end(animate=False)

    @property
    def conversation(self) -> VerticalScroll:
        return self.query_one("#conversation", VerticalScroll)

    @property
    def status(self) -> StatusBar:
        return self.query_one(StatusBar)

    def refresh_status(self) -> None:
        self.status.model = self.assistant.model_version
        self.status.strategy = self.app.strategy
        with reported(self):  # e.g. an index made by another embedder: say so, and chat on
            docs = self.assistant.sources()
            chunks = sum(d.chunks for d in docs)
            self.status.index = f"{plural(len(docs), 'doc')}, {plural(chunks, 'chunk')}" if docs else "empty"
        self.refresh_training()

    @work(thread=True, group="training-status", exclusive=True, exit_on_error=False)
    def refresh_training(self) -> None:
        """The schedule asks systemd or cron, which can take a while: off the UI thread."""
        line = schedule.summary(self.assistant.training_status())
        self.app.call_from_thread(setattr, self.status, "training", line)

    def answers(self) -> list[AnswerView]:
        return list(self.query(AnswerView))

    # ---- asking ----
    @on(Composer.Submitted)
    async def ask(self, event: Composer.Submitted) -> None:
        if self.generating is not None:
            self.notify(BUSY, severity="warning")
            self.query_one(Composer).load_text(event.text)
            return
        history = self.history()
        view = AnswerView(Turn(question=event.text, strategy=self.app.strategy), streaming=True)
        self.start_generation(view)
        await self.query("#welcome").remove()
        await self.conversation.mount_all([QuestionView(event.text), view])
        self.conversation.anchor()
        self.generate(view, event.text, history)

    def history(self) -> list[dict[str, str]]:
        """The conversation so far as the model sees it."""
        return history([view.turn for view in self.answers()])

    def start_generation(self, view: AnswerView) -> None:
        self._cancel = threading.Event()
        self.generating = view
        self.status.activity = "answering… Esc cancels"

    def stream_to(self, view: AnswerView):
        return lambda piece: view.post_message(AnswerView.Token(piece))

    @work(thread=True, group="generate", exit_on_error=False)
    def generate(self, view: AnswerView, question: str, history: list[dict[str, str]]) -> None:
        self.app.warm.wait()  # the model is not shared between threads while it loads
        try:
            answer = self.assistant.answer(
                question,
                history=history,
                conversation_id=self.conversation_id,
                strategy=self.app.strategy,
                retrieval=self.app.retrieval,
                on_token=self.stream_to(view),
                cancel=self._cancel,
            )
        except Exception as exc:  # shown in the answer's place; the app keeps running
            view.post_message(AnswerView.Finished(view, None, str(exc) or type(exc).__name__))
            return
        view.post_message(AnswerView.Finished(view, answer, None))

    @work(thread=True, group="generate", exit_on_error=False)
    def regenerate(self, view: AnswerView, interaction_id: str) -> None:
        self.app.warm.wait()
        try:
            answer = self.assistant.regenerate(
                interaction_id, on_token=self.stream_to(view), cancel=self._cancel
            )
        except Exception as exc:  # shown in the answer's place; the app keeps running
            view.post_message(AnswerView.Finished(view, None, str(exc) or type(exc).__name__))
            return
        view.post_message(AnswerView.Finished(view, answer, None))

    @on(AnswerView.Finished)
    async def finished(self, event: AnswerView.Finished) -> None:
        view = event.view
        if event.error is not None:
            view.turn.notices = [*view.turn.notices, f"error: {event.error}"]
            view.turn.finish_reason = "error"
            await view.show(view.turn)
        else:
            self.conversation_id = event.answer.conversation_id
            await view.show(Turn.from_answer(event.answer))
            if view.has_class("-selected") or view is self.answers()[-1]:
                self.show_sources(view)
        self.generating = None  # only now: the answer is shown in full
        self.status.activity = ""

    def action_escape(self) -> None:
        if self.generating is not None:
            self._cancel.set()
            self.notify("Cancelled: the partial answer is kept.")
            return
        answers = self.answers()
        if isinstance(self.focused, AnswerView):
            self.query_one(Composer).focus()
        elif answers:
            answers[-1].focus()
            answers[-1].scroll_visible()

    # ---- the selected answer ----
    def on_descendant_focus(self, event) -> None:
        if isinstance(event.widget, AnswerView):
            for view in self.answers():
                view.set_class(view is event.widget, "-selected")
            self.show_sources(event.widget)

    def show_sources(self, view: AnswerView, number: int | None = None) -> None:
        self.query_one(SourcesPanel).show(view, number)

    @on(AnswerView.Requested)
    async def on_answer_requested(self, event: AnswerView.Requested) -> None:
        with reported(self):
            await self.answer_action(event.view, event.action)

    async def answer_action(self, view: AnswerView, action: str) -> None:
        """Do what the user asked for on an answer: rate, comment, correct, regenerate, choose, flag."""
        if action == "compose":
            self.query_one(Composer).focus()
            return
        if action.startswith("cite:") or action == "sources":
            self.show_sources(view, int(action[5:]) if action.startswith("cite:") else None)
            if view.turn.sources:
                self.query_one("#source-list").focus()
            else:
                self.notify("This answer cites no sources.")
            return
        if view.streaming or view.turn.interaction_id is None:
            self.notify("Wait for the answer to finish first.", severity="warning")
            return
        interaction_id = view.turn.interaction_id
        if action in ("up", "down"):
            self.assistant.feedback(interaction_id, up=action == "up")
            view.turn.rating = action
            view.refresh_parts()
            self.notify("Thanks: marked good." if action == "up" else "Thanks: marked bad. C adds a comment.")
        elif action == "comment":
            if view.turn.rating is None:
                self.notify("Rate the answer first: + good or - bad, then C to comment.")
                return
            self.app.push_screen(
                CommentScreen("Comment on this answer", "what was good or wrong?"),
                lambda text: self.comment(view, text),
            )
        elif action == "correct":
            self.app.push_screen(CorrectionScreen(view.turn.text), lambda text: self.correct(view, text))
        elif action == "regenerate":
            if self.generating is not None:
                self.notify(BUSY, severity="warning")
                return
            self.start_generation(view)
            await view.restart_stream(Turn(question=view.turn.question, strategy=view.turn.strategy))
            self.regenerate(view, interaction_id)
        elif action == "alternatives":
            self.pick_alternative(view)
        elif action.startswith("flag:"):
            number = action[5:]

            def flagged(reason: str | None) -> None:
                if reason:
                    with reported(self):
                        self.assistant.flag_source(interaction_id, number, reason)
                        self.notify(f"Source [{number}] flagged as {reason}.")

            options = [(r, f"{r}: source [{number}] is {r} for this answer") for r in FLAG_REASONS]
            self.app.push_screen(PickScreen("Flag this source", options), flagged)

    def comment(self, view: AnswerView, text: str | None) -> None:
        if text:
            with reported(self):
                self.assistant.feedback(view.turn.interaction_id, up=view.turn.rating == "up", comment=text)
                self.notify("Comment saved.")

    async def correct(self, view: AnswerView, text: str | None) -> None:
        if text:
            with reported(self):
                self.assistant.correct(view.turn.interaction_id, text)
                view.turn.text, view.turn.corrected = text, True
                await view.show(view.turn)
                self.notify("Correction saved as the preferred answer.")

    def pick_alternative(self, view: AnswerView) -> None:
        alternatives = self.assistant.alternatives(view.turn.interaction_id)
        if len(alternatives) < 2:
            self.notify("Only one answer so far: press R to regenerate another.")
            return
        options = [
            (alt.id, f"{i}. {' '.join(alt.response.split())[:70] or '(empty)'}")
            for i, alt in enumerate(alternatives, 1)
        ]

        async def chosen(choice: str | None) -> None:
            if choice is not None:
                with reported(self):
                    self.assistant.choose(view.turn.interaction_id, choice)
                    picked = next(alt for alt in alternatives if alt.id == choice)
                    await view.show(Turn.from_interaction(picked))
                    self.notify("Chosen: kept as the preferred answer.")

        self.app.push_screen(PickScreen("Choose the best answer", options, view.turn.interaction_id), chosen)

    # ---- conversations ----
    def conversation_widgets(self, conversation_id: str | None) -> list[Static | AnswerView]:
        """A recorded conversation's questions and answers (None: the welcome text of a new one)."""
        if conversation_id is None:
            return [Static(WELCOME, id="welcome")]
        widgets: list[Static | AnswerView] = []
        for interaction in self.assistant.conversation(conversation_id):
            turn = Turn.from_interaction(interaction)
            widgets += [QuestionView(turn.question), AnswerView(turn)]
        return widgets

    async def action_new_conversation(self) -> None:
        await self.open_conversation(None)

    async def open_conversation(self, conversation_id: str | None) -> None:
        """Show a recorded conversation (None: a new, empty one)."""
        if self.generating is not None:
            self.notify(BUSY, severity="warning")
            return
        widgets = self.conversation_widgets(conversation_id)
        self.conversation_id = conversation_id
        await self.conversation.remove_children()
        await self.conversation.mount_all(widgets)
        self.ready()
