"""Configuration dataclasses: the model's architecture and the training run's settings.

Each dataclass validates itself in ``__post_init__`` and names the offending field, so a typo or a
bad value fails at start-up with a message a user can act on, never half-way through a run.

One validation layer serves every source of settings: flags, a YAML file and the settings a
checkpoint stores (``from_dict``, ``build_config``). First each value is coerced to its field's
type (``_coerce``, driven by the dataclass type hints): YAML 1.1 reads ``lr: 4e-4`` as the string
"4e-4", so a number written as a string becomes a float; a single path for ``data`` becomes a
one-item list; everything else must already have the field's type (a bool only as a real bool,
an int never as 1.5 or true). Then ``__post_init__`` checks the ranges. An error names the key,
the value and what was expected, with the flag spelling, and the config file or checkpoint the
value came from. The layer is hand-written rather than pydantic (v2): pydantic's lax mode turns
``"no"`` into False and ``1.0`` into 1 and its strict mode refuses "4e-4" for a float, so either
mode needs custom rules for exactly these cases, and it would add a runtime dependency and about
100 ms of import time for what a few dozen lines of standard library do here.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from gptcli.errors import CheckpointError, UsageError
from gptcli.units import describe_interval as describe_interval
from gptcli.units import parse_count, parse_duration, parse_interval

# OpenAI's released GPT-2 shapes. Context 1024, biased qkv projections and a tied output head,
# exactly as the checkpoints were trained, so converted weights load without reshaping.
PRESETS: dict[str, dict[str, Any]] = {
    "gpt2-124M": {"emb_dim": 768, "n_layers": 12, "n_heads": 12},
    "gpt2-355M": {"emb_dim": 1024, "n_layers": 24, "n_heads": 16},
    "gpt2-774M": {"emb_dim": 1280, "n_layers": 36, "n_heads": 20},
    "gpt2-1558M": {"emb_dim": 1600, "n_layers": 48, "n_heads": 25},
}
_OPENAI_SHAPE = {"context_length": 1024, "qkv_bias": True, "tie_weights": True}


class ConfigValueError(UsageError):
    """A bad value of one config field. ``key`` is the field's name, so that the layer that merged
    the settings can say which file or checkpoint the value came from (``where``). The message
    names the key and its flag (``emb_dim (--emb-dim)``), or only the flag for a value that came
    from the command line (``from_flag``)."""

    def __init__(self, key: str, detail: str, where: str | None = None, *, from_flag: bool = False):
        self.key, self.detail, self.where = key, detail, where
        label = _flag(key) if from_flag else f"{key} ({_flag(key)})" if _is_flag(key) else key
        super().__init__(f"{where + ': ' if where else ''}invalid {label}: {detail}")


def _check(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigValueError(key, msg)


def flag_field(default: Any, help: str | dict[str, str], *, panel: str = "train", **metadata: Any) -> Any:
    """A config field that is also a flag (``flag_fields``): its default, its help text, its group
    in ``--help`` and the rest of its flag's metadata ("metavar", "choices", "default_text", ...)."""
    return field(default=default, metadata={"help": help, "panel": panel, **metadata})


