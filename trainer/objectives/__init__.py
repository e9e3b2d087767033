"""What the objectives share: the device plan, the float model to train on, the LoRA and the TRL arguments.

A model version is its base's float master plus the LoRA adapters of its lineage, merged in order; a run
trains a new adapter on top of that and never requantizes a quantized model. On a CUDA GPU with bitsandbytes
the model is trained as 4-bit QLoRA in bf16; on the CPU as a plain LoRA in fp32. Under `accelerate launch`
(WORLD_SIZE > 1) every process trains its share of each batch (data-parallel: transformers' Trainer wraps
the model in DDP), each on its own GPU (the one accelerate made current), or on the CPU over gloo.

Each objective module (sft, dpo, kto, reward) has one `train(...)` that saves its adapter to `out` and
returns TRL's log history (a list of dicts: loss, rewards/margins, ... per step); raft samples and ranks
answers, which `sft.train` then trains on.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from assistant.config import TrainConfig
from assistant.errors import NightjarError

Progress = Callable[[int, int], None]  # (steps done, steps in all)


@dataclass(frozen=True)
class Plan:
    """Where and how to train."""

    cuda: bool
    quantize_4bit: bool
    processes: int = 1  # data-parallel training processes (`accelerate launch --num_processes`)

    @property
    def description(self) -> str:
        if self.quantize_4bit:
            what = "CUDA: 4-bit QLoRA (bitsandbytes), bf16"
        else:
            what = "CUDA: LoRA, bf16" if self.cuda else "CPU: LoRA, fp32"
        if self.processes > 1:
            what += f", {self.processes} processes ({'one GPU each' if self.cuda else 'gloo'})"
        return what


def device_plan(
    cuda: bool | None = None, bitsandbytes: bool | None = None, processes: int | None = None
) -> Plan:
    """QLoRA where a CUDA device and a working bitsandbytes exist, else LoRA (bf16 on CUDA, fp32 on CPU).
    `processes`: how many train together (default: WORLD_SIZE, which `accelerate launch` sets; else 1)."""
    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    if bitsandbytes is None:
        bitsandbytes = cuda and _bitsandbytes_works()
    if processes is None:
        processes = world_size()
    return Plan(cuda=cuda, quantize_4bit=cuda and bitsandbytes, processes=max(1, processes))


def world_size(environ=os.environ) -> int:
    """How many processes run this command together: WORLD_SIZE under `accelerate launch`/torchrun, else 1."""
    try:
        return max(1, int(environ.get("WORLD_SIZE") or 1))
    except ValueError:
        return 1


def _main_process_first(plan: Plan, write: Callable[[], None]) -> None:
    """Run `write` on the main process only, the others waiting until it is done (one process, no wait)."""
    if plan.processes <= 1:
        write()
        return
    from accelerate import PartialState

    state = PartialState(cpu=not plan.cuda)
    if state.is_main_process:
        write()
    state.wait_for_everyone()


def _bitsandbytes_works() -> bool:
    try:
        import bitsandbytes  # noqa: F401
    except Exception:  # broken CUDA set-ups raise many kinds on import
        return False
    return True


def load_float(master: Path, adapters: list[Path], *, cuda: bool = False):
    """The float model of a version: the master with each adapter merged into it, in order."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    dtype = torch.bfloat16 if cuda else torch.float32
    model = AutoModelForCausalLM.from_pretrained(master, dtype=dtype, device_map="cuda" if cuda else None)
    for adapter in adapters:
        try:
            model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
        except Exception as exc:  # safetensors and peft raise many kinds on a damaged adapter
            raise NightjarError(
                f"the adapter {adapter} is damaged ({exc.__class__.__name__}); serve another version with "
                "`nightjar models use VERSION`"
            ) from exc
    return model


