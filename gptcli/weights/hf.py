"""Hugging Face ``transformers`` GPT-2 (``GPT2LMHeadModel``) <-> gptcli.

Hugging Face keeps OpenAI's names and its ``Conv1D`` keeps OpenAI's ``(in, out)`` weight layout,
so the map is a rename (drop the ``transformer.`` prefix) and a transpose of the four projection
weights. Files: ``config.json`` plus ``model.safetensors`` (or a sharded
``model.safetensors.index.json``) or the older ``pytorch_model.bin``.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from gptcli import checkpoint as ckpt
from gptcli import fsutil, jsontext
from gptcli.config import ModelConfig
from gptcli.errors import CheckpointError, SaveError, UsageError, os_error_reason
from gptcli.model import gptcli_shapes
from gptcli.tokenizer import EOT_TOKEN
from gptcli.weights.common import Progress, check_tensors, pad_rows, save_checkpoint

CONFIG = "config.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
# The only two differences from our layout: Conv1D weights are (in, out) where ours are (out, in),
# and HF's vocabulary is not padded.
_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
_VOCAB = ("wte.weight", "lm_head.weight")
# Attention-mask buffers that older transformers versions saved with the weights.
_BUFFERS = (".attn.bias", ".attn.masked_bias")


def config_from_hf(hf: dict[str, Any], *, where: str = CONFIG) -> ModelConfig:
    if hf.get("model_type", "gpt2") != "gpt2":
        raise CheckpointError(f"{where}: model_type {hf.get('model_type')!r} is not gpt2")
    # Settings under which HF's GPT-2 computes something other than ours: refuse, don't approximate.
    checks = {
        "activation_function": (hf.get("activation_function", "gelu_new"), ("gelu_new", "gelu_pytorch_tanh")),
        "layer_norm_epsilon": (hf.get("layer_norm_epsilon", 1e-5), (1e-5,)),
        "scale_attn_weights": (hf.get("scale_attn_weights", True), (True,)),
        "scale_attn_by_inverse_layer_idx": (hf.get("scale_attn_by_inverse_layer_idx", False), (False,)),
        "add_cross_attention": (hf.get("add_cross_attention", False), (False,)),
    }
    n_embd = hf.get("n_embd", 768)
    checks["n_inner"] = (hf.get("n_inner"), (None, 4 * n_embd))
    for key, (value, allowed) in checks.items():
        if value not in allowed:
            raise CheckpointError(
                f"{where}: {key}={value!r} is not supported (gptcli's GPT-2 needs {' or '.join(map(repr, allowed))})"
            )
    try:
        drop = float(hf.get("resid_pdrop", 0.1))
        return ModelConfig(
            vocab_size=int(hf.get("vocab_size", 50257)),
            context_length=int(hf.get("n_positions", hf.get("n_ctx", 1024))),
            emb_dim=int(n_embd),
            n_heads=int(hf.get("n_head", 12)),
            n_layers=int(hf.get("n_layer", 12)),
            drop_rate=drop,
            qkv_bias=True,
            tie_weights=bool(hf.get("tie_word_embeddings", True)),
        )
    except (UsageError, TypeError, ValueError) as e:
        raise CheckpointError(f"{where}: {e}") from None


def hf_config(cfg: ModelConfig) -> dict[str, Any]:
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.context_length,
        "n_ctx": cfg.context_length,
        "n_embd": cfg.emb_dim,
        "n_layer": cfg.n_layers,
        "n_head": cfg.n_heads,
        "n_inner": None,
        "activation_function": "gelu_new",
        "resid_pdrop": cfg.drop_rate,
        "embd_pdrop": cfg.drop_rate,
        "attn_pdrop": cfg.drop_rate,
        "layer_norm_epsilon": 1e-5,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "use_cache": True,
        "bos_token_id": 50256,
        "eos_token_id": 50256,
        "tie_word_embeddings": cfg.tie_weights,
    }


def hf_tokenizer_config(cfg: ModelConfig) -> dict[str, Any]:
    """``tokenizer_config.json``: GPT-2's tokenizer with the model's context as ``model_max_length``,
    so ``truncation=True`` cuts inputs to what ``wpe`` has rows for (without the file, transformers
    assumes no limit)."""
    return {
        "tokenizer_class": "GPT2Tokenizer",
        "model_max_length": cfg.context_length,
        "bos_token": EOT_TOKEN,
        "eos_token": EOT_TOKEN,
        "unk_token": EOT_TOKEN,
        "add_prefix_space": False,
        "add_bos_token": False,
    }


def _relayout(name: str, t: torch.Tensor, cfg: ModelConfig, *, to_hf: bool) -> torch.Tensor:
    """Tensor ``name`` in the other layout: Conv1D weights transposed (the same either way), the
    vocabulary rows cut to ``vocab_size`` (to HF) or zero-padded to ``padded_vocab_size`` (to us)."""
    if name.endswith(_CONV1D):
        t = t.t()
    if name in _VOCAB:
        t = t[: cfg.vocab_size] if to_hf else pad_rows(t, cfg.padded_vocab_size)
    return t.contiguous()


def hf_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """HF's tensors (without the ``transformer.`` prefix) and their shapes."""
    shapes = {}
    for name, shape in gptcli_shapes(cfg).items():
        if name == "lm_head.weight" and cfg.tie_weights:
            continue
        meta = torch.empty(shape, device="meta")  # shapes only: no memory
        shapes[name] = tuple(_relayout(name, meta, cfg, to_hf=True).shape)
    if not cfg.qkv_bias:
        for i in range(cfg.n_layers):
            shapes[f"h.{i}.attn.c_attn.bias"] = (3 * cfg.emb_dim,)
    return shapes


