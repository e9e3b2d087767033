"""RAFT (reward-ranked fine-tuning): sample K answers per prompt with the current model, keep the best by
reward, and fine-tune on the kept answers (`sft.train`).

The answers are sampled from the served GGUF through llama.cpp, so what is ranked is what the user would get.
A user's own answer to a prompt (a correction or an up-voted answer) joins its candidates.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from assistant.config import TrainConfig
from trainer.objectives import Progress
from trainer.objectives.reward import Messages, rules

Scorer = Callable[[Messages, Messages], float]


def sample(
    model_path: Path, prompts: list[Messages], cfg: TrainConfig, progress: Progress | None = None
) -> list[list[str]]:
    """`cfg.raft_k` answers to each prompt, sampled at `cfg.raft_temperature` with distinct seeds (a prompt
    longer than `cfg.eval_n_ctx` leaves room for the answer is shortened as serving would)."""
    from assistant.engine import GenParams, LlamaCppEngine, chat
    from assistant.grounding import fit_grounded

    engine = LlamaCppEngine(model_path, n_ctx=cfg.eval_n_ctx, n_threads=cfg.threads, name="raft")
    answers: list[list[str]] = []
    total = len(prompts) * cfg.raft_k
    budget = cfg.eval_n_ctx - cfg.raft_max_new_tokens
    for i, prompt in enumerate(prompts):
        # a long grounded prompt gives up context as serving does: its lowest-ranked sources first
        prompt = fit_grounded(prompt, budget, lambda m: engine.count_tokens(engine.render(m))).messages
        found = []
        for j in range(cfg.raft_k):
            params = GenParams(
                temperature=cfg.raft_temperature, max_tokens=cfg.raft_max_new_tokens, seed=cfg.seed + j
            )
            found.append(chat(engine, prompt, params).result().text.strip())
            if progress:
                progress(i * cfg.raft_k + j + 1, total)
        answers.append(found)
    engine.llm.close()
    return answers


def best(
    prompts: list[Messages], answers: list[list[str]], scorers: dict[str, Scorer], use_rules: bool = True
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """The best answer to each prompt as SFT rows, and statistics of the ranking.

    Each scorer's scores are standardized over all candidates before they are summed, so that a reward
    model's logits and a DPO log-ratio weigh alike. Answers failing the rules are never kept; a prompt
    without an answer that passes them is dropped.
    """
    flat = [(i, a) for i, group in enumerate(answers) for a in group]
    total = [0.0] * len(flat)
    for scorer in scorers.values():
        scores = [scorer(prompts[i], [{"role": "assistant", "content": a}]) for i, a in flat]
        mean, spread = statistics.fmean(scores), statistics.pstdev(scores) or 1.0
        total = [t + (s - mean) / spread for t, s in zip(total, scores, strict=True)]
    ok = [not use_rules or rules(prompts[i], [{"role": "assistant", "content": a}]) for i, a in flat]
    kept: dict[int, tuple[float, str]] = {}
    for (i, answer), score, passes in zip(flat, total, ok, strict=True):
        if passes and (i not in kept or score > kept[i][0]):
            kept[i] = (score, answer)
    rows = [
        {"prompt": prompts[i], "completion": [{"role": "assistant", "content": answer}]}
        for i, (_, answer) in sorted(kept.items())
    ]
    stats = {
        "prompts": len(prompts),
        "candidates": len(flat),
        "failed_rules": len(flat) - sum(ok),
        "kept": len(rows),
        "mean_best_score": statistics.fmean(s for s, _ in kept.values()) if kept else 0.0,
        "mean_score": statistics.fmean(total) if total else 0.0,
    }
    return rows, stats
