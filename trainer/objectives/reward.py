"""Rewards for RAFT: a reward model trained on the user's pairs, a DPO adapter's implicit reward, rules.

- model: TRL's RewardTrainer puts a LoRA and a scalar head on the base master and learns to score the user's
  chosen answers above the rejected ones (Bradley-Terry).
- dpo: a DPO-trained adapter is itself a reward model: beta * (log p_with(y|x) - log p_without(y|x)).
- rules: an answer must not be empty and may cite only sources [n] that its prompt lists.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from assistant.config import TrainConfig
from trainer.objectives import Plan, Progress, fit, lora_config, trl_args

Messages = list[dict[str, str]]
_CITED = re.compile(r"\[(\d+)\]")
_LISTED = re.compile(r"^\s*\[(\d+)\]", re.MULTILINE)


def train(
    master: Path,
    tokenizer,
    rows: list[dict[str, Any]],
    cfg: TrainConfig,
    plan: Plan,
    out: Path,
    progress: Progress | None = None,
) -> list[dict[str, Any]]:
    """Train a reward model (LoRA + scalar head on `master`) on pairs; the adapter and head go to `out`."""
    from trl import RewardConfig, RewardTrainer

    args = RewardConfig(**trl_args(cfg, plan, out))
    model = _scorer_model(master, plan.cuda, tokenizer.pad_token_id)
    columns, lora = ("prompt", "chosen", "rejected"), lora_config(cfg, model, "SEQ_CLS")
    return fit(RewardTrainer, model, tokenizer, rows, columns, args, lora, out, progress)


def _scorer_model(master: Path, cuda: bool, pad_token_id: int):
    import torch
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(
        master,
        num_labels=1,
        dtype=torch.bfloat16 if cuda else torch.float32,
        device_map="cuda" if cuda else None,
    )
    model.config.pad_token_id = pad_token_id
    return model


def _sequence(tokenizer, prompt: Messages, completion: Messages, max_length: int):
    """Token ids of prompt + completion through the chat template, and where the completion starts."""
    start = len(
        tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=True)[
            "input_ids"
        ]
    )
    ids = tokenizer.apply_chat_template(prompt + completion, tokenize=True, return_dict=True)["input_ids"]
    return ids[-max_length:], max(1, start - max(0, len(ids) - max_length))


class ModelReward:
    """Scores (prompt, answer) with a reward model trained by `train`."""

    def __init__(self, master: Path, adapter: Path, tokenizer, max_length: int, cuda: bool = False) -> None:
        from peft import PeftModel

        self.tokenizer, self.max_length = tokenizer, max_length
        base = _scorer_model(master, cuda, tokenizer.pad_token_id)
        self.model = PeftModel.from_pretrained(base, adapter).eval()

    def __call__(self, prompt: Messages, completion: Messages) -> float:
        import torch

        ids, _ = _sequence(self.tokenizer, prompt, completion, self.max_length)
        with torch.no_grad():
            out = self.model(input_ids=torch.tensor([ids], device=self.model.device))
        return float(out.logits[0, 0])


class DPOReward:
    """The implicit reward of a DPO adapter: beta * (log p(y|x) with the adapter - without it)."""

    def __init__(self, parent, adapter: Path, tokenizer, beta: float, max_length: int) -> None:
        from peft import PeftModel

        self.tokenizer, self.beta, self.max_length = tokenizer, beta, max_length
        self.model = PeftModel.from_pretrained(parent, adapter).eval()

    def _logprob(self, ids: list[int], start: int) -> float:
        import torch

        with torch.no_grad():
            logits = self.model(input_ids=torch.tensor([ids], device=self.model.device)).logits[0].float()
        logprobs = torch.log_softmax(logits[start - 1 : -1], dim=-1)
        return float(logprobs.gather(1, torch.tensor(ids[start:], device=logits.device)[:, None]).sum())

    def __call__(self, prompt: Messages, completion: Messages) -> float:
        ids, start = _sequence(self.tokenizer, prompt, completion, self.max_length)
        with_adapter = self._logprob(ids, start)
        with self.model.disable_adapter():
            without = self._logprob(ids, start)
        return self.beta * (with_adapter - without)


def rules(prompt: Messages, completion: Messages) -> bool:
    """True when the answer is not empty and every source it cites ([n]) is one its prompt lists."""
    answer = completion[-1]["content"]
    if not answer.strip():
        return False
    listed = {n for m in prompt for n in _LISTED.findall(m["content"])}
    return set(_CITED.findall(answer)) <= listed
