"""`nightjar train` under `accelerate launch` with two processes, on the CPU (gloo), as a real subprocess; and
the decisions of the main and the other processes with accelerate's state faked.

On a machine without a GPU, `accelerate launch --cpu` starts one process whatever `--num_processes` says
(several CPU processes need MPI there); `--multi_gpu` with no GPU visible starts them through torchrun, and
the trainer makes them a gloo group. That is what the real run below does.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from assistant import config as config_mod
from assistant import registry, runs
from assistant.feedback import ReplayBuffer
from tests.conftest import ROOT
from trainer import data, processes, staging, training
from trainer.objectives import device_plan, trl_args, world_size
from trainer.run import train

SYSTEM = {"role": "system", "content": "You are Nightjar, a helpful assistant."}
TOPICS = ["a volcano", "a rainbow", "a comet", "a glacier", "the moon", "a desert", "a piano", "a river"]
TEMPLATES = ["Describe {} in one sentence.", "What is {}?", "Tell me one fact about {}."]
ENV = {
    "NIGHTJAR_TRAIN_MAX_STEPS": "1",
    "NIGHTJAR_TRAIN_BATCH_SIZE": "2",  # one row per process and step
    "NIGHTJAR_TRAIN_MAX_LENGTH": "64",
    "NIGHTJAR_TRAIN_MIN_NEW_ROWS": "4",
    "NIGHTJAR_TRAIN_EVAL_N_CTX": "512",
    "NIGHTJAR_TRAIN_MIN_HOLDOUT_ROWS": "2",  # the 24 questions' hash split holds 4 out
}


def seed(home: Path) -> int:
    """Preference pairs through the real API (the user prefers answers that start "Sure thing!")."""
    config = config_mod.load(home, environ={})
    questions = [t.format(topic) for topic in TOPICS for t in TEMPLATES]
    with ReplayBuffer(config) as buf:
        for q in questions:
            prompt = [SYSTEM, {"role": "user", "content": q}]
            answer = f"It is {q.split()[-1].rstrip('.?')}."
            buf.add_preference(
                prompt,
                [{"role": "assistant", "content": f"Sure thing! {answer}"}],
                [{"role": "assistant", "content": answer}],
            )
        return len(buf.rows("dpo", "train", only_unconsumed=True))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(home: Path, processes: int = 2, timeout: float = 3000) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NIGHTJAR_")}
    env.update({"HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "", **ENV})
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu"]
    cmd += ["--num_processes", str(processes), "--num_machines", "1", "--mixed_precision", "no"]
    cmd += ["--dynamo_backend", "no", "--main_process_port", str(free_port())]
    cmd += ["-m", "assistant", "--home", str(home), "train"]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT)


# ---- the real thing: two processes on the CPU ----
@pytest.mark.slow
def test_two_cpu_processes_train_one_run(tmp_path: Path):
    home = tmp_path / "home"
    home.mkdir()
    assert seed(home) >= 4
    result = launch(home)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]

    config = config_mod.load(home, environ={})
    logged = runs.all_runs(config)
    assert len(logged) == 1, logged  # one start and one end: only the main process logs
    run = logged[0]
    assert run["outcome"] in ("published", "rejected"), run
    report = json.loads((runs.report_dir(config, run["run"]) / runs.REPORT_JSON).read_text())
    assert report["processes"] == 2 and "2 processes (gloo)" in report["device"], report["device"]
    assert report["training"]["dpo"][0]["rows"]["trained"] >= 1
    assert any("loss" in h for h in report["training"]["dpo"])

    log = (config.logs_dir / "train.log").read_text()
    for rank in (0, 1):  # both processes trained, each its share of every step
        assert f"[process {rank}/2] process {rank} of 2: dpo trained, 1 steps" in log, log[-3000:]
    assert log.count("adapter saved to") == 1, "the adapter is written once, by the main process"
    assert "[process 0/2] stage merge\n" in log and "[process 1/2] stage merge" not in log
    assert "process 1 of 2 trained run " + run["run"] in result.stdout, result.stdout

    versions = [v.name for v in registry.versions(config)]
    if run["outcome"] == "published":
        assert versions == ["base", "v1"] and registry.current_version(config) == "v1"
        adapter = home / "models" / "v1" / "adapter" / "0-dpo"
        assert {p.name for p in adapter.iterdir()} >= {"adapter_config.json", "adapter_model.safetensors"}
    else:
        assert versions == ["base"]
    assert not any((home / "models" / ".staging").iterdir()), "the staging folder is cleared"
    with ReplayBuffer(config) as buf:  # consumed once, by the main process
        assert buf.rows("dpo", "train", only_unconsumed=True) == []


# ---- the rank logic, with accelerate's state faked ----
class FakeProcesses(processes.Processes):
    """`count` processes, this one `rank`; `share` returns what the main process would send (`go`)."""

    def __init__(self, count: int, rank: int, go=None) -> None:
        super().__init__(count, rank)
        self.go, self.shared = go, []

    def share(self, value):
        self.shared.append(value)
        return value if self.main else self.go


def test_a_single_process_does_not_start_accelerate():
    code = (
        "import sys; from trainer.processes import processes; p = processes({}); "
        "print(p.count, p.main, 'accelerate' in sys.modules, 'torch.distributed' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.split() == ["1", "True", "False", "False"]
    assert (
        world_size({}) == 1 and world_size({"WORLD_SIZE": "1"}) == 1 and world_size({"WORLD_SIZE": "4"}) == 4
    )
    one = processes.Processes()
    assert one.share("x") == "x" and one.main
    one.send(None)  # nobody to tell
    assert not one.sent


def test_device_plan_and_batches_per_process(tmp_path: Path):
    cfg = config_mod.TrainConfig(batch_size=4)
    single, double = device_plan(cuda=False, processes=1), device_plan(cuda=False, processes=2)
    assert single.description == "CPU: LoRA, fp32" and device_plan(cuda=False, processes=None).processes == 1
    assert double.description == "CPU: LoRA, fp32, 2 processes (gloo)"
    assert device_plan(cuda=True, bitsandbytes=True, processes=4).description.endswith(
        "4 processes (one GPU each)"
    )
    one, two = trl_args(cfg, single, tmp_path), trl_args(cfg, double, tmp_path)
    # the same rows per optimiser step: each of two processes accumulates half of them
    assert (one["per_device_train_batch_size"], one["gradient_accumulation_steps"]) == (1, 4)
    assert (two["per_device_train_batch_size"], two["gradient_accumulation_steps"]) == (1, 2)
    assert "ddp_find_unused_parameters" not in one and two["ddp_find_unused_parameters"] is False


def test_the_main_process_tells_the_others_when_there_is_nothing_to_do(home: Path, monkeypatch):
    main = FakeProcesses(2, 0)
    monkeypatch.setattr(processes, "processes", lambda: main)
    config = config_mod.load(home, environ={})
    result = train(config)
    assert result.outcome == "nothing to do"
    assert main.shared == [None], "the others are told to stop, once"
    assert [r["outcome"] for r in runs.all_runs(config)] == ["nothing to do"]


def test_the_main_process_tells_the_others_when_it_fails(home: Path, monkeypatch):
    main = FakeProcesses(2, 0)
    monkeypatch.setattr(processes, "processes", lambda: main)
    config = config_mod.load(home, environ={})
    with staging.run_lock(config), pytest.raises(Exception, match="another training run"):
        train(config)
    assert main.shared == [None]


def test_another_process_stops_quietly_when_the_main_one_stops(home: Path, monkeypatch):
    other = FakeProcesses(2, 1, go=None)
    monkeypatch.setattr(processes, "processes", lambda: other)
    config = config_mod.load(home, environ={})
    seed(home)
    result = train(config)
    assert result.outcome == "nothing for this process" and result.report_dir is None
    assert other.shared == [None]  # it only listened
    assert runs.all_runs(config) == [], "it logs no run"
    assert not (config.models_dir / staging.LOCK_FILE).exists(), "it never takes the lock"
    assert not (config.models_dir / staging.STAGING).exists(), "nor touches staging"


def test_another_process_trains_the_main_process_run_and_publishes_nothing(home: Path, monkeypatch):
    seed(home)
    config = config_mod.load(home, environ={})
    batch = data.read(config, seed=config.train.seed)
    assert data.read(config, seed=config.train.seed) == batch, "the read stage is deterministic"
    tmp = home / "m"
    tmp.mkdir()
    go = {"run_id": "r1", "batch": batch, "objectives": ["dpo"], "master": tmp, "chain": [], "general": []}
    other = FakeProcesses(2, 1, go=go)
    monkeypatch.setattr(processes, "processes", lambda: other)
    trained = []
    monkeypatch.setattr(processes, "quiet_libraries", lambda threads, processes=1: None)
    monkeypatch.setattr("trainer.objectives.tokenizer", lambda master: "tok")

    def train_all(ctx):
        trained.append(
            (
                ctx.objectives,
                ctx.master,
                ctx.staging,
                ctx.device.processes,
                ctx.procs.rank,
                len(ctx.batch.train_rows("dpo")),
            )
        )

    monkeypatch.setattr(training, "train_all", train_all)
    result = train(config)
    assert trained == [(["dpo"], tmp, config.models_dir / ".staging" / "r1", 2, 1, len(batch.new["dpo"]))]
    assert result.outcome == "trained" and result.version is None and result.report_dir is None
    assert "process 1 of 2 trained run r1" in result.reasons[0]
    assert runs.all_runs(config) == [] and not (config.models_dir / staging.LOCK_FILE).exists()
    with ReplayBuffer(config) as buf:  # it consumes nothing
        assert len(buf.rows("dpo", "train", only_unconsumed=True)) == len(batch.new["dpo"])
