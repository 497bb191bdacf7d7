"""Generation speed on one GPU: gptcli vs transformers' ``generate`` and the book's ``generate``.

All models hold the same random weights (gptcli's ``GPT`` built with a seed; the Hugging Face
``GPT2LMHeadModel`` gets them copied in; the book's ``GPTModel`` is drawn with the same seed:
the same weights for an untied head, else only the same shape and speed). For each shape (124M and 1558M, OpenAI's: context 1024,
qkv bias, tied head), batch size (1 and 16) and dtype (fp32 and bf16): a 16-token prompt and 200
new greedy tokens, timed in the same process, the variants taking turns.

* gptcli: ``gptcli.generation.generate``, what ``gptcli sample`` calls; on CUDA it prefills, then
  replays one captured CUDA graph per token over a static KV cache.
* hf: ``GPT2LMHeadModel.generate(do_sample=False)`` with its default (dynamic) cache, and with
  ``cache_implementation="static"`` when the installed transformers has it.
* book: ``llms_from_scratch.ch05.generate`` (no KV cache), batch 1 only (its EOS and top-k
  handling assume one row), skipped for 1558M unless ``--book-1558m`` (minutes per run).

Reports tokens/s (new tokens × batch / seconds) and each one's ratio to transformers' dynamic
cache at the same point, and whether gptcli's fp32 greedy tokens equal transformers'. Issue 16
targets: batch 1 ≥ 5×, batch 16 ≥ 1.5× transformers' dynamic-cache generate.

    python benchmarks/bench_sample_cuda.py                    # on a GPU, a few minutes
    python benchmarks/bench_sample_cuda.py --device cpu --tiny   # seconds: checks that it runs
"""

# ruff: noqa: B023  (the timed closures run within the loop iteration that defines them)
from __future__ import annotations

import argparse
import copy
import sys
import time

import _common as C  # noqa: I001 (puts the checkout on sys.path)
import torch

