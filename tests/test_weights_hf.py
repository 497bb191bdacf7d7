"""Hugging Face GPT-2 <-> gptcli, checked against transformers' own GPT2LMHeadModel."""

from __future__ import annotations

import json
import os
import stat

import pytest
import torch

from gptcli.checkpoint import load_checkpoint, model_from_checkpoint
from gptcli.config import ModelConfig
from gptcli.errors import CheckpointError
from gptcli.model import GPT
from gptcli.tokenizer import EOT_ID, decode, encode
from gptcli.weights.convert import convert
from gptcli.weights.hf import export_hf

from .weights_helpers import (
    hf_model_from_openai,
    invoke,
    logits_of,
    random_openai_tensors,
    tiny_openai_cfg,
    write_openai_dir,
)

transformers = pytest.importorskip("transformers")

HF_TINY = dict(vocab_size=50257, n_positions=16, n_embd=32, n_layer=2, n_head=4)


def _hf_model(seed: int = 0, **overrides):
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(**{**HF_TINY, **overrides}, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return transformers.GPT2LMHeadModel(cfg).eval()


def _idx(n: int = 16) -> torch.Tensor:
    return torch.randint(0, 50257, (2, n), generator=torch.Generator().manual_seed(1))


def test_hf_safetensors_to_gptcli_same_logits(tmp_path):
    hf = _hf_model()
    hf.save_pretrained(tmp_path / "hf")
    out = convert(tmp_path / "hf")  # detected as Hugging Face from config.json
    assert out == tmp_path / "hf" / "gptcli-model.pth"
    obj = load_checkpoint(out)
    cfg = ModelConfig.from_dict(obj["model_config"])
    assert (cfg.context_length, cfg.emb_dim, cfg.n_layers, cfg.qkv_bias, cfg.tie_weights) == (16, 32, 2, True, True)
    model = model_from_checkpoint(obj, out).eval()
    assert (logits_of(model, _idx()) - logits_of(hf, _idx())).abs().max().item() < 1e-4


def test_hf_pytorch_bin_hub_style_to_gptcli(tmp_path):
    """The hub's original gpt2 files: no 'transformer.' prefix, attention-mask buffers saved too."""
    hf = _hf_model(seed=2)
    sd = {k.removeprefix("transformer."): v for k, v in hf.state_dict().items() if k != "lm_head.weight"}
    for i in range(2):
        sd[f"h.{i}.attn.bias"] = torch.tril(torch.ones(1, 1, 16, 16))
        sd[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    (tmp_path / "hf").mkdir()
    torch.save(sd, tmp_path / "hf" / "pytorch_model.bin")
    (tmp_path / "hf" / "config.json").write_text(json.dumps({**HF_TINY, "model_type": "gpt2"}))
    out = convert(tmp_path / "hf" / "pytorch_model.bin", tmp_path / "g.pth")
    model = model_from_checkpoint(load_checkpoint(out), out).eval()
    assert (logits_of(model, _idx()) - logits_of(hf, _idx())).abs().max().item() < 1e-4


@pytest.mark.parametrize(
    "shape",
    [
        dict(qkv_bias=True, tie_weights=True),  # OpenAI's shape
        dict(qkv_bias=False, tie_weights=False),  # the book's training shape
    ],
)
def test_gptcli_to_hf_loads_in_transformers_with_same_logits(tmp_path, shape):
    cfg = ModelConfig(vocab_size=50257, context_length=16, emb_dim=32, n_heads=4, n_layers=2, drop_rate=0.0, **shape)
    torch.manual_seed(5)
    ours = GPT(cfg).eval()
    out = export_hf(cfg, ours.state_dict(), tmp_path / "hf")
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json",
        "merges.txt",
        "model.safetensors",
        "tokenizer_config.json",
        "vocab.json",
    ]
    hf = transformers.GPT2LMHeadModel.from_pretrained(out).eval()
    assert hf.config.tie_word_embeddings == cfg.tie_weights
    assert (logits_of(ours, _idx()) - logits_of(hf, _idx())).abs().max().item() < 1e-4
    # ... and back again, to the same function
    back = model_from_checkpoint(load_checkpoint(convert(out, tmp_path / "back.pth")), "back").eval()
    assert (logits_of(back, _idx()) - logits_of(ours, _idx())).abs().max().item() < 1e-5


def test_exported_tokenizer_files_load_in_transformers(tmp_path):
    cfg = ModelConfig(vocab_size=50257, context_length=8, emb_dim=16, n_heads=2, n_layers=1)
    out = export_hf(cfg, GPT(cfg).state_dict(), tmp_path / "hf")
    tok = transformers.AutoTokenizer.from_pretrained(out)
    text = "Every effort moves you, said Gisburn.<|endoftext|>"
    assert tok(text)["input_ids"] == encode(text)


def test_export_tokenizer_knows_the_context_and_files_get_the_umasks_mode(tmp_path):
    """``convert --to hf``: AutoTokenizer reads model_max_length = the context, so truncation=True
    gives inputs the model can take; every file, model.safetensors too, has 0666 less the umask."""
    from gptcli import checkpoint as ckpt

    cfg = ModelConfig(vocab_size=50257, context_length=16, emb_dim=16, n_heads=2, n_layers=1, drop_rate=0.0)
    ckpt.atomic_save(ckpt.weights_checkpoint(cfg, GPT(cfg).state_dict()), tmp_path / "m.pth")
    old = os.umask(0o027)
    try:
        res = invoke("convert", str(tmp_path / "m.pth"), "--to", "hf", "-o", str(tmp_path / "hf"), "-q")
    finally:
        os.umask(old)
    assert res.exit_code == 0, res.stderr
    out = tmp_path / "hf"
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()}
    assert "model.safetensors" in modes and "tokenizer_config.json" in modes
    assert modes == dict.fromkeys(modes, 0o666 & ~0o027), {k: oct(v) for k, v in modes.items()}

    tok = transformers.AutoTokenizer.from_pretrained(out)
    assert tok.model_max_length == 16
    long_text = " ".join(["Every effort moves you."] * 20)
    enc = tok(long_text, truncation=True, return_tensors="pt")
    assert enc["input_ids"].shape == (1, 16)
    assert enc["input_ids"][0].tolist() == encode(long_text)[:16]
    hf = transformers.GPT2LMHeadModel.from_pretrained(out).eval()
    with torch.no_grad():
        assert hf(**enc).logits.shape == (1, 16, 50257)