def load_for_training(master: Path, adapters: list[Path], plan: Plan, scratch: Path):
    """The model to put a new LoRA on. For QLoRA the merged float model is written to `scratch` first so that
    it can be loaded in 4 bits (the adapter is later merged into the float model, never the 4-bit one)."""
    if not plan.quantize_4bit:
        return load_float(master, adapters, cuda=plan.cuda)
    import torch
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    source = master
    if adapters:  # one process writes the checkpoint, all load it
        source = scratch / "start"
        _main_process_first(plan, lambda: load_float(master, adapters).save_pretrained(source))
    quantization = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=torch.bfloat16,
        bnb_4bit_use_double_quant=True,
    )
    model = AutoModelForCausalLM.from_pretrained(
        source,
        quantization_config=quantization,
        dtype=torch.bfloat16,
        device_map={"": torch.cuda.current_device()},  # each process its own GPU (accelerate sets it)
    )
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)


def tokenizer(master: Path):
    """The master's tokenizer as `master` saved it: the generic class, since a model-specific one (Gemma's,
    Qwen2's) rebuilds its own pipeline on load and may tokenize differently from the GGUF."""
    from transformers import TokenizersBackend

    tok = TokenizersBackend.from_pretrained(master)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def lora_config(cfg: TrainConfig, model, task_type: str = "CAUSAL_LM"):
    """The LoRA for `model`: `train.target_modules` named as this architecture names them (phi3's fused
    qkv_proj and gate_up_proj stand for the projections in them)."""
    from peft import LoraConfig

    from trainer.architectures import lora_target_modules

    return LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=lora_target_modules(model.config.model_type, cfg.target_modules),
        task_type=task_type,
        modules_to_save=["score"] if task_type == "SEQ_CLS" else None,
    )


def micro_batch(cfg: TrainConfig, plan: Plan, least: int = 1) -> int:
    """Examples per forward pass. On the CPU a batch costs as much as its longest row times its size, so one
    example at a time (gradients accumulated up to `batch_size`) is fastest: a DPO step on HH-RLHF pairs took
    half the time and a third of the memory of a batch of four. `least`: what the objective needs (KTO
    estimates its KL term across a batch, so it needs two)."""
    size = cfg.micro_batch_size or (cfg.batch_size if plan.cuda else least)
    return max(least, min(size, cfg.batch_size))


