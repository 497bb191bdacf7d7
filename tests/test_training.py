import contextlib
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from gptcli import checkpoint as ckpt
from gptcli import rundir
from gptcli.config import ModelConfig, TrainConfig
from gptcli.errors import TrainingError
from gptcli.metrics import read_metrics
from gptcli.training import Callbacks, Interrupted, Trainer, lr_at

from .conftest import TINY_MODEL, VERDICT


class Recorder(Callbacks):
    def __init__(self):
        self.evals, self.samples, self.saves = [], [], []

    def on_eval(self, r):
        self.evals.append(r)

    def on_sample(self, r):
        self.samples.append(r)

    def on_save(self, path, reason):
        self.saves.append((path, reason))


def tiny_train_cfg(**kw):
    return TrainConfig(**{"epochs": 1, "data": [str(VERDICT)], **kw})


def test_book_unit_test_logs_39_evaluations(tmp_path):
    rec = Recorder()
    Trainer(ModelConfig(**TINY_MODEL), tiny_train_cfg(), tmp_path / "run", callbacks=rec).fit()
    assert len(rec.evals) == 39
    assert len(rec.samples) == 1
    assert len(read_metrics(tmp_path / "run" / "metrics.jsonl")) == 40


def test_losses_match_the_books_train_model_simple(tmp_path):
    """Golden reference: the book's own training function on the same tiny config."""
    ch02 = pytest.importorskip("llms_from_scratch.ch02")
    ch04 = pytest.importorskip("llms_from_scratch.ch04")
    ch05 = pytest.importorskip("llms_from_scratch.ch05")
    from gptcli.tokenizer import get_tokenizer

    rec = Recorder()
    Trainer(ModelConfig(**TINY_MODEL), tiny_train_cfg(), tmp_path / "run", callbacks=rec).fit()

    text = VERDICT.read_text(encoding="utf-8")
    split = int(0.9 * len(text))
    orig = ch02.tiktoken.get_encoding
    ch02.tiktoken.get_encoding = lambda name: get_tokenizer()  # the book would download it
    try:
        torch.manual_seed(123)
        model = ch04.GPTModel({"vocab_size": 50257, **TINY_MODEL})
        train_loader = ch02.create_dataloader_v1(
            text[:split], batch_size=2, max_length=12, stride=12, drop_last=True, shuffle=True, num_workers=0
        )
        val_loader = ch02.create_dataloader_v1(
            text[split:], batch_size=2, max_length=12, stride=12, drop_last=False, shuffle=False, num_workers=0
        )
    finally:
        ch02.tiktoken.get_encoding = orig
    opt = torch.optim.AdamW(model.parameters(), lr=4e-4, weight_decay=0.1)
    with contextlib.redirect_stdout(io.StringIO()):
        train_losses, val_losses, tokens = ch05.train_model_simple(
            model,
            train_loader,
            val_loader,
            opt,
            "cpu",
            num_epochs=1,
            eval_freq=5,
            eval_iter=5,
            start_context="Every effort moves you",
            tokenizer=get_tokenizer(),
        )
    ours_train = np.array([r["train_loss"] for r in rec.evals])
    ours_val = np.array([r["val_loss"] for r in rec.evals])
    assert len(train_losses) == len(ours_train) == 39
    assert np.abs(ours_train - np.array(train_losses)).max() < 1e-4
    assert np.abs(ours_val - np.array(val_losses)).max() < 1e-4
    assert [r["tokens_seen"] for r in rec.evals] == tokens


def _final_weights(run_dir: Path) -> dict:
    return ckpt.load_checkpoint(rundir.list_step_checkpoints(run_dir)[-1])["model_state_dict"]


def _eval_values(run_dir: Path) -> list:
    return [
        (r["type"], r["step"], r.get("train_loss"), r.get("val_loss"), r.get("text"))
        for r in read_metrics(run_dir / "metrics.jsonl")
    ]


