"""Feedback from other chat clients: an Open WebUI feedback export and an llm logs.db rated with
llm-logs-feedback, imported with the real `nightjar feedback import --from ...` and read back as TRL rows."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from tests.conftest import run_nightjar
from tests.test_feedback_cli import one_line_error

# ---- Open WebUI: records as GET /api/v1/evaluations/feedbacks/all/export returns them ----


def _message(mid: str, parent: str | None, children: list[str], role: str, content: str) -> dict[str, Any]:
    message: dict[str, Any] = {
        "id": mid,
        "parentId": parent,
        "childrenIds": children,
        "role": role,
        "content": content,
        "timestamp": 1718000000,
    }
    if role == "assistant":
        message.update(model="llama3.2:3b", modelName="llama3.2:3b", modelIdx=0, done=True)
    else:
        message["models"] = ["llama3.2:3b"]
    return message


def _chat(chat_id: str, messages: list[dict[str, Any]], system: str | None = None) -> dict[str, Any]:
    """A chat as Open WebUI stores it (the ChatModel), as a feedback record's snapshot holds it."""
    history = {m["id"]: m for m in messages}
    return {
        "id": chat_id,
        "user_id": "u-1",
        "title": "A chat",
        "chat": {
            "id": "",
            "title": "A chat",
            "models": ["llama3.2:3b"],
            "params": {"system": system} if system else {},
            "history": {"messages": history, "currentId": messages[-1]["id"]},
            "messages": messages,
            "tags": [],
            "timestamp": 1718000000000,
            "files": [],
        },
        "updated_at": 1718000100,
        "created_at": 1718000000,
        "share_id": None,
        "archived": False,
        "pinned": False,
        "meta": {},
        "folder_id": None,
    }


def _record(
    n: int,
    chat: dict[str, Any],
    message_id: str,
    rating: int | None,
    detail: int | None = None,
    reason: str = "",
    comment: str = "",
) -> dict[str, Any]:
    return {
        "id": f"fb-{n}",
        "user_id": "u-1",
        "version": 0,
        "type": "rating",
        "data": {
            "rating": rating,
            "model_id": "llama3.2:3b",
            "sibling_model_ids": None,
            "reason": reason,
            "comment": comment,
            "tags": [],
            "details": {"rating": detail},
        },
        "meta": {
            "arena": False,
            "model_id": "llama3.2:3b",
            "message_id": message_id,
            "message_index": 2,
            "chat_id": chat["id"],
            "base_models": {"llama3.2:3b": None},
        },
        "snapshot": {"chat": chat},
        "created_at": 1718000200 + n,
        "updated_at": 1718000200 + n,
    }


def open_webui_export(path: Path) -> Path:
    # a question answered twice (a regeneration): one answer rated up, the other down
    capital = _chat(
        "chat-capital",
        [
            _message("q1", None, ["a1", "a2"], "user", "What is the capital of France?"),
            _message("a1", "q1", [], "assistant", "Paris."),
            _message("a2", "q1", [], "assistant", "Lyon, I think."),
        ],
        system="Answer in one short sentence.",
    )
    # three turns; the last answer rated down (it shows its reasoning, which Open WebUI keeps in the text)
    notes = _chat(
        "chat-notes",
        [
            _message("n1", None, ["n2"], "user", "Hi"),
            _message("n2", "n1", ["n3"], "assistant", "Hello! How can I help?"),
            _message("n3", "n2", ["n4"], "user", "What did my notes say about the budget?"),
            _message(
                "n4",
                "n3",
                [],
                "assistant",
                '<details type="reasoning" done="true" duration="2">\n'
                "<summary>Thought for 2 seconds</summary>\n"
                "&gt; The user asks about notes.\n</details>\nI could not find any notes.",
            ),
        ],
    )
    weather = _chat(
        "chat-weather",
        [
            _message("w1", None, ["w2", "w3"], "user", "Will it rain tomorrow?"),
            _message("w2", "w1", [], "assistant", "I cannot see a forecast, so I do not know."),
            _message("w3", "w1", [], "assistant", "Maybe."),
        ],
    )
    records = [
        _record(1, capital, "a1", 1, detail=9, reason="accurate_information"),
        _record(2, capital, "a2", -1, reason="inaccurate_information", comment="it is Paris"),
        _record(3, notes, "n4", -1, comment="my notes are in the index"),
        _record(4, notes, "deleted-message", 1),  # its message is not in the snapshot
        _record(5, weather, "w2", None, detail=8),  # no thumb: 8/10 counts as up...
        _record(6, weather, "w2", -1),  # ...but a later record on the same message says down
        _record(7, weather, "w3", 0),
    ]
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


