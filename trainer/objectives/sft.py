"""SFT: fine-tune on (prompt, completion) rows as given, the loss on the answer only (TRL's SFTTrainer).

`auto` trains the user's corrections and up-voted answers this way; RAFT trains the answers it kept.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from assistant.config import TrainConfig
from trainer.objectives import Plan, Progress, fit, lora_config, trl_args


def train(
    model,
    tokenizer,
    rows: list[dict[str, Any]],
    cfg: TrainConfig,
    plan: Plan,
    out: Path,
    progress: Progress | None = None,
) -> list[dict[str, Any]]:
    """Fine-tune a LoRA on the (prompt, completion) rows; adapter to `out`, TRL's log history back."""
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(completion_only_loss=True, **trl_args(cfg, plan, out))
    columns = ("prompt", "completion")
    return fit(SFTTrainer, model, tokenizer, rows, columns, args, lora_config(cfg, model), out, progress)
