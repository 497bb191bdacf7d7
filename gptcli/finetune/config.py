"""The settings of a finetuning run (``FinetuneConfig``), and the ``gptcli finetune`` flags made
from them. Torch-free, so that ``gptcli finetune ... --help`` stays fast.

Every field with "help" metadata is a flag, as ``gptcli.config.flag_fields`` describes for
``train``, plus what differs between ``instruct`` and ``classify``: "help" and "default_text" may
be a mapping from kind to text (the book's defaults differ per chapter), "kinds" limits a flag to
some kinds, and "flag_default" is the value the command line takes where the dataclass's own
default (for Python callers and tests: the CPU) differs. Values go through ``gptcli.config``'s
validation layer: ``--max-steps 10k``, ``--max-tokens 2M`` and ``--max-time 90m`` are read as
``train`` reads them.
"""

from __future__ import annotations

import copy
import dataclasses
import types
from dataclasses import dataclass, field
from typing import Annotated, Any

from gptcli.config import (
    COUNT,
    DURATION,
    FLAG_CLASSES,
    INTERVAL,
    ConfigValueError,
    _coerce_fields,
    _flag,
    budget_field,
    check_run_settings,
    flag_field,
    patience_field,
    shared_field,
)
from gptcli.errors import UsageError

KINDS = ("instruct", "classify")
TRAINABLE = ("last-block", "all", "head")  # classify: which weights train (the book's: last-block)
LORA_TARGETS = ("attn", "mlp", "head")
# The flags that change a run's length when it is resumed.
LENGTH_FLAGS = ("epochs", "max_steps", "max_tokens", "max_time", "patience")


