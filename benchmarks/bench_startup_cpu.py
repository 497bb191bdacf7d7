"""From the command to the first token: ``gptcli sample`` on a 124M checkpoint, whole processes.

Writes (once, into ``--dir``) a GPT-2 124M training checkpoint (weights, AdamW state, progress: the
1.5 GB a training run saves) and a weights-only file of the same weights, then times
``gptcli sample FILE --max-new-tokens 1`` (greedy, the default fp32) as subprocesses: the time
from the command to its one token printed and the process gone. ``--before`` names another
gptcli executable (e.g. an older install) timed in the same rounds on the same files, so the two
share the machine's load; rounds alternate their order and the best of each is reported.

    python benchmarks/bench_startup_cpu.py --before /path/to/older/bin/gptcli
    python benchmarks/bench_startup_cpu.py --rounds 5 --dir /tmp/startup

Targets (issue 26): <= 1.5 s on a weights-only file, <= 2.5 s on a training checkpoint.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import _common as C  # noqa: I001 (puts the checkout on sys.path)

TARGETS = {"weights-only": 1.5, "training": 2.5}


def write_files(directory: Path) -> dict[str, Path]:
    """The two checkpoints of one random 124M model (written once, reused by later runs)."""
    import torch

    from gptcli.checkpoint import atomic_save, training_checkpoint, weights_checkpoint
    from gptcli.config import ModelConfig, preset_values
    from gptcli.model import GPT

    files = {"weights-only": directory / "gpt2-124M-weights.pth", "training": directory / "gpt2-124M-training.pth"}
    if all(p.exists() for p in files.values()):
        return files
    directory.mkdir(parents=True, exist_ok=True)
    cfg = ModelConfig(**preset_values("gpt2-124M"))
    torch.manual_seed(0)
    model = GPT(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()  # creates AdamW's exp_avg and exp_avg_sq, as a real run's checkpoint holds them
    state = model.state_dict()
    atomic_save(weights_checkpoint(cfg, state), files["weights-only"])
    progress = {"epoch": 0, "step": 1, "tokens_seen": 0}
    atomic_save(
        training_checkpoint(cfg, {}, state, optimizer_state=opt.state_dict(), progress=progress), files["training"]
    )
    return files


def time_sample(exe: str, flag: str, path: Path) -> tuple[float, float]:
    """Wall-clock seconds of one ``gptcli sample`` process, and the CPU seconds it used (user +
    system: on a machine other work keeps busy, the wall clock also counts the waits for a core)."""
    cmd = [exe, "sample", flag, str(path), "--max-new-tokens", "1", "--device", "cpu", "-q", "Hello"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "NO_COLOR": "1"})
    dt = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip()[-500:]}")
    return dt, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--after", default=str(Path(sys.executable).with_name("gptcli")), help="the gptcli measured")
    ap.add_argument("--before", default=None, help="another gptcli executable, timed in the same rounds")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dir", default="/tmp/gptcli-startup-bench", help="where the two checkpoints are written")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    files = write_files(Path(args.dir))
    exes = {"after": args.after, **({"before": args.before} if args.before else {})}
    # a weights-only file is a --model; a training checkpoint is a --checkpoint
    flags = {"weights-only": "--model", "training": "--checkpoint"}
    for exe in exes.values():  # warm the page cache and any bytecode caches
        for kind, path in files.items():
            time_sample(exe, flags[kind], path)
    times: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    for r in range(args.rounds):
        order = list(exes.items()) if r % 2 == 0 else list(exes.items())[::-1]
        for name, exe in order:
            for kind, path in files.items():
                dt, ct = time_sample(exe, flags[kind], path)
                times.setdefault(f"{name} {kind}", []).append(dt)
                cpu.setdefault(f"{name} {kind}", []).append(ct)
                print(f"  round {r + 1}: {name} {kind}: {dt:.2f} s ({ct:.2f} s CPU)", file=sys.stderr, flush=True)
    rows = []
    for kind in files:
        best = {name: min(times[f"{name} {kind}"]) for name in exes}
        best_cpu = {name: min(cpu[f"{name} {kind}"]) for name in exes}
        row = [kind, f"{best['after']:.2f}", f"{best_cpu['after']:.2f}"]
        if "before" in best:
            row += [
                f"{best['before']:.2f}",
                f"{best_cpu['before']:.2f}",
                f"{best_cpu['before'] / best_cpu['after']:.2f}x",
            ]
        row += [f"<= {TARGETS[kind]}", C.verdict_met(TARGETS[kind], best["after"])]
        rows.append(row)
    header = ["file", "after s", "after CPU s"]
    header += ["before s", "before CPU s", "CPU speed-up"] if args.before else []
    header += ["target s (wall)", ""]
    print(f"gptcli sample --max-new-tokens 1, 124M, best of {args.rounds}; load {os.getloadavg()[0]:.2f}")
    C.print_table(rows, header)
    result = {
        "benchmark": "startup_cpu",
        "machine": C.machine_info(),
        "files": {k: {"path": str(p), "bytes": p.stat().st_size} for k, p in files.items()},
        "times_s": times,
        "cpu_s": cpu,
    }
    C.write_result("startup_cpu", result, args.out)
    return result


if __name__ == "__main__":
    main()