def exported(home: Path, tmp_path: Path, kind: str) -> list[dict[str, Any]]:
    out = tmp_path / f"{kind}.jsonl"
    result = run_nightjar("feedback", "export", "--format", kind, "--out", str(out), home=home)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in out.read_text().splitlines()]


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


def system(text: str) -> dict[str, str]:
    return {"role": "system", "content": text}


def test_import_lists_the_client_formats():
    result = run_nightjar("feedback", "import", "--help")
    assert result.returncode == 0
    assert "open-webui" in result.stdout and "llm-logs" in result.stdout


def test_open_webui_export(home: Path, tmp_path: Path):
    export = open_webui_export(tmp_path / "feedback-history-export-1718000300.json")
    result = run_nightjar("feedback", "import", "--from", "open-webui", str(export), home=home)
    assert result.returncode == 0, result.stderr
    assert "imported 3 row(s)" in result.stdout and "0 already present" in result.stdout, result.stdout
    assert "3 record(s) left out" in result.stdout, result.stdout
    assert "1 the rated message is not in the chat snapshot" in result.stdout  # why, in the summary too
    assert "skipped record 4: the rated message deleted-message is not in the chat snapshot" in result.stderr
    assert "skipped record 5: superseded by record 6 on the same message" in result.stderr
    assert "skipped record 7: rating 0 (neither up nor down)" in result.stderr

    (pair,) = exported(home, tmp_path, "dpo")
    assert pair["prompt"] == [system("Answer in one short sentence."), user("What is the capital of France?")]
    assert pair["chosen"] == [assistant("Paris.")] and pair["rejected"] == [assistant("Lyon, I think.")]
    thumbs = {r["completion"][0]["content"]: r for r in exported(home, tmp_path, "kto")}
    assert set(thumbs) == {"I could not find any notes.", "I cannot see a forecast, so I do not know."}
    assert thumbs["I cannot see a forecast, so I do not know."]["label"] is False  # the latest rating
    assert thumbs["I cannot see a forecast, so I do not know."]["prompt"] == [user("Will it rain tomorrow?")]
    thumb = thumbs["I could not find any notes."]  # its reasoning block is not part of the answer
    assert thumb["prompt"] == [
        user("Hi"),
        assistant("Hello! How can I help?"),
        user("What did my notes say about the budget?"),
    ]
    assert thumb["label"] is False
    assert exported(home, tmp_path, "sft") == []

    again = run_nightjar("feedback", "import", "--from", "open-webui", str(export), home=home)
    assert again.returncode == 0, again.stderr
    assert "imported 0 row(s)" in again.stdout and "3 already present" in again.stdout, again.stdout
    assert len(exported(home, tmp_path, "dpo")) == 1 and len(exported(home, tmp_path, "kto")) == 2


def test_open_webui_ratings_without_a_thumb_and_unrated_siblings(home: Path, tmp_path: Path):
    chat = _chat(
        "chat-colour",
        [
            _message("c1", None, ["c2", "c3", "c4"], "user", "Name a colour."),
            _message("c2", "c1", [], "assistant", "Blue."),
            _message("c3", "c1", [], "assistant", "Seven."),
            _message("c4", "c1", [], "assistant", "Green."),  # regenerated, never rated
        ],
    )
    records = [
        _record(1, chat, "c2", None, detail=7),  # up
        _record(2, chat, "c3", None, detail=3),  # down
        _record(3, chat, "c4", None, detail=5),  # neutral: left out
    ]
    export = tmp_path / "feedback-history-export-2.json"
    export.write_text(json.dumps(records), encoding="utf-8")
    result = run_nightjar("feedback", "import", "--from", "open-webui", str(export), home=home)
    assert result.returncode == 0, result.stderr
    assert "imported 1 row(s)" in result.stdout and "1 record(s) left out" in result.stdout, result.stdout
    assert "record 3: a neutral 5/10 rating" in result.stderr
    (pair,) = exported(home, tmp_path, "dpo")
    assert pair["chosen"] == [assistant("Blue.")] and pair["rejected"] == [assistant("Seven.")]
    assert exported(home, tmp_path, "kto") == []  # both rated answers are in the pair; Green is unrated


