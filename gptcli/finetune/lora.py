"""LoRA, the book's appendix E, over gptcli's layers.

``LinearWithLoRA(linear, rank, alpha)`` adds ``alpha * (x @ A @ B)`` to a frozen linear layer,
with A Kaiming-uniform and B zeros, so a model is unchanged until it trains. gptcli's fused
query/key/value projection ``c_attn`` stands for the book's three ``W_query``/``W_key``/
``W_value`` layers, so it carries three (A, B) pairs, one per third of its outputs: the same
adapters, initialised from the same random draws in the same order, as
``replace_linear_with_lora`` gives the book's model.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from gptcli.errors import UsageError
from gptcli.finetune.config import LORA_TARGETS as TARGETS
from gptcli.model import GPT


class LinearWithLoRA(nn.Module):
    def __init__(self, linear: nn.Linear, rank: int, alpha: float, *, chunks: int = 1):
        super().__init__()
        self.linear = linear
        self.rank, self.alpha, self.chunks = rank, alpha, chunks
        out = linear.out_features // chunks
        self.A = nn.Parameter(torch.empty(chunks, linear.in_features, rank))
        self.B = nn.Parameter(torch.zeros(chunks, rank, out))
        for i in range(chunks):  # the book's LoRALayer init, once per layer it replaces
            nn.init.kaiming_uniform_(self.A.data[i], a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lora = [self.alpha * (x @ self.A[i] @ self.B[i]) for i in range(self.chunks)]
        return self.linear(x) + (lora[0] if self.chunks == 1 else torch.cat(lora, dim=-1))

    @torch.no_grad()
    def merged(self) -> nn.Linear:
        """The plain linear layer computing the same function: W + alpha * (A @ B)^T per chunk."""
        delta = torch.cat([(self.A[i] @ self.B[i]).T for i in range(self.chunks)], dim=0) * self.alpha
        lin = self.linear
        lin.weight += delta.to(lin.weight.dtype)
        return lin


def apply_lora(model: GPT, *, rank: int, alpha: float, targets: tuple[str, ...] = TARGETS) -> None:
    """Appendix E: freeze every weight, then wrap the chosen linears, in the book's module order
    (per block q, k, v, out_proj, ff.0, ff.2; the head last)."""
    if rank < 1:
        raise UsageError(f"invalid --lora-rank: {rank} (must be at least 1)")
    for p in model.parameters():
        p.requires_grad = False
    for block in model.h:
        if "attn" in targets:
            block.attn.c_attn = LinearWithLoRA(block.attn.c_attn, rank, alpha, chunks=3)
            block.attn.c_proj = LinearWithLoRA(block.attn.c_proj, rank, alpha)
        if "mlp" in targets:
            block.mlp.c_fc = LinearWithLoRA(block.mlp.c_fc, rank, alpha)
            block.mlp.c_proj = LinearWithLoRA(block.mlp.c_proj, rank, alpha)
    if "head" in targets:
        model.lm_head = LinearWithLoRA(model.lm_head, rank, alpha)


def merge_lora(model: GPT) -> GPT:
    """Fold every adapter into its linear layer, in place; the model is a plain GPT again."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, LinearWithLoRA):
                setattr(parent, name, child.merged())
    return model


def base_name(name: str) -> str:
    """The name a wrapped tensor has in the plain model (``h.0.attn.c_attn.linear.weight`` ->
    ``h.0.attn.c_attn.weight``)."""
    return name.replace(".linear.", ".")
