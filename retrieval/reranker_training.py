"""Training a reranker on the user's own documents, with no download: a cross-encoder initialised from the
embedder's own MiniLM weights, taught to pick a query's passage out of the passages fusion ranks beside it.

The examples are (query, passage) pairs: questions the served model wrote for sampled chunks, and the user's
own questions with the sources their up-voted or corrected answers cited (the caller makes both:
assistant/reranker_queries.py). Each query is searched as serving searches it (fused, not reranked); a query
whose passage is not among the fused top `rerank_candidates` is left out (the filter on generated queries:
a passage must rank its own query high), and the others around it are its hard negatives, with the sources
the user flagged as irrelevant to it. A fifth of the queries (by a hash of the text) are held out.

The cross-encoder learns a correction to fusion, not a ranking from nothing: its score head starts at zero
and a candidate's fused score, times a learned weight (`fused_weight`, from FUSED_WEIGHT_INIT), is added
to its output, so that before any step it orders exactly as fusion does and every step is a change to that
order (a few hundred questions are too few to teach a fresh head to rank as well as fusion already does).

The candidate is kept only when, on the held-out queries, it ranks their passages higher than what serves
now (the fused order, or the trained version in use) by at least `reranker_min_gain` MRR@10, and no worse on
the held-out feedback queries; it is judged through its int8 ONNX file, the one that would serve.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import shutil
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from retrieval.errors import RetrievalError
from retrieval.index import Index
from retrieval.rerank import rerank_scores
from retrieval.search import search
from retrieval.trained_reranker import (
    ONNX_FILE,
    SETTINGS_FILE,
    OnnxCrossEncoder,
    RerankerVersion,
    RerankerVersions,
    pair_tokenizer,
)

MIN_TRAIN_QUERIES = 16
MIN_HELDOUT_QUERIES = 8
HELDOUT_SHARE = 0.2
NEGATIVES = 3  # hard negatives per query in a training step: the highest-ranked ones
BATCH_QUERIES = 8
LEARNING_RATE = 5e-5
HEAD_LEARNING_RATE = 1e-3
# the fused scores of a query's candidates lie within about 0.1 of each other: x20, about 2 nats apart
FUSED_WEIGHT_INIT = 20.0
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")

Progress = Callable[[str, int, int], None]  # (stage, done, total)


@dataclass(frozen=True)
class Example:
    query: str
    positive: int  # the chunk id of the passage the query belongs to
    origin: str = "generated"  # generated (the model wrote it) or feedback (the user asked it)
    negatives: tuple[int, ...] = ()  # chunks the user flagged as irrelevant to it


@dataclass
class Group:
    """One query with the fused ranking's candidates around its passage, and their texts."""

    example: Example
    candidates: list[int]  # fused order, best first; the positive is among them
    texts: dict[int, str]
    fused: dict[int, float] = field(default_factory=dict)  # fused score by chunk (flagged ones: the lowest)

    def fused_of(self, ids: list[int]) -> list[float]:
        lowest = min(self.fused.values(), default=0.0)
        return [self.fused.get(c, lowest) for c in ids]

    @property
    def negatives(self) -> list[int]:
        hard = [c for c in self.candidates if c != self.example.positive]
        flagged = [c for c in self.example.negatives if c in self.texts and c not in hard]
        return flagged + hard


@dataclass
class Ranking:
    """Where held-out queries' passages rank: MRR@10 and nDCG@10 (one relevant passage per query)."""

    mrr: float = 0.0
    ndcg: float = 0.0
    queries: int = 0


@dataclass
class RerankerReport:
    examples: dict[str, int]  # given, by origin
    left_out: dict[str, int]  # reason -> how many examples
    train_queries: int = 0
    heldout: dict[str, Any] = field(default_factory=dict)  # queries, before, after, feedback_before/after
    seconds: dict[str, float] = field(default_factory=dict)
    outcome: str = "rejected"  # published or rejected
    index_generation: int = 0  # the index it was trained on (the nightly run trains again when it changes)
    version: str | None = None
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def verdict(self) -> str:
        """One line: published (which version) or not kept, and why."""
        return f"{f'published {self.version}' if self.version else 'not kept'}: {'; '.join(self.reasons)}"


def _heldout(example: Example) -> bool:
    digest = hashlib.sha256(f"{example.origin}\0{example.query}".encode()).digest()
    return digest[0] < 256 * HELDOUT_SHARE


def build_groups(index: Index, examples: list[Example], progress: Progress | None = None):
    """(groups, left_out): each example searched as serving searches it; reasons for those left out."""
    config = index.config
    left_out: Counter[str] = Counter()
    groups = []
    seen = set()
    for n, example in enumerate(examples, 1):
        key = (example.query.strip().lower(), example.positive)
        if key in seen:
            left_out["the same query and passage twice"] += 1
            continue
        seen.add(key)
        hits = search(index, example.query, k=config.rerank_candidates, rerank=False)
        candidates = [h.chunk.id for h in hits]
        if example.positive not in candidates:
            left_out[f"its passage is not in the fused top {config.rerank_candidates}"] += 1
            continue
        texts = {h.chunk.id: h.chunk.indexed_text for h in hits}
        flagged = [c for c in example.negatives if c not in texts]
        texts.update({cid: row.indexed_text for cid, row in index.catalog.chunks(flagged).items()})
        groups.append(Group(example, candidates, texts, {h.chunk.id: h.score for h in hits}))
        if progress:
            progress("searching", n, len(examples))
    return groups, dict(left_out)


