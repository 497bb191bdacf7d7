"""Importing and exporting weights: OpenAI's GPT-2 files, Hugging Face and the book's checkpoints.

This package owns where downloaded GPT-2 weights live (``$GPTCLI_HOME/gpt2/<size>``) and how a
``--model`` name resolves to a converted checkpoint; its modules own the formats: ``download``
(fetching OpenAI's files), ``tf_checkpoint`` (reading them), ``openai``, ``hf`` and ``book`` (the
name maps), ``convert`` (routing a file to its map) and ``common`` (what the maps share). Nothing
here prints: ``gptcli.commands.weights`` reports.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from gptcli.errors import CheckpointError
from gptcli.paths import gptcli_home

SIZES = ("124M", "355M", "774M", "1558M")
# ``convert --from`` and ``--to``, and the TensorFlow checkpoint readers of ``--reader``.
SOURCES = ("openai", "hf", "book", "gptcli")
TARGETS = ("gptcli", "hf", "gguf", "safetensors")
# ``convert --to gguf --outtype``: the type of the matrices in the GGUF file.
GGUF_OUTTYPES = ("f32", "f16", "bf16", "q8_0")
READERS = ("builtin", "tensorflow")
CONVERTED_NAME = "model.pth"
# The file of OpenAI's seven per size that gives the model's shape.
HPARAMS = "hparams.json"


def gpt2_dir(size: str) -> Path:
    return gptcli_home() / "gpt2" / size


def model_name_to_size(name: str) -> str | None:
    """'gpt2-124M' or '124M' -> '124M'; None for anything else."""
    size = name[5:] if name.lower().startswith("gpt2-") else name
    return size if size in SIZES else None


def resolve_model(name: str, *, warn: Callable[[str], None] | None = None) -> Path:
    """A checkpoint file for ``--model``/``--init``: a file; a run directory, whose newest
    checkpoint that loads is taken exactly as ``-c RUN`` takes it (``warn`` hears of any skipped);
    or a GPT-2 size name (its converted download)."""
    p = Path(name)
    try:
        if p.is_dir():
            from gptcli.checkpoint import resolve_checkpoint  # imports torch: only for a run directory

            return resolve_checkpoint(p, warn=warn)
        if p.exists():
            return p
    except OSError as e:  # a name too long for the file system
        raise CheckpointError(f"{name[:60]}...: not a usable path ({e.strerror})") from None
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
