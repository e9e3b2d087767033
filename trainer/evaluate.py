"""The evaluation gate: is the candidate GGUF better than the served one on held-out feedback, and no worse
at everything else?

Both models are scored as they would be served: the GGUF files through llama.cpp, prompts rendered with the
model's own chat template. On the holdout split (never trained on):
- dpo pairs: preference accuracy (share of pairs where the chosen answer is likelier than the rejected one)
  and the mean reward margin (log p(chosen) - log p(rejected), mean log-probability per token);
- kto thumbs: desirability (mean log-probability per token of the up-voted answers minus the down-voted ones);
- sft rows (corrections, up-voted answers): their mean log-probability per token.
And two regression canaries: the perplexity of a fixed reference text (data/reference.txt) must not rise by
more than `train.canary_tolerance`, and a fixed set of general questions must still be answered.
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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Check:
    name: str
    passed: bool
    detail: str


@dataclass
class Verdict:
    accepted: bool
    checks: list[Check]

    @property
    def reasons(self) -> list[str]:
        """Why the candidate was rejected (the failed checks)."""
        return [f"{c.name}: {c.detail}" for c in self.checks if not c.passed]


def score(
    gguf: Path,
    holdout: dict[str, list[dict[str, Any]]],
    n_ctx: int = 1024,
    progress: Progress | None = None,
    threads: int = 0,
) -> ModelScores:
    """Score one GGUF on the holdout rows and the canaries (`threads`: llama.cpp's; 0: one per core)."""
    from assistant.engine import GenParams, chat
    from assistant.feedback.scoring import ModelScorer
    from trainer.perplexity import perplexity

    scorer = ModelScorer(gguf, n_ctx=n_ctx, n_threads=threads)
    total = 2 * len(holdout.get("dpo", [])) + len(holdout.get("kto", [])) + len(holdout.get("sft", []))
    total += len(GENERAL_PROMPTS) + 1
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

    out = ModelScores()
    margins = []
    for row in holdout.get("dpo", []):
        chosen, rejected = logprob(row["prompt"], row["chosen"]), logprob(row["prompt"], row["rejected"])
        if chosen is not None and rejected is not None:
            margins.append(chosen - rejected)
    if margins:
        out.dpo_pairs = len(margins)
        out.dpo_accuracy = sum(m > 0 for m in margins) / len(margins)
        out.dpo_margin = statistics.fmean(margins)
    signed = []
    for row in holdout.get("kto", []):
        value = logprob(row["prompt"], row["completion"])
        if value is not None:
            signed.append((row["label"], value))
    if signed:
        up = [v for label, v in signed if label]
        down = [v for label, v in signed if not label]
        out.kto_rows = len(signed)
        out.kto_desirability = (statistics.fmean(up) if up else 0.0) - (
            statistics.fmean(down) if down else 0.0
        )
    likely = [
        v for row in holdout.get("sft", []) if (v := logprob(row["prompt"], row["completion"])) is not None
    ]
    if likely:
        out.sft_rows, out.sft_logprob = len(likely), statistics.fmean(likely)

    params = GenParams(temperature=0.0, max_tokens=24)
    for question, words in GENERAL_PROMPTS:
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
        answer = chat(scorer.engine, messages, params).result().text.strip()
        out.general_answers.append(answer)
        out.general_answered += any(w in answer.lower() for w in words)
        step()
    out.general_total = len(GENERAL_PROMPTS)
    scorer.llm.close()
    scorer.engine.llm.close()
    reference = REFERENCE_TEXT.read_text(encoding="utf-8")
    out.perplexity = perplexity(gguf, reference, n_ctx=min(n_ctx, 512), threads=threads)
    step()
    return out


def score_cached(
    cache: Path,
    gguf: Path,
    holdout: dict[str, list[dict[str, Any]]],
    n_ctx: int,
    progress=None,
    threads: int = 0,
) -> ModelScores:
    """`score`, remembered in `cache` (a JSON file) for the same model file and holdout rows: the served
    model is then scored once, not on every retry, and a published candidate's scores serve the next run."""
    stat = Path(gguf).stat()  # a publish renames the file: size and mtime stay, the path changes
    rows = sorted(r["id"] for kind in sorted(holdout) for r in holdout[kind])
    canaries = [GENERAL_PROMPTS, REFERENCE_TEXT.read_text(encoding="utf-8")]
    key = json.dumps([stat.st_size, stat.st_mtime_ns, n_ctx, rows, canaries])
    key = hashlib.sha256(key.encode()).hexdigest()
    try:
        known = json.loads(cache.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        known = {}
    if key in known:
        return ModelScores(**known[key])
    scores = score(gguf, holdout, n_ctx, progress, threads)
    kept = dict(list(known.items())[-7:])  # the newest few are enough
    kept[key] = scores.to_dict()
    atomic.write_text(cache, json.dumps(kept))
    return scores


def decide(before: ModelScores, after: ModelScores, trained_kinds: list[str], tolerance: float) -> Verdict:
    """Promote only when the candidate (`after`) beats the current model (`before`) on the held-out feedback
    of every kind it trained on and passes both canaries."""
    b, a = before, after
    checks: list[Check] = []
    if "dpo" in trained_kinds and a.dpo_pairs:
        better = a.dpo_accuracy >= b.dpo_accuracy and a.dpo_margin > b.dpo_margin
        detail = f"accuracy {b.dpo_accuracy:.2f} -> {a.dpo_accuracy:.2f}, margin {b.dpo_margin:+.3f} -> "
        checks.append(Check("held-out pairs", better, detail + f"{a.dpo_margin:+.3f} ({a.dpo_pairs} pairs)"))
    if "kto" in trained_kinds and a.kto_rows:
        detail = f"desirability {b.kto_desirability:+.3f} -> {a.kto_desirability:+.3f} ({a.kto_rows} rows)"
        checks.append(Check("held-out thumbs", a.kto_desirability > b.kto_desirability, detail))
    if "sft" in trained_kinds and a.sft_rows:
        detail = f"log-probability {b.sft_logprob:.3f} -> {a.sft_logprob:.3f} ({a.sft_rows} rows)"
        checks.append(Check("held-out answers", a.sft_logprob > b.sft_logprob, detail))
    if not checks:
        checks.append(
            Check("held-out feedback", False, "no held-out rows of the kinds trained on to judge by")
        )
    limit = b.perplexity * (1 + tolerance)
    detail = f"{b.perplexity:.2f} -> {a.perplexity:.2f} (limit {limit:.2f}, +{tolerance:.0%})"
    checks.append(Check("reference perplexity", a.perplexity <= limit, detail))
    detail = f"{b.general_answered}/{b.general_total} -> {a.general_answered}/{a.general_total}"
    checks.append(Check("general questions", a.general_answered >= b.general_answered, detail))
    return Verdict(all(c.passed for c in checks), checks)
