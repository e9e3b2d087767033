"""The feedback database under stress: a killed writer, a writer and a reader at once, old schemas."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from assistant.config import Config
from assistant.errors import NightjarError
from assistant.feedback import FeedbackStore, ReplayBuffer, db

ROOT = Path(__file__).resolve().parent.parent

# A writer that never stops: each line it prints acknowledges one committed write.
WRITER = r"""
import json, sys, uuid
from assistant.feedback import FeedbackStore, ReplayBuffer
from assistant.config import load

config = load(sys.argv[1], environ={})
rounds = int(sys.argv[2])
buf = ReplayBuffer(config)
store = buf.store
for n in range(rounds):
    q = f"question {sys.argv[3]}-{n} " + "padding " * 200
    answer = {"question": q, "text": "answer " * 100, "strategy": "direct", "model_version": "base",
              "prompt": q, "messages": [{"role": "user", "content": q}], "params": {},
              "conversation_id": "c", "history": [], "sources": []}
    i = store.record(answer)
    print(json.dumps({"interaction": i}), flush=True)
    f = store.rate(i, up=n % 2 == 0, comment="x" * 500)
    print(json.dumps({"feedback": f}), flush=True)
    batch = [("dpo", {"prompt": [{"role": "user", "content": f"{sys.argv[3]} {n} {k} " + "y" * 300}],
                      "chosen": [{"role": "assistant", "content": "ok"}],
                      "rejected": [{"role": "assistant", "content": "no"}]}) for k in range(50)]
    buf.add_rows(batch, source="writer")
    print(json.dumps({"batch": n}), flush=True)