@pytest.mark.parametrize("stop_at", [1, 9])
def test_stop_anywhere_then_resume_equals_uninterrupted(tmp_path, stop_at):
    cfg = tiny_train_cfg(epochs=2, batch_size=8, eval_freq=3, eval_iter=2)  # evaluations draw from the RNG too
    mcfg = ModelConfig(**{**TINY_MODEL, "context_length": 32})
    Trainer(mcfg, cfg, tmp_path / "full").fit()

    steps = {"n": 0}

    def stop_after_k():
        steps["n"] += 1
        return 2 if steps["n"] == stop_at else None

    with pytest.raises(Interrupted) as e:
        Trainer(mcfg, cfg, tmp_path / "cut", should_stop=stop_after_k).fit()
    assert e.value.exit_code == 130
    saved = rundir.list_step_checkpoints(tmp_path / "cut")[-1]
    obj = ckpt.load_checkpoint(saved)
    # scramble the global RNG as a fresh process would have it
    torch.manual_seed(999)
    t = Trainer(
        ModelConfig.from_dict(obj["model_config"]), TrainConfig.from_dict(obj["train_config"]), tmp_path / "cut"
    )
    t.restore(obj)
    t.fit()
    full, cut = _final_weights(tmp_path / "full"), _final_weights(tmp_path / "cut")
    assert full.keys() == cut.keys()
    assert all(torch.equal(full[k], cut[k]) for k in full)
    assert _eval_values(tmp_path / "full") == _eval_values(tmp_path / "cut")


def test_checkpoint_holds_what_exact_resumption_needs(tmp_path):
    Trainer(ModelConfig(**TINY_MODEL), tiny_train_cfg(eval_freq=50), tmp_path / "run").fit()
    paths = rundir.list_step_checkpoints(tmp_path / "run")
    obj = torch.load(paths[-1], weights_only=True)
    for key in ("model_state_dict", "optimizer_state_dict", "model_config", "train_config", "progress", "rng"):
        assert key in obj
    assert obj["progress"]["epoch"] == 1 and obj["progress"]["step"] == 192
    assert set(obj["rng"]) >= {"torch", "numpy", "python"}
    assert obj["optimizer_state_dict"]["state"], "AdamW moments are saved"
    assert not any(k.startswith(("_orig_mod.", "module.")) for k in obj["model_state_dict"])


def test_keep_last_rotation(tmp_path):
    Trainer(
        ModelConfig(**TINY_MODEL), tiny_train_cfg(eval_freq=100, save_every=40, keep_last=2), tmp_path / "run"
    ).fit()
    names = [p.name for p in rundir.list_step_checkpoints(tmp_path / "run")]
    assert names == ["step-00000160.pth", "step-00000192.pth"]


def test_nonfinite_loss_stops_before_the_optimizer_step(tmp_path, monkeypatch):
    import gptcli.tasks.lm as tr

    calls = {"n": 0}
    real = tr.batch_loss

    def poisoned(model, x, y):
        loss = real(model, x, y)
        if not model.training:
            return loss
        calls["n"] += 1
        return loss * float("nan") if calls["n"] == 4 else loss

    monkeypatch.setattr(tr, "batch_loss", poisoned)
    t = Trainer(ModelConfig(**TINY_MODEL), tiny_train_cfg(eval_freq=1000), tmp_path / "run")
    before = {k: v.clone() for k, v in t.model.state_dict().items()}
    with pytest.raises(TrainingError, match="step 3"):
        t.fit()
    assert all(torch.isfinite(v).all() for v in t.model.state_dict().values())
    assert rundir.list_step_checkpoints(tmp_path / "run") == []
    assert any(not torch.equal(before[k], v) for k, v in t.model.state_dict().items())


