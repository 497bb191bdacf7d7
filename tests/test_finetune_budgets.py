"""`gptcli finetune` with what `train` has: the budgets (--max-steps, --max-tokens, --max-time), a
resume that extends a budget exactly, the warm-up/cosine schedule, gradient clipping, `gptcli
resume` continuing a finetune run, and flags generated from FinetuneConfig (help without torch)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from gptcli import checkpoint as ckpt
from gptcli import rundir
from gptcli.cli import app
from gptcli.config import ModelConfig
from gptcli.finetune.config import FinetuneConfig, flag_fields
from gptcli.metrics import read_metrics
from gptcli.model import GPT
from gptcli.training import lr_at

from .finetune_helpers import BOOK_CFG, RECORDS


@pytest.fixture
def root(tmp_path, monkeypatch):
    """A tiny base model, 20 instruction records (17 train) and a 24-row CSV (16 train), in cwd."""
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    cfg = ModelConfig(**dict(BOOK_CFG, context_length=48))
    ckpt.atomic_save(ckpt.weights_checkpoint(cfg, GPT(cfg).state_dict()), tmp_path / "base.pth")
    (tmp_path / "data.json").write_text(json.dumps(RECORDS * 4), encoding="utf-8")
    rows = ["Label,Text"] + [
        f"{'spam' if i % 3 == 0 else 'ham'},{'win cash' if i % 3 else 'lunch'} {i}" for i in range(24)
    ]
    (tmp_path / "d.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return tmp_path


# Batch 4: four steps an epoch for both kinds, so a run of 6 steps crosses an epoch's end, where
# the next epoch's order is drawn from the RNG that a budget's extra evaluation must not disturb.
# --eval-freq 4: evaluations at steps 1 and 5, so a stop at step 3 or 6 evaluates off schedule.
COMMON = ["--init", "base.pth", "--batch-size", "4", "--eval-freq", "4", "--eval-iter", "1", "--lr", "1e-2",
          "--device", "cpu"]  # fmt: skip
KINDS = {"instruct": ["finetune", "instruct", "data.json"], "classify": ["finetune", "classify", "d.csv"]}


def cli(*args, expect=0):
    res = CliRunner().invoke(app, [str(a) for a in args])
    assert res.exit_code == expect, (res.output, res.exception)
    if expect:
        lines = [line for line in res.output.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:"), res.output
    return res.output


def last(run):
    obj = ckpt.load_checkpoint(rundir.list_step_checkpoints(run)[-1])
    return obj["model_state_dict"], obj["progress"], obj["train_config"]


def evals(run):
    return [
        (r["step"], r["train_loss"], r["val_loss"]) for r in read_metrics(run / "metrics.jsonl") if r["type"] == "eval"
    ]


@pytest.mark.parametrize(("kind", "resume"), [("instruct", ["resume"]), ("classify", ["finetune", "resume"])])
def test_max_steps_stop_then_resume_with_a_larger_budget_equals_one_run(root, kind, resume):
    full = cli(*KINDS[kind], *COMMON, "--max-steps", "6", "-o", "runs/full")
    assert "stopped: --max-steps 6 at step 6" in full
    out = cli(*KINDS[kind], *COMMON, "--max-steps", "3", "-o", "runs/cut")
    assert "stopped: --max-steps 3 at step 3" in out
    _, progress, saved = last(root / "runs/cut")
    assert progress["step"] == 3 and saved["max_steps"] == 3
    assert "already reached --max-steps 3" in cli(*resume, "runs/cut", expect=2)  # nothing left to do
    cli(*resume, "runs/cut", "--max-steps", "6")
    a, pa, _ = last(root / "runs/full")
    b, pb, saved = last(root / "runs/cut")
    assert pa["step"] == pb["step"] == 6 and pb["epoch"] == 1 and saved["max_steps"] == 6
    assert a.keys() == b.keys()
    diff = [k for k in a if not torch.equal(a[k], b[k])]
    assert not diff, f"weights differ: {diff[:5]}"
    # The cut run evaluated once more, when its first budget stopped it (step index 2); the rest,
    # the budget's stop at 6 included, are the uninterrupted run's to the bit.
    cut = evals(root / "runs/cut")
    assert [s for s, *_ in cut] == [0, 2, 4, 5]
    assert [e for e in cut if e[0] != 2] == evals(root / "runs/full")
    assert "max_steps: 6" in (root / "runs/cut/config.yaml").read_text()


def test_max_tokens_counts_the_batches_tokens_and_max_time_ends_the_run(root):
    # classify pads every text to --max-length: 4 x 8 = 32 tokens a step, so 70 tokens end step 3.
    out = cli(*KINDS["classify"], *COMMON, "--max-length", "8", "--max-tokens", "70", "-o", "runs/tok")
    assert "stopped: --max-tokens 70 at step 3 (96 tokens" in out
    _, progress, _ = last(root / "runs/tok")
    assert progress["step"] == 3 and progress["tokens_seen"] == 96 and progress["examples_seen"] == 12
    # every metrics record carries the same true token count; classify's also the book's examples
    records = read_metrics(root / "runs/tok/metrics.jsonl")
    assert records and all(r["tokens_seen"] == 32 * (r["step"] + 1) for r in records)
    assert all(r["examples_seen"] == 4 * (r["step"] + 1) for r in records)
    out = cli(*KINDS["instruct"], *COMMON, "--max-time", "0.001", "-o", "runs/time")
    assert "stopped: --max-time 0.001s at step 1" in out
    _, progress, _ = last(root / "runs/time")
    assert progress["step"] == 1 and progress["train_seconds"] > 0.001
    assert "invalid --max-steps: '10m'" in cli(*KINDS["instruct"], *COMMON, "--max-steps", "10m", expect=2)
    assert "invalid --max-time" in cli(*KINDS["instruct"], *COMMON, "--max-time", "soon", expect=2)


def test_warmup_cosine_schedule_and_its_settings_are_stored(root):
    cli(*KINDS["instruct"], *COMMON, "--eval-freq", "1", "--max-steps", "5", "--warmup-steps", "2", "--min-lr", "0",
        "--grad-clip", "1.5", "-o", "runs/s")  # fmt: skip
    lrs = [r["lr"] for r in read_metrics(root / "runs/s/metrics.jsonl") if r["type"] == "eval"]
    assert lrs == [lr_at(s, lr=1e-2, warmup_steps=2, total_steps=5, min_lr=0.0) for s in range(5)]
    assert lrs[0] == 5e-3 and lrs[1] == lrs[2] == 1e-2 > lrs[3] > lrs[4] > 0  # warm-up, then the decay
    _, progress, saved = last(root / "runs/s")
    assert (saved["warmup_steps"], saved["min_lr"], saved["grad_clip"]) == (2, 0.0, 1.5)
    assert progress["planned_steps"] == 5


def test_grad_clip_clips_the_gradient(root):
    from gptcli.finetune.trainer import FinetuneTrainer

    def first_step_change(**kw):
        cfg = FinetuneConfig(kind="instruct", data="data.json", init="base.pth", batch_size=4, eval_iter=1, lr=1e-2,
                             weight_decay=0.0, max_steps=1, **kw)  # fmt: skip
        trainer = FinetuneTrainer(cfg, root / f"runs/clip{kw}")
        before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
        trainer.fit()
        return max((v - before[k]).abs().max().item() for k, v in trainer.model.state_dict().items())

    # AdamW's first step moves each weight by about lr; a gradient clipped far below AdamW's eps
    # moves it by about lr x |g| / eps.
    assert first_step_change() > 1e-3
    assert first_step_change(grad_clip=1e-12) < 1e-5


def test_bare_resume_picks_a_finetune_run_by_its_own_budget(root):
    cli(*KINDS["instruct"], *COMMON, "--max-steps", "3", "-o", "runs/a")
    assert "has finished" in cli("resume", expect=2)  # its budget is reached: nothing unfinished
    out = cli("resume", "--max-steps", "5")
    assert "resuming runs/a" in out and "stopped: --max-steps 5 at step 5" in out
    cli("resume", "runs/a", "--max-steps", "9", "--patience", "2")  # finetune runs have --patience too
    assert last(Path("runs/a"))[2]["patience"] == 2


def test_finetune_flags_come_from_the_config_and_help_imports_no_torch():
    for kind in ("instruct", "classify"):
        out = cli("finetune", kind, "--help")
        flags = [f"--{f.name.replace('_', '-')}" for f in flag_fields(kind)]
        assert flags and all(flag in out for flag in flags)
        assert ("--mask-prompt" in out) == (kind == "instruct") and ("--trainable" in out) == (kind == "classify")
    assert "[default: 2]" in cli("finetune", "instruct", "--help")  # the book's epochs per chapter
    assert "[default: 5]" in cli("finetune", "classify", "--help")
    code = (
        "import sys\nfrom gptcli.cli import app\n"
        "for cmd in (['finetune', 'instruct'], ['finetune', 'classify'], ['finetune', 'resume']):\n"
        "    try:\n        app([*cmd, '--help'], prog_name='gptcli')\n    except SystemExit:\n        pass\n"
        "print('HEAVY', sorted(m for m in ('torch', 'numpy') if m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "HEAVY []" in proc.stdout, proc.stdout[-500:] + proc.stderr[-2000:]
