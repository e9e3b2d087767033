"""The publish stage: a new version directory (the candidate, its adapters and lineage, the rows it learnt
from, its train config and report), switched in atomically; or the rejection and its reasons recorded. Either
way the rows are then marked consumed, and the run's report is written."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

from assistant import registry, runs
from assistant.config import Config
from trainer import report, staging
from trainer.context import RunContext
from trainer.lineage import keep_lineage


def publish(ctx: RunContext) -> None:
    """Record the run; publish the candidate if the gate accepted it; mark the rows consumed."""
    cfg, verdict = ctx.config.train, ctx.verdict
    rows_used = {k: [r["id"] for r in ctx.batch.train_rows(k)] for k in ctx.kinds}
    ctx.record = {
        "run_id": ctx.run_id,
        "started": ctx.started,
        "outcome": "published" if verdict.accepted else "rejected",
        "reasons": verdict.reasons,
        "device": ctx.device.description,
        "processes": ctx.procs.count,
        **ctx.plan.to_dict(),
        "before": ctx.before.to_dict(),
        "after": ctx.after.to_dict(),
        "checks": [asdict(c) for c in verdict.checks],
        "training": ctx.training,
        "raft": ctx.raft_stats,
        "notes": ctx.notes,
        "train_config": asdict(cfg),
        "stages": dict(ctx.stages.times),
    }
    if verdict.accepted:
        keep_lineage(ctx.chain, ctx.staging, ctx.parent)
        with (ctx.staging / "rows.jsonl").open("w", encoding="utf-8") as fh:
            for kind in ctx.kinds:
                fh.writelines(
                    json.dumps({"kind": kind, **r}, ensure_ascii=False) + "\n"
                    for r in ctx.batch.train_rows(kind)
                )
        (ctx.staging / "train_config.json").write_text(json.dumps(asdict(cfg), indent=2), encoding="utf-8")
        staging.keep_only_published(ctx.staging)
        report.write(ctx.staging, ctx.record)
        meta = {
            "objective": "+".join(ctx.objectives),
            "data_size": sum(len(v) for v in rows_used.values()),
            "metrics": _headline(ctx.after),
            "run_id": ctx.run_id,
            "base": str(ctx.base_gguf),
            "base_sha256": json.loads((ctx.master / "master.json").read_text(encoding="utf-8"))[
                "source_sha256"
            ],
            "quant_type": ctx.plan.quant_type,
            "update_kept": ctx.plan.update_kept,
            "scale": ctx.plan.scale or 1.0,  # share of the trained update merged (see gate)
        }
        ctx.version = registry.publish(ctx.config, ctx.staging, meta)
        ctx.record["version"] = ctx.version
    _consume(ctx.config, ctx.run_id, rows_used)
    shutil.rmtree(ctx.staging, ignore_errors=True)


def write_report(ctx: RunContext) -> Path:
    """Once the stages are done: the run's report, in the logs folder and in the published version (now with
    its name and the publish stage's time); returns the logs folder's copy."""
    ctx.record["stages"] = dict(ctx.stages.times)
    out = runs.report_dir(ctx.config, ctx.run_id)
    report.write(out, ctx.record)
    if ctx.version:
        report.write(ctx.config.models_dir / ctx.version, ctx.record)
    return out


def _consume(config: Config, run_id: str, rows_used: dict[str, list[str]]) -> None:
    from assistant.feedback import ReplayBuffer

    with ReplayBuffer(config) as buffer:
        for kind, ids in rows_used.items():
            buffer.mark_consumed(run_id, kind, ids)


def _headline(scores) -> dict[str, Any]:
    """The few figures `nightjar models` shows."""
    keys = ("dpo_accuracy", "dpo_margin", "kto_desirability", "sft_logprob", "perplexity")
    return {k: round(v, 4) for k in keys if (v := getattr(scores, k)) is not None}
