"""The terminal app under Textual's pilot: the real app, the real default model, a temp home."""

from __future__ import annotations

import asyncio
from pathlib import Path

from assistant import config as config_mod
from assistant.feedback import FeedbackStore, ReplayBuffer
from assistant.service import Answer, Assistant
from tui.app import NightjarApp
from tui.chat import AnswerView
from tui.composer import Composer


def make_app(home: Path, engine=None, max_tokens: int = 16, **kwargs) -> NightjarApp:
    """The app on `home`; `engine`: the session's loaded model (None: the app loads its own)."""
    overrides = {"generation.max_tokens": max_tokens, "reasoning.step_tokens": 24}
    config = config_mod.load(home, overrides, environ={})
    return NightjarApp(Assistant(config, engine=engine), **kwargs)


FALCON = {
    "n": 1,
    "id": "c1",
    "source": "/home/ada/notes/falcon.md",
    "location": "§ Falcon, line 3",
    "text": "Project Falcon is led by Ada Lovelace, who works in Zurich.",
    "score": 0.9,
    "scores": {},
}
BUDGET = {
    **FALCON,
    "n": 2,
    "id": "c2",
    "source": "/home/ada/notes/budget.pdf",
    "location": "p. 4",
    "text": "The Falcon budget for 2025 is 1.2 million francs.",
}


def seed_conversation(home: Path) -> str:
    """Record a conversation with fixed text (not model-generated): two cited answers, one with a trace."""
    store = FeedbackStore(home / "nightjar.db")
    turns = [
        ("Who leads Project Falcon?", "Project Falcon is led by **Ada Lovelace** [1].", [FALCON], [], ""),
        (
            "Where does she work, and what is the budget?",
            "She works in Zurich [1]; the budget is 1.2 million francs [2].",
            [FALCON, BUDGET],
            [{"step": "search", "query": "Falcon budget", "hits": 2}, {"step": "generate", "tokens": 19}],
            "Two parts: the place of work, then the budget.",
        ),
    ]
    history: list[dict[str, str]] = []
    for question, text, sources, trace, reasoning in turns:
        answer = Answer(
            question=question,
            text=text,
            strategy="direct",
            model_version="base",
            prompt=question,
            messages=[*history, {"role": "user", "content": question}],
            params={},
            conversation_id="fixed-conversation",
            history=list(history),
            sources=sources,
            trace=trace,
            reasoning=reasoning,
        )
        store.record(answer.to_dict())
        history += [{"role": "user", "content": question}, {"role": "assistant", "content": text}]
    store.close()
    return "fixed-conversation"


async def wait_for(pilot, condition, timeout: float = 120) -> None:
    for _ in range(int(timeout / 0.1)):
        if condition():
            return
        await pilot.pause(0.1)
    raise AssertionError("timed out")


async def wait_answered(pilot, app: NightjarApp, count: int) -> AnswerView:
    """The last answer, once there are `count` answers and nothing is being generated."""
    await wait_for(pilot, lambda: app.chat.generating is None and len(app.chat.answers()) == count)
    return app.chat.answers()[-1]


async def run_command(pilot, title: str) -> None:
    """Run a command from the palette (Ctrl+P) as a user would: type its title, pick it, Enter."""
    from textual.command import CommandList, CommandPalette

    await pilot.press("ctrl+p", *title)
    palette = pilot.app.screen
    assert isinstance(palette, CommandPalette)
    commands = palette.query_one(CommandList)
    while pilot.app.screen is palette:
        if not commands.option_count:  # the palette searches in the background
            await pilot.pause(0.05)
        elif commands.highlighted is None:
            await pilot.press("down")
        else:
            assert title in str(commands.get_option_at_index(commands.highlighted).prompt)
            await pilot.press("enter")
    await pilot.pause()


async def ask(pilot, app: NightjarApp, question: str) -> AnswerView:
    count = len(app.chat.answers()) + 1
    await pilot.click(Composer)
    app.chat.query_one(Composer).load_text(question)
    await pilot.press("enter")
    return await wait_answered(pilot, app, count)


def kto_rows(home: Path) -> list[dict]:
    buf = ReplayBuffer(config_mod.load(home, environ={}))
    try:
        return buf.rows("kto", split="train") + buf.rows("kto", split="holdout")
    finally:
        buf.close()


def test_streamed_answer_then_thumbs_down_reaches_the_replay_buffer(home: Path, engine, monkeypatch):
    shown: list[str] = []  # the answer's text each time a streamed piece reached its view
    on_token = AnswerView.on_answer_view_token

    async def recording(view: AnswerView, message: AnswerView.Token) -> None:
        await on_token(view, message)
        shown.append(view.turn.text)

    monkeypatch.setattr(AnswerView, "on_answer_view_token", recording)

    async def scenario() -> None:
        app = make_app(home, engine)
        async with app.run_test(size=(80, 24)) as pilot:
            view = await ask(pilot, app, "What is the capital of France?")
            final = view.turn.text
            assert final and view.turn.interaction_id
            assert len(shown) >= 2, "the answer should appear piece by piece before it is complete"
            assert all(b.startswith(a) and b != a for a, b in zip(shown, shown[1:], strict=False))
            assert shown[-1].strip() == final.strip()

            await pilot.press("escape")  # select the answer
            assert app.focused is view
            await pilot.press("minus")
            await pilot.pause()
            assert "rated bad" in str(view.query_one(".meta").render())

        rows = kto_rows(home)
        assert [(r["completion"][0]["content"], r["label"]) for r in rows] == [(final, False)]
        assert rows[0]["prompt"][-1] == {"role": "user", "content": "What is the capital of France?"}

    asyncio.run(scenario())


