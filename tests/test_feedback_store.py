"""The feedback store and the replay buffer's views, on a real SQLite database in a temp home."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from assistant.config import Config
from assistant.errors import NightjarError
from assistant.feedback import FeedbackStore, ReplayBuffer
from assistant.feedback.keys import near_duplicate_groups, split_of
from assistant.service import Answer

SYSTEM = "Answer from the context.\n\nContext:\n[1] notes.md: the meeting moved to Tuesday."


def make_answer(
    question: str,
    text: str,
    *,
    history: list | None = None,
    conversation_id: str | None = None,
    sources: list | None = None,
) -> Answer:
    """An answered turn shaped exactly as `Assistant.answer` returns it."""
    history = history or []
    messages = [{"role": "system", "content": SYSTEM}, *history, {"role": "user", "content": question}]
    return Answer(
        question=question,
        text=text,
        strategy="direct",
        model_version="base",
        prompt="".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
        + "<|im_start|>assistant\n",
        messages=messages,
        params={"temperature": 0.0, "top_p": 0.95, "max_tokens": 64, "seed": 0, "stop": []},
        conversation_id=conversation_id or uuid.uuid4().hex,
        history=history,
        sources=sources if sources is not None else [{"id": "notes.md#0", "path": "notes.md", "score": 0.9}],
    )


def record(store: FeedbackStore, question: str, text: str, **kw) -> str:
    alternative_of = kw.pop("alternative_of", None)
    return store.record(make_answer(question, text, **kw).to_dict(), alternative_of=alternative_of)


@pytest.fixture
def buf(config: Config) -> ReplayBuffer:
    config.feedback.holdout_fraction = 0.0  # everything in train unless a test says otherwise
    with ReplayBuffer(config) as buffer:
        yield buffer


def only(rows: list[dict]) -> dict:
    assert len(rows) == 1, rows
    return rows[0]


def reply(row: dict, key: str) -> str:
    (message,) = row[key]
    assert message["role"] == "assistant"
    return message["content"]


def test_an_interaction_keeps_everything_needed_to_rebuild_the_prompt(buf: ReplayBuffer):
    answer = make_answer(
        "When is the meeting?",
        "Tuesday.",
        history=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello!"}],
    )
    answer.trace = [{"step": "generate", "prompt_tokens": 40}]
    answer.prompt_tokens, answer.completion_tokens, answer.latency_s = 40, 3, 0.25
    i = buf.store.get(buf.store.record(answer.to_dict()))
    assert (i.question, i.response, i.messages, i.prompt) == (
        answer.question,
        "Tuesday.",
        answer.messages,
        answer.prompt,
    )
    assert i.history == answer.history and i.sources == answer.sources and i.data["trace"] == answer.trace
    assert (i.data["prompt_tokens"], i.data["completion_tokens"], i.data["latency_s"]) == (40, 3, 0.25)
    assert i.data["params"]["max_tokens"] == 64 and i.model_version == "base" and i.strategy == "direct"
    assert i.to_dict()["text"] == "Tuesday." and i.rating is None


def test_thumbs_become_kto_rows_and_up_votes_sft_rows(buf: ReplayBuffer):
    good = record(buf.store, "When is the meeting?", "Tuesday.")
    bad = record(buf.store, "Who runs the meeting?", "Nobody knows.")
    buf.store.rate(good, up=True, comment="right")
    buf.store.rate(bad, up=False)
    kto = {reply(r, "completion"): r for r in buf.rows("kto")}
    assert set(kto) == {"Tuesday.", "Nobody knows."}
    assert kto["Tuesday."]["label"] is True and kto["Nobody knows."]["label"] is False
    # the prompt is exactly what the model saw: system message with the retrieved context, then the question
    assert kto["Tuesday."]["prompt"] == buf.store.get(good).messages
    assert kto["Tuesday."]["prompt"][0]["content"] == SYSTEM
    assert reply(only(buf.rows("sft")), "completion") == "Tuesday."
    assert buf.rows("dpo") == []


def test_the_latest_thumb_counts(buf: ReplayBuffer):
    i = record(buf.store, "When is the meeting?", "Monday.")
    buf.store.rate(i, up=True)
    buf.store.rate(i, up=False)
    assert only(buf.rows("kto"))["label"] is False
    assert buf.rows("sft") == []


def test_a_correction_is_preferred_to_the_original(buf: ReplayBuffer):
    i = record(buf.store, "When is the meeting?", "Monday.")
    buf.store.rate(i, up=False)
    buf.store.correct(i, "  It moved to Tuesday.  ")
    row = only(buf.rows("dpo"))
    assert (reply(row, "chosen"), reply(row, "rejected")) == ("It moved to Tuesday.", "Monday.")
    assert row["prompt"] == buf.store.get(i).messages
    assert reply(only(buf.rows("sft")), "completion") == "It moved to Tuesday."
    assert buf.rows("kto") == []  # its thumb is paired now


def test_a_later_correction_replaces_the_earlier_one(buf: ReplayBuffer):
    i = record(buf.store, "When is the meeting?", "Monday.")
    buf.store.correct(i, "Tuesday.")
    buf.store.correct(i, "Tuesday at 10.")
    assert reply(only(buf.rows("dpo")), "chosen") == "Tuesday at 10."


def test_up_and_down_answers_to_equivalent_prompts_make_pairs(buf: ReplayBuffer):
    a = record(buf.store, "When is the meeting?", "Tuesday.")
    b = record(buf.store, "  when is the MEETING ", "No idea.")
    c = record(
        buf.store,
        "When is the meeting?",
        "Thursday.",
        history=[{"role": "user", "content": "about lunch"}, {"role": "assistant", "content": "ok"}],
    )
    buf.store.rate(a, up=True)
    buf.store.rate(b, up=False)
    buf.store.rate(c, up=False)  # another conversation: not the same prompt
    row = only(buf.rows("dpo"))
    assert (reply(row, "chosen"), reply(row, "rejected")) == ("Tuesday.", "No idea.")
    assert row["prompt"] == buf.store.get(a).messages
    assert [reply(r, "completion") for r in buf.rows("kto")] == ["Thursday."]


def test_every_rated_response_to_a_prompt_ends_up_in_a_pair(buf: ReplayBuffer):
    ups = [record(buf.store, "When is the meeting?", f"Tuesday, version {n}.") for n in range(3)]
    down = record(buf.store, "When is the meeting?", "Monday.")
    for i in ups:
        buf.store.rate(i, up=True)
    buf.store.rate(down, up=False)
    rows = buf.rows("dpo")
    assert {reply(r, "chosen") for r in rows} == {f"Tuesday, version {n}." for n in range(3)}
    assert {reply(r, "rejected") for r in rows} == {"Monday."}


def test_a_chosen_regeneration_beats_the_other_responses(buf: ReplayBuffer):
    first = record(buf.store, "When is the meeting?", "Monday.", conversation_id="conv")
    second = record(buf.store, "When is the meeting?", "Tuesday.", alternative_of=first)
    third = record(buf.store, "When is the meeting?", "Friday?", alternative_of=second)
    assert [i.id for i in buf.store.alternatives(third)] == [first, second, third]
    with pytest.raises(NightjarError, match="no other responses"):
        buf.store.choose(record(buf.store, "Alone?", "Yes."))
    buf.store.choose(second)
    rows = buf.rows("dpo")
    assert {reply(r, "chosen") for r in rows} == {"Tuesday."}
    assert {reply(r, "rejected") for r in rows} == {"Monday.", "Friday?"}
    # the conversation shows the chosen response for that turn
    assert [i.response for i in buf.store.conversation("conv")] == ["Tuesday."]


def test_flags_name_sources_by_number_or_id(buf: ReplayBuffer):
    # as retrieval numbers them: [1] and [2] in the answer; the third has no id
    sources = [
        {"n": 1, "id": "a.md#0", "source": "a.md"},
        {"n": 2, "id": "b.md#3", "source": "b.md"},
        {"n": 3, "source": "c.md"},
    ]
    i = record(buf.store, "When is the meeting?", "Tuesday.", sources=sources)
    buf.store.flag(i, "2", "irrelevant", comment="about budgets")
    buf.store.flag(i, "a.md#0", "wrong")
    buf.store.flag(i, "3", "wrong")
    flags = buf.source_flags()
    assert [(f["source_id"], f["reason"], f["source"]["source"]) for f in flags] == [
        ("b.md#3", "irrelevant", "b.md"),
        ("a.md#0", "wrong", "a.md"),
        ("3", "wrong", "c.md"),
    ]
    assert flags[0]["comment"] == "about budgets" and flags[0]["question"] == "When is the meeting?"
    with pytest.raises(NightjarError, match="no source '4'"):
        buf.store.flag(i, "4", "wrong")
    with pytest.raises(NightjarError, match="unknown flag reason"):
        buf.store.flag(i, "1", "boring")
    assert buf.rows("dpo") == buf.rows("kto") == buf.rows("sft") == []


def test_bad_feedback_is_refused(buf: ReplayBuffer):
    i = record(buf.store, "When is the meeting?", "Tuesday.")
    with pytest.raises(NightjarError, match="empty"):
        buf.store.correct(i, "   ")
    with pytest.raises(NightjarError, match="same as the answer"):
        buf.store.correct(i, "Tuesday.")
    with pytest.raises(NightjarError, match="no interaction"):
        buf.store.rate("0" * 32, up=True)
    assert buf.store.stats()["feedback"] == {"up": 0, "down": 0, "correct": 0, "choose": 0, "flag": 0}


def test_interactions_are_found_by_prefix_or_as_the_latest(buf: ReplayBuffer):
    with pytest.raises(NightjarError, match="no interactions recorded yet"):
        buf.store.resolve(None)
    ids = [record(buf.store, f"Question {n}?", "Answer.") for n in range(3)]
    assert buf.store.resolve(None) == buf.store.resolve("last") == ids[-1]
    assert buf.store.resolve(ids[0][:8].upper()) == ids[0]
    with pytest.raises(NightjarError, match="no interaction 'zz'"):
        buf.store.resolve("zz")
    assert [i.id for i in buf.store.recent(2)] == [ids[2], ids[1]]


def test_conversations_are_listed_and_loaded(buf: ReplayBuffer):
    history: list = []
    for question, text in [("Hi?", "Hello."), ("When is the meeting?", "Tuesday.")]:
        record(buf.store, question, text, history=list(history), conversation_id="c1")
        history += [{"role": "user", "content": question}, {"role": "assistant", "content": text}]
    record(buf.store, "Other?", "Yes.", conversation_id="c2")
    summaries = buf.store.conversations()
    assert [(s.id, s.title, s.turns) for s in summaries] == [("c2", "Other?", 1), ("c1", "Hi?", 2)]
    turns = buf.store.conversation("c1")
    assert [(t.question, t.response) for t in turns] == [
        ("Hi?", "Hello."),
        ("When is the meeting?", "Tuesday."),
    ]
    assert turns[1].history == history[:2]
    with pytest.raises(NightjarError, match="no conversation"):
        buf.store.conversation("nope")


def test_split_is_stable_and_keeps_equivalent_prompts_together(config: Config):
    config.feedback.holdout_fraction = 0.2
    with ReplayBuffer(config) as buf:
        for n in range(300):
            buf.add_preference(f"Question number {n}?", f"Good answer {n}.", f"Bad answer {n}.")
            buf.add_preference(f"question NUMBER {n}", f"Another good answer {n}.", f"Bad answer {n}.")
        train, holdout = buf.rows("dpo", "train"), buf.rows("dpo", "holdout")
        assert len(train) + len(holdout) == 600
        assert 0.13 < len(holdout) / 600 < 0.27
        number = {r["id"]: r["prompt"][-1]["content"].split()[-1].strip("?") for r in train + holdout}
        assert not {number[r["id"]] for r in train} & {number[r["id"]] for r in holdout}
        # more data elsewhere moves no row between splits, and the ids stay the same
        for n in range(50):
            buf.add_kto(f"New question {n}?", "Fine.", True)
        assert buf.rows("dpo", "train") == train and buf.rows("dpo", "holdout") == holdout
    # the split depends only on the prompt key and the fraction: the same forever
    assert split_of("some-key", 0.2) == split_of("some-key", 0.2)
    assert split_of("some-key", 0.0) == "train"


def test_near_duplicates_are_grouped():
    texts = [
        "how do i reset my router password",
        "How do I reset my router's password?",
        "how do i reset the router password please",
        "what is the capital of france",
        "",
        "",
    ]
    groups = near_duplicate_groups(texts, 0.6)
    assert groups[0] == groups[1] == groups[2]
    assert len({groups[0], groups[3], groups[4], groups[5]}) == 4


def test_sampling_collapses_near_duplicates_caps_and_skips_holdout_lookalikes(config: Config):
    config.feedback.holdout_fraction = 0.3
    config.feedback.max_rows_per_prompt = 1
    with ReplayBuffer(config) as buf:
        for n in range(5):  # five near-duplicates of one prompt
            buf.add_preference(
                f"Please summarize my notes about the garden project {'now' * (n + 1)}",
                f"Summary {n}.",
                "No.",
            )
        for n in range(60):
            buf.add_preference(f"Distinct topic {n} {uuid.uuid4().hex}", "Yes.", "No.")
        held = {r["prompt"][-1]["content"] for r in buf.rows("dpo", "holdout")}
        sample = buf.sample("dpo", seed=1)
        garden = [r for r in sample if "garden" in r["prompt"][-1]["content"]]
        assert len(garden) <= 1
        if any("garden" in q for q in held):  # a lookalike is held out: none may be trained on
            assert garden == []
        train_ids = {r["id"] for r in buf.rows("dpo", "train")}
        assert {r["id"] for r in sample} <= train_ids
        assert len(sample) == len({r["id"] for r in sample})
        assert len(buf.sample("dpo", n=7)) == 7
        config.feedback.max_rows = 5
        assert len(buf.sample("dpo")) == 5


def _age(buf: ReplayBuffer, row_ids: list[str], days: float) -> None:
    with buf.store._tx() as db:
        db.executemany(
            "UPDATE imported SET created_at = created_at - ? WHERE id = ?",
            [(days * 86400, i) for i in row_ids],
        )


def test_sampling_prefers_recent_informative_unconsumed_rows(buf: ReplayBuffer):
    buf.settings.retention_days = 365
    fresh = [buf.add_kto(f"Fresh question {n}?", "Yes.", True) for n in range(20)]
    old = [buf.add_kto(f"Old question {n}?", "Yes.", True) for n in range(20)]
    ancient = [buf.add_kto(f"Ancient question {n}?", "Yes.", True) for n in range(5)]
    _age(buf, old, 150)
    _age(buf, ancient, 400)
    picked = {r["id"] for r in buf.sample("kto", n=10, seed=3)}
    assert not picked & set(ancient)  # past the retention period
    assert len(picked & set(fresh)) >= 9  # 150 days is five half-lives: 32x less likely
    # a scorer that says the old rows are what the model gets wrong wins over recency
    scored = buf.sample(
        "kto", n=10, seed=3, informativeness=lambda r: 1.0 if "Old" in r["prompt"][-1]["content"] else 0.0001
    )
    assert len({r["id"] for r in scored} & set(old)) >= 9
    # a run records what it consumed; consumed rows are drawn less, and can be left out entirely
    buf.mark_consumed("run-1", "kto", sorted(picked))
    assert sorted(buf.consumed("run-1")["kto"]) == sorted(picked)
    assert {r["id"] for r in buf.rows("kto", only_unconsumed=True)} == set(fresh + old + ancient) - picked
    again = {r["id"] for r in buf.sample("kto", n=10, seed=3)}
    assert len(again & picked) < len(picked)
    assert buf.store.stats()["training_runs"] == 1


def test_purge_really_deletes(buf: ReplayBuffer):
    marker = "zebra-umbrella-" + uuid.uuid4().hex
    old = record(buf.store, f"My secret is {marker}?", f"I will keep {marker}.")
    buf.store.rate(old, up=False, comment=marker)
    buf.store.correct(old, f"Forget {marker}.")
    buf.add_preference(f"Imported {marker}", "a", "b")
    cutoff = time.time() + 0.001
    time.sleep(0.01)
    kept = record(buf.store, "When is the meeting?", "Tuesday.")
    buf.store.rate(kept, up=True)
    counts, scrubbed = buf.store.purge(cutoff)
    assert scrubbed
    assert counts["interactions"] == 1 and counts["feedback"] == 2 and counts["imported"] == 1
    assert [i.id for i in buf.store.recent()] == [kept]
    assert buf.rows("dpo") == [] and len(buf.rows("kto")) == 1
    home = buf.store.path.parent
    for f in home.glob("nightjar.db*"):
        assert marker.encode() not in f.read_bytes(), f


def test_a_corrupt_database_is_one_clear_error(home: Path):
    (home / "nightjar.db").write_bytes(b"this is not a database" * 100)
    with pytest.raises(NightjarError, match="cannot be used"):
        FeedbackStore(home / "nightjar.db")
