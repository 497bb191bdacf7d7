"""CPU decoding levers: weight-only int8 (--dtype int8) and loading only what inference needs."""

from __future__ import annotations

import copy
import os
import sys
import zipfile

import pytest
import torch
import torch.nn.functional as F

from gptcli import checkpoint
from gptcli.config import ModelConfig
from gptcli.errors import CheckpointError, UsageError
from gptcli.generation import generate
from gptcli.inference import load_model_for_inference, prepare_for_inference
from gptcli.model import GPT

CPU = torch.device("cpu")
PROMPT = torch.tensor([[6109, 3626, 6100, 345]])


def tied_model(seed: int) -> GPT:
    torch.manual_seed(seed)
    cfg = ModelConfig(context_length=64, emb_dim=64, n_heads=4, n_layers=2, drop_rate=0.0, tie_weights=True)
    return GPT(cfg).eval()


# ---------------------------------------------------------------------------------------------
# --dtype fp32: products split across the threads, the same bits


# GPT-2 124M's products and a 1558M one's (k, n); the head's (50304 rows) is in the model test below
SHAPES = [(768, 2304), (768, 768), (768, 3072), (3072, 768), (1600, 6400)]


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("k,n", SHAPES)
def test_split_linear_computes_the_bits_of_f_linear_on_all_threads(two_threads, k, n, bias):
    from gptcli.quantize import SPLIT_MAX_ROWS, SplitLinear

    torch.manual_seed(0)
    lin = torch.nn.Linear(k, n, bias=bias)
    lin.weight.data = lin.weight.data.t().contiguous().t()  # column-major, as prepare_for_inference
    split = SplitLinear(lin)
    assert split.weight is lin.weight and split.bias is lin.bias  # the same Parameters
    with torch.no_grad():
        for shape in [(1, k), (1, 1, k), (3, k), (2, 8, k), (SPLIT_MAX_ROWS, k)]:
            rows = torch.Size(shape[:-1]).numel()
            assert split.parts(rows) == 2, shape  # the split path is the one tested
            x = torch.randn(shape)
            assert torch.equal(split(x), F.linear(x, lin.weight, lin.bias)), shape
        assert split.parts(SPLIT_MAX_ROWS + 1) == 0  # long prefills: MKL's own threading
    torch.set_num_threads(1)
    assert split.parts(1) == 0


def test_split_linear_leaves_row_major_and_small_weights_to_f_linear(two_threads):
    from gptcli.quantize import SplitLinear

    assert SplitLinear(torch.nn.Linear(768, 768)).parts(1) == 0  # row-major: no column blocks
    small = torch.nn.Linear(64, 192)
    small.weight.data = small.weight.data.t().contiguous().t()
    assert SplitLinear(small).parts(1) == 0  # a tiny model's products: one thread is faster
    odd = torch.nn.Linear(768, 2305)
    odd.weight.data = odd.weight.data.t().contiguous().t()
    assert SplitLinear(odd).parts(1) == 0  # 2305 columns do not divide into 2 blocks