def test_escape_cancels_and_keeps_the_partial_answer(home: Path, engine):
    async def scenario() -> None:
        app = make_app(home, engine, max_tokens=400)
        async with app.run_test(size=(80, 24)) as pilot:
            app.chat.query_one(Composer).load_text("Write a long story about a dragon and a knight.")
            await pilot.press("enter")
            while not (app.chat.answers() and app.chat.answers()[-1].turn.text):
                await pilot.pause(0.05)
            await pilot.press("escape")
            view = await wait_answered(pilot, app, 1)
            assert view.turn.cancelled and view.turn.text
            assert "cancelled" in str(view.query_one(".meta").render())
            assert view.has_class("-cancelled")
            stored = app.assistant.feedback_store.get(view.turn.interaction_id)
            assert stored.data["finish_reason"] == "cancelled" and stored.response == view.turn.text
            assert stored.data["completion_tokens"] < 400

    asyncio.run(scenario())


def test_regenerate_then_choose_records_a_preference(home: Path, engine):
    async def scenario() -> None:
        app = make_app(home, engine, max_tokens=6)
        async with app.run_test(size=(80, 24)) as pilot:
            first = await ask(pilot, app, "Name a fruit.")
            first_id = first.turn.interaction_id
            await pilot.press("escape", "r")
            await wait_for(
                pilot, lambda: app.chat.generating is None and first.turn.interaction_id != first_id
            )
            view = await wait_answered(
                pilot, app, 1
            )  # the regeneration is shown in place of the first response
            second_id = view.turn.interaction_id
            assert second_id not in (None, first_id) and view is first
            await pilot.press("a")  # the alternatives: pick the first response again
            await pilot.pause()
            await pilot.press("home", "enter")
            await pilot.pause()
            assert view.turn.interaction_id == first_id
        alternatives = app.assistant.feedback_store.alternatives(first_id)
        assert [a.id for a in alternatives] == [first_id, second_id]
        assert [e.kind for e in alternatives[0].feedback] == ["choose"]

    asyncio.run(scenario())


def test_conversation_is_restored_when_the_app_reopens(home: Path, engine):
    async def scenario() -> None:
        app = make_app(home, engine, max_tokens=6)
        async with app.run_test(size=(80, 24)) as pilot:
            composer = app.chat.query_one(Composer)
            await pilot.press(*"Say", "ctrl+j", *"hello.")
            assert composer.text == "Say\nhello."
            await pilot.press("enter")
            answer = await wait_answered(pilot, app, 1)
            assert composer.text == "" and answer.turn.question == "Say\nhello."
            await pilot.press("up")
            assert composer.text == "Say\nhello."
            await pilot.press("down")
            assert composer.text == ""
            text, conversation = answer.turn.text, app.chat.conversation_id
            await pilot.press("escape", "plus")
        again = make_app(home, engine)
        async with again.run_test(size=(80, 24)) as pilot:
            await pilot.pause()
            assert again.chat.conversation_id == conversation
            [view] = again.chat.answers()
            assert view.turn.text == text and view.turn.rating == "up"
            await pilot.press("up")  # the restored question is in the composer's recall history
            assert again.chat.query_one(Composer).text == "Say\nhello."
            await pilot.press("ctrl+n")
            assert again.chat.answers() == [] and again.chat.conversation_id is None
            await pilot.press("ctrl+o", "enter")  # reopen it from the list
            await pilot.pause()
            assert again.chat.conversation_id == conversation and len(again.chat.answers()) == 1

    asyncio.run(scenario())


def test_strategy_picker_changes_the_strategy_used(home: Path, engine):
    async def scenario() -> None:
        app = make_app(home, engine, max_tokens=8)
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.press("f2")
            await pilot.pause()
            await pilot.press("down", "enter")  # after direct: cot
            assert app.strategy == "cot"
            assert "strategy cot" in str(app.chat.status.render())
            view = await ask(pilot, app, "What is 2 + 3?")
            assert view.turn.strategy == "cot" and view.turn.reasoning
            assert app.assistant.feedback_store.get(view.turn.interaction_id).strategy == "cot"
            trace = view.query_one(".trace")
            assert trace.display and trace.collapsed
            await pilot.press("escape", "t")  # the trace view opens on the selected answer
            assert not trace.collapsed
            assert "reason" in str(view.query_one(".trace-text").render())

    asyncio.run(scenario())
