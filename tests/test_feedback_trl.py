"""Exported rows as TRL takes them: loaded with `datasets`, prepared by TRL's trainers with the served model's
tokenizer (from the GGUF), and the prompt a trainer tokenizes is exactly the prompt llama.cpp served."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from assistant import config as config_mod
from assistant.engine import LlamaCppEngine
from assistant.feedback import ReplayBuffer
from tests import hh_sample
from tests.test_feedback_store import make_answer


@pytest.fixture(scope="module")
def tokenizer(model_path: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_path.parent), gguf_file=model_path.name)


def _served(buf: ReplayBuffer, engine: LlamaCppEngine, question: str, text: str) -> str:
    """Record an answer whose prompt is the one llama.cpp rendered for the embedded model."""
    answer = make_answer(question, text)
    answer.prompt = engine.render(answer.messages)
    return buf.store.record(answer.to_dict())


def _tiny_model(tokenizer):
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=4096,
    )
    return AutoModelForCausalLM.from_config(config)


def test_exports_round_trip_and_feed_trl_trainers(tmp_path: Path, engine: LlamaCppEngine, tokenizer):
    from datasets import load_dataset
    from trl import DPOConfig, DPOTrainer, KTOConfig, KTOTrainer, SFTConfig, SFTTrainer

    config = config_mod.load(tmp_path / "home", environ={})
    with ReplayBuffer(config) as buf:
        fixed = _served(buf, engine, "When is the meeting?", "Monday.")
        buf.store.correct(fixed, "It moved to Tuesday.")
        liked = _served(buf, engine, "Who leads the meeting?", "Ana does.")
        buf.store.rate(liked, up=True)
        disliked = _served(buf, engine, "Where is the meeting?", "Somewhere.")
        buf.store.rate(disliked, up=False)
        report = buf.import_file(hh_sample.write(tmp_path / "hh.jsonl", 20), "hh-rlhf", limit=8)
        assert report.added == 8 and not report.bad
        buf.add_kto("Is the sky green?", "Yes, always.", False)
        buf.add_sft([{"role": "user", "content": "Say hi."}], "Hi!")
        files = {kind: tmp_path / f"{kind}.jsonl" for kind in ("dpo", "kto", "sft")}
        counts = {kind: buf.export(kind, path) for kind, path in files.items()}
        served = {i.id: i.prompt for i in buf.store.recent(limit=-1)}
    assert counts == {"dpo": 9, "kto": 3, "sft": 3}

    # round trip: importing the exports elsewhere and exporting again gives the same rows, ids included
    other = config_mod.load(tmp_path / "other", environ={})
    with ReplayBuffer(other) as again:
        for kind, path in files.items():
            assert again.import_file(path).added == counts[kind]
            again.export(kind, tmp_path / f"again-{kind}.jsonl")
    for kind, path in files.items():
        first = sorted(path.read_text().splitlines())
        assert sorted((tmp_path / f"again-{kind}.jsonl").read_text().splitlines()) == first

    data = {
        kind: load_dataset("json", data_files=str(path), split="train", cache_dir=str(tmp_path / "cache"))
        for kind, path in files.items()
    }
    common = {
        "output_dir": str(tmp_path / "out"),
        "report_to": [],
        "use_cpu": True,
        "bf16": False,
        "max_length": 1024,
    }
    decode = tokenizer.decode
    served_prompts = set(served.values())

    dpo = DPOTrainer(
        model=_tiny_model(tokenizer),
        ref_model=_tiny_model(tokenizer),
        args=DPOConfig(**common),
        train_dataset=data["dpo"],
        processing_class=tokenizer,
    ).train_dataset
    assert len(dpo) == 9
    ours = [r for r in dpo if decode(r["prompt_ids"]) in served_prompts]
    assert len(ours) == 1  # the correction; its prompt tokens are exactly what llama.cpp served
    assert decode(ours[0]["prompt_ids"]) == served[fixed]
    assert decode(ours[0]["chosen_ids"]) == "It moved to Tuesday.<|im_end|>\n"
    assert decode(ours[0]["rejected_ids"]) == "Monday.<|im_end|>\n"
    assert all(r["chosen_ids"] != r["rejected_ids"] for r in dpo)

    kto = KTOTrainer(
        model=_tiny_model(tokenizer),
        ref_model=_tiny_model(tokenizer),
        args=KTOConfig(**common),
        train_dataset=data["kto"],
        processing_class=tokenizer,
    ).train_dataset
    by_prompt = {decode(r["prompt_ids"]): (decode(r["completion_ids"]), r["label"]) for r in kto}
    assert by_prompt[served[liked]] == ("Ana does.<|im_end|>\n", True)
    assert by_prompt[served[disliked]] == ("Somewhere.<|im_end|>\n", False)
    assert sorted(label for _, label in by_prompt.values()) == [False, False, True]

    sft = SFTTrainer(
        model=_tiny_model(tokenizer),
        args=SFTConfig(**common),
        train_dataset=data["sft"],
        processing_class=tokenizer,
    ).train_dataset
    texts = {decode(r["input_ids"]) for r in sft}
    assert served[fixed] + "It moved to Tuesday.<|im_end|>\n" in texts
    assert served[liked] + "Ana does.<|im_end|>\n" in texts
    for r in sft:  # the loss is on the completion only: the prompt is masked
        trained = [t for t, label in zip(r["input_ids"], r["labels"], strict=True) if label != -100]
        assert decode(trained).endswith("<|im_end|>\n") and "<|im_start|>user" not in decode(trained)


def test_hh_rlhf_conversion(tmp_path: Path, config: config_mod.Config):
    sample = hh_sample.write(tmp_path / "sample.jsonl", 60, broken=True)
    lines = sample.read_text(encoding="utf-8").splitlines()
    with ReplayBuffer(config) as buf:
        report = buf.import_file(sample, "hh-rlhf")
        rows = buf.rows("dpo", "train") + buf.rows("dpo", "holdout")
    assert report.added == 60 and len(report.bad) == len(hh_sample.broken_rows())
    assert len(rows) == report.added
    for row in rows:
        roles = [m["role"] for m in row["prompt"]]
        assert roles[0] == "user" and roles[-1] == "user"
        assert all(a != b for a, b in zip(roles, roles[1:], strict=False))
        assert row["chosen"] != row["rejected"]
    first = json.loads(lines[0])
    (row,) = [r for r in rows if first["rejected"].endswith(r["rejected"][0]["content"])]
    transcript = "".join(
        f"\n\n{'Human' if m['role'] == 'user' else 'Assistant'}: {m['content']}"
        for m in row["prompt"] + row["chosen"]
    )
    assert transcript == first["chosen"]
