"""`nightjar train` end to end on the default 135M model, as a real subprocess.

The user in these tests always prefers answers that start with "Sure thing!". The replay buffer is seeded
with that preference (the rejected answers are the model's own greedy answers), then:
1. runs are SIGKILLed at every stage: the served model, the versions and the buffer stay untouched;
2. a clean run publishes a version whose requantized GGUF, served by llama.cpp, starts held-out answers
   with the phrase far more often than the base did;
3. an update trained on the inverted preference is rejected by the gate and the good version stays served.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from assistant import config as config_mod
from assistant import registry, runs
from assistant.engine import GenParams, LlamaCppEngine, chat
from assistant.errors import NightjarError
from assistant.feedback import ReplayBuffer
from assistant.feedback.keys import prompt_key, split_of
from assistant.modelfile import read_info
from tests.conftest import run_nightjar
from trainer.progress import STAGES

pytestmark = pytest.mark.slow

PHRASE = "Sure thing!"
SYSTEM = config_mod.ModelConfig().system_prompt
TEMPLATES = ["Describe {} in one sentence.", "What is {}?", "Tell me one fact about {}."]
TOPICS = [
    "a volcano",
    "a rainbow",
    "a comet",
    "a glacier",
    "the moon",
    "a desert",
    "a bicycle",
    "a piano",
    "a library",
    "an elephant",
    "a honeybee",
    "the ocean",
    "a thunderstorm",
    "a telescope",
    "a bridge",
    "a castle",
    "a forest",
    "a river",
    "coffee",
    "bread",
    "a violin",
    "chess",
    "a lighthouse",
    "a penguin",
    "a windmill",
    "a compass",
    "an island",
    "a cactus",
    "a butterfly",
    "a train",
]
HELD_OUT_TOPICS = [
    "a harp",
    "a canyon",
    "a beetle",
    "a lantern",
    "a meadow",
    "a tortoise",
    "a kettle",
    "a harbor",
]
# short runs at the default learning rate: enough to learn the preference, gently enough to pass the canaries
ENV = {
    "NIGHTJAR_TRAIN_MAX_STEPS": "10",
    "NIGHTJAR_TRAIN_MAX_LENGTH": "128",
    "NIGHTJAR_TRAIN_EVAL_N_CTX": "512",
    "NIGHTJAR_TRAIN_MIN_HOLDOUT_ROWS": "5",  # the 40 questions' hash split holds 6 out
}


def messages(question: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]


def answer(engine, question: str, max_tokens: int = 16) -> str:
    return chat(engine, messages(question), GenParams(max_tokens=max_tokens)).result().text.strip()


def preferred_rate(model: Path) -> float:
    """Share of held-out questions the GGUF (through llama.cpp, greedy) answers starting with the phrase."""
    engine = LlamaCppEngine(model, n_ctx=512)
    questions = [t.format(topic) for topic in HELD_OUT_TOPICS for t in TEMPLATES[:2]]
    hits = sum(answer(engine, q, max_tokens=6).startswith("Sure") for q in questions)
    engine.llm.close()
    return hits / len(questions)


def seed(home: Path, rows: list[tuple[list, str]], invert_train: bool = False) -> None:
    """Add (prompt, model answer) rows as pairs preferring the phrase; `invert_train`: the opposite on the
    train split (a deliberately harmful update), the true preference on the holdout."""
    config = config_mod.load(home, environ={})
    with ReplayBuffer(config) as buf:
        for prompt, text in rows:
            good, bad = f"{PHRASE} {text}", text
            if invert_train and split_of(prompt_key(prompt), config.feedback.holdout_fraction) == "train":
                good, bad = bad, good
            buf.add_preference(
                prompt, [{"role": "assistant", "content": good}], [{"role": "assistant", "content": bad}]
            )


@pytest.fixture(scope="module")
def model_answers(engine) -> list[tuple[list, str]]:
    """The base model's own greedy answers to the training questions."""
    questions = [TEMPLATES[i % 3].format(topic) for i, topic in enumerate(TOPICS)]
    questions += [TEMPLATES[(i + 1) % 3].format(topic) for i, topic in enumerate(TOPICS[:10])]
    return [(messages(q), answer(engine, q)) for q in questions]


@pytest.fixture(scope="module")
def home(tmp_path_factory, model_answers) -> Path:
    path = tmp_path_factory.mktemp("train") / "home"
    path.mkdir()
    seed(path, model_answers)
    return path


