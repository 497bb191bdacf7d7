"""The single data entry point: text -> token ids -> training windows and batches.

``prepare_data`` gives a training run its windows, and ``corpus_tokens`` gives ``eval`` its ids;
both go through the token cache (``gptcli.tokencache``) for large corpora, and through
``gptcli.textfiles`` (reading and checking files) otherwise.

The windowing is the book's ``GPTDatasetV1``: window i covers tokens [s, s+T) with next-token
targets [s+1, s+T+1), for s in range(0, n - T, stride). The batch order reproduces what the
book's ``DataLoader(shuffle=True)`` draws from the global torch RNG, so a seeded gptcli run sees
the same batches as the book's notebook. ``eval`` uses the same windows with stride = T by default
(the book's ``calc_loss_loader``), or ``SlidingWindows`` for ``--stride``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gptcli import distributed, formats, shards, tokencache
from gptcli.config import ModelConfig, TrainConfig
from gptcli.errors import DataError, UsageError
from gptcli.textfiles import read_corpus
from gptcli.tokenizer import encode_corpus

# ---------------------------------------------------------------------------------------------
# Text and token ids


def split_text(text: str, val_ratio: float) -> tuple[str, str]:
    """The book's split: the first (1 - val_ratio) of the characters train, the rest validate."""
    split_idx = int((1.0 - val_ratio) * len(text))
    return text[:split_idx], text[split_idx:]


def tokenize(text: str) -> np.ndarray:
    """Token ids of corpus text (``tokenizer.encode_corpus``: a literal ``<|endoftext|>`` in a
    document is text, the separators between documents are id 50256)."""
    return np.asarray(encode_corpus(text), dtype=np.int64)


def text_fingerprint(text: str) -> str:
    # surrogatepass: corpus text carries tokenizer.LITERAL_EOT; any other text hashes as UTF-8
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def input_format(fmt: str | None) -> str | None:
    """``--format`` as ``gptcli.formats`` takes it: None (detect from each name) for auto."""
    return None if fmt in (None, "auto") else formats.check_format(fmt)


def _needs_cache(inputs: Sequence[formats.Input]) -> bool:
    """Whether inputs go through the token cache: any that is not a plain text file on disk
    (another format, compressed, standard input), or ``MEMMAP_MIN_BYTES`` in all."""
    if not all(i.plain_text for i in inputs):
        return True
    return tokencache.inputs_bytes(inputs) >= tokencache.MEMMAP_MIN_BYTES


def corpus_tokens(
    paths: Sequence[str | Path],
    *,
    errors: str = "strict",
    on_progress: Callable[[int, int], None] | None = None,
    format: str | None = None,
    text_field: str = "text",
) -> np.ndarray:
    """All token ids of the inputs (documents joined by ``<|endoftext|>``): files, directories,
    globs or ``-`` (standard input), in the format of each name or ``format``. Corpora of
    ``tokencache.MEMMAP_MIN_BYTES`` or more, and every input that is not a plain ``.txt`` file,
    come from the token cache as a memmap, so a large evaluation file is never held in memory as
    text."""
    fmt = input_format(format)
    inputs = formats.resolve_inputs(paths, format=fmt)
    if _needs_cache(inputs):
        return tokencache.cached_corpus_tokens(
            paths, val_ratio=None, errors=errors, on_progress=on_progress, format=fmt, text_field=text_field
        ).train
    return tokenize(read_corpus([i.path for i in inputs], errors=errors))


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


