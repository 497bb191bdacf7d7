"""Importing and exporting weights: OpenAI's GPT-2 files, Hugging Face and the book's checkpoints."""

from __future__ import annotations

import os
from pathlib import Path

SIZES = ("124M", "355M", "774M", "1558M")
CONVERTED_NAME = "model.pth"
# OpenAI's seven files per size, and the one that gives the model's shape.
OPENAI_FILES = (
    "checkpoint",
    "encoder.json",
    "hparams.json",
    "model.ckpt.data-00000-of-00001",
    "model.ckpt.index",
    "model.ckpt.meta",
    "vocab.bpe",
)
HPARAMS = "hparams.json"


def gptcli_home() -> Path:
    """Per-user cache: $GPTCLI_HOME, else ~/.cache/gptcli."""
    env = os.environ.get("GPTCLI_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "gptcli"


def gpt2_dir(size: str) -> Path:
    return gptcli_home() / "gpt2" / size


def model_name_to_size(name: str) -> str | None:
    """'gpt2-124M' or '124M' -> '124M'; None for anything else."""
    size = name[5:] if name.lower().startswith("gpt2-") else name
    return size if size in SIZES else None


def resolve_model(name: str) -> Path:
    """A converted checkpoint for ``--model``/``--init``: a path, or a GPT-2 size name."""
    from gptcli.errors import CheckpointError

    p = Path(name)
    if p.exists():
        return p
    size = model_name_to_size(name)
    if size is None:
        raise CheckpointError(
            f"{name}: no such file, and not a GPT-2 model name (gpt2-124M, gpt2-355M, gpt2-774M, gpt2-1558M)"
        )
    converted = gpt2_dir(size) / CONVERTED_NAME
    if not converted.is_file():
        raise CheckpointError(
            f"gpt2-{size} is not downloaded yet ({converted} missing); run: gptcli download --size {size}"
        )
    return converted


def downloaded_default() -> Path | None:
    """The converted GPT-2 124M, if downloaded: the fallback model for ``sample``."""
    p = gpt2_dir("124M") / CONVERTED_NAME
    return p if p.is_file() else None
