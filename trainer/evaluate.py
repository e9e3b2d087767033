"""Scoring for the evaluation gate: each model's figures on the held-out feedback and the canaries.

Both models are scored as they would be served: the GGUF files through llama.cpp, prompts rendered with the
model's own chat template. On the holdout split (never trained on):
- dpo pairs: preference accuracy (share of pairs where the chosen answer is likelier than the rejected one)
  and the mean reward margin (log p(chosen) - log p(rejected), mean log-probability per token);
- kto thumbs: desirability (mean log-probability per token of the up-voted answers minus the down-voted ones);
- sft rows (corrections, up-voted answers): their mean log-probability per token.
Each held-out row's value is kept by row id, so that `verdict` compares the two models row by row.
And three regression canaries: the perplexity of a fixed reference text (data/reference.txt), a fixed set of
general questions, and held-out grounded questions answered from their sources (`grounded_canary`).
"""

from __future__ import annotations

import hashlib
import json
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from assistant import atomic
from trainer.grounded_canary import GroundedCanary

REFERENCE_TEXT = Path(__file__).resolve().parent.parent / "data" / "reference.txt"
SYSTEM = "You are a helpful assistant. Answer briefly and accurately."
# (question, words of which the answer must contain one); answered correctly by the 135M default model
GENERAL_PROMPTS = [
    ("What is the capital of France?", ["paris"]),
    ("How many days are there in a week?", ["seven", "7"]),
    ("What colour is the sky on a clear day?", ["blue"]),
    ("Which planet do we live on?", ["earth"]),
    ("What do bees make?", ["honey"]),
]
Progress = Callable[[int, int], None]
SCORES_VERSION = 2  # part of the score cache's key: scores of an earlier layout are not reused


@dataclass
class ModelScores:
    """One model's figures on the holdout and the canaries."""

    dpo_pairs: int = 0
    dpo_accuracy: float | None = None
    dpo_margin: float | None = None
    kto_rows: int = 0
    kto_desirability: float | None = None
    sft_rows: int = 0
    sft_logprob: float | None = None
    perplexity: float = 0.0
    general_answered: int = 0
    general_total: int = 0
    general_answers: list[str] = field(default_factory=list)
    grounded: GroundedCanary = field(default_factory=GroundedCanary)
    # per held-out row id, by kind: a pair's margin, an answer's log-probability (kto: signed by its thumb)
    rows: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelScores:
        return cls(**{**data, "grounded": GroundedCanary(**data["grounded"])})


def score(
    gguf: Path,
    holdout: dict[str, list[dict[str, Any]]],
    n_ctx: int = 1024,
    progress: Progress | None = None,
    threads: int = 0,
    quick: ModelScores | None = None,
) -> ModelScores:
    """Score one GGUF on the holdout rows and the canaries (`threads`: llama.cpp's; 0: one per core);
    `quick`: its `quick_canaries`, when they were measured already."""
    from assistant.feedback.scoring import ModelScorer
    from trainer import grounded_canary

    scorer = ModelScorer(gguf, n_ctx=n_ctx, n_threads=threads)
    grounded = grounded_canary.grounded_prompts(holdout)
    total = len(holdout.get("dpo", [])) + len(holdout.get("kto", [])) + len(holdout.get("sft", []))
    total += 3  # the general questions, the grounded ones, the perplexity
    done = 0

    def step() -> None:
        nonlocal done
        done += 1
        if progress:
            progress(done, total)

    def logprob(prompt, completion) -> float | None:
        value = scorer.mean_logprob(prompt, completion)
        step()
        return value

    out = ModelScores(rows={"dpo": {}, "kto": {}, "sft": {}})
    labels = {}
    for row in holdout.get("dpo", []):
        chosen, rejected = scorer.pair_logprobs(row["prompt"], row["chosen"], row["rejected"])
        step()
        if chosen is not None and rejected is not None:
            out.rows["dpo"][row["id"]] = chosen - rejected
    for row in holdout.get("kto", []):
        if (value := logprob(row["prompt"], row["completion"])) is not None:
            out.rows["kto"][row["id"]] = value if row["label"] else -value
            labels[row["id"]] = row["label"]
    for row in holdout.get("sft", []):
        if (value := logprob(row["prompt"], row["completion"])) is not None:
            out.rows["sft"][row["id"]] = value
    if margins := list(out.rows["dpo"].values()):
        out.dpo_pairs = len(margins)
        out.dpo_accuracy = sum(m > 0 for m in margins) / len(margins)
        out.dpo_margin = statistics.fmean(margins)
    if signed := out.rows["kto"]:
        up = [v for i, v in signed.items() if labels[i]]
        down = [-v for i, v in signed.items() if not labels[i]]
        out.kto_rows = len(signed)
        out.kto_desirability = (statistics.fmean(up) if up else 0.0) - (
            statistics.fmean(down) if down else 0.0
        )
    if likely := list(out.rows["sft"].values()):
        out.sft_rows, out.sft_logprob = len(likely), statistics.fmean(likely)

    quick = quick or _general(scorer.engine, ModelScores())
    out.general_answers, out.general_answered = quick.general_answers, quick.general_answered
    out.general_total = quick.general_total
    step()
    out.grounded = grounded_canary.run(scorer.engine, grounded)
    step()
    scorer.llm.close()
    scorer.engine.llm.close()
    out.perplexity = quick.perplexity or _perplexity(gguf, n_ctx, threads)
    step()
    return out


