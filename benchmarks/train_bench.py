"""A nightly training run, timed: seconds and peak RAM per stage, training tokens/s, held-out accuracy.

Seeds a fresh Nightjar home with N pairs from Anthropic HH-RLHF (harmless-base test, ../shared/data) and runs
`nightjar train` (DPO, the default settings unless overridden) on the default model, for each N. The training
throughput is compared with a baseline measured in the same run: plain forward + backward passes of the same
float model in PyTorch over the same number of tokens (the ceiling a trainer could reach on this CPU).

With --grounded N, the night is N grounded questions instead, made the way a user makes them: the PubMedQA
abstracts (../shared/data/pubmedqa) are indexed as documents, each question is asked with `Assistant.answer`
(retrieval on: prompts of about 700 tokens with their numbered sources) and corrected with the expert's long
answer (`Assistant.correct`), and `nightjar train` runs with the default objective (auto).

    python benchmarks/train_bench.py [--pairs 200 1000] [--max-steps N] [--set key=value ...]
    python benchmarks/train_bench.py --grounded 200
    python benchmarks/train_bench.py --model ~/models/qwen2.5-1.5b-instruct-q4_k_m.gguf --pairs 200

--model trains that GGUF as the base (`model.base`) instead of the embedded 135M model: the peak RAM per
stage is what a night of that size needs.

--max-steps caps the optimiser steps of a size (its full-run training time is then extrapolated, and said so).
Targets on a 2-core machine, all stages included: a 200-pair night under 15 minutes, a 200-row grounded
night under 20.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

HH = (
    Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "hh-rlhf-harmless-test" / "test.jsonl"
)
PUBMEDQA = HH.parent.parent / "pubmedqa" / "ori_pqal.json"
TARGET_S = 15 * 60
GROUNDED_TARGET_S = 20 * 60
OUT = Path(__file__).resolve().parent / "out" / "train_bench"


def seed_pairs(config, pairs: int) -> int:
    from assistant.feedback import ReplayBuffer

    with ReplayBuffer(config) as buf:
        return buf.import_file(HH, "hh-rlhf", limit=pairs).added


def seed_grounded(config, questions: int) -> int:
    """Index the PubMedQA abstracts, ask `questions` of their questions, correct each answer; the number of
    grounded interactions recorded."""
    from assistant.engine import GenParams
    from assistant.service import Assistant

    items = list(json.loads(PUBMEDQA.read_text(encoding="utf-8")).items())
    docs = config.home / "abstracts"
    docs.mkdir()
    for pmid, item in items:
        text = "\n\n".join(item["CONTEXTS"])
        (docs / f"{pmid}.txt").write_text(f"{item['QUESTION']}\n\n{text}\n", encoding="utf-8")
    assistant = Assistant(config)
    report = assistant.index([docs])
    print(f"indexed {len(report.indexed)} abstracts ({report.chunks} chunks)", flush=True)
    params = GenParams(max_tokens=24)
    grounded = 0
    for n, (_, item) in enumerate(items[:questions]):
        answer = assistant.answer(item["QUESTION"], params=params)
        grounded += bool(answer.sources)
        assistant.correct(
            answer.interaction_id, f"{item['final_decision'].capitalize()}. {item['LONG_ANSWER']}"
        )
        if (n + 1) % 25 == 0:
            print(f"asked and corrected {n + 1} questions", flush=True)
    assistant.feedback_store.close()
    return grounded


def seed_grounded_cached(config, questions: int, fresh: bool) -> int:
    """`seed_grounded`, its home kept in OUT (seeding is not part of the night, and takes ~15 min): a later
    run starts from the same seeded home unless `fresh` (--reseed)."""
    kept = OUT / f"seeded-{questions}"
    if kept.is_dir() and not fresh:
        shutil.rmtree(config.home, ignore_errors=True)
        shutil.copytree(kept, config.home)
        print(f"seeded home reused from {kept} (--reseed to ask the questions again)", flush=True)
        return int((kept / "grounded.txt").read_text())
    grounded = seed_grounded(config, questions)
    (config.home / "grounded.txt").write_text(f"{grounded}\n")
    shutil.rmtree(kept, ignore_errors=True)
    shutil.copytree(config.home, kept)
    return grounded


def run_size(
    pairs: int, overrides: dict[str, str], master_cache: Path, grounded: bool = False, fresh: bool = False
) -> dict:
    from assistant import config as config_mod
    from trainer import data
    from trainer.run import train

    if grounded:  # a fixed place: a kept seeded home (seed_grounded_cached) is restored where it was made
        home = OUT / f"grounded-{pairs}"
        shutil.rmtree(home, ignore_errors=True)
        home.mkdir(parents=True)
    else:
        home = Path(tempfile.mkdtemp(prefix=f"nightjar-bench-{pairs}-"))
    try:
        config = config_mod.load(home, {**overrides, "train.min_new_rows": 1}, environ={})
        added = seed_grounded_cached(config, pairs, fresh) if grounded else seed_pairs(config, pairs)
        if master_cache.exists():  # the master is made once per base model: not part of a nightly run
            shutil.copytree(master_cache, config.models_dir / "masters")
        batch = data.read(config)
        tokens = _train_tokens(config, batch.train_rows("dpo"))
        start = time.perf_counter()
        result = train(config)
        total = time.perf_counter() - start
        if not master_cache.exists():
            shutil.copytree(config.models_dir / "masters", master_cache)
        record = json.loads((result.report_dir / "report.json").read_text())
        kept = OUT / f"{pairs}-pairs"  # the run's report and plots, kept beside the printed figures
        shutil.rmtree(kept, ignore_errors=True)
        shutil.copytree(result.report_dir, kept)
        steps = [h for h in record["training"].get("dpo", []) if "loss" in h]
        return {
            "pairs": added,
            "grounded": grounded,
            "training": record["training"],
            "checks": record["checks"],
            "outcome": result.outcome,
            "reasons": result.reasons,
            "stages": record["stages"],
            "total_s": total,
            "steps": len(steps),
            "tokens": tokens,
            "before": record["before"],
            "after": record["after"],
            "rows": record["rows"],
        }
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _train_tokens(config, rows) -> int:
    """Tokens a DPO epoch processes: prompt + chosen and prompt + rejected, cut at max_length."""
    from transformers import AutoTokenizer

    from assistant.registry import base_model_path

    base = base_model_path(config)
    tok = AutoTokenizer.from_pretrained(base.parent, gguf_file=base.name)
    limit = config.train.max_length
    n = 0
    for r in rows:
        for side in ("chosen", "rejected"):
            ids = tok.apply_chat_template(r["prompt"] + r[side], tokenize=True, return_dict=True)["input_ids"]
            n += min(len(ids), limit)
    return n * config.train.epochs


def baseline_tokens_per_s(master: Path, seq_len: int, batch: int = 4, rounds: int = 3) -> float:
    """Plain PyTorch forward + backward of the float model: tokens per second."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(master, dtype=torch.float32)
    x = torch.randint(0, model.config.vocab_size, (batch, seq_len))
    model(input_ids=x[:1, :8]).logits.sum().backward()  # warm-up
    start = time.perf_counter()
    for _ in range(rounds):
        model.zero_grad()
        model(input_ids=x, labels=x).loss.backward()
    return rounds * batch * seq_len / (time.perf_counter() - start)


