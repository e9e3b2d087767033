"""The trainer's parts that need no training: config, rows, objective choice, the gate's rule, RAFT ranking,
the device plan, the lock, the busy check, reports and the run log. The CLI runs as a real subprocess."""

from __future__ import annotations

import fcntl
import json
from pathlib import Path

import pytest

from assistant import config as config_mod
from assistant import runs
from assistant.errors import NightjarError
from assistant.feedback import ReplayBuffer
from tests.conftest import run_nightjar
from tests.test_cli import assert_one_line_error
from trainer import data, report
from trainer.evaluate import ModelScores
from trainer.objectives import device_plan, trl_args
from trainer.objectives.raft import best
from trainer.objectives.reward import rules
from trainer.staging import busy_reason, run_lock

SYSTEM = {"role": "system", "content": "You are Nightjar, a helpful assistant."}


def ask(question: str) -> list[dict[str, str]]:
    return [SYSTEM, {"role": "user", "content": question}]


def say(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def seed_pairs(config, n: int, start: int = 0) -> None:
    with ReplayBuffer(config) as buf:
        for i in range(start, start + n):
            buf.add_preference(
                ask(f"Question number {i} about topic {i * 7}?"), say(f"Good {i}."), say(f"Bad {i}.")
            )


# ---- configuration ----
def test_train_section_from_file_env_and_flags(home: Path):
    (home / "config.toml").write_text(
        '[train]\nobjective = "raft+dpo"\nlora_r = 4\ntarget_modules = ["q_proj"]\n'
    )
    config = config_mod.load(home, environ={"NIGHTJAR_TRAIN_LEARNING_RATE": "0.001"})
    assert config.train.objectives() == ["raft", "dpo"]
    assert (config.train.lora_r, config.train.target_modules, config.train.learning_rate) == (
        4,
        ["q_proj"],
        0.001,
    )
    assert config.train.check() == []
    shown = run_nightjar("config", home=home).stdout
    assert "[train]" in shown and 'objective = "raft+dpo"' in shown and "min_new_rows = 20" in shown


def test_bad_train_settings_are_one_line_errors(home: Path):
    (home / "config.toml").write_text('[train]\nobjective = "ppo"\n')
    assert_one_line_error(run_nightjar("train", home=home), "train.objective", "ppo")
    (home / "config.toml").write_text("[train]\nlora_rank = 8\n")
    assert_one_line_error(run_nightjar("train", home=home), "train.lora_rank")


# ---- rows ----
def test_new_rows_replay_and_holdout(config):
    config.train.replay_fraction = 0.5
    seed_pairs(config, 30)
    batch = data.read(config)
    new, holdout = batch.new["dpo"], batch.holdout["dpo"]
    assert len(new) + len(holdout) == 30 and holdout, "the hash split keeps some prompts out"
    assert batch.replay["dpo"] == [] and batch.fresh["dpo"] == len(new) == batch.n_fresh()
    assert not {r["id"] for r in new} & {r["id"] for r in holdout}

    with ReplayBuffer(config) as buf:
        buf.mark_consumed("run-1", "dpo", [r["id"] for r in new])
    seed_pairs(config, 10, start=100)
    later = data.read(config)
    fresh = later.new["dpo"]
    assert fresh and not {r["id"] for r in fresh} & {r["id"] for r in new}, "consumed rows are no longer new"
    assert len(later.replay["dpo"]) == round(0.5 * len(fresh))
    assert {r["id"] for r in later.replay["dpo"]} <= {r["id"] for r in new}, "replay comes from older rows"


def test_objective_choice():
    pairs = data.Batch(new={"dpo": [{}], "kto": [{}], "sft": [{}]})
    thumbs = data.Batch(new={"dpo": [], "kto": [{}], "sft": [{}]})
    fixes = data.Batch(new={"dpo": [], "kto": [], "sft": [{}]})
    assert data.choose_objectives(pairs, []) == ["dpo", "kto", "sft"]
    assert data.choose_objectives(thumbs, []) == ["kto", "sft"]
    assert data.choose_objectives(fixes, []) == ["sft"]
    assert data.choose_objectives(data.Batch(), []) == []
    assert data.choose_objectives(fixes, ["raft", "dpo"]) == ["raft", "dpo"]
    assert data.consumed_kinds(["raft", "dpo"]) == ["sft", "dpo"]


def test_sft_leaves_dpos_chosen_answers_to_dpo_when_it_has_the_likelihood_term():
    ask = [{"role": "user", "content": "Who leads it?"}]
    fix, other = [{"role": "assistant", "content": "Ada [1]."}], [{"role": "assistant", "content": "Bo."}]
    upvoted = {"prompt": [{"role": "user", "content": "And the budget?"}], "completion": other}
    pair, correction = {"prompt": ask, "chosen": fix, "rejected": other}, {"prompt": ask, "completion": fix}
    batch = data.Batch(new={"dpo": [pair], "sft": [correction]}, replay={"sft": [upvoted]})
    assert data.objective_rows(batch, "sft", ["dpo", "sft"], 1.0) == [upvoted], "the correction trains once"
    assert data.twice_left_out(batch, ["dpo", "sft"], 1.0) == (
        "sft: 1 rows are the chosen answers of this run's DPO pairs, trained there with the likelihood term"
        " (train.sft_weight), not a second time"
    )
    for objectives, weight in ((["dpo", "sft"], 0.0), (["sft"], 1.0), (["sft", "dpo"], 1.0)):
        expected = 2 if weight == 0.0 or "dpo" not in objectives else 1
        assert len(data.objective_rows(batch, "sft", objectives, weight)) == expected, (objectives, weight)
    assert (
        data.twice_left_out(batch, ["dpo", "sft"], 0.0) is None
        and data.objective_rows(batch, "dpo", ["dpo", "sft"], 1.0) == batch.new["dpo"]
    )


def test_too_little_feedback_does_nothing_and_says_so(home: Path):
    config = config_mod.load(home, environ={})
    seed_pairs(config, 6)
    result = run_nightjar("train", home=home)
    assert result.returncode == 0, result.stderr
    assert "nothing to do" in result.stdout and "fewer than train.min_new_rows (20)" in result.stdout
    assert not (home / "models" / "CURRENT").exists()
    dry = run_nightjar("train", "--dry-run", home=home, env={"NIGHTJAR_TRAIN_MIN_NEW_ROWS": "2"})
    assert dry.returncode == 0, dry.stderr
    assert "would train dpo from base" in dry.stdout and "dpo: " in dry.stdout
    trained = [line for line in dry.stdout.splitlines() if "dpo at train.max_length:" in line]
    assert len(trained) == 1 and "row(s) trained" in trained[0], dry.stdout  # what fitting would do
    assert not (home / "models" / ".staging").exists() or not any((home / "models" / ".staging").iterdir())


# ---- the lock and the busy machine ----
def test_a_second_run_is_refused_while_one_holds_the_lock(home: Path):
    config = config_mod.load(home, environ={})
    with run_lock(config):
        result = run_nightjar("train", home=home)
        assert_one_line_error(result, "another training run is in progress")
    with run_lock(config):  # released: taken again at once
        pass
    with (config.models_dir / ".train.lock").open() as fh:  # and free for anyone
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_busy_machine_waits_then_runs_or_skips():
    loads = iter([3.0, 2.5, 0.4])
    slept: list[float] = []
    assert busy_reason(1.0, "wait", 60, load=lambda: next(loads), sleep=slept.append) is None
    assert slept == [60, 60], "it checked again every minute until the load fell"
    why = busy_reason(1.0, "skip", 60, load=lambda: 2.0, sleep=slept.append)
    assert why and "load 2.00" in why and "train.max_load 1.0" in why and len(slept) == 2
    why = busy_reason(1.0, "wait", 0, load=lambda: 2.0, sleep=slept.append)
    assert why and "after waiting 0 min" in why


def test_scheduled_run_on_a_busy_machine_skips_and_logs_why(home: Path):
    config = config_mod.load(home, environ={})
    seed_pairs(config, 25)
    env = {"NIGHTJAR_TRAIN_MAX_LOAD": "0.000001", "NIGHTJAR_TRAIN_BUSY": "skip"}
    result = run_nightjar("train", "--scheduled", home=home, env=env)
    assert result.returncode == 0, result.stderr
    assert "skipped" in result.stdout and "machine busy" in result.stdout
    last = runs.last_run(config)
    assert last["outcome"] == "skipped" and "machine busy" in last["reasons"][0]
    assert "skipped: machine busy" in (home / "logs" / "train.log").read_text()


# ---- the device plan ----
def test_device_plan_selection():
    assert device_plan(cuda=False, bitsandbytes=True).description == "CPU: LoRA, fp32"
    qlora = device_plan(cuda=True, bitsandbytes=True)
    assert qlora.quantize_4bit and "QLoRA" in qlora.description and "bf16" in qlora.description
    plain = device_plan(cuda=True, bitsandbytes=False)
    assert not plain.quantize_4bit and plain.cuda
    here = device_plan()  # this machine has no GPU
    assert not here.cuda and not here.quantize_4bit


def test_one_example_per_forward_pass_on_the_cpu_and_whole_batches_on_a_gpu(tmp_path: Path):
    cpu, gpu = device_plan(cuda=False), device_plan(cuda=True, bitsandbytes=False)

    def split(plan, least=1, **train) -> tuple[int, int]:
        args = trl_args(config_mod.TrainConfig(**train), plan, tmp_path, least)
        return args["per_device_train_batch_size"], args["gradient_accumulation_steps"]

    assert split(cpu) == (1, 4)  # padding four rows to the longest costs more than batching gains
    assert split(cpu, least=2) == (2, 2)  # KTO estimates its KL term across a batch
    assert split(gpu) == (4, 1)
    assert split(cpu, micro_batch_size=2, batch_size=8) == (2, 4)
    assert split(cpu, micro_batch_size=16) == (4, 1)  # never more than a step's examples
    problems = config_mod.TrainConfig(micro_batch_size=-1).check()
    assert problems == ["train.micro_batch_size must be 0 (automatic) or more"]


def scores(**kw) -> ModelScores:
    base = dict(
        dpo_pairs=10, dpo_accuracy=0.5, dpo_margin=-0.2, perplexity=10.0, general_answered=5, general_total=5
    )
    return ModelScores(**{**base, **kw})


# ---- RAFT ranking and the rule reward ----
def test_rules_reject_empty_answers_and_invented_citations():
    prompt = [
        SYSTEM,
        {"role": "user", "content": "Sources:\n[1] a.txt: owls\n[2] b.txt: larks\n\nWho hoots?"},
    ]
    assert rules(prompt, say("Owls hoot [1]."))
    assert rules(prompt, say("Owls [1] and larks [2]."))
    assert not rules(prompt, say("Owls hoot [3]."))
    assert not rules(prompt, say("   "))
    assert not rules(ask("Who hoots?"), say("Owls [1]."))


def test_raft_keeps_the_best_answer_by_standardized_reward():
    prompts = [ask("one?"), ask("two?")]
    answers = [["short", "a much longer answer", ""], ["x [7]", "fine", "finest answer"]]
    length = lambda prompt, completion: float(len(completion[0]["content"]))  # noqa: E731
    rows, stats = best(prompts, answers, {"length": length})
    assert [r["completion"][0]["content"] for r in rows] == ["a much longer answer", "finest answer"]
    assert stats["failed_rules"] == 2 and stats["kept"] == 2 and stats["candidates"] == 6
    vowels = lambda prompt, completion: -float(sum(c in "aeiou" for c in completion[0]["content"]))  # noqa: E731
    rows, _ = best(prompts, answers, {"length": length, "few vowels": lambda p, c: 1000 * vowels(p, c)})
    assert rows[0]["completion"][0]["content"] == "short", (
        "standardized scores weigh alike, whatever their scale"
    )
    rows, stats = best([ask("three?")], [["", " "]], {})
    assert rows == [] and stats["kept"] == 0


# ---- reports and the run log ----
def test_report_files_and_run_log(config, tmp_path: Path):
    record = {
        "run_id": "20250101-030000-abc",
        "outcome": "published",
        "version": "v1",
        "objectives": ["dpo"],
        "rows": {"dpo": {"new": 30, "replay": 0, "holdout": 8}},
        "before": scores().to_dict(),
        "after": scores(dpo_accuracy=0.9, dpo_margin=0.4, perplexity=10.2).to_dict(),
        "checks": [{"name": "held-out pairs", "passed": True, "detail": "accuracy 0.50 -> 0.90"}],
        "training": {
            "dpo": [{"step": s, "loss": 0.7 - s / 20, "rewards/margins": s / 10} for s in range(1, 9)]
        },
        "stages": {"train": {"seconds": 12.5, "peak_rss_mib": 900.0}},
    }
    report.write(tmp_path, record)
    md = (tmp_path / "report.md").read_text()
    assert "v1 is now served" in md and "| preference accuracy | 0.500 | 0.900 |" in md
    assert "| train | 12.5 | 900 |" in md and "loss 0.6500 -> 0.3000" in md
    assert json.loads((tmp_path / "report.json").read_text())["version"] == "v1"
    for png in (report.LOSS_PNG, report.HELDOUT_PNG):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # a whole update failing a quick canary is not scored on the holdout: its report still draws
    quick = scores(dpo_pairs=0, dpo_accuracy=None, dpo_margin=None, perplexity=12.0)
    rejected = {**record, "outcome": "rejected", "after": quick.to_dict()}
    report.write(tmp_path / "rejected", rejected)
    assert "| preference accuracy | 0.500 | - |" in (tmp_path / "rejected" / "report.md").read_text()
    assert (tmp_path / "rejected" / report.HELDOUT_PNG).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    assert runs.last_run(config) is None
    runs.log_event(config, {"run": "a", "event": "start"})
    runs.log_event(config, {"run": "a", "event": "end", "outcome": "rejected", "reasons": ["worse"]})
    runs.log_event(config, {"run": "b", "event": "start"})
    assert runs.last_run(config)["outcome"] == "unfinished", "a run killed midway shows as such"
    runs.log_event(config, {"run": "b", "event": "end", "outcome": "published", "version": "v2"})
    last = runs.last_run(config)
    assert (last["run"], last["outcome"], last["version"]) == ("b", "published", "v2") and last["started"]


def test_train_report_without_runs(home: Path):
    result = run_nightjar("train", "--report", home=home)
    assert result.returncode == 0 and "no training run yet" in result.stdout


def test_schedule_rejects_bad_times(home: Path, tmp_path: Path):
    from assistant.schedule import parse_time

    env = {"NIGHTJAR_SCHEDULE_CRONTAB": str(tmp_path / "crontab")}
    assert_one_line_error(run_nightjar("schedule", "--at", "25:00", home=home, env=env), "25:00", "HH:MM")
    assert not (tmp_path / "crontab").exists()
    for bad in ("3am", "12:60", "", "1:2:3"):
        with pytest.raises(NightjarError, match="HH:MM"):
            parse_time(bad)
    assert parse_time("3:05") == (3, 5) and parse_time("23:59") == (23, 59)


# ---- the schedule ----
def test_schedule_with_a_crontab(home: Path, tmp_path: Path):
    crontab = tmp_path / "crontab"
    crontab.write_text("0 1 * * * backup.sh\n")
    env = {"NIGHTJAR_SCHEDULE_CRONTAB": str(crontab)}
    result = run_nightjar("schedule", "--at", "03:00", home=home, env=env)
    assert result.returncode == 0, result.stderr
    assert "nightly training at 03:00 (cron" in result.stdout and "next run" in result.stdout
    lines = crontab.read_text().splitlines()
    assert lines[0] == "0 1 * * * backup.sh", "the user's other entries stay"
    assert (
        lines[1].startswith("0 3 * * * ") and f"--home {home}" in lines[1] and "train --scheduled" in lines[1]
    )
    assert f">> {home}/logs/schedule.log 2>&1" in lines[1]

    moved = run_nightjar("schedule", "--at", "4:30", home=home, env=env)
    assert moved.returncode == 0 and len(crontab.read_text().splitlines()) == 2, "moved, not added twice"
    status = run_nightjar("schedule", "--status", home=home, env=env)
    assert "nightly training at 04:30" in status.stdout and "no training run yet" in status.stdout

    config = config_mod.load(home, environ={})
    runs.log_event(config, {"run": "r1", "event": "start"})
    runs.log_event(config, {"run": "r1", "event": "end", "outcome": "rejected", "reasons": ["no better"]})
    status = run_nightjar("schedule", "--status", home=home, env=env)
    assert "last run" in status.stdout and "rejected (no better)" in status.stdout

    removed = run_nightjar("schedule", "--remove", home=home, env=env)
    assert removed.returncode == 0 and "removed" in removed.stdout
    assert crontab.read_text() == "0 1 * * * backup.sh\n"
    again = run_nightjar("schedule", "--remove", home=home, env=env)
    assert "no nightly training was scheduled" in again.stdout


def test_schedule_with_a_systemd_user_timer(home: Path, tmp_path: Path):
    units = tmp_path / "systemd-user"
    env = {"NIGHTJAR_SCHEDULE_UNIT_DIR": str(units)}
    result = run_nightjar("schedule", "--at", "03:15", home=home, env=env)
    assert result.returncode == 0, result.stderr
    assert "nightly training at 03:15 (systemd" in result.stdout
    (timer,) = units.glob("nightjar-train-*.timer")
    service = timer.with_suffix(".service")
    assert "OnCalendar=*-*-* 03:15:00" in timer.read_text() and "Persistent=true" in timer.read_text()
    unit = service.read_text()
    assert "Type=oneshot" in unit and f'"--home" "{home}" "train" "--scheduled"' in unit
    assert f"StandardOutput=append:{home}/logs/schedule.log" in unit
    assert "03:15" in run_nightjar("schedule", "--status", home=home, env=env).stdout
    assert run_nightjar("schedule", "--remove", home=home, env=env).returncode == 0
    assert list(units.iterdir()) == []
    assert "no nightly training scheduled" in run_nightjar("schedule", "--status", home=home, env=env).stdout


def test_next_run_time():
    import datetime as dt

    from assistant.schedule import next_run

    now = dt.datetime(2025, 5, 1, 2, 0)
    assert next_run("03:00", now) == dt.datetime(2025, 5, 1, 3, 0)
    assert next_run("01:30", now) == dt.datetime(2025, 5, 2, 1, 30)


# ---- faults: a damaged lineage, a full disk ----
def test_a_version_with_damaged_adapters_is_reported(config):
    from trainer.lineage import adapters_of

    version = config.models_dir / "v4"
    (version / "adapter" / "0-dpo").mkdir(parents=True)
    (version / "adapter" / "0-dpo" / "adapter_config.json").write_text("{}")
    with pytest.raises(NightjarError, match="v4 cannot be trained further.*missing or damaged"):
        adapters_of(config, "v4")
    (version / "adapter" / "0-dpo" / "adapter_model.safetensors").write_bytes(b"weights")
    (version / "lineage" / "000-v2-0-kto").mkdir(parents=True)
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (version / "lineage" / "000-v2-0-kto" / name).write_text("x")
    assert [p.name for p in adapters_of(config, "v4")] == ["000-v2-0-kto", "0-dpo"], "lineage first, in order"
    assert adapters_of(config, "base") == []


def test_out_of_disk_is_a_clear_message_and_nothing_is_left(config, monkeypatch):
    import errno
    import shutil

    from trainer import staging
    from trainer.run import train

    seed_pairs(config, 25)
    config.train.min_holdout_rows = 2  # 25 pairs hold a few out: enough for the run to reach the disk check
    monkeypatch.setattr(
        shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000)
    )
    with pytest.raises(NightjarError, match="not enough free disk space"):
        train(config)
    monkeypatch.undo()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(staging, "check_disk", full)  # the disk fills up during the run
    with pytest.raises(NightjarError, match="out of disk space: nothing was published"):
        train(config)
    assert runs.last_run(config)["outcome"] == "failed"
    assert not (config.models_dir / staging.STAGING).exists() or not any(
        (config.models_dir / staging.STAGING).iterdir()
    )
    with ReplayBuffer(config) as buf:
        assert len(buf.rows("dpo", "train", only_unconsumed=True)) == len(buf.rows("dpo", "train"))


