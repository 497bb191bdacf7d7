"""Large-corpus data path: tokenization speed and peak memory, then training from the memmap.

A synthetic corpus (default 1 GB, ``--size-mb`` for less) is generated from the-verdict.txt with
variation: sentences recombined, names and numbers substituted, lines wrapped at 60-90 columns,
spread over several files. Each phase runs in a child process so that its peak RSS is its own:

1. reference: the in-memory path (``read_corpus`` + ``split_text`` + ``tokenize``, what gptcli
   does below 64 MiB) on the first ``--reference-mb`` of the corpus;
2. gptcli, the same subset, cold (``tokencache.cached_corpus_tokens``): the ratio to 1.;
3. gptcli, the whole corpus, cold: tokenization MB/s (input bytes / wall time, hashing included)
   and peak RSS; then again, warm (the cache is reused: only the input is hashed);
4. training a tiny model on the whole corpus through ``Trainer`` (``prepare_data`` picks the
   memmap path): a few steps and an evaluation, peak RSS;
5. the same corpus as ``.jsonl.gz`` (one record per chapter, ``{"text": ...}``), cold: the
   streaming path of ``gptcli.formats`` (decompress, parse, join by ``<|endoftext|>``, tokenize),
   its MB/s (of the text, so comparable to 3.) and peak RSS next to the ``.txt`` figure.

Targets (issue 4): >= 20 MB/s on 2 cores; peak RSS < 2 GB.

    python benchmarks/bench_corpus.py                 # 1 GB: ~3-6 minutes on 2 cores, 1.5 GB of disk
    python benchmarks/bench_corpus.py --size-mb 100   # quicker
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common as C

NAMES = [
    "Gisburn",
    "Stroud",
    "Rickham",
    "Grindle",
    "Jack",
    "Hermia",
    "Claude",
    "Maud",
    "Lydia",
    "Oswin",
    "Perrin",
    "Adela",
    "Tobias",
    "Mirren",
    "Calloway",
    "Ingram",
    "Sefton",
    "Blaise",
    "Orla",
    "Hatch",
]


def make_corpus(out_dir: Path, size_mb: float, *, n_files: int, seed: int = 0) -> list[Path]:
    """Write about ``size_mb`` MB of varied text built from the-verdict into ``n_files`` files."""
    rng = random.Random(seed)
    text = C.VERDICT.read_text(encoding="utf-8")
    sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+", text.replace("\n", " ")) if len(s.strip()) > 3]
    name_re = re.compile(r"\b(" + "|".join(NAMES[:7]) + r")\b")

    def paragraph() -> str:
        picked = rng.sample(sentences, rng.randint(2, 9))
        para = " ".join(picked)
        para = name_re.sub(lambda m: rng.choice(NAMES), para)
        if rng.random() < 0.3:
            para = para.replace(" the ", f" the {rng.randint(2, 1999)} ", 1)
        width = rng.randint(60, 90)  # wrapped like a printed book: many single newlines
        words, lines, line = para.split(" "), [], ""
        for w in words:
            if line and len(line) + 1 + len(w) > width:
                lines.append(line)
                line = w
            else:
                line = f"{line} {w}" if line else w
        lines.append(line)
        return "\n".join(lines)

    pool = [paragraph() for _ in range(3000)]
    out_dir.mkdir(parents=True, exist_ok=True)
    per_file = int(size_mb * 1e6 / n_files)
    files = []
    for i in range(n_files):
        path = out_dir / f"part-{i:03d}.txt"
        written = 0
        with open(path, "w", encoding="utf-8") as f:
            chapter = 1
            while written < per_file:
                block = "\n\n".join(rng.choices(pool, k=400))
                block = f"CHAPTER {chapter}\n\n{block}\n\n"
                chapter += 1
                f.write(block)
                written += len(block.encode("utf-8"))
        files.append(path)
    return files


def to_jsonl_gz(files: list[Path], out_dir: Path) -> list[Path]:
    """The corpus as gzip-compressed JSON Lines, one record per chapter, streamed file by file."""
    import gzip

    out_dir.mkdir(parents=True, exist_ok=True)
    out = []
    for path in files:
        dest = out_dir / (path.stem + ".jsonl.gz")
        with open(path, encoding="utf-8") as src, gzip.open(dest, "wt", encoding="utf-8", compresslevel=6) as f:
            chapter: list[str] = []
            for line in src:
                if line.startswith("CHAPTER ") and chapter:
                    f.write(json.dumps({"text": "".join(chapter)}) + "\n")
                    chapter = []
                chapter.append(line)
            if chapter:
                f.write(json.dumps({"text": "".join(chapter)}) + "\n")
        out.append(dest)
    return out


# ---------------------------------------------------------------------------------------------
# Phases (each runs in its own process: `--phase NAME`)


def phase_reference(files: list[str]) -> dict:
    from gptcli.data import split_text, tokenize
    from gptcli.textfiles import read_corpus

    t = time.perf_counter()
    train_text, val_text = split_text(read_corpus(files), 0.1)
    train, val = tokenize(train_text), tokenize(val_text)
    return {"seconds": time.perf_counter() - t, "tokens": len(train) + len(val)}


def phase_tokenize(files: list[str]) -> dict:
    from gptcli.tokencache import cached_corpus_tokens, default_threads

    t = time.perf_counter()
    ct = cached_corpus_tokens(files, val_ratio=0.1)
    return {
        "seconds": time.perf_counter() - t,
        "tokens": int(len(ct.tokens)),
        "built": ct.built,
        "threads": default_threads(),
        "cache_bytes": ct.path.stat().st_size,
    }


def phase_train(files: list[str], steps: int) -> dict:
    import torch

    from gptcli import tokencache
    from gptcli.config import ModelConfig, TrainConfig
    from gptcli.training import Interrupted, Trainer

    tokencache.MEMMAP_MIN_BYTES = 0  # the memmap path even for a small --size-mb
    mcfg = ModelConfig(context_length=64, emb_dim=64, n_heads=4, n_layers=2)
    tcfg = TrainConfig(data=files, epochs=1, batch_size=8, eval_freq=max(1, steps - 1), eval_iter=5, device="cpu")
    t0 = time.perf_counter()
    done = {"steps": 0}

    def stop_after():
        done["steps"] += 1
        return 2 if done["steps"] >= steps else None  # as if SIGINT: save and stop

    trainer = Trainer(mcfg, tcfg, Path(os.environ["BENCH_RUN_DIR"]), should_stop=stop_after)
    t_ready = time.perf_counter()
    mapped = isinstance(trainer.data.train.tokens, __import__("numpy").memmap)
    try:
        trainer.fit()
    except Interrupted:
        pass
    t_end = time.perf_counter()
    return {
        "setup_seconds": t_ready - t0,
        "train_seconds": t_end - t_ready,
        "steps": trainer.state.step,
        "memmap": mapped,
        "train_windows": len(trainer.data.train),
        "loss_history": trainer.state.history,
        "torch_threads": torch.get_num_threads(),
    }


def run_phase(name: str, files: list[Path], env: dict, *extra: str) -> dict:
    cmd = [sys.executable, __file__, "--phase", name, *extra, "--files", *[str(f) for f in files]]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"phase {name} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size-mb", type=float, default=1000.0, help="corpus size in MB (1e6 bytes)")
    ap.add_argument("--files", nargs="*", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--n-files", type=int, default=16)
    ap.add_argument("--reference-mb", type=float, default=64.0, help="subset for the in-memory comparison")
    ap.add_argument("--steps", type=int, default=20, help="training steps on the corpus")
    ap.add_argument("--workdir", default=None, help="where the corpus and cache go (default: a temporary dir)")
    ap.add_argument("--keep", action="store_true", help="keep the corpus and cache")
    ap.add_argument("--phase", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    if args.phase:  # child process: run one phase, print one JSON line
        fn = {
            "reference": lambda: phase_reference(args.files),
            "tokenize": lambda: phase_tokenize(args.files),
            "train": lambda: phase_train(args.files, args.steps),
        }[args.phase]
        res = fn()
        res["peak_rss_mb"] = C.peak_rss_mb()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        res["cpu_seconds"] = usage.ru_utime + usage.ru_stime  # all threads: the work, whatever the load
        print(json.dumps(res))
        return res

    machine = C.machine_info()
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="gptcli-corpus-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        t = time.perf_counter()
        files = make_corpus(
            work / "corpus", args.size_mb, n_files=max(1, min(args.n_files, int(args.size_mb // 8) or 1))
        )
        size = sum(f.stat().st_size for f in files)
        print(
            f"corpus: {size / 1e6:.0f} MB in {len(files)} files ({time.perf_counter() - t:.0f} s to write)",
            file=sys.stderr,
        )
        # the reference subset: whole files adding up to about --reference-mb
        subset, acc = [], 0
        for f in files:
            if acc >= args.reference_mb * 1e6 and subset:
                break
            subset.append(f)
            acc += f.stat().st_size
        sub_mb = acc / 1e6

        def env_with(home: Path) -> dict:
            return {
                **os.environ,
                "GPTCLI_HOME": str(home),
                "BENCH_RUN_DIR": str(work / "run"),
                "PYTHONPATH": os.pathsep.join([str(C.ROOT), os.environ.get("PYTHONPATH", "")]),
            }

        print(f"reference (in memory) on {sub_mb:.0f} MB ...", file=sys.stderr)
        ref = run_phase("reference", subset, env_with(work / "home-ref"))
        print(f"gptcli (token cache) on the same {sub_mb:.0f} MB ...", file=sys.stderr)
        sub = run_phase("tokenize", subset, env_with(work / "home-sub"))
        print(f"gptcli on {size / 1e6:.0f} MB, cold ...", file=sys.stderr)
        cold = run_phase("tokenize", files, env_with(work / "home"))
        print("... and warm", file=sys.stderr)
        warm = run_phase("tokenize", files, env_with(work / "home"))
        print(f"training {args.steps} steps of a tiny model from the memmap ...", file=sys.stderr)
        train = run_phase("train", files, env_with(work / "home"), "--steps", str(args.steps))
        t = time.perf_counter()
        gz_files = to_jsonl_gz(files, work / "jsonl")
        gz_size = sum(f.stat().st_size for f in gz_files)
        print(
            f"gptcli on the same corpus as .jsonl.gz ({gz_size / 1e6:.0f} MB compressed, "
            f"{time.perf_counter() - t:.0f} s to write), cold ...",
            file=sys.stderr,
        )
        gz = run_phase("tokenize", gz_files, env_with(work / "home-jsonl"))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    ref_mbs, sub_mbs, cold_mbs = sub_mb / ref["seconds"], sub_mb / sub["seconds"], size / 1e6 / cold["seconds"]
    assert ref["tokens"] == sub["tokens"], "the token cache and the in-memory path disagree on the token count"
    gz_mbs = size / 1e6 / gz["seconds"]  # MB of text per second, as the .txt figure
    peak = max(cold["peak_rss_mb"], warm["peak_rss_mb"], train["peak_rss_mb"], gz["peak_rss_mb"])
    rows = [
        [
            f"in-memory path (reference), {sub_mb:.0f} MB",
            f"{ref['seconds']:.1f}",
            f"{ref_mbs:.1f}",
            f"{ref['peak_rss_mb']:.0f}",
        ],
        [f"token cache, {sub_mb:.0f} MB, cold", f"{sub['seconds']:.1f}", f"{sub_mbs:.1f}", f"{sub['peak_rss_mb']:.0f}"],
        [
            f"token cache, {size / 1e6:.0f} MB, cold",
            f"{cold['seconds']:.1f}",
            f"{cold_mbs:.1f}",
            f"{cold['peak_rss_mb']:.0f}",
        ],
        [
            f"token cache, {size / 1e6:.0f} MB, warm (reused)",
            f"{warm['seconds']:.1f}",
            f"{size / 1e6 / warm['seconds']:.0f}",
            f"{warm['peak_rss_mb']:.0f}",
        ],
        [
            f"token cache, {size / 1e6:.0f} MB as .jsonl.gz ({gz_size / 1e6:.0f} MB), cold",
            f"{gz['seconds']:.1f}",
            f"{gz_mbs:.1f}",
            f"{gz['peak_rss_mb']:.0f}",
        ],
        [
            f"train {train['steps']} steps from the memmap",
            f"{train['setup_seconds'] + train['train_seconds']:.1f}",
            "-",
            f"{train['peak_rss_mb']:.0f}",
        ],
    ]
    print()
    C.print_table(rows, ["phase", "seconds", "MB/s", "peak RSS MB"])
    print()
    print(
        f"token cache vs in-memory path, same {sub_mb:.0f} MB: {sub_mbs / ref_mbs:.2f}x the speed, "
        f"{ref['peak_rss_mb'] / sub['peak_rss_mb']:.1f}x less memory"
    )
    # CPU time measures the work itself: on a loaded machine wall time also counts waiting for a
    # core. Chunks are independent, so on N idle cores tokenization takes about CPU time / N.
    per_cpu_s = size / 1e6 / cold["cpu_seconds"]
    print(
        f"tokenization used {cold['cpu_seconds']:.0f} CPU-seconds: {per_cpu_s:.1f} MB per CPU-second, "
        f"so about {per_cpu_s * cold['threads']:.0f} MB/s on {cold['threads']} idle cores"
    )
    print(
        f".jsonl.gz: {gz_mbs:.1f} MB/s of text ({gz_mbs / cold_mbs:.2f}x the .txt figure, {cold_mbs:.1f} MB/s), "
        f"peak RSS {gz['peak_rss_mb']:.0f} MB; {gz['tokens']:,} tokens"
    )
    print(
        f"tokenization {cold_mbs:.1f} MB/s (target 20): {C.verdict_met(cold_mbs, 20)}; "
        f"peak RSS {peak:.0f} MB (target < 2048): {'met' if peak < 2048 else 'MISSED'}"
    )
    result = {
        "benchmark": "corpus",
        "machine": machine,
        "corpus_bytes": size,
        "files": len(files),
        "reference_subset_mb": sub_mb,
        "reference_in_memory": ref,
        "token_cache_subset": sub,
        "token_cache_cold": cold,
        "token_cache_warm": warm,
        "train": train,
        "jsonl_gz_bytes": gz_size,
        "token_cache_jsonl_gz_cold": gz,
        "tokenize_jsonl_gz_mb_per_s": gz_mbs,
        "tokenize_mb_per_s": cold_mbs,
        "tokenize_mb_per_cpu_second": per_cpu_s,
        "speedup_vs_in_memory": sub_mbs / ref_mbs,
        "peak_rss_mb": peak,
        "targets": {
            "tokenization >= 20 MB/s": {"measured": cold_mbs, "target": 20.0, "met": cold_mbs >= 20.0},
            "peak RSS < 2048 MB": {"measured": peak, "target": 2048.0, "met": peak < 2048.0},
        },
    }
    C.write_result("corpus", result, args.out)
    return result


if __name__ == "__main__":
    main()