def trl_args(cfg: TrainConfig, plan: Plan, out: Path, least: int = 1) -> dict[str, Any]:
    """The TrainingArguments every objective shares (its own DPOConfig/KTOConfig/... adds the rest). With
    several processes each step still takes `batch_size` rows: each process accumulates its share."""
    micro = micro_batch(cfg, plan, least)
    extra: dict[str, Any] = {}
    if plan.processes > 1:  # every LoRA weight takes part in every step: no search for unused ones
        extra["ddp_find_unused_parameters"] = False
    return {
        "output_dir": str(out / "trainer"),
        "per_device_train_batch_size": micro,
        "gradient_accumulation_steps": max(1, cfg.batch_size // (micro * plan.processes)),
        "num_train_epochs": cfg.epochs,
        "max_steps": cfg.max_steps if cfg.max_steps > 0 else -1,
        "learning_rate": cfg.learning_rate,
        "lr_scheduler_type": "constant",
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": [],
        "seed": cfg.seed,
        "use_cpu": not plan.cuda,
        "bf16": plan.cuda,
        "activation_checkpointing": plan.quantize_4bit,  # saves GPU memory; on the CPU it only costs time
        "dataloader_num_workers": 0,
        "disable_tqdm": True,
        "max_length": cfg.max_length,
        **extra,
    }


def progress_callback(progress: Progress | None):
    """A TrainerCallback reporting (step, max_steps) after every optimiser step."""
    from transformers import TrainerCallback

    class _Steps(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if progress is not None:
                progress(state.global_step, state.max_steps)

    return _Steps()


def fit(
    trainer_cls,
    model,
    tokenizer,
    rows: list[dict[str, Any]],
    columns: tuple[str, ...],
    args,
    peft_config,
    out: Path,
    progress: Progress | None = None,
) -> list[dict[str, Any]]:
    """Train `model` with a TRL trainer on `rows` (their `columns`), save the adapter to `out` and return the
    log history, after an entry with the row counts (`RowFit`)."""
    from datasets import Dataset
    from transformers.trainer_callback import PrinterCallback

    _score_answer_positions_only()
    rows, fitting = fit_rows(rows, tokenizer, args.max_length)
    if not rows:
        raise NightjarError(f"nothing to train: {fitting.summary()}")
    trainer = trainer_cls(
        model=model,
        args=args,
        train_dataset=Dataset.from_list([{k: r[k] for k in columns} for r in rows]),
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[progress_callback(progress)],
    )
    trainer.remove_callback(PrinterCallback)  # the log goes to the report, not to stdout
    trainer.train()
    if trainer.accelerator.is_main_process:  # one process writes the adapter (all hold the same weights)
        trainer.model.save_pretrained(out)
        if trainer.accelerator.num_processes > 1:
            logging.getLogger("nightjar.train").info("adapter saved to %s by the main process", out)
    trainer.accelerator.wait_for_everyone()
    rows_entry = {"rows": {**asdict(fitting), "trained": fitting.trained}}  # the report's row counts
    return [rows_entry, *(dict(entry) for entry in trainer.state.log_history)]


@dataclass
class RowFit:
    """What fitting did to a run's rows: how many came, were shortened, were left out and why."""

    given: int = 0
    fitted: int = 0  # shortened to fit max_length (sources, then old turns), trained
    left_out: dict[str, int] = field(default_factory=dict)  # reason -> rows

    @property
    def trained(self) -> int:
        return self.given - sum(self.left_out.values())

    def summary(self) -> str:
        out = (
            f"{self.trained} of {self.given} row(s) trained, {self.fitted} shortened to fit train.max_length"
        )
        return out + "".join(f"; {n} left out: {why}" for why, n in self.left_out.items())


_CITED = re.compile(r"\[(\d+(?:\s*,\s*\d+)*)\]")


def fit_rows(rows: list[dict[str, Any]], tokenizer, max_length: int) -> tuple[list[dict[str, Any]], RowFit]:
    """`rows`, where a prompt and its longest answer exceed `max_length` tokens with the prompt shortened as
    serving gives up context (`assistant.grounding.fit_grounded`: uncited sources, then the tail of the last
    source, then old turns; the question last), leaving the answer at least half the room. TRL would
    otherwise drop a row whose prompt fills `max_length` (a question with its retrieved sources easily does)
    and keep only the start of the rest. A row that still cannot fit is left out and counted."""
    from assistant.grounding import fit_grounded

    def count(messages: list[dict[str, str]], add_generation_prompt: bool = True) -> int:
        ids = tokenizer.apply_chat_template(
            messages, add_generation_prompt=add_generation_prompt, tokenize=True, return_dict=True
        )["input_ids"]
        return len(ids)

    fitted, report = [], RowFit(given=len(rows))
    for row in rows:
        prompt_len = count(row["prompt"])
        answers = [row[k] for k in ("chosen", "rejected", "completion") if k in row]
        answer_len = max(count(row["prompt"] + a, False) - prompt_len for a in answers)
        if prompt_len + answer_len > max_length:
            budget = max_length - min(answer_len, max_length // 2)
            cited = {
                int(n) for a in answers for m in a for g in _CITED.findall(m["content"]) for n in g.split(",")
            }
            cut = fit_grounded(row["prompt"], budget, count, cited)
            if count(cut.messages) >= max_length:  # TRL would drop it: say so instead
                why = "the question alone is longer than train.max_length"
                report.left_out[why] = report.left_out.get(why, 0) + 1
                continue
            row = {**row, "prompt": cut.messages}
            report.fitted += 1
        fitted.append(row)
    return fitted, report


def _score_answer_positions_only() -> None:
    """Off CUDA, TRL's fused LM head projects every position onto the vocabulary, because on Neuron a
    varying number of positions would recompile its kernels. On the CPU nothing recompiles, and only the
    answer's positions are needed: a DPO step on HH-RLHF pairs takes 16% less time. TRL decides this with
    one private helper; without it (another TRL version) training is just as correct, only slower."""
    import trl.trainer.utils as trl_utils

    decide = getattr(trl_utils, "_use_triton", None)
    if decide is None or getattr(decide, "nightjar", False):
        return

    def compact(device) -> bool:
        return device.type == "cpu" or decide(device)

    compact.nightjar = True  # type: ignore[attr-defined]
    trl_utils._use_triton = compact