PROMPT_TOKENS = 16


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true", help="a 2-layer model and 8 new tokens (a smoke test)")
    p.add_argument("--shapes", default="gpt2-124M,gpt2-1558M")
    p.add_argument("--batches", default="1,16")
    p.add_argument("--dtypes", default="fp32,bf16")
    p.add_argument("--new-tokens", type=int, default=200)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--no-hf", action="store_true")
    p.add_argument("--no-book", action="store_true")
    p.add_argument("--book-1558m", action="store_true")
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/sample_cuda.json)")
    return p.parse_args(argv)


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def book_model(cfg):
    """The book's GPTModel of the same shape, drawn with the same seed as gptcli's: the same
    weights when the head is untied (the book never ties it), else the same shape only."""
    from llms_from_scratch import ch04

    torch.manual_seed(123)
    return ch04.GPTModel(
        {
            "vocab_size": cfg.vocab_size,
            "context_length": cfg.context_length,
            "emb_dim": cfg.emb_dim,
            "n_heads": cfg.n_heads,
            "n_layers": cfg.n_layers,
            "drop_rate": 0.0,
            "qkv_bias": cfg.qkv_bias,
        }
    ).eval()


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    from bench_sample_cpu import hf_from_gptcli
    from llms_from_scratch import ch05

    from gptcli.config import ModelConfig, preset_values
    from gptcli.generation import generate
    from gptcli.inference import prepare_for_inference
    from gptcli.model import GPT

    dev = torch.device(args.device)
    n = 8 if args.tiny else args.new_tokens
    shapes = ["tiny"] if args.tiny else args.shapes.split(",")
    batches = [int(b) for b in args.batches.split(",")]
    dtypes = args.dtypes.split(",")
    reps = 1 if args.tiny else args.reps
    static_ok = None
    points, rows = [], []
    for shape in shapes:
        if shape == "tiny":
            cfg = ModelConfig(context_length=64, emb_dim=32, n_heads=4, n_layers=2, drop_rate=0.0, qkv_bias=True)
        else:
            cfg = ModelConfig(**{**preset_values(shape), "drop_rate": 0.0})
        torch.manual_seed(123)
        base = GPT(cfg).eval()
        hf32 = None if args.no_hf else hf_from_gptcli(base, cfg)
        book32 = None
        if not args.no_book and (shape != "gpt2-1558M" or args.book_1558m):
            book32 = book_model(cfg)
        for dtype in dtypes:
            ours = prepare_for_inference(copy.deepcopy(base), dtype=dtype, device=dev)
            tdt = torch.bfloat16 if dtype == "bf16" else torch.float32
            hf = None if hf32 is None else copy.deepcopy(hf32).to(dev, tdt)
            book = None if book32 is None else copy.deepcopy(book32).to(dev, tdt)
            for B in batches:
                g = torch.Generator().manual_seed(B)
                idx = torch.randint(0, cfg.vocab_size, (B, PROMPT_TOKENS), generator=g).to(dev)
                outputs: dict[str, list[list[int]]] = {}

                def timed(name, fn):
                    def f():
                        sync(dev)
                        outputs[name] = fn()
                        sync(dev)

                    return f

                variants = {"gptcli": timed("gptcli", lambda: generate(ours, idx, max_new_tokens=n))}
                if hf is not None:

                    def run_hf(**kw):
                        with torch.no_grad():
                            out = hf.generate(
                                idx, attention_mask=torch.ones_like(idx), max_new_tokens=n, min_new_tokens=n,
                                do_sample=False, **kw,
                            )  # fmt: skip
                        return out[:, idx.shape[1] :].tolist()

                    variants["hf dynamic"] = timed("hf dynamic", run_hf)
                    if static_ok is not False:
                        try:
                            run_hf(cache_implementation="static")
                            static_ok = True
                            variants["hf static"] = timed("hf static", lambda: run_hf(cache_implementation="static"))
                        except Exception as e:  # an older transformers, or one without it for GPT-2
                            static_ok = False
                            print(f"  hf static cache unavailable: {type(e).__name__}: {e}", file=sys.stderr)
                if book is not None and B == 1:

                    def run_book():
                        with torch.no_grad():
                            out = ch05.generate(book, idx, max_new_tokens=n, context_size=cfg.context_length)
                        return out[:, idx.shape[1] :].tolist()

                    variants["book"] = timed("book", run_book)
                print(f"{shape} {dtype} batch {B}: {n} new tokens", file=sys.stderr, flush=True)
                t0 = time.perf_counter()
                times = C.interleaved(variants, reps=reps, only_first={"book": 1})
                point = {
                    "shape": shape,
                    "dtype": dtype,
                    "batch": B,
                    "new_tokens": n,
                    "prompt_tokens": PROMPT_TOKENS,
                    "times": C.summarize(times),
                    "tokens_per_s": {k: n * B / C.median(v) for k, v in times.items()},
                    "wall_s": time.perf_counter() - t0,
                }
                if "hf dynamic" in times:
                    point["ratio_to_hf_dynamic"] = {
                        k: C.median(times["hf dynamic"]) / C.median(v) for k, v in times.items()
                    }
                    point["tokens_equal_hf"] = outputs["gptcli"] == outputs["hf dynamic"]
                if "book" in outputs and not cfg.tie_weights:
                    point["tokens_equal_book"] = outputs["gptcli"][0] == outputs["book"][0]
                points.append(point)
                for k, tps in point["tokens_per_s"].items():
                    ratio = point.get("ratio_to_hf_dynamic", {}).get(k)
                    rows.append([shape, dtype, B, k, f"{tps:.0f}", "-" if ratio is None else f"{ratio:.2f}x"])
            ours = hf = book = None  # free the device memory before the next dtype
            if dev.type == "cuda":
                torch.cuda.empty_cache()
    C.print_table(rows, ["shape", "dtype", "batch", "variant", "tokens/s", "vs hf dynamic"])
    targets = {}
    for p in points:
        if p["dtype"] == "fp32" and "ratio_to_hf_dynamic" in p and not args.tiny:
            need = 5.0 if p["batch"] == 1 else 1.5
            got = p["ratio_to_hf_dynamic"]["gptcli"]
            targets[f"{p['shape']} batch {p['batch']} fp32 >= {need}x hf"] = {
                "ratio": got, "verdict": C.verdict_met(got, need), "tokens_equal_hf": p["tokens_equal_hf"],
            }  # fmt: skip
    result = {
        "benchmark": "sample_cuda",
        "machine": {**C.machine_info(), "device": str(dev)},
        "hf_static_cache": static_ok,
        "points": points,
        "targets": targets,
    }
    if dev.type == "cuda":
        result["machine"]["max_memory_allocated_gb"] = torch.cuda.max_memory_allocated(dev) / 2**30
    C.write_result("sample_cuda_tiny" if args.tiny else "sample_cuda", result, args.out)
    return result


if __name__ == "__main__":
    main()
