"""Training rows pair an answer with the direct grounded prompt, whatever strategy answered (issue 13).

Through the real `Assistant`, the embedded GGUF and a real index: a corrected answer of cot,
self-consistency, tot and react becomes dpo and sft rows whose prompt is the system prompt with the numbered
sources, the history and the plain question: no reasoning instruction, no agent tool protocol; react's
sources numbered as its answer cites them. What the strategy itself saw stays the interaction's `messages`.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from assistant import config as config_mod
from assistant.engine import LlamaCppEngine
from assistant.feedback import FeedbackStore
from assistant.feedback.replay import ReplayBuffer
from assistant.grounding import INSTRUCTIONS, grounded_messages
from assistant.reasoning import cot, react, tot
from assistant.service import Answer, Assistant

QUESTION = "Who leads Project Falcon?"
HISTORY = [{"role": "user", "content": "Hi."}, {"role": "assistant", "content": "Hello! Ask me anything."}]
CORRECTION = "Dr. Mira Okafor leads Project Falcon [1]."
# what only a strategy's own prompt holds: reasoning instructions, react's tool protocol and observations
STRATEGY_TEXT = (cot.INSTRUCTION, tot.INSTRUCTION, "Reply with one JSON action", "Search results for")


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An index of two small documents, built once (the embedder is slow to load) and copied per test."""
    from retrieval.index import Index
    from retrieval.indexer import update

    root = tmp_path_factory.mktemp("indexed")
    docs = root / "docs"
    docs.mkdir()
    (docs / "falcon.md").write_text(
        "# Project Falcon\n\nProject Falcon is led by Dr. Mira Okafor. The project builds weather drones.\n"
    )
    (docs / "bread.md").write_text("# Bread\n\nKnead the dough for ten minutes, then bake it.\n")
    template = config_mod.load(root / "home", environ={})
    update(Index(template.index_dir, template.retrieval), [docs])
    return template.index_dir


@pytest.fixture
def assistant(config: config_mod.Config, engine: LlamaCppEngine, indexed: Path) -> Assistant:
    shutil.copytree(indexed, config.index_dir)
    config.feedback.holdout_fraction = 0.0  # every row in train
    config.reasoning.samples, config.reasoning.step_tokens = 2, 32  # self-consistency, cot: short
    config.reasoning.breadth, config.reasoning.beam, config.reasoning.depth = 2, 1, 1  # tot: one level
    config.reasoning.max_steps = 2  # react: the search of the question, then the final answer
    return Assistant(config, engine=engine)


def ask_and_correct(assistant: Assistant, strategy: str) -> tuple[Answer, dict, dict]:
    """A grounded answer by `strategy`, corrected: the answer and its (dpo, sft) rows."""
    answer = assistant.answer(
        QUESTION, history=HISTORY, strategy=strategy, params=assistant.params(max_tokens=24)
    )
    assert answer.sources and answer.strategy == strategy
    assistant.correct(answer.interaction_id, CORRECTION)
    with ReplayBuffer(assistant.config) as buf:
        (dpo,) = buf.rows("dpo")
        (sft,) = buf.rows("sft")
    assert dpo["chosen"][0]["content"] == sft["completion"][0]["content"] == CORRECTION
    assert dpo["rejected"][0]["content"] == answer.text
    return answer, dpo, sft


def check_direct_prompt(assistant: Assistant, answer: Answer, prompt: list[dict]) -> None:
    """The prompt `direct` would serve the answer from: the sources in the system message, the history,
    then the plain question, and nothing only the strategy saw."""
    expected = grounded_messages(assistant.config.model.system_prompt, HISTORY, QUESTION, answer.sources)
    assert prompt == json.loads(json.dumps(expected))
    assert INSTRUCTIONS in prompt[0]["content"] and "falcon.md" in prompt[0]["content"]
    assert prompt[1:-1] == HISTORY and prompt[-1] == {"role": "user", "content": QUESTION}
    text = json.dumps(prompt)
    assert not [s for s in STRATEGY_TEXT if json.dumps(s)[1:-1] in text]


@pytest.mark.parametrize("strategy", ["cot", "self-consistency", "tot"])
def test_a_reasoning_answer_is_trained_on_the_direct_grounded_prompt(assistant: Assistant, strategy: str):
    answer, dpo, sft = ask_and_correct(assistant, strategy)
    check_direct_prompt(assistant, answer, dpo["prompt"])
    assert sft["prompt"] == dpo["prompt"]
    # the interaction still keeps what the strategy saw: the question with its reasoning instruction
    stored = assistant.feedback_store.get(answer.interaction_id)
    instruction = tot.INSTRUCTION if strategy == "tot" else cot.INSTRUCTION
    assert instruction in stored.messages[-1]["content"] and stored.messages == answer.messages
    assert stored.training_messages == dpo["prompt"]


def test_a_react_answer_is_trained_on_a_direct_prompt_of_the_sources_it_cites(assistant: Assistant):
    answer, dpo, sft = ask_and_correct(assistant, "react")
    check_direct_prompt(assistant, answer, dpo["prompt"])
    assert sft["prompt"] == dpo["prompt"]
    # numbered as react numbered them: every [n] of the answer heads the source it cites, in the prompt
    system = dpo["prompt"][0]["content"]
    numbers = [int(n) for n in re.findall(r"^\[(\d+)\] ", system, re.MULTILINE)]
    assert numbers == [s.n for s in answer.sources] == list(range(1, len(answer.sources) + 1))
    cited = {int(n) for n in re.findall(r"\[(\d+)\]", answer.text)}
    assert cited and cited <= set(numbers)
    for s in answer.sources:
        assert f"[{s.n}] {s.name} ({s.location})" in system
    stored = assistant.feedback_store.get(answer.interaction_id)
    assert react.SYSTEM.split("\n")[0] in stored.messages[0]["content"]  # what the agent saw, kept


def recorded(messages: list[dict], **fields) -> dict:
    """An `Answer.to_dict()` as `FeedbackStore.record` takes it, answering with `messages`."""
    return {
        "question": QUESTION,
        "text": "Dr. Okafor.",
        "strategy": "direct",
        "model_version": "base",
        "prompt": "rendered",
        "messages": messages,
        "params": {"max_tokens": 24},
        "conversation_id": "c1",
        **fields,
    }


def test_rows_of_interactions_recorded_before_training_prompts_use_their_messages(
    config: config_mod.Config,
):
    config.feedback.holdout_fraction = 0.0
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": QUESTION}]
    with FeedbackStore(config.db_path) as store:
        interaction = store.record(recorded(messages))  # as recorded before: no training_messages
        store.correct(interaction, CORRECTION)
        assert store.get(interaction).training_messages == messages
    with ReplayBuffer(config) as buf:
        assert [r["prompt"] for r in buf.rows("dpo") + buf.rows("sft")] == [messages, messages]


def test_thumb_rows_use_the_training_prompt(config: config_mod.Config):
    config.feedback.holdout_fraction = 0.0
    seen = [{"role": "system", "content": "Tools."}, {"role": "user", "content": f"Question: {QUESTION}"}]
    direct = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": QUESTION}]
    answer = recorded(seen, strategy="react", training_messages=direct)
    with FeedbackStore(config.db_path) as store:
        store.rate(store.record(answer), up=True)
        assert store.get(store.resolve(None)).messages == seen  # what the strategy saw stays recorded
    with ReplayBuffer(config) as buf:
        assert [r["prompt"] for r in buf.rows("kto") + buf.rows("sft")] == [direct, direct]
