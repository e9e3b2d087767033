"""BEIR-format data sets as the benchmarks read them (corpus.jsonl, queries.jsonl, qrels/test.tsv), written
out as a user's folder of Markdown files, and the ranking metrics they are scored by."""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class BeirSet:
    corpus: dict[str, dict]  # document id -> its row ("title", "text")
    queries: dict[str, str]  # query id -> its text
    qrels: dict[str, dict[str, float]]  # query id -> relevant document id -> grade (> 0 only)


def read(folder: Path) -> BeirSet:
    corpus = {}
    with open(folder / "corpus.jsonl", encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            corpus[row["_id"]] = row
    queries = {}
    with open(folder / "queries.jsonl", encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            queries[row["_id"]] = row["text"]
    qrels: dict[str, dict[str, float]] = defaultdict(dict)
    with open(folder / "qrels" / "test.tsv", encoding="utf-8") as fh:
        for row in csv.DictReader(fh, delimiter="\t"):
            if float(row["score"]) > 0:
                qrels[row["query-id"]][row["corpus-id"]] = float(row["score"])
    return BeirSet(corpus, queries, dict(qrels))


def subsample(data: BeirSet, n_docs: int, n_queries: int) -> BeirSet:
    """The first n_queries queries whose gold documents all fit in n_docs documents: the gold documents of
    those queries first, then others in corpus order as distractors."""
    keep: dict[str, None] = {}
    chosen = []
    for qid in data.queries:
        gold = [d for d in data.qrels.get(qid, {}) if d in data.corpus]
        if not gold or len(chosen) >= n_queries or len(keep) + len(gold) > n_docs:
            continue
        chosen.append(qid)
        keep.update(dict.fromkeys(gold))
    for doc_id in data.corpus:
        if len(keep) >= n_docs:
            break
        keep.setdefault(doc_id)
    return BeirSet(
        {d: data.corpus[d] for d in keep},
        {q: data.queries[q] for q in chosen},
        {q: {d: g for d, g in data.qrels[q].items() if d in keep} for q in chosen},
    )


def markdown(row: dict) -> str:
    """A corpus document as a user's Markdown file: its title as the heading."""
    title = (row.get("title") or "").strip()
    return f"# {title}\n\n{row['text']}\n" if title else f"{row['text']}\n"


def write_docs(corpus: dict[str, dict], folder: Path) -> None:
    """Each document as `<id>.md` in `folder`; a file already holding the same text is left as it is (so
    that re-indexing finds nothing changed)."""
    folder.mkdir(parents=True, exist_ok=True)
    for doc_id, row in corpus.items():
        path = folder / f"{doc_id}.md"
        text = markdown(row)
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")


def metrics(ranked: list[str], relevant: dict[str, float]) -> dict[str, float]:
    """nDCG@10, Recall@10, Recall@100 and MRR@10 of one ranked list of document ids."""
    dcg = sum(relevant.get(d, 0.0) / math.log2(i + 2) for i, d in enumerate(ranked[:10]))
    ideal = sum(g / math.log2(i + 2) for i, g in enumerate(sorted(relevant.values(), reverse=True)[:10]))
    mrr = next((1.0 / (i + 1) for i, d in enumerate(ranked[:10]) if d in relevant), 0.0)
    return {
        "nDCG@10": dcg / ideal if ideal else 0.0,
        "Recall@10": len(set(ranked[:10]) & set(relevant)) / len(relevant),
        "Recall@100": len(set(ranked[:100]) & set(relevant)) / len(relevant),
        "MRR@10": mrr,
    }
