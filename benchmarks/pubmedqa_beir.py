"""A BEIR-format retrieval set from PubMedQA (../shared/data/pubmedqa): each of the 1000 expert-labelled
questions must find its own abstract among all 1000.

The corpus is the abstracts' context paragraphs only (no question, no conclusion: the long answer stays out,
as it often restates the question), so a query shares only the abstract's topic with its document.

    python benchmarks/pubmedqa_beir.py [OUT_DIR]      # default: benchmarks/out/pubmedqa_beir
    python benchmarks/retrieval_eval.py benchmarks/out/pubmedqa_beir
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

PUBMEDQA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "pubmedqa" / "ori_pqal.json"
OUT = Path(__file__).resolve().parent / "out" / "pubmedqa_beir"


def build(out: Path) -> int:
    """Write corpus.jsonl, queries.jsonl and qrels/test.tsv under `out`; the number of queries."""
    items = json.loads(PUBMEDQA.read_text(encoding="utf-8"))
    (out / "qrels").mkdir(parents=True, exist_ok=True)
    with (
        open(out / "corpus.jsonl", "w", encoding="utf-8") as corpus,
        open(out / "queries.jsonl", "w", encoding="utf-8") as queries,
        open(out / "qrels" / "test.tsv", "w", encoding="utf-8") as qrels,
    ):
        qrels.write("query-id\tcorpus-id\tscore\n")
        for pmid, item in items.items():
            text = "\n\n".join(item["CONTEXTS"])
            corpus.write(json.dumps({"_id": f"p{pmid}", "title": "", "text": text}) + "\n")
            queries.write(json.dumps({"_id": f"q{pmid}", "text": item["QUESTION"]}) + "\n")
            qrels.write(f"q{pmid}\tp{pmid}\t1\n")
    return len(items)


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else OUT
    print(f"{build(out)} queries, their abstracts as the corpus -> {out}")