def test_stage_progress_on_a_terminal_and_plain_lines_elsewhere(monkeypatch):
    import io
    import time

    from rich.console import Console

    from trainer.progress import Stages

    screen = io.StringIO()
    terminal = Console(file=screen, force_terminal=True, width=120)
    with Stages(terminal, expected={"master": 0.5}) as stages:
        stages.start("master")  # no steps: the last run's time drives the bar
        time.sleep(0.4)
        stages.start("train")
        for step in range(1, 4):
            stages.update(step, 3, "dpo steps")
    shown = screen.getvalue()
    assert "master" in shown and "train: dpo steps" in shown and "3/3" in shown and "ETA" in shown
    assert set(stages.times) == {"master", "train"} and stages.times["master"]["seconds"] >= 0.4
    assert stages.times["train"]["peak_rss_mib"] > 10

    lines = io.StringIO()
    with Stages(Console(file=lines, force_terminal=False)) as stages:
        stages.start("read")
    assert lines.getvalue().startswith("read: done in ")

    monkeypatch.setenv("NIGHTJAR_FAULT_KILL_AT", "export")
    killed = []
    monkeypatch.setattr("os.kill", lambda pid, sig: killed.append(sig))
    with Stages() as stages:
        stages.start("merge")
        assert killed == []
        stages.start("export")
    assert killed == [9], "the fault hook SIGKILLs the run when the named stage starts"