@dataclass
class ModelConfig:
    """A GPT-2 architecture, with the book's keys.

    The defaults are the book's chapter-5 training shape: GPT-2 124M dimensions, but a 256-token
    context, no qkv bias and an untied output head, so the book's loss curve can be reproduced.
    """

    vocab_size: int = 50257
    context_length: int = flag_field(256, "Context length in tokens.", panel="model")
    emb_dim: int = flag_field(768, "Embedding size.", panel="model")
    n_heads: int = flag_field(12, "Attention heads.", panel="model")
    n_layers: int = flag_field(12, "Transformer blocks.", panel="model")
    drop_rate: float = flag_field(0.1, "Dropout rate.", panel="model")
    qkv_bias: bool = flag_field(False, "Bias in the qkv projection.", panel="model")
    tie_weights: bool = flag_field(False, "Share the output head with the token embedding.", panel="model")

    def __post_init__(self) -> None:
        _coerce_fields(self)
        for name in ("vocab_size", "context_length", "emb_dim", "n_heads", "n_layers"):
            value = getattr(self, name)
            _check(value >= 1, name, f"{_typed(self, name)} (must be an integer >= 1)")
        _check(
            self.emb_dim % self.n_heads == 0,
            "emb_dim",
            f"{self.emb_dim} is not divisible by n_heads (--n-heads) {self.n_heads}",
        )
        _check(0.0 <= self.drop_rate < 1.0, "drop_rate", f"{_typed(self, 'drop_rate')} (must be in [0, 1))")

    @property
    def head_dim(self) -> int:
        return self.emb_dim // self.n_heads

    @property
    def padded_vocab_size(self) -> int:
        # Matmuls whose size is a multiple of 64 hit the fast kernel paths (50257 -> 50304). The
        # extra rows are never trained towards and are sliced off before logits leave the model.
        return math.ceil(self.vocab_size / 64) * 64

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> ModelConfig:
        return build_config(cls, (None, preset_values(name)), (None, overrides))

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, where: str = "model config") -> ModelConfig:
        return _strict_build(cls, data, where)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def num_params(self, *, non_embedding: bool = False) -> int:
        """Parameter count of the model this config builds (unpadded vocabulary)."""
        c, v, t = self.emb_dim, self.vocab_size, self.context_length
        per_block = 4 * c  # two LayerNorms
        per_block += 3 * c * c + (3 * c if self.qkv_bias else 0) + c * c + c  # attention
        per_block += 8 * c * c + 4 * c + c  # MLP
        total = v * c + t * c + self.n_layers * per_block + 2 * c
        if not self.tie_weights:
            total += v * c
        if non_embedding:
            total -= t * c
        return total


def preset_values(name: Any, where: str | None = None) -> dict[str, Any]:
    """The model settings of preset ``name``; an unknown name (or not a name at all) is an error
    naming the file it came from, if any."""
    if not isinstance(name, str) or name not in PRESETS:
        label = f"{where}: invalid preset (--preset)" if where else "invalid --preset"
        raise UsageError(f"{label}: {_show(name)} (choose from {', '.join(PRESETS)})")
    return {**_OPENAI_SHAPE, **PRESETS[name]}


PRECISIONS = ("fp32", "bf16", "fp16")
# --decay: which parameters AdamW's weight decay applies to. "all" is the book's (every parameter);
# "matrices" is nanoGPT's and llm.c's (weights of 2 or more dimensions; not biases, LayerNorms).
DECAY_CHOICES = ("all", "matrices")
# Weights' dtypes for sampling and evaluation (``--dtype``; gptcli.device resolves them).
DTYPES = ("auto", "fp32", "bf16", "int8")  # int8: weight-only, CPU (gptcli.quantize)
DEVICES = ("auto", "cpu", "cuda", "mps")
DEVICE_CHOICES = "auto, cpu, cuda, cuda:N or mps"
DEVICE_NAMES = ("auto", "cpu", "cuda", "cuda:N", "mps")  # as --help lists them and completion offers them
ENCODING_ERRORS = ("strict", "replace", "ignore")
# --format of training and eval inputs: auto detects each from its name (gptcli.formats.FORMATS).
INPUT_FORMATS = ("auto", "txt", "jsonl", "json", "csv", "tsv", "parquet")
# What torch.manual_seed takes: any 64-bit integer, signed or unsigned.
SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1


def is_device_name(name: str) -> bool:
    """Whether ``name`` spells a ``--device`` (whether this machine has it is ``device.py``'s call)."""
    return name in DEVICES or re.fullmatch(r"cuda:[0-9]{1,4}", name) is not None


# ---------------------------------------------------------------------------------------------
# Counts ("50M" tokens), durations ("90m") and intervals (steps, tokens or time), as flags and YAML
# spell them. Field types say which: Annotated[int | None, COUNT] and so on (see _coerce).

COUNT, DURATION, INTERVAL = "count", "duration", "interval"
# The grammar itself is gptcli.units' (prepare's flags use it too); config re-exports its parsers
# for the modules and tests that import them from here.


def _unit_value(key: str, unit: str, value: Any) -> Any:
    """The coerced value of a COUNT, DURATION or INTERVAL field (None handled by the caller):
    a count is an int, a duration seconds (a float), an interval an int for steps or the string
    as written (stripped) for tokens and time, so config.yaml shows what the user wrote."""
    try:
        if unit == COUNT:
            return parse_count(value)
        if unit == DURATION:
            return parse_duration(value)
        kind, amount = parse_interval(value)
    except ValueError as e:
        raise ConfigValueError(key, f"{_show(value)} ({e})") from None
    return int(amount) if kind == "steps" else value.strip()


