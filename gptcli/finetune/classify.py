"""Classification data and model (the book's chapter 6): a table of texts and labels, the label
map, ``create_balanced_dataset``, ``random_split``, ``SpamDataset``'s padding, the new output
head, and the loss and accuracy on the last token (``calc_loss_batch``, ``calc_accuracy_loader``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from gptcli.errors import DataError, UsageError
from gptcli.finetune.config import TRAINABLE
from gptcli.finetune.files import json_records, read_file, table_rows
from gptcli.model import GPT
from gptcli.tokenizer import EOT_ID, encode_ordinary

_INTEGER = re.compile(r"-?[0-9]+")


def read_table(path: str | Path, *, text_field: str, label_field: str) -> tuple[list[str], list[str]]:
    """Texts and labels (as strings) of a CSV, TSV (``.tsv``) or JSON (``.json``/``.jsonl``: a
    list of records, as instruct reads, or JSON Lines) file."""
    p = Path(path)
    rows: list[dict] = []
    if p.suffix.lower() in (".jsonl", ".json"):
        rows = json_records(p)
        for n, r in enumerate(rows, 1):
            if not isinstance(r, dict):
                raise DataError(f"{p}: record {n} is not an object")
        fields = set().union(*(r.keys() for r in rows)) if rows else set()
    else:
        header, rows = table_rows(read_file(p, newline=""), p, delimiter="\t" if p.suffix.lower() == ".tsv" else ",")
        fields = set(header)
    for flag, name in (("--text-field", text_field), ("--label-field", label_field)):
        if name not in fields:
            have = ", ".join(sorted(map(str, fields))[:6]) or "none"
            raise UsageError(f"invalid {flag}: {p} has no field {name!r} (fields: {have})")
    texts, labels = [], []
    for i, r in enumerate(rows):
        t, lab = r.get(text_field), r.get(label_field)
        if t is None or lab is None or (isinstance(lab, str) and lab == ""):
            raise DataError(f"{p}: record {i + 1} lacks {text_field!r} or {label_field!r}")
        texts.append(str(t))
        labels.append(str(lab))
    if not texts:
        raise DataError(f"{p}: no records")
    if not any(texts):
        raise DataError(f"{p}: every {text_field!r} is empty: there is no text to classify")
    return texts, labels


def label_names(labels: Sequence[str]) -> list[str]:
    """Class names in id order: sorted (numerically when all are integers), so the book's
    ``{"ham": 0, "spam": 1}`` comes out as it maps them."""
    uniq = set(labels)
    if all(_INTEGER.fullmatch(s) for s in uniq):  # ASCII digits: "²".isdigit() is True, int("²") fails
        return sorted(uniq, key=int)
    return sorted(uniq)


def balance(labels: Sequence[str], *, seed: int = 123) -> list[int]:
    """The book's ``create_balanced_dataset`` as row indices: every larger class sampled down to
    the smallest one's size (pandas' ``sample(n, random_state=123)``), then the smallest class."""
    by_class: dict[str, list[int]] = {}
    for i, lab in enumerate(labels):
        by_class.setdefault(lab, []).append(i)
    smallest = min(len(v) for v in by_class.values())
    big = sorted((c for c in by_class if len(by_class[c]) > smallest), key=lambda c: -len(by_class[c]))
    out: list[int] = []
    for c in big:
        rows = by_class[c]
        pick = np.random.RandomState(seed).permutation(len(rows))[:smallest]
        out += [rows[j] for j in pick]
    for c in by_class:
        if len(by_class[c]) == smallest:
            out += by_class[c]
    return out


def random_split(
    rows: Sequence[int], fractions: tuple[float, float, float], *, seed: int = 123
) -> tuple[list[int], list[int], list[int]]:
    """The book's ``random_split``: shuffle (``df.sample(frac=1, random_state=123)``), then the
    first int(n x train) train, the next int(n x val) validate, the rest test."""
    order = [rows[j] for j in np.random.RandomState(seed).permutation(len(rows))]
    train_end = int(len(order) * fractions[0])
    val_end = train_end + int(len(order) * fractions[1])
    return order[:train_end], order[train_end:val_end], order[val_end:]


@dataclass
class ClassifyData:
    """The book's ``SpamDataset``: token ids cut to ``max_length`` and padded to it with
    <|endoftext|>; ``max_length`` defaults to the longest text (of the training split)."""

    ids: torch.Tensor  # (N, L)
    labels: torch.Tensor  # (N,)

    @classmethod
    def build(cls, texts: Sequence[str], labels: Sequence[int], *, max_length: int | None, pad_id: int = EOT_ID):
        enc = [encode_ordinary(t) for t in texts]
        if max_length is None:
            max_length = max([1, *(len(e) for e in enc)])  # at least one position, even if every text is empty
        enc = [e[:max_length] + [pad_id] * (max_length - len(e[:max_length])) for e in enc]
        ids = torch.tensor(enc, dtype=torch.long) if enc else torch.zeros((0, max_length), dtype=torch.long)
        return cls(ids, torch.tensor(list(labels), dtype=torch.long))

    @property
    def max_length(self) -> int:
        return self.ids.shape[1]

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, rows: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(list(rows), dtype=torch.long)
        return self.ids[idx], self.labels[idx]


def longest_tokens(texts: Sequence[str]) -> int:
    return max((len(encode_ordinary(t)) for t in texts), default=0)


# ---------------------------------------------------------------------------------------------
# The model


def replace_head(model: GPT, n_classes: int, *, seed: int) -> None:
    """The book's ``torch.manual_seed(123); model.out_head = torch.nn.Linear(emb_dim, num_classes)``:
    a new head with a bias, initialised by PyTorch's defaults from the seed."""
    torch.manual_seed(seed)
    model.lm_head = torch.nn.Linear(model.cfg.emb_dim, n_classes)


def set_trainable(model: GPT, which: str) -> None:
    """``last-block`` (the book): the last transformer block, the final LayerNorm and the head;
    ``head``: the head only; ``all``: everything."""
    if which not in TRAINABLE:
        raise UsageError(f"invalid --trainable: {which!r} (choose from {', '.join(TRAINABLE)})")
    for p in model.parameters():
        p.requires_grad = which == "all"
    if which == "last-block":
        for p in list(model.h[-1].parameters()) + list(model.ln_f.parameters()):
            p.requires_grad = True
    for p in model.lm_head.parameters():
        p.requires_grad = True


def last_token_logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x)[:, -1, :]  # (B, n_classes): the last position has seen every token


def classify_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The book's chapter 6 ``calc_loss_batch``: cross-entropy of the last token's logits."""
    return F.cross_entropy(last_token_logits(model, x), y)


def correct_count(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    return int((last_token_logits(model, x).argmax(dim=-1) == y).sum().item())


def classify_texts(
    model: GPT, texts: Sequence[str], *, max_length: int, device: torch.device | str = "cpu", pad_id: int = EOT_ID
) -> torch.Tensor:
    """The book's ``classify_review`` for many texts: cut to min(max_length, context), pad to
    ``max_length`` and return each text's class probabilities, shape (N, n_classes)."""
    model.eval()
    keep = min(max_length, model.cfg.context_length)
    out = []
    with torch.no_grad():
        for t in texts:
            ids = encode_ordinary(t)[:keep]
            ids += [pad_id] * (max_length - len(ids))
            x = torch.tensor([ids], device=device)
            out.append(torch.softmax(last_token_logits(model, x).float(), dim=-1)[0].cpu())
    return torch.stack(out)