def test_not_an_open_webui_export_is_a_one_line_error(home: Path, tmp_path: Path):
    trl = tmp_path / "prefs.jsonl"
    trl.write_text(json.dumps({"prompt": "Hi", "chosen": "Hello.", "rejected": "Go away."}) + "\n" * 2)
    trl.write_text(trl.read_text() * 2)  # JSONL: two rows
    one_line_error(
        run_nightjar("feedback", "import", "--from", "open-webui", str(trl), home=home),
        "not an Open WebUI feedback export",
    )
    rows = tmp_path / "rows.json"
    rows.write_text(json.dumps([{"prompt": "Hi", "chosen": "Hello.", "rejected": "Go away."}]))
    one_line_error(
        run_nightjar("feedback", "import", "--from", "open-webui", str(rows), home=home),
        "not an Open WebUI feedback export",
    )
    obj = tmp_path / "settings.json"
    obj.write_text(json.dumps({"ui": {"theme": "dark"}}))
    one_line_error(
        run_nightjar("feedback", "import", "--from", "open-webui", str(obj), home=home),
        "expected a JSON list of feedback records",
    )
    unusable = tmp_path / "unusable.json"
    chat = _chat("c", [_message("m1", None, [], "user", "Hi")])
    unusable.write_text(json.dumps([_record(1, chat, "m1", 1)]))
    one_line_error(
        run_nightjar("feedback", "import", "--from", "open-webui", str(unusable), home=home),
        "no usable feedback",
        "record 1: the rated message m1 is not an assistant answer",
    )
    one_line_error(
        run_nightjar("feedback", "import", "--from", "open-webui", str(tmp_path / "nope.json"), home=home),
        "not found",
    )
    logs = llm_logs(tmp_path / "logs.db", [], [])  # the other client's file
    one_line_error(
        run_nightjar("feedback", "import", "--from", "open-webui", str(logs), home=home),
        "not an Open WebUI feedback export",
    )


# ---- llm: logs.db (the tables llm's migrations create) with llm-logs-feedback's table ----
LLM_SCHEMA = """
CREATE TABLE conversations (id TEXT PRIMARY KEY, name TEXT, model TEXT);
CREATE TABLE responses (
    id TEXT PRIMARY KEY, model TEXT, prompt TEXT, system TEXT, prompt_json TEXT, options_json TEXT,
    response TEXT, response_json TEXT, conversation_id TEXT REFERENCES conversations(id), duration_ms INTEGER,
    datetime_utc TEXT, input_tokens INTEGER, output_tokens INTEGER, token_details TEXT, schema_id TEXT,
    resolved_model TEXT
);
CREATE TABLE fragments (id INTEGER PRIMARY KEY, hash TEXT, content TEXT, datetime_utc TEXT, source TEXT);
CREATE TABLE prompt_fragments (
    response_id TEXT REFERENCES responses(id), fragment_id INTEGER REFERENCES fragments(id), "order" INTEGER,
    PRIMARY KEY (response_id, fragment_id, "order")
);
CREATE TABLE system_fragments (
    response_id TEXT REFERENCES responses(id), fragment_id INTEGER REFERENCES fragments(id), "order" INTEGER,
    PRIMARY KEY (response_id, fragment_id, "order")
);
CREATE TABLE feedback (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    response_id TEXT NOT NULL,
    datetime_utc TIMESTAMP DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')),
    feedback TEXT NOT NULL,
    comment TEXT
);
"""


def llm_logs(
    path: Path,
    responses: list[tuple[str, str, str | None, str, str | None, str]],
    feedback: list[tuple[str, str, str | None]],
    fragments: list[tuple[str, str]] | None = None,
) -> Path:
    """responses: (id, prompt, system, response, conversation id, datetime); feedback: (response id, '+1' or
    '-1', comment); fragments: (response id, fragment text) attached to the prompt."""
    db = sqlite3.connect(path)
    db.executescript(LLM_SCHEMA)
    for cid in {r[4] for r in responses if r[4]}:
        db.execute("INSERT INTO conversations VALUES (?, ?, ?)", (cid, "a conversation", "gpt-4o-mini"))
    db.executemany(
        "INSERT INTO responses (id, model, prompt, system, response, conversation_id, datetime_utc,"
        " options_json, duration_ms) VALUES (?, 'gpt-4o-mini', ?, ?, ?, ?, ?, '{}', 800)",
        responses,
    )
    for n, (rid, text) in enumerate(fragments or [], start=1):
        db.execute("INSERT INTO fragments (id, hash, content) VALUES (?, ?, ?)", (n, f"h{n}", text))
        db.execute(
            'INSERT INTO prompt_fragments (response_id, fragment_id, "order") VALUES (?, ?, 0)', (rid, n)
        )
    db.executemany("INSERT INTO feedback (response_id, feedback, comment) VALUES (?, ?, ?)", feedback)
    db.commit()
    db.close()
    return path


