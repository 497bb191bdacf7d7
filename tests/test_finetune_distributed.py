"""`gptcli finetune` under torchrun (two gloo processes on CPU): --batch-size stays the global
batch, so the logged losses and accuracies, the final numbers and the trained weights equal one
process's; a run stopped by --max-steps and resumed under torchrun equals one that never stopped.
Also --quiet, --threads and --tensorboard on the finetune commands."""

from __future__ import annotations

import json
import re

import pytest
import torch
from typer.testing import CliRunner

from gptcli import checkpoint as ckpt
from gptcli import console, rundir
from gptcli.cli import app
from gptcli.config import ModelConfig
from gptcli.metrics import read_metrics
from gptcli.model import GPT

from .conftest import run_gptcli
from .finetune_helpers import BOOK_CFG, RECORDS
from .test_distributed import torchrun
from .test_ux import tb_events


@pytest.fixture
def root(tmp_path, monkeypatch):
    """A tiny base model, 20 instruction records (17 train, 1 val, 2 test) and a 24-row CSV (16
    train, 2 val, 6 test), in cwd."""
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    cfg = ModelConfig(**dict(BOOK_CFG, context_length=48))
    ckpt.atomic_save(ckpt.weights_checkpoint(cfg, GPT(cfg).state_dict()), tmp_path / "base.pth")
    (tmp_path / "data.json").write_text(json.dumps(RECORDS * 4), encoding="utf-8")
    rows = ["Label,Text"] + [
        f"{'spam' if i % 3 == 0 else 'ham'},{'win cash now' if i % 3 else 'lunch'} {i}" for i in range(24)
    ]
    (tmp_path / "d.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return tmp_path


COMMON = ["--init", "base.pth", "--eval-freq", "2", "--eval-iter", "2", "--lr", "1e-3", "--device", "cpu"]
# Instruct: batches of 4 records of different lengths, so the two ranks' slices hold different
# numbers of target tokens (each rank's loss must be weighted by its share of them); the single
# val record and the last test batch leave one rank without rows. Classify with LoRA: batches of
# 5 examples, split 3 + 2; the test split's last batch of 1 again leaves a rank empty.
KINDS = {
    "instruct": ["finetune", "instruct", "data.json", *COMMON, "--batch-size", "4"],
    "classify": ["finetune", "classify", "d.csv", *COMMON, "--batch-size", "5", "--lora-rank", "2"],
}


def records(run, kind: str) -> list[dict]:
    return [r for r in read_metrics(run / "metrics.jsonl") if r["type"] == kind]


def last(run):
    return ckpt.load_checkpoint(rundir.list_step_checkpoints(run)[-1])


def assert_close_runs(a, b, tol=1e-5):
    """Same records at the same steps, losses and accuracies within ``tol``; same final weights."""
    for kind, keys in (("eval", ("train_loss", "val_loss")), ("accuracy", ("train_acc", "val_acc"))):
        ra, rb = records(a, kind), records(b, kind)
        assert [(r["step"], r["tokens_seen"]) for r in ra] == [(r["step"], r["tokens_seen"]) for r in rb]
        for x, y in zip(ra, rb):
            assert all(abs(x[k] - y[k]) < tol for k in keys), (x, y)
    wa, wb = last(a)["model_state_dict"], last(b)["model_state_dict"]
    assert wa.keys() == wb.keys()
    worst = max((wa[k] - wb[k]).abs().max().item() for k in wa)
    assert worst < tol, worst


def numbers(text: str) -> list[float]:
    return [float(x) for x in re.findall(r"\d+\.\d+", text)]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["instruct", "classify"])