def state(home: Path) -> dict:
    """What must not change when a run dies: the served version, the versions, the buffer's consumption."""
    config = config_mod.load(home, environ={})
    with ReplayBuffer(config) as buf:
        unconsumed = sorted(r["id"] for r in buf.rows("dpo", "train", only_unconsumed=True))
    return {
        "served": registry.current_version(config),
        "versions": [v.name for v in registry.versions(config)],
        "unconsumed": unconsumed,
    }


@pytest.fixture(scope="module")
def killed(home: Path) -> list[tuple[str, int, dict]]:
    """A run SIGKILLed in each stage in turn (one optimiser step each, to be quick); what it left."""
    delays = {"master": "+1", "train": "+2", "export": "+1", "eval": "+2"}
    out = []
    for stage in STAGES:
        env = {
            **ENV,
            "NIGHTJAR_TRAIN_MAX_STEPS": "1",
            "NIGHTJAR_TRAIN_BATCH_SIZE": "2",
            "NIGHTJAR_FAULT_KILL_AT": stage + delays.get(stage, ""),
        }
        result = run_nightjar("train", home=home, env=env, timeout=3600)
        assert result.returncode == -9, f"not killed in stage {stage}: {result.stderr[-2000:]}"
        out.append((stage, result.returncode, state(home)))
    return out


def test_a_run_killed_at_any_stage_changes_nothing(killed, home: Path, model_answers):
    before = {"served": "base", "versions": ["base"]}
    for stage, _, after in killed:
        assert {k: after[k] for k in before} == before, f"killed in {stage}: {after}"
        assert after["unconsumed"] == killed[0][2]["unconsumed"], f"killed in {stage}: the buffer changed"
    assert len(killed[0][2]["unconsumed"]) >= 20
    last = runs.last_run(config_mod.load(home, environ={}))
    assert last["outcome"] == "unfinished"


@pytest.fixture(scope="module")
def published(killed, home: Path) -> dict:
    """A clean run after all the kills."""
    result = run_nightjar("train", home=home, env=ENV, timeout=3600)
    assert result.returncode == 0, result.stderr[-3000:]
    return {"stdout": result.stdout, "stderr": result.stderr}


def test_a_clean_run_publishes_a_model_that_learned_the_preference(published, home: Path, model_path: Path):
    assert "published v1" in published["stdout"], published
    config = config_mod.load(home, environ={})
    assert registry.current_version(config) == "v1"
    assert not any((home / "models" / ".staging").iterdir()), "nothing of the killed runs is left"
    version = home / "models" / "v1"
    for name in ("model.gguf", "version.json", "report.md", "report.json", "rows.jsonl", "train_config.json"):
        assert (version / name).is_file(), name
    assert (version / "adapter" / "0-dpo" / "adapter_model.safetensors").is_file()
    assert "v1 is now served" in (version / "report.md").read_text() and (version / "training.png").is_file()
    meta = json.loads((version / "version.json").read_text())
    assert meta["objective"] == "dpo" and meta["parent"] == "base"
    # Q4_1, the base's type, rounds this small update back onto the base's grid: it is served as Q8_0
    assert meta["quant_type"] == read_info(version / "model.gguf").quantization == "Q8_0"
    assert meta["update_kept"] > 0.9 and "Q4_1 kept" in (version / "report.md").read_text()
    assert meta["metrics"]["dpo_accuracy"] >= 0.5

    before, after = preferred_rate(model_path), preferred_rate(version / "model.gguf")
    print(f"\npreferred behaviour on held-out questions: base {before:.2f} -> v1 {after:.2f}")
    assert before <= 0.2 and after >= before + 0.5, (before, after)

    shown = run_nightjar("ask", "--no-retrieval", "--json", "Describe a harp in one sentence.", home=home)
    served = json.loads(shown.stdout)
    assert served["model_version"] == "v1" and served["text"].startswith("Sure"), served["text"]

    with ReplayBuffer(config) as buf:
        assert buf.rows("dpo", "train", only_unconsumed=True) == [], "the rows it trained on are consumed"
    assert "nothing to do" in run_nightjar("train", home=home, env=ENV).stdout
    shown = run_nightjar("train", "--report", home=home)  # the run that trained, after the one that did not
    assert shown.stdout.startswith("run ") and "nothing to do" in shown.stdout.splitlines()[0]
    assert "v1 is now served" in shown.stdout and "preference accuracy" in shown.stdout


