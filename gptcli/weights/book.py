"""The book's checkpoints (``llms_from_scratch``'s ``GPTModel``) -> gptcli, weights and AdamW state.

The book names (``tok_emb``, ``trf_blocks.N.att.W_query``, ``norm1.scale``, ``ff.layers.0``,
``out_head``) map one to one onto ours, except that its three query/key/value projections are our
one fused ``c_attn`` (their rows stacked q|k|v) and our vocabulary is padded to a multiple of 64.
AdamW's per-parameter moments get the same treatment, so ``gptcli resume`` continues a notebook
run with the optimizer as it was: the book's ``model_and_optimizer.pth`` becomes a training
checkpoint. A bare ``model.pth`` (a state dict) becomes a weights-only one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from gptcli import checkpoint as ckpt
from gptcli.config import PRESETS, ModelConfig, TrainConfig
from gptcli.errors import CheckpointError, DataError, UsageError
from gptcli.model import gptcli_param_names, gptcli_shapes
from gptcli.weights.common import (
    Progress,
    check_tensors,
    pad_rows,
    save_checkpoint,
)

_QKV = ("W_query", "W_key", "W_value")
_WRAPPER_PREFIXES = ("_orig_mod.", "module.")  # torch.compile and DataParallel


def book_sources(cfg: ModelConfig) -> dict[str, list[str]]:
    """For each gptcli tensor, the book tensors it is made of (stacked along rows when several)."""
    m = {"wte.weight": ["tok_emb.weight"], "wpe.weight": ["pos_emb.weight"]}
    for i in range(cfg.n_layers):
        b, g = f"trf_blocks.{i}.", f"h.{i}."
        m[g + "ln_1.weight"] = [b + "norm1.scale"]
        m[g + "ln_1.bias"] = [b + "norm1.shift"]
        m[g + "attn.c_attn.weight"] = [f"{b}att.{w}.weight" for w in _QKV]
        if cfg.qkv_bias:
            m[g + "attn.c_attn.bias"] = [f"{b}att.{w}.bias" for w in _QKV]
        m[g + "attn.c_proj.weight"] = [b + "att.out_proj.weight"]
        m[g + "attn.c_proj.bias"] = [b + "att.out_proj.bias"]
        m[g + "ln_2.weight"] = [b + "norm2.scale"]
        m[g + "ln_2.bias"] = [b + "norm2.shift"]
        m[g + "mlp.c_fc.weight"] = [b + "ff.layers.0.weight"]
        m[g + "mlp.c_fc.bias"] = [b + "ff.layers.0.bias"]
        m[g + "mlp.c_proj.weight"] = [b + "ff.layers.2.weight"]
        m[g + "mlp.c_proj.bias"] = [b + "ff.layers.2.bias"]
    m["ln_f.weight"] = ["final_norm.scale"]
    m["ln_f.bias"] = ["final_norm.shift"]
    m["lm_head.weight"] = ["tok_emb.weight"] if cfg.tie_weights else ["out_head.weight"]
    return m


def book_param_names(cfg: ModelConfig) -> list[str]:
    """``GPTModel(cfg).named_parameters()`` order: the indices of the book's AdamW state."""
    names = ["tok_emb.weight", "pos_emb.weight"]
    for i in range(cfg.n_layers):
        b = f"trf_blocks.{i}."
        for w in _QKV:
            names.append(f"{b}att.{w}.weight")
            if cfg.qkv_bias:
                names.append(f"{b}att.{w}.bias")
        names += [b + "att.out_proj.weight", b + "att.out_proj.bias"]
        names += [b + f"ff.layers.{j}.{p}" for j in (0, 2) for p in ("weight", "bias")]
        names += [b + f"norm{j}.{p}" for j in (1, 2) for p in ("scale", "shift")]
    names += ["final_norm.scale", "final_norm.shift"]
    if not cfg.tie_weights:
        names.append("out_head.weight")
    return names


