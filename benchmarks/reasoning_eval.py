"""Accuracy and cost of the reasoning strategies: GSM8K word problems, and multi-hop questions over documents.

Every strategy answers the same questions through Nightjar's own answer API (`Assistant.answer`) with the
given GGUF; `direct` always runs too, as the baseline each strategy's cost is compared with (same run, same
machine). Printed per strategy: accuracy, tokens (prompt + completion, summed over all its model calls) and
seconds per question, and the ratios to `direct`.

    python benchmarks/reasoning_eval.py --model PATH.gguf --strategy cot --strategy tot --limit 20
    python benchmarks/reasoning_eval.py --set multihop --strategy react --strategy direct
    python benchmarks/reasoning_eval.py --strategy all --limit 5 --out benchmarks/out/reasoning.jsonl

`--set gsm8k` reads `../shared/data/gsm8k-dev200/test_first200.jsonl` (answers end in `#### N`; a prediction
is right when the last number of the answer equals N). `--set multihop` writes a few small documents whose
facts chain (A leads B, B works in C), indexes them with Nightjar's retrieval, and asks questions needing two
facts from two files; an answer is right when it contains the gold string, and `react` answers also report
whether their citations cover both files.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from assistant import config as config_mod
from assistant.config import STRATEGIES
from assistant.modelfile import embedded_llm_path
from assistant.reasoning.answers import number_in
from assistant.service import Assistant

ROOT = Path(__file__).resolve().parent.parent
GSM8K = ROOT.parent / "shared" / "data" / "gsm8k-dev200" / "test_first200.jsonl"

# Fictional facts, so the model cannot answer from what it learned in training: each question joins two files.
MULTIHOP_DOCS = {
    "projects.md": "# Projects\n\nProject Falcon is led by Dr. Mira Okafor. It builds weather drones.\n\n"
    "Project Heron is led by Tomas Lindqvist. It maps river deltas.\n\n"
    "Project Kestrel is led by Aiko Brandt and tests solar gliders.\n",
    "staff.md": "# Staff directory\n\nDr. Mira Okafor works in the Lisbon office.\n\n"
    "Tomas Lindqvist works in the Tromsø office.\n\nAiko Brandt works in the Valparaíso office.\n",
    "budgets.md": "# Budgets 2024\n\nThe Lisbon office spent 410 thousand euros.\n\n"
    "The Tromsø office spent 275 thousand euros.\n\nThe Valparaíso office spent 198 thousand euros.\n",
}
MULTIHOP_QUESTIONS = [
    ("In which office does the leader of Project Falcon work?", "Lisbon", {"projects.md", "staff.md"}),
    ("In which office does the leader of Project Heron work?", "Tromsø", {"projects.md", "staff.md"}),
    ("Where does the person who leads Project Kestrel work?", "Valparaíso", {"projects.md", "staff.md"}),
    ("How much did the office of Dr. Mira Okafor spend in 2024?", "410", {"staff.md", "budgets.md"}),
    ("How much did the office of Tomas Lindqvist spend in 2024?", "275", {"staff.md", "budgets.md"}),
    ("Which project does the person in the Valparaíso office lead?", "Kestrel", {"staff.md", "projects.md"}),
]


def gsm8k(limit: int) -> list[dict]:
    rows = [json.loads(line) for line in GSM8K.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [{"question": r["question"], "gold": r["answer"].split("####")[-1].strip()} for r in rows[:limit]]


def right(item: dict, text: str, kind: str) -> bool:
    if kind == "gsm8k":
        return number_in(text) == number_in(item["gold"])
    return item["gold"].lower() in text.lower()


def build_home(home: Path, kind: str, model: str, args: argparse.Namespace) -> config_mod.Config:
    overrides = {
        "model.path": model,
        "model.n_ctx": args.n_ctx,
        "model.n_threads": args.threads,
        "generation.max_tokens": args.max_tokens,
        "ask.retrieval": kind == "multihop",
        "reasoning.samples": args.samples,
        "reasoning.breadth": args.breadth,
        "reasoning.beam": args.beam,
        "reasoning.depth": args.depth,
        "reasoning.max_steps": args.max_steps,
        "reasoning.step_tokens": args.step_tokens,
    }
    config = config_mod.load(home, overrides, environ={})
    if kind == "multihop":
        from retrieval.index import Index
        from retrieval.indexer import update

        docs = home / "docs"
        docs.mkdir()
        for name, text in MULTIHOP_DOCS.items():
            (docs / name).write_text(text, encoding="utf-8")
        update(Index(config.index_dir, config.retrieval), [docs])
    return config


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", default=str(embedded_llm_path()), help="any GGUF (default: embedded SmolLM2)"
    )
    parser.add_argument("--strategy", action="append", choices=[*STRATEGIES, "all"], help="repeatable")
    parser.add_argument("--set", dest="kind", choices=["gsm8k", "multihop"], default="gsm8k")
    parser.add_argument("--limit", type=int, default=20, help="questions per strategy")
    parser.add_argument("--n-ctx", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=0, help="llama.cpp threads (0: one per core)")
    parser.add_argument("--max-tokens", type=int, default=256, help="longest direct answer")
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--breadth", type=int, default=3)
    parser.add_argument("--beam", type=int, default=2)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--max-steps", type=int, default=6)
    parser.add_argument("--step-tokens", type=int, default=320)
    parser.add_argument("--out", type=Path, help="also write one JSON line per answered question here")
    args = parser.parse_args()

    chosen = args.strategy or ["direct"]
    strategies = [s for s in STRATEGIES if s in chosen or "all" in chosen]
    strategies = ["direct", *[s for s in strategies if s != "direct"]]  # the baseline always runs, first
    if args.kind == "gsm8k":
        items = gsm8k(args.limit)
    else:
        items = [{"question": q, "gold": g, "files": f} for q, g, f in MULTIHOP_QUESTIONS[: args.limit]]

    out = args.out.open("a", encoding="utf-8") if args.out else None
    results: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="nightjar-reasoning-") as tmp:
        config = build_home(Path(tmp), args.kind, args.model, args)
        assistant = Assistant(config, record=False)
        print(f"model {args.model}, {args.kind}, {len(items)} questions, strategies {', '.join(strategies)}")
        for strategy in strategies:
            rows = results.setdefault(strategy, [])
            for i, item in enumerate(items):
                start = time.perf_counter()
                answer = assistant.answer(item["question"], strategy=strategy)
                row = {
                    "strategy": strategy,
                    "picked": answer.strategy,
                    "i": i,
                    "right": right(item, answer.text, args.kind),
                    "tokens": answer.prompt_tokens + answer.completion_tokens,
                    "completion_tokens": answer.completion_tokens,
                    "seconds": time.perf_counter() - start,
                    "answer": answer.text[:200],
                    "gold": item["gold"],
                }
                if args.kind == "multihop" and answer.strategy == "react":
                    cited = {Path(str(s.get("source", ""))).name for s in answer.sources}
                    row["cites_every_hop"] = item["files"] <= cited
                rows.append(row)
                if out:
                    out.write(json.dumps(row, ensure_ascii=False) + "\n")
                    out.flush()
                print(
                    f"  {strategy:16} #{i:<3} {'right' if row['right'] else 'wrong'}  {row['tokens']:6d} tok "
                    f"{row['seconds']:6.1f} s  {answer.text[:60]!r}",
                    flush=True,
                )
    if out:
        out.close()
    report(results)


def report(results: dict[str, list[dict]]) -> None:
    base = results["direct"]
    base_tokens = statistics.mean(r["tokens"] for r in base)
    base_seconds = statistics.mean(r["seconds"] for r in base)
    print(
        f"\n{'strategy':16} {'n':>3} {'accuracy':>8} {'tokens/q':>9} {'compl/q':>8} {'s/q':>7} "
        f"{'x tokens':>8} {'x time':>7}  cites every hop"
    )
    for strategy, rows in results.items():
        tokens = statistics.mean(r["tokens"] for r in rows)
        seconds = statistics.mean(r["seconds"] for r in rows)
        accuracy = sum(r["right"] for r in rows) / len(rows)
        hops = [r["cites_every_hop"] for r in rows if "cites_every_hop" in r]
        cover = f"{sum(hops)}/{len(hops)}" if hops else "-"
        print(
            f"{strategy:16} {len(rows):3d} {accuracy:8.2f} {tokens:9.0f} "
            f"{statistics.mean(r['completion_tokens'] for r in rows):8.0f} {seconds:7.1f} "
            f"{tokens / base_tokens:8.1f} {seconds / base_seconds:7.1f}  {cover}"
        )


if __name__ == "__main__":
    main()
