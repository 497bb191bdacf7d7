"""Greedy generation speed on CPU: gptcli vs the book's ``generate`` and Hugging Face ``generate``.

All three models hold the same weights: gptcli's ``GPT`` and the book's ``GPTModel`` built with the
same seed draw identical weights, and the Hugging Face ``GPT2LMHeadModel`` gets them copied in (its
qkv bias zeroed, its head untied). The shape is the book's chapter-5 124M training shape (context
256, no qkv bias, untied head); a 4-token prompt plus 200 new tokens fits the context, batch 1.

* book: ``llms_from_scratch.ch05.generate`` (no KV cache: every step re-runs the whole sequence).
* hf: ``GPT2LMHeadModel.generate(do_sample=False)`` with its KV cache.
* gptcli: ``gptcli.generation.generate``, the function ``gptcli sample`` calls, on a model cast
  the way ``gptcli sample --dtype`` casts it.

A second part (issue 26, ``benchmarks/_peers_cpu.py``) runs GPT-2 124M (tied, context 1024)
against llama.cpp in the same process: gptcli ``--dtype fp32``, ``bf16`` and ``int8`` against
``llama-cpp-python`` on f32 and q8_0 GGUF files of the same weights, with tokens/s, ratios and the
memory bandwidth each reached. Without llama-cpp-python it says so and times gptcli alone.
Targets: fp32 >= 0.8x llama.cpp f32, bf16 >= 1.0x llama.cpp f32, int8 >= 0.8x llama.cpp q8_0.

Targets (issue 4): gptcli ``--dtype fp32`` (the default) >= 5x the book's generate and no slower
than transformers fp32; gptcli ``--dtype bf16`` >= 10x the book's generate (fp32). Each target's
label names the dtype of both sides. Also reports how many leading greedy tokens bf16 shares with
fp32.

    python benchmarks/bench_sample_cpu.py               # ~3 minutes on 2 quiet cores
    python benchmarks/bench_sample_cpu.py --book-bf16   # also the book's generate on bf16 weights (+1 minute)
    python benchmarks/bench_sample_cpu.py --quick       # 2 repetitions instead of 3
    python benchmarks/bench_sample_cpu.py --peers-only  # only the llama.cpp comparison (~2 minutes)
"""

from __future__ import annotations

import argparse
import copy
import sys

import _common as C  # noqa: I001 (puts the checkout on sys.path)
import _peers_cpu
import torch

PROMPT = "Every effort moves you"


def hf_from_gptcli(model, cfg):
    """A transformers GPT2LMHeadModel holding the same weights as a gptcli GPT."""
    from transformers import GPT2Config, GPT2LMHeadModel

    hc = GPT2Config(
        vocab_size=cfg.vocab_size,
        n_positions=cfg.context_length,
        n_embd=cfg.emb_dim,
        n_layer=cfg.n_layers,
        n_head=cfg.n_heads,
        activation_function="gelu_new",
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        layer_norm_epsilon=1e-5,
        tie_word_embeddings=False,
        eos_token_id=None,
        bos_token_id=None,
    )
    hf = GPT2LMHeadModel(hc).eval()
    V, sd = cfg.vocab_size, model.state_dict()
    new = {
        "transformer.wte.weight": sd["wte.weight"][:V],
        "transformer.wpe.weight": sd["wpe.weight"],
        "transformer.ln_f.weight": sd["ln_f.weight"],
        "transformer.ln_f.bias": sd["ln_f.bias"],
        "lm_head.weight": sd["lm_head.weight"][:V],
    }
    for i in range(cfg.n_layers):
        p, q = f"h.{i}.", f"transformer.h.{i}."
        for ln in ("ln_1", "ln_2"):
            new[q + ln + ".weight"], new[q + ln + ".bias"] = sd[p + ln + ".weight"], sd[p + ln + ".bias"]
        for name in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"):  # Conv1D stores (in, out)
            w = sd[p + name + ".weight"]
            new[q + name + ".weight"] = w.t().contiguous()
            b = sd.get(p + name + ".bias")
            new[q + name + ".bias"] = b if b is not None else torch.zeros(w.shape[0])
    missing, unexpected = hf.load_state_dict(new, strict=False)
    assert not unexpected and all(".attn.bias" in m or "masked_bias" in m for m in missing), (missing, unexpected)
    hf.generation_config.eos_token_id = None
    hf.generation_config.pad_token_id = 0
    return hf


