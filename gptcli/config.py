"""Configuration dataclasses: the model's architecture and the training run's settings.

Each dataclass validates itself in ``__post_init__`` and names the offending field, so a typo or a
bad value fails at start-up with a message a user can act on, never half-way through a run.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gptcli.errors import CheckpointError, UsageError

# OpenAI's released GPT-2 shapes. Context 1024, biased qkv projections and a tied output head,
# exactly as the checkpoints were trained, so converted weights load without reshaping.
PRESETS: dict[str, dict[str, Any]] = {
    "gpt2-124M": {"emb_dim": 768, "n_layers": 12, "n_heads": 12},
    "gpt2-355M": {"emb_dim": 1024, "n_layers": 24, "n_heads": 16},
    "gpt2-774M": {"emb_dim": 1280, "n_layers": 36, "n_heads": 20},
    "gpt2-1558M": {"emb_dim": 1600, "n_layers": 48, "n_heads": 25},
}
_OPENAI_SHAPE = {"context_length": 1024, "qkv_bias": True, "tie_weights": True}


def _check(cond: bool, name: str, msg: str) -> None:
    if not cond:
        raise UsageError(f"invalid {name}: {msg}")


@dataclass
class ModelConfig:
    """A GPT-2 architecture, with the book's keys.

    The defaults are the book's chapter-5 training shape: GPT-2 124M dimensions, but a 256-token
    context, no qkv bias and an untied output head, so the book's loss curve can be reproduced.
    """

    vocab_size: int = 50257
    context_length: int = field(default=256, metadata={"help": "Context length in tokens.", "panel": "model"})
    emb_dim: int = field(default=768, metadata={"help": "Embedding size.", "panel": "model"})
    n_heads: int = field(default=12, metadata={"help": "Attention heads.", "panel": "model"})
    n_layers: int = field(default=12, metadata={"help": "Transformer blocks.", "panel": "model"})
    drop_rate: float = field(default=0.1, metadata={"help": "Dropout rate.", "panel": "model"})
    qkv_bias: bool = field(default=False, metadata={"help": "Bias in the qkv projection.", "panel": "model"})
    tie_weights: bool = field(
        default=False, metadata={"help": "Share the output head with the token embedding.", "panel": "model"}
    )

    def __post_init__(self) -> None:
        for name in ("vocab_size", "context_length", "emb_dim", "n_heads", "n_layers"):
            value = getattr(self, name)
            _check(isinstance(value, int) and value >= 1, name, f"{value!r} (must be an integer >= 1)")
        _check(
            self.emb_dim % self.n_heads == 0,
            "emb_dim",
            f"{self.emb_dim} is not divisible by n_heads={self.n_heads}",
        )
        _check(0.0 <= float(self.drop_rate) < 1.0, "drop_rate", f"{self.drop_rate} (must be in [0, 1))")
        self.drop_rate = float(self.drop_rate)

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
        if name not in PRESETS:
            raise UsageError(f"invalid --preset: {name!r} (choose from {', '.join(PRESETS)})")
        return cls(**{**_OPENAI_SHAPE, **PRESETS[name], **overrides})

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


PRECISIONS = ("fp32", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda", "mps")
ENCODING_ERRORS = ("strict", "replace", "ignore")


@dataclass
class TrainConfig:
    """Settings of one training run. Defaults are the book's chapter-5 run."""

    epochs: int = field(default=10, metadata={"help": "Epochs to train.", "panel": "train"})
    lr: float = field(default=4e-4, metadata={"help": "AdamW learning rate.", "panel": "train"})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW weight decay.", "panel": "train"})
    batch_size: int = field(default=2, metadata={"help": "Windows per batch.", "panel": "train"})
    seed: int = field(default=123, metadata={"help": "Random seed.", "panel": "train"})
    eval_freq: int = field(default=5, metadata={"help": "Evaluate every N steps.", "panel": "train"})
    eval_iter: int = field(default=5, metadata={"help": "Batches per evaluation.", "panel": "train"})
    start_context: str = field(
        default="Every effort moves you", metadata={"help": "Prompt of the sample after each epoch.", "panel": "train"}
    )
    sample_tokens: int = 50
    stride: int | None = field(
        default=None,
        metadata={"help": "Stride between windows.", "panel": "train", "default_text": "the context length"},
    )
    val_ratio: float = field(
        default=0.1, metadata={"help": "Share of characters held out for validation.", "panel": "train"}
    )
    val_file: str | None = field(
        default=None,
        metadata={"help": "Separate validation text instead of a split.", "panel": "train", "type": Path},
    )
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda or mps.", "panel": "train"})
    precision: str = field(default="fp32", metadata={"help": "fp32, bf16 (autocast) or fp16 (CUDA).", "panel": "train"})
    compile: bool | None = field(
        default=None,
        metadata={"help": "torch.compile the model.", "panel": "train", "default_text": "on for CUDA"},
    )
    save_every: int = field(
        default=0,
        metadata={"help": "Also save every N steps.", "panel": "output", "default_text": "0, epoch ends only"},
    )
    keep_last: int = field(default=2, metadata={"help": "Step checkpoints to keep.", "panel": "output"})
    grad_accum: int = field(default=1, metadata={"help": "Micro-batches per optimizer step.", "panel": "train"})
    warmup_steps: int = field(
        default=0,
        metadata={
            "help": "Linear warm-up steps, then cosine decay.",
            "panel": "train",
            "default_text": "0, constant LR",
        },
    )
    min_lr: float | None = field(
        default=None,
        metadata={
            "help": "Floor of the cosine decay.",
            "panel": "train",
            "default_text": "lr/10 when a schedule is on",
        },
    )
    grad_clip: float = field(
        default=0.0,
        metadata={"help": "Clip the gradient norm to this.", "panel": "train", "default_text": "0, off"},
    )
    skip_nonfinite: int = field(
        default=0,
        metadata={"help": "Tolerate up to N steps with a NaN/inf loss by skipping them.", "panel": "train"},
    )
    encoding_errors: str = field(
        default="strict", metadata={"help": "strict, replace or ignore undecodable bytes.", "panel": "train"}
    )
    init: str | None = field(
        default=None,
        metadata={
            "help": "Start from these weights: a checkpoint, or gpt2-124M etc. once downloaded.",
            "panel": "train",
        },
    )
    data: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        for name, low in (
            ("epochs", 1),
            ("batch_size", 1),
            ("eval_freq", 1),
            ("eval_iter", 1),
            ("keep_last", 1),
            ("grad_accum", 1),
            ("sample_tokens", 0),
            ("save_every", 0),
            ("warmup_steps", 0),
            ("skip_nonfinite", 0),
        ):
            value = getattr(self, name)
            _check(
                isinstance(value, int) and not isinstance(value, bool) and value >= low,
                _flag(name),
                f"{value!r} (must be an integer >= {low})",
            )
        _check(self.stride is None or self.stride >= 1, "--stride", f"{self.stride!r} (must be >= 1)")
        _check(float(self.lr) > 0, "--lr", f"{self.lr!r} (must be > 0)")
        _check(float(self.weight_decay) >= 0, "--weight-decay", f"{self.weight_decay!r} (must be >= 0)")
        _check(0.0 < float(self.val_ratio) < 1.0, "--val-ratio", f"{self.val_ratio!r} (must be in (0, 1))")
        _check(self.min_lr is None or float(self.min_lr) >= 0, "--min-lr", f"{self.min_lr!r} (must be >= 0)")
        _check(float(self.grad_clip) >= 0, "--grad-clip", f"{self.grad_clip!r} (must be >= 0)")
        _check(
            self.device in DEVICES or self.device.startswith("cuda:"),
            "--device",
            f"{self.device!r} (choose from {', '.join(DEVICES)})",
        )
        _check(self.precision in PRECISIONS, "--precision", f"{self.precision!r} (choose from {', '.join(PRECISIONS)})")
        _check(
            self.encoding_errors in ENCODING_ERRORS,
            "--encoding-errors",
            f"{self.encoding_errors!r} (choose from {', '.join(ENCODING_ERRORS)})",
        )
        self.data = [str(p) for p in self.data]

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, where: str = "train config") -> TrainConfig:
        return _strict_build(cls, data, where)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def flag_fields(cls: type) -> list[dataclasses.Field]:
    """The fields of a config dataclass that are also ``gptcli train`` flags, in field order.

    A field is a flag when its metadata has "help"; "panel" groups it in ``--help`` (model, train or
    output), "default_text" replaces the shown default where the value alone would not explain it,
    and "type" is the command-line type where it differs from the field's (a Path for a str).
    """
    return [f for f in dataclasses.fields(cls) if "help" in f.metadata]


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _strict_build(cls: type, data: dict[str, Any], where: str) -> Any:
    if not isinstance(data, dict):
        raise UsageError(f"{where}: expected a mapping, got {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise UsageError(f"{where}: unknown key {unknown[0]!r} (known keys: {', '.join(sorted(known))})")
    return cls(**data)


def load_yaml_config(path: str | Path) -> dict[str, dict[str, Any]]:
    """Read a run config file: a mapping with optional `model` and `train` sections.

    Unknown sections or keys are errors naming the key, checked later by the dataclasses.
    """
    import yaml

    p = Path(path)
    if not p.is_file():
        raise UsageError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise UsageError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise UsageError(f"{p}: expected a mapping with 'model' and 'train' sections")
    unknown = sorted(set(data) - {"model", "train"})
    if unknown:
        raise UsageError(f"{p}: unknown key {unknown[0]!r} (known keys: model, train)")
    for section in ("model", "train"):
        if not isinstance(data.get(section, {}) or {}, dict):
            raise UsageError(f"{p}: '{section}' must be a mapping")
    return {"model": dict(data.get("model") or {}), "train": dict(data.get("train") or {})}


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
