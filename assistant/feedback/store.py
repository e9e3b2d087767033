"""The feedback store: every answered turn (an interaction) and the feedback a user gives on it.

Feedback is append-only events on an interaction: `up` / `down` (the latest thumb counts), `correct` (the
user's own answer; the latest counts), `choose` (this response is the best of its turn's regenerations) and
`flag` (one of its sources was wrong or irrelevant). Each call is one committed transaction: when it
returns, the event is on disk.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from assistant.errors import NightjarError
from assistant.feedback.db import SCHEMA_VERSION, FeedbackDBError, connect, transaction
from assistant.feedback.keys import prompt_key

FLAG_REASONS = ("wrong", "irrelevant")
# Answer fields kept in their own columns; the rest of the answer is stored as JSON in `data`
_COLUMNS = ("question", "text", "strategy", "model_version", "messages", "prompt", "conversation_id")


@dataclass
class FeedbackEvent:
    id: int
    interaction_id: str
    created_at: float
    kind: str  # up, down, correct, choose, flag
    text: str | None = None  # correct: the corrected answer; flag: the reason
    target: str | None = None  # flag: the source's id
    comment: str | None = None


@dataclass
class Interaction:
    """One answered turn as recorded, with the feedback given on it (oldest first)."""

    id: str
    created_at: float
    conversation_id: str
    turn_id: str
    question: str
    response: str
    model_version: str
    strategy: str
    messages: list[dict[str, str]]
    prompt: str
    data: dict[str, Any]  # history, sources, trace, reasoning, params, token counts, latency, ...
    prompt_key: str = ""
    feedback: list[FeedbackEvent] = field(default_factory=list)

    @property
    def rating(self) -> str | None:
        """'up', 'down' or None: the latest thumb."""
        thumbs = [e.kind for e in self.feedback if e.kind in ("up", "down")]
        return thumbs[-1] if thumbs else None

    @property
    def correction(self) -> str | None:
        texts = [e.text for e in self.feedback if e.kind == "correct"]
        return texts[-1] if texts else None

    @property
    def history(self) -> list[dict[str, str]]:
        return self.data.get("history") or []

    @property
    def sources(self) -> list[dict[str, Any]]:
        return self.data.get("sources") or []

    @property
    def training_messages(self) -> list[dict[str, str]]:
        """The prompt training pairs the answer with: the direct grounded prompt (no reasoning
        instructions, no tool protocol); `messages` for interactions recorded before it was kept."""
        return self.data.get("training_messages") or self.messages

    def to_dict(self) -> dict[str, Any]:
        """The whole interaction (answer fields included) as plain JSON-able data."""
        return {
            **self.data,
            "id": self.id,
            "created_at": self.created_at,
            "conversation_id": self.conversation_id,
            "turn_id": self.turn_id,
            "question": self.question,
            "text": self.response,
            "model_version": self.model_version,
            "strategy": self.strategy,
            "messages": self.messages,
            "prompt": self.prompt,
            "feedback": [e.__dict__ for e in self.feedback],
        }


@dataclass
class ConversationSummary:
    id: str
    title: str  # the first question
    started_at: float
    updated_at: float
    turns: int


def new_id() -> str:
    """A new interaction id; a face may name an answer with one before the answer exists."""
    return uuid.uuid4().hex


def numbered_sources(sources: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """An answer's sources by citation number (retrieval's "n", else their position from 1)."""
    return {str(s.get("n", k)): s for k, s in enumerate(sources, start=1)}


def source_id(source: dict[str, Any], number: str) -> str:
    """How a flag names a source: its id when retrieval gave one, else its citation number."""
    for key in ("id", "chunk_id"):
        if source.get(key) not in (None, ""):
            return str(source[key])
    return number


class FeedbackStore:
    """Interactions and feedback in the SQLite database at `path` (created and migrated on open)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.db = connect(self.path)
        self._lock = threading.Lock()  # one connection, shared by the threads of a TUI

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> FeedbackStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _tx(self, write: bool = True) -> Iterator[Any]:
        try:
            with self._lock, transaction(self.db, write) as db:
                yield db
        except sqlite3.Error as exc:  # disk full, locked for too long, damaged: one clear line
            raise FeedbackDBError(f"feedback database {self.path}: {exc}") from exc

    # ---- recording ----
    def record(
        self, answer: dict[str, Any], *, alternative_of: str | None = None, interaction_id: str | None = None
    ) -> str:
        """Store an answered turn (an `Answer.to_dict()`); returns the new interaction's id (`interaction_id`
        when given: a fresh 32-digit hex id, as `new_id` makes).

        With `alternative_of`, the answer is another response to that interaction's turn (a regeneration).
        """
        interaction_id = interaction_id or new_id()
        history = answer.get("history") or []
        key = prompt_key([*history, {"role": "user", "content": answer["question"]}])
        data = {k: v for k, v in answer.items() if k not in _COLUMNS and k != "interaction_id"}
        with self._tx() as db:
            turn_id = interaction_id
            conversation_id = answer["conversation_id"]
            if alternative_of is not None:
                row = db.execute(
                    "SELECT turn_id, conversation_id FROM interactions WHERE id = ?", (alternative_of,)
                ).fetchone()
                if row is None:
                    raise NightjarError(f"no interaction {alternative_of}")
                turn_id, conversation_id = row["turn_id"], row["conversation_id"]
            db.execute(
                "INSERT INTO interactions (id, created_at, conversation_id, turn_id, question, response,"
                " model_version, strategy, messages, prompt, data, prompt_key)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    interaction_id,
                    time.time(),
                    conversation_id,
                    turn_id,
                    answer["question"],
                    answer["text"],
                    answer["model_version"],
                    answer["strategy"],
                    json.dumps(answer["messages"], ensure_ascii=False),
                    answer["prompt"],
                    json.dumps(data, ensure_ascii=False, default=str),
                    key,
                ),
            )
        return interaction_id

    def _add(
        self,
        interaction_id: str,
        kind: str,
        *,
        text: str | None = None,
        target: str | None = None,
        comment: str | None = None,
    ) -> int:
        with self._tx() as db:
            if db.execute("SELECT 1 FROM interactions WHERE id = ?", (interaction_id,)).fetchone() is None:
                raise NightjarError(f"no interaction {interaction_id}")
            cursor = db.execute(
                "INSERT INTO feedback (interaction_id, created_at, kind, text, target, comment)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (interaction_id, time.time(), kind, text, target, comment or None),
            )
            return int(cursor.lastrowid)

    def rate(self, interaction_id: str, up: bool, comment: str | None = None) -> int:
        """Thumbs up or down (the latest thumb on an interaction is the one that counts)."""
        return self._add(interaction_id, "up" if up else "down", comment=comment)

    def correct(self, interaction_id: str, text: str, comment: str | None = None) -> int:
        """The user's own, better answer: it becomes the preferred response, the original the rejected one."""
        text = text.strip()
        if not text:
            raise NightjarError("the correction is empty")
        if text == self.get(interaction_id).response.strip():
            raise NightjarError("the correction is the same as the answer")
        return self._add(interaction_id, "correct", text=text, comment=comment)

    def choose(self, interaction_id: str) -> int:
        """Prefer this response over the other responses to its turn."""
        if len(self.alternatives(interaction_id)) < 2:
            raise NightjarError(f"interaction {interaction_id[:8]} has no other responses to choose from")
        return self._add(interaction_id, "choose")

    def flag(self, interaction_id: str, source: str, reason: str, comment: str | None = None) -> int:
        """Flag one of the answer's sources (by citation number or source id) as wrong or irrelevant."""
        if reason not in FLAG_REASONS:
            raise NightjarError(f"unknown flag reason '{reason}'; use one of {', '.join(FLAG_REASONS)}")
        numbered = numbered_sources(self.get(interaction_id).sources)
        names = {source_id(s, number) for number, s in numbered.items()}
        if source in numbered:
            target = source_id(numbered[source], source)
        elif source in names:
            target = source
        else:
            known = (
                ", ".join(f"{number} ({source_id(s, number)})" for number, s in numbered.items()) or "none"
            )
            raise NightjarError(
                f"interaction {interaction_id[:8]} has no source '{source}'; its sources: {known}"
            )
        return self._add(interaction_id, "flag", text=reason, target=target, comment=comment)

    # ---- reading ----
    def resolve(self, ref: str | None) -> str:
        """An interaction id from a reference: a full id, a unique prefix, or None / 'last' for the latest."""
        with self._tx(write=False) as db:
            if ref in (None, "", "last"):
                row = db.execute(
                    "SELECT id FROM interactions ORDER BY created_at DESC, rowid DESC LIMIT 1"
                ).fetchone()
                if row is None:
                    raise NightjarError("no interactions recorded yet: ask something first")
                return row["id"]
            ref = ref.strip().lower()
            rows = db.execute(
                "SELECT id FROM interactions WHERE id >= ? AND id < ? LIMIT 2", (ref, ref + "\U0010ffff")
            ).fetchall()
        if not rows:
            raise NightjarError(f"no interaction '{ref}' (see `nightjar history`)")
        if len(rows) > 1:
            raise NightjarError(f"'{ref}' matches several interactions: give more of the id")
        return rows[0]["id"]

    def _load(self, db: Any, where: str, params: tuple[Any, ...]) -> list[Interaction]:
        rows = db.execute(f"SELECT * FROM interactions WHERE {where}", params).fetchall()
        found = [
            Interaction(
                id=r["id"],
                created_at=r["created_at"],
                conversation_id=r["conversation_id"],
                turn_id=r["turn_id"],
                question=r["question"],
                response=r["response"],
                model_version=r["model_version"],
                strategy=r["strategy"],
                messages=json.loads(r["messages"]),
                prompt=r["prompt"],
                data=json.loads(r["data"]),
                prompt_key=r["prompt_key"],
            )
            for r in rows
        ]
        by_id = {i.id: i for i in found}
        for chunk_start in range(0, len(found), 500):
            ids = [i.id for i in found[chunk_start : chunk_start + 500]]
            events = db.execute(
                f"SELECT * FROM feedback WHERE interaction_id IN ({','.join('?' * len(ids))}) ORDER BY id",
                ids,
            ).fetchall()
            for e in events:
                by_id[e["interaction_id"]].feedback.append(FeedbackEvent(**dict(e)))
        return found

    def get(self, interaction_id: str) -> Interaction:
        with self._tx(write=False) as db:
            found = self._load(db, "id = ?", (interaction_id,))
        if not found:
            raise NightjarError(f"no interaction {interaction_id}")
        return found[0]

    def alternatives(self, interaction_id: str) -> list[Interaction]:
        """Every response to the same turn as `interaction_id` (itself included), oldest first."""
        with self._tx(write=False) as db:
            return self._load(
                db,
                "turn_id = (SELECT turn_id FROM interactions WHERE id = ?) ORDER BY created_at, rowid",
                (interaction_id,),
            )

    def recent(self, limit: int = 20) -> list[Interaction]:
        """The latest interactions, newest first."""
        with self._tx(write=False) as db:
            return self._load(db, "1 ORDER BY created_at DESC, rowid DESC LIMIT ?", (limit,))

    def with_feedback(self, db: Any) -> list[Interaction]:
        """Every interaction that has feedback, or shares a turn with one that was chosen (inside `db`'s
        snapshot)."""
        return self._load(
            db,
            "id IN (SELECT interaction_id FROM feedback) OR turn_id IN (SELECT i.turn_id FROM interactions i"
            " JOIN feedback f ON f.interaction_id = i.id WHERE f.kind = 'choose') ORDER BY created_at, rowid",
            (),
        )

    def judged(self) -> list[Interaction]:
        """Interactions with a thumb, a correction or a flag, oldest first."""
        with self._tx(write=False) as db:
            return self._load(
                db,
                "id IN (SELECT interaction_id FROM feedback WHERE kind IN ('up', 'down', 'correct', 'flag'))"
                " ORDER BY created_at, rowid",
                (),
            )

    def flagged(self) -> list[Interaction]:
        """Interactions with a flagged source, oldest first."""
        with self._tx(write=False) as db:
            return self._load(
                db,
                "id IN (SELECT interaction_id FROM feedback WHERE kind = 'flag') ORDER BY created_at, rowid",
                (),
            )

    def conversations(self, limit: int = 50) -> list[ConversationSummary]:
        """Conversations, most recently active first."""
        with self._tx(write=False) as db:
            rows = db.execute(
                "SELECT conversation_id, MIN(created_at) AS started, MAX(created_at) AS updated,"
                " COUNT(DISTINCT turn_id) AS turns,"
                " (SELECT question FROM interactions f WHERE f.conversation_id = i.conversation_id"
                "  ORDER BY created_at, rowid LIMIT 1) AS title"
                " FROM interactions i GROUP BY conversation_id ORDER BY updated DESC LIMIT ?",
                (limit,),
            ).fetchall()
        return [
            ConversationSummary(r["conversation_id"], r["title"], r["started"], r["updated"], r["turns"])
            for r in rows
        ]

    def conversation(self, conversation_id: str) -> list[Interaction]:
        """A conversation's turns in order, each as the response shown for it: the chosen one, else the
        latest regeneration."""
        with self._tx(write=False) as db:
            found = self._load(db, "conversation_id = ? ORDER BY created_at, rowid", (conversation_id,))
        if not found:
            raise NightjarError(f"no conversation {conversation_id}")
        turns: dict[str, list[Interaction]] = {}
        for interaction in found:
            turns.setdefault(interaction.turn_id, []).append(interaction)
        shown = []
        for members in turns.values():
            chosen = [(e.id, i) for i in members for e in i.feedback if e.kind == "choose"]
            shown.append(max(chosen, key=lambda pair: pair[0])[1] if chosen else members[-1])
        return shown

    # ---- maintenance ----
    def purge(self, before: float) -> tuple[dict[str, int], bool]:
        """Delete everything recorded before `before` (a Unix time) and scrub it from the database files.

        Returns what was deleted, and whether the write-ahead log could be emptied too (not while another
        process reads the database: then the old pages leave the log when it closes).
        """
        with self._tx() as db:
            counts = {
                "feedback": db.execute(
                    "DELETE FROM feedback WHERE created_at < ? OR interaction_id IN"
                    " (SELECT id FROM interactions WHERE created_at < ?)",
                    (before, before),
                ).rowcount,
                "interactions": db.execute(
                    "DELETE FROM interactions WHERE created_at < ?", (before,)
                ).rowcount,
                "imported": db.execute("DELETE FROM imported WHERE created_at < ?", (before,)).rowcount,
                "consumed": db.execute("DELETE FROM consumed WHERE consumed_at < ?", (before,)).rowcount,
            }
        try:
            with self._lock:
                # secure_delete zeroed freed pages, VACUUM rebuilds the file, the checkpoint empties the WAL
                self.db.execute("VACUUM")
                busy = self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
        except sqlite3.Error as exc:
            raise FeedbackDBError(f"feedback database {self.path}: {exc}") from exc
        return counts, not busy

    def stats(self) -> dict[str, Any]:
        with self._tx(write=False) as db:
            kinds = dict(db.execute("SELECT kind, COUNT(*) FROM feedback GROUP BY kind").fetchall())
            imported = dict(db.execute("SELECT kind, COUNT(*) FROM imported GROUP BY kind").fetchall())
            return {
                "database": str(self.path),
                "schema_version": SCHEMA_VERSION,
                "interactions": db.execute("SELECT COUNT(*) FROM interactions").fetchone()[0],
                "conversations": db.execute(
                    "SELECT COUNT(DISTINCT conversation_id) FROM interactions"
                ).fetchone()[0],
                "feedback": {k: kinds.get(k, 0) for k in ("up", "down", "correct", "choose", "flag")},
                "imported": {k: imported.get(k, 0) for k in ("dpo", "kto", "sft")},
                "training_runs": db.execute("SELECT COUNT(DISTINCT run_id) FROM consumed").fetchone()[0],
            }
