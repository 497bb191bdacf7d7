"""kill -9 a real `gptcli finetune` process after its first checkpoint, then `gptcli finetune
resume`: the weights (all of them, or a LoRA run's adapters and head) and the metrics end equal,
bit for bit on CPU, to a run that was never interrupted."""

from __future__ import annotations

import json
import signal

import pytest
import torch

from gptcli import checkpoint as ckpt
from gptcli import rundir
from gptcli.config import ModelConfig
from gptcli.metrics import read_metrics
from gptcli.model import GPT

from .conftest import run_gptcli
from .finetune_helpers import BOOK_CFG, RECORDS
from .reliability.test_crash_resume import start, wait_for_checkpoint

pytestmark = pytest.mark.slow  # three real runs each, ~30 s


def _setup(workdir):
    torch.manual_seed(0)
    cfg = ModelConfig(**dict(BOOK_CFG, context_length=48))
    ckpt.atomic_save(ckpt.weights_checkpoint(cfg, GPT(cfg).state_dict()), workdir / "base.pth")
    (workdir / "data.json").write_text(json.dumps(RECORDS * 2), encoding="utf-8")
    rows = ["Label,Text"] + [
        f"{'spam' if i % 3 == 0 else 'ham'},{'win cash' if i % 3 else 'lunch'} {i}" for i in range(24)
    ]
    (workdir / "d.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")


COMMON = ["--init", "base.pth", "--epochs", "2", "--batch-size", "2", "--eval-freq", "2", "--eval-iter", "1",
          "--lr", "1e-2", "--save-every", "1", "--device", "cpu"]  # fmt: skip
CASES = {
    "instruct": ["finetune", "instruct", "data.json", *COMMON],
    # A LoRA step on this tiny model is so quick that two epochs could end before the kill lands.
    "lora-classify": [
        "finetune",
        "classify",
        "d.csv",
        *COMMON,
        "--epochs",
        "6",
        "--lora-rank",
        "2",
        "--lora-alpha",
        "4",
    ],
}


def _final(run):
    obj = ckpt.load_checkpoint(rundir.list_step_checkpoints(run)[-1])
    return obj["model_state_dict"], obj["progress"]["step"]


@pytest.mark.parametrize("case", sorted(CASES))
def test_kill_9_then_finetune_resume_equals_uninterrupted(workdir, case):
    _setup(workdir)
    args = CASES[case]
    run_gptcli(*args, "--out", "runs/full", cwd=workdir, check=True)
    cut = workdir / "runs" / "cut"
    proc = start([*args, "--out", "runs/cut"], workdir)
    assert wait_for_checkpoint(cut, proc)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    _, killed_at = _final(cut)
    run_gptcli("finetune", "resume", "runs/cut", cwd=workdir, check=True)
    a, step_a = _final(workdir / "runs/full")
    b, step_b = _final(cut)
    assert step_a == step_b > killed_at
    assert a.keys() == b.keys()
    if case == "lora-classify":
        assert all(".A" in k or ".B" in k or k.startswith("lm_head") for k in a)  # adapters and head only
    diff = [k for k in a if not torch.equal(a[k], b[k])]
    assert not diff, f"weights differ: {diff[:5]}"

    def values(run):
        return [(r["type"], r["step"], r.get("train_loss"), r.get("val_loss"), r.get("val_acc"))
                for r in read_metrics(run / "metrics.jsonl")]  # fmt: skip

    assert values(workdir / "runs/full") == values(cut)
