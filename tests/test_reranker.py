"""The reranker Nightjar trains on the user's own documents: the questions it learns from, its versions, the
gate, what serves, and the `nightjar reranker` commands.

The training test runs the real path: notes indexed by the assistant, questions written by the embedded
model through llama.cpp, a correction and a flag given through the feedback API, a cross-encoder fine-tuned
from the embedded MiniLM, exported to int8 ONNX and served by onnxruntime in search.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from assistant import config as config_mod
from assistant.reranker_queries import clean_question, feedback_examples
from assistant.service import Assistant
from retrieval import reranker_training
from retrieval.errors import RetrievalError
from retrieval.rerank import rerank_scores
from retrieval.reranker_training import Example, Group, RerankerReport, measure
from retrieval.search import search
from retrieval.trained_reranker import ONNX_FILE, OnnxCrossEncoder, RerankerVersion, RerankerVersions
from tests.conftest import run_nightjar, write_tiny_cross_encoder

TOPICS = [
    ("sourdough", "feed the starter with equal weights of flour and water every twelve hours"),
    ("bicycle chains", "clean the chain with degreaser and oil each link once a month"),
    ("tomato seedlings", "harden them off outdoors for a week before planting them out"),
    ("cast iron pans", "dry the pan on the stove and rub in a thin film of oil after washing"),
    ("houseplants", "water a fern when the top centimetre of soil feels dry"),
    ("backups", "keep three copies of your files on two kinds of media, one of them off site"),
    ("passwords", "use a password manager and a different long passphrase for every account"),
    ("running shoes", "replace them after about seven hundred kilometres of running"),
]
PLACES = ["Lyon", "Porto", "Gdansk", "Turku", "Bilbao", "Ghent"]


def write_notes(folder: Path) -> int:
    """48 short notes: eight topics in six places, each its own fact."""
    folder.mkdir(parents=True)
    n = 0
    for t, (topic, advice) in enumerate(TOPICS):
        for p, place in enumerate(PLACES):
            text = (
                f"# Notes on {topic} from the {place} workshop\n\n"
                f"At the {place} workshop on {topic}, held in week {10 + 6 * t + p}, the advice was to "
                f"{advice}. The session was run by a volunteer from {place} and {12 + t + p} people came.\n"
            )
            (folder / f"{topic.replace(' ', '-')}-{place.lower()}.md").write_text(text, encoding="utf-8")
            n += 1
    return n


# ---- the questions the model writes ----
@pytest.mark.parametrize(
    "reply, question",
    [
        ("How often should the starter be fed?", "How often should the starter be fed?"),
        ('Question: "When should chains be oiled?"\nThe passage says...', "When should chains be oiled?"),
        ("What is a fern? It is a plant.", "What is a fern?"),
        ("The passage is about ferns.", None),  # not a question
        ("Why?", None),  # too short to find anything with
        ("", None),
    ],
)
def test_the_models_reply_becomes_a_question_or_is_left_out(reply: str, question: str | None):
    assert clean_question(reply) == question


# ---- versions on disk ----
def staged(versions: RerankerVersions, tag: str) -> Path:
    folder = versions.staging()
    (folder / ONNX_FILE).write_text(tag)
    return folder


def test_versions_publish_roll_back_and_keep_every_version(tmp_path: Path):
    versions = RerankerVersions(tmp_path)
    assert versions.list() == [] and versions.current() is None
    with pytest.raises(RetrievalError, match="nothing to roll back"):
        versions.rollback()
    first = versions.publish(staged(versions, "one"), {"outcome": "published"})
    second = versions.publish(staged(versions, "two"), {"outcome": "published"})
    assert (first.name, second.name) == ("v1", "v2") and versions.current().name == "v2"
    assert json.loads((second.folder / "report.json").read_text())["version"] == "v2"
    assert versions.rollback().name == "v1"  # the one served before
    assert versions.rollback() is None  # past the first: no trained reranker
    assert [v.name for v in versions.list()] == ["v1", "v2"]  # rolled back, never deleted
    third = versions.publish(staged(versions, "three"), {"outcome": "published"})
    assert third.name == "v3" and (third.folder / ONNX_FILE).read_text() == "three"


def test_a_killed_run_leaves_the_served_version_and_its_leftovers_are_cleared(tmp_path: Path):
    versions = RerankerVersions(tmp_path)
    versions.publish(staged(versions, "one"), {})
    leftover = staged(versions, "half-written")  # a run killed before publishing
    assert versions.current().name == "v1" and [v.name for v in versions.list()] == ["v1"]
    versions.staging()  # the next run starts by clearing it
    assert not leftover.exists()
    (versions.root / "state.json").write_text("{not json")
    with pytest.raises(RetrievalError, match="state.json is damaged") as damaged:
        versions.current()
    assert "\n" not in str(damaged.value)


# ---- the gate's measure ----
class ByLength:
    """Scores a passage by its length: the longest first."""

    fused_weight = 0.0

    def score(self, query: str, passages: list[str]):
        return [len(p) for p in passages]


def test_measure_ranks_the_passage_in_fused_order_or_as_the_scorer_orders_it():
    texts = {1: "a", 2: "bb", 3: "ccc"}
    groups = [Group(Example("q", 3), [1, 2, 3], texts), Group(Example("r", 1), [1, 2, 3], texts)]
    fused = measure(groups)
    assert fused.mrr == pytest.approx((1 / 3 + 1) / 2, abs=1e-4) and fused.queries == 2
    reordered = measure(groups, ByLength())  # 3 first, 1 last
    assert reordered.mrr == pytest.approx((1 + 1 / 3) / 2, abs=1e-4)


def test_the_gate_wants_the_gain_and_no_loss_on_feedback():
    def report(before: float, after: float, fb: tuple[float, float] | None = None) -> RerankerReport:
        held = {
            "queries": 10,
            "before": {"mrr": before, "ndcg": before},
            "after": {"mrr": after, "ndcg": after},
        }
        if fb:
            held |= {"feedback_before": {"mrr": fb[0]}, "feedback_after": {"mrr": fb[1]}}
        return RerankerReport({}, {}, heldout=held)

    assert reranker_training._verdict(report(0.50, 0.56), 0.01)
    low = report(0.50, 0.505)
    assert not reranker_training._verdict(low, 0.01) and "under reranker_min_gain 0.01" in low.reasons[0]
    worse = report(0.50, 0.60, fb=(0.8, 0.7))
    assert not reranker_training._verdict(worse, 0.01) and "feedback queries rank worse" in worse.reasons[0]


# ---- the real path ----
@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Assistant, RerankerReport, dict]:
    """A home with 48 notes indexed, a corrected answer citing its source, a flagged source, and one real
    training run (published whatever its gain, so that serving can be tested: the gate is tested above)."""
    home = tmp_path_factory.mktemp("reranker-home")
    notes = write_notes(home / "notes")
    overrides = {
        "retrieval.reranker_min_gain": "-1",
        "retrieval.reranker_queries": str(notes),
        "retrieval.reranker_nightly": "true",
        "retrieval.reranker_layers": "2",  # the size the user configures is the size trained and served
        "retrieval.reranker_pair_tokens": "64",
    }
    config = config_mod.load(home, overrides, environ={})
    assistant = Assistant(config)
    assistant.index([home / "notes"])
    answer = assistant.answer("What was the advice on cast iron pans in Porto?")
    assert len(answer.sources) >= 2
    assistant.correct(answer.interaction_id, "Dry the pan and oil it [1].")
    assistant.flag_source(answer.interaction_id, "2", "irrelevant")
    feedback = {
        "question": answer.question,
        "positive": answer.sources[0].id,
        "flagged": answer.sources[1].id,
    }
    old = reranker_training.MIN_HELDOUT_QUERIES
    reranker_training.MIN_HELDOUT_QUERIES = 4  # 48 notes hold out about 10 questions, by hash
    try:
        report = assistant.train_reranker()
    finally:
        reranker_training.MIN_HELDOUT_QUERIES = old
    return home, assistant, report, feedback | {"notes": notes}


@pytest.mark.slow
def test_feedback_pairs_the_question_with_the_cited_source_and_the_flagged_one(trained):
    _, assistant, _, feedback = trained
    examples, left_out = feedback_examples(assistant.feedback_store)
    assert examples == [
        Example(feedback["question"], feedback["positive"], "feedback", (feedback["flagged"],))
    ]
    assert left_out == {}


@pytest.mark.slow
def test_a_training_run_accounts_for_every_question_and_publishes_what_serves(trained):
    home, assistant, report, feedback = trained
    accounted = report.train_queries + report.heldout["queries"] + sum(report.left_out.values())
    assert accounted == feedback["notes"] + 1  # a question per passage, and the user's own
    assert report.examples["feedback"] == 1 and report.examples["generated"] >= 30
    assert report.outcome == "published" and report.version == "v1"
    held = report.heldout
    assert held["served"] == "fused" and held["queries"] >= 4
    assert 0 <= held["before"]["mrr"] <= 1 and 0 <= held["after"]["mrr"] <= 1
    assert set(report.seconds) >= {"search", "train", "export", "judge", "total"}

    version = RerankerVersions(home / "index").current()
    assert version.name == "v1" and (version.folder / ONNX_FILE).is_file()
    assert json.loads((version.folder / "model" / "config.json").read_text())["num_hidden_layers"] == 2
    assert OnnxCrossEncoder(version).settings["max_tokens"] == 64
    assert json.loads((version.folder / "report.json").read_text())["heldout"] == held
    # search now reranks with it: the fused top candidates reordered by the ONNX cross-encoder's scores
    index = assistant.documents.index
    assert isinstance(index.reranker, OnnxCrossEncoder)
    query = "How should a fern be watered?"
    hits = search(index, query, k=5)
    fused = search(index, query, k=index.config.rerank_candidates, rerank=False)
    texts, scores = [h.chunk.indexed_text for h in fused], [h.scores["fused"] for h in fused]
    assert index.reranker.fused_weight > 0  # a correction to fusion, read beside it
    expected = rerank_scores(index.reranker, query, texts, scores)
    by_id = dict(zip([h.chunk.id for h in fused], expected, strict=True))
    assert [h.chunk.id for h in hits] == sorted(by_id, key=lambda c: -by_id[c])[:5]
    assert [h.ranks["rerank"] for h in hits] == [1, 2, 3, 4, 5]


@pytest.mark.slow
def test_before_any_step_the_reranker_orders_exactly_as_fusion(trained, tmp_path: Path):
    """The head starts at zero and the fused score is added to it: an untrained candidate, exported as it
    would serve, ranks every query's passages as fusion does, so training can only start from fusion."""

    _, assistant, _, _ = trained
    index = assistant.documents.index
    # each question's own passage is fusion's third, not its first
    groups, untrained = _fitted(index, PLACES[:2], 3, tmp_path / "untrained", epochs=0)
    assert untrained.fused_weight == reranker_training.FUSED_WEIGHT_INIT
    for g in groups:
        scores = rerank_scores(
            untrained, g.example.query, [g.texts[c] for c in g.candidates], g.fused_of(g.candidates)
        )
        assert [c for _, c in sorted(zip(-scores, g.candidates, strict=True))] == g.candidates
    assert measure(groups, untrained) == measure(groups) and measure(groups).mrr == pytest.approx(
        1 / 3, abs=1e-3
    )


