"""Loss helpers and the ``metrics.jsonl`` log: one JSON object per eval, epoch and sample."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"


def perplexity(loss: float) -> float:
    """exp(loss), inf where that overflows a float."""
    try:
        return math.exp(loss)
    except OverflowError:
        return float("inf")


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
