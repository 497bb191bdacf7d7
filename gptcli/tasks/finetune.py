"""The finetuning tasks, the book's chapters 7 (``instruct``) and 6 (``classify``), with LoRA
(appendix E): a pretrained base made ready (a new head, the weights that train, adapters), the
data split as the book splits it, and each kind's loss and epoch-end records. The training loop
is the engine's (``gptcli.engine.loop``), the same as pretraining's.

Under ``torchrun``, ``--batch-size`` stays the global batch: every rank draws the same batches
from the identically seeded RNG and takes its own slice of each batch's rows, padded as the whole
batch is padded (``Task.micro_batches``).
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from gptcli import checkpoint as ckpt
from gptcli import rundir
from gptcli.config import ModelConfig
from gptcli.errors import CheckpointError, DataError, UsageError
from gptcli.finetune import classify as cls_
from gptcli.finetune import instruct as ins
from gptcli.finetune.config import KINDS, FinetuneConfig, check_new_split, parse_split, parse_targets
from gptcli.finetune.lora import apply_lora, base_name
from gptcli.model import GPT
from gptcli.tasks.base import Task


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def data_fingerprint(cfg: FinetuneConfig) -> str:
    """What a finetune run's splits are made from: the sha256 of the data file's bytes and of the
    template text (the book's when None). Finetuning data are small: hashing them is cheap."""
    h = hashlib.sha256(file_sha256(cfg.data).encode())
    h.update(b"\0" + (cfg.template if cfg.template is not None else "\0book").encode("utf-8", "surrogatepass"))
    return h.hexdigest()


def check_data(cfg: FinetuneConfig, recorded: str | None, *, doing: str = "resume") -> None:
    """Refuse to go on with (``doing``: resume, rebuild the splits of) a run whose data file was
    edited, relabelled or cut since it trained: its splits would silently be other records.
    ``recorded``: the checkpoint's fingerprint (None in checkpoints older than it: not checked).
    A file that cannot be read is left for the reader to report in its own words."""
    if recorded is None:
        return
    try:
        now = data_fingerprint(cfg)
    except OSError:
        return
    if now != recorded:
        raise DataError(
            f"{cfg.data}: the data differs from the one this run was trained on; {doing} needs the same file "
            "(and template) to split it as the run did: restore it, or start a new run on the new data"
        )


def check_split_data(finetune: dict[str, Any], doing: str = "sample --responses") -> None:
    """``check_data`` for a loaded finetune model's record (``{**info, "config": settings}``)."""
    check_data(FinetuneConfig.from_dict(finetune["config"]), finetune.get("data_fingerprint"), doing=doing)


@dataclass
class Splits:
    train: Any
    val: Any
    test: Any
    extra: dict[str, Any]  # what the checkpoint must remember: template, label names, max_length
    first_val_prompt: str | None = None


def prepare_splits(cfg: FinetuneConfig, model_cfg: ModelConfig, *, labels: list[str] | None = None) -> Splits:
    fractions = parse_split(cfg.split)
    if cfg.kind == "instruct":
        template = ins.Template() if cfg.template is None else ins.Template.from_text(cfg.template)
        records = ins.load_records(cfg.data)
        train, val, test = ins.split_records(records, fractions, seed=cfg.split_seed)
        max_length = cfg.max_length or model_cfg.context_length
        if max_length > model_cfg.context_length:
            raise UsageError(
                f"invalid --max-length: {max_length} is over the model's context {model_cfg.context_length}"
            )
        build = lambda rs: ins.InstructData.build(rs, template, max_length=max_length, mask_prompt=cfg.mask_prompt)  # noqa: E731
        return Splits(
            build(train),
            build(val),
            build(test),
            {
                "template": cfg.template,
                "val_records": val[:1],
                "test_records": test,
                "cut": (*ins.cut_responses(train, template, max_length), max_length),
            },
            first_val_prompt=template.prompt(val[0]) if val else None,
        )
    texts, raw = cls_.read_table(cfg.data, text_field=cfg.text_field, label_field=cfg.label_field)
    names = labels if labels is not None else cls_.label_names(raw)
    ids_of = {n: i for i, n in enumerate(names)}
    unknown = sorted(set(raw) - set(ids_of))
    if unknown:
        raise DataError(f"{cfg.data}: label {unknown[0]!r} is not one this model was trained on ({', '.join(names)})")
    if len(names) < 2:
        raise DataError(f"{cfg.data}: only one label ({names[0]!r}); classification needs at least two")
    rows = cls_.balance(raw) if cfg.balance else list(range(len(texts)))
    tr, va, te = cls_.random_split(rows, fractions)
    if not tr:  # the longest training text sets the padding: none is no model (check_split_sizes words it)
        check_split_sizes(cfg, Splits(tr, va, te, {}))
    if cfg.max_length is not None and cfg.max_length > model_cfg.context_length:
        raise UsageError(
            f"invalid --max-length: {cfg.max_length} is over the model's context {model_cfg.context_length}"
        )
    build = lambda rs, m: cls_.ClassifyData.build([texts[i] for i in rs], [ids_of[raw[i]] for i in rs], max_length=m)  # noqa: E731
    train = build(tr, cfg.max_length)
    if train.max_length > model_cfg.context_length:
        raise DataError(
            f"{cfg.data}: the longest training text has {train.max_length} tokens, more than the model's context "
            f"{model_cfg.context_length}; cut them with --max-length {model_cfg.context_length}"
        )
    return Splits(
        train,
        build(va, train.max_length),
        build(te, train.max_length),
        {"labels": names, "max_length": train.max_length},
    )


def check_split_sizes(cfg: FinetuneConfig, splits: Splits) -> None:
    """A new run needs training and validation examples: a DataError naming the file, its count
    and the split when the rounding of ``--split`` leaves either empty (the test split may be)."""
    n = len(splits.train) + len(splits.val) + len(splits.test)
    what = "records" if cfg.kind == "instruct" else "examples" + (" after --balance" if cfg.balance else "")
    for name, part in (("training", splits.train), ("validation", splits.val)):
        if len(part) == 0:
            raise DataError(
                f"{cfg.data}: {n} {what} split {cfg.split} (train,val,test) leave no {name} examples; "
                "give more data or a larger share with --split"
            )


# ---------------------------------------------------------------------------------------------
# The model


def load_base(init: str | Path) -> tuple[Path, dict[str, Any]]:
    from gptcli import weights

    path = weights.resolve_model(str(init))
    obj = ckpt.load_checkpoint(path)
    if obj.get("kind") in KINDS:
        raise UsageError(f"invalid --init: {path} is a finetuned {obj['kind']} checkpoint; give the pretrained model")
    return path, obj


def build_model(
    cfg: FinetuneConfig, base: dict[str, Any], base_path: Path | str, *, n_classes: int | None
) -> tuple[GPT, ModelConfig]:
    """The pretrained model made ready for finetuning, as the book does it: new head (classify),
    the trainable parts chosen, LoRA adapters added."""
    model_cfg = dataclasses.replace(ckpt.read_model_config(base, base_path), drop_rate=cfg.drop_rate)
    ckpt.check_state_fits(model_cfg, base["model_state_dict"], base_path)
    torch.manual_seed(cfg.seed)
    model = GPT(model_cfg)
    ckpt.load_weights(model, base["model_state_dict"], source=str(base_path))
    if cfg.kind == "classify":
        cls_.replace_head(model, n_classes or 2, seed=cfg.seed)
        cls_.set_trainable(model, cfg.trainable)
    if cfg.lora_rank:
        torch.manual_seed(cfg.seed)
        apply_lora(model, rank=cfg.lora_rank, alpha=cfg.lora_alpha, targets=parse_targets(cfg.lora_targets))
    return model, model_cfg


def saved_state(model: GPT, cfg: FinetuneConfig, base_keys: set[str]) -> dict[str, torch.Tensor]:
    """Full finetuning: every weight. LoRA: the trainable tensors and any not in the base (the
    classifier's new head), so the file is the adapters, not a copy of the model."""
    sd = model.state_dict()
    if not cfg.lora_rank:
        return sd
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    return {n: t for n, t in sd.items() if n in trainable or base_name(n) not in base_keys}


def load_partial(model: torch.nn.Module, state: dict[str, torch.Tensor], *, full: bool, source: str) -> None:
    """Load a finetune checkpoint's tensors: all of the model's (full) or a subset (LoRA)."""
    own = model.state_dict()
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in state if k in own and tuple(own[k].shape) != tuple(state[k].shape)]
    missing = [k for k in own if k not in state] if full else []
    if unexpected or wrong or missing:
        what = "; ".join(
            f"{label} {', '.join(v[:4])}"
            for label, v in (("unexpected", unexpected), ("wrong shape", wrong), ("missing", missing))
            if v
        )
        raise CheckpointError(f"{source}: weights do not fit the model: {what}")
    with torch.no_grad():
        for k, t in state.items():
            own[k].copy_(t)


