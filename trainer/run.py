"""`nightjar train`: one nightly run, from the replay buffer to a published (or rejected) model version.

    read -> master -> train -> merge -> export -> quantize -> eval -> publish

- read (`plan`): new feedback rows (and a replay sample of older ones); below `train.min_new_rows` nothing
  happens.
- master, train (`training`): the float master of the base GGUF (dequantized once and kept) plus the served
  version's lineage of LoRA adapters (`lineage`), never a requantized model; then a new LoRA per objective.
- merge, export, quantize (`candidate`): the adapters merged into the float model, written as a float GGUF
  with the base's metadata, quantized to the served type.
- eval (`gate`): the candidate against the served version on held-out feedback, plus the regression canaries.
- publish (`publish`): a new version directory, switched in atomically; or the rejection and its reasons.

The stages share a `RunContext` (`context`) and are timed by `progress.Stages`. Kill-safety (the lock, the
staging area) is `staging`'s; several processes under `accelerate launch` are `processes`'.
"""

from __future__ import annotations

import errno
import logging
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from assistant import runs
from assistant.config import Config
from assistant.errors import NightjarError
from trainer import candidate, gate, plan, processes, publish, staging, training
from trainer.context import RunContext
from trainer.processes import Processes
from trainer.progress import Stages

log = logging.getLogger("nightjar.train")


@dataclass
class RunResult:
    run_id: str
    outcome: str  # published, rejected, nothing to do, skipped, dry run
    version: str | None = None
    reasons: list[str] = field(default_factory=list)
    report_dir: Path | None = None
    plan: dict[str, Any] = field(default_factory=dict)


def train(
    config: Config,
    *,
    objective: str | None = None,
    dry_run: bool = False,
    scheduled: bool = False,
    console=None,
) -> RunResult:
    """One training run (see the module docstring). `objective` overrides train.objective for this run."""
    cfg = config.train
    if objective is not None:
        cfg.objective = objective
    problems = cfg.check()
    if problems:
        raise NightjarError("; ".join(problems))
    procs = processes.processes()
    if not procs.main:
        return _follow(config, procs)
    try:
        return _main(config, dry_run, scheduled, console, procs)
    finally:
        procs.send(None)  # the others wait for the run; if it never reached them, they stop


def _follow(config: Config, procs: Processes) -> RunResult:
    run_id = training.follow(config, procs)
    if run_id is None:
        why = f"process {procs.rank}: the main one stopped"
        return RunResult("", "nothing for this process", reasons=[why])
    why = f"process {procs.rank} of {procs.count} trained run {run_id}; the main process publishes it"
    return RunResult(run_id, "trained", reasons=[why])


def _main(config: Config, dry_run: bool, scheduled: bool, console, procs: Processes) -> RunResult:
    run_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
    with staging.run_lock(config):
        handler = processes.log_to_file(config, procs)
        try:
            return _locked(config, run_id, dry_run, scheduled, console, procs)
        except Exception as exc:
            if not dry_run:
                shutil.rmtree(staging.run_folder(config, run_id), ignore_errors=True)
                runs.log_event(
                    config, {"run": run_id, "event": "end", "outcome": "failed", "reasons": [str(exc)]}
                )
            log.error("run %s failed: %s", run_id, exc)
            if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
                raise NightjarError(
                    "out of disk space: nothing was published; free space and run again"
                ) from exc
            if isinstance(exc, MemoryError) or "out of memory" in str(exc).lower():
                raise NightjarError(
                    "out of memory: nothing was published; lower train.max_length or train.micro_batch_size"
                ) from exc
            raise
        finally:
            logging.getLogger("nightjar").removeHandler(handler)
            handler.close()


def _locked(
    config: Config, run_id: str, dry_run: bool, scheduled: bool, console, procs: Processes
) -> RunResult:
    cfg = config.train
    if scheduled:
        reason = staging.busy_reason(cfg.max_load, cfg.busy, cfg.busy_wait_minutes)
        if reason:
            log.info("run %s skipped: %s", run_id, reason)
            runs.log_event(config, {"run": run_id, "event": "end", "outcome": "skipped", "reasons": [reason]})
            return RunResult(run_id, "skipped", reasons=[reason])
    if dry_run:
        return _run(config, run_id, dry_run, console, procs)
    staging.clear_staging(config)
    runs.log_event(config, {"run": run_id, "event": "start"})
    result = _run(config, run_id, dry_run, console, procs)
    end = {"outcome": result.outcome, "version": result.version, "reasons": result.reasons}
    runs.log_event(config, {"run": run_id, "event": "end", **end, "stages": result.plan.get("stages", {})})
    log.info("run %s: %s %s", run_id, result.outcome, "; ".join(result.reasons))
    return result


def _run(config: Config, run_id: str, dry_run: bool, console, procs: Processes) -> RunResult:
    if config.model.path:
        raise NightjarError(
            "model.path is set, so Nightjar serves exactly that file, with no versions and no training; to "
            "train it, make it the base instead (`nightjar models base FILE`) and unset model.path"
        )
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    last = runs.last_run(config) or {}
    with Stages(console, expected={k: v["seconds"] for k, v in (last.get("stages") or {}).items()}) as stages:
        ctx = RunContext(config, run_id, staging.run_folder(config, run_id), stages, procs, started)
        stages.start("read")
        why = plan.read(ctx)
        if why:
            return RunResult(run_id, "nothing to do", reasons=[why], plan=ctx.plan.to_dict())
        too_few_held_out = plan.holdout_shortfall(ctx)
        if dry_run:
            return RunResult(run_id, "dry run", plan={**ctx.plan.to_dict(), "fitting": plan.dry_fit(ctx)})
        if too_few_held_out:
            return RunResult(run_id, "nothing to do", reasons=[too_few_held_out], plan=ctx.plan.to_dict())
        plan.prepare(ctx)
        stages.start("master")
        training.load_master(ctx)
        stages.start("train")
        training.train_all(ctx)
        if procs.count > 1:  # the others are done: the rest of the run has this process's threads to itself
            processes.quiet_libraries(config.train.threads)
        stages.start("merge")
        merged = candidate.merge(ctx)
        stages.start("export")
        candidate.export(ctx, merged)
        del merged
        stages.start("quantize")
        candidate.quantize(ctx)
        stages.start("eval")
        gate.judge(ctx)
        stages.start("publish")
        publish.publish(ctx)
    out = publish.write_report(ctx)
    plan_shown = {**ctx.plan.to_dict(), "stages": ctx.record["stages"]}
    return RunResult(run_id, ctx.record["outcome"], ctx.version, ctx.verdict.reasons, out, plan_shown)