def test_default_sample_is_fp32_and_matches_transformers_greedy(tmp_path, monkeypatch):
    """No --dtype: fp32, so greedy text is transformers' greedy text token for token, even on a
    CPU where --dtype auto would pick bf16 (simulated here, as this machine may lack it)."""
    from gptcli.weights.openai import convert_openai

    cfg = tiny_openai_cfg(context_length=64)
    tensors = random_openai_tensors(cfg, seed=13)
    # Weights 10x larger than a trained model's (the embedding, which is also the head, apart) make
    # the text depend on the context and the top tokens close, where bf16 departs at once.
    for name in tensors:
        if not name.endswith(("/g", "/b", "wte")):
            tensors[name] = tensors[name] * 10
    out = convert_openai(write_openai_dir(tmp_path / "124M", cfg, tensors), tmp_path / "model.pth")
    monkeypatch.setattr("gptcli.device.native_bf16", lambda device: True)

    prompt = "Every effort moves you"
    res = invoke("sample", "--model", str(out), "--prompt", prompt, "--temperature", "0", "--max-new-tokens", "40")
    assert res.exit_code == 0, res.stderr

    ids = encode(prompt)
    hf = hf_model_from_openai(cfg, tensors)
    with torch.no_grad():
        ref = hf.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=40,
            do_sample=False,
            pad_token_id=EOT_ID,
        )[0, len(ids) :].tolist()
    new = ref[: ref.index(EOT_ID)] if EOT_ID in ref else ref  # gptcli stops at <|endoftext|>
    assert len(new) > 1
    assert res.stdout.rstrip("\n") == decode(ids + new)


