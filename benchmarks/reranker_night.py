"""The trained reranker's nightly run on a corpus of a given size: minutes per stage, as a user pays them.

A fresh home indexes real English text from ../shared/data until it holds --chunks chunks (nq-open's
Wikipedia passages, PubMedQA's abstracts and long answers, HH-RLHF's conversations, GSM8K's problems: one
document each), with the default embedder; then `Assistant.train_reranker` runs as `nightjar reranker train`
does (the served model writes a question for each of `retrieval.reranker_queries` sampled passages, the
cross-encoder is fine-tuned, exported and judged). Target on a 2-core machine: at most 20 minutes for a
10k-chunk corpus.

    python benchmarks/reranker_night.py [--chunks 10000] [--queries N]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TARGET_MIN = 20.0


def texts() -> Iterator[str]:
    """Documents of real text, one at a time, from the shared data sets."""
    with open(DATA / "nq-open" / "derived_beir" / "corpus.jsonl", encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            yield f"{row.get('title', '')}\n\n{row['text']}"
    for item in json.loads((DATA / "pubmedqa" / "ori_pqal.json").read_text(encoding="utf-8")).values():
        yield "\n\n".join(item["CONTEXTS"])
        yield item["LONG_ANSWER"]
    with open(DATA / "hh-rlhf-harmless-test" / "test.jsonl", encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            yield row["chosen"]
            yield row["rejected"]
    for path in sorted((DATA / "gsm8k-dev200").glob("*.jsonl")):
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                yield json.loads(line)["question"]


def build(assistant, docs: Path, chunks: int) -> tuple[int, float]:
    """Index documents into `docs`' home, a batch at a time, until it holds `chunks` chunks (or the data
    runs out); (chunks indexed, seconds)."""
    source = texts()
    total, seconds, n = 0, 0.0, 0
    while total < chunks:
        batch = docs / f"batch-{n // 2000}"
        batch.mkdir(parents=True, exist_ok=True)
        wrote = 0
        for text in source:
            (batch / f"{n}.txt").write_text(text, encoding="utf-8")
            n, wrote = n + 1, wrote + 1
            if wrote == 2000:
                break
        if not wrote:
            break
        start = time.perf_counter()
        assistant.index([docs])
        seconds += time.perf_counter() - start
        total = assistant.documents.index.catalog.counts()[1]
        print(f"  {n} documents, {total} chunks indexed ({seconds:.0f} s)", flush=True)
    return total, seconds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--chunks", type=int, default=10_000, help="chunks the corpus holds")
    parser.add_argument("--queries", type=int, default=0, help="questions written (default: the config's)")
    args = parser.parse_args()

    from assistant import config as config_mod
    from assistant.service import Assistant

    home = Path(tempfile.mkdtemp(prefix="nightjar-reranker-night-"))
    try:
        assistant = Assistant(config_mod.load(home, {}, environ={}))
        chunks, index_s = build(assistant, home / "documents", args.chunks)
        queries = args.queries or assistant.config.retrieval.reranker_queries
        print(
            f"indexed {chunks} chunks in {index_s / 60:.1f} min; training the reranker ({queries} questions)"
        )
        stages: dict[str, float] = {}  # seconds up to each progress call, given to the stage it reports
        start = last = time.perf_counter()

        def progress(stage: str, done: int, total: int) -> None:
            nonlocal last
            now = time.perf_counter()
            stages[stage] = stages.get(stage, 0.0) + now - last
            last = now

        report = assistant.train_reranker(queries, progress=progress)
        minutes = (time.perf_counter() - start) / 60
        print(
            f"\nreranker night on {chunks} chunks: {minutes:.1f} min (target {TARGET_MIN:.0f}, ratio "
            f"{minutes / TARGET_MIN:.2f})"
        )
        print(
            f"  writing questions {stages.get('writing questions', 0.0) / 60:.1f} min; "
            f"then seconds per stage {report.seconds}"
        )
        print(f"  {report.train_queries} questions trained on; left out {report.left_out}")
        print(f"  outcome: {report.outcome} ({report.verdict})")
    finally:
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
