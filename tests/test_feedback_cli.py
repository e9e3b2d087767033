"""Feedback as a user gives it: a real `nightjar ask`, then `nightjar feedback ...` and `nightjar history`."""

from __future__ import annotations

import json
import stat
from datetime import datetime, timedelta
from pathlib import Path

from assistant import config as config_mod
from assistant.engine import LlamaCppEngine
from assistant.feedback import ReplayBuffer
from assistant.service import Assistant
from tests import hh_sample
from tests.conftest import run_nightjar
from tests.test_feedback_store import record


def one_line_error(result, *words: str) -> str:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in result.stderr, (
        result.stderr
    )
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def test_ask_is_recorded_and_rated_from_the_command_line(home: Path, tmp_path: Path):
    asked = run_nightjar(
        "ask", "--no-retrieval", "--max-tokens", "24", "--json", "What is the capital of France?", home=home
    )
    assert asked.returncode == 0, asked.stderr
    answer = json.loads(asked.stdout)
    assert answer["interaction_id"]

    shown = run_nightjar("history", "--json", home=home)
    (recorded,) = [json.loads(line) for line in shown.stdout.splitlines()]
    assert recorded["id"] == answer["interaction_id"]
    for key in (
        "question",
        "text",
        "messages",
        "prompt",
        "params",
        "model_version",
        "strategy",
        "conversation_id",
        "trace",
        "sources",
        "prompt_tokens",
        "completion_tokens",
        "latency_s",
    ):
        assert recorded[key] == answer[key], key
    assert recorded["params"]["max_tokens"] == 24 and recorded["prompt_tokens"] > 0

    short = answer["interaction_id"][:8]
    assert run_nightjar("feedback", "up", "--comment", "quick", home=home).returncode == 0
    down = run_nightjar("feedback", "down", short, home=home)
    assert down.returncode == 0 and f"thumbs down for {short}" in down.stdout
    fixed = run_nightjar("feedback", "correct", "--last", "--text", "Paris, on the Seine.", home=home)
    assert fixed.returncode == 0, fixed.stderr

    history = run_nightjar("history", home=home).stdout
    assert short in history and "down" in history and "corrected: Paris, on the Seine." in history
    assert "comment: quick" in history

    figures = json.loads(run_nightjar("feedback", "stats", "--json", home=home).stdout)
    assert figures["interactions"] == 1 and figures["feedback"]["up"] == figures["feedback"]["down"] == 1
    assert figures["feedback"]["correct"] == 1
    assert sum(figures["rows"]["dpo"].values()) == 1 and sum(figures["rows"]["kto"].values()) == 0

    out = tmp_path / "prefs.jsonl"
    exported = run_nightjar("feedback", "export", "--format", "dpo", "--out", str(out), home=home)
    assert exported.returncode == 0 and "wrote 1 dpo row" in exported.stdout
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert row["prompt"] == answer["messages"]  # exactly what the model saw
    assert row["chosen"] == [{"role": "assistant", "content": "Paris, on the Seine."}]
    assert row["rejected"] == [{"role": "assistant", "content": answer["text"]}]


def test_correct_opens_the_editor(home: Path, tmp_path: Path, config: config_mod.Config):
    with ReplayBuffer(config) as buf:
        record(buf.store, "When is the meeting?", "Monday.")
    editor = tmp_path / "editor.sh"
    # a user who replaces the first line (the original answer) and saves; the scissors part is ignored
    editor.write_text('#!/bin/sh\nsed -i "1s/.*/It moved to Tuesday./" "$1"\n')
    editor.chmod(editor.stat().st_mode | stat.S_IEXEC)
    result = run_nightjar(
        "feedback", "correct", home=home, env={"EDITOR": str(editor), "VISUAL": str(editor)}
    )
    assert result.returncode == 0, result.stderr
    with ReplayBuffer(config) as buf:
        (row,) = buf.rows("sft", "train") + buf.rows("sft", "holdout")
    assert row["completion"][0]["content"] == "It moved to Tuesday."

    unchanged = tmp_path / "keep.sh"
    unchanged.write_text("#!/bin/sh\ntrue\n")
    unchanged.chmod(unchanged.stat().st_mode | stat.S_IEXEC)
    result = run_nightjar(
        "feedback", "correct", home=home, env={"EDITOR": str(unchanged), "VISUAL": str(unchanged)}
    )
    one_line_error(result, "no correction saved")


def test_regenerate_and_choose(config: config_mod.Config, engine: LlamaCppEngine):
    config.feedback.holdout_fraction = 0.0
    assistant = Assistant(config, engine=engine)
    params = assistant.params(max_tokens=16)
    first = assistant.answer("Name a colour.", retrieval=False, params=params)
    second = assistant.regenerate(first.interaction_id[:10])
    assert second.question == first.question and second.conversation_id == first.conversation_id
    assert second.params["temperature"] >= config.feedback.regenerate_temperature
    assert second.params["max_tokens"] == 16 and second.interaction_id != first.interaction_id
    turn = assistant.alternatives(first.interaction_id)
    assert turn[1].data["retrieval"] is False  # asked the same way as the first: without retrieval
    assert [i.id for i in turn] == [first.interaction_id, second.interaction_id]
    assert second.text.strip() != first.text.strip()  # warmer, and another seed (reproducibly: seed + 1)
    assert assistant.choose(first.interaction_id, second.interaction_id) == second.interaction_id
    with ReplayBuffer(config) as buf:
        (row,) = buf.rows("dpo")
    assert row["chosen"][0]["content"] == second.text and row["rejected"][0]["content"] == first.text
    assert [t.id for t in assistant.conversation(first.conversation_id)] == [second.interaction_id]
    assert assistant.conversations()[0].id == first.conversation_id


