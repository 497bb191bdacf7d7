"""Models and runs for the export tests (GGUF, weights-only files), made here and tiny: GPT-2's
real vocabulary (the tokenizer that goes with the exports is GPT-2's), n_embd 32, two layers."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from typer.testing import CliRunner

from gptcli import checkpoint as ckpt
from gptcli.cli import app
from gptcli.config import ModelConfig
from gptcli.model import GPT

from .finetune_helpers import RECORDS

# the book's model: untied head, no qkv bias
BOOK = dict(vocab_size=50257, context_length=32, emb_dim=32, n_heads=4, n_layers=2, drop_rate=0.0, qkv_bias=False)
# OpenAI's layout: qkv bias, the head tied to the token embedding
OPENAI = dict(BOOK, qkv_bias=True, tie_weights=True)


def training_checkpoint(path: Path, cfg: ModelConfig, *, seed: int = 0) -> Path:
    """A pretraining checkpoint as `gptcli train` saves one: weights, AdamW's state after a step."""
    torch.manual_seed(seed)
    model = GPT(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(0, cfg.vocab_size, (2, 8))
    model(x, targets=x).backward()
    opt.step()
    return ckpt.atomic_save(
        ckpt.training_checkpoint(
            cfg, {"lr": 1e-3}, model.state_dict(), optimizer_state=opt.state_dict(), progress={"step": 1, "epoch": 0}
        ),
        path,
    )


def weights_file(path: Path, cfg: ModelConfig, *, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    return ckpt.atomic_save(ckpt.weights_checkpoint(cfg, GPT(cfg).state_dict()), path)


def finetune_runs(root: Path) -> dict[str, Path]:
    """A LoRA instruct run (the book's template) and a classify run, a few steps each."""
    from gptcli.commands.finetune import finetune_command

    base = weights_file(root / "base.pth", ModelConfig(**BOOK))
    data = root / "data.json"
    data.write_text(json.dumps(RECORDS * 2), encoding="utf-8")
    csv = root / "d.csv"
    rows = ["Label,Text"] + [
        f"{'spam' if i % 3 == 0 else 'ham'},{'win cash' if i % 3 == 0 else 'lunch'} {i}" for i in range(16)
    ]
    csv.write_text("\n".join(rows) + "\n", encoding="utf-8")
    common = dict(init=str(base), epochs=1, batch_size=4, eval_iter=1, lr=1e-2, device="cpu", eval_freq=100)
    ins = dict(kind="instruct", data=str(data), lora_rank=2, lora_alpha=4.0, sample_tokens=2, **common)
    finetune_command(ins, out=root / "ins", quiet=True)
    finetune_command(dict(kind="classify", data=str(csv), **common), out=root / "cls", quiet=True)
    return {"base": base, "ins": root / "ins", "cls": root / "cls"}


def cli(*args, expect: int = 0) -> str:
    """Run gptcli in-process; a failure must be one `error:` line."""
    res = CliRunner().invoke(app, [str(a) for a in args])
    assert res.exit_code == expect, (res.output, res.exception)
    if expect:
        lines = [line for line in res.output.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:"), res.output
    return res.output


def greedy(model: GPT, ids: list[int], n: int) -> list[int]:
    """gptcli's model, greedy, no cache: the reference token sequence."""
    x = torch.tensor([ids])
    out = []
    with torch.no_grad():
        for _ in range(n):
            nxt = int(model(x[:, -model.cfg.context_length :])[0, -1].argmax())
            out.append(nxt)
            x = torch.cat([x, torch.tensor([[nxt]])], dim=1)
    return out
