"""OpenAI's GPT-2 checkpoints -> gptcli: parity with transformers, mismatches, and using the result."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from gptcli.checkpoint import load_checkpoint, model_from_checkpoint
from gptcli.config import ModelConfig
from gptcli.errors import CheckpointError
from gptcli.model import GPT, gptcli_param_names, gptcli_shapes
from gptcli.weights import gpt2_dir
from gptcli.weights.openai import convert_openai, data_size, load_openai

from .conftest import run_gptcli
from .weights_helpers import (
    BOOK_SAMPLE,
    hf_model_from_openai,
    invoke,
    logits_of,
    random_openai_tensors,
    tiny_openai_cfg,
    write_openai_dir,
)


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    cfg = tiny_openai_cfg()
    tensors = random_openai_tensors(cfg, seed=3)
    d = write_openai_dir(tmp_path_factory.mktemp("openai") / "124M", cfg, tensors, block_size=512)
    return cfg, tensors, d


@pytest.mark.parametrize("qkv_bias,tie", [(True, True), (False, False), (True, False)])
def test_expected_shapes_and_parameter_order_match_the_model(qkv_bias, tie):
    cfg = ModelConfig(
        vocab_size=100, context_length=8, emb_dim=16, n_heads=2, n_layers=2, qkv_bias=qkv_bias, tie_weights=tie
    )
    model = GPT(cfg)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == gptcli_shapes(cfg)
    assert list(model.state_dict()) == list(gptcli_shapes(cfg))
    assert [n for n, _ in model.named_parameters()] == gptcli_param_names(cfg)


def test_data_file_size_of_124m_is_openais():
    assert data_size(ModelConfig.from_preset("gpt2-124M")) == 497_759_232
    assert data_size(ModelConfig.from_preset("gpt2-355M")) == 1_419_292_672


def test_converted_logits_match_transformers(tiny_ckpt, tmp_path):
    cfg, tensors, d = tiny_ckpt
    out = convert_openai(d, tmp_path / "model.pth")
    obj = load_checkpoint(out)
    assert obj["kind"] == "weights" and "optimizer_state_dict" not in obj
    assert ModelConfig.from_dict(obj["model_config"]) == cfg
    sd = obj["model_state_dict"]
    assert torch.count_nonzero(sd["wte.weight"][cfg.vocab_size :]) == 0  # padded rows are zero
    assert sd["lm_head.weight"].data_ptr() == sd["wte.weight"].data_ptr()  # tied, stored once
    model = model_from_checkpoint(obj, out).eval()
    idx = torch.randint(0, cfg.vocab_size, (2, cfg.context_length), generator=torch.Generator().manual_seed(0))
    ours, ref = logits_of(model, idx), logits_of(hf_model_from_openai(cfg, tensors), idx)
    assert ours.shape == ref.shape == (2, cfg.context_length, cfg.vocab_size)
    assert (ours - ref).abs().max().item() < 1e-4


def test_tensorflow_and_builtin_readers_give_identical_tensors(tiny_ckpt):
    pytest.importorskip("tensorflow", reason="optional: pip install 'gptcli[tf]'")
    _, _, d = tiny_ckpt
    cfg_a, a = load_openai(d, reader="builtin")
    cfg_b, b = load_openai(d, reader="tensorflow")
    assert cfg_a == cfg_b and list(a) == list(b)
    for name in a:
        assert a[name].dtype == b[name].dtype and torch.equal(a[name], b[name]), name


def test_progress_reports_every_tensor(tiny_ckpt, tmp_path):
    _, tensors, d = tiny_ckpt
    seen = []
    convert_openai(d, tmp_path / "m.pth", on_progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (len(tensors), len(tensors)) and len(seen) == len(tensors)


def test_mismatches_name_every_tensor(tmp_path):
    cfg = tiny_openai_cfg()
    tensors = random_openai_tensors(cfg)
    del tensors["model/h1/mlp/c_fc/b"]
    tensors["model/h0/attn/c_proj/w"] = np.zeros((1, 32, 31), np.float32)
    tensors["model/h2/ln_1/g"] = np.ones(32, np.float32)
    tensors["global_step"] = np.int64(7)  # training left-overs are not model tensors: ignored
    d = write_openai_dir(tmp_path / "bad", cfg, tensors)
    with pytest.raises(CheckpointError) as e:
        convert_openai(d, tmp_path / "out.pth")
    msg = str(e.value)
    assert "missing model/h1/mlp/c_fc/b" in msg
    assert "unexpected model/h2/ln_1/g" in msg
    assert "wrong shape model/h0/attn/c_proj/w (file [1, 32, 31], expected [1, 32, 32])" in msg
    assert "global_step" not in msg
    assert not (tmp_path / "out.pth").exists()


def test_hparams_that_disagree_with_the_tensors(tiny_ckpt, tmp_path):
    import shutil

    _, _, d = tiny_ckpt
    bad = tmp_path / "c"
    shutil.copytree(d, bad)
    hp = json.loads((bad / "hparams.json").read_text())
    (bad / "hparams.json").write_text(json.dumps({**hp, "n_layer": 3}))
    with pytest.raises(CheckpointError, match=r"missing model/h2/ln_1/g"):
        convert_openai(bad, tmp_path / "o.pth")
    (bad / "hparams.json").unlink()
    with pytest.raises(CheckpointError, match="hparams.json: missing"):
        convert_openai(bad, tmp_path / "o.pth")


def test_flipped_byte_is_reported_by_convert_with_the_tensor_name(tiny_ckpt, tmp_path):
    import shutil

    from gptcli.weights.tf_checkpoint import BundleReader

    _, _, d = tiny_ckpt
    bad = tmp_path / "c"
    shutil.copytree(d, bad)
    with BundleReader(bad) as r:
        e = r.entries["model/h1/attn/c_attn/w"]
    data = bad / "model.ckpt.data-00000-of-00001"
    raw = bytearray(data.read_bytes())
    raw[e.offset + e.size // 2] ^= 0x40
    data.write_bytes(bytes(raw))
    proc = run_gptcli("convert", str(bad), "-o", str(tmp_path / "o.pth"), "--quiet", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "model/h1/attn/c_attn/w" in lines[0] and "CRC32C" in lines[0], proc.stderr
    assert not (tmp_path / "o.pth").exists()


def test_downloaded_model_is_used_by_sample_eval_and_train(tiny_ckpt, workdir):
    """``--model gpt2-124M`` resolves to the converted file in the cache, for sample and eval, and
    ``train --init`` continues from it with the checkpoint's own shape (qkv bias, tied head)."""
    _, _, d = tiny_ckpt
    (workdir / "short.txt").write_text((workdir / "the-verdict.txt").read_text()[:4000])
    missing = invoke("sample", "--model", "gpt2-124M")
    assert missing.exit_code == 2 and "run: gptcli download --size 124M" in missing.stderr

    convert_openai(d, gpt2_dir("124M") / "model.pth")
    # The book's closing example, as a user runs it.
    s = run_gptcli(*BOOK_SAMPLE, "--max-new-tokens", "5", "--seed", "1", cwd=workdir, check=True)
    assert s.stdout.startswith("Every effort moves you")
    fallback = invoke("sample", "--max-new-tokens", "3")  # no run under ./runs: the downloaded 124M
    assert fallback.exit_code == 0, fallback.stderr
    assert "using the downloaded GPT-2 124M" in fallback.stderr and fallback.stdout.startswith("Every effort moves you")
    ev = invoke("eval", "short.txt", "--model", "gpt2-124M", "--json")
    assert ev.exit_code == 0, ev.stderr
    assert json.loads(ev.stdout)["tokens"] > 500

    tr = invoke(
        "train",
        "short.txt",
        "--init",
        "gpt2-124M",
        "--epochs",
        "1",
        "--eval-freq",
        "1000",
        "--eval-iter",
        "1",
        "--batch-size",
        "8",
        "--out",
        "runs/ft",
        "--quiet",
    )
    assert tr.exit_code == 0, tr.stderr
    obj = load_checkpoint(sorted((workdir / "runs/ft/checkpoints").glob("*.pth"))[-1])
    cfg = ModelConfig.from_dict(obj["model_config"])
    assert (cfg.qkv_bias, cfg.tie_weights, cfg.context_length) == (True, True, 16)


@pytest.mark.slow
def test_full_124m_shape_parity_with_transformers(tmp_path):
    """Random weights of GPT-2 124M's exact shape: a 497,759,232-byte data file, as OpenAI's."""
    cfg = ModelConfig.from_preset("gpt2-124M")
    tensors = random_openai_tensors(cfg, seed=124)
    d = write_openai_dir(tmp_path / "124M", cfg, tensors)
    assert (d / "model.ckpt.data-00000-of-00001").stat().st_size == 497_759_232
    out = convert_openai(d, tmp_path / "model.pth")
    model = model_from_checkpoint(load_checkpoint(out), out).eval()
    ref = hf_model_from_openai(cfg, tensors)
    del tensors
    idx = torch.randint(0, cfg.vocab_size, (1, 64), generator=torch.Generator().manual_seed(0))
    diff = (logits_of(model, idx) - logits_of(ref, idx)).abs().max().item()
    assert diff < 1e-4, diff
