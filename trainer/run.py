"""`nightjar train`: one nightly run, from the replay buffer to a published (or rejected) model version.

    read -> master -> train -> merge -> export -> quantize -> eval -> publish

- read: new feedback rows (and a replay sample of older ones); below `train.min_new_rows` nothing happens.
- master: the float master of the base GGUF (dequantized once and kept) plus the served version's lineage
  of LoRA adapters: the float model of the served version, never a requantized one.
- train: a new LoRA per objective (DPO, KTO, RAFT, or a sequence such as RAFT then DPO).
- merge, export, quantize: the adapters merged into the float model, written as a float GGUF with the base's
  metadata, quantized to the served type.
- eval: the candidate against the served version on held-out feedback, plus the regression canaries.
- publish: a new version directory, switched in atomically; or the rejection and its reasons recorded.

Kill-safety: all work happens in `<models>/.staging/<run>`, which only `registry.publish` moves in. A lock
file keeps runs apart (the kernel drops it when a run dies); a new run deletes what dead runs left. Rows are
marked consumed only after a publish or a recorded rejection, so a killed run leaves the buffer as it was.

Several processes (`accelerate launch --num_processes N -m assistant train`, WORLD_SIZE > 1): every process
runs the command; the main one takes the lock, clears staging, logs the run, reads the rows and builds the
master, then sends the others (`Processes.send`) the run id, the rows and the master. All of them train each
adapter together (data-parallel, through transformers' Trainer), the main process alone writes it; the others
then return, and the main one merges, exports, quantizes, evaluates and publishes as a single process does.

Fault tests: NIGHTJAR_FAULT_KILL_AT="<stage>[+seconds]" makes the run SIGKILL itself that long into a stage.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import shutil
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from assistant import registry, runs
from assistant.config import Config
from assistant.errors import NightjarError
from trainer import data, report

STAGES = ("read", "master", "train", "merge", "export", "quantize", "eval", "publish")
KILL_ENV = "NIGHTJAR_FAULT_KILL_AT"
STAGING = ".staging"
LOCK_FILE = ".train.lock"
LINEAGE, ADAPTER = "lineage", "adapter"
MIN_KEPT = 0.5  # share of the trained update the served quantization must keep (see _quantize)
EVAL_CACHE = ".eval-cache.json"  # scores of model files on holdouts (see evaluate.score_cached)
log = logging.getLogger("nightjar.train")


@dataclass
class RunResult:
    run_id: str
    outcome: str  # published, rejected, nothing to do, skipped, dry run
    version: str | None = None
    reasons: list[str] = field(default_factory=list)
    report_dir: Path | None = None
    plan: dict[str, Any] = field(default_factory=dict)


# ---- one process, or several under `accelerate launch` ----
@dataclass
class Processes:
    """The processes running this command: one (plain `nightjar train`) or several (`accelerate launch`).
    Rank 0 is the main process; `state` is accelerate's PartialState when there are several."""

    count: int = 1
    rank: int = 0
    state: Any = None
    sent: bool = False  # the main process has sent the others the run (or told them to stop)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def share(self, value: Any) -> Any:
        """The main process's `value`, on every process (the others pass anything); collective."""
        if self.count == 1:
            return value
        from accelerate.utils import broadcast_object_list

        box = [value]
        broadcast_object_list(box, from_process=0)
        return box[0]

    def send(self, go: dict[str, Any] | None) -> None:
        """Main process: give the others the run to train (None: there is nothing for them to do)."""
        if self.count > 1 and self.main and not self.sent:
            self.sent = True
            self.share(go)


def processes(environ=os.environ) -> Processes:
    """This command's processes: accelerate's view of them only when launched with WORLD_SIZE > 1, so that a
    single process imports neither accelerate nor torch.distributed here."""
    from trainer.objectives import world_size

    if world_size(environ) <= 1:
        return Processes()
    import torch
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())  # gloo between CPU processes, else NCCL
    return Processes(state.num_processes, state.process_index, state)


