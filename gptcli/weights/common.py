"""What every converter shares: the gptcli tensors a config expects, shape checks that name each
tensor, padding the vocabulary, and the final check-and-save of a converted checkpoint."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from gptcli import checkpoint as ckpt
from gptcli.config import ModelConfig
from gptcli.errors import CheckpointError

# (done, total) after each tensor: drives the CLI's progress bar.
Progress = Callable[[int, int], None]


def gptcli_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor of ``GPT(cfg).state_dict()`` and its shape, in parameter order, without
    building the model (tests check this against the model itself)."""
    C, Vp = cfg.emb_dim, cfg.padded_vocab_size
    shapes: dict[str, tuple[int, ...]] = {"wte.weight": (Vp, C), "wpe.weight": (cfg.context_length, C)}
    for i in range(cfg.n_layers):
        p = f"h.{i}."
        shapes[p + "ln_1.weight"] = (C,)
        shapes[p + "ln_1.bias"] = (C,)
        shapes[p + "attn.c_attn.weight"] = (3 * C, C)
        if cfg.qkv_bias:
            shapes[p + "attn.c_attn.bias"] = (3 * C,)
        shapes[p + "attn.c_proj.weight"] = (C, C)
        shapes[p + "attn.c_proj.bias"] = (C,)
        shapes[p + "ln_2.weight"] = (C,)
        shapes[p + "ln_2.bias"] = (C,)
        shapes[p + "mlp.c_fc.weight"] = (4 * C, C)
        shapes[p + "mlp.c_fc.bias"] = (4 * C,)
        shapes[p + "mlp.c_proj.weight"] = (C, 4 * C)
        shapes[p + "mlp.c_proj.bias"] = (C,)
    shapes["ln_f.weight"] = (C,)
    shapes["ln_f.bias"] = (C,)
    shapes["lm_head.weight"] = (Vp, C)
    return shapes


def gptcli_param_names(cfg: ModelConfig) -> list[str]:
    """``GPT(cfg).named_parameters()`` order: the order of AdamW's state. A tied head is the
    embedding's parameter, so it has no entry of its own."""
    names = list(gptcli_shapes(cfg))
    if cfg.tie_weights:
        names.remove("lm_head.weight")
    return names


def check_tensors(
    available: dict[str, tuple[int, ...]],
    expected: dict[str, tuple[int, ...]],
    *,
    source: str,
    ignore: Callable[[str], bool] = lambda name: False,
) -> None:
    """Raise one CheckpointError naming every missing, unexpected and mis-shaped tensor."""
    missing = [n for n in expected if n not in available]
    unexpected = sorted(n for n in available if n not in expected and not ignore(n))
    wrong = [
        f"{n} (file {list(available[n])}, expected {list(shape)})"
        for n, shape in expected.items()
        if n in available and tuple(available[n]) != tuple(shape)
    ]
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
        if items:
            problems.append(
                f"{label} {', '.join(items[:10])}" + (f" and {len(items) - 10} more" if len(items) > 10 else "")
            )
    if problems:
        raise CheckpointError(f"{source}: tensors do not fit a GPT-2 model: " + "; ".join(problems))


def pad_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    """``t`` with zero rows appended up to ``rows``: the padded vocabulary is never predicted."""
    if t.shape[0] == rows:
        return t.contiguous()
    out = torch.zeros((rows, *t.shape[1:]), dtype=t.dtype)
    out[: t.shape[0]] = t
    return out


def save_checkpoint(obj: dict[str, Any], out: str | Path) -> Path:
    """Check the state against the config once more, then save atomically."""
    cfg = ckpt.read_model_config(obj, out)
    state = obj["model_state_dict"]
    check_tensors({k: tuple(v.shape) for k, v in state.items()}, gptcli_shapes(cfg), source=str(out))
    return ckpt.atomic_save(obj, out)
