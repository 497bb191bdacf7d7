"""The GPU-oriented paths, checked on CPU against the plain ones: the chunked linear+cross-entropy,
activation checkpointing, the static KV cache's decode step (the code a CUDA graph captures, run
eagerly) and left-padded batched generation."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from gptcli.config import ModelConfig
from gptcli.fused_loss import chunked_linear_cross_entropy
from gptcli.generation import _generate_static, generate
from gptcli.model import GPT, StaticKVCache

from .conftest import ROOT, TINY_MODEL


def _model(seed: int = 0, **kw) -> GPT:
    torch.manual_seed(seed)
    return GPT(ModelConfig(**{**TINY_MODEL, **kw}))


def _grads(model: GPT) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters()}


# ---------------------------------------------------------------------------------------------
# fused (chunked) linear + cross-entropy


@pytest.mark.parametrize("chunk_rows", [1, 5, 7, 1000])
def test_chunked_cross_entropy_equals_plain_with_ignored_targets(chunk_rows):
    torch.manual_seed(0)
    x = torch.randn(23, 16, requires_grad=True)
    w = torch.randn(50, 16, requires_grad=True)
    t = torch.randint(0, 50, (23,))
    t[[0, 4, 5, 17]] = -100
    plain = F.cross_entropy(x @ w.t(), t)
    gx, gw = torch.autograd.grad(plain, (x, w))
    fused = chunked_linear_cross_entropy(x, w, t, chunk_rows=chunk_rows)
    fx, fw = torch.autograd.grad(fused * 1.0, (x, w), retain_graph=True)
    torch.testing.assert_close(fused, plain, rtol=0, atol=1e-5)
    torch.testing.assert_close(fx, gx, rtol=0, atol=1e-5)
    torch.testing.assert_close(fw, gw, rtol=0, atol=1e-5)
    # the incoming gradient scales both (a loss divided by accumulation steps)
    fx2, fw2 = torch.autograd.grad(fused * 0.25, (x, w))
    torch.testing.assert_close(fx2, gx * 0.25, rtol=0, atol=1e-6)
    torch.testing.assert_close(fw2, gw * 0.25, rtol=0, atol=1e-6)


@pytest.mark.parametrize("tie_weights", [False, True])
def test_model_fused_loss_equals_plain_loss_and_every_gradient(tie_weights):
    x = torch.randint(0, 50257, (3, 12))
    y = torch.randint(0, 50257, (3, 12))
    y[1, :5] = -100  # the instruction finetuning's masked prompt positions
    results = []
    for chunk in (None, 8):
        m = _model(1, drop_rate=0.0, tie_weights=tie_weights)
        m.fused_loss_chunk = chunk
        loss = m(x, targets=y)
        loss.backward()
        results.append((loss.detach(), _grads(m)))
    (plain, g_plain), (fused, g_fused) = results
    torch.testing.assert_close(fused, plain, rtol=0, atol=1e-5)
    assert g_plain.keys() == g_fused.keys()
    for name in g_plain:
        torch.testing.assert_close(g_fused[name], g_plain[name], rtol=0, atol=1e-5, msg=name)


def test_fused_loss_is_off_by_default_and_unused_without_targets():
    m = _model(drop_rate=0.0).eval()
    assert m.fused_loss_chunk is None and m.activation_checkpointing is False
    m.fused_loss_chunk = 4
    x = torch.randint(0, 50257, (2, 12))
    assert m(x).shape == (2, 12, 50257)


# ---------------------------------------------------------------------------------------------
# activation checkpointing


@pytest.mark.parametrize("drop_rate", [0.0, 0.1])
def test_activation_checkpointing_gives_identical_gradients(drop_rate):
    x = torch.randint(0, 50257, (2, 12))
    y = torch.randint(0, 50257, (2, 12))
    results = []
    for ckpt in (False, True):
        m = _model(2, drop_rate=drop_rate).train()
        m.activation_checkpointing = ckpt
        torch.manual_seed(7)  # the same dropout masks for both
        loss = m(x, targets=y)
        loss.backward()
        results.append((loss.detach(), _grads(m)))
    (plain, g_plain), (ckpt, g_ckpt) = results
    assert torch.equal(ckpt, plain)
    for name in g_plain:
        torch.testing.assert_close(g_ckpt[name], g_plain[name], rtol=0, atol=1e-6, msg=name)


def test_activation_checkpointing_really_recomputes():
    calls = []
    m = _model(drop_rate=0.0).train()
    m.h[0].mlp.register_forward_pre_hook(lambda *_: calls.append(1))
    x = torch.randint(0, 50257, (1, 12))
    m.activation_checkpointing = True
    m(x, targets=x).backward()
    assert len(calls) == 2  # once forward, once again in the backward pass


# ---------------------------------------------------------------------------------------------
# static KV cache and left-padded batches


@pytest.fixture(scope="module")
def model64():
    return _model(3, context_length=64, drop_rate=0.0).eval()


def test_static_decode_step_gives_the_dynamic_caches_tokens(model64):
    idx = torch.tensor([[6109, 3626, 6100, 345]])
    dynamic = generate(model64, idx, max_new_tokens=40)
    static = _generate_static(
        model64, idx.tolist(), max_new_tokens=40, device=torch.device("cpu"),
        temperature=0.0, top_k=None, top_p=None, eos_id=None, generator=None, on_token=None, capture=False,
    )  # fmt: skip
    assert len(static[0]) == 40
    assert static == dynamic


def test_static_cache_logits_match_the_uncached_model(model64):
    prompts = [[5, 6, 7, 8, 9], [11, 12]]
    with torch.no_grad():
        pad = torch.tensor([0, 3])
        cache = StaticKVCache(model64.cfg, pad, 5 + 3, dtype=torch.float32)
        cache.prefill(5)
        padded = torch.tensor([prompts[0], [0, 0, 0] + prompts[1]])
        got = model64(padded, cache)
        for row, p in enumerate(prompts):
            want = model64(torch.tensor([p]))
            torch.testing.assert_close(got[row, 5 - len(p) :], want[0], rtol=0, atol=1e-5)
        # one decode step per row at slot 5
        nxt = torch.tensor([[21], [22]])
        cache.decode(torch.tensor(5))
        step = model64(nxt, cache)[:, -1]
        for row, p in enumerate(prompts):
            want = model64(torch.tensor([p + [int(nxt[row])]]))[0, -1]
            torch.testing.assert_close(step[row], want, rtol=0, atol=1e-5)


def test_prompts_of_different_lengths_run_as_one_padded_batch(model64, monkeypatch):
    prompts = [[6109, 3626, 6100, 345], [40], [7, 8, 9, 10, 11, 12, 13], [40]]
    singles = [generate(model64, torch.tensor([p]), max_new_tokens=25)[0] for p in prompts]
    calls = []
    real = model64.forward
    monkeypatch.setattr(model64, "forward", lambda idx, *a, **k: (calls.append(idx.shape), real(idx, *a, **k))[1])
    batched = generate(model64, prompts, max_new_tokens=25)
    assert batched == singles
    assert calls[0] == (4, 7) and all(shape == (4, 1) for shape in calls[1:])  # one batch, prefill then steps


def test_a_row_at_eos_stops_while_the_others_go_on(model64):
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8]]
    free = [generate(model64, torch.tensor([p]), max_new_tokens=12)[0] for p in prompts]
    eos = free[0][3]
    got = generate(model64, prompts, max_new_tokens=12, eos_id=eos)
    assert got[0] == free[0][:3]
    cut = free[1].index(eos) if eos in free[1] else 12
    assert got[1] == free[1][:cut]


def test_padded_batch_that_would_overflow_the_context_runs_by_length(model64):
    prompts = [list(range(100, 160)), [40, 41]]  # 60 + 10 > 64: the sliding-window path
    singles = [generate(model64, torch.tensor([p]), max_new_tokens=10)[0] for p in prompts]
    assert generate(model64, prompts, max_new_tokens=10) == singles


def test_seeded_sampling_in_a_padded_batch_stays_in_each_rows_top_k(model64):
    torch.manual_seed(0)
    out = generate(model64, [[1, 2], [3, 4, 5]], max_new_tokens=8, temperature=1.0, top_k=1)
    greedy = [generate(model64, torch.tensor([p]), max_new_tokens=8)[0] for p in ([1, 2], [3, 4, 5])]
    assert out == greedy  # top-1 sampling is greedy, whatever the draws


# ---------------------------------------------------------------------------------------------
# the GPU benchmark script runs its CPU smoke mode


@pytest.mark.slow
def test_bench_sample_cuda_tiny_cpu_smoke(tmp_path):
    out = tmp_path / "s.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_sample_cuda.py"), "--device", "cpu", "--tiny", "--batches", "1",
         "--dtypes", "fp32", "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert out.exists()


# ---------------------------------------------------------------------------------------------
# FSDP2 with 2 gloo processes on CPU


@pytest.mark.slow
def test_fsdp2_with_two_gloo_processes_equals_one_process(tmp_path):
    import os
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "fsdp.pt"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
        f"--master_port={port}", str(ROOT / "tests" / "fsdp_worker.py"), str(out),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    got = torch.load(out, weights_only=True)
    ref = got["ref5"]
    assert got["after5"].keys() == ref.keys()
    for name, value in got["after5"].items():
        assert not hasattr(value, "device_mesh")  # plain tensors: an ordinary gptcli state dict
        torch.testing.assert_close(value, ref[name], rtol=0, atol=1e-5, msg=name)