def test_a_harmful_update_is_rejected_and_the_good_version_stays(published, home: Path, model_answers):
    seed(home, model_answers, invert_train=True)  # new rows on the train split; the holdout is unchanged
    config = config_mod.load(home, environ={})
    assert registry.current_version(config) == "v1"
    result = run_nightjar(
        "train", home=home, env={**ENV, "NIGHTJAR_TRAIN_REPLAY_FRACTION": "0"}, timeout=3600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "not better" in result.stdout, result.stdout
    assert registry.current_version(config) == "v1"
    assert [v.name for v in registry.versions(config)] == ["base", "v1"]
    last = runs.last_run(config)
    assert last["outcome"] == "rejected", last
    # the held-out pairs catch it, or a quick canary first (they come before the held-out scoring, which
    # is then skipped at every scale that fails them)
    named = ("held-out pairs", "general questions", "reference perplexity")
    caught = [r for r in last["reasons"] if r.startswith(named)]
    assert caught, last["reasons"]
    with ReplayBuffer(config) as buf:  # a recorded rejection consumes its rows: they do not retrain nightly
        assert buf.rows("dpo", "train", only_unconsumed=True) == []
    rejected = runs.report_dir(config, last["run"])
    assert f"FAIL: {caught[0].split(':')[0]}" in (rejected / "report.md").read_text()
    if not caught[0].startswith("held-out pairs"):
        notes = json.loads((rejected / "report.json").read_text())["notes"]
        assert any("its held-out rows were not scored" in n for n in notes), notes
    shutil.rmtree(rejected)


def test_kto_raft_and_reward_objectives_train_real_adapters(published, home: Path, model_answers, tmp_path):
    """The other objectives at a tiny scale on the real model: KTO on thumbs; RAFT sampling with llama.cpp,
    ranking by a reward model (TRL RewardTrainer), the implicit reward of v1's DPO adapter and the rules,
    then SFT on the kept answers."""
    from safetensors.torch import load_file

    from trainer import data
    from trainer.context import RunContext
    from trainer.lineage import adapters_of
    from trainer.master import ensure_master
    from trainer.objectives import device_plan, kto, load_float, sft, tokenizer
    from trainer.progress import Stages
    from trainer.training import raft_rows

    config = config_mod.load(home, environ={})
    for key, value in dict(
        max_steps=1,
        batch_size=2,
        max_length=96,
        raft_k=2,
        raft_max_new_tokens=8,
        raft_prompts=3,
        raft_reward="model+dpo+rules",
        eval_n_ctx=512,
    ).items():
        setattr(config.train, key, value)
    master = ensure_master(config, registry.base_model_path(config))
    chain = adapters_of(config, "v1")
    plan, tok = device_plan(), tokenizer(master)

    def lora_b_nonzero(adapter: Path) -> bool:
        weights = load_file(adapter / "adapter_model.safetensors")
        return any(float(t.abs().sum()) > 0 for name, t in weights.items() if "lora_B" in name)

    thumbs = [
        {
            "prompt": prompt,
            "completion": [{"role": "assistant", "content": f"{PHRASE} {text}" if up else text}],
            "label": up,
        }
        for (prompt, text), up in zip(model_answers[:4], [True, False, True, False], strict=True)
    ]
    history = kto.train(load_float(master, chain), tok, thumbs, config.train, plan, tmp_path / "kto")
    assert history[0]["rows"]["trained"] == len(thumbs)
    assert next(h for h in history if "loss" in h)["loss"] > 0 and lora_b_nonzero(tmp_path / "kto")

    pairs = [
        {
            "prompt": p,
            "chosen": [{"role": "assistant", "content": f"{PHRASE} {t}"}],
            "rejected": [{"role": "assistant", "content": t}],
        }
        for p, t in model_answers[4:8]
    ]
    fixes = [
        {"prompt": p, "completion": [{"role": "assistant", "content": f"{PHRASE} {t}"}]}
        for p, t in model_answers[8:10]
    ]
    batch = data.Batch(new={"dpo": pairs, "sft": fixes, "kto": []})
    with Stages() as stages:
        stages.start("train")
        ctx = RunContext(
            config, "raft", tmp_path, stages, batch=batch, master=master, chain=chain, device=plan, tok=tok
        )
        rows, stats = raft_rows(ctx)
    assert ctx.notes == [] and stats["rewards"] == ["dpo", "model", "rules"]
    assert stats["prompts"] == 3 and stats["candidates"] == 3 * 2 + 2, (
        "K samples each, plus the user's answers"
    )
    assert len(rows) == 3 and all(r["completion"][0]["content"].strip() for r in rows)
    assert (tmp_path / "reward-model" / "adapter_model.safetensors").is_file()
    history = sft.train(load_float(master, chain), tok, rows, config.train, plan, tmp_path / "raft")
    assert next(h for h in history if "loss" in h)["loss"] > 0 and lora_b_nonzero(tmp_path / "raft")

    damaged = tmp_path / "damaged"
    shutil.copytree(chain[0], damaged)
    (damaged / "adapter_model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(NightjarError, match="damaged"):
        load_float(master, [damaged])
