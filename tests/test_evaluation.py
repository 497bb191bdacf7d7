"""``gptcli eval``: the book's ``calc_loss_loader`` by default, a sliding window with ``--stride``,
each checked against an independent computation (the book's code; transformers)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gptcli import checkpoint as ckpt
from gptcli.config import ModelConfig
from gptcli.data import tokenize
from gptcli.evaluation import BOOK_METHOD, evaluate_tokens
from gptcli.model import GPT
from gptcli.weights.book import book_sources

from .conftest import TINY_MODEL, VERDICT
from .weights_helpers import invoke

# The shape: a tiny model at context 32, where the-verdict (5,145 tokens) has 160 of the
# book's windows and a 24-token tail the book leaves out.
CTX32 = dict(context_length=32, emb_dim=32, n_heads=4, n_layers=2, drop_rate=0.0, qkv_bias=False, tie_weights=False)


def _saved_model(tmp_path, seed: int = 0, **overrides):
    cfg = ModelConfig(**{**CTX32, **overrides})
    torch.manual_seed(seed)
    model = GPT(cfg).eval()
    path = ckpt.atomic_save(ckpt.weights_checkpoint(cfg, model.state_dict()), tmp_path / "model.pth")
    return cfg, model, path


def _eval_json(*args: str) -> dict:
    res = invoke("eval", *args, "--json", "-q")
    assert res.exit_code == 0, res.stderr
    return json.loads(res.stdout)


def _book_model(cfg: ModelConfig, ours: GPT):
    """The book's GPTModel holding our weights, through weights/book.py's name map (run backwards:
    fused qkv rows split into W_query/W_key/W_value, the vocabulary padding cut off)."""
    ch04 = pytest.importorskip("llms_from_scratch.ch04", reason="make install provides llms-from-scratch")
    book = ch04.GPTModel(
        dict(
            vocab_size=cfg.vocab_size,
            context_length=cfg.context_length,
            emb_dim=cfg.emb_dim,
            n_heads=cfg.n_heads,
            n_layers=cfg.n_layers,
            drop_rate=cfg.drop_rate,
            qkv_bias=cfg.qkv_bias,
        )
    )
    sd = book.state_dict()
    ours_sd = ours.state_dict()
    for name, sources in book_sources(cfg).items():
        parts = ours_sd[name].chunk(len(sources), dim=0) if len(sources) > 1 else [ours_sd[name]]
        for src, t in zip(sources, parts):
            sd[src] = t[: cfg.vocab_size] if src in ("tok_emb.weight", "out_head.weight") else t
    book.load_state_dict(sd)
    return book.eval()


@pytest.mark.parametrize("batch_size", [None, 7])  # gptcli's default 8 divides the 160 windows; 7 does not
def test_default_eval_is_the_books_calc_loss_loader(tmp_path, monkeypatch, batch_size):
    ch02 = pytest.importorskip("llms_from_scratch.ch02")
    ch05 = pytest.importorskip("llms_from_scratch.ch05")
    from gptcli.tokenizer import get_tokenizer

    # tiktoken's GPT-2 encoding, which the book would download (tests/test_tokenizer.py: identical)
    monkeypatch.setattr(ch02.tiktoken, "get_encoding", lambda name: get_tokenizer())
    cfg, ours, path = _saved_model(tmp_path)
    book = _book_model(cfg, ours)
    x = torch.randint(0, cfg.vocab_size, (2, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():  # the same function, so any difference below is the windows or the averaging
        assert (ours(x) - book(x)).abs().max().item() < 1e-5

    flags = [] if batch_size is None else ["--batch-size", str(batch_size)]
    res = _eval_json(str(VERDICT), "-c", str(path), *flags)

    text = VERDICT.read_text(encoding="utf-8")
    loader = ch02.create_dataloader_v1(
        text, batch_size=batch_size or 8, max_length=32, stride=32, shuffle=False, drop_last=False
    )
    with torch.no_grad():
        ref = ch05.calc_loss_loader(loader, book, "cpu")
    assert (res["windows"], res["tokens"]) == (len(loader.dataset), 32 * len(loader.dataset)) == (160, 5120)
    assert res["method"] == BOOK_METHOD == "book windows (stride = context)" and res["stride"] == 32
    assert abs(res["loss"] - ref) < 1e-5, (res["loss"], ref)


def _hf_guide_loss(hf, ids: torch.Tensor, n_positions: int, stride: int) -> tuple[float, int]:
    """The loop of Hugging Face's perplexity guide ("Perplexity of fixed-length models"), with
    windows of n_positions + 1 tokens: n_positions inputs and their next tokens as labels, so
    every position of the model predicts. The labels before the new ones are -100; the NLL is
    summed over exactly the labels that count."""
    seq_len = ids.size(1)
    nll_sum, n_tokens, prev_end_loc = 0.0, 0, 0
    for begin_loc in range(0, seq_len, stride):
        end_loc = min(begin_loc + n_positions + 1, seq_len)
        trg_len = end_loc - prev_end_loc
        input_ids = ids[:, begin_loc:end_loc]
        target_ids = input_ids.clone()
        target_ids[:, :-trg_len] = -100
        with torch.no_grad():
            logits = hf(input_ids[:, :-1]).logits
        labels = target_ids[:, 1:]
        nll_sum += F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100, reduction="sum").item()
        n_tokens += int((labels != -100).sum())
        prev_end_loc = end_loc
        if end_loc == seq_len:
            break
    return nll_sum / n_tokens, n_tokens


@pytest.mark.parametrize("stride", [8, 32])
def test_sliding_window_matches_transformers_on_the_exported_model(tmp_path, stride):
    transformers = pytest.importorskip("transformers")
    from gptcli.weights.hf import export_hf

    cfg, ours, path = _saved_model(tmp_path, seed=3, qkv_bias=True, tie_weights=True)
    folder = export_hf(cfg, ours.state_dict(), tmp_path / "hf")
    hf = transformers.GPT2LMHeadModel.from_pretrained(folder).eval()
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    text = VERDICT.read_text(encoding="utf-8")[:3000]
    (tmp_path / "part.txt").write_text(text, encoding="utf-8")
    ids = torch.tensor([tok(text, verbose=False)["input_ids"]])

    res = _eval_json(str(tmp_path / "part.txt"), "-c", str(path), "--stride", str(stride), "--batch-size", "5")
    ref_loss, ref_tokens = _hf_guide_loss(hf, ids, cfg.context_length, stride)
    assert res["tokens"] == ref_tokens == ids.size(1) - 1  # every token after the first, once
    assert res["method"] == f"sliding window, stride {stride}" and res["stride"] == stride
    assert abs(res["loss"] - ref_loss) < 1e-5, (res["loss"], ref_loss)


def test_stride_equal_to_context_scores_the_tail_too():
    """--stride T: the book's windows plus the tail, token-weighted, computed by hand."""
    torch.manual_seed(0)
    m = GPT(ModelConfig(**TINY_MODEL))
    tokens = tokenize(VERDICT.read_text(encoding="utf-8"))[:1000]
    res = evaluate_tokens(m, tokens, batch_size=7, stride=12)
    m.eval()
    losses = []
    with torch.no_grad():
        for s in range(0, len(tokens) - 1, 12):
            chunk = torch.tensor(np.asarray(tokens[s : s + 13], dtype=np.int64))
            logits = m(chunk[:-1].unsqueeze(0))[0]
            losses.append(F.cross_entropy(logits, chunk[1:], reduction="none"))
    by_hand = torch.cat(losses)
    assert res.tokens == len(tokens) - 1 == by_hand.numel()
    assert abs(res.loss - by_hand.mean().item()) < 1e-5
    assert abs(res.perplexity / float(torch.exp(by_hand.mean())) - 1) < 1e-4


