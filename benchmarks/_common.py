"""Helpers shared by the benchmark scripts: interleaved timing, machine facts, JSON results.

Every benchmark runs gptcli and its reference in the same process, on the same shapes, one after
the other within each repetition (the order rotates), and reports medians and ratios: on a shared
machine absolute times drift with the load, ratios taken side by side much less.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
VERDICT = ROOT / "examples" / "the-verdict.txt"

if str(ROOT) not in sys.path:  # run from a checkout without installing: gptcli imports from here
    sys.path.insert(0, str(ROOT))
# As the gptcli executable does (gptcli.cli.main), before torch is imported: 2 MB pages for
# PyTorch's large CPU buffers. THP_MEM_ALLOC_ENABLE=0 in the environment measures without them.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    import torch

    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    flags = cpu_flags()
    info = {
        "cpu": cpu_name(),
        "cores": cores,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "avx512_bf16": "avx512_bf16" in flags,
        "amx_bf16": "amx_bf16" in flags,
        "loadavg_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "thp_mem_alloc": os.environ.get("THP_MEM_ALLOC_ENABLE"),  # 2 MB pages for torch's CPU buffers
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def interleaved(
    variants: dict[str, Callable[[], object]],
    *,
    reps: int,
    warmup: int = 1,
    only_first: dict[str, int] | None = None,
    no_warmup: set[str] | frozenset[str] = frozenset(),
) -> dict[str, list[float]]:
    """Seconds per call of each variant, ``reps`` times, the variants taking turns.

    ``only_first`` limits slow references to their first N repetitions (one run of them is long
    enough to average the noise within it); ``no_warmup`` names variants that skip the warm-up.
    """
    only_first = only_first or {}
    names = list(variants)
    for _ in range(warmup):
        for name in names:
            if name not in no_warmup:
                variants[name]()
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(reps):
        order = names[r % len(names) :] + names[: r % len(names)]  # rotate: no variant always first
        for name in order:
            if r >= only_first.get(name, reps):
                continue
            t0 = time.perf_counter()
            variants[name]()
            times[name].append(time.perf_counter() - t0)
            print(f"  rep {r + 1}/{reps} {name}: {times[name][-1]:.3f} s", file=sys.stderr, flush=True)
    return times


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def summarize(times: dict[str, list[float]]) -> dict[str, dict]:
    return {
        n: {"median_s": median(ts), "min_s": min(ts) if ts else None, "max_s": max(ts) if ts else None, "runs": ts}
        for n, ts in times.items()
    }


def paired_ratio(times: dict[str, list[float]], ref: str, subject: str) -> float:
    """Median over repetitions of ref/subject, each pair timed back to back (so sharing the load)."""
    return median([r / s for r, s in zip(times[ref], times[subject])])


def peak_rss_mb() -> float:
    # Linux reports kilobytes, macOS bytes.
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


def write_result(name: str, result: dict, out: str | Path | None = None) -> Path:
    path = Path(out) if out else RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    result.setdefault("machine", {})["loadavg_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}", file=sys.stderr)
    return path


def print_table(rows: list[list[str]], header: list[str]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    fmt = "| " + " | ".join(f"{{:{'<' if i == 0 else '>'}{w}}}" for i, w in enumerate(widths)) + " |"
    print(fmt.format(*header))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print(fmt.format(*[str(x) for x in r]))


def verdict_met(value: float, target: float) -> str:
    return "met" if value >= target else "MISSED"
