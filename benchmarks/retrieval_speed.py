"""Retrieval speed: indexing throughput against the embedder's raw `encode`, hybrid query latency, peak RAM.

Synthetic documents (English words drawn with the word frequencies of the nq-open passages, in sentences and
paragraphs) are indexed by Nightjar's own indexer and searched by its own hybrid search. Four measurements,
each in its own process so that peak RAM is per task:

1. throughput: the same synthetic chunks embedded by the raw SentenceTransformer `encode` (the baseline, run
   before and after) and indexed by `nightjar index`'s pipeline with that model; their ratio (target >= 0.90).
2. build at scale (--chunks, default 100k): the whole pipeline (load, chunk, SQLite, BM25, FAISS) at full
   size. Embedding 100k chunks with MiniLM takes hours on 2 CPU cores, so the documents' vectors here come
   from a hashing stand-in (its time is measured and set aside); the pipeline's own time per chunk, together
   with the raw encode rate from 1., gives the throughput ratio at full size.
3. serve: hybrid queries (BM25 + dense, fused, no reranking) on the full-size index; every query is embedded
   by the real MiniLM. Wall-clock and CPU-time p50/p95 (targets: p50 <= 30 ms, p95 <= 100 ms), and exact
   (flat) search on the same vectors for comparison. Peak RAM of serving and of building (target <= 1.5 GB).
4. baseline: rank-bm25 (the scoring reference) scoring the same chunks per query.
5. with --store qdrant: 2. and 3. again with `retrieval.store = "qdrant"` (qdrant-client's embedded mode) on
   the same documents, in the same run, and the two stores side by side: indexing throughput, hybrid query
   p50/p95, the vector search alone, index load time and peak RAM.

    python benchmarks/retrieval_speed.py [--chunks 100000] [--throughput-chunks 300] [--queries 200]
                                         [--store faiss|qdrant]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent / "out" / "retrieval_speed"
NQ = Path(__file__).resolve().parents[2] / "shared" / "data" / "nq-open" / "derived_beir" / "corpus.jsonl"
WORDS_PER_DOC = 1800  # about 10 chunks of 256 MiniLM tokens


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def vocabulary() -> tuple[list[str], np.ndarray]:
    counts: Counter[str] = Counter()
    with open(NQ, encoding="utf-8") as fh:
        for line in fh:
            counts.update(w.strip(".,;:()\"'").lower() for w in json.loads(line)["text"].split())
    words = [w for w, c in counts.most_common() if w.isalpha()]
    freq = np.array([counts[w] for w in words], dtype=np.float64)
    return words, freq / freq.sum()


def write_corpus(folder: Path, n_docs: int, seed: int) -> None:
    """n_docs Markdown files of synthetic prose: sentences of 6-20 words, paragraphs of 3-7 sentences."""
    if folder.exists() and len(list(folder.glob("*.md"))) == n_docs:
        return
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    words, p = vocabulary()
    rng = np.random.default_rng(seed)
    for d in range(n_docs):
        drawn = rng.choice(len(words), size=WORDS_PER_DOC, p=p)
        lengths = rng.integers(6, 21, size=WORDS_PER_DOC // 6)
        sentences, at = [], 0
        for n in lengths:
            if at >= WORDS_PER_DOC:
                break
            chunk = [words[i] for i in drawn[at : at + n]]
            at += n
            sentences.append(chunk[0].capitalize() + " " + " ".join(chunk[1:]) + ".")
        paragraphs, at = [], 0
        while at < len(sentences):
            n = int(rng.integers(3, 8))
            paragraphs.append(" ".join(sentences[at : at + n]))
            at += n
        (folder / f"doc{d:06d}.md").write_text(f"# Document {d}\n\n" + "\n\n".join(paragraphs) + "\n")


class HashingEmbedder:
    """Stand-in document vectors for the build at scale: the real tokenizer, signed token hashing; its time is
    measured so the pipeline's own time can be told apart. Queries still go through the real model."""

    def __init__(self, real) -> None:
        self.real = real
        self.name = "hashing-stand-in"
        self.dim = real.dim
        self.max_tokens = real.max_tokens
        self.seconds = 0.0
        self.texts = 0

    def token_spans(self, texts):
        return self.real.token_spans(texts)

    def embed(self, texts: list[str]) -> np.ndarray:
        start = time.perf_counter()
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, enc in enumerate(self.real.tokenizer.encode_batch(texts, add_special_tokens=False)):
            ids = np.asarray(enc.ids, dtype=np.int64)
            np.add.at(out[row], (ids * 2654435761) % self.dim, np.where(ids % 2, 1.0, -1.0))
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)
        self.seconds += time.perf_counter() - start
        self.texts += len(texts)
        return out

    def embed_query(self, text: str) -> np.ndarray:
        return self.real.embed_query(text)


