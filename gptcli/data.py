"""Text -> token ids -> training windows and batches.

The windowing is the book's ``GPTDatasetV1``: window i covers tokens [s, s+T) with next-token
targets [s+1, s+T+1), for s in range(0, n - T, stride). The batch order reproduces what the
book's ``DataLoader(shuffle=True)`` draws from the global torch RNG, so a seeded gptcli run sees
the same batches as the book's notebook.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gptcli.errors import DataError
from gptcli.tokenizer import EOT_TOKEN, encode

# ---------------------------------------------------------------------------------------------
# Reading text


def expand_paths(paths: Sequence[str | Path]) -> list[Path]:
    """Files as given, and every ``*.txt`` under each directory, sorted."""
    if not paths:
        raise DataError("no input text given")
    files: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found = sorted(q for q in p.rglob("*.txt") if q.is_file())
            if not found:
                raise DataError(f"{p}: directory contains no .txt files")
            files.extend(found)
        elif p.is_file():
            files.append(p)
        elif p.exists():
            raise DataError(f"{p}: not a regular file")
        else:
            raise DataError(f"{p}: file not found")
    return files


def read_text(path: Path, *, errors: str = "strict") -> str:
    """Read one UTF-8 file; undecodable bytes fail by default, naming the file and byte offset."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None
    nul = raw.find(b"\x00", 0, 1 << 20)
    if errors == "strict" and nul >= 0:
        raise DataError(
            f"{path}: looks like a binary file (NUL byte at offset {nul}); "
            "pass --encoding-errors replace to read it anyway"
        )
    try:
        text = raw.decode("utf-8", errors=errors)
    except UnicodeDecodeError as e:
        raise DataError(
            f"{path}: not valid UTF-8 at byte offset {e.start}; use --encoding-errors replace|ignore to read it anyway"
        ) from None
    if not text.strip():
        raise DataError(f"{path}: file is empty" if not text else f"{path}: file contains only whitespace")
    return text


def read_corpus(paths: Sequence[str | Path], *, errors: str = "strict") -> str:
    """All files' text, documents separated by ``<|endoftext|>`` as in GPT-2's training data."""
    return EOT_TOKEN.join(read_text(f, errors=errors) for f in expand_paths(paths))


def split_text(text: str, val_ratio: float) -> tuple[str, str]:
    """The book's split: the first (1 - val_ratio) of the characters train, the rest validate."""
    split_idx = int((1.0 - val_ratio) * len(text))
    return text[:split_idx], text[split_idx:]


def tokenize(text: str) -> np.ndarray:
    return np.asarray(encode(text), dtype=np.int64)


# ---------------------------------------------------------------------------------------------
# Windows and batches


@dataclass
class TokenWindows:
    """Fixed-length windows over a token array (in memory or a memmap), read lazily per batch."""

    tokens: np.ndarray
    context_length: int
    stride: int

    def __post_init__(self) -> None:
        n = len(self.tokens)
        self.num_windows = max(0, -(-(n - self.context_length) // self.stride)) if n > self.context_length else 0

    def __len__(self) -> int:
        return self.num_windows

    def batch(self, window_ids: Sequence[int] | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and next-token targets, each (B, T) int64."""
        T = self.context_length
        starts = [int(i) * self.stride for i in window_ids]
        rows = np.stack([np.asarray(self.tokens[s : s + T + 1], dtype=np.int64) for s in starts])
        t = torch.from_numpy(rows)
        return t[:, :-1], t[:, 1:]


def draw_seed() -> int:
    """A seed drawn from the global torch RNG the way torch's DataLoader and RandomSampler do."""
    return int(torch.empty((), dtype=torch.int64).random_().item())


def loader_iter_seed(*, shuffle: bool) -> int | None:
    """Consume the global RNG exactly as creating a book-style DataLoader iterator does.

    Each iterator draws a base seed; a shuffling one then draws its sampler's seed. Matching this
    keeps the RNG stream, and so every dropout mask, identical to the book's run.
    """
    draw_seed()  # _BaseDataLoaderIter's _base_seed
    return draw_seed() if shuffle else None


def permutation(n: int, seed: int) -> list[int]:
    g = torch.Generator()
    g.manual_seed(seed)
    return torch.randperm(n, generator=g).tolist()


def batches_of(order: Sequence[int], batch_size: int, *, drop_last: bool) -> list[list[int]]:
    n = len(order) // batch_size if drop_last else -(-len(order) // batch_size)
    return [list(order[i * batch_size : (i + 1) * batch_size]) for i in range(n)]


def eval_windows(tokens: np.ndarray, context_length: int) -> list[tuple[int, int]]:
    """(start, length) chunks that predict every token after the first exactly once.

    Full windows of ``context_length`` targets, then one shorter window for the remainder.
    """
    n_targets = len(tokens) - 1
    return [(s, min(context_length, n_targets - s)) for s in range(0, n_targets, context_length)]
