"""A randomly initialised GGUF with the shape of a real base model, for measuring what a night of training
costs at that size where the real file cannot be downloaded (this machine has no model hub).

The weights are random (its answers are noise), so only the figures it gives are meaningful: seconds and
peak RAM per stage of `benchmarks/train_bench.py --model`. The tokenizer is the embedded SmolLM2's (49152
tokens; Qwen2.5's own has 151936, which adds 0.36 GB of float32 embeddings at 1.5B), written with the tests'
own GGUF writer (tests/tiny_models.py) and quantized by llama.cpp like a downloaded file.

    python benchmarks/synthetic_base.py qwen2.5-1.5b ~/models/synthetic-qwen2.5-1.5b-q4_k_m.gguf
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHAPES = {  # the published configs' sizes
    "qwen2.5-0.5b": {"hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
                     "num_attention_heads": 14, "num_key_value_heads": 2},
    "qwen2.5-1.5b": {"hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
                     "num_attention_heads": 12, "num_key_value_heads": 2},
    "qwen2.5-3b": {"hidden_size": 2048, "intermediate_size": 11008, "num_hidden_layers": 36,
                   "num_attention_heads": 16, "num_key_value_heads": 2},
}  # fmt: skip


def build(shape: str, out: Path, qtype: str) -> Path:
    import torch
    import transformers

    sys.path.insert(0, str(ROOT))
    from assistant.modelfile import embedded_llm_path
    from tests.tiny_models import Vocabulary, write_gguf
    from trainer.quantize import quantize

    vocabulary = Vocabulary.of(embedded_llm_path())
    config = transformers.Qwen2Config(
        vocab_size=vocabulary.size,
        max_position_embeddings=32768,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        bos_token_id=vocabulary.bos,
        eos_token_id=vocabulary.eos,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        **SHAPES[shape],
    )
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    params = sum(p.numel() for p in model.parameters())
    print(f"{shape}: {params / 1e9:.2f} B parameters", flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        f32 = write_gguf(model, "qwen2", Path(tmp) / "f32.gguf", vocabulary)
        del model
        quantize(f32, out, qtype)
    print(f"wrote {out} ({out.stat().st_size / 2**30:.2f} GiB, {qtype})")
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("shape", choices=sorted(SHAPES))
    parser.add_argument("out", type=Path)
    parser.add_argument("--type", default="Q4_K_M", help="llama.cpp quantization type (default Q4_K_M)")
    args = parser.parse_args()
    build(args.shape, args.out.expanduser(), args.type)
