"""Serving speed: Nightjar's engine against raw `llama_cpp.Llama` on the same GGUF, settings and prompts.

Prints prompt-processing and generation tokens/s for both, measured interleaved in the same run, and the ratio
(target: >= 0.95 for both).

    python benchmarks/serve.py [--model PATH.gguf] [--rounds 5] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time

from llama_cpp import Llama

from assistant.engine import GenParams, LlamaCppEngine, default_threads
from assistant.modelfile import embedded_llm_path

SYSTEM = "You are a helpful assistant. Answer briefly and accurately."
LONG = " ".join(
    f"Paragraph {i}: nightjars are nocturnal birds that hunt insects at dusk and rest on the ground by day."
    for i in range(30)
)


def raw_run(llm: Llama, prompt: str, max_tokens: int) -> tuple[int, int, float]:
    """(prompt tokens, generated tokens, seconds) for one streamed completion with the raw API."""
    tokens = llm.tokenize(prompt.encode(), add_bos=False, special=True)
    llm.reset()  # no prefix cache: every run processes the whole prompt
    start = time.perf_counter()
    n = sum(1 for _ in llm.create_completion(tokens, max_tokens=max_tokens, temperature=0.0, stream=True))
    return len(tokens), n, time.perf_counter() - start


def engine_run(engine: LlamaCppEngine, prompt: str, max_tokens: int) -> tuple[int, int, float]:
    engine.llm.reset()
    start = time.perf_counter()
    generation = engine.generate(prompt, GenParams(max_tokens=max_tokens))
    n = sum(1 for _ in generation)
    return generation.result().prompt_tokens, n, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=str(embedded_llm_path()))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=default_threads())
    parser.add_argument("--n-ctx", type=int, default=2048)
    args = parser.parse_args()

    raw = Llama(model_path=args.model, n_ctx=args.n_ctx, n_threads=args.threads, verbose=False)
    engine = LlamaCppEngine(args.model, n_ctx=args.n_ctx, n_threads=args.threads)
    pp_prompt = engine.render([{"role": "system", "content": SYSTEM}, {"role": "user", "content": LONG}])
    gen_prompt = engine.render(
        [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": "Tell me a long story about a fox."},
        ]
    )

    rates: dict[str, dict[str, list[float]]] = {
        "raw": {"pp": [], "gen": []},
        "nightjar": {"pp": [], "gen": []},
    }
    for _ in range(args.rounds):  # interleaved so machine load hits both alike
        for name, run in (
            ("raw", lambda p, m: raw_run(raw, p, m)),
            ("nightjar", lambda p, m: engine_run(engine, p, m)),
        ):
            n_prompt, _, seconds = run(pp_prompt, 1)
            rates[name]["pp"].append(n_prompt / seconds)
            _, n_gen, seconds_pp = run(gen_prompt, 1)
            _, n_gen, seconds = run(gen_prompt, 128)
            # generation rate: tokens after the first, over the time after prompt processing
            rates[name]["gen"].append((n_gen - 1) / max(seconds - seconds_pp, 1e-6))

    print(f"model {args.model}\nthreads {args.threads}, n_ctx {args.n_ctx}, rounds {args.rounds} (median)")
    print(f"{'':10}{'prompt tok/s':>14}{'gen tok/s':>12}")
    med = {n: {k: statistics.median(v) for k, v in r.items()} for n, r in rates.items()}
    for name in ("raw", "nightjar"):
        print(f"{name:10}{med[name]['pp']:14.1f}{med[name]['gen']:12.1f}")
    pp_ratio = med["nightjar"]["pp"] / med["raw"]["pp"]
    gen_ratio = med["nightjar"]["gen"] / med["raw"]["gen"]
    print(f"{'ratio':10}{pp_ratio:14.3f}{gen_ratio:12.3f}   (target >= 0.95)")


if __name__ == "__main__":
    main()
