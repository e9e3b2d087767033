"""How wrong the served model is on a training row: the informativeness `ReplayBuffer.sample` weighs by.

The model's mean log-probability per token of a completion after the row's prompt (both rendered with the
model's own chat template, exactly as served) says how likely the model is to say it. A row teaches most
where the model disagrees with the feedback:
- dpo: sigmoid(SHARPNESS x (logp(rejected) - logp(chosen))): near 1 when the model prefers the rejected reply;
- kto: 1 - p(completion) if it is desirable, else p(completion) (p: the per-token geometric mean);
- sft: 1 - p(completion).

    scorer = ModelScorer(model_path)
    rows = buffer.sample("dpo", informativeness=scorer)
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from assistant import llamacpp
from assistant.engine import LlamaCppEngine, Message
from assistant.grounding import fit_grounded

SHARPNESS = 4.0  # a 1 nat/token preference for the rejected reply scores 0.98, the reverse 0.02
NEUTRAL = 0.5  # for rows longer than the context


class ModelScorer:
    """Scores rows with a GGUF through llama.cpp, in a context that keeps every position's logits."""

    def __init__(self, model_path: Path | str, n_ctx: int = 4096, n_threads: int = 0) -> None:
        self.engine = LlamaCppEngine(model_path, n_ctx=n_ctx, n_threads=n_threads)  # template and tokens
        self.llm = llamacpp.load(
            self.engine.path, n_ctx=n_ctx, n_threads=self.engine.llm.n_threads, logits_all=True
        )
        self._seen: dict[tuple[str, str], float | None] = {}

    def mean_logprob(self, prompt: list[Message], completion: list[Message]) -> float | None:
        """Mean log-probability per token of `completion` (end of turn included) after `prompt`, the prompt
        shortened as serving would where the two do not fit the context; None when even that does not."""
        return self._score(self._fitted(prompt, [completion]), completion)

    def pair_logprobs(
        self, prompt: list[Message], chosen: list[Message], rejected: list[Message]
    ) -> tuple[float | None, float | None]:
        """`mean_logprob` of a pair's two replies after one prompt, fitted so that the longer reply fits:
        both are judged on the same sources, and that prompt is evaluated once (its logits serve both)."""
        fitted = self._fitted(prompt, [chosen, rejected])
        return self._score(fitted, chosen), self._score(fitted, rejected)

    def _score(self, prompt: list[Message], completion: list[Message]) -> float | None:
        prompt_text = self.engine.render(prompt)
        full_text = self.engine.render(prompt + completion, add_generation_prompt=False)
        if (prompt_text, full_text) not in self._seen:  # the same reply is often in several rows
            self._seen[prompt_text, full_text] = self._mean_logprob(prompt_text, full_text)
        return self._seen[prompt_text, full_text]

    def _fitted(self, prompt: list[Message], completions: list[list[Message]]) -> list[Message]:
        """`prompt`, with its lowest-ranked sources that no completion cites (then old turns) left out where
        it does not fit the context beside the longest of `completions`."""
        engine, n_ctx = self.engine, self.llm.n_ctx()
        prompt_tokens = engine.count_tokens(engine.render(prompt))
        full = max(
            engine.count_tokens(engine.render(prompt + c, add_generation_prompt=False)) for c in completions
        )
        if full <= n_ctx:
            return prompt
        cited = {int(n) for c in completions for m in c for n in re.findall(r"\[(\d+)\]", m["content"])}
        count = lambda m: engine.count_tokens(engine.render(m))  # noqa: E731
        return fit_grounded(prompt, n_ctx - (full - prompt_tokens) - 8, count, cited).messages

    def _mean_logprob(self, prompt_text: str, full_text: str) -> float | None:
        prompt_ids, full_ids = self.engine.tokenize(prompt_text), self.engine.tokenize(full_text)
        start = next(
            (n for n, (a, b) in enumerate(zip(prompt_ids, full_ids, strict=False)) if a != b),
            min(len(prompt_ids), len(full_ids)),
        )
        if len(full_ids) > self.llm.n_ctx() or start == len(full_ids) or start == 0:
            return None
        self._eval(full_ids)
        logits = np.asarray(self.llm.scores[start - 1 : len(full_ids) - 1], dtype=np.float64)
        top = logits.max(axis=1, keepdims=True)
        logprobs = logits - (top + np.log(np.exp(logits - top).sum(axis=1, keepdims=True)))
        return float(logprobs[np.arange(len(logprobs)), full_ids[start:]].mean())

    def _eval(self, ids: list[int]) -> None:
        """Evaluate `ids`, keeping what the context already holds of them: the two replies of a pair share
        their prompt, which is then evaluated once (its logits stay in `scores`)."""
        held = self.llm.input_ids[: self.llm.n_tokens]
        same = next((n for n, (a, b) in enumerate(zip(held, ids, strict=False)) if a != b), len(held))
        self.llm.n_tokens = min(same, len(ids) - 1)  # eval() drops the cache past n_tokens
        self.llm.eval(ids[self.llm.n_tokens :])

    def __call__(self, row: dict[str, Any]) -> float:
        if "chosen" in row:
            chosen, rejected = self.pair_logprobs(row["prompt"], row["chosen"], row["rejected"])
            if chosen is None or rejected is None:
                return NEUTRAL
            return 1.0 / (1.0 + math.exp(-SHARPNESS * (rejected - chosen)))
        logprob = self.mean_logprob(row["prompt"], row["completion"])
        if logprob is None:
            return NEUTRAL
        likely = math.exp(logprob)
        return likely if row.get("label") is False else 1.0 - likely
