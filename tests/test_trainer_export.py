"""The model-file half of the trainer, through the real components: the embedded SmolLM2 GGUF dequantized
into a transformers master, exported back to GGUF with gguf, requantized and served by llama.cpp."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from assistant import config as config_mod
from assistant.engine import GenParams, LlamaCppEngine, chat
from assistant.errors import ModelFileError
from assistant.modelfile import read_info
from tests.conftest import ROOT
from trainer import master as master_mod
from trainer import perplexity as ppl
from trainer.export import export_gguf
from trainer.quantize import base_qtype, quantize

PROMPTS = ["What is the capital of France?", "Name three colours.", "Write one sentence about rain."]
TEXT = (ROOT / "data" / "reference.txt").read_text(encoding="utf-8")[:700]


@pytest.fixture(scope="module")
def train_home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("home")


@pytest.fixture(scope="module")
def master(train_home: Path, model_path: Path) -> Path:
    """The embedded model's master, built over what killed builds (atomic or not) would leave."""
    config = config_mod.load(train_home, environ={})
    root = config.models_dir / master_mod.MASTERS
    expected = root / f"{model_path.stem}-{master_mod.sha256(model_path)[:16]}"
    expected.mkdir(parents=True)
    (expected / "config.json").write_text("{}")
    (expected / "model.safetensors").write_bytes(b"\0" * 1000)
    stale = root / f".{expected.name}.999999999.tmp"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"\0" * 1000)
    assert not master_mod.is_complete(expected)

    path = master_mod.ensure_master(config, model_path)
    assert path == expected and master_mod.is_complete(path)
    assert [p.name for p in root.iterdir()] == [path.name]  # the leftovers are gone
    return path


def greedy(path: Path) -> list[str]:
    engine = LlamaCppEngine(path, n_ctx=512, n_threads=1)  # one thread runs best on a crowded machine
    params = GenParams(temperature=0.0, max_tokens=16)
    messages = [{"role": "system", "content": "Answer briefly."}]
    answers = [
        chat(engine, [*messages, {"role": "user", "content": p}], params).result().text for p in PROMPTS
    ]
    engine.llm.close()
    return answers


def test_master_is_reused_and_a_damaged_one_is_not(master: Path, train_home: Path, model_path: Path):
    config = config_mod.load(train_home, environ={})
    started = time.perf_counter()
    assert master_mod.ensure_master(config, model_path) == master
    assert time.perf_counter() - started < 10  # found, not rebuilt (a build dequantizes 272 tensors)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "master.json"):
        assert (master / name).is_file()
    damaged = train_home / "damaged"
    damaged.mkdir()
    for name in ("master.json", "config.json"):
        (damaged / name).write_bytes((master / name).read_bytes())
    assert not master_mod.is_complete(damaged)  # its weights are missing
    (damaged / "model.safetensors").write_bytes(b"\0" * 10)
    assert not master_mod.is_complete(damaged)  # truncated weights


def test_master_tokenizer_matches_llama_cpp(master: Path, engine):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(master)
    assert tokenizer(TEXT).input_ids == engine.tokenize(TEXT)
    messages = [{"role": "user", "content": "Hi there"}]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == engine.render(messages)


def test_unmodified_master_round_trips_to_the_same_model(master: Path, model_path: Path, tmp_path: Path):
    """(a) export the master as F32, requantize to the base's type: llama.cpp answers exactly as before."""
    import gguf

    f32 = export_gguf(master, model_path, tmp_path / "f32.gguf", "F32")
    qtype = base_qtype(model_path)
    assert qtype == "Q4_1"
    requantized = quantize(f32, tmp_path / "q.gguf", qtype)

    original, again = gguf.GGUFReader(model_path), gguf.GGUFReader(requantized)
    assert set(original.fields) == set(again.fields)
    for key in original.fields:  # every metadata value (tokenizer, chat template, file type) is the base's
        if not key.startswith("GGUF."):
            assert again.fields[key].contents() == original.fields[key].contents(), key
    tensors = {t.name: t for t in again.tensors}
    assert set(tensors) == {t.name for t in original.tensors}
    for t in original.tensors:  # dequantize + requantize is lossless here: the very same bytes
        assert tensors[t.name].tensor_type == t.tensor_type
        assert np.array_equal(np.asarray(tensors[t.name].data), np.asarray(t.data)), t.name

    before, after = greedy(model_path), greedy(requantized)
    assert all(len(answer.split()) >= 2 for answer in before)
    assert after == before


