"""OpenAI's GPT-2 TensorFlow checkpoints -> gptcli: their variables' shapes and names, and the import.

OpenAI's layout (``model/h3/attn/c_attn/w`` ...) is GPT-2's original one: the same names as
ours, but each projection is a 1x1 convolution, ``[1, in, out]``, where ours is an
``nn.Linear`` weight ``(out, in)``. So the map is a rename, a squeeze and a transpose; the fused
q|k|v columns of ``c_attn`` keep their order. The output head is tied to ``wte``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from gptcli import checkpoint as ckpt
from gptcli import jsontext
from gptcli.config import ModelConfig
from gptcli.errors import CheckpointError, UsageError
from gptcli.model import gptcli_shapes
from gptcli.weights import HPARAMS
from gptcli.weights.common import Progress, check_tensors, pad_rows, save_checkpoint
from gptcli.weights.tf_checkpoint import open_checkpoint

# Sane bounds for every hparam, far above GPT-2 1558M (48 layers, 1600 wide, 1024 context), so that
# a hostile or garbled hparams.json (n_layer: 1000000) is refused before any shape table or size
# is computed from it.
HPARAM_LIMITS = {"n_vocab": 1_000_000, "n_ctx": 65_536, "n_embd": 16_384, "n_head": 1_024, "n_layer": 256}


def config_from_hparams(hp: dict, *, where: str = HPARAMS) -> ModelConfig:
    values = {}
    for key, limit in HPARAM_LIMITS.items():
        if key not in hp:
            raise CheckpointError(f"{where}: needs integer n_vocab, n_ctx, n_embd, n_head and n_layer (no {key!r})")
        v = hp[key]
        if not isinstance(v, int) or isinstance(v, bool):
            raise CheckpointError(f"{where}: {key} must be an integer, got {v!r:.40}")
        if not 1 <= v <= limit:
            raise CheckpointError(f"{where}: {key} is {v}, outside 1..{limit:,}")
        values[key] = v
    if values["n_embd"] % values["n_head"]:
        raise CheckpointError(f"{where}: n_head {values['n_head']} does not divide n_embd {values['n_embd']}")
    shape = {
        "vocab_size": values["n_vocab"],
        "context_length": values["n_ctx"],
        "emb_dim": values["n_embd"],
        "n_heads": values["n_head"],
        "n_layers": values["n_layer"],
    }
    try:
        return ModelConfig(**shape, qkv_bias=True, tie_weights=True)
    except UsageError as e:
        raise CheckpointError(f"{where}: {e}") from None


def openai_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every variable of an OpenAI GPT-2 checkpoint of this shape."""
    C = cfg.emb_dim
    shapes: dict[str, tuple[int, ...]] = {"model/wte": (cfg.vocab_size, C), "model/wpe": (cfg.context_length, C)}
    for i in range(cfg.n_layers):
        p = f"model/h{i}/"
        for ln in ("ln_1", "ln_2"):
            shapes[p + ln + "/g"] = (C,)
            shapes[p + ln + "/b"] = (C,)
        shapes[p + "attn/c_attn/w"] = (1, C, 3 * C)
        shapes[p + "attn/c_attn/b"] = (3 * C,)
        shapes[p + "attn/c_proj/w"] = (1, C, C)
        shapes[p + "attn/c_proj/b"] = (C,)
        shapes[p + "mlp/c_fc/w"] = (1, C, 4 * C)
        shapes[p + "mlp/c_fc/b"] = (4 * C,)
        shapes[p + "mlp/c_proj/w"] = (1, 4 * C, C)
        shapes[p + "mlp/c_proj/b"] = (C,)
    shapes["model/ln_f/g"] = (C,)
    shapes["model/ln_f/b"] = (C,)
    return shapes


def data_size(cfg: ModelConfig) -> int:
    """Bytes of ``model.ckpt.data-00000-of-00001`` for this shape: float32 tensors back to back
    (497,759,232 for 124M), whoever wrote it."""
    return 4 * sum(int(np.prod(s)) for s in openai_shapes(cfg).values())


def gptcli_name(openai_name: str) -> str:
    """``model/h3/attn/c_attn/w`` -> ``h.3.attn.c_attn.weight``."""
    parts = openai_name.split("/")[1:]
    if parts[0].startswith("h") and parts[0][1:].isdigit():
        parts[0] = f"h.{parts[0][1:]}"
    leaf = {"w": "weight", "b": "bias", "g": "weight"}[parts[-1]] if parts[-1] in ("w", "b", "g") else parts[-1]
    return ".".join(parts[:-1] + [leaf]) if parts[0] not in ("wte", "wpe") else f"{parts[0]}.weight"


def _is_not_model(name: str) -> bool:
    # Training left-overs a fine-tuned checkpoint may hold: global_step, Adam's slots and powers.
    return not name.startswith("model/") or name.endswith(("/Adam", "/Adam_1"))


def read_hparams(directory: Path) -> ModelConfig:
    path = directory / HPARAMS
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(
            f"{path}: missing (OpenAI's checkpoints come with it; the model's shape is read from it)"
        ) from None
    except OSError as e:
        raise CheckpointError(f"{path}: not readable JSON ({e})") from None
    hp = jsontext.loads(raw.removeprefix(b"\xef\xbb\xbf"), str(path), error=CheckpointError, what="not readable JSON")
    if not isinstance(hp, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return config_from_hparams(hp, where=str(path))


def load_openai(
    src: str | Path, *, reader: str = "builtin", on_progress: Progress | None = None
) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """Read an OpenAI GPT-2 checkpoint (a directory, or a prefix beside hparams.json) into a
    gptcli config and state dict. Every tensor is read once and kept once."""
    src = Path(src)
    with open_checkpoint(src, reader) as r:
        cfg = read_hparams(src if src.is_dir() else r.prefix.parent)
        expected = openai_shapes(cfg)
        check_tensors({n: r.shape(n) for n in r.names()}, expected, source=str(r.prefix), ignore=_is_not_model)
        entries = getattr(r, "entries", None)
        order = sorted(expected, key=lambda n: entries[n].offset) if entries else list(expected)
        state: dict[str, torch.Tensor] = {}
        for done, name in enumerate(order, 1):
            t = torch.from_numpy(r.read(name)).float()
            if name.endswith("/w"):  # conv1d [1, in, out] -> linear (out, in)
                t = t.squeeze(0).t().contiguous()
            if name == "model/wte":
                t = pad_rows(t, cfg.padded_vocab_size)
            state[gptcli_name(name)] = t
            if on_progress is not None:
                on_progress(done, len(order))
    state["lm_head.weight"] = state["wte.weight"]  # tied: one tensor, saved once
    return cfg, {k: state[k] for k in gptcli_shapes(cfg)}


def convert_openai(
    src: str | Path, out: str | Path, *, reader: str = "builtin", on_progress: Progress | None = None
) -> Path:
    cfg, state = load_openai(src, reader=reader, on_progress=on_progress)
    return save_checkpoint(ckpt.weights_checkpoint(cfg, state, source="openai"), out)
