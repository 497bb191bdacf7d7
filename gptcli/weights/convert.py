"""``gptcli convert``: detect what a file is, and route it to the right map.

Into gptcli: OpenAI's TensorFlow checkpoint, Hugging Face's GPT-2, the book's ``model.pth`` /
``model_and_optimizer.pth``. Out to Hugging Face: any of those, or a gptcli checkpoint or run.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from pathlib import Path

import torch

from gptcli import checkpoint as ckpt
from gptcli.config import ModelConfig
from gptcli.errors import CheckpointError, UsageError
from gptcli.model import gptcli_shapes
from gptcli.outputs import check_output_dir, check_output_file
from gptcli.rundir import is_run_dir
from gptcli.tasks import FINETUNE_RECORDED, recorded_kind
from gptcli.weights import CONVERTED_NAME, SOURCES, TARGETS, model_name_to_size, resolve_model
from gptcli.weights.book import book_to_gptcli, convert_book, infer_config, load_book_file
from gptcli.weights.common import Progress, check_tensors
from gptcli.weights.hf import convert_hf, export_hf
from gptcli.weights.openai import convert_openai, load_openai


def _is_gptcli_file(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as z:
            if not any(n.endswith("/data.pkl") for n in z.namelist()):
                return False
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        return False
    return isinstance(obj, dict) and obj.get("format") == ckpt.FORMAT


def detect_format(src: Path) -> str:
    """openai, hf, book or gptcli, from the files' names (and for a .pth, its format marker)."""
    if src.is_dir():
        if (src / "hparams.json").is_file() or list(src.glob("*.index")):
            return "openai"
        if (src / "config.json").is_file():
            return "hf"
        if is_run_dir(src):
            return "gptcli"
        raise UsageError(
            f"{src}: cannot tell what this folder holds (no hparams.json, config.json or checkpoints/); name the file"
        )
    if not src.exists():
        raise CheckpointError(f"{src}: not found")
    name = src.name
    if name.endswith(".index") or ".data-0" in name:
        return "openai"
    if name.endswith((".safetensors", ".safetensors.index.json", ".bin")):
        return "hf"
    if name.endswith((".pth", ".pt")):
        return "gptcli" if _is_gptcli_file(src) else "book"
    raise UsageError(f"{src}: cannot tell the format from the name; pass --from openai, hf or book")


def default_output(src: Path, source: str, target: str) -> Path:
    if target == "hf":
        base = src if src.is_dir() else src.with_suffix("")
        return base.with_name(base.name + "-hf")
    if source == "openai":
        return (src if src.is_dir() else src.parent) / CONVERTED_NAME
    if source == "hf":
        return (src if src.is_dir() else src.parent) / "gptcli-model.pth"
    return src.with_name(src.stem + "-gptcli.pth")


def _check_file_output(out_path: Path) -> None:
    """A .pth is written to a file name: a directory there is a usage error, found before any work."""
    if out_path.is_dir():
        raise UsageError(f"{out_path}: is a directory; give a file name (e.g. -o {out_path / 'model.pth'})")