def test_two_processes_equal_one_and_a_stopped_run_resumes_exactly(root, kind):
    args = KINDS[kind]
    ddp = torchrun(*args, "--max-steps", "6", "-o", "runs/ddp", cwd=root)
    one = run_gptcli(*args, "--max-steps", "6", "-o", "runs/one", cwd=root, check=True)
    assert records(root / "runs/ddp", "eval") and (kind == "instruct" or records(root / "runs/ddp", "accuracy"))
    assert_close_runs(root / "runs/ddp", root / "runs/one")
    # the final test loss / accuracies, printed once (by rank 0) on stdout
    assert len(ddp.stdout.strip().splitlines()) == 1, ddp.stdout
    assert numbers(ddp.stdout) == pytest.approx(numbers(one.stdout), abs=2e-4) and numbers(one.stdout)
    saved = last(root / "runs/ddp")
    assert saved["world_size"] == 2 and saved["progress"]["step"] == 6
    assert last(root / "runs/one")["world_size"] == 1

    torchrun(*args, "--max-steps", "3", "-o", "runs/cut", cwd=root)
    assert last(root / "runs/cut")["progress"]["step"] == 3
    torchrun("finetune", "resume", "runs/cut", "--max-steps", "6", cwd=root)
    full, cut = last(root / "runs/ddp"), last(root / "runs/cut")
    assert full["progress"]["step"] == cut["progress"]["step"] == 6
    diff = [
        k for k in full["model_state_dict"] if not torch.equal(full["model_state_dict"][k], cut["model_state_dict"][k])
    ]
    assert not diff, diff[:5]
    # --eval-freq 2 evaluates after step 3 (index 2) anyway, so the cut run logged no extra evaluation
    assert records(root / "runs/cut", "eval") == records(root / "runs/ddp", "eval")
    assert records(root / "runs/cut", "accuracy") == records(root / "runs/ddp", "accuracy")


def invoke(*args, expect=0):
    res = CliRunner().invoke(app, [str(a) for a in args])
    console.set_quiet(False)
    assert res.exit_code == expect, (res.output, res.exception)
    return res


@pytest.fixture
def restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_quiet_threads_and_tensorboard_on_finetune_commands(root, restore_threads):
    torch.set_num_threads(1)
    classify = ["finetune", "classify", "d.csv", *COMMON, "--batch-size", "4", "--epochs", "2"]
    res = invoke(*classify, "--max-steps", "5", "--tensorboard", "--quiet", "--threads", "2", "-o", "runs/tb")
    assert torch.get_num_threads() == 2
    # --quiet: nothing on stderr but the result on stdout
    assert res.stderr == "" and res.stdout.startswith("Train accuracy:") and len(res.stdout.splitlines()) == 1
    run = root / "runs/tb"
    scalars = {}
    for e in tb_events(run):
        for v in e.summary.value:
            scalars.setdefault(v.tag, []).append((e.step, v.simple_value))
    evals, accs = records(run, "eval"), records(run, "accuracy")
    assert [s for s, _ in scalars["loss/train"]] == [r["step"] for r in evals]
    assert [v for _, v in scalars["loss/val"]] == pytest.approx([r["val_loss"] for r in evals])
    assert [s for s, _ in scalars["accuracy/val"]] == [r["step"] for r in accs]
    assert [v for _, v in scalars["accuracy/val"]] == pytest.approx([r["val_acc"] for r in accs])
    assert len(accs) == 1  # the first epoch's end (step 3); --max-steps 5 ends the run inside the second

    # a resumed run that logged to TensorBoard goes on logging; --threads and --quiet on resume too
    torch.set_num_threads(1)
    res = invoke("finetune", "resume", "runs/tb", "--max-steps", "8", "--threads", "3", "-q")
    assert torch.get_num_threads() == 3 and res.stderr == "" and res.stdout.startswith("Train accuracy:")
    steps = [e.step for e in tb_events(run) for v in e.summary.value if v.tag == "loss/train"]
    assert max(steps) == records(run, "eval")[-1]["step"] == 7
    assert len(records(run, "accuracy")) == 2  # the second epoch's end, at step 7

    # without --quiet the same command reports progress on stderr (so the checks above can fail)
    instruct = ["finetune", "instruct", "data.json", *COMMON, "--batch-size", "4", "--max-steps", "2"]
    res = invoke(*instruct, "-o", "runs/loud")
    # (one log format for every kind of run: train's, issue 21)
    assert "train loss" in res.stderr and res.stdout.startswith("test loss")
    assert not (root / "runs/loud/tensorboard").exists()
    # instruct samples reach TensorBoard as text
    invoke(*instruct, "--epochs", "1", "--max-steps", "5", "--tensorboard", "-q", "-o", "runs/tbi")
    tags = {v.tag for e in tb_events(root / "runs/tbi") for v in e.summary.value}
    assert {"loss/train", "loss/val", "lr", "sample"} <= tags