_BUDGETS = {
    "max_steps": ("Stop after this many optimizer steps (5000, 10k).", "N"),
    "max_tokens": ("Stop after this many training tokens (50M, 2B).", "N"),
    "max_time": ("Stop after this much training time, over all resumes (90m, 2h, or seconds).", "DURATION"),
}


def budget_field(name: str, *, help_text: str | None = None) -> Any:
    """The field of budget ``name`` (max_steps, max_tokens or max_time) in a run's config, train's
    or finetune's: None for no limit, a count or a duration as the flag spells it (``help_text``:
    where a kind of run counts differently)."""
    text, metavar = _BUDGETS[name]
    return flag_field(None, help_text or text, type=str, metavar=metavar, default_text="no limit")


def patience_field(default_text: str = "0, off") -> Any:
    """``--patience K`` in a run's config, train's or finetune's: 0 is off."""
    return flag_field(
        0,
        "Stop after K evaluations without a new best validation loss (best.pth keeps the best).",
        metavar="K",
        default_text=default_text,
    )


@dataclass
class TrainConfig:
    """Settings of one training run. Defaults are the book's chapter-5 run."""

    epochs: int = flag_field(10, "Epochs to train (with a budget flag, whichever ends first ends the run).")
    max_steps: Annotated[int | None, COUNT] = budget_field("max_steps")
    max_tokens: Annotated[int | None, COUNT] = budget_field("max_tokens")
    max_time: Annotated[float | None, DURATION] = budget_field("max_time")
    patience: int = patience_field()
    lr: float = flag_field(4e-4, "AdamW learning rate.")
    weight_decay: float = flag_field(0.1, "AdamW weight decay.")
    decay: str = flag_field(
        "all",
        "Parameters the weight decay applies to: all (the book's) or matrices (nanoGPT's: not biases or LayerNorms).",
        choices=DECAY_CHOICES,
    )
    adam_beta2: float = flag_field(0.999, "AdamW's second-moment decay (the book's 0.999; nanoGPT's 0.95).")
    batch_size: int = flag_field(2, "Windows per batch.")
    seed: int = flag_field(123, "Random seed.")
    eval_freq: Annotated[int | str, INTERVAL] = flag_field(
        5,
        "How often to evaluate: a plain number is steps (1000); a number with a suffix (1k, 50M) is "
        "tokens; 30m/2h is wall time (which a resumed run cannot repeat exactly).",
        type=str,
        metavar="INTERVAL",
        default_text="5 steps",
    )
    eval_iter: int = flag_field(5, "Batches per evaluation.")
    start_context: str = flag_field("Every effort moves you", "Prompt of the sample after each epoch.")
    sample_tokens: int = 50
    stride: int | None = flag_field(None, "Stride between windows.", default_text="the context length")
    val_ratio: float = flag_field(0.1, "Share of characters held out for validation.")
    val_file: str | None = flag_field(None, "Separate validation text instead of a split.", type=Path)
    device: str = flag_field(
        "auto", "Where to train: auto picks a GPU if there is one; cuda:N picks one of several.", suggest=DEVICE_NAMES
    )
    precision: str = flag_field("fp32", "fp32, or bf16 or fp16 (CUDA only) autocast.", choices=PRECISIONS)
    compile: bool | None = flag_field(None, "torch.compile the model.", default_text="on for CUDA")
    save_every: Annotated[int | str, INTERVAL] = flag_field(
        0,
        "Also save this often: a plain number is steps (1000); a number with a suffix (1k, 50M) is "
        "tokens; 30m/2h is wall time (so a resumed run saves at other steps).",
        panel="output",
        type=str,
        metavar="INTERVAL",
        default_text="0, epoch ends only",
    )
    keep_last: int = flag_field(2, "Step checkpoints to keep.", panel="output")
    grad_accum: int = flag_field(1, "Micro-batches per optimizer step.")
    warmup_steps: int = flag_field(
        0,
        "Linear warm-up steps, then cosine decay to --min-lr. With neither flag the LR is constant; "
        "--min-lr alone also turns the cosine decay on (without warm-up).",
        default_text="0, no warm-up",
    )
    min_lr: float | None = flag_field(
        None,
        "Floor of the cosine decay; giving it turns the decay on even without --warmup-steps.",
        default_text="lr/10 when a schedule is on",
    )
    grad_clip: float = flag_field(0.0, "Clip the gradient norm to this.", default_text="0, off")
    skip_nonfinite: int = flag_field(0, "Tolerate up to N steps with a NaN/inf loss by skipping them.")
    encoding_errors: str = flag_field("strict", "What to do with undecodable bytes.", choices=ENCODING_ERRORS)
    format: str = flag_field(
        "auto",
        "Format of every input; auto detects each from its name (.txt/.md, .jsonl, .json, .csv, .tsv, "
        ".parquet, optionally .gz/.bz2/.xz/.zst).",
        choices=INPUT_FORMATS,
    )
    text_field: str = flag_field(
        "text", "The field (JSON) or column (CSV, TSV, Parquet) that holds each document's text.", metavar="NAME"
    )
    activation_checkpointing: bool = flag_field(
        False,
        "Recompute each block's activations in the backward pass: less memory, about a third more "
        "compute; the same gradients.",
    )
    fused_loss: bool = flag_field(
        False,
        "Compute the output head and cross-entropy in chunks, never holding all the logits: less "
        "memory; the same loss.",
    )
    fsdp: bool = flag_field(
        False,
        "Under torchrun, shard the parameters, gradients and AdamW state across the processes "
        "(FSDP2) instead of copying them to each (DDP); checkpoints stay one ordinary .pth.",
    )
    init: str | None = flag_field(
        None,
        "Start from these weights: a checkpoint, a run directory (its newest checkpoint, as -c takes it), "
        "or gpt2-124M etc. once downloaded.",
        metavar="CHECKPOINT",
    )
    data: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        _coerce_fields(self)
        check_run_settings(self)
        _check(self.stride is None or self.stride >= 1, "stride", f"{_typed(self, 'stride')} (must be >= 1)")
        _check(0.0 < self.val_ratio < 1.0, "val_ratio", f"{_typed(self, 'val_ratio')} (must be in (0, 1))")
        _check(
            self.encoding_errors in ENCODING_ERRORS,
            "encoding_errors",
            f"{self.encoding_errors!r} (choose from {', '.join(ENCODING_ERRORS)})",
        )
        _check(self.format in INPUT_FORMATS, "format", f"{self.format!r} (choose from {', '.join(INPUT_FORMATS)})")
        _check(bool(self.text_field), "text_field", f"{self.text_field!r} (must not be empty)")

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, where: str = "train config") -> TrainConfig:
        return _strict_build(cls, data, where)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def check_run_settings(cfg: Any) -> None:
    """The ranges of the settings every kind of run shares (optimizer, schedule, budgets,
    evaluation, checkpoints, precision and device), checked once with one wording for
    ``TrainConfig`` and ``FinetuneConfig``; a ConfigValueError names the field."""
    for name, low in (
        ("epochs", 1),
        ("batch_size", 1),
        ("eval_iter", 1),
        ("keep_last", 1),
        ("grad_accum", 1),
        ("sample_tokens", 0),
        ("warmup_steps", 0),
        ("patience", 0),
        ("skip_nonfinite", 0),
    ):
        value = getattr(cfg, name)
        _check(value >= low, name, f"{_typed(cfg, name)} (must be an integer >= {low})")
    for name in ("max_steps", "max_tokens"):
        value = getattr(cfg, name)
        _check(value is None or value >= 1, name, f"{_typed(cfg, name)} (must be an integer >= 1)")
    _check(cfg.max_time is None or cfg.max_time > 0, "max_time", f"{_typed(cfg, 'max_time')} (must be > 0 seconds)")
    unit, every = parse_interval(cfg.eval_freq)
    _check(every > 0, "eval_freq", f"{_show(cfg.eval_freq)} (must be >= 1)")
    unit, every = parse_interval(cfg.save_every)
    _check(every > 0 or unit == "steps", "save_every", f"{_show(cfg.save_every)} (must be > 0, or 0 for off)")
    _check(SEED_MIN <= cfg.seed <= SEED_MAX, "seed", f"{cfg.seed} (must be from {SEED_MIN} to {SEED_MAX})")
    _check(cfg.lr > 0, "lr", f"{_typed(cfg, 'lr')} (must be > 0)")
    _check(cfg.weight_decay >= 0, "weight_decay", f"{_typed(cfg, 'weight_decay')} (must be >= 0)")
    _check(cfg.decay in DECAY_CHOICES, "decay", f"{cfg.decay!r} (choose from {', '.join(DECAY_CHOICES)})")
    _check(0.0 <= cfg.adam_beta2 < 1.0, "adam_beta2", f"{_typed(cfg, 'adam_beta2')} (must be in [0, 1))")
    _check(cfg.min_lr is None or cfg.min_lr >= 0, "min_lr", f"{_typed(cfg, 'min_lr')} (must be >= 0)")
    _check(cfg.grad_clip >= 0, "grad_clip", f"{_typed(cfg, 'grad_clip')} (must be >= 0)")
    _check(is_device_name(cfg.device), "device", f"{cfg.device!r} (choose from {DEVICE_CHOICES})")
    _check(cfg.precision in PRECISIONS, "precision", f"{cfg.precision!r} (choose from {', '.join(PRECISIONS)})")