def _strip(name: str) -> str:
    return name[len("transformer.") :] if name.startswith("transformer.") else name


class _Source:
    """The tensors of HF weight files, read one at a time (safetensors) or memory-mapped (.bin)."""

    def __init__(self, path: Path):
        self.path = path
        self._where: dict[str, tuple[Path, str]] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._bin: dict[str, torch.Tensor] = {}
        try:
            if path.name.endswith(".index.json"):
                weight_map = json.loads(path.read_text(encoding="utf-8"))["weight_map"]
                files = sorted({path.parent / f for f in weight_map.values()})
            elif path.suffix == ".safetensors":
                files = [path]
            else:
                files = []
                obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
                if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
                    obj = obj["state_dict"]
                if not isinstance(obj, dict):
                    raise CheckpointError(f"{path}: not a state dict")
                self._bin = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
                for k, v in self._bin.items():
                    self._where[_strip(k)] = (path, k)
                    self._shapes[_strip(k)] = tuple(v.shape)
            for f in files:
                with safe_open(str(f), framework="pt") as st:
                    for k in st.keys():
                        self._where[_strip(k)] = (f, k)
                        self._shapes[_strip(k)] = tuple(st.get_slice(k).get_shape())
        except CheckpointError:
            raise
        except Exception as e:  # safetensors, json and pickle errors all mean "unreadable"
            raise CheckpointError(
                f"{path}: not readable Hugging Face weights ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
            ) from None

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return dict(self._shapes)

    def get(self, name: str) -> torch.Tensor:
        f, key = self._where[name]
        if self._bin:
            return self._bin[key]
        with safe_open(str(f), framework="pt") as st:
            return st.get_tensor(key)


def find_hf_files(src: str | Path) -> tuple[Path, Path]:
    """(config.json, weights file) from a directory or a weights file beside its config.json."""
    p = Path(src)
    directory = p if p.is_dir() else p.parent
    config = directory / CONFIG
    if p.is_dir():
        weights = next((p / n for n in WEIGHT_FILES if (p / n).is_file()), None)
        if weights is None:
            raise CheckpointError(f"{p}: no {', '.join(WEIGHT_FILES)} here")
    elif p.is_file():
        weights = p
    else:
        raise CheckpointError(f"{p}: not found")
    if not config.is_file():
        raise CheckpointError(f"{config}: missing (the model's shape is read from the config.json beside the weights)")
    return config, weights


def _json_kind(value: Any) -> str:
    return {list: "a list", str: "a string", bool: "a boolean", int: "a number", float: "a number"}.get(
        type(value), "null" if value is None else type(value).__name__
    )


def load_hf(src: str | Path, *, on_progress: Progress | None = None) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    config_path, weights = find_hf_files(src)
    try:
        raw = config_path.read_bytes()
    except OSError as e:
        raise CheckpointError(f"{config_path}: cannot read ({e.strerror})") from None
    hf = jsontext.loads(
        raw.removeprefix(b"\xef\xbb\xbf"), str(config_path), error=CheckpointError, what="not readable JSON"
    )
    if not isinstance(hf, dict):
        raise CheckpointError(
            f"{config_path}: expected a JSON object of GPT-2 settings (n_embd, n_layer...), got {_json_kind(hf)}"
        )
    cfg = config_from_hf(hf, where=str(config_path))
    source = _Source(weights)
    available = source.shapes()
    if cfg.tie_weights:  # a tied head may be saved too; it is the embedding again
        available.pop("lm_head.weight", None)
    expected = hf_shapes(cfg)
    check_tensors(available, expected, source=str(weights), ignore=lambda n: n.endswith(_BUFFERS))
    state: dict[str, torch.Tensor] = {}
    for done, name in enumerate(expected, 1):
        state[name] = _relayout(name, source.get(name).float(), cfg, to_hf=False)
        if on_progress is not None:
            on_progress(done, len(expected))
    if cfg.tie_weights:
        state["lm_head.weight"] = state["wte.weight"]
    return cfg, {k: state[k] for k in gptcli_shapes(cfg)}


def convert_hf(src: str | Path, out: str | Path, *, on_progress: Progress | None = None) -> Path:
    cfg, state = load_hf(src, on_progress=on_progress)
    return save_checkpoint(ckpt.weights_checkpoint(cfg, state, source="huggingface"), out)