@pytest.mark.slow
def test_a_smaller_reranker_serves_with_the_layers_and_pair_length_it_was_trained_with(
    trained, tmp_path: Path
):
    """Fewer layers and shorter pairs make a faster reranker: what a version was trained with is what it
    serves with (its ONNX file has those layers; its pairs are cut where training cut them), and the int8
    file scores as the float model does."""
    import numpy as np
    import torch
    from transformers import AutoModelForSequenceClassification

    from retrieval.trained_reranker import pair_tokenizer

    _, assistant, _, _ = trained
    index = assistant.documents.index
    folder = tmp_path / "small"
    groups, served = _fitted(index, PLACES[:3], 1, folder, epochs=2, layers=2, pair_tokens=24)
    assert json.loads((folder / "model" / "config.json").read_text())["num_hidden_layers"] == 2
    g = groups[0]
    passages = [g.texts[c] for c in g.candidates]
    assert [len(served.encoder.encode(g.example.query, p).ids) for p in passages] == [24] * len(passages)

    model = AutoModelForSequenceClassification.from_pretrained(str(folder / "model")).eval()
    enc = pair_tokenizer(folder / "model", padded=True, max_tokens=24).encode_batch(
        [(g.example.query, p) for p in passages]
    )
    with torch.no_grad():
        inputs = {k: torch.tensor([getattr(e, a) for e in enc]) for k, a in INPUTS}
        float_scores = model(**inputs).logits.view(-1).numpy()
    onnx_scores = served.score(g.example.query, passages)
    spread = float(float_scores.max() - float_scores.min())
    assert spread > 0 and np.abs(onnx_scores - float_scores).max() < 0.1 * spread + 1e-3