def shared_field(name: str, *, default: Any = dataclasses.MISSING, **metadata: Any) -> Any:
    """A copy of ``TrainConfig``'s declaration of setting ``name`` (its flag's help, choices and
    units) for another kind of run's config, with another ``default`` or other ``metadata``
    (``help="..."``, ``default_text="..."``): a setting every kind has is declared once."""
    if "metadata" in metadata:
        raise TypeError("shared_field takes the metadata's keys themselves: help=..., default_text=...")
    f = next(f for f in dataclasses.fields(TrainConfig) if f.name == name)
    return field(default=f.default if default is dataclasses.MISSING else default, metadata={**f.metadata, **metadata})


FLAG_CLASSES: list[type] = []  # config classes whose fields are flags: errors name a key's flag too


def flag_fields(cls: type) -> list[dataclasses.Field]:
    """The fields of a config dataclass that are also ``gptcli train`` flags, in field order.

    A field is a flag when its metadata has "help"; "panel" groups it in ``--help`` (model, train or
    output), "default_text" replaces the shown default where the value alone would not explain it,
    and "type" is the command-line type where it differs from the field's (a Path for a str).
    "choices" makes a flag that takes only those values (``--help`` lists them, completion offers
    them); "suggest" lists values in ``--help`` and completion but leaves the checking to the
    dataclass (``--device`` also takes cuda:N); "metavar" names the value in ``--help`` where the
    type's word (N, X, TEXT, FILE) would not say it.
    """
    return [f for f in dataclasses.fields(cls) if "help" in f.metadata]


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _flag_keys() -> frozenset[str]:
    return frozenset(f.name for cls in (ModelConfig, TrainConfig, *FLAG_CLASSES) for f in flag_fields(cls))


