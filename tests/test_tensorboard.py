"""gptcli.tensorboard writes through torch's public SummaryWriter, with the tags it always had."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

pytest.importorskip("tensorboard")


def _events(log_dir: Path) -> list:
    from tensorboard.compat.proto.event_pb2 import Event

    events = []
    for path in sorted(log_dir.glob("events.out.tfevents.*")):
        data, i = path.read_bytes(), 0
        while i < len(data):
            (n,) = struct.unpack("<Q", data[i : i + 8])
            events.append(Event.FromString(data[i + 12 : i + 12 + n]))
            i += 12 + n + 4
    return events


def test_scalars_text_and_purge_step_through_the_public_writer(tmp_path, monkeypatch):
    import torch.utils.tensorboard

    from gptcli.tensorboard import LOG_DIR, TensorBoardWriter

    made = []
    real = torch.utils.tensorboard.SummaryWriter

    def spy(*args, **kwargs):
        made.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.utils.tensorboard, "SummaryWriter", spy)
    board = TensorBoardWriter(tmp_path, purge_step=3)
    board.on_eval({"step": 4, "train_loss": 2.5, "val_loss": 3.0, "lr": 1e-3, "tokens_seen": 64})
    board.on_sample({"step": 4, "epoch": 1, "text": "Every effort"})
    events = _events(tmp_path / LOG_DIR)  # flushed by each record: readable before close()
    board.close()
    assert made == [{"purge_step": 3}]
    assert [e.step for e in events if e.HasField("session_log")] == [3]
    scalars = {v.tag: (e.step, v.simple_value) for e in events for v in e.summary.value if v.HasField("simple_value")}
    assert scalars["loss/train"] == (4, 2.5) and scalars["loss/val"] == (4, 3.0)
    texts = [
        (e.step, v.tag, v.tensor.string_val[0].decode()) for e in events for v in e.summary.value if v.tensor.string_val
    ]
    assert texts == [(4, "sample", "epoch 1: Every effort")]


def test_the_module_uses_no_private_writer():
    source = Path(__file__).resolve().parents[1].joinpath("gptcli", "tensorboard.py").read_text(encoding="utf-8")
    assert "record_writer" not in source and "event_pb2" not in source