@pytest.mark.parametrize(
    "threads,k,n,parts", [(4, 768, 768, 4), (8, 768, 768, 4), (8, 768, 2304, 8), (3, 768, 2305, 0)]
)
def test_split_linear_blocks_stay_large_and_even_on_many_threads(threads, k, n, parts):
    from gptcli.quantize import SPLIT_MIN_BLOCK, SplitLinear

    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        lin = torch.nn.Linear(k, n)
        lin.weight.data = lin.weight.data.t().contiguous().t()
        split = SplitLinear(lin)
        assert split.parts(1) == parts
        if parts:
            assert n % parts == 0 and (n // parts) * k >= SPLIT_MIN_BLOCK
            x = torch.randn(3, k)
            with torch.no_grad():
                assert torch.equal(split(x), F.linear(x, lin.weight, lin.bias))
    finally:
        torch.set_num_threads(saved)


@pytest.mark.parametrize("tie", [True, False])
def test_fp32_model_splits_its_products_and_keeps_its_logits_and_tokens(two_threads, tie):
    from gptcli.quantize import SplitLinear

    torch.manual_seed(0)
    cfg = ModelConfig(context_length=64, emb_dim=768, n_heads=12, n_layers=1, drop_rate=0.0, tie_weights=tie)
    m = GPT(cfg).eval()
    fast = prepare_for_inference(copy.deepcopy(m), dtype="fp32", device=CPU)
    splits = [mod for mod in fast.modules() if isinstance(mod, SplitLinear)]
    assert len(splits) == 4 + 1 and all(s.parts(1) == 2 for s in splits)
    if tie:
        assert fast.lm_head.weight is fast.wte.weight
    assert fast.state_dict().keys() == m.state_dict().keys()
    unsplit = copy.deepcopy(fast)
    for mod in unsplit.modules():
        if isinstance(mod, SplitLinear):
            mod.__class__ = torch.nn.Linear  # the layout before: F.linear on the column-major weights
    x = torch.randint(0, 50257, (1, 20))
    with torch.no_grad():
        assert torch.equal(fast(x), unsplit(x))  # prefill
        assert torch.equal(fast(x[:, :1]), unsplit(x[:, :1]))  # one token
    assert generate(fast, PROMPT, max_new_tokens=20) == generate(unsplit, PROMPT, max_new_tokens=20)
    assert generate(fast, PROMPT, max_new_tokens=20) == generate(m, PROMPT, max_new_tokens=20)


# ---------------------------------------------------------------------------------------------
# --dtype bf16: prepacked weights, the same bits


@pytest.mark.parametrize("tie", [True, False])
def test_prepacked_bf16_computes_the_same_bits_as_plain_bf16(tie):
    from gptcli.quantize import PackedLinear, packing_supported

    if not packing_supported():
        pytest.skip("this torch or CPU has no oneDNN bf16 linear: bf16 keeps plain nn.Linear")
    torch.manual_seed(0)
    cfg = ModelConfig(context_length=64, emb_dim=64, n_heads=4, n_layers=2, drop_rate=0.0, tie_weights=tie)
    m = GPT(cfg).eval()
    plain = copy.deepcopy(m).to(torch.bfloat16)
    packed = prepare_for_inference(copy.deepcopy(m), dtype="bf16", device=CPU)
    assert sum(isinstance(mod, PackedLinear) for mod in packed.modules()) == 4 * 2 + 1
    x = torch.randint(0, 50257, (3, 20))
    with torch.no_grad():
        assert torch.equal(packed(x), plain(x))  # prefill shapes
        assert torch.equal(packed(x[:1, :1]), plain(x[:1, :1]))  # one token
    assert generate(packed, PROMPT, max_new_tokens=30) == generate(plain, PROMPT, max_new_tokens=30)


# ---------------------------------------------------------------------------------------------
# --dtype int8


@pytest.mark.parametrize("seed", range(3))
def test_int8_runs_and_its_divergence_from_fp32_is_bounded(seed):
    from gptcli.quantize import Int8Linear

    m = tied_model(seed)
    fp32 = prepare_for_inference(copy.deepcopy(m), dtype="fp32", device=CPU)
    bf16 = prepare_for_inference(copy.deepcopy(m), dtype="bf16", device=CPU)
    int8 = prepare_for_inference(copy.deepcopy(m), dtype="int8", device=CPU)
    linears = [mod for mod in int8.modules() if isinstance(mod, Int8Linear)]
    assert len(linears) == 4 * 2 + 1 and not any(isinstance(mod, torch.nn.Linear) for mod in int8.modules())
    assert all(lin.weight_int8.dtype == torch.int8 for lin in linears)
    x = torch.randint(0, 50257, (2, 20))
    with torch.no_grad():
        ref = fp32(x)
        d_int8 = (int8(x).float() - ref).abs().max().item()
        d_bf16 = (bf16(x).float() - ref).abs().max().item()
    # int8 rounds each weight to 1/254 of its row's largest: a little more than bf16's 1/256
    # relative rounding of every weight, and far less than a wrong scale or layout would give
    assert 0 < d_int8 < 3 * d_bf16 and d_int8 < 0.05, (d_int8, d_bf16)
    greedy = generate(fp32, PROMPT, max_new_tokens=12)[0]
    assert generate(int8, PROMPT, max_new_tokens=12)[0][:10] == greedy[:10]


def test_int8_quantises_each_row_to_its_own_scale():
    from gptcli.quantize import Int8Linear

    w = torch.randn(8, 64) * torch.logspace(-3, 1, 8).unsqueeze(1)  # rows 4 decades apart
    lin = Int8Linear(w, None)
    deq = lin.weight_int8.float() * lin.scales.float().unsqueeze(1)
    assert lin.weight_int8.abs().amax(dim=1).min() >= 126  # each row uses its whole range
    assert ((deq - w).abs() <= lin.scales.float().unsqueeze(1) / 2 + 1e-12).all()
    x = torch.randn(3, 64)
    assert torch.allclose(lin(x).float(), x.bfloat16().float() @ deq.t(), rtol=2e-2, atol=1e-2)


def test_int8_is_refused_off_the_cpu():
    with pytest.raises(UsageError, match="int8.*CPU only"):
        prepare_for_inference(tied_model(0), dtype="int8", device=torch.device("cuda"))


def test_sample_command_runs_with_int8(tmp_path):
    from gptcli.commands import sample

    m = tied_model(1)
    path = checkpoint.atomic_save(checkpoint.weights_checkpoint(m.cfg, m.state_dict()), tmp_path / "m.pth")
    texts = sample.sample_command(checkpoint=path, prompts=["Every effort moves you"], max_new_tokens=8, dtype="int8")
    assert len(texts) == 1 and texts[0]


# ---------------------------------------------------------------------------------------------
# Loading for inference: the weights only, memory-mapped, without a random init first


def _training_checkpoint(tmp_path, model: GPT):
    opt = torch.optim.AdamW(model.parameters())
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    opt.step()
    obj = checkpoint.training_checkpoint(
        model.cfg, {}, model.state_dict(), optimizer_state=opt.state_dict(), progress={"epoch": 0, "step": 1}
    )
    return checkpoint.atomic_save(obj, tmp_path / "train.pth")


def _flip_byte_of_record(path, name: str) -> None:
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(name)
    with open(path, "r+b") as f:  # a stored record's bytes start after its 30-byte local header
        f.seek(info.header_offset + 26)
        n, extra = int.from_bytes(f.read(2), "little"), int.from_bytes(f.read(2), "little")
        f.seek(info.header_offset + 30 + n + extra + 5)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 0xFF]))