@dataclass
class FinetuneConfig:
    """Every setting of a finetuning run; stored in its checkpoints, so ``resume`` needs none.
    Defaults are the book's (chapter 7 for instruct, chapter 6 for classify)."""

    kind: str
    data: str
    init: str
    # -- data ------------------------------------------------------------------------------------
    split: str | None = flag_field(
        None,
        {
            "instruct": "Three fractions of the records: train,val,test. Train and val must get some; a test "
            "of 0 means no test split. As the book, train takes the file's first records, test the next.",
            "classify": "Three fractions of the examples, after the book's seeded shuffle: train,val,test. "
            "Train and val must get some; a test of 0 means no test split.",
        },
        panel="data",
        default_text={"instruct": "0.85,0.05,0.1, the book's", "classify": "0.7,0.1,0.2, the book's"},
    )
    split_seed: int | None = flag_field(
        None,
        "Shuffle the records with this seed before splitting.",
        panel="data",
        kinds=("instruct",),
        default_text="keep the file's order, as the book",
    )
    max_length: int | None = flag_field(
        None,
        {
            "instruct": "Cut batches to this many tokens.",
            "classify": "Cut and pad texts to this many tokens.",
        },
        panel="data",
        default_text={"instruct": "the context length", "classify": "the longest training text"},
    )
    mask_prompt: bool = flag_field(
        False, "Ignore the prompt's tokens in the loss (exercise 7.2).", panel="data", kinds=("instruct",)
    )
    # The template's text (--template FILE); None = the book's format_input. "kinds" without "help":
    # not a generated flag, but a setting only instruct runs have (``applicable_settings``).
    template: str | None = field(default=None, metadata={"kinds": ("instruct",)})
    text_field: str = flag_field("Text", "Name of the text field.", panel="data", kinds=("classify",))
    label_field: str = flag_field("Label", "Name of the label field.", panel="data", kinds=("classify",))
    balance: bool = flag_field(
        False, "Sample every class down to the smallest (create_balanced_dataset).", panel="data", kinds=("classify",)
    )
    # -- training --------------------------------------------------------------------------------
    trainable: str = flag_field(
        "last-block",
        "Weights that train: last-block (the book's: last block, final LayerNorm, head), head or all.",
        kinds=("classify",),
        suggest=TRAINABLE,
    )
    epochs: int | None = flag_field(
        None,
        "Epochs (with a budget flag, whichever ends first ends the run).",
        default_text={"instruct": "2", "classify": "5"},
    )
    max_steps: Annotated[int | None, COUNT] = budget_field("max_steps")
    max_tokens: Annotated[int | None, COUNT] = budget_field(
        "max_tokens", help_text="Stop after this many training tokens, padding included (50M, 2B)."
    )
    max_time: Annotated[float | None, DURATION] = budget_field("max_time")
    patience: int = patience_field("0, off as the book")
    batch_size: int = flag_field(8, "Examples per step.")
    lr: float = shared_field("lr", default=5e-5)
    warmup_steps: int = flag_field(
        0,
        "Linear warm-up steps, then cosine decay to --min-lr over the planned length.",
        default_text="0, constant LR as the book",
    )
    min_lr: float | None = shared_field("min_lr", help="Floor of the cosine decay.")
    weight_decay: float = shared_field("weight_decay")
    decay: str = shared_field("decay")
    adam_beta2: float = shared_field("adam_beta2")
    grad_accum: int = shared_field("grad_accum")
    grad_clip: float = shared_field("grad_clip", default_text="0, off as the book")
    eval_freq: Annotated[int | str | None, INTERVAL] = shared_field(
        "eval_freq",
        default=None,
        help="Evaluate every N steps, every N tokens (50M) or every DURATION (30m: wall time, which a "
        "resumed run cannot repeat exactly).",
        default_text={"instruct": "5 steps, the book's", "classify": "50 steps, the book's"},
    )
    eval_iter: int = shared_field("eval_iter")
    seed: int = shared_field("seed")
    drop_rate: float = 0.0  # the book finetunes without dropout
    precision: str = shared_field("precision", help="fp32 (the book's), or bf16 or fp16 (CUDA only) autocast.")
    skip_nonfinite: int = shared_field("skip_nonfinite")
    compile: bool | None = shared_field("compile", default=False, default_text="off")
    activation_checkpointing: bool = shared_field("activation_checkpointing")
    fused_loss: bool = shared_field("fused_loss")
    fsdp: bool = shared_field("fsdp")
    device: str = shared_field("device", default="cpu", flag_default="auto", default_text="auto")
    # -- LoRA ------------------------------------------------------------------------------------
    lora_rank: int = flag_field(
        0,
        {
            "instruct": "LoRA rank; 0 trains every weight.",
            "classify": "LoRA rank; 0 trains the --trainable weights.",
        },
        panel="lora",
    )
    lora_alpha: float = flag_field(16.0, "LoRA alpha (the adapters' output scale).", panel="lora")
    lora_targets: str = flag_field("all", "Layers given adapters: attn,mlp,head or all.", panel="lora")
    # -- output ----------------------------------------------------------------------------------
    save_every: Annotated[int | str, INTERVAL] = shared_field(
        "save_every",
        help="Also save every N steps, every N tokens (50M) or every DURATION (30m: wall time, so a "
        "resumed run saves at other steps).",
    )
    keep_last: int = shared_field("keep_last", help="Step checkpoints to keep (the oldest are deleted).")
    sample_tokens: int = field(default=50, metadata={"kinds": ("instruct",)})  # the epoch's sample

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise UsageError(f"invalid kind: {self.kind!r} (choose from {', '.join(KINDS)})")
        book = {"instruct": (2, 5, "0.85,0.05,0.1"), "classify": (5, 50, "0.7,0.1,0.2")}[self.kind]
        self.epochs = book[0] if self.epochs is None else self.epochs
        self.eval_freq = book[1] if self.eval_freq is None else self.eval_freq
        self.split = book[2] if self.split is None else self.split
        try:
            _coerce_fields(self)  # counts ("10k"), durations ("90m"), numbers; every value's type
            check_run_settings(self)  # the ranges every kind of run shares, in train's words
            for name in ("max_length", "lora_rank"):
                low = 1 if name == "max_length" else 0
                value = getattr(self, name)
                if value is not None and value < low:
                    raise ConfigValueError(name, f"{value} (must be an integer >= {low})")
            if not self.lora_alpha > 0:  # 0 would silence the adapters: they would train to no effect
                raise ConfigValueError("lora_alpha", f"{self.lora_alpha:g} (must be a number > 0)")
        except ConfigValueError as e:
            raise ConfigValueError(e.key, e.detail, from_flag=True) from None
        parse_split(self.split)
        parse_targets(self.lora_targets)
        # A LoRA setting that differs from its default was given (by a flag or a config file).
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        lora_given = [_flag(k) for k in ("lora_alpha", "lora_targets") if getattr(self, k) != defaults[k]]
        if lora_given and not self.lora_rank:
            raise UsageError(
                f"{' and '.join(lora_given)} set{'s' if len(lora_given) == 1 else ''} the LoRA adapters, which "
                "--lora-rank R turns on: give it too (without it, no adapters are trained)"
            )
        if self.kind == "classify" and self.text_field == self.label_field:
            raise UsageError(
                f"invalid --text-field: {self.text_field!r} is also --label-field; the text and the label are "
                "two fields of each row"
            )
        if self.kind == "classify" and self.trainable not in TRAINABLE:
            raise UsageError(f"invalid --trainable: {self.trainable!r} (choose from {', '.join(TRAINABLE)})")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FinetuneConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in d.items() if k in known}
        if not values.get("lora_rank"):  # runs saved before a LoRA setting without a rank was refused
            values.pop("lora_alpha", None)
            values.pop("lora_targets", None)
        return cls(**values)


