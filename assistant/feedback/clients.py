"""Feedback given in the chat clients people already use, as replay rows.

- ``open-webui``: Open WebUI's admin feedback export (Admin Panel -> Evaluations -> Feedbacks -> Export,
  the ``GET /api/v1/evaluations/feedbacks/all/export`` endpoint; ``feedback-history-export-*.json``): a JSON
  list of feedback records. A record rates one assistant message (``meta.message_id``) with ``data.rating``
  (1 or -1) and maybe ``data.details.rating`` (1-10), and holds a snapshot of the chat
  (``snapshot.chat.chat``): the message tree ``history.messages`` (id -> message, linked by ``parentId``)
  and the chat's system prompt (``params.system``). The prompt of a rated answer is its chain of parents up
  to the root.
- ``llm-logs``: simonw/llm's ``logs.db`` (``llm logs path``) with the ``feedback`` table of the
  llm-logs-feedback plugin (``llm feedback+1`` / ``llm feedback-1``: ``response_id``, ``feedback`` '+1' or
  '-1', ``comment``). The prompt of a rated response is its conversation so far: the earlier responses of its
  ``conversation_id`` as user/assistant turns (with their fragments), and a system message wherever the system
  prompt was set or changed, as llm sends it to chat models.

How ratings become rows (decisions):
- A thumb decides; without one, a 1-10 detail rating counts as up from 7 and as down up to 4, and 5 or 6 is
  left out as neutral. A thumb and a detail rating that disagree: the thumb wins.
- Rated answers to the same or an equivalent prompt (regenerations of one turn, or the same question asked
  twice; see `keys.prompt_key`) are paired as DPO rows: each up-voted answer beats a down-voted one, every
  rated answer in at least one pair, newest first, as the in-app thumbs are.
- Unrated regenerations are not used: people regenerate for variety too, and an unjudged answer made the
  rejected side would teach against what may be a good answer. (Open WebUI's leaderboard counts a rated
  answer as winning over its siblings; for training, only the user's judgments are taken.)
- Every other rated answer is a KTO row (up = desirable).
- When one message (Open WebUI) or response (llm) was rated more than once, the latest rating counts; the
  earlier ones are reported as superseded.
- Reasoning, tool-call and code-interpreter blocks Open WebUI keeps in a message (``<details type=...>``)
  are removed, as Open WebUI does before sending a conversation to a model.

Nothing is dropped silently: what cannot be used is returned with its record number and the reason.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from assistant.errors import NightjarError
from assistant.feedback.formats import CLIENT_FORMATS, Messages, RowError, normalize_row
from assistant.feedback.keys import prompt_key

UP_FROM, DOWN_TO = 7, 4  # a 1-10 detail rating without a thumb: >= 7 is up, <= 4 is down


class ClientFileError(NightjarError):
    """The file is not the export or database the format names (the message says why)."""


@dataclass
class Rated:
    """One rated answer: the conversation before it, the answer, and the user's verdict."""

    prompt: Messages
    answer: str
    up: bool
    when: float  # for ordering pairs: newest first
    number: int  # where it came from (record or feedback row), for reports


@dataclass
class ClientFeedback:
    """What a client's file holds: the usable rated answers and what was left out, with why."""

    unit: str  # what `LeftOut.number` counts: "record" (Open WebUI), "feedback row" (llm)
    rated: list[Rated] = field(default_factory=list)
    left_out: list[LeftOut] = field(default_factory=list)


@dataclass(order=True)
class LeftOut:
    """A record that cannot be used."""

    number: int  # the record's position in the export (from 1), or the feedback row's id
    why: str  # with the record's ids: to report it
    reason: str  # without them: to count how many were left out for what


class _LeftOut(Exception):
    """A record that cannot be used: `why` names its ids, `reason` is the same without them."""

    def __init__(self, why: str, reason: str | None = None) -> None:
        super().__init__(why)
        self.reason = reason or why

    def at(self, number: int) -> LeftOut:
        return LeftOut(number, str(self), self.reason)


def _verdict(thumb: Any, detail: Any) -> bool:
    """True for up, False for down: from a thumb (1 / -1), else a 1-10 detail rating; _LeftOut if neither."""
    if isinstance(thumb, str) and re.fullmatch(r"\s*[+-]?\d+\s*", thumb):
        thumb = int(thumb)
    if isinstance(thumb, bool) or not isinstance(thumb, int | float | type(None)):
        raise _LeftOut(f"rating {thumb!r} is not 1 or -1", "a rating that is not 1 or -1")
    if thumb is not None and thumb != 0:
        if thumb in (1, -1):
            return thumb > 0
        raise _LeftOut(f"rating {thumb:g} is not 1 or -1", "a rating that is not 1 or -1")
    if isinstance(detail, int | float) and not isinstance(detail, bool):
        if detail >= UP_FROM:
            return True
        if detail <= DOWN_TO:
            return False
        raise _LeftOut(
            f"a neutral {detail:g}/10 rating (up from {UP_FROM}, down up to {DOWN_TO})",
            "a neutral 1-10 rating",
        )
    if thumb == 0:
        raise _LeftOut("rating 0 (neither up nor down)")
    raise _LeftOut("no rating")


