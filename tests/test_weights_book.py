"""The book's own checkpoints (llms_from_scratch's GPTModel + AdamW) -> gptcli, and resuming them."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gptcli.checkpoint import load_checkpoint, model_from_checkpoint
from gptcli.config import ModelConfig, TrainConfig
from gptcli.errors import CheckpointError, UsageError
from gptcli.model import GPT
from gptcli.weights.book import book_param_names, convert_book

from .conftest import VERDICT
from .weights_helpers import invoke

ch04 = pytest.importorskip("llms_from_scratch.ch04", reason="make install provides llms-from-scratch")

# A small vocabulary keeps these fast (still padded: 1000 -> 1024 rows); the resume test uses GPT-2's.
BOOK_TINY = dict(vocab_size=1000, context_length=12, emb_dim=32, n_heads=4, n_layers=2, drop_rate=0.0, qkv_bias=False)


def _batch(seed: int, ctx: int = 12, vocab: int = 1000):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, vocab, (2, ctx + 1), generator=g)
    return x[:, :-1], x[:, 1:]


def _book_step(model, opt, seed):
    x, y = _batch(seed, model.pos_emb.weight.shape[0], model.tok_emb.weight.shape[0])
    opt.zero_grad()
    F.cross_entropy(model(x).flatten(0, 1), y.flatten()).backward()
    opt.step()


def _book_run(tmp_path, steps: int = 3, **overrides):
    """A notebook run, saved exactly as the book's chapter 5 saves it."""
    cfg = {**BOOK_TINY, **overrides}
    torch.manual_seed(123)
    model = ch04.GPTModel(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=4e-4, weight_decay=0.1)
    for s in range(steps):
        _book_step(model, opt, s)
    path = tmp_path / "model_and_optimizer.pth"
    torch.save({"model_state_dict": model.state_dict(), "optimizer_state_dict": opt.state_dict()}, path)
    return model, opt, path


def test_parameter_order_is_the_books():
    for bias in (False, True):
        model = ch04.GPTModel({**BOOK_TINY, "qkv_bias": bias})
        cfg = ModelConfig(**{**BOOK_TINY, "qkv_bias": bias})
        assert [n for n, _ in model.named_parameters()] == book_param_names(cfg)


def test_book_checkpoint_converts_with_same_logits_and_optimizer(tmp_path):
    book, opt, path = _book_run(tmp_path)
    out = convert_book(path, tmp_path / "book.pth", n_heads=4, drop_rate=0.0, data=[VERDICT])
    obj = load_checkpoint(out)
    assert obj["kind"] == "training"
    cfg = ModelConfig.from_dict(obj["model_config"])
    assert (cfg.context_length, cfg.emb_dim, cfg.n_heads, cfg.n_layers, cfg.qkv_bias, cfg.tie_weights) == (
        12, 32, 4, 2, False, False,
    )  # fmt: skip
    train = TrainConfig.from_dict(obj["train_config"])
    assert (train.lr, train.weight_decay) == (4e-4, 0.1) and train.data == [str(VERDICT.resolve())]

    ours = model_from_checkpoint(obj, out)
    book.eval(), ours.eval()
    x, _ = _batch(99)
    assert torch.allclose(book(x), ours(x), atol=1e-5)
    sd = obj["model_state_dict"]
    assert sd["wte.weight"].shape == (1024, 32) and torch.count_nonzero(sd["wte.weight"][1000:]) == 0
    assert torch.count_nonzero(sd["lm_head.weight"][1000:]) == 0

    # One more AdamW step on both sides gives the same weights: the moments and step counts
    # came across, re-indexed and with q|k|v stacked like their weights.
    ours_opt = torch.optim.AdamW(ours.parameters(), lr=4e-4, weight_decay=0.1)
    ours_opt.load_state_dict(obj["optimizer_state_dict"])
    state = ours_opt.state[ours.h[0].attn.c_attn.weight]
    assert state["exp_avg"].shape == (96, 32) and float(state["step"]) == 3.0
    book.train(), ours.train()
    _book_step(book, opt, 7)
    x, y = _batch(7)
    ours_opt.zero_grad()
    F.cross_entropy(ours(x).flatten(0, 1), y.flatten()).backward()
    ours_opt.step()
    blk, h = book.trf_blocks[1], ours.h[1]
    qkv = torch.cat([blk.att.W_query.weight, blk.att.W_key.weight, blk.att.W_value.weight])
    assert torch.allclose(qkv, h.attn.c_attn.weight, atol=1e-6)
    assert torch.allclose(book.tok_emb.weight, ours.wte.weight[:1000], atol=1e-6)
    assert torch.allclose(book.out_head.weight, ours.lm_head.weight[:1000], atol=1e-6)
    assert torch.count_nonzero(ours.wte.weight[1000:]) == 0  # zero moments: the padding stays zero
    assert torch.allclose(blk.ff.layers[2].weight, h.mlp.c_proj.weight, atol=1e-6)


def test_bare_state_dict_gives_weights_only(tmp_path):
    torch.manual_seed(0)
    model = ch04.GPTModel({**BOOK_TINY, "emb_dim": 128, "n_heads": 2, "qkv_bias": True})
    torch.save(model.state_dict(), tmp_path / "model.pth")
    out = convert_book(tmp_path / "model.pth", tmp_path / "w.pth", n_heads=2)  # not in a state dict
    obj = load_checkpoint(out)
    assert obj["kind"] == "weights" and "optimizer_state_dict" not in obj
    cfg = ModelConfig.from_dict(obj["model_config"])
    assert (cfg.n_heads, cfg.qkv_bias) == (2, True)
    x, _ = _batch(1)
    model.eval()
    torch.testing.assert_close(model_from_checkpoint(obj).eval()(x), model(x), atol=1e-5, rtol=1e-5)
    with pytest.raises(UsageError, match="holds no optimizer state"):
        convert_book(tmp_path / "model.pth", tmp_path / "w2.pth", n_heads=2, data=[tmp_path / "model.pth"])


