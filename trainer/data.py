"""What a training run learns from: the replay buffer's new rows, a replay sample of older ones, the holdout.

New rows are the train-split rows no run has consumed yet; older rows come back in proportion
(`train.replay_fraction`) so that the model does not forget earlier feedback. The pool they are drawn from is
`ReplayBuffer.sample`'s: prompts near-duplicating a holdout prompt are left out, and the draw favours recent
rows. The holdout split is never trained on; the evaluation gate judges the candidate on it.

`auto` trains every kind the night brought, in the order DPO (pairs), KTO (unpaired thumbs), SFT
(corrections and up-voted answers, as given, less the ones DPO trained as its chosen answers): each adapter
builds on the ones before it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from assistant.config import Config
from assistant.feedback import ReplayBuffer

KINDS = ("dpo", "kto", "sft")
# what auto trains, in this order, where the night brought rows of the kind. SFT comes last: it trains the
# corrections with the served model's own everyday answers replayed (general_replay), which anchors the
# preference updates before it; measured on 32 grounded corrections, SFT then DPO answered 3 of 5 general
# canary questions where the served model answered 5, DPO then SFT all 5, with the same held-out gains.
AUTO = ("dpo", "kto", "sft")
KIND_OF = {"sft": "sft", "dpo": "dpo", "kto": "kto", "raft": "sft"}  # the rows each objective consumes
EVAL_ROWS = 100  # most holdout rows of a kind the gate scores (the newest)

Row = dict[str, Any]


@dataclass
class Batch:
    new: dict[str, list[Row]] = field(default_factory=dict)
    replay: dict[str, list[Row]] = field(default_factory=dict)
    holdout: dict[str, list[Row]] = field(default_factory=dict)
    fresh: dict[str, int] = field(default_factory=dict)  # unconsumed rows training may use, before sampling
    unusable: dict[str, int] = field(default_factory=dict)  # unconsumed rows no run trains on (see read)

    def train_rows(self, kind: str) -> list[Row]:
        return self.new.get(kind, []) + self.replay.get(kind, [])

    def n_fresh(self) -> int:
        """New feedback rows of every kind: each rating, regeneration and correction counts."""
        return sum(self.fresh.values())

    def left_out(self, kinds: list[str]) -> list[str]:
        """Why new rows are not in this run, one line per kind and reason (empty when none are left out)."""
        lines = []
        for kind in KINDS:
            fresh, new = self.fresh.get(kind, 0), len(self.new.get(kind, []))
            if kind not in kinds and fresh:
                lines.append(f"{kind}: {fresh} new rows not trained on by this run's objectives")
            elif fresh > new:
                lines.append(
                    f"{kind}: {fresh - new} of {fresh} new rows wait for a later night (a run samples at most"
                    " feedback.max_rows_per_prompt rows per question and feedback.max_rows in all)"
                )
            if self.unusable.get(kind):
                lines.append(
                    f"{kind}: {self.unusable[kind]} rows are never trained on: their questions near-duplicate"
                    " held-out ones, or they are older than feedback.retention_days"
                )
        return lines

    def summary(self) -> dict[str, dict[str, int]]:
        return {
            k: {
                "fresh": self.fresh.get(k, 0),
                "new": len(self.new.get(k, [])),
                "replay": len(self.replay.get(k, [])),
                "holdout": len(self.holdout.get(k, [])),
            }
            for k in KINDS
        }


def read(config: Config, buffer: ReplayBuffer | None = None, seed: int = 0) -> Batch:
    """The rows a run would train and evaluate on, for every kind."""
    own = buffer is None
    buffer = buffer or ReplayBuffer(config)
    try:
        batch = Batch()
        cap = config.feedback.max_rows
        for kind in KINDS:
            unconsumed = {r["id"] for r in buffer.rows(kind, "train", only_unconsumed=True)}
            usable = unconsumed & {r["id"] for r in buffer.eligible(kind)}
            pool = buffer.sample(kind, n=len(unconsumed) + cap, seed=seed)  # weighted order, all eligible
            new = [r for r in pool if r["id"] in unconsumed][:cap]
            older = [r for r in pool if r["id"] not in unconsumed]
            n_replay = min(round(config.train.replay_fraction * len(new)), cap - len(new), len(older))
            batch.new[kind], batch.replay[kind] = new, older[:n_replay]
            batch.holdout[kind] = buffer.rows(kind, "holdout")[-EVAL_ROWS:]
            batch.fresh[kind], batch.unusable[kind] = len(usable), len(unconsumed - usable)
        return batch
    finally:
        if own:
            buffer.close()


def choose_objectives(batch: Batch, configured: list[str]) -> list[str]:
    """The configured sequence, or (auto) every kind with new rows, in `AUTO`'s order."""
    if configured:
        return configured
    return [kind for kind in AUTO if batch.new.get(kind)]