# ---- Open WebUI ----
_DETAILS = re.compile(
    r"<details\s+type=\"(?:reasoning|code_interpreter|tool_calls)\"[^>]*>.*?</details>\s*", re.DOTALL
)
_OWUI_ROLES = {"user": "user", "assistant": "assistant", "system": "system"}


def _owui_text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if not isinstance(content, str):
        raise _LeftOut(f"message {message.get('id')} has no text content", "a message without text")
    return _DETAILS.sub("", content).strip() if message.get("role") == "assistant" else content


def _owui_chat(record: dict[str, Any]) -> dict[str, Any]:
    """The chat data of a record's snapshot (``snapshot.chat.chat``, or ``snapshot.chat`` when flat)."""
    snapshot = record.get("snapshot")
    chat = snapshot.get("chat") if isinstance(snapshot, dict) else None
    if isinstance(chat, dict) and isinstance(chat.get("chat"), dict):
        chat = chat["chat"]
    if not isinstance(chat, dict) or not isinstance(chat.get("history"), dict):
        raise _LeftOut("the record has no chat snapshot")
    return chat


def _owui_rated(record: dict[str, Any], number: int) -> tuple[tuple[str, str], Rated]:
    """((chat id, message id), the rated answer) of one feedback record; _LeftOut if it cannot be used."""
    if record.get("type", "rating") != "rating":
        raise _LeftOut(f"a {record.get('type')!r} record, not a rating", "not a rating")
    data = record.get("data") if isinstance(record.get("data"), dict) else {}
    meta = record.get("meta") if isinstance(record.get("meta"), dict) else {}
    details = data.get("details") if isinstance(data.get("details"), dict) else {}
    up = _verdict(data.get("rating"), details.get("rating"))
    message_id = meta.get("message_id")
    if not isinstance(message_id, str) or not message_id:
        raise _LeftOut("the record names no rated message (meta.message_id)")
    chat = _owui_chat(record)
    messages = chat["history"].get("messages")
    if not isinstance(messages, dict) or not isinstance(messages.get(message_id), dict):
        raise _LeftOut(
            f"the rated message {message_id} is not in the chat snapshot",
            "the rated message is not in the chat snapshot",
        )
    answer = messages[message_id]
    if answer.get("role") != "assistant":
        raise _LeftOut(
            f"the rated message {message_id} is not an assistant answer",
            "the rated message is not an assistant answer",
        )
    text = _owui_text(answer)
    if not text:
        raise _LeftOut(f"the rated message {message_id} is empty", "an empty answer")
    chain: Messages = []
    seen = {message_id}
    parent = answer.get("parentId")
    while parent is not None:
        if parent in seen or not isinstance(messages.get(parent), dict):
            raise _LeftOut(
                f"the conversation before message {message_id} is broken at message {parent}",
                "a broken conversation in the snapshot",
            )
        seen.add(parent)
        message = messages[parent]
        role = _OWUI_ROLES.get(message.get("role"))
        if role is None:
            raise _LeftOut(
                f"message {parent} has an unknown role {message.get('role')!r}",
                "a message of an unknown role",
            )
        chain.append({"role": role, "content": _owui_text(message)})
        parent = message.get("parentId")
    if not chain:
        raise _LeftOut(
            f"the rated message {message_id} has no prompt before it", "an answer without a prompt"
        )
    chain.reverse()
    system = (chat.get("params") or {}).get("system") if isinstance(chat.get("params"), dict) else None
    if isinstance(system, str) and system.strip() and chain[0]["role"] != "system":
        chain.insert(0, {"role": "system", "content": system})
    snapshot_chat = (record.get("snapshot") or {}).get("chat") or {}
    chat_id = str(meta.get("chat_id") or snapshot_chat.get("id") or chat.get("id") or "")
    when = record.get("updated_at") or record.get("created_at") or 0
    when = float(when) if isinstance(when, int | float) else 0.0
    return (chat_id, message_id), Rated(chain, text, up, when, number)


