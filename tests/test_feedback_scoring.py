"""Informativeness from the served model: rows it gets wrong score high, and sampling follows the scores."""

from __future__ import annotations

from pathlib import Path

import pytest

from assistant.config import Config
from assistant.feedback import ReplayBuffer
from assistant.feedback.scoring import NEUTRAL, ModelScorer
from assistant.grounding import grounded_messages, split_sources
from assistant.sources import Source

PROMPT = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "What is the capital of France?"},
]
RIGHT = [{"role": "assistant", "content": "The capital of France is Paris."}]
WRONG = [{"role": "assistant", "content": "Zebra blorf quantum wumpus eleven."}]


@pytest.fixture(scope="module")
def scorer(model_path: Path) -> ModelScorer:
    return ModelScorer(model_path, n_ctx=512)


def test_the_model_is_scored_on_what_it_gets_wrong(scorer: ModelScorer):
    assert scorer.mean_logprob(PROMPT, RIGHT) > scorer.mean_logprob(PROMPT, WRONG) + 1.0
    agrees = scorer({"prompt": PROMPT, "chosen": RIGHT, "rejected": WRONG})
    disagrees = scorer({"prompt": PROMPT, "chosen": WRONG, "rejected": RIGHT})
    assert agrees < 0.1 and disagrees > 0.9 and abs(agrees + disagrees - 1) < 1e-9
    good = scorer({"prompt": PROMPT, "completion": RIGHT, "label": True})
    bad = scorer({"prompt": PROMPT, "completion": RIGHT, "label": False})
    assert (
        abs(good + bad - 1) < 1e-9 and bad > good
    )  # the model likes this answer: calling it bad teaches more
    assert scorer({"prompt": PROMPT, "completion": WRONG}) > scorer({"prompt": PROMPT, "completion": RIGHT})
    too_long = [{"role": "user", "content": "word " * 2000}]  # longer than the context: shortened, scored
    assert scorer.mean_logprob(too_long, RIGHT) is not None
    assert scorer({"prompt": too_long, "completion": RIGHT}) != NEUTRAL


def test_a_shared_prompt_is_evaluated_once_and_scores_as_if_alone(model_path: Path, scorer: ModelScorer):
    other = [{"role": "assistant", "content": "Paris is the capital of France."}]
    alone = ModelScorer(model_path, n_ctx=512)._mean_logprob(
        scorer.engine.render(PROMPT), scorer.engine.render(PROMPT + other, add_generation_prompt=False)
    )
    render = scorer.engine.render
    scorer._mean_logprob(render(PROMPT), render(PROMPT + RIGHT, add_generation_prompt=False))  # in context
    evaluated = []
    original = scorer.llm.eval
    scorer.llm.eval = lambda ids: (evaluated.append(len(ids)), original(ids))
    try:
        after_sibling = scorer.mean_logprob(PROMPT, other)
    finally:
        scorer.llm.eval = original
    tokens = scorer.engine.tokenize
    full = scorer.engine.render(PROMPT + other, add_generation_prompt=False)
    reply_tokens = len(tokens(full)) - len(tokens(scorer.engine.render(PROMPT)))
    assert evaluated and evaluated[0] <= reply_tokens + 2  # only the reply's tokens, not the prompt's
    assert after_sibling == pytest.approx(alone, abs=1e-3)


def test_sampling_prefers_rows_the_model_gets_wrong(config: Config, scorer: ModelScorer):
    config.feedback.holdout_fraction = 0.0
    with ReplayBuffer(config) as buf:
        buf.add_preference(PROMPT, RIGHT, WRONG)  # the model agrees with this feedback already
        buf.add_preference(PROMPT, WRONG, RIGHT)  # and disagrees with this one (someone's odd taste)
        (picked,) = buf.sample("dpo", n=1, informativeness=scorer)
    assert picked["chosen"] == WRONG


def test_a_pair_is_judged_on_one_fitted_prompt_evaluated_once(model_path: Path, scorer: ModelScorer):
    """A grounded prompt too long for the context beside the longer reply: both replies are scored after the
    same fitted prompt (the same sources), and that prompt is evaluated once."""
    text = "the harbour ferry leaves at dawn and returns late. " * 18
    sources = [Source(f"notes/{n}.md", "", f"Note {n}: {text}", n) for n in range(1, 9)]
    prompt = grounded_messages("Answer briefly.", [], "When does the ferry leave?", sources)
    long = [{"role": "assistant", "content": "It leaves at dawn [1]. " + "It returns late in the day. " * 40}]
    short = [{"role": "assistant", "content": "At dawn [1]."}]
    render = scorer.engine.render
    assert scorer.engine.count_tokens(render(prompt + long, add_generation_prompt=False)) > 512
    evaluated = []
    original = scorer.llm.eval
    scorer.llm.eval = lambda ids: (evaluated.append(len(ids)), original(ids))
    try:
        chosen, rejected = scorer.pair_logprobs(prompt, long, short)
    finally:
        scorer.llm.eval = original
    assert chosen is not None and rejected is not None
    fitted = scorer._fitted(prompt, [long, short])
    kept = [n for n, _ in split_sources(fitted[0]["content"])[1]]
    assert 1 in kept and len(kept) < len(sources)  # uncited sources went, the cited one stayed
    reply = len(scorer.engine.tokenize(render(fitted + short, add_generation_prompt=False)))
    reply -= len(scorer.engine.tokenize(render(fitted)))
    assert len(evaluated) == 2 and evaluated[1] <= reply + 2  # the second reply's tokens only
    alone = ModelScorer(model_path, n_ctx=512).mean_logprob(fitted, short)
    assert rejected == pytest.approx(alone, abs=1e-3)  # as if scored alone, on the same sources


def test_the_quick_canaries_are_the_full_scorings_own_figures(model_path: Path):
    """The gate meets a scaled candidate with the quick canaries first: they must be what `score` measures."""
    from trainer import evaluate

    holdout = {"dpo": [{"id": "p", "prompt": PROMPT, "chosen": RIGHT, "rejected": WRONG}]}
    quick = evaluate.quick_canaries(model_path, n_ctx=512)
    full = evaluate.score(model_path, holdout, n_ctx=512)
    assert quick.general_total == 5 and quick.general_answered == full.general_answered == 5
    assert quick.general_answers == full.general_answers
    assert quick.perplexity == pytest.approx(full.perplexity, rel=1e-6) and quick.perplexity > 1
    assert full.rows["dpo"]["p"] > 0  # the holdout was scored too; the quick ones never score it
    reused = evaluate.score(model_path, holdout, n_ctx=512, quick=quick)
    assert reused.perplexity == quick.perplexity and reused.rows == full.rows
