"""End-to-end answer accuracy: `ask` over an index of nq-open passages and PubMedQA contexts, against the same
model given the gold passage directly (and the model alone, closed-book).

The index holds all 2600 nq-open gold passages and the contexts of all 1000 PubMedQA questions, as files
indexed by Nightjar's own indexer. Each question goes through `Assistant.answer` (what `nightjar ask` runs:
retrieval, numbered sources, the served GGUF), greedy. The gold-passage run gives the model the question's
own passage as source [1] with the same prompt, so the ratio shows what retrieval (and its prompt) loses.

Accuracy: nq-open, a gold answer string is contained in the answer (case-insensitive); PubMedQA, the first of
"yes", "no", "maybe" in the answer is the gold decision (the question asks for one of them).

    python benchmarks/qa_eval.py [--nq 100] [--pubmed 50] [--max-tokens 48]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import sys
import time
from pathlib import Path

from assistant import config as config_mod
from assistant.engine import chat
from assistant.grounding import grounded_messages
from assistant.service import Assistant
from retrieval.index import Index
from retrieval.indexer import update

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[1] / "shared" / "data"
OUT = HERE / "out" / "qa_eval"
PUBMED_SUFFIX = " Answer yes, no or maybe."


def normalize(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def nq_correct(answer: str, golds: list[str]) -> bool:
    return any(normalize(g) in normalize(answer) for g in golds if normalize(g))


def pubmed_correct(answer: str, gold: str) -> bool:
    found = re.search(r"\b(yes|no|maybe)\b", answer.lower())
    return bool(found) and found.group(1) == gold


def write_docs(folder: Path) -> tuple[list[dict], list[dict]]:
    """The corpus as files; returns the NQ and PubMedQA questions with their gold passages."""
    folder.mkdir(parents=True, exist_ok=True)
    nq = []
    with open(DATA / "nq-open" / "nq-open-oracle.jsonl", encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            row = json.loads(line)
            ctx = row["ctxs"][0]
            nq.append(
                {
                    "question": row["question"],
                    "answers": row["answers"],
                    "title": ctx["title"],
                    "text": ctx["text"],
                    "file": f"nq-{i:05d}.md",
                }
            )
    seen: dict[tuple[str, str], str] = {}
    for q in nq:  # one file per distinct passage
        key = (q["title"], q["text"])
        if key not in seen:
            seen[key] = q["file"]
            _write(folder / q["file"], f"# {q['title']}\n\n{q['text']}\n")
        q["file"] = seen[key]
    items = json.loads((DATA / "pubmedqa" / "ori_pqal.json").read_text())
    test_ids = json.loads((DATA / "pubmedqa" / "test_ground_truth.json").read_text())
    pubmed = []
    for pmid, item in items.items():
        _write(folder / f"pubmed-{pmid}.md", "\n\n".join(item["CONTEXTS"]) + "\n")
        if pmid in test_ids:
            pubmed.append(
                {
                    "question": item["QUESTION"],
                    "gold": test_ids[pmid],
                    "title": "",
                    "text": " ".join(item["CONTEXTS"]),
                    "file": f"pubmed-{pmid}.md",
                }
            )
    return nq, pubmed


def _write(path: Path, text: str) -> None:
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nq", type=int, default=100, help="nq-open questions (the first N)")
    parser.add_argument("--pubmed", type=int, default=50, help="PubMedQA test questions (the first N)")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--fresh", action="store_true", help="rebuild the index")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # each figure as soon as it is measured

    home = OUT / "home"
    if args.fresh:
        shutil.rmtree(OUT, ignore_errors=True)
    nq, pubmed = write_docs(OUT / "docs")
    config = config_mod.load(home, environ={})
    report = update(Index(config.index_dir, config.retrieval), [OUT / "docs"])
    print(f"index: {report.summary()}")
    assistant = Assistant(config, record=False)
    params = assistant.params(max_tokens=args.max_tokens, temperature=0.0)
    engine = assistant.engine
    print(
        f"model {assistant.model_path} ({assistant.model_version}), n_ctx {engine.n_ctx}, greedy, "
        f"max {args.max_tokens} tokens\n"
    )

    def gold_answer(question: str, item: dict) -> str:
        source = {
            "n": 1,
            "id": 0,
            "source": item["file"],
            "location": f"§ {item['title']}" if item["title"] else "whole file",
            "text": item["text"],
            "score": 1.0,
            "scores": {},
        }
        messages = grounded_messages(config.model.system_prompt, [], question, [source])
        return chat(engine, messages, params).result().text

    def closed_book(question: str) -> str:
        return (
            chat(engine, grounded_messages(config.model.system_prompt, [], question, []), params)
            .result()
            .text
        )

    print(
        f"{'set':10}{'n':>5}{'ask (retrieval)':>17}{'gold passage':>14}{'ratio':>7}{'closed-book':>13}"
        f"{'gold in sources':>17}{'s/question':>12}"
    )
    for name, rows, correct in (
        ("nq-open", nq[: args.nq], lambda a, r: nq_correct(a, r["answers"])),
        ("pubmedqa", pubmed[: args.pubmed], lambda a, r: pubmed_correct(a, r["gold"])),
    ):
        if not rows:
            continue
        scores = {"ask": [], "gold": [], "closed": [], "found": []}
        seconds = []
        for row in rows:
            question = row["question"] + (PUBMED_SUFFIX if name == "pubmedqa" else "")
            start = time.perf_counter()
            answer = assistant.answer(question, strategy="direct", params=params)
            seconds.append(time.perf_counter() - start)
            scores["ask"].append(correct(answer.text, row))
            scores["found"].append(any(Path(s["source"]).name == row["file"] for s in answer.sources))
            scores["gold"].append(correct(gold_answer(question, row), row))
            scores["closed"].append(correct(closed_book(question), row))
        acc = {k: statistics.fmean(v) for k, v in scores.items()}
        ratio = acc["ask"] / acc["gold"] if acc["gold"] else float("nan")
        print(
            f"{name:10}{len(rows):5d}{acc['ask']:17.3f}{acc['gold']:14.3f}{ratio:7.2f}{acc['closed']:13.3f}"
            f"{acc['found']:17.3f}{statistics.fmean(seconds):12.1f}"
        )


if __name__ == "__main__":
    main()