def _is_flag(key: str) -> bool:
    return key in _flag_keys()


# ---------------------------------------------------------------------------------------------
# The validation layer: types first (here), ranges in each dataclass's __post_init__

_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1  # 64 bits, signed or not: all that torch or numpy take


def _show(value: Any) -> str:
    """A value for a message: short, and safe for any value (huge ints, long strings, nesting)."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**30:
        return f"{'-' if value < 0 else ''}an integer of {value.bit_length()} bits"
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]  # as YAML spells them
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _text(key: str, value: Any) -> str:
    if isinstance(value, os.PathLike):  # Python callers may pass a Path for a file setting
        value = os.fspath(value)
    if not isinstance(value, str):
        raise ConfigValueError(key, f"{_show(value)} (expected a string)")
    if not value:
        raise ConfigValueError(key, "'' (must not be empty)")
    if "\0" in value:
        raise ConfigValueError(key, f"{_show(value)} (contains a NUL character)")
    return value


def _number(key: str, value: Any) -> float:
    """A float from a float, an int, or a string that spells a number ("4e-4", as YAML 1.1 reads
    ``4e-4``); finite only, since nan or inf in a setting breaks every computation downstream."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ConfigValueError(key, f"{_show(value)} (expected a number)")
    try:
        number = float(value.strip() if isinstance(value, str) else value)
    except ValueError:
        raise ConfigValueError(key, f"{_show(value)} (expected a number)") from None
    except OverflowError:
        raise ConfigValueError(key, f"{_show(value)} (too large)") from None
    shown = value.strip() if isinstance(value, str) and len(value.strip()) <= 80 else _show(value)  # a number as typed
    if not math.isfinite(number):
        raise ConfigValueError(key, f"{shown} (expected a finite number)")
    return number


