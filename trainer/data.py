"""What a training run learns from: the replay buffer's new rows, a replay sample of older ones, the holdout.

New rows are the train-split rows no run has consumed yet; older rows come back in proportion
(`train.replay_fraction`) so that the model does not forget earlier feedback. The pool they are drawn from is
`ReplayBuffer.sample`'s: prompts near-duplicating a holdout prompt are left out, and the draw favours recent
rows. The holdout split is never trained on; the evaluation gate judges the candidate on it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from assistant.config import Config
from assistant.feedback import ReplayBuffer

KINDS = ("dpo", "kto", "sft")
KIND_OF = {"dpo": "dpo", "kto": "kto", "raft": "sft"}  # the rows each objective consumes
EVAL_ROWS = 100  # most holdout rows of a kind the gate scores (the newest)

Row = dict[str, Any]


@dataclass
class Batch:
    new: dict[str, list[Row]] = field(default_factory=dict)
    replay: dict[str, list[Row]] = field(default_factory=dict)
    holdout: dict[str, list[Row]] = field(default_factory=dict)

    def train_rows(self, kind: str) -> list[Row]:
        return self.new.get(kind, []) + self.replay.get(kind, [])

    def n_new(self, kinds: tuple[str, ...] | list[str] = KINDS) -> int:
        return sum(len(self.new.get(k, [])) for k in kinds)

    def summary(self) -> dict[str, dict[str, int]]:
        return {
            k: {
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
            pool = buffer.sample(kind, n=len(unconsumed) + cap, seed=seed)  # weighted order, all eligible
            new = [r for r in pool if r["id"] in unconsumed][:cap]
            older = [r for r in pool if r["id"] not in unconsumed]
            n_replay = min(round(config.train.replay_fraction * len(new)), cap - len(new), len(older))
            batch.new[kind], batch.replay[kind] = new, older[:n_replay]
            batch.holdout[kind] = buffer.rows(kind, "holdout")[-EVAL_ROWS:]
        return batch
    finally:
        if own:
            buffer.close()


def choose_objectives(batch: Batch, configured: list[str]) -> list[str]:
    """The configured sequence, or from the data: DPO where pairs exist, else KTO for thumbs, else RAFT."""
    if configured:
        return configured
    for objective in ("dpo", "kto", "raft"):
        if batch.new.get(KIND_OF[objective]):
            return [objective]
    return []


def consumed_kinds(objectives: list[str]) -> list[str]:
    return list(dict.fromkeys(KIND_OF[o] for o in objectives))
