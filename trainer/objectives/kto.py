"""KTO: learn from unpaired thumbs (this answer to this prompt was good, or bad)."""

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
    """Train a LoRA with TRL's KTOTrainer on `rows` (prompt, completion, label); the adapter goes to `out`.

    The desirable and undesirable rows are weighted so that each side counts as much as the other, however
    unbalanced the thumbs are (KTO paper, section 4.2).
    """
    from trl import KTOConfig, KTOTrainer

    n_up = sum(1 for r in rows if r["label"])
    n_down = len(rows) - n_up
    args = KTOConfig(
        beta=cfg.beta,
        desirable_weight=1.0,
        undesirable_weight=(n_up / n_down) if n_up and n_down else 1.0,
        **trl_args(cfg, plan, out, least=2),
    )
    columns = ("prompt", "completion", "label")
    return fit(KTOTrainer, model, tokenizer, rows, columns, args, lora_config(cfg, model), out, progress)
