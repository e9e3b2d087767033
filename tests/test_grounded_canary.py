"""The grounded canary: held-out grounded prompts, built the real way (indexed documents, the real GGUF,
`Assistant.answer`, feedback, the replay buffer's holdout), answered as asked and with swapped sources."""

from __future__ import annotations

import json
import re

import pytest

from assistant import config as config_mod
from assistant.engine import Generation, LlamaCppEngine
from assistant.feedback import ReplayBuffer
from assistant.grounding import DONT_KNOW, DocumentAccess, grounded_messages
from assistant.service import Assistant
from assistant.sources import Source
from retrieval.index import Index
from retrieval.indexer import update
from tests.test_retrieval_index import shared_embedder
from trainer.grounded_canary import GroundedCanary, grounded_prompts, run, says_dont_know

DOCS = {
    "finances.md": "# Finances\n\nThe Nightjar project budget for 2025 is 4200 euros, approved in March.\n",
    "kettle.md": "# Kitchen\n\n## Kettle\n\nDescale the kettle with vinegar once a month.\n",
    "garden.md": "# Garden club\n\nThe garden club meets on Tuesdays and grows tomatoes and beans.\n",
}
QUESTIONS = [
    "Which source gives the budget for 2025?",
    "How often should the kettle be descaled?",
    "On which day does the garden club meet?",
]


@pytest.fixture(scope="module")
def asked(tmp_path_factory, engine: LlamaCppEngine):
    """A home with indexed documents, three grounded answers and one ungrounded, all rated; the holdout
    (and the grounded answers)."""
    root = tmp_path_factory.mktemp("canary")
    docs = root / "docs"
    docs.mkdir()
    for name, text in DOCS.items():
        (docs / name).write_text(text)
    config = config_mod.load(root / "home", environ={})
    config.feedback.holdout_fraction = 0.999  # every prompt held out (the fraction must stay below 1)
    index = Index(config.index_dir, config.retrieval, embedder=shared_embedder())
    update(index, [docs])
    assistant = Assistant(config, engine=engine)
    assistant.__dict__["documents"] = DocumentAccess(config)
    assistant.documents.__dict__["index"] = index
    params = assistant.params(max_tokens=24)
    earlier = [  # a conversation that has cited before: the 135M model then cites too
        {"role": "user", "content": "When was the budget approved?"},
        {"role": "assistant", "content": "It was approved in March [1]."},
    ]
    answers = [assistant.answer(QUESTIONS[0], history=earlier, params=params)]
    answers += [assistant.answer(q, params=params) for q in QUESTIONS[1:]]
    plain = assistant.answer("What is the capital of France?", retrieval=False, params=params)
    assistant.feedback(answers[0].interaction_id, up=True)
    assistant.feedback(answers[1].interaction_id, up=False)
    assistant.correct(answers[2].interaction_id, "On Tuesdays [1].")  # a dpo pair and an sft row
    assistant.feedback(plain.interaction_id, up=True)
    with ReplayBuffer(config) as buffer:
        holdout = {kind: buffer.rows(kind, "holdout") for kind in ("dpo", "kto", "sft")}
    assistant.feedback_store.close()
    return answers, holdout


def test_grounded_prompts_are_the_held_out_grounded_ones(asked):
    answers, holdout = asked
    assert all(a.trace[0]["status"] == "grounded" for a in answers)
    assert sum(len(rows) for rows in holdout.values()) >= 5  # the correction's prompt is in two rows
    prompts = grounded_prompts(holdout)
    key = lambda p: json.dumps(p, sort_keys=True)  # noqa: E731
    assert sorted(map(key, prompts)) == sorted(key(a.training_messages) for a in answers)  # each once
    assert all("[1] " in p[0]["content"] and p[-1]["content"] in QUESTIONS for p in prompts)
    assert len(grounded_prompts(holdout, limit=2)) == 2


def test_the_real_model_is_counted_as_it_answers(asked, engine: LlamaCppEngine):
    _, holdout = asked
    prompts = grounded_prompts(holdout)
    canary = run(engine, prompts, max_tokens=24)
    assert canary.questions == canary.swapped == 3 and len(canary.answers) == 6
    counted = 0
    for prompt, answer in zip(prompts, canary.answers[:3], strict=True):
        sources = len(re.findall(r"^\[\d+\] ", prompt[0]["content"], re.MULTILINE))
        cited = {int(n) for group in re.findall(r"\[([\d,\s]+)\]", answer) for n in group.split(",")}
        counted += bool(cited) and cited <= set(range(1, sources + 1))
    assert canary.cited_ok == counted >= 1  # the answer after the conversation that cited cites [1]
    assert canary.dont_know == sum(map(says_dont_know, canary.answers[3:]))
    assert canary.score == canary.cited_ok + canary.dont_know
    assert GroundedCanary(**canary.to_dict()) == canary


