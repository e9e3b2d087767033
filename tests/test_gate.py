"""The evaluation gate: a gain beyond chance on a trained kind, no kind significantly worse, canaries."""

from __future__ import annotations

import dataclasses
import statistics

import pytest

from trainer.evaluate import ModelScores
from trainer.grounded_canary import GroundedCanary
from trainer.verdict import GateSettings, bootstrap_bounds, decide


def scores(dpo=(), kto=(), sft=(), perplexity=10.0, general=5, grounded=None) -> ModelScores:
    """Scores with per-row values for rows "r0", "r1", ... of each kind."""
    rows = {
        kind: {f"r{i}": v for i, v in enumerate(values)}
        for kind, values in (("dpo", dpo), ("kto", kto), ("sft", sft))
    }
    margins = list(dpo)
    return ModelScores(
        dpo_pairs=len(margins),
        dpo_accuracy=sum(m > 0 for m in margins) / len(margins) if margins else None,
        dpo_margin=statistics.fmean(margins) if margins else None,
        perplexity=perplexity,
        general_answered=general,
        general_total=5,
        grounded=grounded or GroundedCanary(),
        rows=rows,
    )


BEFORE = [-0.4, -0.1, 0.2, -0.3, 0.0, -0.2, 0.1, -0.5, -0.1, 0.3]
GAIN = [m + 0.5 + 0.05 * i for i, m in enumerate(BEFORE)]  # every pair better, by 0.5 to 0.95


def test_a_consistent_gain_on_a_trained_kind_is_promoted():
    verdict = decide(scores(dpo=BEFORE), scores(dpo=GAIN), ["dpo"])
    assert verdict.accepted, verdict.reasons
    pairs = next(c for c in verdict.checks if c.name == "held-out pairs")
    assert "change +0.725 per row" in pairs.detail and "10 rows" in pairs.detail


def test_a_gain_that_could_be_chance_is_not_promoted():
    # the mean rises (+0.1 per row) but single rows swing by +-2: the bootstrap's lower bound is below 0
    noisy = [
        m + d for m, d in zip(BEFORE, [2.1, -1.9, 2.0, -2.0, 1.9, -1.8, 2.2, -2.1, 1.8, -1.2], strict=True)
    ]
    assert statistics.fmean(noisy) > statistics.fmean(BEFORE)
    verdict = decide(scores(dpo=BEFORE), scores(dpo=noisy), ["dpo"])
    assert not verdict.accepted
    assert verdict.reasons == [next(r for r in verdict.reasons if r.startswith("held-out pairs"))]
    assert "could be chance" in verdict.reasons[0]


def test_every_kind_with_held_out_rows_is_judged_not_only_the_trained_one():
    thumbs = [0.5, -0.3, 0.2, 0.4, -0.1, 0.3]
    lower = [t - 1.0 - 0.1 * i for i, t in enumerate(thumbs)]  # every held-out thumb row worse
    verdict = decide(scores(dpo=BEFORE, kto=thumbs), scores(dpo=GAIN, kto=lower), ["dpo"])
    assert not verdict.accepted
    assert len(verdict.reasons) == 1 and verdict.reasons[0].startswith("held-out thumbs")
    assert "significantly worse" in verdict.reasons[0]
    # the same kto rows, a little noisier but not worse: fine
    level = [t + (0.05 if i % 2 else -0.05) for i, t in enumerate(thumbs)]
    assert decide(scores(dpo=BEFORE, kto=thumbs), scores(dpo=GAIN, kto=level), ["dpo"]).accepted


def test_too_few_held_out_rows_cannot_promote():
    verdict = decide(scores(dpo=BEFORE[:5]), scores(dpo=GAIN[:5]), ["dpo"])
    assert not verdict.accepted
    assert any(
        r.startswith("held-out feedback: fewer than train.min_holdout_rows (8)") for r in verdict.reasons
    )
    assert decide(scores(dpo=BEFORE[:5]), scores(dpo=GAIN[:5]), ["dpo"], GateSettings(min_rows=5)).accepted