def phase_throughput(args) -> dict:
    import bm25s  # noqa: F401  (imports are paid once per process, as loading the model is for the raw side)
    import faiss  # noqa: F401
    import markdown_it  # noqa: F401

    from retrieval.chunking import chunk_blocks
    from retrieval.config import RetrievalConfig, embedded_embedder_path
    from retrieval.embedder import SentenceTransformerEmbedder
    from retrieval.index import Index
    from retrieval.indexer import update
    from retrieval.loaders import load

    n_docs = max(1, args.throughput_chunks // 10)
    folder = OUT / f"throughput-{n_docs}"
    write_corpus(folder, n_docs, seed=1)
    embedder = SentenceTransformerEmbedder(embedded_embedder_path())
    embedder.embed(["warm up the model"] * 4)
    max_tokens = min(RetrievalConfig().chunk_tokens, embedder.max_tokens)
    overlap = RetrievalConfig().overlap_tokens(max_tokens)
    texts = []
    for path in sorted(folder.glob("*.md")):
        blocks = load(path, path.read_bytes())
        texts += [c.indexed_text for c in chunk_blocks(blocks, embedder.token_spans, max_tokens, overlap)]

    def raw() -> float:
        start = time.perf_counter()
        embedder.model.encode(
            texts,
            batch_size=embedder.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return len(texts) / (time.perf_counter() - start)

    before = raw()
    shutil.rmtree(folder.with_suffix(".index"), ignore_errors=True)
    index = Index(folder.with_suffix(".index"), RetrievalConfig(), embedder=embedder)
    report = update(index, [folder])
    pipeline = report.chunks / report.seconds
    after = raw()
    return {
        "chunks": len(texts),
        "indexed_chunks": report.chunks,
        "raw_before": before,
        "raw_after": after,
        "pipeline": pipeline,
        "seconds": report.seconds,
    }


def index_folder(n_docs: int, store: str) -> Path:
    return OUT / (f"scale-{n_docs}.index" if store == "faiss" else f"scale-{n_docs}.{store}.index")


def phase_build(args) -> dict:
    from retrieval.config import RetrievalConfig, embedded_embedder_path
    from retrieval.embedder import SentenceTransformerEmbedder
    from retrieval.index import Index
    from retrieval.indexer import update

    n_docs = max(1, args.chunks // 10)
    folder = OUT / f"scale-{n_docs}"
    write_corpus(folder, n_docs, seed=2)
    real = SentenceTransformerEmbedder(embedded_embedder_path())
    real.embed(["load the model, as a real run has it in memory"])
    stand_in = HashingEmbedder(real)
    target = index_folder(n_docs, args.store)
    shutil.rmtree(target, ignore_errors=True)
    index = Index(target, RetrievalConfig(store=args.store), embedder=stand_in)
    report = update(index, [folder])
    docs, chunks = index.catalog.counts()
    return {
        "docs": docs,
        "chunks": chunks,
        "seconds": report.seconds,
        "embed_seconds": stand_in.seconds,
        "pipeline_seconds": report.seconds - stand_in.seconds,
        "kind": index.snapshot().vectors.kind,
        "peak_rss_mb": peak_rss_mb(),
        "index": str(target),
    }


QUERY_WORDS = 4


def queries(n: int) -> list[str]:
    words, p = vocabulary()
    rng = np.random.default_rng(7)
    mid = np.arange(100, 5000)  # everyday words, neither stopwords nor hapaxes
    return [" ".join(words[i] for i in rng.choice(mid, size=QUERY_WORDS)) + "?" for _ in range(n)]


def phase_serve(args) -> dict:
    from retrieval.config import RetrievalConfig, embedded_embedder_path
    from retrieval.embedder import SentenceTransformerEmbedder
    from retrieval.index import Index
    from retrieval.search import search
    from retrieval.vectors import FaissStore

    real = SentenceTransformerEmbedder(embedded_embedder_path())
    stand_in = HashingEmbedder(real)  # only its name matters here: the index was built with it
    index = Index(Path(args.index), RetrievalConfig(store=args.store), embedder=stand_in)
    start = time.perf_counter()
    snap = index.snapshot()
    load_s = time.perf_counter() - start
    qs = queries(args.queries)
    for q in qs[:5]:
        search(index, q, k=10, rerank=False)
    wall, cpu = [], []
    for q in qs:
        w, c = time.perf_counter(), time.process_time()
        search(index, q, k=10, rerank=False)
        cpu.append(time.process_time() - c)
        wall.append(time.perf_counter() - w)
    parts = {"embed": [], "bm25": [], "ann": []}
    for q in qs[:50]:
        t = time.perf_counter()
        vec = real.embed_query(q)
        parts["embed"].append(time.perf_counter() - t)
        t = time.perf_counter()
        snap.bm25.score_all(q)
        parts["bm25"].append(time.perf_counter() - t)
        t = time.perf_counter()
        snap.vectors.search(vec, 50)
        parts["ann"].append(time.perf_counter() - t)
    serve_rss = peak_rss_mb()
    # the same vectors, searched exactly, for comparison
    flat = FaissStore.create(snap.vectors.dim, "flat")
    ids, vecs = index.catalog.vectors_of_docs(
        [d.id for d in index.catalog.live_docs().values()], snap.vectors.dim
    )
    flat.add(ids, vecs)
    exact = []
    for q in qs[:50]:
        vec = real.embed_query(q)
        t = time.perf_counter()
        flat.search(vec, 50)
        exact.append(time.perf_counter() - t)

    def pct(xs: list[float], p: float) -> float:
        return float(np.percentile(xs, p) * 1000)

    return {
        "queries": len(qs),
        "load_s": load_s,
        "wall_p50": pct(wall, 50),
        "wall_p95": pct(wall, 95),
        "cpu_p50": pct(cpu, 50),
        "cpu_p95": pct(cpu, 95),
        **{f"{k}_p50": pct(v, 50) for k, v in parts.items()},
        "exact_p50": pct(exact, 50),
        "kind": snap.vectors.kind,
        "peak_rss_mb": serve_rss,
    }


def phase_baseline(args) -> dict:
    from rank_bm25 import BM25Okapi

    from retrieval.bm25 import tokenize
    from retrieval.config import RetrievalConfig
    from retrieval.index import Index

    index = Index(Path(args.index), RetrievalConfig())
    texts = [t for _, t in index.catalog.texts_of_docs([d.id for d in index.catalog.live_docs().values()])]
    reference = BM25Okapi([tokenize(t) for t in texts])
    times = []
    for q in queries(10):
        t = time.perf_counter()
        reference.get_scores(tokenize(q))
        times.append(time.perf_counter() - t)
    return {"chunks": len(texts), "p50": statistics.median(times) * 1000}


def run_phase(name: str, args, **extra) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--phase",
        name,
        "--chunks",
        str(args.chunks),
        "--throughput-chunks",
        str(args.throughput_chunks),
        "--queries",
        str(args.queries),
        "--store",
        extra.pop("store", "faiss"),
    ]
    for key, value in extra.items():
        cmd += [f"--{key}", str(value)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode:
        sys.exit(f"phase {name} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--chunks", type=int, default=100_000, help="size of the index for latency and RAM")
    parser.add_argument("--throughput-chunks", type=int, default=300, help="chunks embedded for real in 1.")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--skip-baseline", action="store_true", help="do not run rank-bm25 (slow, large)")
    parser.add_argument(
        "--store",
        choices=("faiss", "qdrant"),
        default="faiss",
        help="qdrant: also build and serve the same documents with retrieval.store = qdrant, and compare",
    )
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    parser.add_argument("--index", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        phases = {
            "throughput": phase_throughput,
            "build": phase_build,
            "serve": phase_serve,
            "baseline": phase_baseline,
        }
        print(json.dumps(phases[args.phase](args)))
        return
    sys.stdout.reconfigure(line_buffering=True)  # each figure as soon as it is measured

    print(
        f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} (other work slows both sides)"
    )
    t = run_phase("throughput", args)
    raw = (t["raw_before"] + t["raw_after"]) / 2
    print(f"\n1. throughput, {t['chunks']} chunks embedded for real by all-MiniLM-L6-v2")
    print(
        f"   raw encode        {raw:8.2f} chunks/s (before {t['raw_before']:.2f}, after {t['raw_after']:.2f})"
    )
    print(
        f"   nightjar index    {t['pipeline']:8.2f} chunks/s   ratio {t['pipeline'] / raw:.3f} (target 0.9)"
    )

    b = run_phase("build", args)
    per_chunk = b["pipeline_seconds"] / b["chunks"]
    encode_s = b["chunks"] / raw
    print(f"\n2. build at scale: {b['docs']} documents, {b['chunks']} chunks, vectors {b['kind']}")
    print(
        f"   pipeline without embedding {b['pipeline_seconds']:.1f} s ({1000 * per_chunk:.2f} ms/chunk); "
        f"stand-in embedding {b['embed_seconds']:.1f} s set aside"
    )
    print(
        f"   MiniLM would take {encode_s:.0f} s at the raw rate above: projected throughput ratio "
        f"{encode_s / (encode_s + b['pipeline_seconds']):.3f} (target >= 0.90)"
    )
    print(f"   peak RAM building {b['peak_rss_mb']:.0f} MB (target <= 1536)")

    s = run_phase("serve", args, index=b["index"])
    print(
        f"\n3. hybrid query, no reranking: {s['queries']} queries, {b['chunks']} chunks, {s['kind']} vectors"
    )
    print(f"   wall  p50 {s['wall_p50']:7.1f} ms  p95 {s['wall_p95']:7.1f} ms   (targets 30 / 100)")
    print(
        f"   CPU   p50 {s['cpu_p50']:7.1f} ms  p95 {s['cpu_p95']:7.1f} ms   (CPU time: not inflated by load)"
    )
    print(
        f"   parts (p50): query embedding {s['embed_p50']:.1f} ms, BM25 {s['bm25_p50']:.1f} ms, "
        f"{s['kind']} top-50 {s['ann_p50']:.2f} ms (exact flat top-50: {s['exact_p50']:.1f} ms)"
    )
    print(f"   index load {s['load_s']:.1f} s; peak RAM serving {s['peak_rss_mb']:.0f} MB (target <= 1536)")

    if not args.skip_baseline:
        r = run_phase("baseline", args, index=b["index"])
        print(
            f"\n4. baseline: rank-bm25 BM25Okapi.get_scores on the same {r['chunks']} chunks: "
            f"p50 {r['p50']:.1f} ms per query; Nightjar's BM25 {s['bm25_p50']:.1f} ms "
            f"({r['p50'] / max(s['bm25_p50'], 1e-6):.0f}x faster)"
        )

    if args.store == "qdrant":
        qb = run_phase("build", args, store="qdrant")
        qs = run_phase("serve", args, index=qb["index"], store="qdrant")
        print(f"\n5. the same {qb['docs']} documents, {qb['chunks']} chunks, with retrieval.store = qdrant")
        print("   (qdrant-client's embedded mode) against FAISS")
        rows = [
            ("indexing, whole pipeline", "chunks/s", lambda x, y: x["chunks"] / x["seconds"]),
            ("indexing, without embedding", "chunks/s", lambda x, y: x["chunks"] / x["pipeline_seconds"]),
            ("hybrid query wall p50", "ms", lambda x, y: y["wall_p50"]),
            ("hybrid query wall p95", "ms", lambda x, y: y["wall_p95"]),
            ("hybrid query CPU p50", "ms", lambda x, y: y["cpu_p50"]),
            ("vector top-50 alone p50", "ms", lambda x, y: y["ann_p50"]),
            ("index load (first query)", "s", lambda x, y: y["load_s"]),
            ("peak RAM building", "MB", lambda x, y: x["peak_rss_mb"]),
            ("peak RAM serving", "MB", lambda x, y: y["peak_rss_mb"]),
        ]
        print(f"   {'':40} {'FAISS (' + s['kind'] + ')':>14} {'Qdrant':>14}")
        for label, unit, value in rows:
            print(f"   {label + ' (' + unit + ')':40} {value(b, s):14.1f} {value(qb, qs):14.1f}")


if __name__ == "__main__":
    main()
