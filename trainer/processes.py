"""The processes running a training command, and what each sets up first: its log file, quiet libraries.

One process (plain `nightjar train`) or several (`accelerate launch --num_processes N -m assistant train`,
WORLD_SIZE > 1). The main process sends the others the run (`Processes.send`); all train each adapter
together, the main one alone goes on to merge, export, quantize, evaluate and publish.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

from assistant.config import Config


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


def log_to_file(config: Config, procs: Processes | None = None) -> logging.Handler:
    """Log the "nightjar" loggers to the logs folder's train.log (each line naming its process, if several);
    the caller removes and closes the handler."""
    config.logs_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(config.logs_dir / "train.log", encoding="utf-8")
    who = f"[process {procs.rank}/{procs.count}] " if procs and procs.count > 1 else ""
    handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s {who}%(message)s"))
    root = logging.getLogger("nightjar")
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    return handler


def quiet_libraries(threads: int, processes: int = 1) -> None:
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