def test_convert_cli_exports_a_training_run(tmp_path, monkeypatch):
    """``gptcli convert RUN --to hf`` on a gptcli checkpoint of a run."""
    from gptcli import checkpoint as ckpt

    cfg = ModelConfig(vocab_size=50257, context_length=8, emb_dim=16, n_heads=2, n_layers=1)
    model = GPT(cfg)
    run = tmp_path / "runs" / "r"
    ckpt.atomic_save(
        {
            "format": ckpt.FORMAT,
            "version": ckpt.VERSION,
            "kind": "weights",
            "model_config": cfg.to_dict(),
            "model_state_dict": model.state_dict(),
        },
        run / "checkpoints" / "step-00000003.pth",
    )
    (run / "config.yaml").write_text("model: {}\n")
    res = invoke("convert", str(run), "--to", "hf", "-o", str(tmp_path / "exported"), "-q")
    assert res.exit_code == 0, res.stderr
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "exported").eval()
    assert (logits_of(model.eval(), _idx(8)) - logits_of(hf, _idx(8))).abs().max().item() < 1e-4


def test_hf_mismatches_name_each_tensor(tmp_path):
    hf = _hf_model()
    hf.save_pretrained(tmp_path / "hf")
    conf = json.loads((tmp_path / "hf" / "config.json").read_text())
    (tmp_path / "hf" / "config.json").write_text(json.dumps({**conf, "n_layer": 3, "n_positions": 20}))
    with pytest.raises(CheckpointError) as e:
        convert(tmp_path / "hf", tmp_path / "o.pth")
    msg = str(e.value)
    assert "missing h.2.ln_1.weight" in msg and "wrong shape wpe.weight (file [16, 32], expected [20, 32])" in msg
    assert not (tmp_path / "o.pth").exists()
    (tmp_path / "hf" / "config.json").write_text(json.dumps({**conf, "activation_function": "relu"}))
    with pytest.raises(CheckpointError, match="activation_function='relu' is not supported"):
        convert(tmp_path / "hf", tmp_path / "o.pth")


def test_fp32_greedy_with_products_split_across_threads_matches_transformers(tmp_path, two_threads):
    """GPT-2's width, on 2 threads: sample's fp32 products run one block of columns per thread
    (gptcli.quantize.SplitLinear), and the greedy tokens are still transformers' own."""
    from gptcli.generation import generate
    from gptcli.inference import load_model_for_inference
    from gptcli.quantize import SplitLinear
    from gptcli.weights.openai import convert_openai

    cfg = tiny_openai_cfg(context_length=64, emb_dim=768, n_heads=12, n_layers=2)
    tensors = random_openai_tensors(cfg, seed=13)
    for name in tensors:  # as above: text that depends on the context, top tokens close
        if not name.endswith(("/g", "/b", "wte")):
            tensors[name] = tensors[name] * 10
    out = convert_openai(write_openai_dir(tmp_path / "124M", cfg, tensors), tmp_path / "model.pth")
    net = load_model_for_inference(None, str(out), device="cpu").net
    splits = [m for m in net.modules() if isinstance(m, SplitLinear)]
    assert len(splits) == 4 * 2 + 1 and all(m.parts(1) == 2 for m in splits)
    ids = encode("Every effort moves you")
    ours = generate(net, torch.tensor([ids]), max_new_tokens=40)[0]
    hf = hf_model_from_openai(cfg, tensors)
    with torch.no_grad():
        ref = hf.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=40,
            do_sample=False,
            pad_token_id=EOT_ID,
        )[0, len(ids) :].tolist()
    assert ours == ref
