"""`gptcli train --fsdp` under torchrun with 2 gloo processes on CPU: the same losses as one process
with the same global batch, one ordinary checkpoint that a plain `gptcli resume` continues, and
an exact resume under --fsdp. The FSDP2 helpers themselves: tests/test_gpu_paths.py."""

from __future__ import annotations

import pytest
import torch

from gptcli import checkpoint as ckpt
from gptcli import fsdp, rundir
from gptcli.config import ModelConfig
from gptcli.model import GPT

from .conftest import TINY_MODEL, run_gptcli
from .test_cli import one_line_error
from .test_distributed import MODEL, close, evals, torchrun

STEPS = ["--eval-freq", "4", "--seed", "7"]


def last_checkpoint(run):
    return ckpt.load_checkpoint(rundir.list_step_checkpoints(run)[-1])


def test_fsdp_without_torchrun_is_one_error_and_leaves_no_run(workdir):
    proc = run_gptcli("train", "the-verdict.txt", *MODEL, "--fsdp", "--out", "runs/x", cwd=workdir)
    one_line_error(proc, "--fsdp", "torchrun --nproc_per_node=N")
    assert not (workdir / "runs" / "x").exists()


def test_optimizer_state_converts_between_positions_and_names():
    torch.manual_seed(0)
    model = GPT(ModelConfig(**{**TINY_MODEL, "tie_weights": True}))
    matrices = [p for p in model.parameters() if p.dim() >= 2]
    opt = torch.optim.AdamW(
        [{"params": matrices}, {"params": [p for p in model.parameters() if p.dim() < 2], "weight_decay": 0.0}]
    )
    model(torch.randint(0, 50257, (2, 12)), targets=torch.randint(0, 50257, (2, 12))).backward()
    opt.step()
    positional = opt.state_dict()
    named = fsdp.optimizer_state_by_name(model, opt, positional)
    assert named["param_groups"][0]["params"][0] == "wte.weight"  # tied: the head is the embedding
    assert "lm_head.weight" not in named["state"] and len(named["state"]) == len(positional["state"])
    for name, p in model.named_parameters():
        assert torch.equal(named["state"][name]["exp_avg"], opt.state[p]["exp_avg"])
    back = fsdp.optimizer_state_by_position(named)
    assert back["param_groups"] == positional["param_groups"]
    assert back["state"].keys() == positional["state"].keys()
    assert all(torch.equal(back["state"][i]["exp_avg_sq"], positional["state"][i]["exp_avg_sq"]) for i in back["state"])


@pytest.mark.slow
def test_two_process_fsdp_equals_one_process_and_resumes_in_a_plain_process(workdir):
    # gradient accumulation and clipping too: 2 ranks x 2 windows x 2 micro-batches = 4 x 2
    common = [
        "train",
        "the-verdict.txt",
        *MODEL,
        *STEPS,
        "--max-steps",
        "12",
        "--grad-accum",
        "2",
        "--grad-clip",
        "0.5",
    ]
    proc = torchrun(*common, "--batch-size", "2", "--fsdp", "--out", "runs/fsdp", cwd=workdir)
    assert "x 2 ranks (FSDP)" in proc.stderr, proc.stderr[-3000:]
    run_gptcli(*common, "--batch-size", "4", "--out", "runs/single", cwd=workdir, check=True)
    # (the 33 validation windows end in a global batch of one: rank 1's empty share must still
    # take part in each forward pass, or the evaluation hangs)
    close(evals(workdir / "runs/fsdp"), evals(workdir / "runs/single"))
    # one ordinary checkpoint, gathered on rank 0: the single run's weights and AdamW state
    sharded, single = last_checkpoint(workdir / "runs/fsdp"), last_checkpoint(workdir / "runs/single")
    assert sharded["world_size"] == 2 and sharded["train_config"]["fsdp"] is True
    for name, value in single["model_state_dict"].items():
        assert type(sharded["model_state_dict"][name]) is torch.Tensor
        torch.testing.assert_close(sharded["model_state_dict"][name], value, rtol=0, atol=1e-5, msg=name)
    a, b = sharded["optimizer_state_dict"], single["optimizer_state_dict"]
    assert a["param_groups"] == b["param_groups"] and a["state"].keys() == b["state"].keys()
    for i, state in b["state"].items():
        torch.testing.assert_close(a["state"][i]["exp_avg"], state["exp_avg"], rtol=0, atol=1e-5)
        assert torch.equal(a["state"][i]["step"], state["step"])
    # a process on its own continues it (unsharded), as it would any checkpoint
    proc = run_gptcli("resume", "runs/fsdp", "--max-steps", "16", cwd=workdir, check=True)
    assert "not launched by torchrun" in proc.stderr
    after = last_checkpoint(workdir / "runs/fsdp")
    assert after["progress"]["step"] == 16 and after["world_size"] == 1


@pytest.mark.slow
def test_an_fsdp_run_stopped_and_resumed_under_fsdp_equals_an_uninterrupted_one(workdir):
    common = ["train", "the-verdict.txt", "--epochs", "1", *MODEL, *STEPS, "--batch-size", "4", "--fsdp"]
    torchrun(*common, "--max-steps", "14", "--out", "runs/full", cwd=workdir)
    torchrun(*common, "--max-steps", "6", "--out", "runs/cut", cwd=workdir)
    torchrun("resume", "runs/cut", "--max-steps", "14", cwd=workdir)
    full, cut = last_checkpoint(workdir / "runs/full"), last_checkpoint(workdir / "runs/cut")
    assert full["progress"]["step"] == cut["progress"]["step"] == 14
    assert all(torch.equal(full["model_state_dict"][k], cut["model_state_dict"][k]) for k in full["model_state_dict"])
    for i, state in full["optimizer_state_dict"]["state"].items():
        assert all(torch.equal(state[k], cut["optimizer_state_dict"]["state"][i][k]) for k in state)
    # the same losses, the cut run's extra evaluation where its budget stopped it aside
    assert evals(workdir / "runs/full") == [e for e in evals(workdir / "runs/cut") if e[0] != 5]


@pytest.mark.slow
def test_a_lora_finetune_under_fsdp_equals_one_process_and_resumes_under_fsdp(workdir):
    """The engine's --fsdp reaches the finetunes: a LoRA classifier (frozen base, adapters and a
    new head) sharded over 2 gloo processes logs one process's losses, and resumes sharded."""
    from .finetune_helpers import book_model, save_base
    from .test_finetune_classify import write_csv

    write_csv(workdir / "sms.csv", n=40)
    save_base(book_model(), workdir / "base.pth")
    args = ["finetune", "classify", "sms.csv", "--init", "base.pth", "--device", "cpu", "--lora-rank", "2",
            "--eval-freq", "1", "--eval-iter", "1", "--batch-size", "4", "-q"]  # fmt: skip
    one_line_error(run_gptcli(*args, "--fsdp", "-o", "runs/no", cwd=workdir), "--fsdp", "torchrun --nproc_per_node=N")
    run_gptcli(*args, "--max-steps", "4", "-o", "runs/one", cwd=workdir, check=True)
    torchrun(*args, "--fsdp", "--max-steps", "2", "-o", "runs/sharded", cwd=workdir)
    torchrun("resume", "runs/sharded", "--max-steps", "4", "-q", cwd=workdir)
    assert last_checkpoint(workdir / "runs/sharded")["world_size"] == 2
    close(evals(workdir / "runs/sharded"), evals(workdir / "runs/one"))