def test_book_head_count_must_be_given_when_not_64_wide(tmp_path):
    _, _, path = _book_run(tmp_path, steps=1)
    with pytest.raises(UsageError, match="--n-heads"):
        convert_book(path, tmp_path / "o.pth")


def test_book_mismatches_name_each_tensor(tmp_path):
    model = ch04.GPTModel(BOOK_TINY)
    sd = {("_orig_mod." + k): v for k, v in model.state_dict().items()}  # a torch.compile'd model
    del sd["_orig_mod.trf_blocks.1.norm2.shift"]
    sd["_orig_mod.trf_blocks.0.att.W_key.weight"] = torch.zeros(32, 31)
    sd["_orig_mod.trf_blocks.0.extra.weight"] = torch.zeros(3)
    torch.save(sd, tmp_path / "model.pth")
    with pytest.raises(CheckpointError) as e:
        convert_book(tmp_path / "model.pth", tmp_path / "o.pth", n_heads=4)
    msg = str(e.value)
    assert "missing trf_blocks.1.norm2.shift" in msg
    assert "unexpected trf_blocks.0.extra.weight" in msg
    assert "wrong shape trf_blocks.0.att.W_key.weight (file [32, 31], expected [32, 32])" in msg
    assert not (tmp_path / "o.pth").exists()


def test_optimizer_of_another_model_is_refused(tmp_path):
    book, _, _ = _book_run(tmp_path, steps=1)
    other = torch.optim.AdamW(list(book.parameters())[:-1])
    torch.save({"model_state_dict": book.state_dict(), "optimizer_state_dict": other.state_dict()}, tmp_path / "x.pth")
    with pytest.raises(CheckpointError, match="optimizer holds 30 parameters, the model has 31"):
        convert_book(tmp_path / "x.pth", tmp_path / "o.pth", n_heads=4)


def test_resume_a_converted_notebook_run(tmp_path, workdir):
    """The acceptance path, as a user types it: convert with --data, then gptcli resume."""
    (workdir / "short.txt").write_text((workdir / "the-verdict.txt").read_text()[:800])
    _book_run(workdir, steps=3, vocab_size=50257)
    conv = invoke("convert", "model_and_optimizer.pth", "--n-heads", "4", "--data", "short.txt", "-o", "book.pth")
    assert conv.exit_code == 0, conv.stderr
    assert "continue training with: gptcli resume book.pth" in conv.stderr
    res = invoke("resume", "book.pth", "--epochs", "1", "--quiet")
    assert res.exit_code == 0, res.stderr
    run = next((workdir / "runs").iterdir())
    last = load_checkpoint(sorted((run / "checkpoints").glob("step-*.pth"))[-1])
    steps = last["progress"]["step"]
    assert steps >= 1 and last["progress"]["epoch"] == 1
    # AdamW's step counters went on from the notebook's 3 steps, which the progress counts too
    assert float(last["optimizer_state_dict"]["state"][0]["step"]) == steps > 3
    assert GPT(ModelConfig.from_dict(last["model_config"])).cfg.context_length == 12


def test_converted_notebook_run_records_the_epochs_it_ran(workdir, monkeypatch):
    """The book's file holds only the two state dicts, but AdamW counts its steps; with the text,
    the steps per epoch (counted here with the book's own loader) give the epochs the notebook ran,
    so `info` shows them and a bare `resume` does not train the book's 10 epochs over again."""
    from llms_from_scratch import ch02

    from gptcli.tokenizer import get_tokenizer

    text = (workdir / "the-verdict.txt").read_text()[:800]
    (workdir / "short.txt").write_text(text)
    monkeypatch.setattr(ch02.tiktoken, "get_encoding", lambda name: get_tokenizer())  # the book would download it
    train_text = text[: int(0.9 * len(text))]
    per_epoch = len(ch02.create_dataloader_v1(train_text, batch_size=2, max_length=12, stride=12, shuffle=False))
    for steps, epochs in ((2 * per_epoch + 1, 2), (10 * per_epoch, 10)):  # stopped in epoch 3; the book's 10
        _book_run(workdir, steps=steps, vocab_size=50257)
        # the second conversion replaces the first one's book.pth: --force (issue 21)
        conv = invoke(
            "convert", "model_and_optimizer.pth", "--n-heads", "4", "--data", "short.txt", "-o", "book.pth", "--force"
        )
        assert conv.exit_code == 0, conv.stderr
        progress = load_checkpoint(workdir / "book.pth")["progress"]
        assert (progress["epoch"], progress["step"], progress["tokens_seen"]) == (epochs, steps, steps * 2 * 12)
        assert (
            f"epoch {epochs} of 10 done, step {steps}, {steps * 24:,} tokens seen" in invoke("info", "book.pth").stdout
        )
    assert "continue training with: gptcli resume book.pth --epochs 11" in conv.stderr
    res = invoke("resume", "book.pth")
    assert res.exit_code == 2 and "--epochs" in res.stderr
