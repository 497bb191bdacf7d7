"""Two GPU measurements for issue 16: where one 124M training step spends its time, and the
largest micro-batch of the 1558M shape with and without activation checkpointing.

* ``--profile``: one 124M step (context 1024, batch 16, bf16 autocast, fused AdamW, the loss inside
  the model; compiled unless ``--no-compile``) under ``torch.profiler`` after warm-up steps; the
  top kernels by device time go to a text table and to the JSON.
* ``--max-batch``: the 1558M shape (random weights, context 1024, bf16 autocast, fused AdamW), the
  micro-batch doubled from 1 until a step runs out of memory, for each of: plain, activation
  checkpointing, and both with the chunked (fused) loss; then tokens/s at the largest that fits.

    python benchmarks/bench_memory_cuda.py --profile --max-batch      # on a GPU
    python benchmarks/bench_memory_cuda.py --device cpu --tiny --profile --max-batch   # smoke test
"""

from __future__ import annotations

import argparse
import sys
import time

import _common as C  # noqa: I001 (puts the checkout on sys.path)
import torch


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true", help="a 2-layer model, batches up to 4 (a smoke test)")
    p.add_argument("--profile", action="store_true")
    p.add_argument("--max-batch", action="store_true")
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--batch-limit", type=int, default=256)
    p.add_argument("--out", default=None)
    return p.parse_args(argv)


def build(shape: str, tiny: bool, dev: torch.device, *, ckpt: bool = False, fused_loss: int | None = None):
    from gptcli.config import ModelConfig, preset_values
    from gptcli.model import GPT

    if tiny:
        cfg = ModelConfig(context_length=32, emb_dim=32, n_heads=4, n_layers=2, drop_rate=0.0)
    else:
        cfg = ModelConfig(**{**preset_values(shape), "drop_rate": 0.0})
    with torch.device(dev):  # random weights drawn on the device: seconds, not minutes, for 1558M
        model = GPT(cfg).train()
    model.activation_checkpointing = ckpt
    model.fused_loss_chunk = fused_loss
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=dev.type in ("cpu", "cuda"))
    return cfg, model, opt


def make_step(model, opt, dev, *, compile_: bool):
    from gptcli.device import autocast_for

    net = torch.compile(model) if compile_ else model

    def step(x, y):
        with autocast_for(dev, "bf16"):
            loss = net(x, targets=y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    return step


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def profile(args, dev) -> dict:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as tprofile

    cfg, model, opt = build("gpt2-124M", args.tiny, dev)
    B = 2 if args.tiny else 16
    step = make_step(model, opt, dev, compile_=not args.no_compile and dev.type == "cuda")
    x = torch.randint(0, cfg.vocab_size, (B, cfg.context_length), device=dev)
    for _ in range(3):
        step(x, x)
    sync(dev)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with tprofile(activities=acts) as prof:
        step(x, x)
        sync(dev)
    key = "cuda_time_total" if dev.type == "cuda" else "cpu_time_total"
    table = prof.key_averages().table(sort_by=key, row_limit=args.top)
    print(table)
    top = []
    for e in sorted(
        prof.key_averages(), key=lambda e: getattr(e, "device_time_total", 0) or e.cpu_time_total, reverse=True
    )[: args.top]:
        top.append(
            {
                "name": e.key,
                "count": e.count,
                "device_time_total_us": getattr(e, "device_time_total", None),
                "cpu_time_total_us": e.cpu_time_total,
            }
        )
    return {
        "shape": "tiny" if args.tiny else "gpt2-124M",
        "batch": B,
        "context": cfg.context_length,
        "top": top,
        "table": table,
    }


def max_batch(args, dev) -> dict:
    results = []
    cfg, model, opt = build("gpt2-1558M", args.tiny, dev)  # one model; the levers are attributes
    step = make_step(model, opt, dev, compile_=False)
    for ckpt, fused in [(False, None), (True, None), (False, 8192), (True, 8192)]:
        label = f"checkpointing={'on' if ckpt else 'off'} fused_loss={'on' if fused else 'off'}"
        model.activation_checkpointing, model.fused_loss_chunk = ckpt, fused
        best, best_tps = 0, None
        B = 1
        while B <= (4 if args.tiny else args.batch_limit):
            x = torch.randint(0, cfg.vocab_size, (B, cfg.context_length), device=dev)
            oom = False
            try:
                step(x, x)
                sync(dev)
                t0 = time.perf_counter()
                n = 2 if args.tiny else 3
                for _ in range(n):
                    step(x, x)
                sync(dev)
                tps = n * B * cfg.context_length / (time.perf_counter() - t0)
            except torch.OutOfMemoryError:
                oom = True
            if oom:  # outside the except block, so its traceback no longer holds the step's tensors
                opt.zero_grad(set_to_none=True)
                del x
                torch.cuda.empty_cache()
                print(f"  {label} batch {B}: out of memory", file=sys.stderr, flush=True)
                break
            peak = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None
            print(f"  {label} batch {B}: {tps:.0f} tokens/s, peak {peak} GiB", file=sys.stderr, flush=True)
            best, best_tps = B, tps
            results.append(
                {"checkpointing": ckpt, "fused_loss": bool(fused), "batch": B, "tokens_per_s": tps, "peak_gib": peak}
            )
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats(dev)
            B *= 2
        results.append(
            {"checkpointing": ckpt, "fused_loss": bool(fused), "largest_batch": best, "tokens_per_s": best_tps}
        )
    return {"shape": "tiny" if args.tiny else "gpt2-1558M", "context": 32 if args.tiny else 1024, "runs": results}


def main(argv=None) -> dict:
    args = parse_args(argv)
    dev = torch.device(args.device)
    result: dict = {"benchmark": "memory_cuda", "machine": {**C.machine_info(), "device": str(dev)}}
    if args.profile:
        result["profile_124m_step"] = profile(args, dev)
    if args.max_batch:
        result["max_batch_1558m"] = max_batch(args, dev)
    C.write_result("memory_cuda_tiny" if args.tiny else "memory_cuda", result, args.out)
    return result


if __name__ == "__main__":
    main()