def test_lr_schedule_is_a_pure_function():
    kw = dict(lr=1e-3, warmup_steps=10, total_steps=110, min_lr=1e-4)
    assert lr_at(0, **kw) == pytest.approx(1e-4)
    assert lr_at(9, **kw) == pytest.approx(1e-3)
    assert lr_at(60, **kw) == pytest.approx(1e-4 + 0.5 * 9e-4)
    assert lr_at(110, **kw) == pytest.approx(1e-4)
    assert lr_at(500, lr=4e-4, warmup_steps=0, total_steps=10, min_lr=None) == 4e-4
    values = [lr_at(s, **kw) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    assert not any(math.isnan(v) for v in values)


def test_metrics_records_are_json_lines(tmp_path):
    Trainer(ModelConfig(**TINY_MODEL), tiny_train_cfg(eval_freq=60), tmp_path / "run").fit()
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    recs = [json.loads(x) for x in lines]
    ev = [r for r in recs if r["type"] == "eval"]
    assert [r["step"] for r in ev] == [0, 60, 120, 180]
    assert set(ev[0]) >= {"epoch", "step", "tokens_seen", "train_loss", "val_loss"}
    assert recs[-1]["type"] == "sample" and recs[-1]["text"].startswith("Every effort moves you")


def test_activation_checkpointing_and_fused_loss_train_the_same_function(tmp_path, monkeypatch):
    """--activation-checkpointing and --fused-loss save memory, not change the run: the step losses
    and the weights of a few fp32 CPU steps (with dropout) equal the plain run's within 1e-5."""
    import gptcli.fused_loss
    import gptcli.model

    data = tmp_path / "short.txt"
    data.write_text(VERDICT.read_text(encoding="utf-8")[:2000], encoding="utf-8")
    calls = {"checkpoint": 0, "fused": 0}

    def counting(name, fn):
        def wrapper(*a, **kw):
            calls[name] += 1
            return fn(*a, **kw)

        return wrapper

    monkeypatch.setattr(gptcli.model, "checkpoint", counting("checkpoint", gptcli.model.checkpoint))
    monkeypatch.setattr(
        gptcli.model, "chunked_linear_cross_entropy", counting("fused", gptcli.model.chunked_linear_cross_entropy)
    )
    monkeypatch.setattr(gptcli.fused_loss, "DEFAULT_CHUNK_ROWS", 7)  # several chunks per batch

    class Losses(Callbacks):
        def __init__(self):
            self.losses = []

        def on_step(self, state, info):
            self.losses.append(float(info["loss"]))

    runs = {}
    for name, flags in (("plain", {}), ("saving", {"activation_checkpointing": True, "fused_loss": True})):
        rec = Losses()
        cfg = TrainConfig(epochs=1, data=[str(data)], eval_freq=4, device="cpu", **flags)
        Trainer(ModelConfig(**TINY_MODEL), cfg, tmp_path / name, callbacks=rec).fit()
        runs[name] = (rec.losses, _final_weights(tmp_path / name))
        if name == "plain":
            assert calls == {"checkpoint": 0, "fused": 0}
    assert calls["checkpoint"] > 0 and calls["fused"] > 0, "the flags reached the model"
    (plain_losses, plain_w), (losses, w) = runs["plain"], runs["saving"]
    assert len(plain_losses) >= 5 and len(losses) == len(plain_losses)
    assert np.allclose(losses, plain_losses, rtol=0, atol=1e-5), (losses, plain_losses)
    assert all(torch.allclose(w[k], plain_w[k], rtol=0, atol=1e-5) for k in plain_w)


def test_decay_matrices_and_beta2_are_nanogpts_optimizer_and_the_default_is_the_books():
    from gptcli.model import GPT
    from gptcli.training import make_optimizer

    model = GPT(ModelConfig(**TINY_MODEL))
    book = make_optimizer(model, TrainConfig(), torch.device("cpu"))
    assert len(book.param_groups) == 1 and book.param_groups[0]["betas"] == (0.9, 0.999)
    assert book.param_groups[0]["weight_decay"] == 0.1
    nano = make_optimizer(model, TrainConfig(decay="matrices", adam_beta2=0.95), torch.device("cpu"))
    decayed, plain = nano.param_groups
    assert all(p.dim() >= 2 for p in decayed["params"]) and decayed["weight_decay"] == 0.1
    assert plain["params"] and all(p.dim() < 2 for p in plain["params"]) and plain["weight_decay"] == 0.0
    assert len(decayed["params"]) + len(plain["params"]) == len(list(model.parameters()))
    assert all(g["betas"] == (0.9, 0.95) for g in nano.param_groups)
