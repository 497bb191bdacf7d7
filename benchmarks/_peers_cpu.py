"""The llama.cpp comparison of benchmarks/bench_sample_cpu.py: GPT-2 124M at batch 1 on CPU.

gptcli (``--dtype fp32``, ``bf16``, ``int8``, each prepared as ``gptcli sample`` prepares it) and
llama.cpp through ``llama-cpp-python`` (f32 and q8_0 GGUF files of the same weights, written by
gptcli's own GGUF export) generate the same greedy tokens from the same prompt, in one process,
taking turns; each reports tokens/s (best of the rounds), its ratio to its llama.cpp peer measured
in the same rounds, and the memory bandwidth it reached: the bytes of weights one token streams
(every matrix and vector but the two embeddings, whose one row per token is negligible; a tied
head is read whole) times tokens/s.
"""

from __future__ import annotations

import copy
import os
import sys
import time
from pathlib import Path

import _common as C  # noqa: I001 (puts the checkout on sys.path)
import torch

PROMPT_TOKENS = 16
TARGETS = {  # issue 26: (subject, its llama.cpp peer, the ratio to reach)
    "gptcli fp32 >= 0.8x llama.cpp f32": ("gptcli fp32", "llama.cpp f32", 0.8),
    "gptcli bf16 >= 1.0x llama.cpp f32": ("gptcli bf16", "llama.cpp f32", 1.0),
    "gptcli int8 >= 0.8x llama.cpp q8_0": ("gptcli int8", "llama.cpp q8_0", 0.8),
}


def weight_bytes(net: torch.nn.Module) -> int:
    """Bytes of weights one decode step of a gptcli model reads (see the module's docstring)."""
    skip = {id(t) for m in net.modules() if isinstance(m, torch.nn.Embedding) for t in m.parameters()}
    head = getattr(getattr(net, "lm_head", None), "weight", None)
    if head is not None:
        skip.discard(id(head))
    seen, total = set(), 0
    packed = [m.packed for m in net.modules() if isinstance(getattr(m, "packed", None), torch.Tensor)]  # bf16
    for t in list(net.parameters()) + list(net.buffers()) + packed:
        if id(t) not in seen and id(t) not in skip:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total


def gguf_weight_bytes(path: Path, tied: bool) -> int:
    """The same count for a GGUF file: every tensor but the position embedding, and the token
    embedding only when it is also the head (tied)."""
    from gguf import GGUFReader

    total = 0
    for t in GGUFReader(str(path)).tensors:
        if t.name == "position_embd.weight" or (t.name == "token_embd.weight" and not tied):
            continue
        total += int(t.n_bytes)
    return total


def llama_cpp_missing() -> str | None:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return "llama-cpp-python is not installed (pip install llama-cpp-python; it compiles llama.cpp)"
    try:
        import gguf  # noqa: F401
    except ImportError:
        return "the gguf package is not installed (pip install 'gptcli[export]')"
    return None


def write_ggufs(cfg, state, directory: Path) -> dict[str, Path]:
    from gptcli.weights.gguf import export_gguf

    directory.mkdir(parents=True, exist_ok=True)
    out = {}
    for outtype in ("f32", "q8_0"):
        out[outtype] = export_gguf(cfg, state, directory / f"gpt2-124M-random-{outtype}.gguf", outtype=outtype)
    return out


def prepared(base: torch.nn.Module, dtype: str) -> torch.nn.Module:
    """``base`` as ``gptcli sample --dtype dtype`` prepares it; ``fp32-unsplit`` is fp32 with each
    product on MKL's own threading (plain ``F.linear`` on the column-major weights, as before
    SplitLinear), to measure that lever in the same run."""
    from gptcli.inference import prepare_for_inference
    from gptcli.quantize import SplitLinear

    net = prepare_for_inference(copy.deepcopy(base), dtype=dtype.removesuffix("-unsplit"), device=torch.device("cpu"))
    if dtype.endswith("-unsplit"):
        for m in net.modules():
            if isinstance(m, SplitLinear):
                m.__class__ = torch.nn.Linear  # the same Parameters, F.linear's forward
    return net


