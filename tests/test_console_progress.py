"""The training display in a terminal (issue 21): no "nan" before the first evaluation (a
resumed run starts from its checkpoint's last losses), and one line per evaluation and save
scrolling above the bar."""

from __future__ import annotations

import io
from pathlib import Path
from types import SimpleNamespace

from rich.console import Console

from gptcli import console

INFO = {"params": 10, "device": "cpu", "train_tokens": 1, "val_tokens": 1, "train_windows": 1, "val_windows": 1,
        "steps_per_epoch": 4, "total_steps": 8, "epochs": 2, "run_dir": "runs/x", "resumed": False}  # fmt: skip


def _terminal(monkeypatch) -> io.StringIO:
    out = io.StringIO()
    monkeypatch.setattr(console, "_err", Console(file=out, force_terminal=True, width=120, highlight=False))
    monkeypatch.setattr(console, "_quiet", False)
    return out


def test_no_nan_before_the_first_evaluation_and_lines_scroll_above_the_bar(monkeypatch):
    out = _terminal(monkeypatch)
    p = console.TrainProgress(print_samples=False)
    p.on_start(dict(INFO))
    assert p.progress is not None  # a terminal: the bar
    state = SimpleNamespace(epoch=0, step=1, tokens_seen=24)
    p.on_step(state, {})
    fields = p._fields(state)
    assert (fields["train"], fields["val"], fields["tps"]) == ("–", "–", "–")
    record = {"epoch": 1, "step": 0, "train_loss": 9.5, "val_loss": 9.75, "tokens_seen": 24, "tokens_per_sec": 12.0}
    p.on_eval(record)
    p.on_save(Path("runs/x/checkpoints/step-00000004.pth"), "epoch")
    assert p._fields(state)["train"] == "9.500"
    p.close()
    text = out.getvalue()
    assert (
        "ep 1 step 000000: train loss 9.500, val loss 9.750" in text
        and "saved runs/x/checkpoints/step-00000004.pth" in text
    )
    assert "nan" not in text


def test_a_resumed_run_shows_its_checkpoints_last_losses(monkeypatch):
    _terminal(monkeypatch)
    p = console.TrainProgress(print_samples=False)
    p.on_start({**INFO, "resumed": True, "last_eval": {"train_loss": 3.25, "val_loss": 4.5}})
    fields = p._fields(SimpleNamespace(epoch=1, step=5, tokens_seen=0))
    p.close()
    assert (fields["train"], fields["val"]) == ("3.250", "4.500")