def test_a_trained_kind_with_few_rows_only_has_to_be_no_worse_when_another_shows_the_gain():
    few = [0.1, -0.2, 0.0]
    worse = [v - 1.0 for v in few]
    before, ok = scores(dpo=BEFORE, sft=few), scores(dpo=GAIN, sft=[v + 0.01 for v in few])
    assert decide(before, ok, ["sft", "dpo"]).accepted
    verdict = decide(before, scores(dpo=GAIN, sft=worse), ["sft", "dpo"])
    assert not verdict.accepted and verdict.reasons[0].startswith("held-out answers")


def test_the_canaries_stay():
    before = scores(dpo=BEFORE, grounded=GroundedCanary(questions=4, cited_ok=3, swapped=4, dont_know=1))
    drift = decide(before, scores(dpo=GAIN, perplexity=10.6, grounded=before.grounded), ["dpo"])
    assert not drift.accepted and drift.reasons[0].startswith("reference perplexity")
    fine = scores(
        dpo=GAIN, perplexity=10.4, grounded=GroundedCanary(questions=4, cited_ok=2, swapped=4, dont_know=2)
    )
    assert decide(before, fine, ["dpo"]).accepted  # the grounded score (cited + don't know) is kept
    forgot = scores(dpo=GAIN, grounded=GroundedCanary(questions=4, cited_ok=1, swapped=4, dont_know=1))
    verdict = decide(before, forgot, ["dpo"])
    assert not verdict.accepted and verdict.reasons[0].startswith("grounded questions")
    broken = decide(before, scores(dpo=GAIN, general=3, grounded=before.grounded), ["dpo"])
    assert not broken.accepted and broken.reasons[0].startswith("general questions")


def test_bootstrap_bounds_bracket_the_mean_and_are_seeded():
    changes = [0.3, -0.1, 0.5, 0.2, 0.0, 0.4, -0.2, 0.6]
    lower, upper = bootstrap_bounds(changes, 0.95, seed=3)
    assert lower < statistics.fmean(changes) < upper
    assert bootstrap_bounds(changes, 0.95, seed=3) == (lower, upper)
    wider = bootstrap_bounds(changes, 0.99, seed=3)
    assert wider[0] < lower and wider[1] > upper


def test_scores_round_trip_through_the_cache_layout():
    s = scores(dpo=BEFORE, grounded=GroundedCanary(questions=2, cited_ok=1, answers=["a [1]", "b"]))
    again = ModelScores.from_dict(s.to_dict())
    assert again == s and again.grounded.score == 1


# ---- the search for the strongest safe update (its control flow; `test_trainer_scale` scales for real) ----
class _Progress:
    def update(self, done: int, total: int, what: str | None = None) -> None:
        pass


GROUNDED = GroundedCanary(questions=4, cited_ok=3)  # the served model's grounded canary, in `_searched`
WORSE_GROUNDED = GroundedCanary(questions=4, cited_ok=1)


def _searched(monkeypatch, config, tmp_path, candidates: list[ModelScores], scored_fully: list | None = None):
    """Run `gate.judge` with the served model scored as `before` and each rebuilt candidate as the next of
    `candidates` (each meets its quick canaries first: the same scores); returns the context and the factors
    the adapters were scaled by. `scored_fully` collects the scores `_score` was asked for."""
    from trainer import candidate, evaluate, gate, scale
    from trainer.context import RunContext, RunPlan

    scored = iter([scores(dpo=BEFORE, grounded=GROUNDED), *candidates])
    factors: list[float] = []
    scored_fully = [] if scored_fully is None else scored_fully

    full_of: dict[int, ModelScores] = {}  # a candidate's quick canaries -> its full scores

    def quick_canaries(gguf, n_ctx, threads):  # no grounded questions: those take the full scoring
        full = next(scored)
        quick = dataclasses.replace(full, grounded=GroundedCanary())
        full_of[id(quick)] = full
        return quick

    def score(ctx, gguf, what, half, quick=None):
        scored_fully.append(full_of[id(quick)] if quick else next(scored))
        return scored_fully[-1]

    monkeypatch.setattr(gate, "_score", score)
    monkeypatch.setattr(evaluate, "quick_canaries", quick_canaries)
    monkeypatch.setattr(gate.registry, "served_model", lambda config: ("base", tmp_path / "served.gguf"))
    monkeypatch.setattr(scale, "scale_adapters", lambda adapters, factor: factors.append(factor))
    monkeypatch.setattr(candidate, "merge", lambda ctx: {})
    monkeypatch.setattr(candidate, "export", lambda ctx, merged: None)
    monkeypatch.setattr(candidate, "quantize", lambda ctx, again: None)
    plan = RunPlan(["dpo"], {}, 20, "base.gguf", "base", "Q4_1")
    ctx = RunContext(config, "run", tmp_path, _Progress(), kinds=["dpo"], plan=plan)
    gate.judge(ctx)
    return ctx, factors