def book_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    C, V = cfg.emb_dim, cfg.vocab_size
    shapes: dict[str, tuple[int, ...]] = {}
    for ours, shape in gptcli_shapes(cfg).items():
        for name in book_sources(cfg)[ours]:
            if name in ("tok_emb.weight", "out_head.weight"):
                shapes[name] = (V, C)
            elif len(book_sources(cfg)[ours]) == 3:
                shapes[name] = (shape[0] // 3, *shape[1:])
            else:
                shapes[name] = shape
    return shapes


def _strip_wrappers(sd: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in sd.items():
        for p in _WRAPPER_PREFIXES:
            if k.startswith(p):
                k = k[len(p) :]
        out[k] = v
    return out


def gpt2_heads(emb_dim: int, n_layers: int) -> tuple[str, int] | None:
    """(preset name, head count) of the GPT-2 size with this width and depth, if it is one."""
    for name, p in PRESETS.items():
        if (p["emb_dim"], p["n_layers"]) == (emb_dim, n_layers):
            return name, p["n_heads"]
    return None


def infer_config(
    sd: dict[str, torch.Tensor],
    *,
    n_heads: int | None,
    drop_rate: float,
    source: str,
    on_note: Callable[[str], None] | None = None,
) -> ModelConfig:
    """The architecture from the tensors' shapes. The head count is not in them: without
    ``n_heads`` it is taken only for the book's four GPT-2 sizes (said through ``on_note``); any
    other shape is refused, since a wrong count loads without error and changes every output."""
    for key in ("tok_emb.weight", "pos_emb.weight"):
        if key not in sd:
            raise CheckpointError(
                f"{source}: not a book GPTModel state dict (no {key}; has {', '.join(list(sd)[:4])} ...)"
            )
    V, C = sd["tok_emb.weight"].shape
    T = sd["pos_emb.weight"].shape[0]
    layers = {int(k.split(".")[1]) for k in sd if k.startswith("trf_blocks.") and k.split(".")[1].isdigit()}
    n_layers = max(layers) + 1 if layers else 0
    if n_heads is None:
        known = gpt2_heads(int(C), n_layers)
        if known is None:
            raise UsageError(
                f"{source}: a state dict does not record its head count, and emb_dim {C} with {n_layers} layers "
                "is not one of GPT-2's sizes; give it with --n-heads N"
            )
        n_heads = known[1]
        if on_note is not None:
            on_note(
                f"{n_heads} attention heads, as GPT-2 {known[0].removeprefix('gpt2-')} (emb_dim {C}, {n_layers} layers): "
                "a state dict does not record them; --n-heads N sets another count"
            )
    head = sd.get("out_head.weight")
    tied = head is None or (
        head.data_ptr() == sd["tok_emb.weight"].data_ptr() and head.shape == sd["tok_emb.weight"].shape
    )
    try:
        return ModelConfig(
            vocab_size=int(V),
            context_length=int(T),
            emb_dim=int(C),
            n_heads=n_heads,
            n_layers=n_layers,
            drop_rate=drop_rate,
            qkv_bias="trf_blocks.0.att.W_query.bias" in sd,
            tie_weights=bool(tied),
        )
    except UsageError as e:
        raise CheckpointError(f"{source}: {e}") from None


def _assemble(parts: list[torch.Tensor], ours: str, cfg: ModelConfig) -> torch.Tensor:
    t = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)
    if ours in ("wte.weight", "lm_head.weight"):
        t = pad_rows(t, cfg.padded_vocab_size)
    return t.detach().float().contiguous()


def book_to_gptcli(
    sd: dict[str, torch.Tensor], cfg: ModelConfig, *, source: str, on_progress: Progress | None = None
) -> dict[str, torch.Tensor]:
    sources = book_sources(cfg)
    expected = book_shapes(cfg)
    available = {k: tuple(v.shape) for k, v in sd.items() if isinstance(v, torch.Tensor)}
    if cfg.tie_weights:
        available.pop("out_head.weight", None)
    check_tensors(available, expected, source=source, ignore=lambda n: n.endswith(".att.mask"))
    state: dict[str, torch.Tensor] = {}
    names = list(gptcli_shapes(cfg))
    for done, ours in enumerate(names, 1):
        if ours == "lm_head.weight" and cfg.tie_weights:
            state[ours] = state["wte.weight"]
        else:
            state[ours] = _assemble([sd[n] for n in sources[ours]], ours, cfg)
        if on_progress is not None:
            on_progress(done, len(names))
    return state


def optimizer_to_gptcli(opt: dict[str, Any], cfg: ModelConfig, *, source: str) -> dict[str, Any]:
    """The book's AdamW state dict re-indexed for ``GPT(cfg).parameters()``: q/k/v moments
    stacked like their weights, the padded vocabulary rows given zero moments."""
    not_optimizer = CheckpointError(f"{source}: optimizer_state_dict is not a torch optimizer state dict")
    if not isinstance(opt, dict):
        raise CheckpointError(
            f"{source}: optimizer_state_dict is not a torch optimizer state dict (it is a {type(opt).__name__})"
        )
    groups = opt.get("param_groups")
    if not isinstance(groups, list) or not groups or not isinstance(opt.get("state"), dict):
        raise not_optimizer
    if not all(isinstance(g, dict) and isinstance(g.get("params"), list) for g in groups):
        raise not_optimizer
    if not all(isinstance(v, dict) for v in opt["state"].values()):
        raise not_optimizer
    if len(groups) != 1:
        raise CheckpointError(f"{source}: the optimizer has {len(groups)} parameter groups; gptcli trains with one")
    book_names = book_param_names(cfg)
    ids = list(groups[0]["params"])
    if len(ids) != len(book_names):
        raise CheckpointError(
            f"{source}: the optimizer holds {len(ids)} parameters, the model has {len(book_names)} "
            "(was it built for a different model?)"
        )
    shapes = book_shapes(cfg)
    by_name: dict[str, dict[str, Any]] = {}
    for i, name in zip(ids, book_names, strict=True):
        s = opt["state"].get(i)
        if s is None:
            continue
        for key, v in s.items():
            if isinstance(v, torch.Tensor) and v.dim() > 0 and tuple(v.shape) != shapes[name]:
                raise CheckpointError(
                    f"{source}: optimizer state {key} of {name} has shape {list(v.shape)}, the parameter {list(shapes[name])}"
                )
        by_name[name] = s
    sources = book_sources(cfg)
    state: dict[int, dict[str, Any]] = {}
    for j, ours in enumerate(gptcli_param_names(cfg)):
        parts = [by_name.get(n) for n in sources[ours]]
        if all(p is None for p in parts):
            continue  # never stepped: AdamW creates its state on the first step
        if any(p is None for p in parts):
            raise CheckpointError(f"{source}: optimizer state for only some of {', '.join(sources[ours])}")
        entry: dict[str, Any] = {}
        for key, first in parts[0].items():
            values = [p[key] for p in parts]
            if isinstance(first, torch.Tensor) and first.dim() > 0:
                entry[key] = _assemble(values, ours, cfg)
            else:
                if any(not torch.equal(torch.as_tensor(v), torch.as_tensor(first)) for v in values[1:]):
                    raise CheckpointError(f"{source}: optimizer {key} differs between {', '.join(sources[ours])}")
                entry[key] = first.clone() if isinstance(first, torch.Tensor) else first
        state[j] = entry
    group = {k: v for k, v in groups[0].items() if k != "params"}
    group["params"] = list(range(len(gptcli_param_names(cfg))))
    return {"state": state, "param_groups": [group]}


def load_book_file(src: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """(model state dict, optimizer state dict or None) from ``model.pth`` or ``model_and_optimizer.pth``."""
    src = Path(src)
    if not src.is_file():
        raise CheckpointError(f"{src}: not found")
    try:
        obj = torch.load(src, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{src}: not a readable PyTorch file ({reason[:160]})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{src}: expected a state dict or a dict with model_state_dict, got {type(obj).__name__}")
    if obj.get("format") == ckpt.FORMAT:
        raise CheckpointError(f"{src}: is already a gptcli checkpoint")
    if "model_state_dict" in obj:
        if not isinstance(obj["model_state_dict"], dict):
            raise CheckpointError(
                f"{src}: model_state_dict is not a state dict (it is a {type(obj['model_state_dict']).__name__})"
            )
        return _strip_wrappers(dict(obj["model_state_dict"])), obj.get("optimizer_state_dict")
    return _strip_wrappers(obj), None


def convert_book(
    src: str | Path,
    out: str | Path,
    *,
    n_heads: int | None = None,
    drop_rate: float = 0.1,
    data: list[str | Path] | None = None,
    on_progress: Progress | None = None,
    on_note: Callable[[str], None] | None = None,
) -> Path:
    """Write the book's checkpoint as a gptcli one: ``kind: training`` when it has optimizer state
    (``gptcli resume OUT`` continues it on ``data``), else weights only (``train --init OUT``)."""
    source = str(src)
    sd, opt = load_book_file(src)
    cfg = infer_config(sd, n_heads=n_heads, drop_rate=drop_rate, source=source, on_note=on_note)
    state = book_to_gptcli(sd, cfg, source=source, on_progress=on_progress)
    if opt is None:
        if data:
            raise UsageError(
                f"invalid --data: {source} holds no optimizer state, so there is no run to resume; "
                f"start one with: gptcli train FILE --init OUT.pth"
            )
        return save_checkpoint(ckpt.weights_checkpoint(cfg, state, source="book"), out)
    optimizer = optimizer_to_gptcli(opt, cfg, source=source)
    group = optimizer["param_groups"][0]
    paths = []
    for p in data or []:
        if not Path(p).exists():
            raise DataError(f"invalid --data: {p}: file not found")
        paths.append(str(Path(p).resolve()))
    train = TrainConfig(lr=float(group.get("lr", 4e-4)), weight_decay=float(group.get("weight_decay", 0.1)), data=paths)
    progress = notebook_progress(optimizer_steps(optimizer), cfg, train)
    train.epochs = max(train.epochs, progress["epoch"])
    obj = ckpt.training_checkpoint(
        cfg, train.to_dict(), state, optimizer_state=optimizer, progress=progress, source="book"
    )
    return save_checkpoint(obj, out)


def optimizer_steps(optimizer: dict[str, Any]) -> int:
    """The optimizer steps a run took: AdamW's own ``step`` count (every parameter's is the same)."""
    counts = [int(float(s["step"])) for s in optimizer["state"].values() if "step" in s]
    return max(counts, default=0)


def notebook_progress(steps: int, cfg: ModelConfig, train: TrainConfig) -> dict[str, Any]:
    """The notebook run's progress, as far as its file tells it.

    The book saves only the two state dicts, but AdamW counts its steps. With the training text,
    the book's loader settings (gptcli's defaults: batch size 2, stride = context, the 90/10
    split) give the steps per epoch, so the epochs done are ``steps // steps_per_epoch``: 90
    steps of the book's 9 per epoch are its 10 epochs. A notebook stopped inside an epoch
    continues with the next whole epoch (the shuffled order it was in is not in the file).
    Without the text only the steps are known, and the epochs count as 0.
    """
    tokens = steps * train.batch_size * cfg.context_length
    progress: dict[str, Any] = {"epoch": 0, "step": steps, "tokens_seen": tokens, "best_val": math.inf}
    if steps and train.data:
        from gptcli.data import prepare_data

        progress["epoch"] = steps // max(1, len(prepare_data(cfg, train).train) // train.batch_size)
    return progress