def _coerce(key: str, hint: Any, value: Any) -> Any:
    """``value`` as field ``key`` of type ``hint`` holds it, or a ConfigValueError saying what was
    expected. Only what a person obviously meant is converted (see the module docstring)."""
    if typing.get_origin(hint) is Annotated:  # a count, a duration or an interval
        base, unit = typing.get_args(hint)[:2]
        if value is None and type(None) in typing.get_args(base):
            return None
        if value is None:
            raise ConfigValueError(key, "null (expected a value)")
        return _unit_value(key, unit, value)
    args = typing.get_args(hint)
    if type(None) in args:  # X | None
        if value is None:
            return None
        hint = next(a for a in args if a is not type(None))
    elif value is None:
        raise ConfigValueError(key, "null (expected a value)")
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigValueError(key, f"{_show(value)} (expected true or false)")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigValueError(key, f"{_show(value)} (expected an integer)")
        if not _INT_MIN <= value <= _INT_MAX:
            raise ConfigValueError(key, f"{_show(value)} (out of the 64-bit range)")
        return value
    if hint is float:
        return _number(key, value)
    if hint is str:
        return _text(key, value)
    if typing.get_origin(hint) is list:  # data: one path, or a list of paths
        items = [value] if isinstance(value, (str, os.PathLike)) else value
        if not isinstance(items, (list, tuple)):
            raise ConfigValueError(key, f"{_show(value)} (expected a path or a list of paths)")
        return [_text(key, item) for item in items]
    raise TypeError(f"no coercion for {key}: {hint!r}")  # a new field type: teach _coerce about it


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, include_extras=True)


def _coerce_fields(obj: Any) -> None:
    """Coerce every field of a config dataclass in place (called first in ``__post_init__``). A
    value whose type the coercion changed ("0" -> 0.0, -1 -> -1.0) is kept as given, so that a
    range error echoes what the user typed (``_typed``)."""
    types = _field_types(type(obj))
    given = {}
    for f in dataclasses.fields(obj):
        raw = getattr(obj, f.name)
        value = _coerce(f.name, types[f.name], raw)
        if type(raw) is not type(value) and isinstance(raw, (str, int, float)) and not isinstance(raw, bool):
            given[f.name] = raw
        setattr(obj, f.name, value)
    obj._given = given  # not a field: asdict, eq and replace never see it


def _typed(obj: Any, name: str) -> str:
    """Field ``name``'s value for a message, as it was given: ``0`` for ``--max-time 0`` (not its
    0.0 seconds), ``-1`` for ``--lr -1``."""
    raw = getattr(obj, "_given", {}).get(name)
    if isinstance(raw, str):
        return raw.strip() if len(raw.strip()) <= 80 else raw.strip()[:77] + "..."
    return repr(raw if raw is not None else getattr(obj, name))


def _check_keys(cls: type, data: Any, where: str | None) -> None:
    if not isinstance(data, dict):
        raise UsageError(f"{where or 'settings'}: expected a mapping, got {type(data).__name__}")
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in known]
    if unknown:
        raise UsageError(f"{where or 'settings'}: {unknown_key(unknown[0], sorted(known))}")


# Other codebases' names for our keys (nanoGPT's, the book's training code's, Hugging Face's).
_KEY_ALIASES = {
    "learning_rate": "lr",
    "num_epochs": "epochs",
    "n_embd": "emb_dim",
    "block_size": "context_length",
    "n_positions": "context_length",
    "dropout": "drop_rate",
    "bias": "qkv_bias",
}


def closest_key(key: Any, known: list[str]) -> str | None:
    """The known key a mistyped ``key`` most likely means, or None: another codebase's name for it
    (learning_rate -> lr), a known key that is one of its words (lr_rate -> lr, where plain
    spelling similarity would say drop_rate), else the most similar spelling (eval_frq -> eval_freq)."""
    import difflib

    if not isinstance(key, str):
        return None
    if _KEY_ALIASES.get(key) in known:
        return _KEY_ALIASES[key]
    words = [k for k in known if k in key.split("_")]
    if words:
        return max(words, key=len)
    close = difflib.get_close_matches(key, known, n=1)
    return close[0] if close else None


