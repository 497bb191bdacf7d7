"""Training throughput and MFU on one GPU: gptcli's model and step vs a nanoGPT-style reference.

Both train the GPT-2 124M shape (12 layers, 12 heads, 768 wide, tied head, biases, vocabulary
padded to 50304, dropout 0 as nanoGPT pretrains) at context 1024, batch 32, on random tokens, with
bf16 autocast, ``torch.compile``, fused AdamW and flash attention (``scaled_dot_product_attention``
with ``is_causal``). A step is forward, backward and the optimizer update.

* gptcli: ``gptcli.model.GPT`` with the calls ``gptcli train`` makes on CUDA: ``make_optimizer``
  (fused AdamW), ``autocast_for(device, "bf16")``, ``batch_loss`` (the loss computed inside the
  model, so inside the compiled graph), ``torch.compile``.
* reference: a nanoGPT-style model written out below (nanoGPT's ``model.py``: its init, exact
  GELU, its loss on all positions).

MFU counts 6·N + 12·L·H·Q·T FLOPs per token (N: parameters without the position embedding; PaLM's
and nanoGPT's count) against a bf16 matmul peak measured here (8192³ products). Needs only torch
(gptcli from this checkout is put on ``sys.path``). About 2-3 minutes on an H100, most of it compiling.

    python benchmarks/bench_train_cuda.py             # on a GPU
    python benchmarks/bench_train_cuda.py --smoke     # a few tiny steps on CPU: checks it runs
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


# ---------------------------------------------------------------------------------------------
# The reference: nanoGPT's model.py, condensed (same modules, init and forward)


@dataclass
class RefConfig:
    block_size: int = 1024
    vocab_size: int = 50304
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True


class RefAttention(nn.Module):
    def __init__(self, c: RefConfig):
        super().__init__()
        self.c_attn = nn.Linear(c.n_embd, 3 * c.n_embd, bias=c.bias)
        self.c_proj = nn.Linear(c.n_embd, c.n_embd, bias=c.bias)
        self.resid_dropout = nn.Dropout(c.dropout)
        self.n_head, self.n_embd, self.dropout = c.n_head, c.n_embd, c.dropout

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0, is_causal=True)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class RefMLP(nn.Module):
    def __init__(self, c: RefConfig):
        super().__init__()
        self.c_fc = nn.Linear(c.n_embd, 4 * c.n_embd, bias=c.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * c.n_embd, c.n_embd, bias=c.bias)
        self.dropout = nn.Dropout(c.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class RefBlock(nn.Module):
    def __init__(self, c: RefConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(c.n_embd, bias=c.bias)
        self.attn = RefAttention(c)
        self.ln_2 = nn.LayerNorm(c.n_embd, bias=c.bias)
        self.mlp = RefMLP(c)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class RefGPT(nn.Module):
    def __init__(self, c: RefConfig):
        super().__init__()
        self.config = c
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(c.vocab_size, c.n_embd),
                wpe=nn.Embedding(c.block_size, c.n_embd),
                drop=nn.Dropout(c.dropout),
                h=nn.ModuleList([RefBlock(c) for _ in range(c.n_layer)]),
                ln_f=nn.LayerNorm(c.n_embd, bias=c.bias),
            )
        )
        self.lm_head = nn.Linear(c.n_embd, c.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying
        self.apply(self._init_weights)
        for pn, p in self.named_parameters():
            if pn.endswith("c_proj.weight"):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * c.n_layer))

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx, targets):
        b, t = idx.size()
        pos = torch.arange(0, t, dtype=torch.long, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for block in self.transformer.h:
            x = block(x)
        x = self.transformer.ln_f(x)
        logits = self.lm_head(x)
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type):
        params = [p for p in self.parameters() if p.requires_grad]
        decay = [p for p in params if p.dim() >= 2]
        nodecay = [p for p in params if p.dim() < 2]
        groups = [{"params": decay, "weight_decay": weight_decay}, {"params": nodecay, "weight_decay": 0.0}]
        fused = "fused" in inspect.signature(torch.optim.AdamW).parameters and device_type in ("cuda", "cpu")
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=fused)


# ---------------------------------------------------------------------------------------------
# Measuring


def flops_per_token(n_params_non_embedding: int, n_layers: int, n_heads: int, head_dim: int, context: int) -> float:
    return 6 * n_params_non_embedding + 12 * n_layers * n_heads * head_dim * context


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device, n: int, iters: int) -> float:
    """Measured dense bf16 matmul FLOP/s on n×n×n products."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync(device)
    t = time.perf_counter()
    for _ in range(iters):
        a @ b
    sync(device)
    return 2 * n**3 * iters / (time.perf_counter() - t)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--context", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=10, help="timed steps per round and model")
    ap.add_argument("--rounds", type=int, default=3, help="rounds; the models take turns within each")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation happens here)")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--compile", action="store_true", help="compile in --smoke mode too")
    ap.add_argument("--smoke", action="store_true", help="tiny shape on CPU, a few steps, no compile: checks it runs")
    ap.add_argument("--device", default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    if args.smoke:
        device = torch.device(args.device or "cpu")
        shape = dict(n_layers=2, n_heads=2, emb_dim=32, context=16, vocab=256)
        args.batch, args.steps, args.rounds, args.warmup = 2, 2, 2, 1
        peak_n, peak_iters = 256, 3
        compile_ = args.compile
        torch.set_num_threads(1)  # tiny ops: threads only add synchronisation (and stalls on a busy machine)
    else:
        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if device.type != "cuda":
            ap.error("no CUDA device: this benchmark is for a GPU (use --smoke to check it runs on CPU)")
        shape = dict(n_layers=12, n_heads=12, emb_dim=768, context=args.context, vocab=50257)
        peak_n, peak_iters = 8192, 20
        compile_ = not args.no_compile
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    from gptcli.config import ModelConfig
    from gptcli.device import autocast_for
    from gptcli.model import GPT
    from gptcli.training import batch_loss, make_optimizer

    B, T = args.batch, shape["context"]
    L, H, Cdim = shape["n_layers"], shape["n_heads"], shape["emb_dim"]
    info = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "smoke": args.smoke,
    }
    print(f"device: {info['device']}, torch {torch.__version__}", file=sys.stderr)
    peak = matmul_peak(device, peak_n, peak_iters)
    print(f"measured bf16 matmul peak ({peak_n}^3): {peak / 1e12:.1f} TFLOP/s", file=sys.stderr)

    g = torch.Generator(device="cpu").manual_seed(0)
    V = shape["vocab"]
    x = torch.randint(0, V, (B, T), generator=g).to(device)
    y = torch.randint(0, V, (B, T), generator=g).to(device)

    # gptcli: the 124M preset's architecture (tied head, biases), dropout 0 like the reference.
    from gptcli.config import TrainConfig

    mcfg = ModelConfig(
        vocab_size=V,
        context_length=T,
        emb_dim=Cdim,
        n_heads=H,
        n_layers=L,
        drop_rate=0.0,
        qkv_bias=True,
        tie_weights=True,
    )
    tcfg = TrainConfig(lr=6e-4, weight_decay=0.1, precision="bf16", device=device.type)
    runners = {}
    peaks_mem = {}

    def setup_gptcli():
        torch.manual_seed(0)
        model = GPT(mcfg).to(device)
        opt = make_optimizer(model, tcfg, device)
        net = torch.compile(model) if compile_ else model

        def step():
            opt.zero_grad(set_to_none=True)
            with autocast_for(device, "bf16"):
                loss = batch_loss(net, x, y)
            loss.backward()
            opt.step()
            return loss

        n_non_emb = mcfg.num_params(non_embedding=True)
        return step, n_non_emb

    def setup_ref():
        torch.manual_seed(0)
        rc = RefConfig(block_size=T, vocab_size=mcfg.padded_vocab_size, n_layer=L, n_head=H, n_embd=Cdim)
        model = RefGPT(rc).to(device)
        opt = model.configure_optimizers(0.1, 6e-4, (0.9, 0.95), device.type)
        net = torch.compile(model) if compile_ else model

        def step():
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
                loss = net(x, y)
            loss.backward()
            opt.step()
            return loss

        n_non_emb = sum(p.numel() for p in model.parameters()) - model.transformer.wpe.weight.numel()
        return step, n_non_emb

    n_params = {}
    for name, setup in (("gptcli", setup_gptcli), ("nanoGPT-style reference", setup_ref)):
        if device.type == "cuda":
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        step, n_params[name] = setup()
        for _ in range(args.warmup):
            loss = step()
        sync(device)
        print(
            f"{name}: warm-up ({args.warmup} steps{', compiling' if compile_ else ''}) {time.perf_counter() - t0:.1f} s, "
            f"loss {loss.item():.3f}",
            file=sys.stderr,
        )
        if device.type == "cuda":
            peaks_mem[name] = (torch.cuda.max_memory_allocated(device) - base) / 2**30
        runners[name] = step

    times: dict[str, list[float]] = {n: [] for n in runners}
    names = list(runners)
    for r in range(args.rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            step = runners[name]
            sync(device)
            t = time.perf_counter()
            for _ in range(args.steps):
                loss = step()
            sync(device)
            times[name].append((time.perf_counter() - t) / args.steps)
            print(f"  round {r + 1} {name}: {times[name][-1] * 1e3:.1f} ms/step", file=sys.stderr)

    fpt = flops_per_token(mcfg.num_params(non_embedding=True), L, H, Cdim // H, T)
    results = {}
    for name, ts in times.items():
        med = sorted(ts)[len(ts) // 2]
        tps = B * T / med
        results[name] = {
            "ms_per_step": med * 1e3,
            "tokens_per_s": tps,
            "mfu": fpt * tps / peak,
            "peak_memory_gib": peaks_mem.get(name),
            "params_non_embedding": n_params[name],
            "rounds_ms": [t * 1e3 for t in ts],
        }
    ratio = results["gptcli"]["tokens_per_s"] / results["nanoGPT-style reference"]["tokens_per_s"]

    print()
    print(
        f"| code | batch | context | tokens/s | MFU | peak memory | ({info['device']}, bf16 peak {peak / 1e12:.0f} TFLOP/s) |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, r in results.items():
        mem = f"{r['peak_memory_gib']:.1f} GiB" if r["peak_memory_gib"] is not None else "-"
        print(f"| {name} | {B} | {T} | {r['tokens_per_s']:,.0f} | {100 * r['mfu']:.1f}% | {mem} | |")
    print(f"\ngptcli / reference tokens/s: {ratio:.3f}x  (FLOPs per token: {fpt / 1e6:.1f} M)")
    result = {
        "benchmark": "train_cuda",
        "machine": info,
        "shape": {
            "batch": B,
            "context": T,
            "n_layers": L,
            "n_heads": H,
            "emb_dim": Cdim,
            "compile": compile_,
            "precision": "bf16 autocast",
            "optimizer": "fused AdamW",
        },
        "matmul_peak_flops": peak,
        "flops_per_token": fpt,
        "results": results,
        "ratio_gptcli_vs_reference": ratio,
    }
    out = (
        Path(args.out)
        if args.out
        else ROOT / "benchmarks" / "results" / ("train_cuda_smoke.json" if args.smoke else "train_cuda.json")
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}", file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
