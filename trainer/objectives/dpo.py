"""DPO: learn from pairs (the user preferred `chosen` over `rejected` for the same prompt)."""

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
    """Train a LoRA with TRL's DPOTrainer on `rows` (prompt, chosen, rejected); the adapter goes to `out`.

    With `sft_weight` > 0 the loss adds the negative log-likelihood of the chosen answers (as in RPO, Pang et
    al. 2024): plain DPO can meet its objective by making the rejected answers unlikely while the chosen
    ones stay unlikely too, and then nothing changes in what the model says.
    """
    from trl import DPOConfig, DPOTrainer

    # the likelihood term makes the preferred answers likely, not only likelier than the rejected ones
    losses = {"sigmoid": 1.0, "sft": cfg.sft_weight} if cfg.sft_weight > 0 else {"sigmoid": 1.0}
    args = DPOConfig(
        beta=cfg.beta, loss_type=list(losses), loss_weights=list(losses.values()), **trl_args(cfg, plan, out)
    )
    columns = ("prompt", "chosen", "rejected")
    return fit(DPOTrainer, model, tokenizer, rows, columns, args, lora_config(cfg, model), out, progress)