def run(args) -> dict:
    from gptcli.config import ModelConfig, preset_values
    from gptcli.generation import generate
    from gptcli.model import GPT

    cfg = ModelConfig(**preset_values("gpt2-124M"), drop_rate=0.0)  # tied, context 1024, qkv bias
    torch.manual_seed(0)
    base = GPT(cfg).eval()  # transformers' GPT-2 init (gptcli's for a tied model)
    prompt = [(1000 + 37 * i) % cfg.vocab_size for i in range(PROMPT_TOKENS)]
    idx = torch.tensor([prompt])
    n = args.new_tokens
    models = {f"gptcli {d}": prepared(base, d) for d in args.dtypes}
    nbytes = {k: weight_bytes(m) for k, m in models.items()}
    outputs: dict[str, list[int]] = {}
    variants = {}
    for name, m in models.items():

        def f(m=m, name=name):
            outputs[name] = generate(m, idx, max_new_tokens=n)[0]

        variants[name] = f
    skipped = llama_cpp_missing()
    if skipped is None:
        from llama_cpp import Llama

        files = write_ggufs(cfg, base.state_dict(), Path(args.gguf_dir))
        threads = torch.get_num_threads()
        for outtype, path in files.items():
            name = f"llama.cpp {outtype}"
            llm = Llama(
                model_path=str(path),
                n_ctx=PROMPT_TOKENS + n + 8,
                n_batch=64,
                n_threads=threads,
                n_threads_batch=threads,
                verbose=False,
            )
            nbytes[name] = gguf_weight_bytes(path, cfg.tie_weights)

            def g(llm=llm, name=name):
                toks = []
                for t in llm.generate(prompt, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, reset=True):
                    toks.append(t)
                    if len(toks) == n:
                        break
                outputs[name] = toks

            variants[name] = g
    else:
        print(f"llama.cpp peer skipped: {skipped}", file=sys.stderr)
    del base
    print(
        f"GPT-2 124M (tied, context 1024), {PROMPT_TOKENS}-token prompt, {n} greedy tokens, batch 1, "
        f"{torch.get_num_threads()} threads; load {os.getloadavg()[0]:.2f}",
        file=sys.stderr,
    )
    times = C.interleaved(variants, reps=args.peer_reps, warmup=1)
    best = {k: min(v) for k, v in times.items()}
    rows = []
    for k, t in best.items():
        tps = n / t
        rows.append([k, f"{tps:.1f}", f"{nbytes[k] / 1e6:.0f}", f"{nbytes[k] * tps / 1e9:.1f}"])
    ratios, targets = {}, {}
    for label, (subject, peer, goal) in TARGETS.items():
        if subject in times and peer in times:
            # the best round of each, and the median of the per-round ratios (same load in a round)
            ratios[f"{subject} vs {peer}"] = best[peer] / best[subject]
            targets[label] = (C.paired_ratio(times, peer, subject), best[peer] / best[subject], goal)
    for subject, before in (("gptcli fp32", "gptcli fp32-unsplit"),):  # a lever, on and off in one run
        if subject in times and before in times:
            ratios[f"{subject} vs {before}"] = best[before] / best[subject]
    print()
    C.print_table(rows, ["variant", "tokens/s (best)", "MB/token", "GB/s"])
    for k, v in ratios.items():
        if "unsplit" in k:
            print(f"{k}: {v:.2f}x (median of rounds {C.paired_ratio(times, *reversed(k.split(' vs '))):.2f}x)")
    if targets:
        print()
        C.print_table(
            [[k, f"{p:.2f}x", f"{b:.2f}x", f"{g:g}x", C.verdict_met(b, g)] for k, (p, b, g) in targets.items()],
            ["target", "median of rounds", "best vs best", "target", ""],
        )
    agreement, dlogit = {}, {}
    ref = outputs.get("gptcli fp32")
    if ref is not None:
        for k, toks in outputs.items():
            if k != "gptcli fp32":
                agreement[f"{k} = gptcli fp32 (leading greedy tokens)"] = _agree(toks, ref)
        # the largest |logit difference| from fp32 at any position of fp32's own greedy text
        seq = torch.tensor([prompt + ref])
        with torch.no_grad():
            want = models["gptcli fp32"](seq).float()
            for k, m in models.items():
                if k != "gptcli fp32":
                    dlogit[k] = (m(seq).float() - want).abs().max().item()
        print()
        for k, v in agreement.items():
            print(f"{k}: {v} of {n}")
        for k, v in dlogit.items():
            print(
                f"{k}: max |logit - fp32's| {v:.4f} over {seq.shape[1]} positions (fp32's logits span "
                f"{want.min().item():.2f} to {want.max().item():.2f})"
            )
    return {
        "shape": {
            "model": "GPT-2 124M, context 1024, tied, qkv bias",
            "prompt_tokens": PROMPT_TOKENS,
            "new_tokens": n,
            "batch": 1,
        },
        "skipped": skipped,
        "times_s": times,
        "tokens_per_s_best": {k: n / t for k, t in best.items()},
        "weight_bytes_per_token": nbytes,
        "gb_per_s": {k: nbytes[k] * n / t / 1e9 for k, t in best.items()},
        "ratios": ratios,
        "targets": {
            k: {"median_ratio": p, "best_ratio": b, "target": g, "met": b >= g} for k, (p, b, g) in targets.items()
        },
        "greedy_agreement": agreement,
        "max_abs_dlogit_vs_fp32": dlogit,
        "loadavg": os.getloadavg()[0],
        "elapsed_s": time.perf_counter(),
    }


def _agree(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n
