"""``gptcli convert``: detect what a file is, and route it to the right map.

Into gptcli: OpenAI's TensorFlow checkpoint, Hugging Face's GPT-2, the book's ``model.pth`` /
``model_and_optimizer.pth``. Out to Hugging Face or GGUF (llama.cpp, Ollama): any of those, or a
gptcli checkpoint or run. A gptcli checkpoint or run to a weights-only file (``--weights-only``,
a ``.pth``; ``--to safetensors``): the model and its config, without the optimizer's state.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from gptcli import checkpoint as ckpt
from gptcli import fsutil
from gptcli.config import ModelConfig
from gptcli.errors import CheckpointError, UsageError
from gptcli.model import gptcli_shapes
from gptcli.outputs import check_output_dir, check_output_file
from gptcli.rundir import is_run_dir
from gptcli.tasks import FINETUNE_RECORDED, recorded_kind
from gptcli.weights import CONVERTED_NAME, SOURCES, TARGETS, model_name_to_size, resolve_model
from gptcli.weights.book import book_to_gptcli, convert_book, infer_config, load_book_file
from gptcli.weights.common import Progress, check_tensors
from gptcli.weights.hf import convert_hf, export_hf, load_hf
from gptcli.weights.openai import convert_openai, load_openai


def _is_gptcli_file(path: Path) -> bool:
    if ckpt.is_safetensors(path):
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                return (f.metadata() or {}).get("format") == ckpt.FORMAT
        except Exception:
            return False
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
    if name.endswith(".safetensors") and _is_gptcli_file(src):
        return "gptcli"  # a weights-only file from convert --to safetensors
    if name.endswith((".safetensors", ".safetensors.index.json", ".bin")):
        return "hf"
    if name.endswith((".pth", ".pt")):
        return "gptcli" if _is_gptcli_file(src) else "book"
    raise UsageError(f"{src}: cannot tell the format from the name; pass --from openai, hf or book")


def default_output(src: Path, source: str, target: str, *, weights_only: bool = False) -> Path:
    base = src if src.is_dir() else src.with_suffix("")
    if target == "hf":
        return base.with_name(base.name + "-hf")
    if target == "gguf":
        return base.with_name(base.name + ".gguf")
    if target == "safetensors":
        return base.with_name(base.name + ckpt.SAFETENSORS_SUFFIX)
    if weights_only:
        return base.with_name(base.name + "-weights.pth")
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


def merged_checkpoint(obj: dict, path: Path) -> dict:
    """``--merge-lora``: an instruct run becomes a plain weights checkpoint (``--model``,
    ``--init``, ``--to hf`` all take it) that remembers its template (``finetuned_from``), so
    ``sample --instruction`` formats a prompt as the run did; a classifier stays a classifier (its
    head has a bias and one output per label), now with every weight in the file and no base to
    look up."""
    model_cfg, state, ft = merged_finetune(obj, path)
    origin = {"kind": obj["kind"], "checkpoint": str(path), "template": ft["info"].get("template")}
    if recorded_kind(obj["kind"]).generates_text:  # a language model's head: plain weights
        return ckpt.weights_checkpoint(model_cfg, state, finetuned_from=origin)
    cfg = {**ft["config"], "lora_rank": 0, "trainable": "all"}
    info = {**ft["info"], "lora": None}
    return ckpt.weights_checkpoint(model_cfg, state, kind=obj["kind"], train_config=cfg, finetune=info)


def weights_only_checkpoint(src: Path) -> dict:
    """The weights-only checkpoint of a gptcli checkpoint or run: its model (a finetune's merged,
    ``merged_checkpoint``) and config, no optimizer state or progress; where it came from in
    ``source``."""
    path = ckpt.resolve_checkpoint(src)
    obj = ckpt.load_checkpoint(path)
    if obj.get("kind") in FINETUNE_RECORDED:
        return merged_checkpoint(obj, path)
    cfg = ckpt.read_model_config(obj, path)
    ckpt.check_state_fits(cfg, obj["model_state_dict"], path)
    keep = {k: obj[k] for k in ("source", "finetuned_from") if k in obj}
    if obj.get("kind") != "weights":
        step = obj.get("progress", {}).get("step")
        keep["source"] = {"kind": obj.get("kind"), "checkpoint": str(path), "step": step}
    return ckpt.weights_checkpoint(cfg, dict(obj["model_state_dict"]), **keep)


def instruct_template(obj: dict) -> Any | None:
    """The prompt template (``gptcli.finetune.instruct.Template``) of a weights checkpoint made
    from an instruct run, None for any other."""
    origin = obj.get("finetuned_from")
    if obj.get("kind") != "weights" or not isinstance(origin, dict) or origin.get("kind") != "instruct":
        return None
    from gptcli.finetune.instruct import Template

    return Template(origin.get("template"))


def _write_merged(obj: dict, path: Path, out_path: Path) -> Path:
    return ckpt.atomic_save(merged_checkpoint(obj, path), out_path)


def _gptcli_for_gguf(src: Path) -> tuple[ModelConfig, dict[str, torch.Tensor], Any | None, str]:
    """A gptcli checkpoint or run, made ready for GGUF: its config, its weights (a LoRA run's
    merged), an instruct run's template and a name; a classifier is refused."""
    path = ckpt.resolve_checkpoint(src)
    obj = ckpt.load_checkpoint(path)
    kind = recorded_kind(obj.get("kind"))
    if kind is not None and not kind.generates_text:
        raise UsageError(
            f"{src}: is a classifier; llama.cpp has no classification head for GPT-2, so --to gguf cannot hold it"
        )
    weights = weights_only_checkpoint(path)
    run = path.parent.parent if path.parent.name == "checkpoints" else None
    name = (run or path.with_suffix("")).name
    return ckpt.read_model_config(weights, path), weights["model_state_dict"], instruct_template(weights), name