def hf_state_dict(cfg: ModelConfig, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A gptcli state dict as ``GPT2LMHeadModel`` names it; each tensor its own storage."""
    out: dict[str, torch.Tensor] = {}
    for name in hf_shapes(cfg):
        if name not in state and name.endswith("attn.c_attn.bias"):
            t = torch.zeros(3 * cfg.emb_dim)  # no qkv bias is a zero bias
        else:
            t = state[name].detach().float().cpu()
        prefix = "" if name == "lm_head.weight" else "transformer."
        out[prefix + name] = _relayout(name, t, cfg, to_hf=True)
    return out


def export_hf(
    cfg: ModelConfig, state: dict[str, torch.Tensor], out_dir: str | Path, *, on_progress: Progress | None = None
) -> Path:
    """Write ``config.json``, ``model.safetensors`` and the tokenizer's files (``vocab.json``,
    ``merges.txt``, ``tokenizer_config.json``) into ``out_dir``, so
    ``GPT2LMHeadModel.from_pretrained(out_dir)`` and ``AutoTokenizer.from_pretrained(out_dir)`` load
    it offline, the tokenizer knowing the model's context length."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"invalid --output: {out_dir} is a file; --to hf writes a directory")
    made = next((p for p in reversed((out_dir, *out_dir.parents)) if not p.exists()), None)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        _write_export(cfg, state, out_dir, on_progress=on_progress)
    except BaseException as e:  # a read-only or full disk, Ctrl-C: no folder it made is left half written
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)
        if isinstance(e, OSError):
            raise SaveError(f"{out_dir}: could not write the export ({os_error_reason(e)})") from None
        raise
    return out_dir


def _write_export(
    cfg: ModelConfig, state: dict[str, torch.Tensor], out_dir: Path, *, on_progress: Progress | None
) -> None:
    tensors = hf_state_dict(cfg, state)
    if on_progress is not None:
        on_progress(len(tensors), len(tensors))
    with fsutil.atomic_path(out_dir / "model.safetensors") as tmp:
        # safetensors writes through a private temporary file (mode 0600); created here first, the
        # file's mode is the one every new file gets (0666 less the umask), restored afterwards.
        tmp.touch()
        mode = stat.S_IMODE(tmp.stat().st_mode)
        save_file(tensors, str(tmp), metadata={"format": "pt"})
        os.chmod(tmp, mode)
    fsutil.atomic_write(out_dir / CONFIG, json.dumps(hf_config(cfg), indent=2) + "\n")
    # GPT-2's tokenizer files under Hugging Face's names: encoder.json is vocab.json and
    # vocab.bpe is merges.txt.
    assets = resources.files("gptcli.assets")
    for src_name, dst_name in (("encoder.json", "vocab.json"), ("vocab.bpe", "merges.txt")):
        with resources.as_file(assets / src_name) as src_path:
            with fsutil.atomic_path(out_dir / dst_name) as tmp:
                shutil.copyfile(src_path, tmp)
    fsutil.atomic_write(out_dir / TOKENIZER_CONFIG, json.dumps(hf_tokenizer_config(cfg), indent=2) + "\n")


# ---------------------------------------------------------------------------------------------
# A Hugging Face folder given as a model (``--model DIR``, ``--init DIR``)

CONVERTED_ROOT = "converted"
_STAMP = "source.json"


def _folder_stamp(folder: Path) -> dict[str, Any]:
    """What the conversion of ``folder`` depends on: every file in it, by size and time (a snapshot
    in Hugging Face's cache links to its blobs; these are the blobs' own)."""
    files = {}
    for f in sorted(folder.iterdir()):
        if f.is_file():
            st = f.stat()
            files[f.name] = [st.st_size, st.st_mtime_ns]
    return {"folder": str(folder), "files": files}


def converted_folder(folder: str | Path, *, on_progress: Progress | None = None) -> Path:
    """The gptcli checkpoint of a Hugging Face folder, converted on first use and kept under
    ``$GPTCLI_HOME/converted/<name>-<hash of its path>/model.pth`` with a stamp of the files it
    came from: a later use reads that file, and a changed folder is converted again."""
    import hashlib

    from gptcli.paths import gptcli_home

    folder = Path(folder).resolve()
    key = hashlib.sha256(str(folder).encode()).hexdigest()[:12]
    cache = gptcli_home() / CONVERTED_ROOT / f"{folder.name}-{key}"
    out, stamp_path = cache / "model.pth", cache / _STAMP
    stamp = _folder_stamp(folder)
    try:
        if out.is_file() and json.loads(stamp_path.read_text(encoding="utf-8")) == stamp:
            return out
    except (OSError, ValueError):
        pass  # no stamp, or a damaged one: convert again
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SaveError(f"{cache}: cannot convert {folder} here ({os_error_reason(e)})") from None
    cfg, state = load_hf(folder, on_progress=on_progress)
    save_checkpoint(ckpt.weights_checkpoint(cfg, state, source="huggingface", hf_folder=str(folder)), out)
    fsutil.atomic_write(stamp_path, json.dumps(stamp, indent=2) + "\n")
    return out
