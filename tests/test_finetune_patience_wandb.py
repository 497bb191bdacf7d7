"""``gptcli finetune ... --patience K`` and ``--wandb``, as ``gptcli train``'s."""

from __future__ import annotations

import json

from gptcli import checkpoint as ckpt
from gptcli import rundir
from gptcli.metrics import read_metrics

from .test_finetune_budgets import COMMON, KINDS, cli, root  # noqa: F401 (root: the fixture)
from .test_wandb import history, invoke, offline_runs, offline_wandb, run_record  # noqa: F401

FLAGS = [*COMMON, "--eval-freq", "1", "--lr", "0.5"]  # far too high: the val loss soon stops improving


def evals(run):
    return [r for r in read_metrics(run / "metrics.jsonl") if r["type"] == "eval"]


def test_patience_stops_keeps_the_best_and_resume_refuses(root, capfd):  # noqa: F811
    run = root / "p"
    out = cli(*KINDS["classify"], *FLAGS, "--epochs", "20", "--patience", "1", "--out", run)
    records = evals(run)
    assert "stopped: --patience 1" in out + capfd.readouterr().err
    assert len(records) < 20 * 4  # before its epochs ended
    best = min(r["val_loss"] for r in records)
    assert records[-1]["val_loss"] >= best and records[-2]["val_loss"] == best
    best_obj = ckpt.load_checkpoint(rundir.best_checkpoint_path(run))
    assert best_obj["progress"]["history"][-1]["val_loss"] == best
    assert best_obj["progress"]["step"] == records[-2]["step"] + 1
    assert ckpt.load_checkpoint(rundir.list_step_checkpoints(run)[-1])["progress"]["evals_since_best"] == 1
    out = cli("finetune", "resume", run, expect=2)
    assert "already reached --patience 1" in out
    out = cli("resume", run, expect=2)
    assert "already reached --patience 1" in out


def test_wandb_logs_finetune_evals_and_accuracy_and_resume_keeps_the_id(root):  # noqa: F811
    run = root / "w"
    invoke(*KINDS["classify"], *COMMON, "--epochs", "2", "--max-steps", "5", "--out", str(run), "--wandb", "-q")
    stored = rundir.wandb_run_path(run).read_bytes()
    run_id = json.loads(stored)["id"]
    (first,) = offline_runs(run)
    logged = [(row["_step"], row["loss/val"]) for row in history(first) if "loss/val" in row]
    assert logged and logged == [(r["step"], r["val_loss"]) for r in evals(run)]
    acc = [r for r in read_metrics(run / "metrics.jsonl") if r["type"] == "accuracy"]
    assert [(row["_step"], row["accuracy/val"]) for row in history(first) if "accuracy/val" in row] == [
        (r["step"], r["val_acc"]) for r in acc
    ]
    saved = rundir.saved_step(run)
    invoke("finetune", "resume", str(run), "--max-steps", "8", "-q")  # no --wandb: the run remembers it
    assert rundir.wandb_run_path(run).read_bytes() == stored
    _, second = offline_runs(run)
    assert run_record(second).run_id == run_id
    logged = [(row["_step"], row["loss/val"]) for row in history(second) if "loss/val" in row]
    assert logged and logged == [(r["step"], r["val_loss"]) for r in evals(run) if r["step"] >= saved]
