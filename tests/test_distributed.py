"""torchrun with gloo on CPU: sharding, loss all-reduce, exact resume, and gradient accumulation."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
import torch

from gptcli import checkpoint as ckpt
from gptcli import rundir
from gptcli.config import ModelConfig, TrainConfig
from gptcli.metrics import read_metrics
from gptcli.training import Trainer

from .conftest import TINY_MODEL, VERDICT, run_gptcli

MODEL = ["--context-length", "16", "--emb-dim", "32", "--n-heads", "4", "--n-layers", "2", "--drop-rate", "0"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args, cwd, nproc=2, check=True):
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={nproc}",
        "--master_addr=127.0.0.1",
        f"--master_port={free_port()}",
        "-m",
        "gptcli",
        *args,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(proc.stderr[-4000:])
    return proc


def evals(run) -> list[tuple]:
    return [
        (r["step"], r["tokens_seen"], r["train_loss"], r["val_loss"])
        for r in read_metrics(run / "metrics.jsonl")
        if r["type"] == "eval"
    ]


def close(a, b, tol=1e-5):
    assert len(a) == len(b) and len(a) > 0
    for x, y in zip(a, b):
        assert x[:2] == y[:2]
        assert abs(x[2] - y[2]) < tol and abs(x[3] - y[3]) < tol, (x, y)


def test_two_process_gloo_matches_one_process_with_the_same_global_batch(workdir):
    common = ["train", "the-verdict.txt", "--epochs", "1", *MODEL, "--eval-freq", "8", "--seed", "7"]
    torchrun(*common, "--batch-size", "4", "--out", "runs/ddp", cwd=workdir)
    run_gptcli(*common, "--batch-size", "8", "--out", "runs/single", cwd=workdir, check=True)
    close(evals(workdir / "runs/ddp"), evals(workdir / "runs/single"))
    # only rank 0 wrote: one metrics file, one checkpoint per save
    assert [p.name for p in rundir.list_step_checkpoints(workdir / "runs/ddp")] == ["step-00000036.pth"]


def test_resuming_a_two_process_run_matches_an_uninterrupted_one(workdir):
    common = ["train", "the-verdict.txt", "--epochs", "2", *MODEL, "--batch-size", "4", "--eval-freq", "8"]
    torchrun(*common, "--out", "runs/full", cwd=workdir)
    torchrun(*common, "--epochs", "1", "--out", "runs/cut", cwd=workdir)
    torchrun("resume", "runs/cut", "--epochs", "2", cwd=workdir)
    full = ckpt.load_checkpoint(rundir.list_step_checkpoints(workdir / "runs/full")[-1])["model_state_dict"]
    cut = ckpt.load_checkpoint(rundir.list_step_checkpoints(workdir / "runs/cut")[-1])["model_state_dict"]
    assert all(torch.equal(full[k], cut[k]) for k in full)
    assert evals(workdir / "runs/full") == evals(workdir / "runs/cut")


def test_a_two_process_checkpoint_resumes_on_one_process(workdir):
    common = ["train", "the-verdict.txt", "--epochs", "1", *MODEL, "--batch-size", "4", "--eval-freq", "8"]
    torchrun(*common, "--out", "runs/r", cwd=workdir)
    run_gptcli("resume", "runs/r", "--epochs", "2", cwd=workdir, check=True)
    last = ckpt.load_checkpoint(rundir.list_step_checkpoints(workdir / "runs/r")[-1])
    # one rank now takes the whole global batch of the same windows: 4 windows per step instead of 8
    assert last["progress"]["epoch"] == 2 and last["world_size"] == 1


@pytest.mark.parametrize("k", [2, 4])
def test_gradient_accumulation_equals_the_larger_batch(tmp_path, k):
    mcfg = ModelConfig(**{**TINY_MODEL, "context_length": 32, "drop_rate": 0.0})
    base = dict(epochs=1, data=[str(VERDICT)], eval_freq=10)
    a = Trainer(mcfg, TrainConfig(**base, batch_size=2, grad_accum=k), tmp_path / "accum")
    a.fit()
    b = Trainer(mcfg, TrainConfig(**base, batch_size=2 * k), tmp_path / "big")
    b.fit()
    wa, wb = a.model.state_dict(), b.model.state_dict()
    assert max((wa[n] - wb[n]).abs().max().item() for n in wa) < 1e-5
    close(evals(tmp_path / "accum"), evals(tmp_path / "big"))


@pytest.mark.slow
def test_the_fineweb_recipe_runs_tiny_under_torchrun_on_prepared_shards(workdir):
    """examples/configs/gpt2-124M-fineweb.yaml as the README runs it (torchrun, shards from
    `gptcli prepare`), with a tiny model and --max-steps 3 on two gloo processes."""
    from .conftest import ROOT

    run_gptcli(
        "prepare",
        "the-verdict.txt",
        "-o",
        "shards",
        "--shard-size",
        "2K",
        "--val-tokens",
        "600",
        cwd=workdir,
        check=True,
    )
    config = ROOT / "examples" / "configs" / "gpt2-124M-fineweb.yaml"
    tiny = [*MODEL, "--batch-size", "2", "--eval-iter", "1", "--no-compile", "--device", "cpu"]
    proc = torchrun(
        "train", "shards", "--config", str(config), *tiny, "--max-steps", "3", "--out", "runs/fw", cwd=workdir
    )
    assert "stopped: --max-steps 3 at step 3" in proc.stderr, proc.stderr[-3000:]
    last = ckpt.load_checkpoint(rundir.list_step_checkpoints(workdir / "runs/fw")[-1])
    assert last["progress"]["step"] == 3 and last["world_size"] == 2
    saved = last["train_config"]
    # the recipe's settings reached the run: only the model and the batch were made tiny
    assert saved["max_tokens"] == 10_000_000_000 and saved["grad_accum"] == 2 and saved["precision"] == "bf16"
    assert (saved["lr"], saved["min_lr"], saved["warmup_steps"]) == (6e-4, 6e-5, 700)
    assert (saved["weight_decay"], saved["grad_clip"], saved["decay"], saved["adam_beta2"]) == (
        0.1,
        1.0,
        "matrices",
        0.95,
    )
    assert last["model_config"]["tie_weights"] is True and last["model_config"]["qkv_bias"] is True
    groups = last["optimizer_state_dict"]["param_groups"]
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0] and all(g["betas"] == (0.9, 0.95) for g in groups)
    # 3 steps of the 700-step linear warm-up: the logged lr rises as lr * (step + 1) / 700
    lrs = [r["lr"] for r in read_metrics(workdir / "runs/fw" / "metrics.jsonl") if r["type"] == "eval"]
    assert lrs and all(abs(lr - 6e-4 * (s + 1) / 700) < 1e-12 for s, lr in zip([0, 2], lrs)), lrs


def test_standard_input_is_refused_under_torchrun_with_one_clear_error(workdir):
    proc = torchrun("train", "-", *MODEL, "--out", "runs/stdin", cwd=workdir, check=False)
    assert proc.returncode != 0
    errors = {line for line in proc.stderr.splitlines() if line.startswith("error:")}
    assert len(errors) == 1 and "'-' (standard input) cannot feed a multi-process run" in errors.pop(), proc.stderr
    # torchrun reports the failed workers with a traceback of its own; none comes from gptcli
    assert "/gptcli/" not in "".join(line for line in proc.stderr.splitlines() if line.lstrip().startswith("File "))


def test_the_survivor_of_a_killed_rank_says_so_in_one_line(tmp_path):
    """Issue 21: when one torchrun process dies, the others' collectives fail with gloo's (or
    NCCL's) RuntimeError; the engine turns it into one line that says what happened."""
    from types import SimpleNamespace

    from gptcli import distributed
    from gptcli.engine.loop import Engine
    from gptcli.errors import TrainingError

    gloo = RuntimeError(
        "[../third_party/gloo/gloo/transport/tcp/pair.cc:537] Read error [127.0.0.1]:1: Connection reset by peer"
    )
    assert distributed.peer_lost(gloo) and not distributed.peer_lost(RuntimeError("shape mismatch"))

    def engine(error):
        def fail():
            raise error

        return SimpleNamespace(_fit=fail, dist=SimpleNamespace(enabled=True), run_dir=tmp_path / "runs/x")

    with pytest.raises(TrainingError, match=r"^another process of this torchrun run stopped \(.*Connection reset"):
        Engine.fit(engine(gloo))
    with pytest.raises(RuntimeError, match="shape mismatch"):  # any other error is not dressed up as one
        Engine.fit(engine(RuntimeError("shape mismatch")))