def agree(a: list[int], b: list[int]) -> int:
    """Number of leading tokens two greedy continuations share."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--new-tokens", type=int, default=200)
    ap.add_argument("--reps", type=int, default=3, help="repetitions of the cached variants")
    ap.add_argument("--book-reps", type=int, default=1, help="repetitions of the book's (slow) generate")
    ap.add_argument("--book-bf16", action="store_true", help="also time the book's generate with bf16 weights")
    ap.add_argument("--no-hf", action="store_true", help="skip transformers")
    ap.add_argument("--quick", action="store_true", help="--reps 2")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu", help="cpu (the benchmark's subject) or cuda")
    ap.add_argument("--out", default=None)
    ap.add_argument("--peers-only", action="store_true", help="only the llama.cpp comparison (GPT-2 124M)")
    ap.add_argument("--no-peers", action="store_true", help="skip the llama.cpp comparison")
    ap.add_argument("--peer-reps", type=int, default=3, help="rounds of the llama.cpp comparison (best is kept)")
    ap.add_argument("--dtypes", default="fp32,bf16,int8", help="gptcli dtypes in the llama.cpp comparison")
    ap.add_argument("--gguf-dir", default="/tmp/gptcli-bench-gguf", help="where the GGUF files are written")
    args = ap.parse_args(argv)
    args.dtypes = [d for d in args.dtypes.split(",") if d]
    if args.quick:
        args.reps = 2
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.peers_only:
        result = {"benchmark": "sample_cpu_peers", "machine": C.machine_info(), "peers": _peers_cpu.run(args)}
        C.write_result("sample_cpu_peers", result, args.out)
        return result

    from llms_from_scratch import ch04, ch05

    from gptcli.config import ModelConfig
    from gptcli.device import native_bf16
    from gptcli.generation import generate
    from gptcli.inference import prepare_for_inference
    from gptcli.model import GPT
    from gptcli.tokenizer import encode

    dev = torch.device(args.device)
    cfg = ModelConfig(drop_rate=0.0)  # the book's 124M training shape, context 256
    torch.manual_seed(123)
    base = GPT(cfg).eval()
    torch.manual_seed(123)
    book = ch04.GPTModel(
        {
            "vocab_size": cfg.vocab_size,
            "context_length": cfg.context_length,
            "emb_dim": cfg.emb_dim,
            "n_heads": cfg.n_heads,
            "n_layers": cfg.n_layers,
            "drop_rate": 0.0,
            "qkv_bias": False,
        }
    )
    book = book.to(dev).eval()
    machine = {**C.machine_info(), "device": str(dev), "native_bf16": native_bf16(dev)}
    # Cast and laid out exactly as `gptcli sample --dtype fp32|bf16` does.
    ours = prepare_for_inference(copy.deepcopy(base), dtype="fp32", device=dev)
    ours_bf16 = prepare_for_inference(copy.deepcopy(base), dtype="bf16", device=dev)
    idx = torch.tensor([encode(PROMPT)], device=dev)
    n = args.new_tokens
    assert idx.shape[1] + n <= cfg.context_length, "prompt + new tokens must fit the context"
    outputs: dict[str, list[int]] = {}

    def run_ours(m, name):
        def f():
            outputs[name] = generate(m, idx, max_new_tokens=n)[0]

        return f

    def run_book(m, name):
        def f():
            with torch.no_grad():
                out = ch05.generate(m, idx, max_new_tokens=n, context_size=cfg.context_length)
            outputs[name] = out[0, idx.shape[1] :].tolist()

        return f

    def run_hf(m, name):
        def f():
            with torch.no_grad():
                out = m.generate(idx, attention_mask=torch.ones_like(idx), max_new_tokens=n, do_sample=False)
            outputs[name] = out[0, idx.shape[1] :].tolist()

        return f

    variants = {"gptcli fp32": run_ours(ours, "gptcli fp32"), "gptcli bf16": run_ours(ours_bf16, "gptcli bf16")}
    if not args.no_hf:
        hf = hf_from_gptcli(base, cfg).to(dev)
        hf_bf16 = copy.deepcopy(hf).to(torch.bfloat16)
        variants["hf fp32"] = run_hf(hf, "hf fp32")
        variants["hf bf16"] = run_hf(hf_bf16, "hf bf16")
    del base
    variants["book fp32"] = run_book(book, "book fp32")
    only_first = {"book fp32": args.book_reps}
    if args.book_bf16:
        variants["book bf16"] = run_book(copy.deepcopy(book).to(torch.bfloat16), "book bf16")
        only_first["book bf16"] = args.book_reps
    print(f"greedy generation of {n} tokens, 124M shape (context {cfg.context_length}), batch 1", file=sys.stderr)
    # The book's generate is its own warm-up (200 full forward passes); the others get one run.
    times = C.interleaved(variants, reps=args.reps, warmup=1, only_first=only_first, no_warmup=set(only_first))
    summary = C.summarize(times)
    for s in summary.values():
        s["tokens_per_s"] = n / s["median_s"]

    book_t = summary["book fp32"]["median_s"]
    ratios = {f"{k} vs book fp32": book_t / v["median_s"] for k, v in summary.items() if k != "book fp32"}
    if "hf fp32" in summary:
        # Paired: each repetition's two runs were back to back, so their ratio shares the load.
        ratios["gptcli fp32 vs hf fp32"] = C.paired_ratio(times, "hf fp32", "gptcli fp32")
        ratios["gptcli bf16 vs hf bf16"] = C.paired_ratio(times, "hf bf16", "gptcli bf16")
    ratios["gptcli bf16 vs gptcli fp32"] = C.paired_ratio(times, "gptcli fp32", "gptcli bf16")
    agreement = {
        "gptcli fp32 = book fp32 (leading tokens)": agree(outputs["gptcli fp32"], outputs["book fp32"]),
        "gptcli bf16 = gptcli fp32 (leading tokens)": agree(outputs["gptcli bf16"], outputs["gptcli fp32"]),
    }
    if "hf fp32" in outputs:
        agreement["hf fp32 = gptcli fp32 (leading tokens)"] = agree(outputs["hf fp32"], outputs["gptcli fp32"])
        agreement["hf bf16 = hf fp32 (leading tokens)"] = agree(outputs["hf bf16"], outputs["hf fp32"])
    targets = {
        "gptcli --dtype fp32 (default) >= 5x book generate fp32": (ratios["gptcli fp32 vs book fp32"], 5.0),
        "gptcli --dtype bf16 >= 10x book generate fp32": (ratios["gptcli bf16 vs book fp32"], 10.0),
    }
    if "hf fp32" in summary:
        targets["gptcli --dtype fp32 (default) >= transformers fp32"] = (ratios["gptcli fp32 vs hf fp32"], 1.0)

    rows = [
        [k, f"{v['median_s']:.2f}", f"{v['tokens_per_s']:.1f}", f"{book_t / v['median_s']:.1f}x", str(len(v["runs"]))]
        for k, v in summary.items()
    ]
    print()
    C.print_table(rows, ["variant", "median s", "tokens/s", "vs book fp32", "runs"])
    print()
    C.print_table(
        [[k, f"{v:.2f}x", f"{t:g}x", C.verdict_met(v, t)] for k, (v, t) in targets.items()],
        ["target", "measured", "target", ""],
    )
    print()
    for k, v in agreement.items():
        print(f"{k}: {v} of {n}")
    result = {
        "benchmark": "sample_cpu",
        "shape": {
            "model": "124M, context 256, untied, no qkv bias",
            "prompt_tokens": idx.shape[1],
            "new_tokens": n,
            "batch": 1,
        },
        "machine": machine,
        "results": summary,
        "ratios": ratios,
        "targets": {k: {"measured": v, "target": t, "met": v >= t} for k, (v, t) in targets.items()},
        "greedy_agreement": agreement,
    }
    if not args.no_peers and dev.type == "cpu":
        print()
        result["peers"] = _peers_cpu.run(args)
    C.write_result("sample_cpu" if dev.type == "cpu" else f"sample_{dev.type}", result, args.out)
    return result


if __name__ == "__main__":
    main()