# ---- the counting, with a fake engine (control flow only) ----


class FakeEngine:
    """Renders messages as JSON, counts characters as tokens, answers with `reply(messages)`."""

    def __init__(self, reply, n_ctx: int = 100_000) -> None:
        self.reply, self.n_ctx, self.seen = reply, n_ctx, []

    def render(self, messages, add_generation_prompt: bool = True) -> str:
        return json.dumps(messages)

    def count_tokens(self, text: str) -> int:
        return len(text)

    def generate(self, prompt: str, params, **constraints) -> Generation:
        messages = json.loads(prompt)
        self.seen.append(messages)
        chunk = {"choices": [{"text": self.reply(messages), "finish_reason": "stop"}]}
        return Generation(iter([chunk]), len(prompt), len)


def prompt(topic: str, sources: int = 3, words: int = 5) -> list[dict[str, str]]:
    numbered = [
        Source(f"/notes/{topic}{i}.md", f"line {i}", f"{topic} fact {i}. " + "word " * words).numbered(i)
        for i in range(1, sources + 1)
    ]
    return grounded_messages("You are Nightjar.", [], f"What about {topic}?", numbered)


@pytest.mark.parametrize(
    ("reply", "ok"),
    [("It is so [2].", 1), ("It is so [9].", 0), ("So [1, 3].", 1), ("So [1][4].", 0), ("So.", 0)],
)
def test_an_answer_is_cited_ok_when_it_cites_only_sources_in_the_prompt(reply: str, ok: int):
    canary = run(FakeEngine(lambda m: reply), [prompt("tea")])
    assert (canary.questions, canary.cited_ok, canary.swapped) == (1, ok, 0)  # one prompt: nothing to swap


def test_saying_the_assistants_dont_know_counts():
    canary = run(FakeEngine(lambda m: DONT_KNOW), [prompt("tea"), prompt("bees")])
    assert (canary.questions, canary.cited_ok, canary.swapped, canary.dont_know) == (2, 0, 2, 2)
    assert canary.score == 2 and canary.answers == [DONT_KNOW] * 4
    assert says_dont_know("The sources do not say when.") and says_dont_know("I don’t know.")
    assert not says_dont_know("The budget is 4200 euros [1].")


def test_the_swap_gives_each_prompt_the_next_ones_sources_and_keeps_its_question():
    prompts = [prompt("tea"), prompt("bees"), prompt("kites")]
    engine = FakeEngine(lambda m: "No idea.")
    canary = run(engine, prompts)
    assert canary.swapped == 3 and canary.dont_know == 0
    asked, swapped = engine.seen[:3], engine.seen[3:]
    assert asked == prompts
    for n, messages in enumerate(swapped):
        own, other = prompts[n], prompts[(n + 1) % 3]
        assert messages[1:] == own[1:]  # the question, as asked
        head = own[0]["content"].split("\n\n[1] ")[0]
        assert messages[0]["content"] == head + "\n\n[1] " + other[0]["content"].split("\n\n[1] ", 1)[1]
    same = run(FakeEngine(lambda m: "No idea."), [prompt("tea"), prompt("tea")])
    assert same.swapped == 0  # the same sources are still relevant


def test_a_long_prompt_gives_up_its_lowest_sources_never_its_question():
    long = prompt("tea", sources=4, words=60)
    size = len(json.dumps(long))
    engine = FakeEngine(lambda m: "So [1].", n_ctx=size - 500 + 96)  # room for about two sources fewer
    canary = run(engine, [long])
    (seen,) = engine.seen
    assert canary.questions == canary.cited_ok == 1
    assert "[1] tea1.md" in seen[0]["content"] and "[4] tea4.md" not in seen[0]["content"]
    assert seen[-1] == long[-1] and len(json.dumps(seen)) <= size - 500
    tiny = FakeEngine(lambda m: "So [1].", n_ctx=200)  # not even the question fits: not asked
    assert run(tiny, [long]) == GroundedCanary() and tiny.seen == []


def test_grounded_prompts_take_the_newest_distinct_grounded_ones():
    rows = [{"prompt": prompt(t), "completion": []} for t in ("tea", "bees", "kites", "bees")]
    plain = {"prompt": [{"role": "user", "content": "Hi?"}], "completion": [], "label": True}
    found = grounded_prompts({"sft": rows, "kto": [plain]}, limit=2)
    assert found == [prompt("kites"), prompt("bees")]  # newest last; "bees" once, at its newest
    assert grounded_prompts({"kto": [plain]}) == []


def test_no_prompts_no_answers():
    assert run(FakeEngine(lambda m: "x"), []) == GroundedCanary()
