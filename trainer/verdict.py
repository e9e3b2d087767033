"""The gate's rule: is the candidate's held-out gain unlikely to be chance, is no kind of held-out feedback
significantly worse, and do the canaries pass? (`evaluate` scores the two models; `gate` runs the stage.)

A kind's gain is the mean per-row change between the two models' scores of the same held-out rows (a pair's
margin, an answer's log-probability, signed by its thumb for kto); it counts only when a seeded paired
bootstrap puts its lower bound at `train.confidence` above 0, on at least `train.min_holdout_rows` rows.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from trainer.evaluate import ModelScores

BOOTSTRAP = 2000  # resamples of the paired bootstrap
KIND_NAMES = {"dpo": "held-out pairs", "kto": "held-out thumbs", "sft": "held-out answers"}
CANARIES = ("reference perplexity", "general questions", "grounded questions")
MIN_JUDGED = 3  # fewest held-out rows of a kind not trained on that the gate judges


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

    @property
    def feedback_passed(self) -> bool:
        """Whether the held-out feedback checks passed (the canaries aside)."""
        return all(c.passed for c in self.checks if c.name not in CANARIES)


def bootstrap_bounds(changes: list[float], confidence: float, seed: int = 0) -> tuple[float, float]:
    """One-sided (lower, upper) bounds at `confidence` on the mean of `changes`, by a seeded bootstrap."""
    import numpy as np

    values = np.asarray(changes, dtype=float)
    draws = np.random.default_rng(seed).integers(0, len(values), size=(BOOTSTRAP, len(values)))
    means = values[draws].mean(axis=1)
    return float(np.quantile(means, 1 - confidence)), float(np.quantile(means, confidence))


@dataclass
class GateSettings:
    """What the gate asks of a candidate (from `train`: canary_tolerance, min_holdout_rows, confidence)."""

    tolerance: float = 0.05
    min_rows: int = 8
    confidence: float = 0.95
    seed: int = 0


def _feedback_check(kind: str, before: ModelScores, after: ModelScores, trained: bool, gate: GateSettings):
    """The check of one kind's held-out rows (the rows both models scored), or None with too few to judge."""
    b, a = before.rows.get(kind, {}), after.rows.get(kind, {})
    ids = sorted(b.keys() & a.keys())
    if not ids or (not trained and len(ids) < MIN_JUDGED):
        return None
    changes = [a[i] - b[i] for i in ids]
    mean = statistics.fmean(changes)
    lower, upper = bootstrap_bounds(changes, gate.confidence, gate.seed)
    level = f"{gate.confidence:.0%}"
    what = {
        "dpo": lambda: f"accuracy {before.dpo_accuracy:.2f} -> {after.dpo_accuracy:.2f}, margin",
        "kto": lambda: "desirability",
        "sft": lambda: "log-probability",
    }[kind]()
    detail = f"{what} change {mean:+.3f} per row ({level} bounds {lower:+.3f}..{upper:+.3f}, {len(ids)} rows)"
    if trained and len(ids) >= gate.min_rows:
        passed = lower > 0
        detail += "" if passed else ": the gain could be chance"
    else:
        passed = upper >= 0
        if trained:
            detail += f": too few to show a gain (train.min_holdout_rows {gate.min_rows}); not worse"
        detail += "" if passed else ": significantly worse"
    return Check(KIND_NAMES[kind], passed, detail)


def decide(
    before: ModelScores, after: ModelScores, trained_kinds: list[str], gate: GateSettings | None = None
) -> Verdict:
    """Promote only when the candidate (`after`) beats the current model (`before`) beyond chance on the
    held-out feedback of a kind it trained on (with enough rows), is not significantly worse on any other
    kind with held-out rows, and passes the canaries."""
    gate = gate or GateSettings()
    b, a = before, after
    checks = [
        check
        for kind in ("dpo", "kto", "sft")
        if (check := _feedback_check(kind, b, a, kind in trained_kinds, gate)) is not None
    ]
    judged = [
        kind
        for kind in trained_kinds
        if len(b.rows.get(kind, {}).keys() & a.rows.get(kind, {}).keys()) >= gate.min_rows
    ]
    if not judged:
        checks.append(
            Check(
                "held-out feedback",
                False,
                f"fewer than train.min_holdout_rows ({gate.min_rows}) held-out rows of the kinds trained on",
            )
        )
    checks += canaries(b, a, gate.tolerance)
    return Verdict(all(c.passed for c in checks), checks)


def canaries(before: ModelScores, after: ModelScores, tolerance: float) -> list[Check]:
    """The regression canaries: reference perplexity, general questions, grounded questions."""
    b, a = before, after
    limit = b.perplexity * (1 + tolerance)
    detail = f"{b.perplexity:.2f} -> {a.perplexity:.2f} (limit {limit:.2f}, +{tolerance:.0%})"
    checks = [Check("reference perplexity", a.perplexity <= limit, detail)]
    detail = f"{b.general_answered}/{b.general_total} -> {a.general_answered}/{a.general_total}"
    checks.append(Check("general questions", a.general_answered >= b.general_answered, detail))
    bg, ag = b.grounded, a.grounded
    if ag.questions:
        detail = (
            f"cited only given sources {bg.cited_ok}/{bg.questions} -> {ag.cited_ok}/{ag.questions}, "
            f"don't know without relevant sources {bg.dont_know}/{bg.swapped} -> {ag.dont_know}/{ag.swapped}"
        )
        checks.append(Check("grounded questions", ag.score >= bg.score, detail))
    return checks
