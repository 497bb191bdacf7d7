"""Run the CPU benchmarks (training step, sampling, large corpus) and summarise them against the
targets of issue 4. Each benchmark runs in its own process and writes benchmarks/results/*.json.

    python benchmarks/run_cpu.py            # all three: ~10-15 minutes on 2 quiet cores
    python benchmarks/run_cpu.py --quick    # fewer repetitions, a 200 MB corpus
    python benchmarks/run_cpu.py --only sample

The CUDA benchmark (bench_train_cuda.py) needs a GPU and is run separately.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import _common as C

BENCHES = {
    "train": ("bench_train_cpu.py", "train_cpu.json"),
    "sample": ("bench_sample_cpu.py", "sample_cpu.json"),
    "corpus": ("bench_corpus.py", "corpus.json"),
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", nargs="*", choices=list(BENCHES), default=list(BENCHES))
    ap.add_argument("--quick", action="store_true", help="2 repetitions each, a 200 MB corpus")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile in the training benchmark")
    args = ap.parse_args(argv)

    extra = {
        "train": ["--reps", "2"] if args.quick else [],
        "sample": ["--reps", "2"] if args.quick else [],
        "corpus": ["--size-mb", "200"] if args.quick else [],
    }
    if args.compile:
        extra["train"].append("--compile")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(C.ROOT), os.environ.get("PYTHONPATH", "")])}
    failed = []
    for name in args.only:
        script, _ = BENCHES[name]
        print(f"=== {script} {' '.join(extra[name])}", flush=True)
        t = time.perf_counter()
        rc = subprocess.call([sys.executable, str(C.ROOT / "benchmarks" / script), *extra[name]], env=env)
        print(f"=== {script}: exit {rc}, {time.perf_counter() - t:.0f} s\n", flush=True)
        if rc:
            failed.append(name)

    rows = []
    for name in args.only:
        path = C.RESULTS / BENCHES[name][1]
        if name in failed or not path.exists():
            rows.append([name, "(no result)", "", "", ""])
            continue
        res = json.loads(path.read_text())
        load = res.get("machine", {})
        when = f"load {load.get('loadavg_start', float('nan')):.1f}->{load.get('loadavg_end', float('nan')):.1f}"
        for target, t in res["targets"].items():
            measured = t["measured"]
            value = f"{measured:.0f} MB" if "RSS" in target else f"{measured:.2f}"
            rows.append([name, target, value, "met" if t["met"] else "MISSED", when])
    info = C.machine_info()
    print(f"Summary ({info['cpu']}, {info['cores']} cores, torch {info['torch']}):\n")
    C.print_table(rows, ["benchmark", "target", "measured", "", "load avg"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
