"""Kill -9, SIGTERM and Ctrl-C at arbitrary moments, with real subprocesses and real signals.

After resuming, the final weights and metrics must equal those of a run that was never
interrupted (on CPU, bit for bit), including dropout randomness and batch order.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from gptcli import checkpoint as ckpt
from gptcli import rundir
from gptcli.metrics import read_metrics

from ..conftest import gptcli_exe, run_gptcli

# 36 steps per epoch; saves every 4 steps, so kills land in steps, evals and saves alike.
ARGS = [
    "train",
    "the-verdict.txt",
    "--epochs",
    "2",
    "--context-length",
    "32",
    "--emb-dim",
    "32",
    "--n-heads",
    "4",
    "--n-layers",
    "2",
    "--batch-size",
    "4",
    "--eval-freq",
    "5",
    "--save-every",
    "4",
    "--keep-last",
    "3",
]


def final_state(run: Path) -> dict[str, torch.Tensor]:
    return ckpt.load_checkpoint(rundir.list_step_checkpoints(run)[-1])["model_state_dict"]


def metric_values(run: Path) -> list:
    return [
        (r["type"], r["step"], r.get("train_loss"), r.get("val_loss"), r.get("text"))
        for r in read_metrics(run / "metrics.jsonl")
    ]


def assert_same_run(a: Path, b: Path) -> None:
    sa, sb = final_state(a), final_state(b)
    assert sa.keys() == sb.keys()
    diff = [k for k in sa if not torch.equal(sa[k], sb[k])]
    assert not diff, f"weights differ: {diff[:5]}"
    assert metric_values(a) == metric_values(b)


def start(args, cwd):
    return subprocess.Popen(
        [*gptcli_exe(), *args], cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )


def wait_for_checkpoint(run: Path, proc, timeout=600) -> bool:
    """Wait until the run has a checkpoint (generous: CI machines can be slow and shared)."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if rundir.list_step_checkpoints(run):
            return True
        time.sleep(0.05)
    return bool(rundir.list_step_checkpoints(run))


def test_kill_9_three_times_then_resume_equals_uninterrupted(workdir):
    run_gptcli(*ARGS, "--out", "runs/full", cwd=workdir, check=True)
    cut = workdir / "runs" / "cut"
    rng = random.Random(int(os.environ.get("GPTCLI_TEST_SEED", "20261127")))
    kills = 0
    proc = start([*ARGS, "--out", "runs/cut"], workdir)
    for _ in range(3):
        wait_for_checkpoint(cut, proc)
        time.sleep(rng.uniform(0.0, 1.5))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
        # whatever the kill interrupted, the newest complete checkpoint resumes
        proc = start(["resume", "runs/cut"], workdir)
    assert proc.wait(timeout=300) == 0, proc.stderr.read()
    assert kills >= 1
    assert not list((cut / "checkpoints").glob(".tmp-*")), "stale temporary files are cleaned up"
    assert_same_run(workdir / "runs/full", cut)


def test_sigterm_saves_exits_143_and_resumes_exactly(workdir):
    run_gptcli(*ARGS, "--out", "runs/full", cwd=workdir, check=True)
    proc = start([*ARGS, "--out", "runs/cut"], workdir)
    assert wait_for_checkpoint(workdir / "runs/cut", proc)
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 143, err
    assert "gptcli resume" in err
    run_gptcli("resume", "runs/cut", cwd=workdir, check=True)
    # resuming a second time from a finished run is refused; resuming twice in a row mid-run is
    # covered by the kill -9 test
    assert_same_run(workdir / "runs/full", workdir / "runs/cut")


def test_second_ctrl_c_aborts_at_once_and_keeps_the_last_checkpoint(workdir):
    proc = start([*ARGS, "--out", "runs/cut", "--save-every", "2"], workdir)
    assert wait_for_checkpoint(workdir / "runs/cut", proc)
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 130, err
    assert "Traceback" not in err
    run = workdir / "runs/cut"
    assert rundir.list_step_checkpoints(run)
    for p in rundir.list_step_checkpoints(run):
        ckpt.load_checkpoint(p)  # every checkpoint under a final name is complete


def test_stale_temporary_files_are_removed_and_ignored(workdir):
    run_gptcli(*ARGS[:2], "--epochs", "1", *ARGS[4:], "--out", "runs/r", cwd=workdir, check=True)
    d = workdir / "runs/r/checkpoints"
    stale = d / ".tmp-99999-step-00000099.pth"
    stale.write_bytes(b"half a checkpoint")
    run_gptcli("resume", "runs/r", "--epochs", "2", cwd=workdir, check=True)
    assert not stale.exists()


def test_resume_skips_a_truncated_newest_checkpoint_with_a_warning(workdir):
    run_gptcli(*ARGS[:2], "--epochs", "1", *ARGS[4:], "--out", "runs/r", cwd=workdir, check=True)
    newest = rundir.list_step_checkpoints(workdir / "runs/r")[-1]
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 2])
    proc = run_gptcli("resume", "runs/r", "--epochs", "2", cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    assert "skipping" in proc.stderr and newest.name in proc.stderr


def _verdict_as_jsonl(workdir: Path) -> Path:
    """The verdict's paragraphs as JSON Lines records, the text under "body" (not the default)."""
    import json

    paragraphs = [p for p in (workdir / "the-verdict.txt").read_text(encoding="utf-8").split("\n\n") if p.strip()]
    path = workdir / "verdict.jsonl"
    path.write_text("".join(json.dumps({"id": i, "body": p}) + "\n" for i, p in enumerate(paragraphs)))
    return path


@pytest.mark.slow
def test_sigterm_then_resume_with_a_jsonl_input_equals_uninterrupted(workdir):
    _verdict_as_jsonl(workdir)
    args = ["train", "verdict.jsonl", "--text-field", "body", "--epochs", "1", *ARGS[4:]]
    run_gptcli(*args, "--out", "runs/full", cwd=workdir, check=True)
    proc = start([*args, "--out", "runs/cut"], workdir)
    assert wait_for_checkpoint(workdir / "runs/cut", proc)
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 143, err
    # the resumed run reads the records again (through the token cache) with the saved --text-field
    run_gptcli("resume", "runs/cut", cwd=workdir, check=True)
    assert_same_run(workdir / "runs/full", workdir / "runs/cut")
    assert (
        ckpt.load_checkpoint(rundir.list_step_checkpoints(workdir / "runs/cut")[-1])["train_config"]["text_field"]
        == "body"
    )