INPUTS = (("input_ids", "ids"), ("attention_mask", "attention_mask"), ("token_type_ids", "type_ids"))


def _fitted(
    index, places: list[str], rank: int, folder: Path, epochs: int, layers: int = 0, pair_tokens: int = 0
):
    """(groups, version served from `folder`): a question per topic and place, whose own passage is fusion's
    `rank`-th for it, fitted for `epochs` (with `layers` and `pair_tokens`; 0: the config's) and exported to
    int8 ONNX as a trained version is."""
    from retrieval.onnx_embedder import export

    questions = [f"What was the advice on {topic} in {place}?" for topic, _ in TOPICS for place in places]
    own = [search(index, q, k=rank, rerank=False)[rank - 1].chunk.id for q in questions]
    examples = [Example(q, c) for q, c in zip(questions, own, strict=True)]
    groups, _ = reranker_training.build_groups(index, examples)
    config = index.config
    reranker_training.fit(
        groups,
        Path(config.embedder_path()),
        folder / "model",
        epochs,
        layers or config.reranker_layers,
        pair_tokens or config.reranker_pair_tokens,
    )
    export(folder / "model", folder / ONNX_FILE, quantized=True, output="logits")
    return groups, OnnxCrossEncoder(RerankerVersion(folder.name, folder, {}))