def raft_fallback(objectives: list[str], can_score: bool) -> tuple[list[str], str | None]:
    """RAFT ranks sampled answers with a learned scorer; without one (`can_score`), ranking by the rule
    checks alone would keep arbitrary answers, so its rows train as plain SFT: (objectives, why or None)."""
    if "raft" not in objectives or can_score:
        return objectives, None
    why = (
        "raft: no learned scorer to rank sampled answers (the reward model needs at least 2 preference"
        " pairs, the implicit DPO reward a served version whose last adapter is DPO), so its rows train as"
        " plain sft"
    )
    return list(dict.fromkeys("sft" if o == "raft" else o for o in objectives)), why


def holdout_shortfall(batch: Batch, kinds: list[str], min_rows: int, holdout_fraction: float) -> str | None:
    """Why the gate could not tell a gain from chance, with about how many more ratings would let it (the
    holdout gets `holdout_fraction` of new questions); None when some kind trained has `min_rows`."""
    held = max((len(batch.holdout.get(k, [])) for k in kinds), default=0)
    if held >= min_rows:
        return None
    more = math.ceil((min_rows - held) / max(holdout_fraction, 1e-9))
    return (
        f"{held} held-out rows of {'+'.join(kinds)} to judge a new version by, fewer than"
        f" train.min_holdout_rows ({min_rows}): about {more} more rated questions are needed"
        " (a share of new questions is held out); the served version stays"
    )


def objective_rows(batch: Batch, objective: str, objectives: list[str], sft_weight: float) -> list[Row]:
    """The rows `objective` trains this run. SFT leaves out the answers a DPO objective of the same run
    trains as its chosen ones with the likelihood term (`sft_weight` > 0: RPO): a correction or an up-voted
    answer would otherwise be learned twice in one night (see `twice_left_out`)."""
    rows = batch.train_rows(KIND_OF[objective])
    if objective != "sft" or "dpo" not in objectives or sft_weight <= 0:
        return rows
    chosen = {_answer_key(r["prompt"], r["chosen"]) for r in batch.train_rows("dpo")}
    return [r for r in rows if _answer_key(r["prompt"], r["completion"]) not in chosen]


def twice_left_out(batch: Batch, objectives: list[str], sft_weight: float) -> str | None:
    """Why SFT leaves rows to DPO this run (`objective_rows`), for the plan's left-out lines."""
    if "sft" not in objectives:
        return None
    n = len(batch.train_rows("sft")) - len(objective_rows(batch, "sft", objectives, sft_weight))
    if not n:
        return None
    return (
        f"sft: {n} rows are the chosen answers of this run's DPO pairs, trained there with the likelihood"
        " term (train.sft_weight), not a second time"
    )


def _answer_key(prompt: list[dict[str, Any]], answer: list[dict[str, Any]]) -> str:
    import json

    return json.dumps([prompt, answer], sort_keys=True)


def consumed_kinds(objectives: list[str]) -> list[str]:
    return list(dict.fromkeys(KIND_OF[o] for o in objectives))