def test_llm_logs(home: Path, tmp_path: Path):
    logs = llm_logs(
        tmp_path / "logs.db",
        [
            ("01j0a", "Name a prime number.", "You are terse.", "7", "01jconv", "2024-06-10T10:00:00"),
            ("01j0b", "And an even one?", None, "9", "01jconv", "2024-06-10T10:01:00"),
            ("01j0c", "Unrelated, unrated.", None, "Sure.", "01jother", "2024-06-10T09:00:00"),
        ],
        [
            ("01j0a", "-1", None),  # changed their mind: the later +1 counts
            ("01j0a", "+1", "nice"),
            ("01j0b", "-1", "9 is odd"),
            ("01jgone", "+1", None),  # the response was deleted from the logs
        ],
    )
    result = run_nightjar("feedback", "import", "--from", "llm-logs", str(logs), home=home)
    assert result.returncode == 0, result.stderr
    assert "imported 2 row(s)" in result.stdout and "2 feedback row(s) left out" in result.stdout, (
        result.stdout
    )
    assert "skipped feedback row 1: superseded by feedback row 2 on the same response" in result.stderr
    assert "skipped feedback row 4: response 01jgone is not in the responses table" in result.stderr

    rows = {r["completion"][0]["content"]: r for r in exported(home, tmp_path, "kto")}
    assert set(rows) == {"7", "9"}
    assert rows["7"]["prompt"] == [system("You are terse."), user("Name a prime number.")]
    assert rows["7"]["label"] is True
    assert rows["9"]["prompt"] == [
        system("You are terse."),
        user("Name a prime number."),
        assistant("7"),
        user("And an even one?"),
    ]
    assert rows["9"]["label"] is False
    assert exported(home, tmp_path, "dpo") == []

    again = run_nightjar("feedback", "import", "--from", "llm-logs", str(logs), home=home)
    assert again.returncode == 0, again.stderr
    assert "imported 0 row(s)" in again.stdout and "2 already present" in again.stdout, again.stdout


def test_llm_logs_same_prompt_rated_up_and_down_is_a_pair(home: Path, tmp_path: Path):
    logs = llm_logs(
        tmp_path / "logs.db",
        [
            ("01j1a", "Summarize this.", None, "The budget is 5k.", "01jc1", "2024-06-11T10:00:00"),
            ("01j1b", "Summarize this.", None, "Budgets are important.", "01jc2", "2024-06-11T11:00:00"),
        ],
        [("01j1b", "-1", "vague"), ("01j1a", "+1", None)],
        fragments=[("01j1a", "Notes: the budget is 5k."), ("01j1b", "Notes: the budget is 5k.")],
    )
    result = run_nightjar("feedback", "import", "--from", "llm-logs", str(logs), home=home)
    assert result.returncode == 0, result.stderr
    assert "imported 1 row(s)" in result.stdout and "0 feedback row(s) left out" in result.stdout
    (pair,) = exported(home, tmp_path, "dpo")
    assert pair["prompt"] == [user("Notes: the budget is 5k.\nSummarize this.")]  # llm joins fragments so
    assert pair["chosen"] == [assistant("The budget is 5k.")]
    assert pair["rejected"] == [assistant("Budgets are important.")]
    assert exported(home, tmp_path, "kto") == []


def test_not_an_llm_logs_database_is_a_one_line_error(home: Path, tmp_path: Path):
    text = tmp_path / "logs.db"
    text.write_text("this is not a database\n")
    one_line_error(
        run_nightjar("feedback", "import", "--from", "llm-logs", str(text), home=home),
        "not an llm logs database",
    )
    unrated = tmp_path / "unrated.db"
    db = sqlite3.connect(unrated)
    db.executescript(LLM_SCHEMA.split("CREATE TABLE feedback")[0])
    db.close()
    one_line_error(
        run_nightjar("feedback", "import", "--from", "llm-logs", str(unrated), home=home),
        "no feedback table",
        "llm feedback+1",
    )
    other = tmp_path / "other.db"
    sqlite3.connect(other).executescript("CREATE TABLE notes (id INTEGER, body TEXT);")
    one_line_error(
        run_nightjar("feedback", "import", "--from", "llm-logs", str(other), home=home),
        "no responses table",
    )