def read_open_webui(path: Path) -> ClientFeedback:
    """The rated answers of an Open WebUI feedback export (see the module docstring)."""
    try:
        records = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ClientFileError(f"{path} is not an Open WebUI feedback export (not JSON: {exc.msg})") from None
    except UnicodeDecodeError:
        raise ClientFileError(f"{path} is not an Open WebUI feedback export (not UTF-8 text)") from None
    if not isinstance(records, list) or (
        records and not any(isinstance(r, dict) and "data" in r and "meta" in r for r in records)
    ):
        raise ClientFileError(
            f"{path} is not an Open WebUI feedback export (expected a JSON list of feedback records, "
            "as Admin Panel -> Evaluations -> Feedbacks -> Export saves)"
        )
    out = ClientFeedback("record")
    latest: dict[tuple[str, str], Rated] = {}
    for number, record in enumerate(records, start=1):
        try:
            if not isinstance(record, dict):
                raise _LeftOut("not a feedback record (a JSON object)")
            key, rated = _owui_rated(record, number)
        except _LeftOut as exc:
            out.left_out.append(exc.at(number))
            continue
        earlier = latest.get(key)
        if earlier is not None:
            old, rated = sorted((earlier, rated), key=lambda r: (r.when, r.number))
            why = f"superseded by record {rated.number} on the same message"
            out.left_out.append(LeftOut(old.number, why, "superseded by a later rating of the same answer"))
        latest[key] = rated
    out.rated = sorted(latest.values(), key=lambda r: r.number)
    out.left_out.sort()
    return out


