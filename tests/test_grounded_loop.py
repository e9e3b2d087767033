"""The nightly loop on grounded questions, through the real commands, as a user runs it.

A folder of project notes is indexed with `nightjar index`; questions about it are asked (the assistant's
`answer`, which `nightjar ask` calls, plus `nightjar ask` itself), each answer is corrected with the user's
own wording and rated (`nightjar feedback correct` / `up`), and `nightjar train` runs with the default
objective. The report must show every row trained (the long grounded prompts shortened, none dropped), the
held-out grounded rows judged, and the published version's answers to held-out questions, from their own
grounded prompts, closer to the user's corrections than the base model's.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path

import pytest

from assistant import config as config_mod
from assistant import registry
from assistant.engine import GenParams, LlamaCppEngine, chat
from assistant.feedback import FeedbackStore
from assistant.feedback.keys import split_of
from assistant.service import Assistant
from tests.conftest import run_nightjar

pytestmark = pytest.mark.slow

NAMES = [
    "Falcon", "Heron", "Otter", "Lynx", "Maple", "Cedar", "Quartz", "Willow", "Comet", "Harbor", "Juniper",
    "Saffron", "Tundra", "Pebble", "Aurora", "Basalt", "Cobalt", "Delta", "Ember", "Fjord", "Garnet",
    "Hazel", "Indigo", "Jasper", "Kestrel", "Lagoon", "Mistral", "Nimbus", "Onyx", "Prairie", "Raven",
    "Sierra",
]  # fmt: skip
LEADS = ["Ana Ruiz", "Tom Becker", "Mei Lin", "Omar Haddad", "Lena Novak", "Raj Patel", "Sara Okafor"]
CITIES = ["Lyon", "Porto", "Gdansk", "Turku", "Bilbao", "Ghent", "Trieste"]
STYLE = "From your notes:"  # how the user wants every answer to start
ENV = {
    "NIGHTJAR_TRAIN_MAX_STEPS": "8",
    "NIGHTJAR_TRAIN_MAX_LENGTH": "320",
    "NIGHTJAR_TRAIN_EVAL_N_CTX": "1024",
    "NIGHTJAR_TRAIN_MIN_HOLDOUT_ROWS": "4",
    "NIGHTJAR_FEEDBACK_HOLDOUT_FRACTION": "0.25",
}


def note(n: int, name: str) -> str:
    lead, city = LEADS[n % len(LEADS)], CITIES[n % len(CITIES)]
    return (
        f"# Project {name}\n\n"
        f"Project {name} is led by {lead}. The team works from the {city} office and meets every "
        f"{['Monday', 'Tuesday', 'Wednesday', 'Thursday'][n % 4]} morning to review progress.\n\n"
        f"The budget of Project {name} is {40 + 5 * n} thousand euros for this year. Most of it pays for "
        "field work, equipment and two contractors; the rest is kept for travel and for reviews.\n\n"
        f"Open risks for {name}: supplier delays, a late permit, and the handover of the data pipeline to "
        "the operations group, planned for the end of the quarter.\n"
    )


def correction(n: int, name: str, cited: int) -> str:
    return f"{STYLE} Project {name} is led by {LEADS[n % len(LEADS)]} [{cited}]."


def closeness(answers: list[str], targets: list[str]) -> float:
    return sum(difflib.SequenceMatcher(None, a, t).ratio() for a, t in zip(answers, targets, strict=True))


def test_grounded_feedback_trains_whole_and_the_new_version_answers_closer(tmp_path: Path, engine):
    home, docs = tmp_path / "home", tmp_path / "notes"
    docs.mkdir()
    for n, name in enumerate(NAMES):
        (docs / f"{name.lower()}.md").write_text(note(n, name), encoding="utf-8")
    indexed = run_nightjar("index", str(docs), home=home, env=ENV)
    assert indexed.returncode == 0, indexed.stderr

    # questions asked as `nightjar ask` asks them; one through the command itself
    asked = run_nightjar("ask", f"Who leads Project {NAMES[0]}?", home=home, env=ENV)
    assert asked.returncode == 0, asked.stderr
    config = config_mod.load(home, environ=ENV)
    assistant = Assistant(config, engine=engine)
    for name in NAMES[1:]:
        assistant.answer(f"Who leads Project {name}?", params=GenParams(max_tokens=24))
    assistant.feedback_store.close()

    store = FeedbackStore(config.db_path)
    asked_all = list(reversed(store.recent(limit=len(NAMES))))
    store.close()
    assert [i.question for i in asked_all] == [f"Who leads Project {name}?" for name in NAMES]
    assert all(i.sources for i in asked_all), "every question was answered from the notes"
    fixes = []
    for n, (name, interaction) in enumerate(zip(NAMES, asked_all, strict=True)):
        own = [s["n"] for s in interaction.sources if s["source"].endswith(f"{name.lower()}.md")]
        fixes.append(correction(n, name, own[0] if own else 1))
        fixed = run_nightjar("feedback", "correct", interaction.id, "--text", fixes[-1], home=home, env=ENV)
        assert fixed.returncode == 0, fixed.stderr
    assert run_nightjar("feedback", "up", asked_all[0].id, home=home, env=ENV).returncode == 0

    dry = run_nightjar("train", "--dry-run", home=home, env=ENV)
    assert dry.returncode == 0, dry.stderr
    assert "would train dpo+sft" in dry.stdout and "shortened" in dry.stdout, dry.stdout

    trained = run_nightjar("train", home=home, env=ENV, timeout=1800)
    assert trained.returncode == 0, trained.stderr
    assert "published v1" in trained.stdout, trained.stdout + trained.stderr + _report(home)
    record = json.loads((config.models_dir / "v1" / "report.json").read_text(encoding="utf-8"))
    counts = next(h["rows"] for h in record["training"]["dpo"] if "rows" in h)
    assert counts["given"] == counts["trained"] > 0 and not counts["left_out"], counts
    assert counts["fitted"] > 0, "the long grounded prompts were shortened, not dropped"
    # the corrections train once, as DPO's chosen answers with the likelihood term; SFT trains the rest
    twice = [line for line in record["left_out"] if "chosen answers of this run's DPO pairs" in line]
    assert twice and twice[0].startswith(f"sft: {counts['given']} rows"), record["left_out"]
    counts = next(h["rows"] for h in record["training"]["sft"] if "rows" in h)
    assert 0 < counts["given"] == counts["trained"] <= config.train.general_replay, counts  # everyday answers
    judged = {c["name"]: c for c in record["checks"]}
    assert judged["held-out answers"]["passed"] and judged["held-out pairs"]["passed"]
    assert record["after"]["grounded"]["questions"] > 0, "held-out grounded questions were answered"

    held_out = [
        (i, fix)
        for i, fix in zip(asked_all, fixes, strict=True)
        if split_of(i.prompt_key, config.feedback.holdout_fraction) == "holdout"
    ]
    assert len(held_out) >= 4
    prompts, targets = [i.training_messages for i, _ in held_out], [fix for _, fix in held_out]
    base = _answers(registry.base_model_path(config), prompts)
    new = _answers(registry.get(config, "v1").gguf, prompts)
    assert closeness(new, targets) > closeness(base, targets), (base, new)
    assert sum(a.startswith(STYLE) for a in new) > sum(a.startswith(STYLE) for a in base), new


def _report(home: Path) -> str:
    """The last run's report, for a failure's message."""
    reports = sorted((home / "logs" / "runs").glob("*/report.md"))
    return reports[-1].read_text(encoding="utf-8") if reports else ""


def _answers(gguf: Path, prompts: list[list[dict[str, str]]]) -> list[str]:
    engine = LlamaCppEngine(gguf, n_ctx=2048)
    try:
        return [
            chat(engine, p, GenParams(temperature=0.0, max_tokens=32)).result().text.strip() for p in prompts
        ]
    finally:
        engine.llm.close()
