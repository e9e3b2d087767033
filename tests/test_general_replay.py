"""General replay: the served model's own answers to everyday questions train alongside a night's SFT rows,
so a learned wording stays where the feedback was (`trainer.general_replay`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from assistant import config as config_mod
from trainer import general_replay
from trainer.context import RunContext
from trainer.data import Batch
from trainer.evaluate import GENERAL_PROMPTS, SYSTEM


def test_the_replayed_questions_are_none_of_the_gates_canary_questions():
    replayed = general_replay.prompts()
    assert len(replayed) >= config_mod.TrainConfig().general_replay
    assert not set(replayed) & {question for question, _ in GENERAL_PROMPTS}


def test_the_served_model_answers_them_as_sft_rows(model_path: Path):
    rows = general_replay.rows(model_path, 3, n_ctx=512, threads=0)
    assert [r["id"] for r in rows] == ["general-0", "general-1", "general-2"]
    for row, question in zip(rows, general_replay.prompts(), strict=False):
        assert row["prompt"] == [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
        assert row["completion"][0]["role"] == "assistant" and row["completion"][0]["content"]
    assert len({r["completion"][0]["content"] for r in rows}) == 3, "an answer per question"
    assert general_replay.rows(model_path, 3, n_ctx=512, threads=0) == rows, "greedy: the same every run"


class _Progress:
    def update(self, done: int, total: int, what: str | None = None) -> None:
        pass


@pytest.mark.parametrize(("objective", "replayed"), [("sft", True), ("raft", True), ("dpo", False)])
def test_the_sft_objectives_train_the_replayed_answers_and_dpo_does_not(
    monkeypatch, tmp_path: Path, objective: str, replayed: bool
):
    from trainer import objectives, training
    from trainer.objectives import dpo, sft

    config = config_mod.load(tmp_path / "home", environ={})
    mine = {"id": "a", "prompt": [{"role": "user", "content": "q"}], "completion": [{"role": "assistant"}]}
    pair = {"id": "b", "prompt": "q", "chosen": "x", "rejected": "y"}
    general = [{"id": "general-0", "prompt": [], "completion": []}]
    ctx = RunContext(config, "run", tmp_path, _Progress(), batch=Batch(new={"sft": [mine], "dpo": [pair]}))
    ctx.general = general
    given = []
    trained = lambda model, tok, rows, *args: given.append(rows) or []  # noqa: E731
    monkeypatch.setattr(sft, "train", trained)
    monkeypatch.setattr(dpo, "train", trained)
    monkeypatch.setattr(objectives, "load_for_training", lambda *args: None)
    monkeypatch.setattr(training, "raft_rows", lambda ctx: ([mine], {}))
    training.train_one(ctx, objective, tmp_path / "out")
    own = [pair] if objective == "dpo" else [mine]
    assert given == [own + general if replayed else own]