# ---- the lock, the load check, the staging area ----
@contextlib.contextmanager
def run_lock(config: Config) -> Iterator[None]:
    """Hold the training lock, or fail at once if another run holds it."""
    config.models_dir.mkdir(parents=True, exist_ok=True)
    with (config.models_dir / LOCK_FILE).open("a+", encoding="utf-8") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "?"
            raise NightjarError(
                f"another training run is in progress (pid {holder}); try again later"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        yield


def busy_reason(
    max_load: float,
    action: str,
    wait_minutes: int,
    load: Callable[[], float] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> str | None:
    """None once the load per core is at most `max_load`; else (after waiting, for action "wait") why not."""
    from assistant.llamacpp import default_threads

    load = load or (lambda: os.getloadavg()[0] / default_threads())
    deadline = time.monotonic() + (wait_minutes * 60 if action == "wait" else 0)
    while True:
        now = load()
        if now <= max_load:
            return None
        if time.monotonic() >= deadline:
            waited = f" after waiting {wait_minutes} min" if action == "wait" else ""
            return f"machine busy: load {now:.2f} per core is above train.max_load {max_load}{waited}"
        log.info("machine busy (load %.2f per core > %s); checking again in a minute", now, max_load)
        sleep(60)


def _clear_staging(config: Config) -> None:
    """Delete what killed runs left (we hold the lock: no live run owns anything here), and finish a run
    killed between publishing its version and marking its rows consumed."""
    shutil.rmtree(config.models_dir / STAGING, ignore_errors=True)
    _consume_published(config)


PUBLISHED = {registry.MODEL_FILE, ADAPTER, LINEAGE, "rows.jsonl", "train_config.json"}  # + the report


def _keep_only_published(staging: Path) -> None:
    """Leave in a staging folder only what a version holds: the float export, the reward model, the GPU
    path's float checkpoint and TRL's per-trainer output are scratch of the run, not part of the version."""
    for path in staging.iterdir():
        if path.name not in PUBLISHED:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    for leftover in [p for p in staging.rglob("trainer") if p.is_dir()]:
        shutil.rmtree(leftover, ignore_errors=True)


def _consume_published(config: Config) -> None:
    """Rows of a published version whose run died before marking them consumed are marked now (from the
    version's rows.jsonl), so the next night does not train on them again."""
    from assistant.feedback import ReplayBuffer

    versions = [v for v in registry.versions(config) if v.name != registry.BASE]
    with ReplayBuffer(config) as buffer:
        for version in versions:
            run_id, rows = version.meta.get("run_id"), version.path / "rows.jsonl"
            if not run_id or not rows.is_file() or buffer.consumed(run_id):
                continue
            used: dict[str, list[str]] = {}
            for line in rows.read_text(encoding="utf-8").splitlines():
                row = json.loads(line)
                used.setdefault(row["kind"], []).append(row["id"])
            for kind, ids in used.items():
                buffer.mark_consumed(run_id, kind, ids)
            log.info(
                "run %s: marked the %d rows of %s consumed",
                run_id,
                sum(map(len, used.values())),
                version.name,
            )


def _check_disk(config: Config, base_gguf: Path) -> None:
    """Refuse to start without room for the master, a float GGUF and the quantized one."""
    need = 3 * 8 * base_gguf.stat().st_size  # a float32 copy is ~8x a 4-bit file
    free = shutil.disk_usage(config.models_dir).free
    if free < need:
        raise NightjarError(
            f"not enough free disk space in {config.models_dir}: a run needs about {need / 2**30:.1f} GiB, "
            f"{free / 2**30:.1f} GiB free"
        )


# ---- lineage: which adapters make up a version ----
def adapters_of(config: Config, version: str) -> list[Path]:
    """The adapters that, merged into the base's master in order, give `version`'s float model."""
    if version == registry.BASE:
        return []
    root = config.models_dir / version
    chain = [p for sub in (LINEAGE, ADAPTER) if (root / sub).is_dir() for p in sorted((root / sub).iterdir())]
    damaged = [
        p
        for p in chain
        if not (p / "adapter_config.json").is_file() or not (p / "adapter_model.safetensors").is_file()
    ]
    if not chain or damaged:
        raise NightjarError(
            f"model version {version} cannot be trained further: its adapters are missing or damaged "
            f"({root}); serve another version with `nightjar models use VERSION` and train again"
        )
    return chain


def _check_base(config: Config, version: str, master: Path) -> None:
    if version == registry.BASE:
        return
    base = registry.get(config, version).meta.get("base_sha256")
    mine = json.loads((master / "master.json").read_text(encoding="utf-8"))["source_sha256"]
    if base and base != mine:
        raise NightjarError(
            f"the served version {version} was trained from another base model than the configured one; "
            "serve the base (`nightjar models use base`) to train from it"
        )


# ---- stages: timing, peak memory, progress with ETA, the kill hook ----
class Stages:
    """Runs the pipeline's stages in order: times each, samples its peak memory, shows progress."""

    def __init__(self, console=None, expected: dict[str, float] | None = None) -> None:
        self.console = console
        self.expected = expected or {}
        self.times: dict[str, dict[str, float]] = {}
        self.current: str | None = None
        self._started = 0.0
        self._peak = 0
        self._stepped = False
        self._stop = threading.Event()
        self._progress = None
        self._task = None

    def __enter__(self) -> Stages:
        if self.console is not None and self.console.is_terminal:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                SpinnerColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(
                SpinnerColumn(),
                TextColumn("{task.description:<28}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=self.console,
            )
            self._progress.start()
        threading.Thread(target=self._sample, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._finish()
        self._stop.set()
        if self._progress is not None:
            self._progress.stop()

    def start(self, name: str) -> None:
        self._finish()
        self.current, self._started, self._peak, self._stepped = name, time.monotonic(), _rss(), False
        log.info("stage %s", name)
        if self._progress is not None:
            expected = self.expected.get(
                name
            )  # the last run's time: a clock-driven ETA until steps are known
            self._task = self._progress.add_task(name, total=expected)
        _kill_hook(name)

    def update(self, done: int, total: int, what: str | None = None) -> None:
        """Progress within the stage (steps, samples, rows)."""
        self._stepped = True
        if self._progress is not None and self._task is not None:
            description = f"{self.current}: {what}" if what else self.current
            self._progress.update(self._task, completed=done, total=total, description=description)

    def _finish(self) -> None:
        if self.current is None:
            return
        seconds = time.monotonic() - self._started
        self.times[self.current] = {"seconds": seconds, "peak_rss_mib": max(self._peak, _rss()) / 2**20}
        log.info("stage %s done in %.1f s", self.current, seconds)
        if self._progress is not None and self._task is not None:
            total = self._progress.tasks[-1].total or 1
            self._progress.update(self._task, total=total, completed=total)
        elif self.console is not None:
            self.console.print(f"{self.current}: done in {seconds:.1f} s")
        self.current = None

    def _sample(self) -> None:
        while not self._stop.wait(0.2):
            self._peak = max(self._peak, _rss())
            expected = self.expected.get(self.current or "")
            if self._progress is not None and self._task is not None and expected and not self._stepped:
                elapsed = time.monotonic() - self._started
                self._progress.update(self._task, completed=min(elapsed, 0.99 * expected))


def _rss() -> int:
    """Resident memory of this process in bytes."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _kill_hook(stage: str) -> None:
    spec = os.environ.get(KILL_ENV, "")
    name, _, delay = spec.partition("+")
    if name != stage:
        return
    kill = lambda: os.kill(os.getpid(), signal.SIGKILL)  # noqa: E731
    if delay:
        threading.Timer(float(delay), kill).start()
    else:
        kill()


# ---- the run ----
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
    procs = processes()
    if not procs.main:
        return _follow(config, procs)
    try:
        return _main(config, dry_run, scheduled, console, procs)
    finally:
        procs.send(None)  # the others wait for the run; if it never reached them, they stop


def _main(config: Config, dry_run: bool, scheduled: bool, console, procs: Processes) -> RunResult:
    run_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
    with run_lock(config):
        handler = _log_to_file(config, procs)
        try:
            return _locked(config, run_id, dry_run, scheduled, console, procs)
        except Exception as exc:
            if not dry_run:
                shutil.rmtree(config.models_dir / STAGING / run_id, ignore_errors=True)
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
        reason = busy_reason(cfg.max_load, cfg.busy, cfg.busy_wait_minutes)
        if reason:
            log.info("run %s skipped: %s", run_id, reason)
            runs.log_event(config, {"run": run_id, "event": "end", "outcome": "skipped", "reasons": [reason]})
            return RunResult(run_id, "skipped", reasons=[reason])
    if dry_run:
        return _run(config, run_id, dry_run, console, procs)
    _clear_staging(config)
    runs.log_event(config, {"run": run_id, "event": "start"})
    result = _run(config, run_id, dry_run, console, procs)
    end = {"outcome": result.outcome, "version": result.version, "reasons": result.reasons}
    runs.log_event(config, {"run": run_id, "event": "end", **end, "stages": result.plan.get("stages", {})})
    log.info("run %s: %s %s", run_id, result.outcome, "; ".join(result.reasons))
    return result


def _log_to_file(config: Config, procs: Processes | None = None) -> logging.Handler:
    config.logs_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(config.logs_dir / "train.log", encoding="utf-8")
    who = f"[process {procs.rank}/{procs.count}] " if procs and procs.count > 1 else ""
    handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s {who}%(message)s"))
    root = logging.getLogger("nightjar")
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    return handler


def _quiet_libraries(threads: int, processes: int = 1) -> None:
    """No network, no progress bars or advice from the libraries; the thread count we were given (shared
    out among the processes that train together on one machine)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import warnings

    import datasets
    import torch
    import transformers

    from assistant.llamacpp import default_threads

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(transformers|trl|peft)\.")
    torch.set_num_threads(max(1, (threads or default_threads()) // processes))


def _run(config: Config, run_id: str, dry_run: bool, console, procs: Processes | None = None) -> RunResult:
    from trainer.quantize import base_qtype

    if config.model.path:
        raise NightjarError(
            "model.path is set, so Nightjar serves that file and not its own model versions; unset it to "
            "train (the base is then the default model)"
        )
    cfg = config.train
    procs = procs or Processes()
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    last = runs.last_run(config) or {}
    with Stages(console, expected={k: v["seconds"] for k, v in (last.get("stages") or {}).items()}) as stages:
        # -- read --
        stages.start("read")
        batch = data.read(config, seed=cfg.seed)
        objectives = data.choose_objectives(batch, cfg.objectives())
        kinds = data.consumed_kinds(objectives)
        n_new = batch.n_new(kinds) if objectives else 0
        base_gguf = registry.base_model_path(config)
        parent = registry.current_version(config)
        plan = {
            "objectives": objectives,
            "rows": batch.summary(),
            "new_rows": n_new,
            "base": str(base_gguf),
            "parent": parent,
            "quant_type": cfg.quant_type or base_qtype(base_gguf),
        }
        if n_new < cfg.min_new_rows:
            why = (
                f"{n_new} new feedback rows{' for ' + '+'.join(objectives) if objectives else ''}, "
                f"fewer than train.min_new_rows ({cfg.min_new_rows})"
            )
            return RunResult(run_id, "nothing to do", reasons=[why], plan=plan)
        if dry_run:
            plan["fitting"] = _dry_fit(base_gguf, batch, kinds, cfg.max_length)
            return RunResult(run_id, "dry run", plan=plan)
        _check_disk(config, base_gguf)
        _quiet_libraries(cfg.threads, procs.count)
        staging = config.models_dir / STAGING / run_id
        staging.mkdir(parents=True)

        # -- master --
        stages.start("master")
        from trainer.master import ensure_master
        from trainer.objectives import device_plan, load_float, tokenizer

        master = ensure_master(config, base_gguf)
        _check_base(config, parent, master)
        chain = adapters_of(config, parent)
        device = device_plan(processes=procs.count)
        tok = tokenizer(master)
        procs.send(
            {"run_id": run_id, "batch": batch, "objectives": objectives, "master": master, "chain": chain}
        )

        # -- train --
        stages.start("train")
        notes: list[str] = []
        training, raft_stats, new_adapters = _train_all(
            objectives, config, batch, master, chain, device, tok, staging, stages, notes, procs
        )
        if procs.count > 1:  # the others are done: the rest of the run has this process's threads to itself
            _quiet_libraries(cfg.threads)

        # -- merge --
        stages.start("merge")
        merged = load_float(master, chain + new_adapters).state_dict()

        # -- export --
        stages.start("export")
        from trainer.export import export_gguf

        float_gguf = staging / f"model-{cfg.export_type.upper()}.gguf"
        export_gguf(merged, base_gguf, float_gguf, cfg.export_type.upper())
        del merged

        # -- quantize --
        stages.start("quantize")
        candidate = staging / registry.MODEL_FILE
        plan["quant_type"], plan["update_kept"] = _quantize(
            cfg, base_gguf, float_gguf, candidate, base_qtype(base_gguf), notes
        )

        # -- eval --
        stages.start("eval")
        from trainer import evaluate

        _, served = registry.served_model(config)
        cache, holdout, n_ctx = config.models_dir / EVAL_CACHE, batch.holdout, cfg.eval_n_ctx
        on_served = lambda d, t: stages.update(d, 2 * t, "served model")  # noqa: E731
        on_candidate = lambda d, t: stages.update(t + d, 2 * t, "candidate")  # noqa: E731
        before = evaluate.score_cached(cache, served, holdout, n_ctx, on_served, cfg.threads)
        after = evaluate.score_cached(cache, candidate, holdout, n_ctx, on_candidate, cfg.threads)
        verdict = evaluate.decide(before, after, kinds, cfg.canary_tolerance)

        # -- publish --
        stages.start("publish")
        outcome = "published" if verdict.accepted else "rejected"
        rows_used = {k: [r["id"] for r in batch.train_rows(k)] for k in kinds}
        record = {
            "run_id": run_id,
            "started": started,
            "outcome": outcome,
            "reasons": verdict.reasons,
            "device": device.description,
            "processes": procs.count,
            **plan,
            "before": before.to_dict(),
            "after": after.to_dict(),
            "checks": [asdict(c) for c in verdict.checks],
            "training": training,
            "raft": raft_stats,
            "notes": notes,
            "train_config": asdict(cfg),
            "stages": dict(stages.times),
        }
        version = None
        if verdict.accepted:
            _keep_lineage(chain, staging, parent)
            with (staging / "rows.jsonl").open("w", encoding="utf-8") as fh:
                for kind in kinds:
                    fh.writelines(
                        json.dumps({"kind": kind, **r}, ensure_ascii=False) + "\n"
                        for r in batch.train_rows(kind)
                    )
            (staging / "train_config.json").write_text(json.dumps(asdict(cfg), indent=2), encoding="utf-8")
            _keep_only_published(staging)
            report.write(staging, record)
            meta = {
                "objective": "+".join(objectives),
                "data_size": sum(len(v) for v in rows_used.values()),
                "metrics": _headline(after),
                "run_id": run_id,
                "base": str(base_gguf),
                "base_sha256": json.loads((master / "master.json").read_text(encoding="utf-8"))[
                    "source_sha256"
                ],
                "quant_type": plan["quant_type"],
                "update_kept": plan["update_kept"],
            }
            version = registry.publish(config, staging, meta)
            record["version"] = version
        _consume(config, run_id, rows_used)
        shutil.rmtree(staging, ignore_errors=True)
    record["stages"] = dict(stages.times)
    out = runs.report_dir(config, run_id)
    report.write(out, record)
    if version:  # the version's copy, now with its name and the publish stage's time
        report.write(config.models_dir / version, record)
    plan["stages"] = record["stages"]
    return RunResult(run_id, outcome, version, verdict.reasons, out, plan)


def _quantize(cfg, base_gguf: Path, float_gguf: Path, candidate: Path, base_type: str, notes: list[str]):
    """Quantize the float GGUF to the served type; returns (type, share of the update it kept).

    By default the first type of `quantize.ladder` that keeps at least `MIN_KEPT` of the update serves: the
    base's own type usually rounds a small update away (see `quantize.update_kept`)."""
    from trainer.quantize import ladder, quantize, update_kept

    kept, types, measure = 1.0, ladder(base_type, cfg.quant_type), None
    for n, qtype in enumerate(types):
        if qtype == cfg.export_type.upper():  # served unquantized: the float file itself, whole
            os.replace(float_gguf, candidate)
            kept = 1.0
        else:
            quantize(float_gguf, candidate, qtype, threads=cfg.threads)
            measure = measure or update_kept(base_gguf, float_gguf)
            kept = measure(candidate)
        if kept >= MIN_KEPT or n == len(types) - 1:
            break
        notes.append(f"{qtype} kept {kept:.0%} of the update; quantizing to {types[n + 1]} instead")
    if kept < MIN_KEPT:
        notes.append(f"{qtype} keeps only {kept:.0%} of the update (train.quant_type)")
    float_gguf.unlink(missing_ok=True)
    return qtype, round(kept, 4)


def _follow(config: Config, procs: Processes) -> RunResult:
    """A process other than the main one: wait for the main process's run, train its adapters with it, and
    return quietly (the main process logs, merges, evaluates, publishes and reports)."""
    go = procs.share(None)
    if go is None:
        return RunResult(
            "", "nothing for this process", reasons=[f"process {procs.rank}: the main one stopped"]
        )
    from trainer.objectives import device_plan, tokenizer

    cfg, run_id = config.train, go["run_id"]
    handler = _log_to_file(config, procs)
    try:
        _quiet_libraries(cfg.threads, procs.count)
        master, staging = go["master"], config.models_dir / STAGING / run_id
        device, tok = device_plan(processes=procs.count), tokenizer(master)
        with Stages() as stages:
            stages.start("train")
            _train_all(
                go["objectives"],
                config,
                go["batch"],
                master,
                go["chain"],
                device,
                tok,
                staging,
                stages,
                [],
                procs,
            )
    finally:
        logging.getLogger("nightjar").removeHandler(handler)
        handler.close()
    why = f"process {procs.rank} of {procs.count} trained run {run_id}; the main process publishes it"
    return RunResult(run_id, "trained", reasons=[why])


def _train_all(objectives, config, batch, master, chain, device, tok, staging, stages, notes, procs):
    """Train each objective's adapter in turn, each on top of the ones before; (histories, RAFT stats,
    adapters). With several processes, every process calls this and they train together."""
    training: dict[str, list[dict[str, Any]]] = {}
    raft_stats: dict[str, Any] = {}
    new_adapters: list[Path] = []
    for n, objective in enumerate(objectives):
        out = staging / ADAPTER / f"{n}-{objective}"
        history, stats = _train_one(
            objective,
            config,
            batch,
            master,
            chain + new_adapters,
            device,
            tok,
            staging,
            out,
            stages,
            notes,
            procs,
        )
        training[objective] = history
        raft_stats.update(stats)
        new_adapters.append(out)
    return training, raft_stats, new_adapters


def _train_one(
    objective: str,
    config: Config,
    batch: data.Batch,
    master: Path,
    chain: list[Path],
    device,
    tok,
    staging: Path,
    out: Path,
    stages: Stages,
    notes: list[str],
    procs: Processes | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Train one objective's adapter into `out`; returns its log history and (for RAFT) ranking stats."""
    from trainer.objectives import dpo, kto, load_for_training, raft

    steps = lambda d, t: stages.update(d, t, f"{objective} steps")  # noqa: E731
    procs = procs or Processes()
    stats: dict[str, Any] = {}
    if objective == "raft":
        rows, stats = _raft_rows(config, batch, master, chain, device, tok, staging, stages, notes, procs)
        if not rows:
            raise NightjarError("RAFT kept no answer: every sampled answer failed the rule checks")
    else:
        rows = batch.train_rows(objective)
    model = load_for_training(master, chain, device, staging)
    module = {"dpo": dpo, "kto": kto, "raft": raft}[objective]
    history = module.train(model, tok, rows, config.train, device, out, steps)
    if procs.count > 1:
        done = max((h.get("step", 0) for h in history), default=0)
        log.info("process %d of %d: %s trained, %d steps", procs.rank, procs.count, objective, done)
    return history, stats


def _raft_rows(config, batch, master, chain, device, tok, staging, stages, notes, procs=None):
    """Sample K answers per prompt with the served model, score them, keep the best. With several processes
    the main one samples and scores, all train the reward model together, and all get the kept rows."""
    import gc

    from trainer.objectives import load_float, raft, reward

    cfg = config.train
    procs = procs or Processes()
    prompts: dict[str, tuple[list, list[str]]] = {}
    for kind in ("sft", "dpo", "kto"):
        for row in batch.train_rows(kind):
            key = json.dumps(row["prompt"], sort_keys=True)
            own = [row["completion"][-1]["content"]] if kind == "sft" else []
            entry = prompts.setdefault(key, (row["prompt"], []))
            entry[1].extend(own)
    chosen = list(prompts.values())[: cfg.raft_prompts]
    sampled = None
    if procs.main:
        _, served = registry.served_model(config)
        on_sample = lambda d, t: stages.update(d, t, "sampling")  # noqa: E731
        sampled = raft.sample(served, [p for p, _ in chosen], cfg, on_sample)
    sampled = procs.share(sampled)
    answers = [own + found for (_, own), found in zip(chosen, sampled, strict=True)]

    scorers: dict[str, Any] = {}
    rewards = cfg.rewards()
    if "model" in rewards:
        pairs = batch.train_rows("dpo")
        if len(pairs) >= 2:
            out = staging / "reward-model"
            reward.train(
                master, tok, pairs, cfg, device, out, lambda d, t: stages.update(d, t, "reward model steps")
            )
            if procs.main:
                scorers["model"] = reward.ModelReward(master, out, tok, cfg.max_length)
        else:
            notes.append("reward model skipped: fewer than 2 preference pairs to learn from")
    if not procs.main:  # the main process scores the answers and shares the rows it keeps
        rows, stats = procs.share(None)
        return rows, stats
    if "dpo" in rewards:
        if chain and chain[-1].name.endswith("-dpo"):
            parent = load_float(master, chain[:-1])
            scorers["dpo"] = reward.DPOReward(parent, chain[-1], tok, cfg.beta, cfg.max_length)
        else:
            notes.append("implicit DPO reward skipped: the served version's last adapter is not a DPO one")
    stages.update(0, 1, "scoring")
    rows, stats = raft.best([p for p, _ in chosen], answers, scorers, use_rules="rules" in rewards)
    stats["rewards"] = sorted(scorers) + (["rules"] if "rules" in rewards else [])
    del scorers
    gc.collect()
    return procs.share((rows, stats))


def _keep_lineage(chain: list[Path], staging: Path, parent: str) -> None:
    """Copy the parent's adapters into the new version, so that it stands alone (gc may delete the parent)."""
    lineage = staging / LINEAGE
    lineage.mkdir()
    for n, adapter in enumerate(chain):
        name = adapter.name if adapter.parent.name == LINEAGE else f"{n:03d}-{parent}-{adapter.name}"
        shutil.copytree(adapter, lineage / name, ignore=shutil.ignore_patterns("trainer", "README.md"))


def _dry_fit(base_gguf: Path, batch: data.Batch, kinds: list[str], max_length: int) -> dict[str, str]:
    """What fitting would do to each kind's rows (`RowFit.summary`), with the base GGUF's own tokenizer."""
    from transformers import AutoTokenizer

    from trainer.objectives import fit_rows

    tok = AutoTokenizer.from_pretrained(str(base_gguf.parent), gguf_file=base_gguf.name)
    return {kind: fit_rows(batch.train_rows(kind), tok, max_length)[1].summary() for kind in kinds}


def _consume(config: Config, run_id: str, rows_used: dict[str, list[str]]) -> None:
    from assistant.feedback import ReplayBuffer

    with ReplayBuffer(config) as buffer:
        for kind, ids in rows_used.items():
            buffer.mark_consumed(run_id, kind, ids)


def _headline(scores) -> dict[str, Any]:
    """The few figures `nightjar models` shows."""
    keys = ("dpo_accuracy", "dpo_margin", "kto_desirability", "sft_logprob", "perplexity")
    return {k: round(v, 4) for k in keys if (v := getattr(scores, k)) is not None}