def parse_split(text: str, *, flag: str = "--split") -> tuple[float, float, float]:
    """``train,val,test`` fractions, each in [0, 1], summing to at most 1."""
    try:
        parts = tuple(float(x) for x in text.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 3 or any(not 0 <= x <= 1 for x in parts) or sum(parts) > 1 + 1e-9 or parts[0] <= 0:
        raise UsageError(f"invalid {flag}: {text!r} (three fractions train,val,test like 0.85,0.05,0.1)")
    return parts  # type: ignore[return-value]


def check_new_split(text: str) -> tuple[float, float, float]:
    """``parse_split`` for a new run, which also needs validation records: its losses are what
    the run reports (a NaN otherwise). The test split may be empty; ``eval --split test`` then
    says the run has none."""
    parts = parse_split(text)
    if parts[1] <= 0:
        raise UsageError(
            f"invalid --split: {text!r} (the validation fraction is 0, so every validation loss would be NaN; "
            "give it a share such as 0.85,0.05,0.1)"
        )
    return parts


def no_split_error(flag: str, which: str, *, data: str, split: str) -> UsageError:
    """What ``eval --split test`` or ``sample --responses test`` says of a run whose ``--split``
    left that split empty (a test of 0 is allowed)."""
    return UsageError(f"invalid {flag} {which}: the run has no {which} split ({data} split {split} left it empty)")


def applicable_settings(settings: dict[str, Any], *, merged: bool = False) -> dict[str, Any]:
    """A finetune run's stored settings (``FinetuneConfig.to_dict()``) less those that do not
    apply to it, for ``gptcli info``: the other kind's (metadata "kinds"), the LoRA ones without
    LoRA, and for a merged export (adapters folded into full weights) ``trainable`` too."""
    kind = settings.get("kind")
    fields = {f.name: f for f in dataclasses.fields(FinetuneConfig)}
    out = {}
    for key, value in settings.items():
        f = fields.get(key)
        if f is not None and kind not in f.metadata.get("kinds", (kind,)):
            continue
        if key.startswith("lora_") and not settings.get("lora_rank"):
            continue
        if merged and key == "trainable":
            continue
        out[key] = value
    return out


def parse_targets(text: str | None) -> tuple[str, ...]:
    """``--lora-targets``: a comma-separated list of attn, mlp, head, or all."""
    if text is None or text == "all":
        return LORA_TARGETS
    parts = tuple(t.strip() for t in text.split(",") if t.strip())
    bad = [t for t in parts if t not in LORA_TARGETS]
    if bad or not parts:
        raise UsageError(
            f"invalid --lora-targets: {text!r} (a comma-separated list of {', '.join(LORA_TARGETS)}, or all)"
        )
    return parts


def flag_fields(kind: str | None = None) -> list[dataclasses.Field]:
    """The fields that are flags of ``gptcli finetune KIND``, in field order, each a copy whose
    metadata reads as KIND shows it (help and shown default resolved). ``kind`` None: the flags
    every kind has, with per-kind texts left as they are."""
    out = []
    for f in dataclasses.fields(FinetuneConfig):
        md = dict(f.metadata)
        if "help" not in md or (kind is None and "kinds" in md) or kind not in md.get("kinds", (kind,)):
            continue
        if kind is not None:
            md.update({k: md[k][kind] for k in ("help", "default_text") if isinstance(md.get(k), dict)})
        resolved = copy.copy(f)
        resolved.metadata = types.MappingProxyType(md)
        out.append(resolved)
    return out


FLAG_CLASSES.append(FinetuneConfig)
