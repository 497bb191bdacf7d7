"""Loss and perplexity of a model over a whole text, not a sample of batches.

Two methods. The default is the book's: ``calc_loss_loader`` over
``create_dataloader_v1(text, batch_size, max_length=T, stride=T, shuffle=False, drop_last=False)``,
i.e. non-overlapping windows of T inputs and T next-token targets (a tail shorter than a window is
left out), and the loss is the mean over batches of each batch's mean loss. ``stride`` switches to
the sliding window of Hugging Face's perplexity guide (``data.SlidingWindows``): every token after
the first is scored once, each with as much preceding context as fits, token-weighted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from gptcli.data import SlidingWindows, TokenWindows, batches_of
from gptcli.metrics import perplexity
from gptcli.model import GPT

BOOK_METHOD = "book windows (stride = context)"


def sliding_method(stride: int) -> str:
    return f"sliding window, stride {stride}"


@dataclass
class EvalResult:
    loss: float
    perplexity: float
    tokens: int  # number of predicted (scored) tokens
    windows: int
    method: str  # BOOK_METHOD or sliding_method(stride)
    stride: int  # the windows' stride (the context length for the book's windows)
    batches: int


@torch.no_grad()
def evaluate_tokens(
    model: GPT,
    tokens: np.ndarray,
    *,
    batch_size: int = 8,
    stride: int | None = None,
    device: torch.device | str = "cpu",
    on_progress: Callable[[int, int], None] | None = None,
) -> EvalResult:
    """The loss of ``model`` over ``tokens``: the book's ``calc_loss_loader`` over its
    stride = context windows in batches of ``batch_size`` (NaN when the text has no full window,
    as the book's), or with ``stride`` the token-weighted sliding-window loss.
    ``on_progress(windows done, windows)`` follows the work."""
    model.eval()
    T = model.cfg.context_length
    if stride is None:
        return _book_loss(model, TokenWindows(tokens, T, T), batch_size, device, on_progress)
    return _sliding_loss(model, SlidingWindows(tokens, T, stride), batch_size, device, on_progress)


def _book_loss(model: GPT, windows: TokenWindows, batch_size: int, device, on_progress) -> EvalResult:
    batches = batches_of(range(len(windows)), batch_size, drop_last=False)
    exact = next(model.parameters()).dtype == torch.float32
    total, done = 0.0, 0
    for ids in batches:
        x, y = windows.batch(ids)
        x, y = x.to(device), y.to(device)
        if exact:
            total += model(x, targets=y).item()  # the book's calc_loss_batch
        else:  # bf16 or int8 weights: the cross-entropy of their logits taken in fp32, not in bf16
            total += F.cross_entropy(model(x).float().flatten(0, 1), y.flatten()).item()
        done += len(ids)
        if on_progress is not None:
            on_progress(done, len(windows))
    mean = total / len(batches) if batches else float("nan")
    return EvalResult(
        loss=mean,
        perplexity=perplexity(mean),
        tokens=len(windows) * windows.context_length,
        windows=len(windows),
        method=BOOK_METHOD,
        stride=windows.stride,
        batches=len(batches),
    )


def _sliding_loss(model: GPT, windows: SlidingWindows, batch_size: int, device, on_progress) -> EvalResult:
    # Only the last window can be shorter than the others, so it runs in a batch of its own.
    n = len(windows)
    full = n if n == 0 or windows.span(n - 1)[1] == windows.context_length else n - 1
    batches = batches_of(range(full), batch_size, drop_last=False) + ([[n - 1]] if full < n else [])
    total_nll, total_tokens, done = 0.0, 0, 0
    for ids in batches:
        x, y, first = windows.batch(ids)
        logits = model(x.to(device)).float()  # (B, L, vocab)
        nll = F.cross_entropy(logits.flatten(0, 1), y.to(device).flatten(), reduction="none").view(y.shape)
        scored = torch.arange(y.shape[1], device=nll.device)[None, :] >= first.to(nll.device)[:, None]  # (B, L)
        total_nll += nll[scored].sum().item()
        total_tokens += int(scored.sum())
        done += len(ids)
        if on_progress is not None:
            on_progress(done, n)
    mean = total_nll / total_tokens if total_tokens else float("nan")
    return EvalResult(
        loss=mean,
        perplexity=perplexity(mean),
        tokens=total_tokens,
        windows=n,
        method=sliding_method(windows.stride),
        stride=windows.stride,
        batches=len(batches),
    )
