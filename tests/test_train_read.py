"""The read stage: what a night has to train on, counted as the user gave it, and what auto trains.

Rows come from the real path: the embedded model answers through `Assistant.answer`, the user regenerates,
rates every answer and picks a best one, as `nightjar ask`, `regenerate`, `feedback up/down` and `choose`
do.
"""

from __future__ import annotations

import pytest

from assistant import config as config_mod
from assistant.engine import GenParams
from assistant.service import Assistant
from trainer import data

QUESTIONS = [
    "What is a volcano?",
    "Describe a rainbow in one sentence.",
    "Tell me one fact about comets.",
    "What is a glacier?",
    "Why is the sea salty?",
    "What do owls eat?",
    "How do bicycles stay upright?",
    "What is a lighthouse for?",
    "Why do cats purr?",
    "What is a desert?",
    "What is a harp?",
    "Why do leaves fall?",
    "What is a canyon?",
    "How do bees make honey?",
    "What is a kettle for?",
    "Where do penguins live?",
]
SINGLE = 6  # the last questions, answered once and rated


@pytest.fixture(scope="module")
def rated_home(tmp_path_factory, engine):
    """Most questions answered, regenerated twice, all three answers rated (the first up, the others
    down; the up- and down-rated answers of a turn pair up); on every other one the user also chooses the
    second answer as the best. The last questions get one answer each, rated up or down (unpaired)."""
    home = tmp_path_factory.mktemp("home")
    config = config_mod.load(home, environ={"NIGHTJAR_FEEDBACK_HOLDOUT_FRACTION": "0.2"})
    assistant = Assistant(config, engine=engine)
    params = GenParams(max_tokens=12)
    for n, question in enumerate(QUESTIONS):
        first = assistant.answer(question, retrieval=False, params=params)
        if n >= len(QUESTIONS) - SINGLE:
            assistant.feedback(first.interaction_id, up=bool(n % 2))
            continue
        others = [assistant.regenerate(first.interaction_id) for _ in range(2)]
        assistant.feedback(first.interaction_id, up=True)
        for other in others:
            assistant.feedback(other.interaction_id, up=False)
        if n % 2:
            assistant.choose(first.interaction_id, others[0].interaction_id)
    assistant.feedback_store.close()
    return home


def test_every_rating_and_regeneration_counts_towards_the_minimum(rated_home):
    config = config_mod.load(rated_home, environ={})
    batch = data.read(config)
    held = {k: len(v) for k, v in batch.holdout.items()}
    assert sum(held.values()) > 0, "some questions are held out"
    # every answer was rated: its thumb is a pair or a kto row, an up-vote an sft row too
    assert batch.n_fresh() + sum(held.values()) >= 3 * (len(QUESTIONS) - SINGLE) + SINGLE
    assert batch.fresh["kto"] > 0 and batch.fresh["dpo"] > 0 and batch.fresh["sft"] > 0
    # a run samples at most feedback.max_rows_per_prompt (2) rows a question: the rest wait, and are said
    assert batch.n_fresh() > sum(len(v) for v in batch.new.values())
    lines = batch.left_out(data.AUTO)
    assert any("wait for a later night" in line for line in lines)
    assert all(line.split(":")[0] in data.KINDS for line in lines)


def test_auto_trains_every_kind_the_night_brought(rated_home):
    batch = data.read(config_mod.load(rated_home, environ={}))
    assert data.choose_objectives(batch, []) == ["dpo", "kto", "sft"]
    assert data.consumed_kinds(["dpo", "kto", "sft"]) == ["dpo", "kto", "sft"]
    thumbs_only = data.Batch(new={"kto": batch.new["kto"]})
    assert data.choose_objectives(thumbs_only, []) == ["kto"]
    assert data.choose_objectives(batch, ["raft"]) == ["raft"]
    not_trained = [line for line in batch.left_out(["dpo"]) if "not trained on" in line]
    assert [line.split(":")[0] for line in not_trained] == ["kto", "sft"]


def test_raft_without_a_learned_scorer_falls_back_to_sft_by_name():
    assert data.raft_fallback(["raft", "dpo"], can_score=True) == (["raft", "dpo"], None)
    objectives, why = data.raft_fallback(["raft", "dpo"], can_score=False)
    assert objectives == ["sft", "dpo"] and why.startswith("raft: no learned scorer")
    assert data.raft_fallback(["sft", "raft"], can_score=False)[0] == ["sft"]
    assert data.raft_fallback(["kto"], can_score=False) == (["kto"], None)


def test_too_few_held_out_rows_says_how_many_more_ratings_are_needed():
    batch = data.Batch(holdout={"dpo": [{}] * 3, "kto": [{}] * 6})
    why = data.holdout_shortfall(batch, ["dpo"], min_rows=8, holdout_fraction=0.2)
    assert why.startswith("3 held-out rows of dpo") and "about 25 more rated questions" in why
    assert data.holdout_shortfall(batch, ["dpo", "kto"], 6, 0.2) is None