def _write_gguf(
    cfg: ModelConfig,
    state: dict[str, torch.Tensor],
    out_path: Path,
    *,
    template: Any | None,
    name: str,
    outtype: str,
    ollama: bool,
    force: bool,
    on_progress: Progress | None,
) -> Path:
    """The GGUF file, and with ``ollama`` an Ollama ``Modelfile`` beside it."""
    from gptcli.weights.gguf import export_gguf, modelfile

    if ollama:  # its problems (a template a Modelfile cannot quote, a file there) come before any work
        text = modelfile(out_path.name, cfg, template)
        model_file = out_path.with_name("Modelfile")
        check_output_file(model_file, flag=None, force=force)
    out = export_gguf(cfg, state, out_path, outtype=outtype, template=template, name=name, on_progress=on_progress)
    if ollama:
        fsutil.atomic_write(model_file, text)
    return out


def _load_other(
    src: Path,
    source: str,
    *,
    reader: str,
    n_heads: int | None,
    drop_rate: float,
    on_progress: Progress | None,
    on_note: Callable[[str], None] | None,
) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """Any source but a gptcli checkpoint, brought into memory as (config, state)."""
    if source == "openai":
        return load_openai(src, reader=reader, on_progress=on_progress)
    if source == "book":
        sd, _ = load_book_file(src)
        cfg = infer_config(sd, n_heads=n_heads, drop_rate=drop_rate, source=str(src), on_note=on_note)
        return cfg, book_to_gptcli(sd, cfg, source=str(src), on_progress=on_progress)
    return load_hf(src, on_progress=on_progress)


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
    weights_only: bool = False,
    outtype: str = "f32",
    ollama: bool = False,
) -> Path:
    """Convert ``src`` and return the path written. ``merge_lora``: a finetune run's model with
    its LoRA adapters folded into the weights. ``weights_only`` (and ``target`` safetensors): the
    model and its config alone. ``outtype`` and ``ollama``: ``--to gguf``'s matrix type and its
    Ollama Modelfile. An existing output (a file, or a folder that holds files) is replaced only
    with ``force``; a run's checkpoint or folder never is (``gptcli.outputs``). ``on_note``: what
    the conversion had to assume (a book state dict's head count)."""
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
    out_path = Path(out) if out is not None else default_output(src, source, target, weights_only=weights_only)
    if out_path.exists() and src.exists() and out_path.resolve() == src.resolve():
        raise UsageError(f"invalid --output: {out_path} is the input; choose another path")
    flag = "-o" if out is not None else None
    if target != "hf":
        _check_file_output(out_path)
        check_output_file(out_path, flag=flag, force=force)
    else:
        check_output_dir(out_path, flag=flag, force=force)
    if merge_lora and (source != "gptcli" or _finetune_checkpoint(src) is None):
        raise UsageError(f"invalid --merge-lora: {src} is not a finetune run or checkpoint (gptcli finetune makes one)")
    other = dict(reader=reader, n_heads=n_heads, drop_rate=drop_rate, on_progress=on_progress, on_note=on_note)
    if target == "gguf":
        if source == "gptcli":
            cfg, state, template, name = _gptcli_for_gguf(src)
        else:
            (cfg, state), template, name = _load_other(src, source, **other), None, src.with_suffix("").name
        return _write_gguf(
            cfg, state, out_path, template=template, name=name, outtype=outtype, ollama=ollama, force=force,
            on_progress=on_progress,
        )  # fmt: skip
    if target == "safetensors" or weights_only:
        if source == "gptcli":
            obj = weights_only_checkpoint(src)
        else:
            cfg, state = _load_other(src, source, **other)
            obj = ckpt.weights_checkpoint(cfg, state, source=source)
        return ckpt.save_weights(obj, out_path, safetensors=target == "safetensors")
    finetuned = _finetune_checkpoint(src) if source == "gptcli" else None
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
        raise UsageError(
            f"{src}: is already a gptcli checkpoint (use --weights-only for the model alone, or --to hf, gguf or "
            "safetensors to export it)"
        )

    # target == "hf": bring any source into memory as (config, state), then export
    if source == "hf":
        raise UsageError(f"{src}: is already in Hugging Face's format")
    cfg, state = _load_gptcli(src) if source == "gptcli" else _load_other(src, source, **other)
    return export_hf(cfg, state, out_path, on_progress=on_progress)
