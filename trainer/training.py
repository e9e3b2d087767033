"""The master and train stages: the float master and the served version's lineage, then a new LoRA per
objective (DPO, KTO, RAFT, or a sequence such as RAFT then DPO), each on top of the ones before.

With several processes the main one builds the master and sends the others the run (`load_master`); they
`follow` it, and all train each adapter together (data-parallel); the main process alone writes it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from assistant import registry
from assistant.config import Config
from assistant.errors import NightjarError
from trainer import data, processes, staging
from trainer.context import RunContext
from trainer.data import Row
from trainer.lineage import ADAPTER, adapters_of, check_base
from trainer.processes import Processes
from trainer.progress import Stages

log = logging.getLogger("nightjar.train")


def load_master(ctx: RunContext) -> None:
    """The master stage: the base's float master, the served version's adapters, the device and tokenizer;
    then the other processes, if any, get the run."""
    from trainer.master import ensure_master
    from trainer.objectives import device_plan, tokenizer

    ctx.master = ensure_master(ctx.config, ctx.base_gguf)
    check_base(ctx.config, ctx.parent, ctx.master)
    ctx.chain = adapters_of(ctx.config, ctx.parent)
    ctx.device = device_plan(processes=ctx.procs.count)
    ctx.tok = tokenizer(ctx.master)
    ctx.general = _general_rows(ctx)
    ctx.procs.send(
        {
            "run_id": ctx.run_id,
            "batch": ctx.batch,
            "objectives": ctx.objectives,
            "master": ctx.master,
            "chain": ctx.chain,
            "general": ctx.general,
        }
    )


def _general_rows(ctx: RunContext) -> list[Row]:
    """The served model's own answers to everyday questions, for the SFT objectives (`general_replay`)."""
    cfg = ctx.config.train
    if not cfg.general_replay or not {"sft", "raft"} & set(ctx.objectives):
        return []
    from trainer import general_replay

    _, served = registry.served_model(ctx.config)
    rows = general_replay.rows(served, cfg.general_replay, cfg.eval_n_ctx, cfg.threads)
    ctx.notes.append(
        f"general replay: SFT also trained the served model's own answers to {len(rows)} everyday "
        "questions, so the update stays where the feedback was"
    )
    return rows


def follow(config: Config, procs: Processes) -> str | None:
    """A process other than the main one: wait for the main process's run and train its adapters with it;
    the run's id, or None when the main process stopped first. The main one logs, merges, evaluates,
    publishes and reports."""
    go = procs.share(None)
    if go is None:
        return None
    from trainer.objectives import device_plan, tokenizer

    run_id = go["run_id"]
    handler = processes.log_to_file(config, procs)
    try:
        processes.quiet_libraries(config.train.threads, procs.count)
        device, tok = device_plan(processes=procs.count), tokenizer(go["master"])
        with Stages() as stages:
            ctx = RunContext(
                config,
                run_id,
                staging.run_folder(config, run_id),
                stages,
                procs,
                batch=go["batch"],
                objectives=go["objectives"],
                master=go["master"],
                chain=go["chain"],
                general=go["general"],
                device=device,
                tok=tok,
            )
            stages.start("train")
            train_all(ctx)
    finally:
        logging.getLogger("nightjar").removeHandler(handler)
        handler.close()
    return run_id


def train_all(ctx: RunContext) -> None:
    """Train each objective's adapter in turn, each on top of the ones before, into `ctx.new_adapters` (with
    their histories and RAFT stats). With several processes, every process calls this and they train
    together."""
    for n, objective in enumerate(ctx.objectives):
        out = ctx.staging / ADAPTER / f"{n}-{objective}"
        if (
            objective == "sft"
            and not data.objective_rows(ctx.batch, objective, ctx.objectives, ctx.config.train.sft_weight)
            + ctx.general
        ):
            ctx.notes.append("sft: nothing of its own to train (its rows were DPO's chosen answers)")
            continue
        history, stats = train_one(ctx, objective, out)
        ctx.training[objective] = history
        ctx.raft_stats.update(stats)
        ctx.new_adapters.append(out)


