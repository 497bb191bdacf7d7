"""Sampling: a pure next-token function and ``generate`` with a KV cache.

Semantics follow the book's ``generate``: top-k filtering happens before temperature scaling,
temperature 0 means greedy (argmax), and a row stops at ``<|endoftext|>``. Everything is written
for a batch of rows, each stopping on its own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from gptcli.errors import UsageError
from gptcli.model import GPT, KVCache


@dataclass
class SampleConfig:
    max_new_tokens: int = 50
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    num_samples: int = 1

    def __post_init__(self) -> None:
        if self.max_new_tokens < 0:
            raise UsageError(f"invalid --max-new-tokens: {self.max_new_tokens} (must be >= 0)")
        if self.temperature < 0:
            raise UsageError(f"invalid --temperature: {self.temperature} (must be >= 0)")
        if self.top_k is not None and self.top_k < 1:
            raise UsageError(f"invalid --top-k: {self.top_k} (must be >= 1)")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise UsageError(f"invalid --top-p: {self.top_p} (must be in (0, 1])")
        if self.num_samples < 1:
            raise UsageError(f"invalid --num-samples: {self.num_samples} (must be >= 1)")


def sample_next_token(
    logits: torch.Tensor,
    *,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Pick the next token for each row of ``logits`` (B, V); returns (B, 1) ids."""
    logits = logits.float()
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if temperature <= 0.0:
        return logits.argmax(dim=-1, keepdim=True)
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p is not None and top_p < 1.0:
        sorted_probs, sorted_idx = probs.sort(dim=-1, descending=True)
        # Keep the smallest prefix whose mass reaches top_p: a token stays if the mass before it < p.
        drop = sorted_probs.cumsum(dim=-1) - sorted_probs >= top_p
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter_(-1, sorted_idx, sorted_probs)
    return torch.multinomial(probs, num_samples=1, generator=generator)


@torch.no_grad()
def generate(
    model: GPT,
    idx: torch.Tensor,
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_id: int | None = None,
    use_cache: bool = True,
    generator: torch.Generator | None = None,
    on_token: Callable[[torch.Tensor], None] | None = None,
) -> list[list[int]]:
    """Extend each row of ``idx`` (B, T) by up to ``max_new_tokens`` tokens.

    Returns the new tokens of each row, cut before its first ``eos_id``. Prompts longer than the
    context are cropped from the left, as are sequences that grow past it. With ``use_cache``,
    each new token costs one position; once the sequence is longer than the context, every step
    must re-run the last ``context_length`` tokens (their positions all shift), exactly as the
    uncached model does, so the two give identical tokens.
    """
    ctx = model.cfg.context_length
    B = idx.shape[0]
    finished = torch.zeros(B, dtype=torch.bool, device=idx.device)
    out: list[torch.Tensor] = []
    cache = None
    if use_cache:
        # On CPU the cache, and so attention, is fp32 whatever the weights: with bf16 weights the
        # CPU attention kernels are several times slower at one query in bf16 than in fp32
        # (benchmarks/bench_sample_cpu.py), and fp32 keeps bf16 decoding closer to fp32's.
        dtype = torch.float32 if idx.device.type == "cpu" else next(model.parameters()).dtype
        cache = KVCache(model.cfg, B, device=idx.device, dtype=dtype)
    seq = idx
    next_input = None  # what the cache has not seen yet
    for _ in range(max_new_tokens):
        if cache is not None and next_input is not None and cache.length < ctx:
            logits = model(next_input, cache)[:, -1, :]
        else:
            window = seq[:, -ctx:]
            if cache is not None:
                cache.reset()
            logits = model(window, cache)[:, -1, :]
        tok = sample_next_token(logits, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)
        if eos_id is not None:
            tok = tok.masked_fill(finished.unsqueeze(1), eos_id)
            finished |= tok.squeeze(1) == eos_id
        out.append(tok)
        if on_token is not None:
            on_token(tok)
        if eos_id is not None and bool(finished.all()):
            break
        seq = torch.cat([seq, tok], dim=1)
        next_input = tok
    if not out:
        return [[] for _ in range(B)]
    new = torch.cat(out, dim=1).tolist()
    if eos_id is not None:
        new = [row[: row.index(eos_id)] if eos_id in row else row for row in new]
    return new