@dataclass
class SlidingWindows:
    """The sliding-window evaluation of Hugging Face's perplexity guide ("Perplexity of
    fixed-length models"), over the book's (inputs, next-token targets) windows.

    Window k has the inputs [kS, kS + T) (the last one cut at the end of the text) and scores only
    the targets no earlier window scored: all T of the first window's, the last S of each later
    one. So every token after the first is scored exactly once, each with at least T - S + 1 tokens
    of context before it (all it has, near the start). S = T gives the book's windows plus one
    shorter window for the tail; S = 1 gives every token its full context, at T times the cost.
    """

    tokens: np.ndarray
    context_length: int
    stride: int

    def __post_init__(self) -> None:
        T, S = self.context_length, self.stride
        if not 1 <= S <= T:
            raise ValueError(f"stride {S} must be from 1 to the context length {T}")
        self.n_targets = max(0, len(self.tokens) - 1)
        # The last window is the first whose targets reach the end: k*S + T >= n_targets.
        self.num_windows = 0 if self.n_targets == 0 else 1 + max(0, -(-(self.n_targets - T) // S))

    def __len__(self) -> int:
        return self.num_windows

    def span(self, k: int) -> tuple[int, int, int]:
        """(start, length, first scored position) of window k: its inputs are tokens
        [start, start + length), its targets the next tokens, of which positions from the third
        value on count."""
        start = k * self.stride
        length = min(self.context_length, self.n_targets - start)
        return start, length, 0 if k == 0 else self.context_length - self.stride

    def batch(self, window_ids: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Inputs and targets (B, L) int64, and the first scored position of each row (B,), for
        windows of one length."""
        spans = [self.span(int(k)) for k in window_ids]
        lengths = {length for _, length, _ in spans}
        if len(lengths) != 1:
            raise ValueError(f"windows of different lengths in one batch: {sorted(lengths)}")
        rows = np.stack([np.asarray(self.tokens[s : s + n + 1], dtype=np.int64) for s, n, _ in spans])
        t = torch.from_numpy(rows)
        return t[:, :-1], t[:, 1:], torch.tensor([first for _, _, first in spans])


# ---------------------------------------------------------------------------------------------
# Data for a training run


@dataclass
class RunData:
    train: TokenWindows
    val: TokenWindows
    train_tokens: int
    val_tokens: int
    fingerprint: str
    # Older fingerprints of the same data that a resume also accepts (shards: the sampled one
    # that checkpoints made before every byte was hashed carry).
    also_accepted: tuple[str, ...] = ()


def prepare_data(
    model_cfg: ModelConfig, cfg: TrainConfig, *, on_progress: Callable[[int, int], None] | None = None
) -> RunData:
    """Token windows of the run's text. Corpora of ``tokencache.MEMMAP_MIN_BYTES`` (64 MiB) or more
    are tokenized once, in parallel, into a uint16 file under $GPTCLI_HOME/tokens and read as a
    memmap (the same ids, fingerprint and windows as the in-memory path, in bounded memory);
    ``on_progress(done, total)`` reports input bytes while that file is built."""
    val_paths = [cfg.val_file] if cfg.val_file else None
    if any(shards.is_shard_input(p) for p in cfg.data):
        if not all(shards.is_shard_input(p) for p in cfg.data):
            raise DataError("the training data mixes token shards (.bin) with text files; give one kind")
        train_ids, val_ids, fingerprint, sampled = shards.run_tokens(cfg.data, cfg.val_file)
        data = _run_data(model_cfg, cfg, train_ids, val_ids, fingerprint, from_shards=True)
        data.also_accepted = (sampled,)
        return data
    fmt = input_format(cfg.format)
    train_inputs = formats.resolve_inputs(cfg.data, format=fmt)
    val_inputs = formats.resolve_inputs(val_paths, format=fmt) if val_paths else []
    if any(i.path is None for i in [*train_inputs, *val_inputs]) and distributed.world_size() > 1:
        raise UsageError(
            "'-' (standard input) cannot feed a multi-process run: every process would read it; "
            "save it to a file, or tokenize it once with: gptcli prepare - -o DIR, and train on DIR"
        )
    if _needs_cache([*train_inputs, *val_inputs]):
        cached = tokencache.cached_corpus_tokens(
            cfg.data,
            val_ratio=None if val_paths else cfg.val_ratio,
            val_paths=val_paths,
            errors=cfg.encoding_errors,
            on_progress=on_progress,
            format=fmt,
            text_field=cfg.text_field,
        )
        train_ids, val_ids, fingerprint = cached.train, cached.val, cached.fingerprint
    else:
        text = read_corpus([i.path for i in train_inputs], errors=cfg.encoding_errors)
        if cfg.val_file:
            val_text = read_corpus([i.path for i in val_inputs], errors=cfg.encoding_errors)
            train_text = text
        else:
            train_text, val_text = split_text(text, cfg.val_ratio)
        train_ids, val_ids = tokenize(train_text), tokenize(val_text)
        fingerprint = text_fingerprint(train_text + "\x00" + val_text)
    return _run_data(model_cfg, cfg, train_ids, val_ids, fingerprint)


def _run_data(
    model_cfg: ModelConfig, cfg: TrainConfig, train_ids, val_ids, fingerprint: str, *, from_shards: bool = False
) -> RunData:
    T = model_cfg.context_length
    stride = cfg.stride or T
    train = TokenWindows(train_ids, T, stride)
    val = TokenWindows(val_ids, T, stride)
    need_train = (cfg.batch_size - 1) * stride + T + 1
    if len(train) < cfg.batch_size:
        raise DataError(
            f"training text too short: {len(train_ids)} tokens, need at least {need_train} for one batch "
            f"of {cfg.batch_size} windows of {T} tokens (lower --batch-size or --context-length)"
        )
    if len(val) < 1:
        where = cfg.val_file or f"the last {cfg.val_ratio:g} of the text"
        fix = "raise --val-ratio or lower --context-length"
        if from_shards:  # token shards: their val_*.bin are the validation set (--val-ratio is prepare's)
            where = f"the val_*.bin shards of {cfg.data[0]}"
            fix = "lower --context-length, or prepare the corpus again with more --val-tokens"
        raise DataError(
            f"validation text too short: {where} has {len(val_ids)} tokens, need at least {T + 1} "
            f"for one window of {T} tokens ({fix})"
        )
    return RunData(train, val, len(train_ids), len(val_ids), fingerprint)
