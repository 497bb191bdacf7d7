"""Loss and perplexity over every window of a text, not a sample of batches."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from gptcli.data import eval_windows
from gptcli.metrics import perplexity
from gptcli.model import GPT


@dataclass
class EvalResult:
    loss: float
    perplexity: float
    tokens: int  # number of predicted tokens
    windows: int


@torch.no_grad()
def evaluate_tokens(
    model: GPT,
    tokens: np.ndarray,
    *,
    batch_size: int = 8,
    device: torch.device | str = "cpu",
    autocast=None,
    on_progress: Callable[[int, int], None] | None = None,
) -> EvalResult:
    """Token-weighted mean cross-entropy of predicting every token from the ones before it,
    in consecutive windows of the model's context length (the last one shorter)."""
    model.eval()
    chunks = eval_windows(tokens, model.cfg.context_length)
    total_loss, total_tokens = 0.0, 0
    # Windows of equal length batch together; only the last one can be shorter.
    for i in range(0, len(chunks), batch_size):
        group = chunks[i : i + batch_size]
        by_len: dict[int, list[int]] = {}
        for start, length in group:
            by_len.setdefault(length, []).append(start)
        for length, starts in by_len.items():
            rows = torch.from_numpy(np.stack([np.asarray(tokens[s : s + length + 1], dtype=np.int64) for s in starts]))
            x, y = rows[:, :-1].to(device), rows[:, 1:].to(device)
            with autocast if autocast is not None else torch.autocast("cpu", enabled=False):
                logits = model(x)
            loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum")
            total_loss += loss.item()
            total_tokens += y.numel()
        if on_progress is not None:
            on_progress(min(i + batch_size, len(chunks)), len(chunks))
    mean = total_loss / max(total_tokens, 1)
    return EvalResult(loss=mean, perplexity=perplexity(mean), tokens=total_tokens, windows=len(chunks))