def train_one(ctx: RunContext, objective: str, out: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Train one objective's adapter into `out`, on top of `ctx.adapters`; returns its log history and (for
    RAFT) ranking stats."""
    from trainer.objectives import dpo, kto, load_for_training, sft

    steps = lambda d, t: ctx.stages.update(d, t, f"{objective} steps")  # noqa: E731
    procs = ctx.procs
    stats: dict[str, Any] = {}
    if objective == "raft":
        rows, stats = raft_rows(ctx)
        if not rows:
            raise NightjarError("RAFT kept no answer: every sampled answer failed the rule checks")
    else:
        rows = data.objective_rows(ctx.batch, objective, ctx.objectives, ctx.config.train.sft_weight)
    if objective in ("sft", "raft"):
        rows = rows + ctx.general
    model = load_for_training(ctx.master, ctx.adapters, ctx.device, ctx.staging)
    module = {"sft": sft, "dpo": dpo, "kto": kto, "raft": sft}[objective]  # raft trains its kept rows
    history = module.train(model, ctx.tok, rows, ctx.config.train, ctx.device, out, steps)
    if procs.count > 1:
        done = max((h.get("step", 0) for h in history), default=0)
        log.info("process %d of %d: %s trained, %d steps", procs.rank, procs.count, objective, done)
    return history, stats


def raft_rows(ctx: RunContext) -> tuple[list[Row], dict[str, Any]]:
    """Sample K answers per prompt with the served model, score them, keep the best. With several processes
    the main one samples and scores, all train the reward model together, and all get the kept rows."""
    import gc

    from trainer.objectives import load_float, raft, reward

    cfg, procs, stages, master, tok = ctx.config.train, ctx.procs, ctx.stages, ctx.master, ctx.tok
    prompts: dict[str, tuple[list, list[str]]] = {}
    for kind in ("sft", "dpo", "kto"):
        for row in ctx.batch.train_rows(kind):
            key = json.dumps(row["prompt"], sort_keys=True)
            own = [row["completion"][-1]["content"]] if kind == "sft" else []
            entry = prompts.setdefault(key, (row["prompt"], []))
            entry[1].extend(own)
    chosen = list(prompts.values())[: cfg.raft_prompts]
    sampled = None
    if procs.main:
        _, served = registry.served_model(ctx.config)
        on_sample = lambda d, t: stages.update(d, t, "sampling")  # noqa: E731
        sampled = raft.sample(served, [p for p, _ in chosen], cfg, on_sample)
    sampled = procs.share(sampled)
    answers = [own + found for (_, own), found in zip(chosen, sampled, strict=True)]

    scorers: dict[str, Any] = {}
    rewards = cfg.rewards()
    if "model" in rewards:
        pairs = ctx.batch.train_rows("dpo")
        if len(pairs) >= 2:
            out = ctx.staging / "reward-model"
            on_steps = lambda d, t: stages.update(d, t, "reward model steps")  # noqa: E731
            reward.train(master, tok, pairs, cfg, ctx.device, out, on_steps)
            if procs.main:
                scorers["model"] = reward.ModelReward(master, out, tok, cfg.max_length)
        else:
            ctx.notes.append("reward model skipped: fewer than 2 preference pairs to learn from")
    if not procs.main:  # the main process scores the answers and shares the rows it keeps
        rows, stats = procs.share(None)
        return rows, stats
    if "dpo" in rewards:
        chain = ctx.adapters
        if chain and chain[-1].name.endswith("-dpo"):
            parent = load_float(master, chain[:-1])
            scorers["dpo"] = reward.DPOReward(parent, chain[-1], tok, cfg.beta, cfg.max_length)
        else:
            why = "implicit DPO reward skipped: the served version's last adapter is not a DPO one"
            ctx.notes.append(why)
    stages.update(0, 1, "scoring")
    rows, stats = raft.best([p for p, _ in chosen], answers, scorers, use_rules="rules" in rewards)
    stats["rewards"] = sorted(scorers) + (["rules"] if "rules" in rewards else [])
    del scorers
    gc.collect()
    return procs.share((rows, stats))
