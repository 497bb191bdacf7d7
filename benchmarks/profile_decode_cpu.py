"""Where the time of one batch-1 decode step goes on CPU: a torch.profiler table.

Builds the GPT-2 124M shape (context 1024, tied head, qkv bias; transformers-style random init),
prepares it as ``gptcli sample --dtype DTYPE`` does, prefills a 16-token prompt and profiles
``--steps`` one-token steps of ``generate``'s own step function. Prints the operators by self CPU
time, the step time, and the bandwidth reached (bytes of weights streamed per token x tokens/s).

    python benchmarks/profile_decode_cpu.py                 # fp32, 20 steps
    python benchmarks/profile_decode_cpu.py --dtype bf16 --top 15
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import _common as C  # noqa: I001 (puts the checkout on sys.path)
import torch
from _peers_cpu import weight_bytes  # bytes of weights one decode step reads


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dtype", default="fp32", help="fp32, bf16 or int8, as gptcli sample --dtype")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--top", type=int, default=20)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument(
        "--products",
        action="store_true",
        help="also time the step's 49 weight products alone, back to back (what the kernels reach "
        "without the rest of the step), and for fp32 the same products through F.linear unsplit and numpy's BLAS",
    )
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from torch.profiler import ProfilerActivity, profile

    from gptcli.config import ModelConfig, preset_values
    from gptcli.inference import prepare_for_inference
    from gptcli.model import GPT, KVCache

    cfg = ModelConfig(**preset_values("gpt2-124M"), drop_rate=0.0)
    torch.manual_seed(0)
    net = prepare_for_inference(GPT(cfg), dtype=args.dtype, device=torch.device("cpu"))
    n = args.steps
    # generate()'s own cache and one-token step (a tensor prompt on CPU takes this path)
    cache = KVCache(cfg, 1, device="cpu", dtype=torch.float32)

    def steps(k: int, tok: torch.Tensor) -> torch.Tensor:
        for _ in range(k):
            tok = net(tok, cache)[:, -1, :].argmax(-1, keepdim=True)
        return tok

    with torch.no_grad():
        tok = net(torch.arange(100, 116).view(1, -1), cache)[:, -1, :].argmax(-1, keepdim=True)
        tok = steps(5, tok)  # warm-up
        t0 = time.perf_counter()
        tok = steps(n, tok)
        dt = (time.perf_counter() - t0) / n
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            steps(n, tok)
    wb = weight_bytes(net)
    print(
        f"machine: {C.cpu_name()}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"load {os.getloadavg()[0]:.2f}",
        file=sys.stderr,
    )
    print(
        f"--dtype {args.dtype}: {dt * 1e3:.1f} ms per step ({1 / dt:.1f} tokens/s), {wb / 1e6:.0f} MB of weights "
        f"per token, {wb / dt / 1e9:.1f} GB/s"
    )
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top))
    if args.products:
        products(net, dt, wb, fp32=args.dtype == "fp32")


def products(net: torch.nn.Module, step_s: float, wb: int, *, fp32: bool, rounds: int = 15) -> None:
    """The step's weight products alone, in the step's order, each on a one-row input: the
    fastest a step could be if nothing but its products ran (best of ``rounds``)."""
    import torch.nn.functional as F

    from gptcli.quantize import SplitLinear

    layers = [m for b in net.h for m in (b.attn.c_attn, b.attn.c_proj, b.mlp.c_fc, b.mlp.c_proj)] + [net.lm_head]
    dtype = next(net.parameters()).dtype
    xs = {w: torch.randn(1, 1, w, dtype=dtype) for w in {m.in_features for m in layers}}

    def best(f) -> float:
        f()
        times = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            f()
            times.append(time.perf_counter() - t0)
        return min(times)

    ways = {"as the step runs them": lambda: [m(xs[m.in_features]) for m in layers]}
    if fp32 and any(isinstance(m, SplitLinear) for m in layers):
        ways["F.linear, unsplit (MKL's own threading)"] = lambda: [
            F.linear(xs[m.in_features], m.weight, m.bias) for m in layers
        ]
    if fp32:  # another BLAS on the same column-major weights: numpy's (OpenBLAS in its wheels)
        wts = [m.weight.detach().t().numpy() for m in layers]  # (in, out) views, no copy
        xn = {w: x.view(-1).numpy() for w, x in xs.items()}
        ways["numpy matmul (its BLAS)"] = lambda: [xn[w.shape[0]] @ w for w in wts]
    print(f"\nthe step's {len(layers)} products alone, back to back (best of {rounds}):")
    with torch.no_grad():
        for name, f in ways.items():
            t = best(f)
            print(
                f"  {name}: {t * 1e3:.1f} ms ({wb / t / 1e9:.1f} GB/s, at most {1 / t:.1f} tokens/s); "
                f"the rest of the step {max(step_s - t, 0) * 1e3:.1f} ms"
            )


if __name__ == "__main__":
    main()
