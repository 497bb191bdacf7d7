"""What every converter shares: shape checks that name each tensor, padding the vocabulary, and
the final check-and-save of a converted checkpoint. The gptcli tensors a config expects
(``gptcli_shapes``) live beside the model, in ``gptcli.model``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from gptcli import checkpoint as ckpt
from gptcli.errors import CheckpointError
from gptcli.model import gptcli_shapes

# (done, total) after each tensor: drives the CLI's progress bar.
Progress = Callable[[int, int], None]


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
