"""Numbers about a run: perplexity, FLOPs and MFU, and the ``metrics.jsonl`` log (one JSON
object per eval, epoch and sample) with its writer and reader."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from gptcli.config import ModelConfig


def perplexity(loss: float) -> float:
    """exp(loss), inf where that overflows a float."""
    try:
        return math.exp(loss)
    except OverflowError:
        return float("inf")


# Dense bf16 peak of common GPUs (FLOP/s), for MFU; unknown cards report no MFU.
_GPU_BF16_PEAK = {
    "H100": 989e12,
    "H200": 989e12,
    "GH200": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "A10": 125e12,
    "L4": 121e12,
    "4090": 165e12,
    "3090": 71e12,
}


def gpu_bf16_peak(device_name: str) -> float | None:
    """The dense bf16 peak (FLOP/s) of a GPU by its name, None for one not in the table."""
    for key, peak in _GPU_BF16_PEAK.items():
        if key in device_name:
            return peak
    return None


def flops_per_token(cfg: ModelConfig) -> float:
    """Training FLOPs per token: 6N for the matmuls plus 12·L·H·Q·T for attention (PaLM's count)."""
    n = cfg.num_params(non_embedding=True)
    return 6 * n + 12 * cfg.n_layers * cfg.n_heads * cfg.head_dim * cfg.context_length


class MetricsWriter:
    """Appends records to ``metrics.jsonl``, flushing each line so a crash loses nothing logged."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.lines = count_lines(self.path)

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, allow_nan=True) + "\n")
            f.flush()
        self.lines += 1

    def truncate(self, n_lines: int) -> None:
        """Keep only the first ``n_lines`` records: those a resumed checkpoint already accounts for."""
        records = read_metrics(self.path)[:n_lines] if self.path.exists() else []
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps(r, allow_nan=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        self.lines = len(records)


def count_lines(path: Path) -> int:
    if not path.exists():
        return 0
    with open(path, encoding="utf-8") as f:
        return sum(1 for line in f if line.strip())


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """All complete records; a torn last line (from a crash mid-write) is ignored."""
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records
