"""Replayed everyday answers: what keeps a night's update where the feedback was.

Fine-tuning on a night of corrections teaches their wording (an opening phrase, a citation habit) for every
prompt, not only for questions about the user's documents: measured on 32 grounded corrections, the whole
update answered 2 of the 5 general canary questions where the served model answered 5, and the largest
scale of it that still answered them kept too little of the style to change an answer. So every SFT night
also trains the served model's own answers to everyday questions (`data/general_prompts.txt`, none of them
a canary question): the update learns the user's wording where the user asked, and keeps the model's own
answers elsewhere (self-distillation replay).
"""

from __future__ import annotations

from pathlib import Path

from trainer.data import Row

PROMPTS = Path(__file__).resolve().parent.parent / "data" / "general_prompts.txt"
MAX_TOKENS = 64  # an everyday answer is short; longer ones would only weigh more than the user's rows


def prompts() -> list[str]:
    return [line.strip() for line in PROMPTS.read_text(encoding="utf-8").splitlines() if line.strip()]


def rows(served: Path, count: int, n_ctx: int, threads: int) -> list[Row]:
    """The served model's greedy answers to the first `count` everyday questions, as SFT rows."""
    from assistant.engine import GenParams, LlamaCppEngine, chat
    from trainer.evaluate import SYSTEM

    engine = LlamaCppEngine(served, n_ctx=n_ctx, n_threads=threads, name="general replay")
    out: list[Row] = []
    try:
        for n, question in enumerate(prompts()[:count]):
            messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
            answer = chat(engine, messages, GenParams(temperature=0.0, max_tokens=MAX_TOKENS)).result().text
            if answer.strip():
                out.append(
                    {
                        "id": f"general-{n}",
                        "prompt": messages,
                        "completion": [{"role": "assistant", "content": answer.strip()}],
                    }
                )
    finally:
        engine.llm.close()
    return out
