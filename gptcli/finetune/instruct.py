"""Instruction data (the book's chapter 7): records, the Alpaca prompt template, the split, and
``custom_collate_fn``'s batches.

A record is ``{"instruction", "input", "output"}`` (``input`` may be empty or absent), the format
of the book's ``instruction-data.json`` and of Alpaca. ``format_input`` is the book's function,
character for character; a ``--template`` file replaces it with a format string.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gptcli.errors import DataError, UsageError
from gptcli.finetune.config import parse_split
from gptcli.finetune.files import json_records
from gptcli.finetune.template import (  # noqa: F401  (where they always were)
    Template,
    format_input,
    format_response,
    response_text,
)
from gptcli.tokenizer import EOT_ID, encode_ordinary

IGNORE_INDEX = -100  # cross_entropy's default ignore_index, the book's choice


def split_of(data: str | Path, split: str, which: str, *, seed: int | None = None) -> list[dict[str, str]]:
    """The records of one split (``train``, ``val`` or ``test``) of a run's data, as it split them."""
    names = ("train", "val", "test")
    if which not in names:
        raise UsageError(f"invalid split: {which!r} (choose from {', '.join(names)})")
    parts = split_records(load_records(data), parse_split(split), seed=seed)
    return parts[names.index(which)]


def load_records(path: str | Path) -> list[dict[str, str]]:
    """A JSON list or JSONL of instruction records; any bad record is a DataError naming it."""
    p = Path(path)
    raw = json_records(p)
    records = []
    for i, r in enumerate(raw):
        if not isinstance(r, dict):
            raise DataError(f"{p}: record {i} is not an object")
        for key in ("instruction", "output"):
            if not isinstance(r.get(key), str):
                raise DataError(f"{p}: record {i} has no string {key!r}")
        inp = r.get("input", "")
        if not isinstance(inp, str):
            raise DataError(f"{p}: record {i}: 'input' is not a string")
        records.append({"instruction": r["instruction"], "input": inp, "output": r["output"]})
    if not records:
        raise DataError(f"{p}: no records")
    return records


def split_records(
    records: Sequence[Any], fractions: tuple[float, float, float], *, seed: int | None = None
) -> tuple[list[Any], list[Any], list[Any]]:
    """The book's chapter 7 split: the first int(n x train) train, the next int(n x test) test,
    the rest validate (the book's file is shuffled already; ``seed`` shuffles first)."""
    items = list(records)
    if seed is not None:
        random.Random(seed).shuffle(items)
    n = len(items)
    train_n, test_n = int(n * fractions[0]), int(n * fractions[2])
    return items[:train_n], items[train_n + test_n :], items[train_n : train_n + test_n]


def cut_responses(records: Sequence[dict[str, Any]], template: Template, max_length: int) -> tuple[int, int]:
    """(records that lose part of their response to ``max_length`` tokens, records that lose all
    of it): a target predicts the next token, so a response token at position j is learnt only
    while j <= ``max_length``."""
    part = whole = 0
    for r in records:
        if len(encode_ordinary(template.full(r))) <= max_length:
            continue
        if len(encode_ordinary(template.prompt(r))) > max_length:
            whole += 1
        else:
            part += 1
    return part, whole


@dataclass
class InstructData:
    """Token ids of each record (prompt and response) and the prompt's length, for the loss mask."""

    ids: list[list[int]]
    prompt_lengths: list[int]
    max_length: int | None
    mask_prompt: bool = False

    @classmethod
    def build(
        cls, records: Sequence[dict[str, Any]], template: Template, *, max_length: int | None, mask_prompt: bool
    ) -> InstructData:
        ids = [encode_ordinary(template.full(r)) for r in records]
        plens = [len(encode_ordinary(template.prompt(r))) for r in records] if mask_prompt else [0] * len(ids)
        return cls(ids, plens, max_length, mask_prompt)

    def __len__(self) -> int:
        return len(self.ids)

    def batch(self, rows: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        return collate(
            [self.ids[i] for i in rows],
            max_length=self.max_length,
            prompt_lengths=[self.prompt_lengths[i] for i in rows] if self.mask_prompt else None,
        )


def collate(
    batch: Sequence[Sequence[int]],
    *,
    pad_id: int = EOT_ID,
    ignore_index: int = IGNORE_INDEX,
    max_length: int | None = None,
    prompt_lengths: Sequence[int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The book's ``custom_collate_fn``: append one <|endoftext|>, pad with it to the longest
    sequence + 1, shift for the targets, keep the first end-of-text target and ignore the rest,
    then cut to ``max_length``. With ``prompt_lengths`` (exercise 7.2) the targets predicting the
    prompt's tokens are ignored too."""
    longest = max(len(item) + 1 for item in batch)
    inputs, targets = [], []
    for k, item in enumerate(batch):
        padded = list(item) + [pad_id] * (longest - len(item))  # one <|endoftext|>, then padding
        x = torch.tensor(padded[:-1])  # (L,)
        y = torch.tensor(padded[1:])  # (L,)
        pads = torch.nonzero(y == pad_id).flatten()
        if pads.numel() > 1:
            y[pads[1:]] = ignore_index
        if prompt_lengths is not None:
            y[: max(0, prompt_lengths[k] - 1)] = ignore_index
        if max_length is not None:
            x, y = x[:max_length], y[:max_length]
        inputs.append(x)
        targets.append(y)
    return torch.stack(inputs), torch.stack(targets)