def test_eval_scores_are_remembered_per_model_file_and_holdout(tmp_path: Path, monkeypatch):
    import os

    from trainer import evaluate

    calls: list[Path] = []

    def fake_score(gguf, holdout, n_ctx, progress=None, threads=0, quick=None):
        calls.append(gguf)
        return ModelScores(perplexity=float(len(calls)))

    monkeypatch.setattr(evaluate, "score", fake_score)
    model, cache = tmp_path / "model.gguf", tmp_path / "cache.json"
    model.write_bytes(b"GGUF model")
    holdout = {"dpo": [{"id": "a"}, {"id": "b"}]}
    first = evaluate.score_cached(cache, model, holdout, 512)
    assert evaluate.score_cached(cache, model, holdout, 512) == first and len(calls) == 1
    moved = tmp_path / "v1.gguf"
    os.rename(model, moved)  # what a publish does
    assert evaluate.score_cached(cache, moved, holdout, 512) == first and len(calls) == 1
    evaluate.score_cached(cache, moved, {"dpo": [{"id": "a"}, {"id": "c"}]}, 512)
    assert len(calls) == 2, "other held-out rows: scored again"
    os.utime(moved, ns=(1, 1))
    assert evaluate.score_cached(cache, moved, holdout, 512).perplexity == 3.0, "another file: scored again"


