"""Kill-safety and the machine: the training lock, the load check, the disk check, the staging area.

All of a run's work happens in `<models>/.staging/<run>`, which only `registry.publish` moves in. A lock file
keeps runs apart (the kernel drops it when a run dies); a new run deletes what dead runs left. Rows are marked
consumed only after a publish or a recorded rejection, so a killed run leaves the buffer as it was.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from assistant import registry
from assistant.config import Config
from assistant.errors import NightjarError
from trainer.lineage import ADAPTER, LINEAGE

STAGING = ".staging"
LOCK_FILE = ".train.lock"
PUBLISHED = {registry.MODEL_FILE, ADAPTER, LINEAGE, "rows.jsonl", "train_config.json"}  # + the report
log = logging.getLogger("nightjar.train")


def run_folder(config: Config, run_id: str) -> Path:
    """The staging folder of run `run_id`."""
    return config.models_dir / STAGING / run_id


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


def clear_staging(config: Config) -> None:
    """Delete what killed runs left (we hold the lock: no live run owns anything here), and finish a run
    killed between publishing its version and marking its rows consumed."""
    shutil.rmtree(config.models_dir / STAGING, ignore_errors=True)
    consume_published(config)


def keep_only_published(staging: Path) -> None:
    """Leave in a staging folder only what a version holds: the float export, the reward model, the GPU
    path's float checkpoint and TRL's per-trainer output are scratch of the run, not part of the version."""
    for path in staging.iterdir():
        if path.name not in PUBLISHED:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    for leftover in [p for p in staging.rglob("trainer") if p.is_dir()]:
        shutil.rmtree(leftover, ignore_errors=True)


def consume_published(config: Config) -> None:
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


def check_disk(config: Config, base_gguf: Path) -> None:
    """Refuse to start without room for the master, a float GGUF and the quantized one."""
    need = 3 * 8 * base_gguf.stat().st_size  # a float32 copy is ~8x a 4-bit file
    free = shutil.disk_usage(config.models_dir).free
    if free < need:
        raise NightjarError(
            f"not enough free disk space in {config.models_dir}: a run needs about {need / 2**30:.1f} GiB, "
            f"{free / 2**30:.1f} GiB free"
        )
