"""Budgets and early stopping: --max-steps, --max-tokens, --max-time, --patience, and
--eval-freq/--save-every in steps, tokens or time.

A run that a budget ends evaluates, saves and exits 0 saying which budget ended it; `resume` with
a larger budget continues exactly: on CPU its final weights equal those of one run given the
larger budget from the start.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from gptcli import checkpoint as ckpt
from gptcli import console, rundir
from gptcli.commands.resume import resume_command
from gptcli.commands.train import train_command
from gptcli.config import TrainConfig, parse_count, parse_duration, parse_interval
from gptcli.errors import UsageError
from gptcli.metrics import read_metrics
from gptcli.training import lr_at

from ..conftest import VERDICT, run_gptcli

MODEL = {"context_length": 12, "emb_dim": 32, "n_heads": 4, "n_layers": 2}
# ~2k tokens: 18 optimizer steps of 8 windows (96 tokens) per epoch.
SMALL_TEXT = VERDICT.read_text(encoding="utf-8")[:8000]
TOKENS_PER_STEP = 8 * 12


@pytest.fixture
def data(tmp_path) -> Path:
    path = tmp_path / "small.txt"
    path.write_text(SMALL_TEXT, encoding="utf-8")
    return path


def train(out: Path, data: Path, **extra) -> Path:
    flags = {"data": [str(data)], "epochs": 2, "batch_size": 8, "eval_freq": 4, "sample_tokens": 3, **extra}
    try:
        return train_command(model_flags=dict(MODEL), train_flags=flags, out=out, quiet=True)
    finally:
        console.set_quiet(False)


def resume(target: Path, **kw) -> Path:
    try:
        return resume_command(target, quiet=True, **kw)
    finally:
        console.set_quiet(False)


def last_checkpoint(run: Path) -> dict:
    return ckpt.load_checkpoint(rundir.list_step_checkpoints(run)[-1])


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = last_checkpoint(a)["model_state_dict"], last_checkpoint(b)["model_state_dict"]
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


# ---------------------------------------------------------------------------------------------
# Exact resume with a larger budget


def test_max_steps_then_resume_with_more_equals_one_run(tmp_path, data):
    short = train(tmp_path / "short", data, max_steps=6)
    progress = last_checkpoint(short)["progress"]
    assert progress["step"] == 6 and progress["epoch"] == 0  # stopped inside the first epoch
    # Stopped by its budget, the run is finished until the budget grows.
    with pytest.raises(UsageError, match="already reached --max-steps 6"):
        resume(short)
    resume(short, max_steps=12)
    full = train(tmp_path / "full", data, max_steps=12)
    assert last_checkpoint(short)["progress"]["step"] == last_checkpoint(full)["progress"]["step"] == 12
    assert_same_weights(short, full)


def test_max_tokens_then_resume_with_more_equals_one_run_across_an_epoch(tmp_path, data):
    # 700 tokens end at step 8 (768 tokens); "2k" at step 21, past the first epoch's 18 steps.
    short = train(tmp_path / "short", data, max_tokens="700")
    assert last_checkpoint(short)["progress"]["tokens_seen"] == 8 * TOKENS_PER_STEP
    resume(short, max_tokens="2k")
    full = train(tmp_path / "full", data, max_tokens="2k")
    done = last_checkpoint(full)["progress"]
    assert done["step"] == 21 and done["epoch"] == 1
    assert last_checkpoint(short)["progress"]["step"] == 21
    assert_same_weights(short, full)
    # The budget's own evaluation is logged, the epoch sample too, and nothing twice.
    evals = [r["step"] for r in read_metrics(full / "metrics.jsonl") if r["type"] == "eval"]
    assert evals == sorted(set(evals)) and evals[-1] == 20


def test_budget_stop_evaluates_saves_and_says_why(tmp_path, data, capfd):
    flags = {"data": [str(data)], "epochs": 2, "batch_size": 8, "eval_freq": 100, "sample_tokens": 3}
    train_command(model_flags=dict(MODEL), train_flags={**flags, "max_steps": "3"}, out=tmp_path / "r")
    err = capfd.readouterr().err
    assert "stopped: --max-steps 3 at step 3" in err
    run = tmp_path / "r"
    assert [p.name for p in rundir.list_step_checkpoints(run)] == ["step-00000003.pth"]
    evals = [r["step"] for r in read_metrics(run / "metrics.jsonl") if r["type"] == "eval"]
    assert evals == [0, 2]  # the schedule's first evaluation, then the budget's


def test_max_time_stops_saves_and_exits_0(tmp_path, data):
    proc = run_gptcli(
        "train", str(data), "--context-length", "12", "--emb-dim", "32", "--n-heads", "4", "--n-layers", "2",
        "--batch-size", "8", "--eval-freq", "100", "--epochs", "5", "--max-time", "0.001s", "-o", "r",
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "stopped: --max-time 0.001s at step 1" in proc.stderr
    assert [p.name for p in rundir.list_step_checkpoints(tmp_path / "r")] == ["step-00000001.pth"]
    progress = last_checkpoint(tmp_path / "r")["progress"]
    assert progress["train_seconds"] > 0.001
    # Finished by its time budget: resume needs a larger one.
    proc = run_gptcli("resume", "r", cwd=tmp_path)
    assert proc.returncode == 2 and "already reached --max-time" in proc.stderr


# ---------------------------------------------------------------------------------------------
# The LR schedule follows the planned length


def test_schedule_decays_over_the_budget_and_resume_says_how_it_changes(tmp_path, data, capfd):
    short = train(tmp_path / "short", data, max_steps=6, warmup_steps=2)
    assert last_checkpoint(short)["progress"]["planned_steps"] == 6
    lrs = {r["step"]: r["lr"] for r in read_metrics(short / "metrics.jsonl") if r["type"] == "eval"}
    # Step 5 (0-based) is the budget's last: the rate decays over 6 steps, not the 2 epochs' 34.
    assert lrs[5] == lr_at(5, lr=4e-4, warmup_steps=2, total_steps=6, min_lr=None)
    assert lrs[5] != lr_at(5, lr=4e-4, warmup_steps=2, total_steps=34, min_lr=None)
    capfd.readouterr()
    resume_command(short, max_steps=12)
    err = capfd.readouterr().err
    assert "the cosine decay now ends at step 12 (was step 6)" in err
    assert last_checkpoint(short)["progress"]["planned_steps"] == 12


# ---------------------------------------------------------------------------------------------
# Early stopping


def test_patience_stops_and_keeps_the_best_checkpoint(tmp_path, data, capfd):
    # A learning rate far too high: the validation loss stops improving within a few evaluations.
    flags = {"data": [str(data)], "epochs": 3, "batch_size": 8, "eval_freq": 1, "sample_tokens": 3}
    run = tmp_path / "r"
    train_command(model_flags=dict(MODEL), train_flags={**flags, "lr": 0.05, "patience": 2}, out=run)
    err = capfd.readouterr().err
    evals = [r for r in read_metrics(run / "metrics.jsonl") if r["type"] == "eval"]
    assert "stopped: --patience 2" in err
    assert len(evals) < 3 * 18  # stopped before its epochs
    best = min(r["val_loss"] for r in evals)
    assert all(r["val_loss"] >= best for r in evals[-2:]) and evals[-3]["val_loss"] == best
    # best.pth holds the weights of the best evaluation, saved when it happened.
    best_obj = ckpt.load_checkpoint(rundir.best_checkpoint_path(run))
    assert best_obj["progress"]["history"][-1]["val_loss"] == best
    assert best_obj["progress"]["step"] == evals[-3]["step"] + 1
    with pytest.raises(UsageError, match="already reached --patience 2"):
        resume(run)


# ---------------------------------------------------------------------------------------------
# Units for --eval-freq and --save-every


def test_eval_freq_and_save_every_in_tokens(tmp_path, data):
    # 96 tokens a step: evaluate at the first step and whenever 500 tokens are crossed; save
    # whenever 1k tokens are crossed (steps 11 and 21; step 18 ends the epoch and saves anyway).
    run = train(tmp_path / "r", data, eval_freq="500tok", save_every="1k", max_steps=22, keep_last=10)
    evals = [r["step"] + 1 for r in read_metrics(run / "metrics.jsonl") if r["type"] == "eval"]
    crossings = [s for s in range(2, 23) if ((s - 1) * TOKENS_PER_STEP) // 500 != (s * TOKENS_PER_STEP) // 500]
    assert evals == [1, *crossings] or evals == [1, *crossings, 22]
    saved = [int(p.stem.split("-")[1]) for p in rundir.list_step_checkpoints(run)]
    assert saved == [11, 18, 21, 22]
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["eval_freq"] == "500tok"


def test_save_every_time_saves_by_the_clock(tmp_path, data):
    run = train(tmp_path / "r", data, save_every="0.001s", max_steps=4, keep_last=10, eval_freq=100)
    saved = [int(p.stem.split("-")[1]) for p in rundir.list_step_checkpoints(run)]
    assert saved == [1, 2, 3, 4]


# ---------------------------------------------------------------------------------------------
# Parsing: one validation layer for flags, YAML and checkpoints


@pytest.mark.parametrize(
    ("text", "value"), [("5000", 5000), ("10k", 10_000), ("50M", 50_000_000), ("2B", 2 * 10**9), ("1.5M", 1_500_000)]
)
def test_counts(text, value):
    assert parse_count(text) == value


@pytest.mark.parametrize(("text", "seconds"), [("90", 90.0), ("90m", 5400.0), ("2h", 7200.0), ("1h30m", 5400.0)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


def test_intervals():
    assert parse_interval(5) == ("steps", 5)
    assert parse_interval("5") == ("steps", 5)
    assert parse_interval("50M") == ("tokens", 50_000_000)
    assert parse_interval("30m") == ("seconds", 1800.0)
    assert parse_interval("200 steps") == ("steps", 200)


def test_yaml_values_are_coerced(tmp_path, data):
    config = tmp_path / "c.yaml"
    config.write_text("train:\n  max_tokens: 50M\n  max_time: 90m\n  eval_freq: '5'\n  save_every: 30m\n")
    proc = run_gptcli("train", str(data), "-c", str(config), "--max-steps", "10k", "--print-config", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    train_cfg = yaml.safe_load(proc.stdout)["train"]
    assert (train_cfg["max_tokens"], train_cfg["max_time"], train_cfg["max_steps"]) == (50_000_000, 5400.0, 10_000)
    assert (train_cfg["eval_freq"], train_cfg["save_every"]) == (5, "30m")
    # The book's settings are unchanged: eval_freq stays the integer 5.
    assert TrainConfig().to_dict()["eval_freq"] == 5


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max-tokens", "50q"], "invalid --max-tokens: '50q' (expected a count such as 5000, 50M or 2B)"),
        (["--max-tokens", "50m"], "(m is minutes; M is millions)"),
        (["--max-time", "soon"], "invalid --max-time: 'soon' (expected a duration"),
        (["--eval-freq", "0"], "invalid --eval-freq: 0 (must be >= 1)"),
        (["--save-every", "x"], "invalid --save-every: 'x'"),
        (["--max-steps", "0"], "invalid --max-steps: 0 (must be an integer >= 1)"),
        (["--patience", "-1"], "invalid --patience: -1"),
        (["--max-steps", "99999999999999999999999"], "invalid --max-steps: '99999999999999999999999' (too large"),
        (["--max-tokens", "1e30B"], "invalid --max-tokens: '1e30B'"),
    ],
)
def test_bad_values_are_one_error_line(tmp_path, data, args, message):
    proc = run_gptcli("train", str(data), *args, "--print-config", cwd=tmp_path)
    assert proc.returncode == 2
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and message in lines[0], proc.stderr


def test_bad_yaml_value_names_the_file(tmp_path, data):
    config = tmp_path / "c.yaml"
    config.write_text("train:\n  max_tokens: lots\n")
    proc = run_gptcli("train", str(data), "-c", str(config), "--print-config", cwd=tmp_path)
    assert proc.returncode == 2
    assert f"{config}: invalid max_tokens (--max-tokens): 'lots'" in proc.stderr


def test_bare_resume_skips_a_run_its_budget_ended_unless_the_budget_grows(tmp_path, data, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = train(Path("runs") / "a", data, max_steps=2, eval_freq=100)
    with pytest.raises(UsageError, match="every run under runs/ has finished"):
        resume(None)
    resume(None, max_steps=3)
    assert last_checkpoint(run)["progress"]["step"] == 3
