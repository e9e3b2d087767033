"""The feedback database: SQLite in WAL mode, its schema versioned by `PRAGMA user_version`.

The chat (a writer) and the trainer (a reader) use it at the same time: WAL lets readers see a consistent
snapshot while a write is in progress, and `synchronous=FULL` makes a transaction durable once `COMMIT`
returns, so feedback that was acknowledged survives a killed process (or a power cut).

Migrations run in order, each in one transaction with the version bump, so an interrupted upgrade leaves the
previous version intact. Never edit a migration once released: add a new one.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from assistant.errors import NightjarError
from assistant.feedback.keys import prompt_key


class FeedbackDBError(NightjarError):
    """The feedback database cannot be opened or used."""


def _script(db: sqlite3.Connection, sql: str) -> None:
    # not executescript(): it commits first, and a migration must be one transaction
    statement = ""
    for line in sql.splitlines(keepends=True):
        statement += line
        if sqlite3.complete_statement(statement):
            db.execute(statement)
            statement = ""


def _v1(db: sqlite3.Connection) -> None:
    """The first schema: every answered turn, and the feedback given on it."""
    _script(
        db,
        """
        CREATE TABLE interactions (
            id TEXT PRIMARY KEY,
            created_at REAL NOT NULL,
            conversation_id TEXT NOT NULL,
            turn_id TEXT NOT NULL,       -- the first response to this turn; its regenerations share it
            question TEXT NOT NULL,
            response TEXT NOT NULL,
            model_version TEXT NOT NULL,
            strategy TEXT NOT NULL,
            messages TEXT NOT NULL,      -- JSON: the exact messages the model saw
            prompt TEXT NOT NULL,        -- the exact prompt text (chat template applied)
            data TEXT NOT NULL           -- JSON: the rest of the answer (history, sources, trace, ...)
        );
        CREATE INDEX interactions_conversation ON interactions(conversation_id, created_at);
        CREATE INDEX interactions_turn ON interactions(turn_id);
        CREATE INDEX interactions_created ON interactions(created_at);
        CREATE TABLE feedback (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            interaction_id TEXT NOT NULL REFERENCES interactions(id) ON DELETE CASCADE,
            created_at REAL NOT NULL,
            kind TEXT NOT NULL CHECK (kind IN ('up', 'down', 'correct', 'choose', 'flag')),
            text TEXT,                   -- correct: the corrected answer; flag: the reason
            target TEXT,                 -- flag: the source's id
            comment TEXT
        );
        CREATE INDEX feedback_interaction ON feedback(interaction_id);
        """,
    )


def _v2(db: sqlite3.Connection) -> None:
    """The replay buffer: prompt keys for pairing and splitting, imported rows, what each run consumed."""
    _script(
        db,
        """
        ALTER TABLE interactions ADD COLUMN prompt_key TEXT NOT NULL DEFAULT '';
        CREATE INDEX interactions_prompt_key ON interactions(prompt_key);
        CREATE TABLE imported (
            id TEXT PRIMARY KEY,         -- a hash of the row's content: importing twice adds nothing
            created_at REAL NOT NULL,
            kind TEXT NOT NULL CHECK (kind IN ('dpo', 'kto', 'sft')),
            prompt_key TEXT NOT NULL,
            row TEXT NOT NULL,           -- JSON, TRL conversational format
            source TEXT NOT NULL
        );
        CREATE INDEX imported_kind ON imported(kind, created_at);
        CREATE TABLE consumed (
            run_id TEXT NOT NULL,
            kind TEXT NOT NULL,
            row_id TEXT NOT NULL,
            consumed_at REAL NOT NULL,
            PRIMARY KEY (run_id, kind, row_id)
        );
        CREATE INDEX consumed_row ON consumed(row_id);
        """,
    )
    rows = db.execute("SELECT id, question, data FROM interactions").fetchall()
    for row in rows:
        history = json.loads(row["data"]).get("history") or []
        db.execute(
            "UPDATE interactions SET prompt_key = ? WHERE id = ?",
            (prompt_key([*history, {"role": "user", "content": row["question"]}]), row["id"]),
        )


MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_v1, _v2]
SCHEMA_VERSION = len(MIGRATIONS)


def connect(path: Path, *, upgrade_to: int = SCHEMA_VERSION) -> sqlite3.Connection:
    """Open (creating if needed) the database at `path`, in WAL mode, migrated to `upgrade_to`."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
    except (OSError, sqlite3.Error) as exc:
        raise FeedbackDBError(f"cannot open the feedback database {path}: {exc}") from exc
    try:
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA busy_timeout = 30000")
        if db.execute("PRAGMA journal_mode = WAL").fetchone()[0].lower() != "wal":
            raise FeedbackDBError(f"feedback database {path}: cannot switch to WAL mode")
        db.execute("PRAGMA synchronous = FULL")
        db.execute("PRAGMA foreign_keys = ON")
        db.execute("PRAGMA secure_delete = ON")  # deleted feedback is overwritten, not left in free pages
        _migrate(db, path, upgrade_to)
    except BaseException as exc:
        db.close()
        if isinstance(exc, sqlite3.Error):
            raise FeedbackDBError(f"feedback database {path} cannot be used: {exc}") from exc
        raise
    return db


def _migrate(db: sqlite3.Connection, path: Path, target: int) -> None:
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise FeedbackDBError(
            f"feedback database {path} has schema v{version}, newer than this Nightjar's v{SCHEMA_VERSION}:"
            " upgrade Nightjar"
        )
    while version < target:
        with transaction(db):
            # another process may have migrated while we waited for the write lock
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version >= target:
                break
            MIGRATIONS[version](db)
            db.execute(f"PRAGMA user_version = {version + 1}")
        version += 1


@contextmanager
def transaction(db: sqlite3.Connection, write: bool = True) -> Iterator[sqlite3.Connection]:
    """One transaction: `BEGIN IMMEDIATE` for writes (takes the write lock up front), a snapshot for reads."""
    db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
    try:
        yield db
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
