"""Smoke tests of the scripts in examples/, run as a user runs them (bash, the installed gptcli),
with GPTCLI_EXAMPLE_TINY=1 so each finishes in seconds."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gptcli import checkpoint as ckpt
from gptcli import rundir
from gptcli.metrics import read_metrics

from .conftest import ROOT
from .test_ux import save_fake_gpt2

EXAMPLES = ROOT / "examples"
TESTED = {"book_run.sh", "continue_gpt2.sh", "resume_after_interrupt.sh", "multi_gpu.sh"}


def run_example(script: str, *args: str, cwd: Path, env: dict | None = None, timeout: float = 300):
    bin_dir = str(Path(sys.executable).parent)
    full_env = {
        **os.environ,
        "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),  # this environment's gptcli, torchrun, python
        "GPTCLI_EXAMPLE_TINY": "1",
        "OMP_NUM_THREADS": "1",
        **(env or {}),
    }
    proc = subprocess.run(
        ["bash", str(EXAMPLES / script), *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, (
        f"{script} exited {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    )
    return proc


def test_every_example_script_is_tested_and_parses():
    scripts = {p.name for p in EXAMPLES.glob("*.sh")}
    assert scripts == TESTED, f"untested example scripts: {scripts - TESTED}"
    for name in scripts:
        path = EXAMPLES / name
        assert os.access(path, os.X_OK), f"{name} is not executable"
        assert path.read_text().startswith("#!/usr/bin/env bash\n")
        subprocess.run(["bash", "-n", str(path)], check=True)


@pytest.mark.slow
def test_book_run(tmp_path):
    proc = run_example("book_run.sh", cwd=tmp_path)
    run = tmp_path / "runs" / "book"
    assert rundir.list_step_checkpoints(run) and (run / "loss.png").read_bytes()[:4] == b"\x89PNG"
    # the config's settings, with the tiny overrides on top
    saved = ckpt.load_checkpoint(rundir.list_step_checkpoints(run)[-1])
    assert saved["train_config"]["lr"] == 0.0004 and saved["train_config"]["seed"] == 123
    assert saved["model_config"]["emb_dim"] == 32
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("Every effort moves you")  # the epoch's greedy sample
    assert lines[1].startswith("Every effort moves you")  # gptcli sample --temperature 1.4 --top-k 25


@pytest.mark.slow
def test_continue_gpt2(tmp_path, _isolated_home):
    fake = save_fake_gpt2(_isolated_home)  # stands in for `gptcli download --size 124M`
    proc = run_example("continue_gpt2.sh", cwd=tmp_path)
    assert "download" not in proc.stderr.lower()
    run = tmp_path / "runs" / "gpt2-continued"
    saved = ckpt.load_checkpoint(rundir.list_step_checkpoints(run)[-1])
    assert saved["model_config"] == ckpt.load_checkpoint(fake)["model_config"]  # the architecture came from the weights
    assert saved["train_config"]["init"] == "gpt2-124M" and saved["train_config"]["lr"] == 5e-5
    assert "perplexity" in proc.stdout  # gptcli eval on the same text


def test_continue_gpt2_passes_files_then_flags(tmp_path, _isolated_home):
    save_fake_gpt2(_isolated_home)
    stub = {"GPTCLI": "echo gptcli", "OUT": "runs/mine"}  # print each command instead of running it
    out = run_example(
        "continue_gpt2.sh", "a.txt", "notes/", "--lr", "0.0001", cwd=tmp_path, env=stub
    ).stdout.splitlines()
    cfg = EXAMPLES / "configs" / "gpt2-124M-continue.yaml"
    assert (
        out[0]
        == f"gptcli train a.txt notes/ --config {cfg} --out runs/mine --epochs 1 --stride 200 --eval-freq 5 --eval-iter 1 --lr 0.0001"
    )
    assert out[2] == "gptcli eval a.txt notes/ --checkpoint runs/mine"
    (_isolated_home / "gpt2" / "124M" / "model.pth").unlink()
    out = run_example("continue_gpt2.sh", cwd=tmp_path, env={**stub, "GPTCLI_EXAMPLE_TINY": "0"}).stdout.splitlines()
    assert out[0] == "gptcli download --size 124M"  # fetched once, when missing
    assert out[1] == f"gptcli train {EXAMPLES / 'the-verdict.txt'} --config {cfg} --out runs/mine"


@pytest.mark.slow
def test_resume_after_interrupt(tmp_path):
    proc = run_example("resume_after_interrupt.sh", cwd=tmp_path)
    assert "interrupted (exit code 130)" in proc.stderr, proc.stderr[-2000:]
    assert "continue with: gptcli resume runs/interrupted" in proc.stderr
    run = tmp_path / "runs" / "interrupted"
    last = ckpt.load_checkpoint(rundir.list_step_checkpoints(run)[-1])
    assert last["progress"]["epoch"] == 2
    evals = [r["step"] for r in read_metrics(run / "metrics.jsonl") if r["type"] == "eval"]
    assert evals == list(range(0, evals[-1] + 1, 5))  # one unbroken log across the interruption
    assert "runs/interrupted" in proc.stdout.splitlines()[-1]  # gptcli runs


def _ddp_missing() -> str | None:
    if importlib.util.find_spec("gptcli.distributed") is None:
        return (
            "needs DDP support in `gptcli train` under torchrun (gptcli/distributed.py, the distributed-training work)"
        )
    if shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None:
        return "torchrun is not installed beside this Python"
    return None


@pytest.mark.slow
@pytest.mark.skipif(_ddp_missing() is not None, reason=str(_ddp_missing()))
def test_multi_gpu_with_two_cpu_processes(tmp_path):
    proc = run_example("multi_gpu.sh", "--device", "cpu", cwd=tmp_path, env={"NPROC": "2"})
    run = tmp_path / "runs" / "multi-gpu"
    last = ckpt.load_checkpoint(rundir.list_step_checkpoints(run)[-1])
    assert last["progress"]["epoch"] == 1 and last.get("world_size") == 2
    # rank 0 reports for both processes: one set of log lines, one sample
    assert proc.stderr.count("done: runs/multi-gpu") == 1 and proc.stderr.count("ep 1 step 000000:") == 1, proc.stderr
    assert proc.stdout.count("Every effort moves you") == 1
