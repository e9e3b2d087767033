"""The read stage: the rows a run trains on, its objectives, its base and parent. Below `train.min_new_rows`
new rows, or with too few held-out rows to tell a gain from chance, nothing happens; a dry run stops at what
fitting would do; a real run checks the disk and makes its folder."""

from __future__ import annotations

from assistant import registry
from trainer import data, lineage, processes, staging
from trainer.context import RunContext, RunPlan


def read(ctx: RunContext) -> str | None:
    """Read the batch and plan the run; why there is nothing to do, if so (then nothing is consumed)."""
    from trainer.quantize import base_qtype

    config, cfg = ctx.config, ctx.config.train
    ctx.batch = data.read(config, seed=cfg.seed)
    ctx.parent = registry.current_version(config)
    objectives = data.choose_objectives(ctx.batch, cfg.objectives())
    can_score = "raft" not in objectives or _raft_can_score(ctx)
    ctx.objectives, why_not_raft = data.raft_fallback(objectives, can_score)
    ctx.notes += [why_not_raft] if why_not_raft else []
    ctx.kinds = data.consumed_kinds(ctx.objectives)
    ctx.base_gguf = registry.base_model_path(config)
    twice = data.twice_left_out(ctx.batch, ctx.objectives, cfg.sft_weight)
    ctx.plan = RunPlan(
        objectives=ctx.objectives,
        rows=ctx.batch.summary(),
        new_rows=ctx.batch.n_fresh(),
        base=str(ctx.base_gguf),
        parent=ctx.parent,
        quant_type=cfg.quant_type or base_qtype(ctx.base_gguf),
        left_out=ctx.batch.left_out(ctx.kinds) + ([twice] if twice else []),
        notes=list(ctx.notes),
    )
    n_new = ctx.batch.n_fresh()
    if n_new < cfg.min_new_rows:
        per_kind = ", ".join(f"{n} {k}" for k, n in ctx.batch.fresh.items() if n)
        return (
            f"{n_new} new feedback rows{f' ({per_kind})' if per_kind else ''}, "
            f"fewer than train.min_new_rows ({cfg.min_new_rows})"
        )
    if not any(ctx.batch.new.get(kind) for kind in ctx.kinds):
        return f"no new rows for {'+'.join(ctx.objectives)} (train.objective); other kinds: " + "; ".join(
            ctx.batch.left_out(ctx.kinds)
        )
    return None


def holdout_shortfall(ctx: RunContext) -> str | None:
    """Why the gate could not tell this run's gain from chance (too few held-out rows), if so, also noted in
    the plan: a dry run shows it, a real run stops there (`data.holdout_shortfall`)."""
    cfg, fraction = ctx.config.train, ctx.config.feedback.holdout_fraction
    why = data.holdout_shortfall(ctx.batch, ctx.kinds, cfg.min_holdout_rows, fraction)
    if why:
        ctx.plan.notes.append(why)
    return why


def _raft_can_score(ctx: RunContext) -> bool:
    """Whether RAFT would have a learned scorer: a reward model (from 2 or more pairs to train on) or the
    implicit reward of the served version's last adapter, where it is a DPO one."""
    rewards = ctx.config.train.rewards()
    if "model" in rewards and len(ctx.batch.train_rows("dpo")) >= 2:
        return True
    chain = lineage.adapters_of(ctx.config, ctx.parent)
    return "dpo" in rewards and bool(chain) and chain[-1].name.endswith("-dpo")


def dry_fit(ctx: RunContext) -> dict[str, str]:
    """What fitting would do to each kind's rows (`RowFit.summary`), with the base GGUF's own tokenizer."""
    from transformers import AutoTokenizer

    from trainer.objectives import fit_rows

    base_gguf = ctx.base_gguf
    tok = AutoTokenizer.from_pretrained(str(base_gguf.parent), gguf_file=base_gguf.name)
    cfg = ctx.config.train
    objective = {data.KIND_OF[o]: o for o in ctx.objectives}
    return {
        kind: fit_rows(
            data.objective_rows(ctx.batch, objective[kind], ctx.objectives, cfg.sft_weight),
            tok,
            cfg.max_length,
        )[1].summary()
        for kind in ctx.kinds
    }


def prepare(ctx: RunContext) -> None:
    """Before a real run's work: room on the disk, quiet libraries, the staging folder."""
    staging.check_disk(ctx.config, ctx.base_gguf)
    processes.quiet_libraries(ctx.config.train.threads, ctx.procs.count)
    ctx.staging.mkdir(parents=True)