def model_from_finetune_checkpoint(obj: dict[str, Any], path: Path | str) -> tuple[GPT, FinetuneConfig, dict[str, Any]]:
    """Rebuild a finetuned model for use: base weights (checked against the stored hash), new
    head, adapters, then the checkpoint's tensors."""
    if obj.get("kind") not in KINDS:
        raise CheckpointError(f"{path}: not a finetuned checkpoint (kind {obj.get('kind')!r})")
    cfg = FinetuneConfig.from_dict(obj["train_config"])
    info = obj["finetune"]
    if cfg.lora_rank:
        base_path = Path(info["base"]["path"])
        if not base_path.is_file():
            raise CheckpointError(
                f"{path}: its base model {base_path} is missing (a LoRA checkpoint holds only the adapters)"
            )
        if file_sha256(base_path) != info["base"]["sha256"]:
            raise CheckpointError(
                f"{path}: its base model {base_path} has changed since training (hash differs); refusing to load"
            )
        base = ckpt.load_checkpoint(base_path)
    else:  # a full checkpoint holds every weight; the architecture alone comes from its config
        base_path = Path(path)
        model_cfg = ckpt.read_model_config(obj, path)
        base = {"model_config": model_cfg.to_dict(), "model_state_dict": GPT(model_cfg).state_dict()}
    n = len(info["labels"]) if cfg.kind == "classify" else None
    model, _ = build_model(cfg, base, base_path, n_classes=n)
    load_partial(model, obj["model_state_dict"], full=not cfg.lora_rank, source=str(path))
    model.eval()
    return model, cfg, info