def test_lora_merged_model_agrees_with_its_gguf_in_llama_cpp(master, model_path, tmp_path, engine):
    """(b) a non-zero LoRA on every projection, merged, exported as F16: transformers and llama.cpp agree."""
    import gguf
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    ids = engine.llm.tokenize(TEXT.encode("utf-8"), add_bos=True)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(master, dtype=torch.float32).eval()
    with torch.no_grad():
        base_logits = model(torch.tensor([ids])).logits[0].numpy()
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=targets))
    lora_b = [p for name, p in peft_model.named_parameters() if "lora_B" in name]
    assert len(lora_b) == len(targets) * model.config.num_hidden_layers
    with torch.no_grad():
        for p in lora_b:
            p.normal_(std=0.05)
    merged = peft_model.merge_and_unload().eval()
    with torch.no_grad():
        hf_logits = merged(torch.tensor([ids])).logits[0].numpy()

    f16 = export_gguf(merged.state_dict(), model_path, tmp_path / "lora.gguf", "F16")
    llm = ppl.load(f16, n_ctx=512)
    assert llm.metadata["general.file_type"] == str(int(gguf.LlamaFileType.MOSTLY_F16))
    llama_logits = ppl.logits(llm, ids)
    llm.close()

    def agreement(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
        return float((a.argmax(1) == b.argmax(1)).mean()), float(np.corrcoef(a.ravel(), b.ravel())[0, 1])

    # the LoRA really changed the model, so the agreement below is not the base model agreeing with itself
    assert agreement(hf_logits, base_logits)[0] < 0.9
    top1, corr = agreement(llama_logits, hf_logits)
    assert top1 >= 0.98 and corr > 0.999, (top1, corr)

    # the perplexity canary through llama.cpp matches the perplexity transformers computes for the same model
    log_probs = torch.log_softmax(torch.from_numpy(hf_logits[:-1]).double(), dim=-1)
    hf_ppl = float(torch.exp(-log_probs[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].mean()))
    assert ppl.perplexity(f16, TEXT, n_ctx=512) == pytest.approx(hf_ppl, rel=0.005)


def test_bad_inputs_are_refused_with_clear_errors(model_path: Path, tmp_path: Path, config):
    import gguf

    mamba = tmp_path / "mamba.gguf"  # an architecture the round trip does not know
    writer = gguf.GGUFWriter(mamba, "mamba")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    writer.close()
    with pytest.raises(
        ModelFileError, match="cannot write back a 'mamba' model.*supported architectures: llama, qwen2"
    ):
        export_gguf({}, mamba, tmp_path / "out.gguf")
    with pytest.raises(ModelFileError, match="cannot write back a 'mamba' model"):
        master_mod.ensure_master(config, mamba)
    with pytest.raises(ModelFileError, match="unmerged LoRA"):
        export_gguf(
            {"model.layers.0.self_attn.q_proj.lora_A.default.weight": np.zeros(1)},
            model_path,
            tmp_path / "out.gguf",
        )
    with pytest.raises(ModelFileError, match="cannot export as Q4_0"):
        export_gguf({}, model_path, tmp_path / "out.gguf", "Q4_0")
    with pytest.raises(ModelFileError, match="unknown quantization type 'Q9_9'; choose one of .*Q4_K_M"):
        quantize(model_path, tmp_path / "out.gguf", "Q9_9")
    with pytest.raises(ModelFileError, match="the model's tensors do not match its base GGUF"):
        export_gguf({"model.norm.weight": np.ones(576, dtype=np.float32)}, model_path, tmp_path / "out.gguf")
    assert not list(tmp_path.glob("*out.gguf*"))  # nothing half-written is left behind


def test_an_update_the_base_type_rounds_away_is_served_in_a_finer_type(master, model_path, tmp_path):
    """The master lies on the base's Q4_1 grid, so requantizing to Q4_1 rounds a small update back to the
    base's values; the run measures that and serves the first type that keeps the update."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from assistant.config import TrainConfig
    from trainer.quantize import quantize_served, update_kept

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(master, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.002)
    state = peft_model.merge_and_unload().state_dict()
    f32 = export_gguf(state, model_path, tmp_path / "f32.gguf", "F32")

    served, notes = tmp_path / "model.gguf", []
    qtype, kept = quantize_served(TrainConfig(), model_path, f32, served, "Q4_1", notes)
    assert qtype == "Q8_0" and kept > 0.9, (qtype, kept)
    assert len(notes) == 1 and notes[0].startswith("Q4_1 kept ") and "quantizing to Q8_0" in notes[0]
    assert not f32.exists() and read_info(served).quantization == "Q8_0"

    f32 = export_gguf(state, model_path, tmp_path / "f32.gguf", "F32")  # a fraction of it, served again
    again, notes = tmp_path / "again.gguf", []
    qtype, kept = quantize_served(TrainConfig(), model_path, f32, again, "Q4_1", notes, start="Q8_0")
    assert (qtype, notes) == ("Q8_0", []) and kept > 0.9, "the ladder starts at the type already chosen"

    f32 = export_gguf(state, model_path, tmp_path / "f32.gguf", "F32")
    forced, notes = tmp_path / "forced.gguf", []
    qtype, kept = quantize_served(TrainConfig(quant_type="q4_1"), model_path, f32, forced, "Q4_1", notes)
    assert qtype == "Q4_1" and kept < 0.2 and "keeps only" in notes[0], (qtype, kept, notes)
    assert update_kept(model_path, model_path)(model_path) == 1.0  # no change: nothing to lose


def test_a_grounded_row_too_long_for_training_is_fitted_as_serving_would(
    master: Path, tmp_path: Path, engine
):
    """A question asked over the user's notes carries its sources in the system message, as `ask` builds
    it: with max_length cut short, the uncited sources go first, then the tail of the last one, and the
    question, the system prompt and the cited source stay; TRL would drop the whole pair instead."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from assistant.config import TrainConfig
    from assistant.feedback import ReplayBuffer
    from assistant.grounding import DocumentAccess
    from assistant.service import Assistant
    from retrieval.index import Index
    from retrieval.indexer import update
    from tests.test_retrieval_index import shared_embedder
    from trainer.objectives import device_plan, fit_rows, load_float, lora_config, tokenizer, trl_args

    config = config_mod.load(tmp_path / "home", environ={})
    docs = tmp_path / "notes"
    docs.mkdir()
    for name in ("boiler", "heating", "pipes", "radiators"):  # four relevant notes of a full chunk each
        (docs / f"{name}.md").write_text(
            f"# Boiler and {name}\n\nThe boiler and the {name} were serviced by Ana Berg in March. "
            + TEXT[:600]
            + f"\n\nNext {name} service: October.\n"
        )
    update(Index(config.index_dir, config.retrieval, embedder=shared_embedder()), [docs])
    assistant = Assistant(config, engine=engine)
    access = DocumentAccess(config)
    access.__dict__["index"] = Index(config.index_dir, config.retrieval, embedder=shared_embedder())
    assistant.__dict__["documents"] = access
    question = "Who serviced the boiler, and when?"
    answer = assistant.answer(question, params=assistant.params(max_tokens=24))
    assert len(answer.sources) >= 3, answer.notices  # a long grounded prompt, as `ask` makes it
    assistant.correct(answer.interaction_id, "Ana Berg of Nordvarme serviced it in March [1].")
    with ReplayBuffer(config) as buf:
        (row,) = buf.rows("dpo", "train") + buf.rows("dpo", "holdout")

    tok = tokenizer(master)
    cfg = TrainConfig(max_length=320)

    def tokens(messages, generation_prompt=True) -> int:
        ids = tok.apply_chat_template(
            messages, add_generation_prompt=generation_prompt, tokenize=True, return_dict=True
        )["input_ids"]
        return len(ids)

    assert row["prompt"][0]["role"] == "system" and "[3] " in row["prompt"][0]["content"]
    assert tokens(row["prompt"]) > cfg.max_length
    short_row = {
        "prompt": [{"role": "user", "content": question}],
        "chosen": row["chosen"],
        "rejected": row["rejected"],
    }
    (fitted, same), counts = fit_rows([row, short_row], tok, cfg.max_length)
    assert same == short_row and fitted["chosen"] == row["chosen"] and fitted["rejected"] == row["rejected"]
    assert (counts.given, counts.trained, counts.fitted, counts.left_out) == (2, 2, 1, {})
    system, asked = fitted["prompt"][0]["content"], fitted["prompt"][-1]["content"]
    assert asked == question  # the question whole
    assert system.startswith(config.model.system_prompt) and "Answer from the numbered sources" in system
    assert "[1] " in system  # the source the correction cites is kept...
    assert system.count("\n\n[") < row["prompt"][0]["content"].count("\n\n[")  # ...lower-ranked ones went
    longest = max(tokens(fitted["prompt"] + fitted[k], False) for k in ("chosen", "rejected"))
    assert longest <= cfg.max_length

    def kept(rows) -> int:
        args = DPOConfig(**trl_args(cfg, device_plan(cuda=False), tmp_path))
        model = load_float(master, [])
        trainer = DPOTrainer(
            model=model,
            args=args,
            train_dataset=Dataset.from_list(rows),
            processing_class=tok,
            peft_config=lora_config(cfg, model),
        )
        return len(trainer.train_dataset)

    assert kept([row]) == 0 and kept([fitted]) == 1


def test_the_fused_head_scores_only_the_answer_positions_on_the_cpu(master: Path, monkeypatch):
    import torch
    import trl.trainer.utils as trl_utils
    from transformers import AutoModelForCausalLM

    from trainer.objectives import _score_answer_positions_only

    monkeypatch.setattr(trl_utils, "_use_triton", trl_utils._use_triton)  # undone after the test
    model = AutoModelForCausalLM.from_pretrained(master, dtype=torch.float32)
    trl_utils.add_fused_lm_head(model)
    ids = torch.tensor([list(range(100, 140))])
    labels = ids.clone()
    labels[:, :30] = -100  # the prompt: the ten answer tokens are the positions to score
    projected = []
    apply = trl_utils._ChunkedLogProbFunction.apply

    def counting(hidden, *rest):
        projected.append(hidden.shape[0])
        return apply(hidden, *rest)

    monkeypatch.setattr(trl_utils._ChunkedLogProbFunction, "apply", counting)
    with torch.no_grad():
        every = model(input_ids=ids, labels=labels, fused_lm_head=True).log_probs
        _score_answer_positions_only()
        answers = model(input_ids=ids, labels=labels, fused_lm_head=True).log_probs
    assert projected == [39, 10]  # every position, then the answer's only
    assert torch.allclose(every, answers, atol=1e-5) and (answers[:, 29:] != 0).all()
