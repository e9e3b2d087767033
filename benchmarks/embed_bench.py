"""Embedding backends side by side: torch (transformers), ONNX Runtime at full precision, ONNX Runtime int8.

One run measures, for each backend (`retrieval.embedder_backend`):

1. throughput: a subsample of a BEIR corpus embedded by `Embedder.embed` (chunks/s), and its ratio to torch's
   (torch runs first and last: the baseline is their mean; target >= 3x for onnx int8);
2. query latency: `embed_query` on the set's queries, p50 / p95 ms (target <= 8 ms);
3. quality: dense-only retrieval over that subsample, nDCG@10 and Recall@10 (target: within 0.01 of
   torch), and each document vector's cosine to torch's (min / mean: > 0.99 everywhere would let the
   backends share an index);
4. cold start: a whole `nightjar search "..."` process on a home indexed with that backend (a torch-built
   index for torch and onnx-fp32, an int8 one for onnx), wall time median of --runs runs (target <= 1.0 s),
   and whether the process imported torch (`-X importtime`). The first search after indexing is timed
   apart: onnx-fp32 exports its model then.

    python benchmarks/embed_bench.py ../shared/data/nq-open/derived_beir [--docs 600] [--queries 300]
                                     [--runs 5] [--backends torch,onnx-fp32,onnx] [--fresh]

The exported models and the cold-start homes are kept under benchmarks/out/embed_bench/ (--fresh: made again,
the export timed).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import beir_sets
import numpy as np

from retrieval.config import embedded_embedder_path
from retrieval.embedder import embedder_for

OUT = Path(__file__).resolve().parent / "out" / "embed_bench"
ROOT = Path(__file__).resolve().parents[1]
BACKENDS = ("torch", "onnx-fp32", "onnx")


def doc_text(row: dict) -> str:
    """A document as the indexer embeds it: its heading (the title), then its text."""
    title = (row.get("title") or "").strip()
    return f"{title}\n\n{row['text']}" if title else row["text"]


def make(backend: str):
    """The embedder of `backend`, its model loaded (and, for ONNX, exported if it was not yet): seconds."""
    start = time.perf_counter()
    embedder = embedder_for(embedded_embedder_path(), backend=backend, cache_dir=OUT / "onnx")
    embedder.embed(["load the model"] * 4)
    embedder.embed_query("load the query path")
    return embedder, time.perf_counter() - start


def throughput(embedder, texts: list[str]) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    vectors = embedder.embed(texts)
    return len(texts) / (time.perf_counter() - start), vectors


def query_latency(embedder, queries: list[str]) -> tuple[float, float, np.ndarray]:
    times, vectors = [], []
    for q in queries:
        start = time.perf_counter()
        vectors.append(embedder.embed_query(q))
        times.append(time.perf_counter() - start)
    ms = np.array(times) * 1000
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 95)), np.stack(vectors)


def nightjar(home: Path, backend: str, *args: str, importtime: bool = False) -> tuple[float, str]:
    """Run `nightjar --home HOME ARGS` as a whole process on `backend`: (wall seconds, stderr)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NIGHTJAR_")}
    env.update(HF_HUB_OFFLINE="1", NIGHTJAR_RETRIEVAL_EMBEDDER_BACKEND=backend)
    cmd = [sys.executable, *(["-X", "importtime"] if importtime else []), "-m", "assistant"]
    start = time.perf_counter()
    done = subprocess.run(
        [*cmd, "--home", str(home), *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=600
    )
    seconds = time.perf_counter() - start
    if done.returncode not in (0, 1):
        raise SystemExit(f"nightjar {' '.join(args)} failed ({done.returncode}): {done.stderr[-2000:]}")
    return seconds, done.stderr


def imported(stderr: str, module: str) -> bool:
    return any(line.rsplit("|", 1)[-1].strip() == module for line in stderr.splitlines() if "|" in line)


def cold_start(backends: list[str], corpus: dict, query: str, runs: int) -> dict[str, dict]:
    """Whole `nightjar search` processes: a torch-built home serves torch and onnx-fp32, an int8 one onnx."""
    docs = OUT / "cold" / "docs"
    beir_sets.write_docs(dict(list(corpus.items())[:200]), docs)
    homes = {"torch": OUT / "cold" / "home-torch", "onnx": OUT / "cold" / "home-int8"}
    out = {}
    for backend in backends:
        family = "onnx" if backend == "onnx" else "torch"
        home = homes[family]
        if not (home / "index" / "catalog.db").exists():
            seconds, _ = nightjar(home, family, "index", str(docs))
            print(f"  indexed {len(list(docs.glob('*.md')))} documents with {family} in {seconds:.1f} s")
        first, _ = nightjar(home, backend, "search", query)  # loads (or exports) the model
        walls = [nightjar(home, backend, "search", query)[0] for _ in range(runs)]
        _, trace = nightjar(home, backend, "search", query, importtime=True)
        out[backend] = {
            "first_s": first,
            "median_s": statistics.median(walls),
            "min_s": min(walls),
            "max_s": max(walls),
            "imports_torch": imported(trace, "torch"),
            "imports_sentence_transformers": imported(trace, "sentence_transformers"),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "dataset", type=Path, help="a BEIR folder: corpus.jsonl, queries.jsonl, qrels/test.tsv"
    )
    parser.add_argument("--docs", type=int, default=600, help="documents in the subsample")
    parser.add_argument("--queries", type=int, default=300, help="queries (their gold documents are kept)")
    parser.add_argument("--runs", type=int, default=5, help="cold-start processes per backend")
    parser.add_argument("--backends", default=",".join(BACKENDS), help="torch is always measured")
    parser.add_argument("--fresh", action="store_true", help="export the models and index the homes anew")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # each figure as soon as it is measured
    backends = ["torch"] + [b for b in args.backends.split(",") if b and b != "torch"]
    if args.fresh:
        shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True, exist_ok=True)

    data = beir_sets.subsample(beir_sets.read(args.dataset), args.docs, args.queries)
    corpus, queries, qrels = data.corpus, data.queries, data.qrels
    doc_ids = list(corpus)
    texts = [doc_text(corpus[d]) for d in doc_ids]
    qids = list(queries)
    print(f"{len(texts)} documents, {len(qids)} queries from {args.dataset}; {os.cpu_count()} CPUs")

    results: dict[str, dict] = {}
    reference = None
    torch_rates = []
    for backend in [*backends, "torch"]:  # torch again last: the machine may have got busier meanwhile
        embedder, load_s = make(backend)
        rate, vectors = throughput(embedder, texts)
        if backend == "torch":
            torch_rates.append(rate)
            if reference is not None:
                continue
            reference = vectors
        p50, p95, qvectors = query_latency(embedder, [queries[q] for q in qids])
        scores = qvectors @ vectors.T
        per_query = [
            beir_sets.metrics([doc_ids[i] for i in np.argsort(-scores[row])[:10]], qrels[q])
            for row, q in enumerate(qids)
        ]
        cosine = (vectors * reference).sum(1)
        results[backend] = {
            "name": embedder.name,
            "load_s": load_s,
            "exported": getattr(embedder, "exports", 0),
            "chunks_per_s": rate,
            "query_p50_ms": p50,
            "query_p95_ms": p95,
            "ndcg@10": statistics.fmean(m["nDCG@10"] for m in per_query),
            "recall@10": statistics.fmean(m["Recall@10"] for m in per_query),
            "cosine_min": float(cosine.min()),
            "cosine_mean": float(cosine.mean()),
        }
        del embedder
        quality = results[backend]["ndcg@10"]
        print(f"  {backend}: {rate:.1f} chunks/s, query p50 {p50:.2f} ms, nDCG@10 {quality:.4f}")
    baseline = statistics.fmean(torch_rates)
    print(f"  torch before/after: {torch_rates[0]:.1f} / {torch_rates[1]:.1f} chunks/s")

    print(f"\ncold start: `nightjar search` processes, {args.runs} runs each")
    cold = cold_start(backends, corpus, queries[qids[0]], args.runs)

    print(
        f"\n{'backend':11}{'chunks/s':>9}{'x torch':>8}{'q p50 ms':>9}{'q p95 ms':>9}{'nDCG@10':>9}"
        f"{'R@10':>7}{'cos min':>8}{'cos mean':>9}{'cold s':>7}{'first s':>8}  torch imported"
    )
    for backend in backends:
        r, c = results[backend], cold[backend]
        print(
            f"{backend:11}{r['chunks_per_s']:9.1f}{r['chunks_per_s'] / baseline:8.2f}{r['query_p50_ms']:9.2f}"
            f"{r['query_p95_ms']:9.2f}{r['ndcg@10']:9.4f}{r['recall@10']:7.3f}{r['cosine_min']:8.4f}"
            f"{r['cosine_mean']:9.4f}{c['median_s']:7.2f}{c['first_s']:8.2f}  "
            f"{'yes' if c['imports_torch'] else 'no'}"
        )
    for backend in backends:
        r = results[backend]
        if r["exported"]:
            print(f"{backend}: exported its ONNX model in this run (load + export {r['load_s']:.1f} s)")
    summary = {"docs": len(texts), "queries": len(qids), "torch_rates": torch_rates, "backends": results}
    summary["cold_start"] = cold
    (OUT / "results.json").write_text(json.dumps(summary, indent=2))
    print(f"\nwritten to {OUT / 'results.json'}")


if __name__ == "__main__":
    main()
