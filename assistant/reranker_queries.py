"""The examples the reranker learns from (retrieval/reranker_training.py), made from what the user has:

- generated: the served model reads a sampled passage of the user's documents and writes one question it
  answers (greedy, short); a reply that is not a question of a few words is left out, with the reason;
- feedback: the user's own questions, paired with the sources their up-voted or corrected answers cited
  (a correction that cites sources names them; otherwise the rated answer's citations), with the sources
  they flagged as irrelevant or wrong on that question as negatives.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable

from assistant.engine import Engine, GenParams, chat
from assistant.feedback.store import FeedbackStore, numbered_sources, source_id
from assistant.grounding import cited_numbers

# after the passage, in the user's turn: small models follow an instruction that comes last (a system
# message asking the same made SmolLM2-135M comment on the passage instead, 47 times in 48)
INSTRUCTION = "Write a question that this text answers."
PASSAGE_CHARS = 1500  # about the 256-token chunk; the question needs the passage's subject, not every line
MIN_WORDS = 3


def clean_question(reply: str) -> str | None:
    """The question in the model's reply: its first line, without a label or quotes; None when it is not
    a question of at least MIN_WORDS words."""
    line = next((ln.strip() for ln in reply.strip().splitlines() if ln.strip()), "")
    line = re.sub(r"^(question|q)\s*[:.\-]\s*", "", line, flags=re.IGNORECASE).strip().strip("\"'“”")
    if "?" in line:
        line = line[: line.index("?") + 1]
    if not line.endswith("?") or len(line.split()) < MIN_WORDS:
        return None
    return line


def generated_examples(
    engine: Engine, index, n: int, seed: int = 0, progress: Callable[[str, int, int], None] | None = None
):
    """(examples, left_out): questions the model writes for up to `n` sampled passages of `index`."""
    from retrieval.reranker_training import Example, sample_chunks

    ids = sample_chunks(index, n, seed)
    rows = index.catalog.chunks(ids)
    examples, left_out = [], Counter()
    params = GenParams(max_tokens=48, temperature=0.0, seed=seed)
    for done, cid in enumerate(ids, 1):
        row = rows.get(cid)
        if row is None:
            left_out["its passage was removed while the questions were written"] += 1
            continue
        messages = [{"role": "user", "content": f"{row.indexed_text[:PASSAGE_CHARS]}\n\n{INSTRUCTION}"}]
        question = clean_question(chat(engine, messages, params).result().text)
        if question is None:
            left_out["the model's reply was not a question"] += 1
        else:
            examples.append(Example(question, cid, "generated"))
        if progress:
            progress("writing questions", done, len(ids))
    return examples, dict(left_out)


def feedback_examples(store: FeedbackStore):
    """(examples, left_out): the user's questions with the sources their approved answers cited."""
    from retrieval.reranker_training import Example

    examples, left_out = [], Counter()
    for i in store.judged():
        numbered = numbered_sources(i.sources)
        chunk_of = {n: s.get("id") for n, s in numbered.items() if isinstance(s.get("id"), int)}
        flags = {e.target for e in i.feedback if e.kind == "flag"}
        flagged = tuple(c for n, c in chunk_of.items() if n in flags or source_id(numbered[n], n) in flags)
        text = i.correction or (i.response if i.rating == "up" else None)
        if text is None:
            continue
        cited = cited_numbers(text) or (cited_numbers(i.response) if i.correction else set())
        positives = [chunk_of[str(n)] for n in sorted(cited) if str(n) in chunk_of]
        positives = [p for p in positives if p not in flagged]
        if not positives:
            left_out["an approved answer cited no source"] += 1
        examples += [Example(i.question, p, "feedback", flagged) for p in positives]
    return examples, dict(left_out)