def test_import_hh_rlhf_and_export_again(home: Path, tmp_path: Path):
    hh = hh_sample.write(tmp_path / "test.jsonl", 60)
    result = run_nightjar("feedback", "import", "--from", "hh-rlhf", "--limit", "40", str(hh), home=home)
    assert result.returncode == 0, result.stderr
    assert "imported 40 row(s)" in result.stdout
    again = run_nightjar("feedback", "import", "--from", "hh-rlhf", "--limit", "40", str(hh), home=home)
    assert "imported 0 row(s)" in again.stdout and "40 already present" in again.stdout
    out = tmp_path / "hh.jsonl"
    assert run_nightjar("feedback", "export", "--format", "dpo", "--out", str(out), home=home).returncode == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 40
    first = json.loads(hh.read_text().splitlines()[0])
    (converted,) = [r for r in rows if first["chosen"].endswith(r["chosen"][0]["content"])]
    assert converted["prompt"][0] == {"role": "user", "content": "what are some pranks with a pen i can do?"}
    assert [m["role"] for m in converted["prompt"]] == ["user", "assistant", "user", "assistant", "user"]


def test_bad_import_lines_are_reported_and_skipped(home: Path, tmp_path: Path):
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(
        "\n".join(
            [
                json.dumps({"prompt": "Is water wet?", "chosen": "Yes.", "rejected": "No."}),
                "{not json",
                json.dumps(
                    {"prompt": [{"role": "user", "content": "Hi"}], "completion": "Hello!", "label": "yes"}
                ),
                json.dumps(
                    {
                        "prompt": "Say hi",
                        "completion": [{"role": "assistant", "content": "Hi!"}],
                        "label": True,
                    }
                ),
                json.dumps({"text": "what is this"}),
            ]
        )
        + "\n"
    )
    result = run_nightjar("feedback", "import", str(mixed), home=home)
    assert result.returncode == 0, result.stderr
    assert "imported 2 row(s)" in result.stdout and "3 bad line(s) skipped" in result.stdout
    assert "line 2: not JSON" in result.stderr and "line 3: 'label' must be true or false" in result.stderr
    assert "line 5: not a dpo, kto or sft row" in result.stderr

    bad = tmp_path / "bad.jsonl"
    bad.write_text("nope\n")
    assert "no usable rows" in one_line_error(run_nightjar("feedback", "import", str(bad), home=home))
    one_line_error(
        run_nightjar("feedback", "import", str(tmp_path / "missing.jsonl"), home=home), "not found"
    )


def test_feedback_errors_are_one_line(home: Path):
    one_line_error(run_nightjar("feedback", "up", home=home), "no interactions recorded yet")
    one_line_error(run_nightjar("feedback", "down", "abc123", home=home), "no interaction 'abc123'")
    one_line_error(
        run_nightjar("feedback", "purge", "--before", "last tuesday", "--yes", home=home), "not a date"
    )
    one_line_error(run_nightjar("feedback", "purge", "--before", "2999-01-01", "--yes", home=home), "future")


def test_purge_from_the_command_line(home: Path, config: config_mod.Config):
    with ReplayBuffer(config) as buf:
        record(buf.store, "Secret question?", "Secret answer.")
    soon = (datetime.now() + timedelta(hours=1)).isoformat(timespec="seconds")
    result = run_nightjar("feedback", "purge", "--before", soon, "--yes", home=home)
    assert result.returncode == 0, result.stderr
    assert "1 interactions" in result.stdout
    assert "nothing recorded yet" in run_nightjar("history", home=home).stdout


def test_flag_and_choose_from_the_command_line(home: Path, config: config_mod.Config):
    sources = [{"id": "notes.md#0", "path": "notes.md"}, {"id": "budget.md#2", "path": "budget.md"}]
    with ReplayBuffer(config) as buf:
        first = record(buf.store, "When is the meeting?", "Monday.", sources=sources)
        second = record(buf.store, "When is the meeting?", "Tuesday.", sources=sources, alternative_of=first)
    flagged = run_nightjar("feedback", "flag", first[:8], "--source", "2", "--reason", "wrong", home=home)
    assert flagged.returncode == 0, flagged.stderr
    one_line_error(run_nightjar("feedback", "flag", first[:8], "--source", "9", home=home), "no source '9'")
    chosen = run_nightjar("feedback", "choose", second[:8], home=home)
    assert chosen.returncode == 0 and "chosen over 1 other response(s)" in chosen.stdout
    history = run_nightjar("history", home=home).stdout
    assert "flagged source budget.md#2 as wrong" in history and "chosen over its other responses" in history
    stats = run_nightjar("feedback", "stats", home=home).stdout
    assert "1 choice(s), 1 flagged source(s)" in stats