"""


def _writer(tmp_path: Path, home: Path, rounds: int, tag: str) -> subprocess.Popen[str]:
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, str(script), str(home), str(rounds), tag],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=env,
    )


def test_killing_a_writer_mid_write_loses_no_acknowledged_feedback(tmp_path: Path, config: Config):
    rng = random.Random(7)
    acked: dict[str, set] = {"interaction": set(), "feedback": set(), "batch": set()}
    for kill_round in range(4):
        proc = _writer(tmp_path, config.home, 10_000, f"r{kill_round}")
        wanted = rng.randint(5, 60)
        assert proc.stdout is not None
        for _ in range(wanted):
            line = proc.stdout.readline()
            assert line, "the writer stopped early"
            ((kind, value),) = json.loads(line).items()
            acked[kind].add(value)
        proc.send_signal(signal.SIGKILL)  # it is writing the next row right now
        proc.wait()
        for line in proc.stdout:  # acknowledgements already printed before the kill landed
            ((kind, value),) = json.loads(line).items()
            acked[kind].add(value)

        with sqlite3.connect(config.db_path) as raw:
            assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            imported = raw.execute("SELECT COUNT(*) FROM imported").fetchone()[0]
        assert imported % 50 == 0  # a batch is all or nothing
        with FeedbackStore(config.db_path) as store:
            ids = {i.id for i in store.recent(limit=-1)}
            feedback_ids = {e.id for i in store.recent(limit=-1) for e in i.feedback}
        assert acked["interaction"] <= ids
        assert acked["feedback"] <= feedback_ids
        assert imported >= 50 * len(acked["batch"])
    assert len(acked["interaction"]) >= 4


def test_the_chat_writes_while_the_trainer_reads(tmp_path: Path, config: Config):
    rounds = 40
    proc = _writer(tmp_path, config.home, rounds, "w")
    seen: list[int] = []
    with ReplayBuffer(config) as buf:
        while True:
            done = proc.poll() is not None
            counts = buf.counts()  # one snapshot, while the writer commits
            seen.append(counts["dpo"]["train"] + counts["dpo"]["holdout"])
            rows = buf.rows("dpo", "train")
            assert all(r["chosen"][0]["content"] == "ok" for r in rows)
            if rows:  # the trainer writes too: what it consumed
                buf.mark_consumed("run-concurrent", "dpo", [r["id"] for r in rows[:5]])
            if done:
                break
        assert proc.wait() == 0
        assert seen == sorted(seen)  # a reader never sees rows disappear, nor half a batch
        assert all(n % 50 == 0 for n in seen)
        assert seen[-1] == rounds * 50
        assert sum(buf.counts()["kto"].values()) == rounds
        assert buf.consumed("run-concurrent")["dpo"]
    assert seen[0] < seen[-1], "the reader ran while the writer wrote"


def _v1_database(path: Path) -> None:
    """A database as the first schema wrote it: two answers to equivalent prompts, rated up and down."""
    raw = db.connect(path, upgrade_to=1)
    assert raw.execute("PRAGMA user_version").fetchone()[0] == 1
    for n, (question, text, kind) in enumerate(
        [("When is the meeting?", "Tuesday.", "up"), ("when is the meeting", "No idea.", "down")]
    ):
        messages = [{"role": "system", "content": "sys"}, {"role": "user", "content": question}]
        data = {"params": {}, "history": [], "sources": [], "trace": [], "latency_s": 0.1}
        raw.execute(
            "INSERT INTO interactions VALUES (?, ?, 'c', ?, ?, ?, 'base', 'direct', ?, ?, ?)",
            (
                f"id{n}",
                time.time(),
                f"id{n}",
                question,
                text,
                json.dumps(messages),
                "prompt",
                json.dumps(data),
            ),
        )
        raw.execute(
            "INSERT INTO feedback (interaction_id, created_at, kind) VALUES (?, ?, ?)",
            (f"id{n}", time.time(), kind),
        )
    raw.close()


def test_a_first_schema_database_is_migrated(config: Config):
    config.feedback.holdout_fraction = 0.0
    _v1_database(config.db_path)
    with ReplayBuffer(config) as buf:
        assert buf.store.db.execute("PRAGMA user_version").fetchone()[0] == db.SCHEMA_VERSION
        (row,) = buf.rows("dpo")  # the pair needs the prompt keys the migration computed
        assert (row["chosen"][0]["content"], row["rejected"][0]["content"]) == ("Tuesday.", "No idea.")
        assert [i.rating for i in buf.store.recent()] == ["down", "up"]
        buf.add_preference("new?", "yes", "no")  # the tables the migration added work
        assert len(buf.rows("dpo")) == 2


def test_a_failed_migration_leaves_the_old_schema_intact(config: Config, monkeypatch: pytest.MonkeyPatch):
    _v1_database(config.db_path)

    def broken(conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE half_done (x)")
        raise sqlite3.OperationalError("disk on fire")

    monkeypatch.setattr(db, "MIGRATIONS", [db.MIGRATIONS[0], broken])
    with pytest.raises(NightjarError, match="disk on fire"):
        db.connect(config.db_path)
    with sqlite3.connect(config.db_path) as raw:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == 1
        tables = {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "half_done" not in tables and "interactions" in tables
    monkeypatch.undo()
    with FeedbackStore(config.db_path) as store:  # and the real migration still runs afterwards
        assert len(store.recent()) == 2


def test_a_newer_schema_is_refused(config: Config):
    FeedbackStore(config.db_path).close()
    with sqlite3.connect(config.db_path) as raw:
        raw.execute(f"PRAGMA user_version = {db.SCHEMA_VERSION + 1}")
    with pytest.raises(NightjarError, match="newer"):
        FeedbackStore(config.db_path)


def test_a_crash_mid_answer_loses_no_feedback_and_no_index(tmp_path: Path):
    """What a user sees when a native library crashes (`Segmentation fault`, exit 139): the answer being
    written is gone, and everything before it is intact: the index, the recorded answers, their feedback."""
    from tests.conftest import run_nightjar

    home, docs = tmp_path / "home", tmp_path / "docs"
    docs.mkdir()
    (docs / "boiler.md").write_text(
        "# Boiler\n\nThe boiler in the basement was serviced on 12 March by Ana.\n"
    )
    assert run_nightjar("index", str(docs), home=home).returncode == 0
    asked = run_nightjar("ask", "--max-tokens", "16", "--json", "Who serviced the boiler?", home=home)
    assert asked.returncode == 0, asked.stderr
    first = json.loads(asked.stdout)["interaction_id"]
    assert run_nightjar("feedback", "up", first, "--comment", "right", home=home).returncode == 0

    env = {k: v for k, v in os.environ.items() if not k.startswith("NIGHTJAR_")}
    ask = ["ask", "--no-retrieval", "--max-tokens", "400", "Tell me a long story about a lighthouse keeper."]
    crashing = subprocess.Popen(
        [sys.executable, "-m", "assistant", "--home", str(home), *ask],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        cwd=ROOT,
        env=env,
    )
    assert crashing.stdout is not None
    assert crashing.stdout.read(8)  # the answer is streaming: the model is decoding right now
    crashing.send_signal(signal.SIGSEGV)  # as a crash inside llama.cpp ends the process
    assert crashing.wait(timeout=60) == -signal.SIGSEGV

    with sqlite3.connect(home / "nightjar.db") as con:
        assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    with FeedbackStore(home / "nightjar.db") as store:
        (kept,) = store.recent(limit=-1)  # the crashed answer was never recorded; the first one was
        assert kept.id == first and kept.data["sources"]
        assert [(e.kind, e.comment) for e in kept.feedback] == [("up", "right")]
    found = run_nightjar("search", "--json", "boiler serviced", home=home)
    assert found.returncode == 0 and "boiler.md" in found.stdout
