"""One CPU training step at the book's chapter-5 configuration: gptcli vs the book's code.

The shape is the book's: the 124M dimensions with an untied head (163M parameters), context 256,
batch 2, dropout 0.1, AdamW lr 4e-4 and weight decay 0.1. A step is zero_grad, forward, loss,
backward and the AdamW update, on the same two windows of the-verdict.txt for every variant.

* book: ``llms_from_scratch.ch04.GPTModel`` (and ``GPTModelFast``, its SDPA variant) trained the
  way ``ch05.train_model_simple`` does, with the default ``torch.optim.AdamW``;
* gptcli: ``Trainer._train_step``, the step ``gptcli train`` runs (fused AdamW; ``--precision
  bf16`` autocast for the bf16 rows).

"bf16" rows run the forward pass under ``torch.autocast("cpu", torch.bfloat16)``; weights and
optimizer stay fp32. Targets (issue 4): gptcli fp32 >= 1.15x the book's GPTModel fp32; gptcli
bf16 >= 2.0x the book's GPTModel fp32. ``--compile`` also times ``gptcli train --compile``.

    python benchmarks/bench_train_cpu.py              # ~3-4 minutes on 2 cores
    python benchmarks/bench_train_cpu.py --compile    # + torch.compile (minutes more to compile)
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time

import _common as C  # noqa: I001 (puts the checkout on sys.path)
import torch


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--compile", action="store_true", help="also time gptcli with torch.compile")
    ap.add_argument("--no-fast", action="store_true", help="skip the book's GPTModelFast")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from llms_from_scratch import ch04, ch05

    from gptcli.config import ModelConfig, TrainConfig
    from gptcli.training import Trainer

    machine = C.machine_info()
    mcfg = ModelConfig()  # the book's GPT_CONFIG_124M: context 256, dropout 0.1, no qkv bias, untied
    tcfg = TrainConfig(data=[str(C.VERDICT)], device="cpu", compile=False)  # batch 2, lr 4e-4, wd 0.1
    book_cfg = {
        "vocab_size": mcfg.vocab_size,
        "context_length": mcfg.context_length,
        "emb_dim": mcfg.emb_dim,
        "n_heads": mcfg.n_heads,
        "n_layers": mcfg.n_layers,
        "drop_rate": mcfg.drop_rate,
        "qkv_bias": mcfg.qkv_bias,
    }
    run_dir = tempfile.mkdtemp(prefix="gptcli-bench-")
    trainer = Trainer(mcfg, tcfg, run_dir)
    trainer.model.train()
    ids = [0, 1]
    x, y = trainer.data.train.batch(ids)  # the same two windows for every variant
    bf16 = torch.autocast("cpu", dtype=torch.bfloat16)

    def book_step(model, opt, autocast):
        def step():
            opt.zero_grad()
            if autocast:
                with bf16:
                    loss = ch05.calc_loss_batch(x, y, model, "cpu")
            else:
                loss = ch05.calc_loss_batch(x, y, model, "cpu")
            loss.backward()
            opt.step()

        return step

    def gptcli_step(tr, precision):
        cfg = dataclasses.replace(tr.cfg, precision=precision)

        def step():
            tr.cfg = cfg
            tr._train_step(ids)
            tr.state.step += 1

        return step

    variants = {}
    torch.manual_seed(123)
    book = ch04.GPTModel(book_cfg).train()
    book_opt = torch.optim.AdamW(book.parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    variants["book GPTModel fp32"] = book_step(book, book_opt, False)
    variants["book GPTModel bf16"] = book_step(book, book_opt, True)
    if not args.no_fast:
        torch.manual_seed(123)
        fast = ch04.GPTModelFast(book_cfg).train()
        fast_opt = torch.optim.AdamW(fast.parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay)
        variants["book GPTModelFast fp32"] = book_step(fast, fast_opt, False)
        variants["book GPTModelFast bf16"] = book_step(fast, fast_opt, True)
    variants["gptcli fp32"] = gptcli_step(trainer, "fp32")
    variants["gptcli bf16"] = gptcli_step(trainer, "bf16")
    compile_s = {}
    if args.compile:
        ctrainer = Trainer(mcfg, dataclasses.replace(tcfg, compile=True), tempfile.mkdtemp(prefix="gptcli-bench-"))
        ctrainer.model.train()
        for precision in ("fp32", "bf16"):
            name = f"gptcli {precision} compiled"
            variants[name] = gptcli_step(ctrainer, precision)
            t = time.perf_counter()
            variants[name]()  # compiles (fp32 and bf16 autocast compile separately)
            compile_s[name] = time.perf_counter() - t
            print(f"  {name}: first step (compiling) {compile_s[name]:.1f} s", file=sys.stderr)

    print(f"one training step, 124M untied, context {mcfg.context_length}, batch {tcfg.batch_size}", file=sys.stderr)
    times = C.interleaved(variants, reps=args.reps, warmup=1)
    summary = C.summarize(times)
    ref = summary["book GPTModel fp32"]["median_s"]
    for s in summary.values():
        s["speedup_vs_book_fp32"] = ref / s["median_s"]
    targets = {
        "gptcli --precision fp32 (default) >= 1.15x book GPTModel fp32": (
            summary["gptcli fp32"]["speedup_vs_book_fp32"],
            1.15,
        ),
        "gptcli --precision bf16 >= 2.0x book GPTModel fp32": (summary["gptcli bf16"]["speedup_vs_book_fp32"], 2.0),
    }
    print()
    C.print_table(
        [
            [k, f"{v['median_s']:.2f}", f"{v['speedup_vs_book_fp32']:.2f}x", str(len(v["runs"]))]
            for k, v in summary.items()
        ],
        ["variant", "median s/step", "vs book fp32", "runs"],
    )
    print()
    C.print_table(
        [[k, f"{v:.2f}x", f"{t:g}x", C.verdict_met(v, t)] for k, (v, t) in targets.items()],
        ["target", "measured", "target", ""],
    )
    if args.compile:
        for p in ("fp32", "bf16"):
            e, c = summary[f"gptcli {p}"]["median_s"], summary[f"gptcli {p} compiled"]["median_s"]
            print(
                f"torch.compile, {p}: {e / c:.2f}x the eager step (first step {compile_s[f'gptcli {p} compiled']:.0f} s)"
            )
    result = {
        "benchmark": "train_cpu",
        "shape": {
            "model": "124M untied (163M parameters)",
            "context": mcfg.context_length,
            "batch": tcfg.batch_size,
            "dropout": mcfg.drop_rate,
        },
        "machine": machine,
        "results": summary,
        "compile_first_step_s": compile_s,
        "targets": {k: {"measured": v, "target": t, "met": v >= t} for k, (v, t) in targets.items()},
    }
    C.write_result("train_cpu", result, args.out)
    return result


if __name__ == "__main__":
    main()