def _load_gptcli(src: Path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    path = ckpt.resolve_checkpoint(src)
    obj = ckpt.load_checkpoint(path)
    cfg = ckpt.read_model_config(obj, path)
    state = obj["model_state_dict"]
    check_tensors({k: tuple(v.shape) for k, v in state.items()}, gptcli_shapes(cfg), source=str(path))
    return cfg, state


def _finetune_checkpoint(src: Path) -> tuple[Path, dict] | None:
    """The checkpoint of a gptcli file or run, loaded, when it is a finetune one; else None."""
    path = ckpt.resolve_checkpoint(src)
    obj = ckpt.load_checkpoint(path)
    return (path, obj) if obj.get("kind") in FINETUNE_RECORDED else None


def merged_finetune(obj: dict, path: Path) -> tuple[ModelConfig, dict[str, torch.Tensor], dict]:
    """A finetune checkpoint's model with any LoRA adapters folded into its weights: the config,
    the plain state dict (every tensor, as a full finetune saves it) and the finetune settings."""
    from gptcli.finetune.lora import merge_lora
    from gptcli.tasks.finetune import model_from_finetune_checkpoint

    model, cfg, info = model_from_finetune_checkpoint(obj, path)
    merge_lora(model)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return model.cfg, state, {"config": cfg.to_dict(), "info": info}


def _write_merged(obj: dict, path: Path, out_path: Path) -> Path:
    """``--merge-lora``: an instruct run becomes a plain weights checkpoint (``--model``,
    ``--init``, ``--to hf`` all take it); a classifier stays a classifier (its head has a bias and
    one output per label), now with every weight in the file and no base to look up."""
    model_cfg, state, ft = merged_finetune(obj, path)
    origin = {"kind": obj["kind"], "checkpoint": str(path), "template": ft["info"].get("template")}
    if recorded_kind(obj["kind"]).generates_text:  # a language model's head: plain weights
        return ckpt.atomic_save(ckpt.weights_checkpoint(model_cfg, state, finetuned_from=origin), out_path)
    cfg = {**ft["config"], "lora_rank": 0, "trainable": "all"}
    info = {**ft["info"], "lora": None}
    return ckpt.atomic_save(
        ckpt.weights_checkpoint(model_cfg, state, kind=obj["kind"], train_config=cfg, finetune=info), out_path
    )


def convert(
    src: str | Path,
    out: str | Path | None = None,
    *,
    source: str | None = None,
    target: str = "gptcli",
    reader: str = "builtin",
    n_heads: int | None = None,
    drop_rate: float = 0.1,
    data: list[str | Path] | None = None,
    on_progress: Progress | None = None,
    merge_lora: bool = False,
    force: bool = False,
    on_note: Callable[[str], None] | None = None,
) -> Path:
    """Convert ``src`` and return the path written. ``merge_lora``: a finetune run's model with
    its LoRA adapters folded into the weights. An existing output (a file, or a folder that
    holds files) is replaced only with ``force``; a run's checkpoint or folder never is
    (``gptcli.outputs``). ``on_note``: what the conversion had to assume (a book state dict's
    head count)."""
    src = Path(src)
    if target not in TARGETS:
        raise UsageError(f"invalid --to: {target!r} (choose from {', '.join(TARGETS)})")
    if source is not None and source not in SOURCES:
        raise UsageError(f"invalid --from: {source!r} (choose from openai, hf, book)")
    if not src.exists():
        if model_name_to_size(str(src)) is None:
            raise CheckpointError(f"{src}: not found")
        src, source = resolve_model(str(src)), source or "gptcli"  # gpt2-124M: the converted cache file
    source = source or detect_format(src)
    if data and not (source == "book" and target == "gptcli"):
        raise UsageError(
            "invalid --data: only a book checkpoint with optimizer state, converted to gptcli, keeps training text"
        )
    out_path = Path(out) if out is not None else default_output(src, source, target)
    if out_path.exists() and src.exists() and out_path.resolve() == src.resolve():
        raise UsageError(f"invalid --output: {out_path} is the input; choose another path")
    flag = "-o" if out is not None else None
    if target == "gptcli":
        _check_file_output(out_path)
        check_output_file(out_path, flag=flag, force=force)
    else:
        check_output_dir(out_path, flag=flag, force=force)
    finetuned = _finetune_checkpoint(src) if source == "gptcli" else None
    if merge_lora and finetuned is None:
        raise UsageError(f"invalid --merge-lora: {src} is not a finetune run or checkpoint (gptcli finetune makes one)")
    if finetuned is not None:
        path, obj = finetuned
        if target == "gptcli":
            if not merge_lora:
                raise UsageError(f"{src}: is already a gptcli checkpoint (use --merge-lora to fold its adapters in)")
            if out is None:
                out_path = (path.parent.parent if path.parent.name == "checkpoints" else path.parent) / "merged.pth"
                _check_file_output(out_path)
                check_output_file(out_path, flag=None, force=force)
            return _write_merged(obj, path, out_path)
        if not recorded_kind(obj["kind"]).generates_text:  # a classifier's head
            raise UsageError(
                f"{src}: is a classifier (a head of {len(obj['finetune']['labels'])} labels), which Hugging Face's "
                "GPT-2 language model cannot hold; write a .pth with --merge-lora instead"
            )
        model_cfg, state, _ = merged_finetune(obj, path)
        return export_hf(model_cfg, state, out_path, on_progress=on_progress)

    if target == "gptcli":
        if source == "openai":
            return convert_openai(src, out_path, reader=reader, on_progress=on_progress)
        if source == "hf":
            return convert_hf(src, out_path, on_progress=on_progress)
        if source == "book":
            return convert_book(
                src, out_path, n_heads=n_heads, drop_rate=drop_rate, data=data, on_progress=on_progress, on_note=on_note
            )
        raise UsageError(f"{src}: is already a gptcli checkpoint (use --to hf to export it)")

    # target == "hf": bring any source into memory as (config, state), then export
    if source == "gptcli":
        cfg, state = _load_gptcli(src)
    elif source == "openai":
        cfg, state = load_openai(src, reader=reader, on_progress=on_progress)
    elif source == "book":
        sd, _ = load_book_file(src)
        cfg = infer_config(sd, n_heads=n_heads, drop_rate=drop_rate, source=str(src), on_note=on_note)
        state = book_to_gptcli(sd, cfg, source=str(src), on_progress=on_progress)
    else:
        raise UsageError(f"{src}: is already in Hugging Face's format")
    return export_hf(cfg, state, out_path, on_progress=on_progress)