def quick_canaries(gguf: Path, n_ctx: int = 1024, threads: int = 0) -> ModelScores:
    """The general questions and the reference perplexity alone: seconds, where `score` takes minutes. A
    candidate that fails either needs no more scoring (see gate._scale_down)."""
    from assistant.engine import LlamaCppEngine

    engine = LlamaCppEngine(gguf, n_ctx=n_ctx, n_threads=threads)
    try:
        out = _general(engine, ModelScores())
    finally:
        engine.llm.close()
    out.perplexity = _perplexity(gguf, n_ctx, threads)
    return out


def _general(engine, out: ModelScores) -> ModelScores:
    """`out` with the engine's greedy answers to GENERAL_PROMPTS and how many were right."""
    from assistant.engine import GenParams, chat

    params = GenParams(temperature=0.0, max_tokens=24)
    for question, words in GENERAL_PROMPTS:
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
        answer = chat(engine, messages, params).result().text.strip()
        out.general_answers.append(answer)
        out.general_answered += any(w in answer.lower() for w in words)
    out.general_total = len(GENERAL_PROMPTS)
    return out


def _perplexity(gguf: Path, n_ctx: int, threads: int) -> float:
    from trainer.perplexity import perplexity

    reference = REFERENCE_TEXT.read_text(encoding="utf-8")
    return perplexity(gguf, reference, n_ctx=min(n_ctx, 512), threads=threads)


def score_cached(
    cache: Path,
    gguf: Path,
    holdout: dict[str, list[dict[str, Any]]],
    n_ctx: int,
    progress=None,
    threads: int = 0,
    quick: ModelScores | None = None,
) -> ModelScores:
    """`score`, remembered in `cache` (a JSON file) for the same model file and holdout rows: the served
    model is then scored once, not on every retry, and a published candidate's scores serve the next run."""
    stat = Path(gguf).stat()  # a publish renames the file: size and mtime stay, the path changes
    rows = sorted(r["id"] for kind in sorted(holdout) for r in holdout[kind])
    canaries = [GENERAL_PROMPTS, REFERENCE_TEXT.read_text(encoding="utf-8")]
    key = json.dumps([SCORES_VERSION, stat.st_size, stat.st_mtime_ns, n_ctx, rows, canaries])
    key = hashlib.sha256(key.encode()).hexdigest()
    try:
        known = json.loads(cache.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        known = {}
    if key in known:
        return ModelScores.from_dict(known[key])
    scores = score(gguf, holdout, n_ctx, progress, threads, quick)
    kept = dict(list(known.items())[-7:])  # the newest few are enough
    kept[key] = scores.to_dict()
    atomic.write_text(cache, json.dumps(kept))
    return scores
