"""The replay buffer: training rows derived from feedback, for the trainer (TRL conversational format).

Derived views, rebuilt from one snapshot of the database on each read:
- dpo (prompt, chosen, rejected): a correction beats the original answer; an up-voted response beats a
  down-voted one to the same or an equivalent prompt; a chosen regeneration beats the other responses to its
  turn; plus imported pairs.
- kto (prompt, completion, label): thumbs that did not end up in a pair; plus imported rows.
- sft (prompt, completion): up-voted answers and corrections (RAFT candidates); plus imported rows.

Every row's prompt is the direct grounded prompt of the answer (`Interaction.training_messages`): the
system message with the numbered sources, the history and the plain question, as the `direct` strategy
serves it, whatever strategy answered (no reasoning instructions, no agent tool protocol), so a trainer
that applies the model's chat template trains on what `direct` serves. Each row has a
stable "id" (a hash of its content) and a stable split (a hash of its prompt key, see `keys`).
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from assistant.atomic import replacing
from assistant.config import Config
from assistant.errors import NightjarError
from assistant.feedback.clients import client_rows
from assistant.feedback.formats import (
    CLIENT_FORMATS,
    KINDS,
    SOURCE_FORMATS,
    RowError,
    from_hh_rlhf,
    normalize_row,
)
from assistant.feedback.keys import key_text, near_duplicate_groups, prompt_key, row_id, split_of
from assistant.feedback.store import FeedbackStore, Interaction, numbered_sources, source_id

SPLITS = ("train", "holdout")
# how much a row teaches, when no model scores it: an explicit fix says most, an import least about this user
ORIGIN_WEIGHT = {"correction": 1.0, "choice": 0.8, "thumbs": 0.7, "thumb": 0.5, "import": 0.3}
DAY = 86400.0


@dataclass
class Candidate:
    """A training row with what sampling needs to know about it."""

    kind: str
    row: dict[str, Any]  # TRL conversational format, with "id"
    key: str  # prompt key: equivalence and split
    text: str  # the normalized conversation: near-duplicate detection
    created_at: float
    origin: str

    @property
    def id(self) -> str:
        return self.row["id"]


@dataclass
class ImportReport:
    added: int = 0
    duplicates: int = 0
    bad: list[tuple[int, str]] = field(default_factory=list)  # (line number, why)
    unit: str = "line"  # what `bad` numbers: "line", or a client's "record" / "feedback row"
    reasons: dict[str, int] = field(default_factory=dict)  # a client's: how many were left out for what


def _assistant(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def _user_turns(i: Interaction) -> list[dict[str, str]]:
    return [*i.history, {"role": "user", "content": i.question}]


class ReplayBuffer:
    """Training views over the feedback database at `config.db_path` (see the module docstring)."""

    def __init__(self, config: Config, store: FeedbackStore | None = None) -> None:
        self.settings = config.feedback
        self.store = store or FeedbackStore(config.db_path)

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> ReplayBuffer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- derived rows ----
    def _candidate(
        self,
        kind: str,
        row: dict[str, Any],
        i: Interaction,
        when: float,
        origin: str,
    ) -> Candidate:
        row = {"id": row_id(kind, row), **row}
        return Candidate(kind, row, i.prompt_key, key_text(_user_turns(i)), when, origin)

    def _from_interactions(self, interactions: list[Interaction]) -> list[Candidate]:
        out: list[Candidate] = []
        paired: set[str] = set()

        def dpo(i: Interaction, chosen: str, rejected: str, when: float, origin: str, ids: tuple[str, ...]):
            if chosen.strip() != rejected.strip():
                row = {
                    "prompt": i.training_messages,
                    "chosen": _assistant(chosen),
                    "rejected": _assistant(rejected),
                }
                out.append(self._candidate("dpo", row, i, when, origin))
                paired.update(ids)

        for i in interactions:  # corrections: the user's answer beats the model's
            fixes = [e for e in i.feedback if e.kind == "correct"]
            if fixes:
                dpo(i, fixes[-1].text or "", i.response, fixes[-1].created_at, "correction", (i.id,))
                row = {"prompt": i.training_messages, "completion": _assistant(fixes[-1].text or "")}
                out.append(self._candidate("sft", row, i, fixes[-1].created_at, "correction"))

        turns: dict[str, list[Interaction]] = {}
        for i in interactions:
            turns.setdefault(i.turn_id, []).append(i)
        for members in turns.values():  # a chosen regeneration beats the other responses to its turn
            choices = [(e.id, e.created_at, i) for i in members for e in i.feedback if e.kind == "choose"]
            if choices:
                _, when, chosen = max(choices, key=lambda c: c[0])
                for other in members:
                    if other.id != chosen.id:
                        dpo(chosen, chosen.response, other.response, when, "choice", (chosen.id, other.id))

        by_prompt: dict[str, list[Interaction]] = {}
        for i in interactions:
            if i.rating:
                by_prompt.setdefault(i.prompt_key, []).append(i)
        for rated in by_prompt.values():  # up beats down for the same or an equivalent prompt
            ups = sorted((i for i in rated if i.rating == "up"), key=lambda i: -i.created_at)
            downs = sorted((i for i in rated if i.rating == "down"), key=lambda i: -i.created_at)
            pairs = max(len(ups), len(downs)) if ups and downs else 0  # every rated response in a pair once
            for n in range(pairs):
                up, down = ups[n % len(ups)], downs[n % len(downs)]
                when = max(e.created_at for e in up.feedback + down.feedback if e.kind in ("up", "down"))
                dpo(up, up.response, down.response, when, "thumbs", (up.id, down.id))

        for i in interactions:  # thumbs: unpaired ones for KTO, up-voted answers for SFT
            thumbs = [e for e in i.feedback if e.kind in ("up", "down")]
            if not thumbs:
                continue
            if i.id not in paired:
                row = {
                    "prompt": i.training_messages,
                    "completion": _assistant(i.response),
                    "label": i.rating == "up",
                }
                out.append(self._candidate("kto", row, i, thumbs[-1].created_at, "thumb"))
            if i.rating == "up" and i.correction is None:
                row = {"prompt": i.training_messages, "completion": _assistant(i.response)}
                out.append(self._candidate("sft", row, i, thumbs[-1].created_at, "thumb"))
        return out

    def _candidates(self) -> tuple[list[Candidate], dict[str, int]]:
        """Every row of every kind (each id once), and how many runs consumed each id: one snapshot."""
        with self.store._tx(write=False) as db:
            interactions = self.store.with_feedback(db)
            imported = db.execute("SELECT * FROM imported ORDER BY created_at, rowid").fetchall()
            consumed = dict(db.execute("SELECT row_id, COUNT(*) FROM consumed GROUP BY row_id").fetchall())
        found = self._from_interactions(interactions)
        for r in imported:
            row = json.loads(r["row"])
            found.append(
                Candidate(
                    r["kind"],
                    {"id": r["id"], **row},
                    r["prompt_key"],
                    key_text(row["prompt"]),
                    r["created_at"],
                    "import",
                )
            )
        unique: dict[str, Candidate] = {}
        for c in found:
            unique.setdefault(c.id, c)
        return list(unique.values()), consumed

    def _split(self, c: Candidate) -> str:
        return split_of(c.key, self.settings.holdout_fraction)

    def rows(self, kind: str, split: str = "train", only_unconsumed: bool = False) -> list[dict[str, Any]]:
        """All rows of `kind` in `split`, oldest first (`only_unconsumed`: only rows no run consumed yet)."""
        _check(kind, split)
        candidates, consumed = self._candidates()
        return [
            c.row
            for c in sorted(candidates, key=lambda c: c.created_at)
            if c.kind == kind and self._split(c) == split and not (only_unconsumed and c.id in consumed)
        ]

    def sample(
        self,
        kind: str,
        n: int | None = None,
        *,
        seed: int = 0,
        informativeness: Callable[[dict[str, Any]], float] | None = None,
        now: float | None = None,
    ) -> list[dict[str, Any]]:
        """The rows one training run should use: from the train split, within the retention period,
        without prompts that are near-duplicates of a holdout prompt, at most `max_rows_per_prompt` per
        group of near-duplicate prompts, and at most `n` (default `max_rows`), drawn without replacement
        with weight recency x informativeness x 0.5^(runs that consumed the row).

        `informativeness(row) -> [0, 1]` scores how much a row would teach the current model (e.g. how wrong
        it is on the pair, see `scoring`); without it, a row's origin decides (a correction teaches most).
        """
        s = self.settings
        now = time.time() if now is None else now
        pool, consumed = self._pool(kind, now)
        rng = random.Random(seed)
        keyed = []
        for c, g in pool:
            worth = informativeness(c.row) if informativeness else ORIGIN_WEIGHT[c.origin]
            weight = 0.5 ** (max(0.0, now - c.created_at) / (s.recency_half_life_days * DAY))
            weight = max(weight * max(worth, 1e-6) * 0.5 ** consumed.get(c.id, 0), 1e-300)
            keyed.append((math.log(1.0 - rng.random()) / weight, g, c))  # Efraimidis-Spirakis weighted draw
        keyed.sort(key=lambda t: t[0], reverse=True)
        per_group: dict[int, int] = {}
        chosen: list[dict[str, Any]] = []
        for _, g, c in keyed:
            if len(chosen) >= (s.max_rows if n is None else n):
                break
            if per_group.get(g, 0) < s.max_rows_per_prompt:
                per_group[g] = per_group.get(g, 0) + 1
                chosen.append(c.row)
        return chosen

    def eligible(self, kind: str, now: float | None = None) -> list[dict[str, Any]]:
        """The train-split rows `sample` may draw from, however many share a question: not near-duplicates
        of a holdout prompt, and within the retention period."""
        pool, _ = self._pool(kind, time.time() if now is None else now)
        return [c.row for c, _ in pool]

    def _pool(self, kind: str, now: float) -> tuple[list[tuple[Candidate, int]], dict[str, int]]:
        """(candidate, near-duplicate group) of `kind` that training may use, and the consumed counts."""
        _check(kind, "train")
        s = self.settings
        candidates, consumed = self._candidates()
        groups = near_duplicate_groups([c.text for c in candidates], s.near_duplicate_similarity)
        held_out_groups = {g for c, g in zip(candidates, groups, strict=True) if self._split(c) == "holdout"}
        pool = [
            (c, g)
            for c, g in zip(candidates, groups, strict=True)
            if c.kind == kind
            and self._split(c) == "train"
            and g not in held_out_groups
            and not (s.retention_days and now - c.created_at > s.retention_days * DAY)
        ]
        return pool, consumed

    def mark_consumed(self, run_id: str, kind: str, ids: list[str]) -> None:
        """Record that training run `run_id` consumed these rows of `kind`."""
        _check(kind, "train")
        now = time.time()
        with self.store._tx() as db:
            db.executemany(
                "INSERT OR IGNORE INTO consumed (run_id, kind, row_id, consumed_at) VALUES (?, ?, ?, ?)",
                [(run_id, kind, i, now) for i in ids],
            )

    def consumed(self, run_id: str) -> dict[str, list[str]]:
        """The row ids a run consumed, by kind."""
        with self.store._tx(write=False) as db:
            rows = db.execute("SELECT kind, row_id FROM consumed WHERE run_id = ? ORDER BY rowid", (run_id,))
            out: dict[str, list[str]] = {}
            for r in rows.fetchall():
                out.setdefault(r["kind"], []).append(r["row_id"])
        return out

    def counts(self) -> dict[str, dict[str, int]]:
        """How many rows of each kind each split holds."""
        candidates, _ = self._candidates()
        out = {k: dict.fromkeys(SPLITS, 0) for k in KINDS}
        for c in candidates:
            out[c.kind][self._split(c)] += 1
        return out

    def source_flags(self) -> list[dict[str, Any]]:
        """Sources users flagged as wrong or irrelevant, with the question they were retrieved for."""
        out = []
        for i in self.store.flagged():
            names = {source_id(s, number): s for number, s in numbered_sources(i.sources).items()}
            for e in i.feedback:
                if e.kind == "flag":
                    out.append(
                        {
                            "interaction_id": i.id,
                            "question": i.question,
                            "reason": e.text,
                            "source_id": e.target,
                            "source": names.get(e.target or ""),
                            "comment": e.comment,
                            "created_at": e.created_at,
                        }
                    )
        return out

    # ---- adding rows ----
    def add_rows(self, rows: Iterable[tuple[str, dict[str, Any]]], source: str = "import") -> tuple[int, int]:
        """Store (kind, row) pairs, each already normalized; returns (added, already present)."""
        added = duplicates = 0
        now = time.time()
        with self.store._tx() as db:
            for kind, row in rows:
                row = {k: v for k, v in row.items() if k != "id"}
                cursor = db.execute(
                    "INSERT OR IGNORE INTO imported (id, created_at, kind, prompt_key, row, source)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        row_id(kind, row),
                        now,
                        kind,
                        prompt_key(row["prompt"]),
                        json.dumps(row, ensure_ascii=False),
                        source,
                    ),
                )
                added += cursor.rowcount
                duplicates += 1 - cursor.rowcount
        return added, duplicates

    def _add_one(self, kind: str, raw: dict[str, Any], source: str) -> str:
        try:
            kind, row = normalize_row(raw, kind)
        except RowError as exc:
            raise NightjarError(str(exc)) from None
        self.add_rows([(kind, row)], source)
        return row_id(kind, row)

    def add_preference(self, prompt: Any, chosen: Any, rejected: Any, source: str = "import") -> str:
        """Add a DPO pair (text or message lists, as TRL accepts); returns its row id."""
        return self._add_one("dpo", {"prompt": prompt, "chosen": chosen, "rejected": rejected}, source)

    def add_kto(self, prompt: Any, completion: Any, label: bool, source: str = "import") -> str:
        return self._add_one("kto", {"prompt": prompt, "completion": completion, "label": label}, source)

    def add_sft(self, prompt: Any, completion: Any, source: str = "import") -> str:
        return self._add_one("sft", {"prompt": prompt, "completion": completion}, source)

    # ---- files ----
    def import_file(self, path: Path, source_format: str = "trl", limit: int | None = None) -> ImportReport:
        """Import a JSONL file of TRL rows (dpo, kto or sft, in any shape TRL accepts) or HH-RLHF records,
        or a chat client's feedback (`clients`: an Open WebUI feedback export, an llm logs.db).

        Bad lines (a client's unusable records) are reported and skipped; the good ones are added in one
        transaction.
        """
        if source_format not in SOURCE_FORMATS:
            raise NightjarError(
                f"unknown import format '{source_format}'; use one of {', '.join(SOURCE_FORMATS)}"
            )
        if source_format in CLIENT_FORMATS:
            rows, left_out, unit = client_rows(source_format, path)
            report = ImportReport(bad=[(x.number, x.why) for x in left_out], unit=unit)
            for x in left_out:
                report.reasons[x.reason] = report.reasons.get(x.reason, 0) + 1
            rows = rows if limit is None else rows[:limit]
            report.added, report.duplicates = self.add_rows(rows, source=f"{source_format}:{Path(path).name}")
            return report
        convert = from_hh_rlhf if source_format == "hh-rlhf" else normalize_row
        report, rows = ImportReport(), []
        try:
            with Path(path).open(encoding="utf-8") as fh:
                for number, line in enumerate(fh, start=1):
                    if limit is not None and len(rows) >= limit:
                        break
                    if not line.strip():
                        continue
                    try:
                        rows.append(convert(json.loads(line)))
                    except json.JSONDecodeError as exc:
                        report.bad.append((number, f"not JSON: {exc.msg}"))
                    except RowError as exc:
                        report.bad.append((number, str(exc)))
        except FileNotFoundError:
            raise NightjarError(f"file not found: {path}") from None
        except UnicodeDecodeError:
            raise NightjarError(f"{path} is not UTF-8 text") from None
        except OSError as exc:
            raise NightjarError(f"cannot read {path}: {exc.strerror or exc}") from None
        report.added, report.duplicates = self.add_rows(rows, source=f"{source_format}:{Path(path).name}")
        return report

    def export(self, kind: str, path: Path, split: str | None = None) -> int:
        """Write the rows of `kind` (one split, or both) as JSONL, atomically; returns how many."""
        _check(kind, split or "train")
        rows = [r for s in ([split] if split else SPLITS) for r in self.rows(kind, s)]
        try:
            with replacing(path) as tmp, tmp.open("w", encoding="utf-8") as fh:
                fh.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        except OSError as exc:
            raise NightjarError(f"cannot write {path}: {exc.strerror or exc}") from None
        return len(rows)


def _check(kind: str, split: str) -> None:
    if kind not in KINDS:
        raise NightjarError(f"unknown row kind '{kind}'; use one of {', '.join(KINDS)}")
    if split not in SPLITS:
        raise NightjarError(f"unknown split '{split}'; use one of {', '.join(SPLITS)}")