# ---------------------------------------------------------------------------------------------
# The tasks


class FinetuneTask(Task):
    """What ``instruct`` and ``classify`` share: a pretrained base, the book's splits, LoRA."""

    batch_is_global = True
    reseed_before_optimizer = True
    logs_throughput = False  # metrics.jsonl holds the book's numbers only, the same on every run

    def __init__(self, cfg: FinetuneConfig):
        self.cfg = cfg
        self.partial_state = bool(cfg.lora_rank)

    def build(self, engine: Any, resume_from: dict[str, Any] | None) -> tuple[GPT, ModelConfig]:
        cfg = self.cfg
        if resume_from is None:
            check_new_split(cfg.split)  # before the base model is loaded: a bad flag fails at once
        extra = (resume_from or {}).get("finetune", {})
        self.base_path, base = load_base(extra.get("base", {}).get("path", cfg.init))
        rundir.pin_checkpoint(self.base_path, engine.run_dir)  # a base run's rotation keeps it
        self.base_sha = file_sha256(self.base_path)
        if resume_from is not None and extra.get("base", {}).get("sha256") not in (None, self.base_sha):
            raise CheckpointError(f"{self.base_path}: the base model changed since this run started (its hash differs)")
        model_cfg = dataclasses.replace(ckpt.read_model_config(base, self.base_path), drop_rate=cfg.drop_rate)
        if resume_from is not None:
            check_data(cfg, extra.get("data_fingerprint"))
        self.splits = prepare_splits(cfg, model_cfg, labels=extra.get("labels"))
        if resume_from is None:
            check_split_sizes(cfg, self.splits)
            self._check_cut(engine)
        self.train, self.val = self.splits.train, self.splits.val
        self.data_fingerprint = data_fingerprint(cfg)
        n_classes = len(self.splits.extra["labels"]) if "labels" in self.splits.extra else None
        model, model_cfg = build_model(cfg, base, self.base_path, n_classes=n_classes)
        self.base_keys = set(base["model_state_dict"])
        return model, model_cfg

    def _check_cut(self, engine: Any) -> None:
        """Say how many training records lose their response to the length limit; refuse a run
        in which none keeps any (it would train on prompts alone)."""
        if "cut" not in self.splits.extra:
            return
        part, whole, limit = self.splits.extra["cut"]
        n = len(self.splits.train)
        if whole == n:
            raise DataError(
                f"{self.cfg.data}: no training record keeps any of its response within {limit} tokens (each "
                "prompt alone is longer); raise --max-length, or use a model with a longer context"
            )
        if self.cfg.mask_prompt and whole >= engine.global_batch():
            # Those records keep no target at all once their prompt is masked, and a batch drawn
            # from them alone has none to average: a NaN loss, reported as a "non-finite loss".
            raise DataError(
                f"{self.cfg.data}: with --mask-prompt, {whole} of {n} training records have every target masked (each "
                f"prompt alone fills the {limit}-token limit), enough to fill a batch of {engine.global_batch()} with "
                "no target to learn; raise --max-length, shorten or drop those records, or train without --mask-prompt"
            )
        if part or whole:
            engine.cb.warn(
                f"{self.cfg.data}: {whole} of {n} training records lose all of their response and {part} part "
                f"of it to the {limit}-token limit (--max-length, or the model's context)"
            )

    def too_little_data(self, engine: Any) -> Exception:
        return DataError(
            f"{self.cfg.data}: {len(self.train)} training examples, fewer than one batch of {engine.global_batch()}"
        )

    def start_info(self, engine: Any) -> dict[str, Any]:
        return {"train": len(self.splits.train), "val": len(self.splits.val), "test": len(self.splits.test)}

    def write_config(self, engine: Any) -> None:
        import yaml

        rundir.write_config(engine.run_dir, yaml.safe_dump({"finetune": self.cfg.to_dict()}, sort_keys=False))

    def saved_state(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        return saved_state(model, self.cfg, self.base_keys)

    def load_state(self, model: torch.nn.Module, state: dict[str, torch.Tensor], *, source: str) -> None:
        load_partial(model, state, full=not self.cfg.lora_rank, source=source)

    def info(self) -> dict[str, Any]:
        """What a finetune checkpoint remembers beyond the shared state: its kind's data (labels,
        template), the base it started from (path and hash) and the LoRA settings."""
        cfg = self.cfg
        return {
            "kind": cfg.kind,
            "base": {"path": str(Path(self.base_path).resolve()), "sha256": self.base_sha},
            "data_fingerprint": self.data_fingerprint,
            "lora": {"rank": cfg.lora_rank, "alpha": cfg.lora_alpha, "targets": cfg.lora_targets}
            if cfg.lora_rank
            else None,
        }

    def checkpoint_extra(self, engine: Any) -> dict[str, Any]:
        return {"kind": self.cfg.kind, "finetune": self.info()}


class InstructTask(FinetuneTask):
    kind = "instruct"
    epoch_end_types = ("sample",)
    # Before --max-tokens, finetune checkpoints kept one count, "seen": the book's (tokens here).
    legacy_counts = {"seen": "tokens_seen"}

    def loss_mean(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return model(x, targets=y)  # targets of -100 (padding, a masked prompt) are left out

    def count(self, y: torch.Tensor) -> int:
        return int((y != ins.IGNORE_INDEX).sum())

    def max_step_tokens(self, engine: Any) -> int:
        """The most tokens a training batch can hold: batches pad to their longest record, so a
        bound, and a token budget's planned length (the LR schedule's) ends no later than it does."""
        data = self.splits.train
        width = min(max((len(ids) for ids in data.ids), default=1), data.max_length or engine.model_cfg.context_length)
        return engine.global_batch() * max(1, width)

    def epoch_end(self, engine: Any) -> list[dict[str, Any]]:
        """The book's sample: the first validation record's prompt, continued greedily."""
        if self.splits.first_val_prompt is None:
            return []
        st = engine.state
        text = engine.sample_text(self.splits.first_val_prompt)
        return [{"type": "sample", "epoch": st.epoch, "step": st.step - 1, **self.seen(st), "text": text}]

    def info(self) -> dict[str, Any]:
        return {**super().info(), "template": self.cfg.template}


class ClassifyTask(FinetuneTask):
    kind = "classify"
    epoch_end_types = ("accuracy",)
    legacy_counts = {"seen": "examples_seen"}  # chapter 6 counts examples
    epoch_end_draws_rng = True  # the accuracy of the training split iterates a shuffled loader

    def loss_mean(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return cls_.classify_loss(model, x, y)

    def loss_sum(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(cls_.last_token_logits(model, x), y, reduction="sum")

    def count(self, y: torch.Tensor) -> int:
        return y.shape[0]

    def max_step_tokens(self, engine: Any) -> int:
        return engine.global_batch() * self.splits.train.max_length  # every text pads to one length

    def split_counts(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, int]:
        return {"accuracy": cls_.correct_count(model, x, y)}

    def final_result(self, engine: Any) -> tuple[dict[str, Any], str]:
        """The book's accuracies after training: every batch of each split (a test split of 0 has none)."""
        splits = self.splits
        acc = {
            name: accuracy(engine, getattr(splits, name), shuffle=name == "train", num_batches=None)
            for name in ("train", "val", "test")
            if len(getattr(splits, name))
        }
        text = " | ".join(f"{k.capitalize()} accuracy: {v * 100:.2f}%" for k, v in acc.items())
        return {f"{k}_accuracy": v for k, v in acc.items()}, text

    def seen(self, progress: Any) -> dict[str, int]:
        # The book's count is examples_seen; tokens_seen counts the padded batches' tokens, as train's.
        return {"tokens_seen": progress.tokens_seen, "examples_seen": progress.examples_seen}

    def epoch_end(self, engine: Any) -> list[dict[str, Any]]:
        """The book's accuracies after each epoch, over ``eval_iter`` batches of each split."""
        st, n = engine.state, engine.cfg.eval_iter
        tr = accuracy(engine, self.splits.train, shuffle=True, num_batches=n)
        va = accuracy(engine, self.splits.val, shuffle=False, num_batches=n)
        engine.model.train()
        return [
            {
                "type": "accuracy",
                "epoch": st.epoch,
                "step": st.step - 1,
                **self.seen(st),
                "train_acc": tr,
                "val_acc": va,
            }
        ]

    def info(self) -> dict[str, Any]:
        return {**super().info(), "labels": self.splits.extra["labels"], "max_length": self.splits.extra["max_length"]}


@torch.no_grad()
def accuracy(engine: Any, data: Any, *, shuffle: bool, num_batches: int | None) -> float:
    """The book's ``calc_accuracy_loader``, over the engine's batches (each rank its rows)."""
    from gptcli import distributed

    engine.model.eval()
    correct = total = 0
    for b in engine.loader_batches(data, shuffle=shuffle, num_batches=num_batches):
        for x, y in engine.micro_batches(data, b):
            if len(x):
                correct += cls_.correct_count(engine.model, x, y)
        total += len(b)
    if engine.dist.enabled:
        correct = distributed.all_reduce_sum_int(correct, engine.device)
    return correct / total if total else float("nan")
