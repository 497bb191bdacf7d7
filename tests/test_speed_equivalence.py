"""Speed paths compute what the plain paths compute: sampling dtypes and layouts, the benchmarks run."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest
import torch

from gptcli.config import ModelConfig
from gptcli.device import native_bf16, resolve_dtype
from gptcli.generation import generate
from gptcli.inference import prepare_for_inference
from gptcli.model import GPT

from .conftest import ROOT

CPU = torch.device("cpu")
PROMPT = torch.tensor([[6109, 3626, 6100, 345]])


def seeded_model(seed: int, **overrides) -> GPT:
    torch.manual_seed(seed)
    return GPT(
        ModelConfig(**{"context_length": 64, "emb_dim": 64, "n_heads": 4, "n_layers": 2, "drop_rate": 0.0, **overrides})
    ).eval()


@pytest.mark.parametrize("tie", [False, True])
def test_fp32_inference_layout_keeps_values_and_greedy_tokens(tie):
    m = seeded_model(0, tie_weights=tie)
    fast = prepare_for_inference(copy.deepcopy(m), dtype="fp32", device=CPU)
    assert not fast.lm_head.weight.is_contiguous()  # column-major: the batch-1 fast path
    for (name, a), b in zip(m.state_dict().items(), fast.state_dict().values()):
        assert torch.equal(a, b), name
    if tie:
        assert fast.lm_head.weight is fast.wte.weight
    x = torch.randint(0, 50257, (2, 20))
    with torch.no_grad():
        assert torch.allclose(m(x), fast(x), atol=1e-5, rtol=0)
    assert generate(fast, PROMPT, max_new_tokens=40) == generate(m, PROMPT, max_new_tokens=40)


@pytest.mark.parametrize("seed", range(4))
def test_bf16_greedy_agrees_with_fp32_on_the_first_tokens(seed):
    """bf16 weights round every matmul, so greedy decoding drifts from fp32 sooner or later (on
    these tiny seeded models after 24 to 40+ tokens); the first tokens must agree."""
    m = seeded_model(seed)
    fp32 = generate(prepare_for_inference(copy.deepcopy(m), dtype="fp32", device=CPU), PROMPT, max_new_tokens=12)[0]
    bf16_model = prepare_for_inference(copy.deepcopy(m), dtype="bf16", device=CPU)
    assert bf16_model.lm_head.weight.dtype == torch.bfloat16
    bf16 = generate(bf16_model, PROMPT, max_new_tokens=12)[0]
    assert bf16[:10] == fp32[:10]


def test_bf16_kv_cache_matches_uncached_bf16_on_the_first_tokens():
    m = prepare_for_inference(seeded_model(1), dtype="bf16", device=CPU)
    cached = generate(m, PROMPT, max_new_tokens=10)[0]
    uncached = generate(m, PROMPT, max_new_tokens=10, use_cache=False)[0]
    assert cached[:8] == uncached[:8]


def test_auto_dtype_is_bf16_only_where_bf16_is_native():
    assert resolve_dtype("fp32", CPU) == torch.float32
    assert resolve_dtype("bf16", CPU) == torch.bfloat16
    assert resolve_dtype("auto", CPU) == (torch.bfloat16 if native_bf16(CPU) else torch.float32)
    assert resolve_dtype("auto", torch.device("mps")) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.float32  # not measured on GPUs yet


def test_cuda_benchmark_smoke_runs_on_cpu(tmp_path):
    out = tmp_path / "cuda.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_train_cuda.py"), "--smoke", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert set(res["results"]) == {"gptcli", "nanoGPT-style reference"}
    for r in res["results"].values():
        assert r["tokens_per_s"] > 0 and 0 < r["mfu"]
    assert res["ratio_gptcli_vs_reference"] > 0
    assert "| gptcli |" in proc.stdout


@pytest.mark.slow
def test_corpus_benchmark_runs_on_a_small_corpus(tmp_path):
    out = tmp_path / "corpus.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "bench_corpus.py"),
            "--size-mb",
            "1",
            "--n-files",
            "2",
            "--reference-mb",
            "0.5",
            "--steps",
            "2",
            "--workdir",
            str(tmp_path / "w"),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["train"]["memmap"] and res["train"]["steps"] == 2
    assert res["token_cache_cold"]["built"] and not res["token_cache_warm"]["built"]
    assert res["reference_in_memory"]["tokens"] == res["token_cache_subset"]["tokens"]
    assert not (tmp_path / "w").exists()  # cleaned up