def unknown_key(key: Any, known: list[str]) -> str:
    """``unknown key 'lr_rate' (did you mean 'lr'?)`` where a known key is close, else the list
    of them all (a typo needs one name, a guess needs the list)."""
    if (close := closest_key(key, known)) is not None:
        return f"unknown key {_show(key)} (did you mean {close!r}?)"
    return f"unknown key {_show(key)} (known keys: {', '.join(known)})"


def coerce_values(cls: type, data: dict[str, Any], where: str | None) -> dict[str, Any]:
    """Some of ``cls``'s settings checked and coerced to their types, without building a config
    (for settings compared with a checkpoint's rather than applied)."""
    _check_keys(cls, data, where)
    types = _field_types(cls)
    try:
        return {k: _coerce(k, types[k], v) for k, v in data.items()}
    except ConfigValueError as e:
        raise ConfigValueError(e.key, e.detail, where, from_flag=where is None and _is_flag(e.key)) from None


def build_config(cls: type, *layers: tuple[str | None, dict[str, Any]]) -> Any:
    """``cls`` from layers of settings applied in order (a preset, a file, flags), each named by
    where it came from (None for flags), so that an error names the file that holds the bad value."""
    merged: dict[str, Any] = {}
    source: dict[str, str | None] = {}
    for where, values in layers:
        _check_keys(cls, values, where)
        merged.update(values)
        source.update(dict.fromkeys(values, where))
    try:
        return cls(**merged)
    except ConfigValueError as e:
        where = source.get(e.key)
        raise ConfigValueError(e.key, e.detail, where, from_flag=where is None and _is_flag(e.key)) from None


def _strict_build(cls: type, data: dict[str, Any], where: str) -> Any:
    return build_config(cls, (where, data))


SECTIONS = ("model", "train", "finetune")  # a run config file's: pretraining's two, or finetuning's one


def load_yaml_config(path: str | Path) -> dict[str, dict[str, Any]]:
    """Read a run config file: a mapping with optional `model` and `train` sections (a
    pretraining run's) or a `finetune` section (a finetuning run's).

    Unknown sections are errors here; the keys and values of each section are checked by
    ``build_config``, which names this file in its errors.
    """
    import yaml

    from gptcli.fsutil import read_file

    p = Path(path)
    if not p.exists() and not p.is_symlink():
        raise UsageError(f"config file not found: {p}")
    text = read_file(p, error=UsageError)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise UsageError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
    except (ValueError, RecursionError) as e:  # an integer of over 4300 digits; nesting too deep
        raise UsageError(f"{p}: not valid YAML ({(str(e) or type(e).__name__).splitlines()[0][:120]})") from None
    if data is None:  # an empty file, or only comments
        data = {}
    if not isinstance(data, dict):
        raise UsageError(f"{p}: expected a mapping with 'model' and 'train' sections")
    unknown = [k for k in data if k not in SECTIONS]
    if unknown:
        raise UsageError(f"{p}: {unknown_key(unknown[0], list(SECTIONS))}")
    for section in SECTIONS:
        if data.get(section) is not None and not isinstance(data[section], dict):
            raise UsageError(f"{p}: '{section}' must be a mapping, got {_show(data[section])}")
    if data.get("finetune") and (data.get("model") or data.get("train")):
        raise UsageError(f"{p}: a 'finetune' section goes alone (model and train are a pretraining run's)")
    return {section: dict(data.get(section) or {}) for section in SECTIONS}


def dump_yaml_config(model: ModelConfig, train: TrainConfig) -> str:
    import yaml

    return yaml.safe_dump({"model": model.to_dict(), "train": train.to_dict()}, sort_keys=False)


def check_architecture(saved: ModelConfig, requested: dict[str, Any], what: str) -> None:
    """Raise if flags given explicitly ask for a different architecture than the checkpoint's."""
    diffs = [
        f"{k}: checkpoint {getattr(saved, k)!r}, requested {v!r}"
        for k, v in requested.items()
        if v is not None and getattr(saved, k) != v
    ]
    if diffs:
        raise CheckpointError(f"{what} has a different architecture: " + "; ".join(diffs))