# ---- llm (simonw/llm) logs.db with llm-logs-feedback ----
def _tables(db: sqlite3.Connection) -> set[str]:
    return {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")}


def _fragments(db: sqlite3.Connection, table: str, response_id: str) -> list[str]:
    rows = db.execute(
        f"SELECT f.content FROM {table} p JOIN fragments f ON f.id = p.fragment_id"
        f' WHERE p.response_id = ? ORDER BY p."order"',
        (response_id,),
    )
    return [r[0] for r in rows if isinstance(r[0], str)]


def _llm_turn(db: sqlite3.Connection, tables: set[str], row: sqlite3.Row) -> tuple[str, str, str]:
    """(system, prompt, response) of a logged response, fragments included as llm assembles them."""
    prompt, system = row["prompt"] or "", row["system"] or ""
    if "fragments" in tables and "prompt_fragments" in tables:
        prompt = "\n".join([*_fragments(db, "prompt_fragments", row["id"]), *([prompt] if prompt else [])])
    if "fragments" in tables and "system_fragments" in tables:
        bits = [*_fragments(db, "system_fragments", row["id"]), system]
        system = "\n\n".join(b.strip() for b in bits if b.strip())
    return system, prompt, row["response"] or ""


def _llm_rated(db: sqlite3.Connection, tables: set[str], response_id: Any) -> tuple[Messages, str]:
    """(the conversation before a response, its text); _LeftOut if it cannot be used."""
    row = db.execute("SELECT * FROM responses WHERE id = ?", (response_id,)).fetchone()
    if row is None:
        raise _LeftOut(
            f"response {response_id} is not in the responses table",
            "the rated response is not in the responses table",
        )
    turns = [row]
    if row["conversation_id"] is not None:
        conversation = db.execute(
            "SELECT * FROM responses WHERE conversation_id = ? ORDER BY datetime_utc, rowid",
            (row["conversation_id"],),
        ).fetchall()
        ids = [r["id"] for r in conversation]
        turns = conversation[: ids.index(row["id"]) + 1] if row["id"] in ids else turns
    messages: Messages = []
    current_system = answer = ""
    for turn in turns:
        system, prompt, answer = _llm_turn(db, tables, turn)
        if system and system != current_system:  # as llm sends a conversation to a chat model
            messages.append({"role": "system", "content": system})
            current_system = system
        messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
    if not messages[-2]["content"].strip():
        raise _LeftOut(f"response {response_id} has no prompt text", "an answer without a prompt")
    if not answer.strip():
        raise _LeftOut(f"response {response_id} is empty", "an empty answer")
    return messages[:-1], answer


def read_llm_logs(path: Path) -> ClientFeedback:
    """The rated responses of an llm logs.db with llm-logs-feedback's table (see the module docstring)."""
    if not Path(path).is_file():
        raise NightjarError(f"file not found: {path}")
    try:
        with Path(path).open("rb") as fh:
            header = fh.read(16)
    except OSError as exc:
        raise NightjarError(f"cannot read {path}: {exc.strerror or exc}") from None
    if header != b"SQLite format 3\x00":
        raise ClientFileError(f"{path} is not an llm logs database (not an SQLite file; see `llm logs path`)")
    out = ClientFeedback("feedback row")
    try:
        db = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise ClientFileError(f"cannot open {path}: {exc}") from None
    try:
        db.row_factory = sqlite3.Row
        tables = _tables(db)
        if "responses" not in tables:
            raise ClientFileError(f"{path} is not an llm logs database (it has no responses table)")
        if "feedback" not in tables:
            raise ClientFileError(
                f"{path} has no feedback table: rate responses with the llm-logs-feedback plugin "
                "(`llm feedback+1`, `llm feedback-1`) first"
            )
        feedback = db.execute(
            "SELECT rowid AS n, response_id, feedback FROM feedback ORDER BY rowid"
        ).fetchall()
        latest: dict[str, Rated] = {}
        for f in feedback:
            try:
                value = f["feedback"].strip() if isinstance(f["feedback"], str) else f["feedback"]
                if value not in ("+1", "-1", "1", 1, -1):
                    raise _LeftOut(
                        f"feedback {value!r} is neither +1 nor -1", "feedback that is neither +1 nor -1"
                    )
                prompt, answer = _llm_rated(db, tables, f["response_id"])
            except _LeftOut as exc:
                out.left_out.append(exc.at(f["n"]))
                continue
            rated = Rated(prompt, answer, value in ("+1", "1", 1), float(f["n"]), f["n"])
            key = str(f["response_id"])
            if key in latest:
                why = f"superseded by feedback row {f['n']} on the same response"
                reason = "superseded by a later rating of the same answer"
                out.left_out.append(LeftOut(latest[key].number, why, reason))
            latest[key] = rated
    except sqlite3.Error as exc:
        raise ClientFileError(f"cannot read {path} as an llm logs database: {exc}") from None
    finally:
        db.close()
    out.rated = sorted(latest.values(), key=lambda r: r.number)
    out.left_out.sort()
    return out


# ---- rows ----
def to_rows(rated: list[Rated]) -> tuple[list[tuple[str, dict[str, Any]]], list[LeftOut]]:
    """(kind, row) pairs for `ReplayBuffer.add_rows`, and the rated answers that make no valid row."""
    valid: list[tuple[Rated, dict[str, Any]]] = []
    left_out: list[LeftOut] = []
    for r in rated:
        try:
            _, row = normalize_row({"prompt": r.prompt, "completion": r.answer, "label": r.up}, "kto")
        except RowError as exc:
            left_out.append(LeftOut(r.number, str(exc), str(exc)))
            continue
        valid.append((r, row))

    rows: list[tuple[str, dict[str, Any]]] = []
    paired: set[int] = set()
    by_prompt: dict[str, list[tuple[Rated, dict[str, Any]]]] = {}
    for r, row in valid:
        by_prompt.setdefault(prompt_key(row["prompt"]), []).append((r, row))
    for group in by_prompt.values():  # up beats down for the same or an equivalent prompt
        ups = sorted((g for g in group if g[0].up), key=lambda g: -g[0].when)
        downs = sorted((g for g in group if not g[0].up), key=lambda g: -g[0].when)
        for n in range(max(len(ups), len(downs)) if ups and downs else 0):
            (up, up_row), (down, down_row) = ups[n % len(ups)], downs[n % len(downs)]
            if up.answer.strip() == down.answer.strip():
                continue
            pair = {
                "prompt": up_row["prompt"],
                "chosen": up_row["completion"],
                "rejected": down_row["completion"],
            }
            rows.append(normalize_row(pair, "dpo"))
            paired.update((id(up), id(down)))
    for r, row in valid:  # the rest: KTO thumbs
        if id(r) not in paired:
            rows.append(("kto", row))
    return rows, left_out


READERS: dict[str, Callable[[Path], ClientFeedback]] = {
    "open-webui": read_open_webui,
    "llm-logs": read_llm_logs,
}
assert tuple(READERS) == CLIENT_FORMATS


def client_rows(
    source_format: str, path: Path
) -> tuple[list[tuple[str, dict[str, Any]]], list[LeftOut], str]:
    """(rows, what was left out, what its numbers count) from a chat client's file."""
    try:
        found = READERS[source_format](Path(path))
    except FileNotFoundError:
        raise NightjarError(f"file not found: {path}") from None
    except IsADirectoryError:
        raise NightjarError(f"{path} is a directory, not a file") from None
    except OSError as exc:
        raise NightjarError(f"cannot read {path}: {exc.strerror or exc}") from None
    rows, invalid = to_rows(found.rated)
    return rows, sorted(found.left_out + invalid), found.unit