def print_stages(stages: dict) -> None:
    print(f"{'stage':<10}{'seconds':>10}{'peak RAM MiB':>14}")
    for name, s in stages.items():
        print(f"{name:<10}{s['seconds']:>10.1f}{s['peak_rss_mib']:>14.0f}")


def print_grounded(r: dict) -> None:
    """A grounded night: stages, rows given/trained/shortened per objective, held-out figures."""
    print(f"\n== {r['pairs']} grounded questions corrected: {r['outcome']} ({'; '.join(r['reasons'])})")
    print_stages(r["stages"])
    total = r["total_s"]
    print(f"total {total:.0f} s (target < {GROUNDED_TARGET_S} s: ratio {total / GROUNDED_TARGET_S:.2f})")
    for name, history in r["training"].items():
        for counts in (h["rows"] for h in history if "rows" in h):
            print(f"rows ({name}): {json.dumps(counts)}")
    b, a = r["before"], r["after"]
    for key in ("dpo_accuracy", "dpo_margin", "sft_logprob", "perplexity"):
        print(f"held-out {key}: {b[key]} -> {a[key]}")
    for check in r["checks"]:
        print(f"gate: {'pass' if check['passed'] else 'FAIL'}: {check['name']}: {check['detail']}")


def main() -> None:
    from assistant.config import TrainConfig

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pairs", type=int, nargs="+", default=[200, 1000])
    parser.add_argument("--max-steps", type=int, default=0, help="cap optimiser steps (time is extrapolated)")
    parser.add_argument("--model", metavar="GGUF", help="the base model to train (default: the embedded one)")
    parser.add_argument(
        "--grounded",
        type=int,
        metavar="N",
        help="a night of N grounded, corrected questions",
    )
    parser.add_argument("--reseed", action="store_true", help="--grounded: ask the questions again")
    parser.add_argument(
        "--set",
        dest="settings",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a [train] setting for the runs, e.g. --set epochs=1",
    )
    args = parser.parse_args()
    overrides = {f"train.{k}": v for k, v in (s.split("=", 1) for s in args.settings)}
    if args.max_steps:
        overrides["train.max_steps"] = str(args.max_steps)
    if args.model:
        overrides["model.base"] = str(Path(args.model).expanduser().resolve())

    cache = Path(tempfile.mkdtemp(prefix="nightjar-bench-master-")) / "masters"
    results = []
    try:
        for n in [args.grounded] if args.grounded else args.pairs:
            print(f"running {n} {'grounded questions' if args.grounded else 'pairs'} ...", flush=True)
            results.append(run_size(n, overrides, cache, bool(args.grounded), args.reseed))
        master = next(cache.iterdir())
        base_tps = baseline_tokens_per_s(master, seq_len=256, rounds=1 if args.model else 3)
    finally:
        shutil.rmtree(cache.parent, ignore_errors=True)

    print(f"\nbaseline: plain PyTorch forward+backward of the float model: {base_tps:.0f} tokens/s")
    for r in results:
        if r["grounded"]:
            print_grounded(r)
            continue
        st = r["stages"]
        train_s = st["train"]["seconds"]
        full_steps = None
        if args.max_steps and r["steps"]:
            rows = r["rows"]["dpo"]["new"] + r["rows"]["dpo"]["replay"]
            defaults = TrainConfig()
            batch = int(overrides.get("train.batch_size", defaults.batch_size))
            epochs = int(overrides.get("train.epochs", defaults.epochs))
            full_steps = -(-rows // batch) * epochs
            trained_tokens = r["tokens"] * r["steps"] / full_steps
        else:
            trained_tokens = r["tokens"]
        tps = trained_tokens / train_s
        print(f"\n== {r['pairs']} pairs: {r['outcome']} ({'; '.join(r['reasons'])})")
        print_stages(st)
        total = r["total_s"]
        if full_steps and full_steps > r["steps"]:
            extra = train_s * (full_steps / r["steps"] - 1)
            print(
                f"training ran {r['steps']} of {full_steps} steps: a full run adds ~{extra:.0f} s of training"
            )
            total += extra
        print(f"total {total:.0f} s (target < {TARGET_S} s for 200 pairs: ratio {total / TARGET_S:.2f})")
        print(
            f"training: {tps:.0f} tokens/s = {tps / base_tps:.2f} x the plain PyTorch baseline "
            "(DPO does 2 sequences x (forward+backward) + a reference forward per pair)"
        )
        b, a = r["before"], r["after"]
        print(
            f"held-out preference accuracy {b['dpo_accuracy']} -> {a['dpo_accuracy']} "
            f"(margin {b['dpo_margin']} -> {a['dpo_margin']}, {a['dpo_pairs']} pairs); "
            f"reference perplexity {b['perplexity']:.2f} -> {a['perplexity']:.2f}"
        )


if __name__ == "__main__":
    main()