@pytest.mark.slow
def test_a_cross_encoder_the_user_names_wins_over_the_trained_one(trained, tmp_path: Path):
    from retrieval.index import Index
    from retrieval.rerank import CrossEncoderReranker

    home, assistant, _, _ = trained
    folder = write_tiny_cross_encoder(tmp_path / "named-cross-encoder")
    config = assistant.config.retrieval
    assert isinstance(Index(home / "index", config).reranker, OnnxCrossEncoder)  # v1 is in use
    named = Index(home / "index", replace(config, reranker=str(folder)))
    assert isinstance(named.reranker, CrossEncoderReranker)
    assert Index(home / "index", replace(config, trained_reranker=False)).reranker is None


@pytest.mark.slow
def test_the_commands_list_roll_back_and_say_what_reranks(trained):
    home, _, _, _ = trained
    listed = run_nightjar("reranker", home=home)
    assert listed.returncode == 0 and "* v1" in listed.stdout and "held-out MRR@10" in listed.stdout
    doctor = run_nightjar("doctor", home=home)
    assert "trained v1" in doctor.stdout
    explained = run_nightjar("search", "--explain", "fern watering", home=home)
    assert "by the cross-encoder trained reranker v1" in explained.stdout

    rolled = run_nightjar("reranker", "rollback", home=home)
    assert rolled.returncode == 0 and "no trained reranker in use now" in rolled.stdout
    assert "reranking: skipped" in run_nightjar("search", "--explain", "fern", home=home).stdout
    again = run_nightjar("reranker", "rollback", home=home)
    assert again.returncode == 2 and again.stderr.strip() == (
        "error: no trained reranker is in use: nothing to roll back"
    )
    assert "v1" in run_nightjar("reranker", home=home).stdout  # still listed, not deleted


@pytest.mark.slow
def test_the_nightly_run_trains_again_only_when_documents_or_approved_answers_change(trained):
    home, assistant, _, _ = trained
    assert assistant.reranker_due() is None  # nothing new since its run
    answer = assistant.answer("What was the advice on backups in Turku?")
    assistant.correct(answer.interaction_id, "Keep three copies [1].")
    assert "answers you approved cite sources" in assistant.reranker_due()
    extra = home / "more"
    extra.mkdir()
    (extra / "kites.md").write_text("# Kites\n\nFly a kite in a steady wind of 10 to 25 km/h.\n")
    assistant.index([extra])
    assert assistant.reranker_due() == "the documents changed since the reranker's last run"


@pytest.mark.slow
def test_too_few_questions_keep_what_serves_and_say_how_many_are_needed(tmp_path: Path):
    home = tmp_path / "home"
    write_notes(home / "notes")
    assert run_nightjar("index", str(home / "notes"), home=home).returncode == 0
    done = run_nightjar("reranker", "train", "--queries", "3", home=home)
    assert done.returncode == 1, done.stderr
    assert "it needs at least 16 and 8" in done.stdout and "not kept" in done.stdout
    assert RerankerVersions(home / "index").current() is None
    listed = run_nightjar("reranker", home=home).stdout
    assert "no trained reranker yet" in listed and "last run: not kept: " in listed


@pytest.mark.slow
def test_the_scheduled_run_trains_the_reranker_when_it_is_due(tmp_path: Path):
    home = tmp_path / "home"
    write_notes(home / "notes")
    assert run_nightjar("index", str(home / "notes"), home=home).returncode == 0
    env = {"NIGHTJAR_RETRIEVAL_RERANKER_QUERIES": "3", "NIGHTJAR_TRAIN_MAX_LOAD": "1000"}
    off = run_nightjar("train", "--scheduled", home=home, env=env)
    assert off.returncode == 0 and "reranker:" not in off.stdout  # reranker_nightly is off by default
    env["NIGHTJAR_RETRIEVAL_RERANKER_NIGHTLY"] = "true"
    night = run_nightjar("train", "--scheduled", home=home, env=env)
    assert night.returncode == 0, night.stderr
    assert "nothing to do" in night.stdout  # no feedback for the model
    assert "reranker: training (no reranker was trained on these documents yet)" in night.stdout
    assert "not kept: " in night.stdout and "it needs at least 16" in night.stdout
    again = run_nightjar("train", "--scheduled", home=home, env=env)
    assert "reranker:" not in again.stdout  # nothing new since