def test_table_names_the_method(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a short checkpoint path, so the table fits the runner's 80 columns
    _saved_model(tmp_path)
    text = VERDICT.read_text(encoding="utf-8")[:3000]
    (tmp_path / "part.txt").write_text(text, encoding="utf-8")
    n = len(tokenize(text))
    book = invoke("eval", "part.txt", "-c", "model.pth", "-q")
    assert book.exit_code == 0, book.stderr
    assert "book windows (stride = context)" in book.stdout and f"{32 * ((n - 32 + 31) // 32):,}" in book.stdout
    sliding = invoke("eval", "part.txt", "-c", "model.pth", "--stride", "16", "-q")
    assert sliding.exit_code == 0, sliding.stderr
    assert "sliding window, stride 16" in sliding.stdout and f"{n - 1:,}" in sliding.stdout


def test_bad_strides_and_short_texts_get_one_error_line(tmp_path):
    _, _, path = _saved_model(tmp_path)
    too_big = invoke("eval", str(VERDICT), "-c", str(path), "--stride", "33")
    assert too_big.exit_code == 2
    assert too_big.stderr.strip().splitlines() == [
        "error: invalid --stride: 33 (at most the model's context length, 32)"
    ]
    assert invoke("eval", str(VERDICT), "-c", str(path), "--stride", "0").exit_code == 2
    short = tmp_path / "short.txt"
    short.write_text("Every effort moves you, said Gisburn.", encoding="utf-8")  # 9 tokens
    res = invoke("eval", str(short), "-c", str(path))
    assert res.exit_code == 2 and len(res.stderr.strip().splitlines()) == 1
    assert str(short) in res.stderr and "--stride 32" in res.stderr
    assert _eval_json(str(short), "-c", str(path), "--stride", "32")["tokens"] == len(tokenize(short.read_text())) - 1


def test_eval_dtype_measures_the_faster_modes_loss(tmp_path):
    """--dtype bf16 / int8: the book's windows scored by the model as sample --dtype runs it, its
    logits' cross-entropy taken in fp32: close to fp32's loss, not equal; fp32 stays the book's."""
    from gptcli.inference import load_model_for_inference

    _, _, path = _saved_model(tmp_path)
    fp32 = _eval_json(str(VERDICT), "-c", str(path))
    assert fp32["dtype"] == "fp32"
    ids = torch.tensor(tokenize(VERDICT.read_text(encoding="utf-8")))
    n = (len(ids) - 1) // 32  # the book's windows: 160
    x, y = ids[: n * 32].view(n, 32), ids[1 : n * 32 + 1].view(n, 32)
    for dtype in ("bf16", "int8"):
        res = _eval_json(str(VERDICT), "-c", str(path), "--dtype", dtype)
        assert res["dtype"] == dtype and res["windows"] == fp32["windows"] == n
        assert res["loss"] != fp32["loss"] and abs(res["loss"] - fp32["loss"]) < 0.02, (dtype, res["loss"])
        net = load_model_for_inference(path, None, device="cpu", dtype=dtype).net
        with torch.no_grad():  # the mean of the batch means, each batch's cross-entropy in fp32
            means = [
                F.cross_entropy(net(xb).float().flatten(0, 1), yb.flatten()).item()
                for xb, yb in zip(x.split(8), y.split(8))
            ]
        assert abs(res["loss"] - sum(means) / len(means)) < 1e-6, dtype
        table = invoke("eval", str(VERDICT), "-c", str(path), "--dtype", dtype, "-q")
        assert table.exit_code == 0 and f"{res['loss']:.4f}" in table.stdout
        assert "dtype" in next(line for line in table.stdout.splitlines() if "method" in line)
    header = next(
        line for line in invoke("eval", str(VERDICT), "-c", str(path), "-q").stdout.splitlines() if "method" in line
    )
    assert "dtype" not in header  # fp32: the book's table as it was


def test_eval_dtype_is_refused_where_it_does_not_apply(tmp_path):
    _, _, path = _saved_model(tmp_path)
    res = invoke("eval", "-c", str(path), "--split", "test", "--dtype", "bf16")
    assert res.exit_code == 2
    assert res.stderr.strip().splitlines() == [
        "error: --dtype bf16 applies to text files, --task hellaswag and lm-eval:... only"
    ]
    res = invoke("eval", str(VERDICT), "-c", str(path), "--dtype", "int4")
    assert res.exit_code == 2 and "--dtype" in res.stderr and len(res.stderr.strip().splitlines()) == 1
