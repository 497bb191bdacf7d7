"""Numbers about a run: perplexity, FLOPs and MFU, and the ``metrics.jsonl`` log (one JSON
object per eval, epoch and sample) with its writer and reader."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from gptcli import fsutil
from gptcli.config import ModelConfig
from gptcli.errors import SaveError, os_error_reason


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
    """Appends records to ``metrics.jsonl``, flushing each line so a crash loses nothing logged.

    A write that fails (a full disk, a file-size limit) is a SaveError that says so, and leaves
    no torn line behind: the file is cut back to its last complete record.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.lines = count_lines(self.path)

    def write(self, record: dict[str, Any]) -> None:
        self.write_all([record])

    def write_all(self, records: list[dict[str, Any]]) -> None:
        """Append ``records`` all or none."""
        data = memoryview("".join(json.dumps(r, allow_nan=True) + "\n" for r in records).encode("utf-8"))
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                start = os.lseek(fd, 0, os.SEEK_END)
                try:
                    while data:
                        data = data[os.write(fd, data) :]
                except OSError:
                    try:
                        os.ftruncate(fd, start)
                    except OSError:
                        pass
                    raise
            finally:
                os.close(fd)
        except OSError as e:
            raise SaveError(f"{self.path}: could not write the metrics log ({os_error_reason(e)})") from None
        self.lines += len(records)

    def truncate(self, n_lines: int) -> None:
        """Keep only the first ``n_lines`` records: those a resumed checkpoint already accounts for.
        The file is replaced whole or not at all."""
        records = read_metrics(self.path)[:n_lines] if self.path.exists() else []
        try:
            fsutil.atomic_write(self.path, "".join(json.dumps(r, allow_nan=True) + "\n" for r in records))
        except OSError as e:
            raise SaveError(
                f"{self.path}: could not rewrite the metrics log ({os_error_reason(e)}); it is unchanged"
            ) from None
        self.lines = len(records)


def count_lines(path: Path) -> int:
    if not path.exists():
        return 0
    with open(path, "rb") as f:  # bytes: a stray non-UTF-8 line is still a line
        return sum(1 for line in f if line.strip())


# What the readers (``runs``, ``plot``, ``resume``) rely on in each record type: integer fields
# and numeric ones (NaN and inf allowed: a diverged run logs them). Other types need only the
# common integer fields.
_INT_FIELDS = ("step", "tokens_seen")
_NUMBER_FIELDS = {"eval": ("train_loss", "val_loss")}


def _record_problem(record: Any) -> str | None:
    """Why ``record`` is not a usable metrics record, or None if it is."""
    if not isinstance(record, dict):
        return f"not a JSON object but {type(record).__name__}"
    kind = record.get("type")
    if not isinstance(kind, str):
        return "no 'type'"
    for key in _INT_FIELDS:
        if key not in record:
            return f"{kind} record without '{key}'"
        if not isinstance(record[key], int) or isinstance(record[key], bool):
            return f"'{key}' is not an integer ({record[key]!r:.40})"
    for key in _NUMBER_FIELDS.get(kind, ()):
        if key not in record:
            return f"{kind} record without '{key}'"
        if not isinstance(record[key], (int, float)) or isinstance(record[key], bool):
            return f"'{key}' is not a number ({record[key]!r:.40})"
    return None


def read_metrics(path: Path, *, warnings: list[str] | None = None) -> list[dict[str, Any]]:
    """All complete, well-formed records.

    A torn last line (from a crash mid-write) is ignored silently. Any other line that is not a
    usable record (not JSON, not an object, a missing or mistyped field) is skipped; with
    ``warnings``, one message per file naming the first such line and the count is appended to it.
    OSError (a missing or unreadable file) propagates.
    """
    records = []
    skipped: list[tuple[int, str]] = []
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    last = max((i for i, raw in enumerate(lines) if raw.strip()), default=-1)
    for i, raw in enumerate(lines):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            skipped.append((i + 1, "not UTF-8 text"))
            continue
        except json.JSONDecodeError:
            if i != last or i + 1 < len(lines):  # a torn write can only be the unterminated last line
                skipped.append((i + 1, "not valid JSON"))
            continue
        problem = _record_problem(record)
        if problem is not None:
            skipped.append((i + 1, problem))
            continue
        records.append(record)
    if skipped and warnings is not None:
        line, why = skipped[0]
        more = f" and {len(skipped) - 1} more" if len(skipped) > 1 else ""
        warnings.append(f"{path}: skipped malformed line {line} ({why}){more}")
    return records


def eval_scalars(record: dict[str, Any]) -> dict[str, float]:
    """The scalars of one eval record under the tags TensorBoard and W&B show them with."""
    scalars = {
        "loss/train": record.get("train_loss"),
        "loss/val": record.get("val_loss"),
        "lr": record.get("lr"),
        "tokens_seen": record.get("tokens_seen"),
        "tokens_per_sec": record.get("tokens_per_sec"),
        "mfu": record.get("mfu"),  # only on GPUs with a known peak
    }
    val = record.get("val_loss")
    if isinstance(val, (int, float)) and math.isfinite(val) and val < 700:
        scalars["perplexity/val"] = math.exp(val)
    return {k: float(v) for k, v in scalars.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