def test_the_served_type_ladder_starts_at_the_base_type_unless_one_is_configured():
    from trainer.quantize import ladder

    assert ladder("Q4_1", "") == ["Q4_1", "Q8_0", "F16"]
    assert ladder("Q8_0", "") == ["Q8_0", "F16"]
    assert ladder("Q4_1", "q4_k_m") == ["Q4_K_M"]


def test_a_scheduled_run_names_the_home_only_when_the_user_gave_one(home: Path, monkeypatch, tmp_path):
    from assistant.schedule import _command

    assert _command(config_mod.load(home, environ={}))[-4:] == ["--home", str(home), "train", "--scheduled"]
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))
    default = config_mod.load(None, environ={})  # the default home: its config is ~/.config/nightjar's
    assert "--home" not in _command(default) and _command(default)[-2:] == ["train", "--scheduled"]


def test_a_run_killed_after_publishing_has_its_rows_consumed_by_the_next(
    config: config_mod.Config, model_path: Path, tmp_path: Path
):
    import shutil

    from assistant import registry
    from trainer.staging import clear_staging, keep_only_published

    with ReplayBuffer(config) as buf:
        for n in range(3):
            buf.add_preference(f"Question {n}?", f"Good {n}.", f"Bad {n}.")
        rows = buf.rows("dpo", "train", only_unconsumed=True)
    assert rows
    staging = tmp_path / "staging"
    staging.mkdir()
    shutil.copy(model_path, staging / registry.MODEL_FILE)
    (staging / "rows.jsonl").write_text("".join(json.dumps({"kind": "dpo", **r}) + "\n" for r in rows))
    for scratch in ("reward-model", "start"):  # a run's scratch: never part of a version
        (staging / scratch).mkdir()
        (staging / scratch / "weights.bin").write_bytes(b"x")
    (staging / "model-F32.gguf").write_bytes(b"float export")
    keep_only_published(staging)
    assert sorted(p.name for p in staging.iterdir()) == [registry.MODEL_FILE, "rows.jsonl"]
    registry.publish(config, staging, {"objective": "dpo", "run_id": "run-killed"})  # ...and the kill here

    clear_staging(config)  # what the next run does first, under the lock
    with ReplayBuffer(config) as buf:
        assert buf.consumed("run-killed") == {"dpo": [r["id"] for r in rows]}
        assert buf.rows("dpo", "train", only_unconsumed=True) == []
    clear_staging(config)  # done once: nothing is marked twice
    with ReplayBuffer(config) as buf:
        assert buf.consumed("run-killed") == {"dpo": [r["id"] for r in rows]}