def _rank(order: list[int], positive: int) -> int | None:
    return order.index(positive) + 1 if positive in order else None


def measure(groups: list[Group], scorer=None) -> Ranking:
    """How high each group's passage ranks: in the fused order (scorer None) or reordered by `scorer`."""
    if not groups:
        return Ranking()
    mrr = ndcg = 0.0
    for g in groups:
        order = g.candidates
        if scorer is not None:
            scores = rerank_scores(scorer, g.example.query, [g.texts[c] for c in order], g.fused_of(order))
            order = [c for _, c in sorted(zip(scores, order, strict=True), key=lambda t: -t[0])]
        rank = _rank(order, g.example.positive)
        if rank is not None and rank <= 10:
            mrr += 1 / rank
            ndcg += 1 / math.log2(rank + 1)
    return Ranking(round(mrr / len(groups), 4), round(ndcg / len(groups), 4), len(groups))


def fit(
    groups: list[Group],
    init: Path,
    out: Path,
    epochs: int,
    layers: int,
    pair_tokens: int,
    progress: Progress | None = None,
    seed: int = 0,
) -> None:
    """Fine-tune a cross-encoder from the first `layers` layers of the embedder folder `init` on `groups`
    (softmax over each query's passage and its hard negatives, each scored as its correction plus the
    weighted fused score; pairs cut at `pair_tokens`) and save it, with its tokenizer, its `fused_weight`
    and its pair length (SETTINGS_FILE, which serving reads), as a transformers folder `out`."""
    import torch
    from transformers import AutoModelForSequenceClassification, get_linear_schedule_with_warmup

    from retrieval.embedder import offline, quiet_transformers

    offline()
    quiet_transformers()
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(str(init), num_labels=1, local_files_only=True)
    _keep_layers(model, layers)
    torch.nn.init.zeros_(model.classifier.weight)  # no correction yet: the fused order
    torch.nn.init.zeros_(model.classifier.bias)
    weight = torch.nn.Parameter(torch.tensor(FUSED_WEIGHT_INIT))
    tok = pair_tokenizer(init, padded=True, max_tokens=pair_tokens)
    steps = epochs * math.ceil(len(groups) / BATCH_QUERIES)
    # the score head and the fused weight learn at HEAD_LEARNING_RATE, the pretrained body at LEARNING_RATE
    head = [weight] + [p for n, p in model.named_parameters() if n.startswith("classifier.")]
    body = [p for n, p in model.named_parameters() if not n.startswith("classifier.")]
    optimizer = torch.optim.AdamW(
        [{"params": body, "lr": LEARNING_RATE}, {"params": head, "lr": HEAD_LEARNING_RATE}], weight_decay=0.01
    )
    schedule = get_linear_schedule_with_warmup(optimizer, max(1, steps // 10), steps)
    rng = random.Random(seed)
    model.train()
    done = 0
    for _ in range(epochs):
        order = groups[:]
        rng.shuffle(order)
        for start in range(0, len(order), BATCH_QUERIES):
            batch = order[start : start + BATCH_QUERIES]
            pairs, sizes, fused = [], [], []
            for g in batch:
                passages = [g.example.positive, *g.negatives[:NEGATIVES]]
                pairs += [(g.example.query, g.texts[c]) for c in passages]
                fused += g.fused_of(passages)
                sizes.append(len(passages))
            enc = tok.encode_batch(pairs)
            inputs = {
                "input_ids": torch.tensor([e.ids for e in enc]),
                "attention_mask": torch.tensor([e.attention_mask for e in enc]),
                "token_type_ids": torch.tensor([e.type_ids for e in enc]),
            }
            logits = model(**inputs).logits.view(-1) + weight * torch.tensor(fused)
            loss = torch.stack(
                [
                    torch.nn.functional.cross_entropy(part.unsqueeze(0), torch.zeros(1, dtype=torch.long))
                    for part in torch.split(logits, sizes)
                ]
            ).mean()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
            done += 1
            if progress:
                progress("training", done, steps)
    model.eval()
    model.save_pretrained(str(out))
    settings = {"fused_weight": weight.item(), "max_tokens": pair_tokens}
    (out / SETTINGS_FILE).write_text(json.dumps(settings), encoding="utf-8")
    for name in TOKENIZER_FILES:
        if (init / name).is_file():
            shutil.copy2(init / name, out / name)


def _keep_layers(model, layers: int) -> None:
    """Keep the first `layers` transformer layers of a BERT-style `model` (fewer: a faster reranker)."""
    encoder = model.base_model.encoder
    if layers < len(encoder.layer):
        encoder.layer = encoder.layer[:layers]
        model.config.num_hidden_layers = layers


def _verdict(report: RerankerReport, min_gain: float) -> bool:
    held = report.heldout
    gain = held["after"]["mrr"] - held["before"]["mrr"]
    ok = True
    if gain < min_gain:
        report.reasons.append(
            f"held-out MRR@10 {held['before']['mrr']:.3f} -> {held['after']['mrr']:.3f}: a gain under "
            f"reranker_min_gain {min_gain}"
        )
        ok = False
    fb_before, fb_after = held.get("feedback_before"), held.get("feedback_after")
    if fb_before and fb_after and fb_after["mrr"] < fb_before["mrr"]:
        report.reasons.append(
            f"held-out feedback queries rank worse: MRR@10 {fb_before['mrr']:.3f} -> {fb_after['mrr']:.3f}"
        )
        ok = False
    if ok:
        before, after = held["before"], held["after"]
        report.reasons.append(
            f"held-out MRR@10 {before['mrr']:.3f} -> {after['mrr']:.3f} "
            f"(nDCG@10 {before['ndcg']:.3f} -> {after['ndcg']:.3f}, {held['queries']} queries)"
        )
    return ok


def train_reranker(
    index: Index,
    examples: list[Example],
    left_out: dict[str, int] | None = None,
    progress: Progress | None = None,
) -> RerankerReport:
    """Train, judge and (when it beats what serves) publish a reranker for `index`; `left_out` counts the
    examples the caller could not make, by reason."""
    report = RerankerReport(dict(Counter(e.origin for e in examples)), dict(left_out or {}))
    report.index_generation = index.catalog.generation()
    _train(index, examples, report, progress)
    RerankerVersions(index.folder).record_run(report.to_dict())
    return report


def _train(index: Index, examples: list[Example], report: RerankerReport, progress: Progress | None) -> None:
    from retrieval.onnx_embedder import export

    config = index.config
    started = time.perf_counter()
    groups, dropped = build_groups(index, examples, progress)
    for reason, n in dropped.items():
        report.left_out[reason] = report.left_out.get(reason, 0) + n
    train = [g for g in groups if not _heldout(g.example)]
    heldout = [g for g in groups if _heldout(g.example)]
    report.train_queries = len(train)
    report.seconds["search"] = round(time.perf_counter() - started, 1)
    if len(train) < MIN_TRAIN_QUERIES or len(heldout) < MIN_HELDOUT_QUERIES:
        report.reasons.append(
            f"{len(train)} training and {len(heldout)} held-out queries: it needs at least "
            f"{MIN_TRAIN_QUERIES} and {MIN_HELDOUT_QUERIES} (ask for more queries, or index more documents)"
        )
        return

    versions = RerankerVersions(index.folder)
    staged = versions.staging()
    try:
        clock = time.perf_counter()
        fit(
            train,
            Path(config.embedder_path()),
            staged / "model",
            config.reranker_epochs,
            config.reranker_layers,
            config.reranker_pair_tokens,
            progress,
        )
        report.seconds["train"] = round(time.perf_counter() - clock, 1)
        clock = time.perf_counter()
        export(staged / "model", staged / ONNX_FILE, quantized=True, output="logits")
        report.seconds["export"] = round(time.perf_counter() - clock, 1)
        clock = time.perf_counter()
        current = versions.current()
        served = OnnxCrossEncoder(current) if current else None
        candidate = OnnxCrossEncoder(RerankerVersion("candidate", staged, {}))
        feedback = [g for g in heldout if g.example.origin == "feedback"]
        report.heldout = {
            "queries": len(heldout),
            "served": current.name if current else "fused",
            "before": asdict(measure(heldout, served)),
            "after": asdict(measure(heldout, candidate)),
        }
        if feedback:
            report.heldout["feedback_before"] = asdict(measure(feedback, served))
            report.heldout["feedback_after"] = asdict(measure(feedback, candidate))
        report.seconds["judge"] = round(time.perf_counter() - clock, 1)
        report.seconds["total"] = round(time.perf_counter() - started, 1)
        if _verdict(report, config.reranker_min_gain):
            report.outcome = "published"
            report.version = versions.publish(staged, report.to_dict()).name
    finally:
        shutil.rmtree(staged, ignore_errors=True)  # a published candidate was moved away already


def sample_chunks(index: Index, n: int, seed: int = 0) -> list[int]:
    """Up to `n` live chunk ids, drawn evenly from the whole index."""
    if index.is_empty():
        raise RetrievalError("no documents are indexed yet: add some with `nightjar index PATH`")
    docs = index.catalog.live_docs()
    ids = [int(c) for c in index.catalog.chunk_ids_of([d.id for d in docs.values()])]
    random.Random(seed).shuffle(ids)
    return sorted(ids[:n])
