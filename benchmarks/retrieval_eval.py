"""Retrieval quality on a BEIR-format data set, through Nightjar's own indexer and search.

Each corpus document becomes a Markdown file (its title as the heading), indexed by `retrieval.indexer`
like any user folder; each query is answered by `retrieval.search` in four modes: BM25 only, dense only,
hybrid (fused as `retrieval.fusion` says: cosine + keyword coverage by default), and hybrid + cross-encoder
reranking (when one is given).
Chunks are mapped back to their documents (a document ranks where its best chunk ranks).

Prints nDCG@10, Recall@10, Recall@100 and MRR@10 per mode, and the mean search time per query.

With --train-reranker N, Nightjar's own reranker is first trained on the same index as `nightjar reranker
train` trains it (the embedded model writes N questions for sampled passages; minutes per stage printed),
published whatever its held-out gain so that it can be measured (what the gate would have decided is
printed), and measured as a fourth mode, "hybrid+trained", with its cost per query for the fused top 20.

    python benchmarks/retrieval_eval.py ../shared/data/nq-open/derived_beir [--queries N] [--reranker PATH]
    python benchmarks/retrieval_eval.py benchmarks/out/pubmedqa_beir --train-reranker 400   # pubmedqa_beir.py
    python benchmarks/retrieval_eval.py SET --train-reranker 300 --reranker-size 6:256      # a larger one

The index is kept under benchmarks/out/ (re-runs embed nothing new); --fresh rebuilds it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from collections import defaultdict
from dataclasses import asdict, replace
from pathlib import Path

import beir_sets

from retrieval.config import RetrievalConfig
from retrieval.index import Index
from retrieval.indexer import update
from retrieval.search import describe_fusion, search

OUT = Path(__file__).resolve().parent / "out" / "retrieval_eval"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "dataset", type=Path, help="a BEIR folder: corpus.jsonl, queries.jsonl, qrels/test.tsv"
    )
    parser.add_argument("--queries", type=int, default=0, help="evaluate the first N queries (0: all)")
    parser.add_argument("--reranker", default="", help="a CrossEncoder path or hub id for hybrid+rerank")
    parser.add_argument(
        "--embedder", default="", help="a sentence-transformers model (default: the embedded MiniLM)"
    )
    parser.add_argument("--vector-index", default="auto", help="flat, ivf, hnsw or auto")
    defaults = RetrievalConfig()
    parser.add_argument("--fusion", default=defaults.fusion, help="convex or rrf (reciprocal rank fusion)")
    parser.add_argument("--bm25-weight", type=float, default=defaults.bm25_weight, help="BM25's weight")
    parser.add_argument("--dense-weight", type=float, default=defaults.dense_weight, help="dense's weight")
    parser.add_argument("--rrf-k", type=int, default=defaults.rrf_k, help="reciprocal rank fusion's k")
    parser.add_argument(
        "--train-reranker",
        type=int,
        default=0,
        metavar="N",
        help="train Nightjar's reranker here (the embedded model writes N questions), then measure it",
    )
    parser.add_argument(
        "--reranker-size",
        metavar="LAYERS:TOKENS",
        help="--train-reranker: keep this many layers and cut pairs at this many tokens (default: the "
        f"config's, {RetrievalConfig.reranker_layers}:{RetrievalConfig.reranker_pair_tokens}), to measure "
        "another size",
    )
    parser.add_argument("--fresh", action="store_true", help="rebuild the index from scratch")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # each figure as soon as it is measured

    data = beir_sets.read(args.dataset)
    corpus, queries, qrels = data.corpus, data.queries, data.qrels
    work = OUT / args.dataset.resolve().parent.name / args.dataset.name
    if args.fresh:
        shutil.rmtree(work, ignore_errors=True)
    beir_sets.write_docs(corpus, work / "docs")
    config = RetrievalConfig(
        embedder=args.embedder,
        reranker=args.reranker,
        vector_index=args.vector_index,
        bm25_candidates=100,
        dense_candidates=100,
        fusion=args.fusion,
        bm25_weight=args.bm25_weight,
        dense_weight=args.dense_weight,
        rrf_k=args.rrf_k,
    )
    if args.reranker_size:
        layers, tokens = (int(v) for v in args.reranker_size.split(":"))
        config = replace(config, reranker_layers=layers, reranker_pair_tokens=tokens)
    index = Index(work / "index", config)
    report = update(index, [work / "docs"])
    print(f"corpus {len(corpus)} documents -> index: {report.summary()}")
    n_docs, n_chunks = index.catalog.counts()
    print(
        f"index {n_docs} documents, {n_chunks} chunks, vectors {index.snapshot().vectors.kind}, "
        f"embedder {index.embedder.name}\nfusion: {describe_fusion(config)}"
    )

    ids = [q for q in queries if q in qrels]
    if args.queries:
        ids = ids[: args.queries]
    modes = [("BM25", "bm25", False), ("dense", "dense", False), ("hybrid", "hybrid", False)]
    if args.reranker:
        modes.append(("hybrid+rerank", "hybrid", True))
    elif args.train_reranker:
        print(f"reranker: {config.reranker_layers} layers, pairs cut at {config.reranker_pair_tokens} tokens")
        train_reranker(index, args.train_reranker)
        modes.append(("hybrid+trained", "hybrid", True))
    search(index, "warm up", k=10)
    print(
        f"\n{len(ids)} queries\n{'mode':16}{'nDCG@10':>9}{'R@10':>8}{'R@100':>8}{'MRR@10':>8}{'ms/query':>10}"
    )
    for name, mode, rerank in modes:
        totals: dict[str, list[float]] = defaultdict(list)
        times = []
        for qid in ids:
            start = time.perf_counter()
            hits = search(index, queries[qid], k=100, mode=mode, rerank=rerank)
            times.append(time.perf_counter() - start)
            ranked = list(dict.fromkeys(Path(h.chunk.source).stem for h in hits))
            for key, value in beir_sets.metrics(ranked, qrels[qid]).items():
                totals[key].append(value)
        mean = {k: statistics.fmean(v) for k, v in totals.items()}
        print(
            f"{name:16}{mean['nDCG@10']:9.4f}{mean['Recall@10']:8.4f}{mean['Recall@100']:8.4f}"
            f"{mean['MRR@10']:8.4f}{1000 * statistics.fmean(times):10.1f}"
        )
    if args.reranker or args.train_reranker:
        rerank_latency(index, [queries[q] for q in ids[:200]])
    else:
        print("hybrid+rerank   skipped: no cross-encoder given (--reranker PATH or --train-reranker N)")


def train_reranker(index: Index, n: int) -> None:
    """Train a reranker on this index as `nightjar reranker train` does (the embedded model writes `n`
    questions), published whatever the gate says so that it can be measured; what the gate would have
    decided at the default reranker_min_gain is printed."""
    from assistant.engine import LlamaCppEngine
    from assistant.modelfile import embedded_llm_path
    from assistant.reranker_queries import generated_examples
    from retrieval.reranker_training import Example
    from retrieval.reranker_training import train_reranker as train

    shutil.rmtree(index.folder / "rerankers", ignore_errors=True)  # judged against fusion, not a last run
    start = time.perf_counter()
    cache = index.folder.parent / f"questions-{n}.json"  # the same questions again, for a re-run
    if cache.is_file():
        saved = json.loads(cache.read_text(encoding="utf-8"))
        examples = [Example(e["query"], e["positive"], e["origin"]) for e in saved["examples"]]
        left_out = saved["left_out"]
    else:
        engine = LlamaCppEngine(embedded_llm_path(), n_ctx=2048)
        examples, left_out = generated_examples(engine, index, n)
        saved = {"examples": [asdict(e) for e in examples], "left_out": left_out}
        cache.write_text(json.dumps(saved), encoding="utf-8")
    written = time.perf_counter() - start
    default_gain = index.config.reranker_min_gain
    index.config.reranker_min_gain = -1.0  # publish, to measure it
    report = train(index, examples, left_out)
    index.config.reranker_min_gain = default_gain
    index.reload_reranker()
    total = time.perf_counter() - start
    held = report.heldout
    print(
        f"\ntrained reranker {report.version}: {n} passages, {len(examples)} questions written in "
        f"{written / 60:.1f} min; {report.train_queries} trained on, {held.get('queries', 0)} held out; "
        f"left out {report.left_out}"
    )
    print(f"  seconds per stage {report.seconds}; whole run {total / 60:.1f} min")
    if held:
        gain = held["after"]["mrr"] - held["before"]["mrr"]
        verdict = "keep" if gain >= default_gain else "reject"
        before, after = held["before"]["mrr"], held["after"]["mrr"]
        print(
            f"  held-out generated questions MRR@10 {before:.3f} -> {after:.3f}: the gate "
            f"(reranker_min_gain {default_gain}) would {verdict} it"
        )


def rerank_latency(index: Index, texts: list[str]) -> None:
    """Milliseconds the reranker takes to score the fused top `rerank_candidates` of a query."""
    reranker = index.reranker
    times = []
    for q in texts:
        hits = search(index, q, k=index.config.rerank_candidates, rerank=False)
        start = time.perf_counter()
        reranker.score(q, [h.chunk.indexed_text for h in hits])
        times.append(1000 * (time.perf_counter() - start))
    times.sort()
    p95 = times[int(0.95 * (len(times) - 1))]
    print(
        f"reranking {index.config.rerank_candidates} candidates: p50 {statistics.median(times):.0f} ms, "
        f"p95 {p95:.0f} ms ({len(times)} queries)"
    )


if __name__ == "__main__":
    main()