def test_a_gain_that_fails_a_canary_is_published_at_the_largest_scale_that_passes(
    monkeypatch, config, tmp_path
):
    too_far = scores(dpo=GAIN, grounded=WORSE_GROUNDED)  # worse on the held-out grounded questions
    still = scores(dpo=GAIN, perplexity=10.6)  # three quarters of the update: still too far
    half = scores(dpo=[m - 0.2 for m in GAIN], perplexity=10.3)
    fully: list[ModelScores] = []
    ctx, factors = _searched(monkeypatch, config, tmp_path, [too_far, still, half], fully)
    assert ctx.verdict.accepted and ctx.after is half and ctx.plan.scale == 0.5
    assert factors == pytest.approx([0.75, 0.5 / 0.75]), "75% of the update, then 50%"
    assert fully[1:] == [too_far, half], "the whole update and 50% scored on the holdout; 75% was not"
    assert ctx.notes[0].startswith("at 75% of the update a canary still fails: reference perplexity")
    assert ctx.notes[-1].startswith("the whole update failed (grounded questions: ")
    assert "50% of it keeps the held-out gain and passes" in ctx.notes[-1]


def test_a_whole_update_failing_a_quick_canary_is_not_scored_on_the_holdout(monkeypatch, config, tmp_path):
    too_far = scores(dpo=GAIN, general=3)  # the general questions fail: no held-out scoring for it
    half = scores(dpo=GAIN, perplexity=10.2)
    fully: list[ModelScores] = []
    ctx, factors = _searched(monkeypatch, config, tmp_path, [too_far, too_far, half], fully)
    assert ctx.verdict.accepted and ctx.plan.scale == 0.5 and factors == pytest.approx([0.75, 0.5 / 0.75])
    assert fully[1:] == [half], "only the served model and the 50% candidate are scored on the holdout"
    assert ctx.notes[0] == (
        "the whole update fails general questions: 5/5 -> 3/5: its held-out rows were not scored"
    )
    assert ctx.notes[1] == "at 75% of the update a canary still fails: general questions: 5/5 -> 3/5"
    assert ctx.notes[-1].startswith("the whole update failed (general questions: 5/5 -> 3/5); 50% of it")


def test_no_scale_that_keeps_the_gain_and_passes_means_rejection(monkeypatch, config, tmp_path):
    too_far = scores(dpo=GAIN, perplexity=11.0)
    still = scores(dpo=GAIN, perplexity=10.8)
    lost = scores(dpo=BEFORE, perplexity=10.1)  # a quarter of the update: no gain left
    ctx, factors = _searched(monkeypatch, config, tmp_path, [too_far, still, still, lost])
    assert not ctx.verdict.accepted and ctx.after.perplexity == 11.0 and ctx.plan.scale is None
    assert ctx.verdict.reasons == ["reference perplexity: 10.00 -> 11.00 (limit 10.50, +5%)"]
    assert factors == pytest.approx([0.75, 0.5 / 0.75, 0.5]), "75%, 50%, then 25% of the update"
    assert [n.split(" of the update")[0] for n in ctx.notes[1:4]] == ["at 75%", "at 50%", "at 25%"]
    assert "held-out feedback fails" in ctx.notes[3] and ctx.notes[4].startswith("no smaller update")


def test_a_candidate_without_a_real_gain_is_not_searched(monkeypatch, config, tmp_path):
    no_gain = scores(dpo=BEFORE, grounded=WORSE_GROUNDED)  # a canary only the full scoring measures
    ctx, factors = _searched(monkeypatch, config, tmp_path, [no_gain])
    assert not ctx.verdict.accepted and factors == [] and ctx.notes == []