@pytest.mark.parametrize("tie", [True, False])
def test_inference_loads_the_weights_of_a_training_checkpoint_exactly(tmp_path, tie):
    torch.manual_seed(0)
    m = GPT(ModelConfig(context_length=32, emb_dim=32, n_heads=2, n_layers=2, drop_rate=0.0, tie_weights=tie))
    path = _training_checkpoint(tmp_path, m)
    net = load_model_for_inference(path, None, device="cpu").net
    for (name, a), b in zip(m.state_dict().items(), net.state_dict().values()):
        assert torch.equal(a, b), name
    assert (net.lm_head.weight is net.wte.weight) == tie
    assert generate(net, PROMPT, max_new_tokens=10) == generate(m.eval(), PROMPT, max_new_tokens=10)


def test_inference_checks_the_model_records_and_skips_the_optimizer_state(tmp_path):
    torch.manual_seed(0)
    m = GPT(ModelConfig(context_length=32, emb_dim=32, n_heads=2, n_layers=2, drop_rate=0.0))
    path = _training_checkpoint(tmp_path, m)
    with zipfile.ZipFile(path) as zf:
        model = checkpoint.model_records(zf)
        data = [n for n in zf.namelist() if "/data/" in n]
    assert model is not None and 0 < len(model & set(data)) < len(data) / 2  # AdamW's state is twice the weights
    optimizer_record = sorted(set(data) - model)[0]
    _flip_byte_of_record(path, optimizer_record)
    load_model_for_inference(path, None, device="cpu")  # the optimizer state is never read
    with pytest.raises(CheckpointError, match="CRC mismatch"):
        checkpoint.load_checkpoint(path)  # resume checks everything
    _flip_byte_of_record(path, optimizer_record)  # restored
    _flip_byte_of_record(path, sorted(model & set(data))[0])
    with pytest.raises(CheckpointError, match="CRC mismatch"):
        load_model_for_inference(path, None, device="cpu")


def test_124m_shape_loaded_fp32_keeps_greedy_tokens_and_packed_bf16_keeps_bits(tmp_path):
    """At the real 124M shape (random weights): the memory-mapped, no-init load of a training
    checkpoint decodes the same greedy tokens as the model it was saved from, and prepacked bf16
    computes the bits of plain bf16."""
    from gptcli.config import preset_values
    from gptcli.quantize import packing_supported

    torch.manual_seed(0)
    m = GPT(ModelConfig(**preset_values("gpt2-124M"), drop_rate=0.0)).eval()
    path = checkpoint.atomic_save(checkpoint.weights_checkpoint(m.cfg, m.state_dict()), tmp_path / "m.pth")
    loaded = load_model_for_inference(path, None, device="cpu").net
    prompt = torch.tensor([list(range(100, 116))])
    assert generate(loaded, prompt, max_new_tokens=20) == generate(m, prompt, max_new_tokens=20)
    del loaded
    if packing_supported():
        plain = copy.deepcopy(m).to(torch.bfloat16)
        packed = prepare_for_inference(m, dtype="bf16", device=CPU)
        with torch.no_grad():
            assert torch.equal(packed(prompt), plain(prompt))


# ---------------------------------------------------------------------------------------------
# 2 MB pages for the weights


@pytest.mark.parametrize("given,kept", [(None, "1"), ("0", "0")])
def test_the_executable_asks_torch_for_huge_pages_unless_told_not_to(monkeypatch, given, kept):
    from gptcli import cli

    if given is None:
        monkeypatch.delenv("THP_MEM_ALLOC_ENABLE", raising=False)
    else:
        monkeypatch.setenv("THP_MEM_ALLOC_ENABLE", given)
    monkeypatch.setattr(sys, "argv", ["gptcli", "--help"])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    assert exc.value.code == 0
    assert os.environ["THP_MEM_ALLOC_ENABLE"] == kept
