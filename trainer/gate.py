"""The eval stage: the candidate against the served version on held-out feedback, plus the regression
canaries (`verdict.decide`); scores of a model file are remembered between runs (`evaluate.score_cached`).

When the candidate's held-out gain is real but a canary fails (the update moved the model too far: the
reference text's perplexity rose, a general question is no longer answered), the strongest safe update may be
a fraction of it. The new adapters are scaled (`scale.scale_adapters`: exactly that fraction of the merged
update) to each of `SCALES` in turn, and each such candidate is rebuilt (merged, exported, quantized) and
judged again; the first that passes is the candidate, and the report says what it gave up. A scale that loses
the held-out gain ends the search: smaller ones would only lose more of it. Every candidate, the whole
update's too, meets the cheap canaries first (general questions, reference perplexity: seconds); only one
that passes them is scored on the held-out rows and the grounded questions (minutes). A whole update that
fails one goes straight to the search: whatever its held-out gain, it could not be published, and the
fraction that passes is judged on its own gain.
"""

from __future__ import annotations

from assistant import registry
from trainer import candidate
from trainer.context import RunContext
from trainer.evaluate import ModelScores
from trainer.verdict import Check, GateSettings, Verdict, canaries, decide

EVAL_CACHE = ".eval-cache.json"  # scores of model files on holdouts (see evaluate.score_cached)
SCALES = (0.75, 0.5, 0.25)  # shares of the update tried, strongest first, when all of it fails a canary


def judge(ctx: RunContext) -> None:
    """Score the served model and the candidate, and decide whether (and at what scale) it is published."""
    cfg = ctx.config.train
    settings = GateSettings(cfg.canary_tolerance, cfg.min_holdout_rows, cfg.confidence, cfg.seed)
    _, served = registry.served_model(ctx.config)
    ctx.before = _score(ctx, served, "served model", 0)
    quick, failed = _quick(ctx, settings)
    if failed:
        ctx.after, ctx.verdict = quick, Verdict(False, canaries(ctx.before, quick, settings.tolerance))
        ctx.notes.append(f"the whole update fails {_listed(failed)}: its held-out rows were not scored")
    else:
        ctx.after = _score(ctx, ctx.candidate, "candidate", 1, quick)
        ctx.verdict = _decide(ctx, ctx.after, settings)
        if ctx.verdict.accepted or not ctx.verdict.feedback_passed:
            return
    _scale_down(ctx, settings)


def _scale_down(ctx: RunContext, settings: GateSettings) -> None:
    """Look for the largest of `SCALES` at which the candidate keeps its gain and passes the canaries."""
    from trainer.scale import scale_adapters

    full, scale = ctx.verdict, 1.0
    for target in SCALES:
        scale_adapters(ctx.new_adapters, target / scale)
        scale = target
        ctx.stages.update(0, 1, f"candidate at {scale:.0%} of the update")
        candidate.export(ctx, candidate.merge(ctx))
        candidate.quantize(ctx, again=True)
        quick, failed = _quick(ctx, settings)
        if failed:
            ctx.notes.append(f"at {scale:.0%} of the update a canary still fails: {_listed(failed)}")
            continue
        after = _score(ctx, ctx.candidate, f"candidate at {scale:.0%}", 1, quick)
        verdict = _decide(ctx, after, settings)
        if verdict.accepted:
            ctx.after, ctx.verdict, ctx.plan.scale = after, verdict, scale
            ctx.notes.append(
                f"the whole update failed ({'; '.join(full.reasons)}); {scale:.0%} of it keeps the held-out "
                f"gain and passes: {_listed(verdict.checks)}"
            )
            return
        if not verdict.feedback_passed:
            ctx.notes.append(
                f"at {scale:.0%} of the update the held-out feedback fails: {'; '.join(verdict.reasons)}"
            )
            break
        ctx.notes.append(f"at {scale:.0%} of the update a canary still fails: {'; '.join(verdict.reasons)}")
    ctx.notes.append("no smaller update keeps the gain and passes the canaries: the candidate is rejected")


def _quick(ctx: RunContext, settings: GateSettings) -> tuple[ModelScores, list[Check]]:
    """The candidate's quick canaries (`evaluate.quick_canaries`) and those of them it fails."""
    from trainer import evaluate

    cfg = ctx.config.train
    quick = evaluate.quick_canaries(ctx.candidate, cfg.eval_n_ctx, cfg.threads)
    return quick, [c for c in canaries(ctx.before, quick, settings.tolerance) if not c.passed]


def _listed(checks: list[Check]) -> str:
    return "; ".join(f"{c.name}: {c.detail}" for c in checks)


def _score(ctx: RunContext, gguf, what: str, half: int, quick: ModelScores | None = None) -> ModelScores:
    """One model's scores (cached), its progress shown in the first or second half of the stage's bar."""
    from trainer import evaluate

    cfg = ctx.config.train
    on = lambda d, t: ctx.stages.update(half * t + d, 2 * t, what)  # noqa: E731
    cache = ctx.config.models_dir / EVAL_CACHE
    return evaluate.score_cached(cache, gguf, ctx.batch.holdout, cfg.eval_n_ctx, on, cfg.threads, quick)


def _decide(ctx: RunContext, after: ModelScores, settings: GateSettings) -> Verdict:
    return decide(ctx.before, after, ctx.kinds, settings)
