"""The finetuning loop: the book's ``train_model_simple`` (chapter 7) and
``train_classifier_simple`` (chapter 6), resumable exactly.

Batches come in the order the book's ``DataLoader(shuffle=True, drop_last=True)`` draws from the
global torch RNG (``gptcli.data.loader_iter_seed``), and every evaluation consumes the RNG as the
book's does, so a seeded run logs the book's losses. A checkpoint holds the trainable weights (all
of them, or with LoRA only the adapters and the new head, plus a hash of the base file), AdamW's
state, the progress inside the epoch and every RNG state: a run killed at any save and resumed
ends with the same weights, bit for bit on CPU.

Under ``torchrun`` (gloo on CPU, NCCL on CUDA) ``--batch-size`` stays the global batch: every rank
draws the same batches from the identically seeded RNG and takes its own contiguous slice of each
batch's rows, padded as the whole batch is padded. Each rank's loss is the sum over its slice
divided by the whole batch's count (examples for classify, non-ignored target tokens for
instruct), so the gradients DDP averages, and the losses and accuracies logged, are the ones a
single process computes. Only rank 0 writes the run directory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from gptcli import checkpoint as ckpt
from gptcli import distributed, rundir
from gptcli.config import ModelConfig
from gptcli.data import batches_of, loader_iter_seed, permutation
from gptcli.device import autocast_for, resolve_device
from gptcli.errors import CheckpointError, DataError, UsageError
from gptcli.finetune import classify as cls_
from gptcli.finetune import instruct as ins
from gptcli.finetune.config import KINDS, FinetuneConfig, check_new_split, no_split_error, parse_split, parse_targets
from gptcli.finetune.lora import apply_lora, base_name
from gptcli.metrics import MetricsWriter
from gptcli.model import GPT
from gptcli.tokenizer import decode, encode
from gptcli.training import Every, budget_reached, format_duration, lr_at, planned_steps, stopped_message, update_best


@dataclass
class Progress:
    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps completed
    batches_done: int = 0  # in the current epoch
    epoch_seed: int | None = None
    tokens_seen: int = 0  # the training batches' tokens, padding included (what --max-tokens counts)
    examples_seen: int = 0  # the training examples: chapter 6's examples_seen (classify logs it)
    train_seconds: float = 0.0  # over all resumes (what --max-time counts)
    planned_steps: int = 0  # the length the LR schedule decays over
    metrics_lines: int = 0
    best_val: float = float("inf")  # the lowest validation loss so far (best.pth holds its weights)
    evals_since_best: int = 0  # evaluations without a new best validation loss (for --patience)
    history: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, kind: str | None = None) -> Progress:
        known = {f.name for f in dataclasses.fields(cls)}
        progress = cls(**{k: v for k, v in d.items() if k in known})
        # Checkpoints from before examples_seen kept one count, "seen": the book's, which is
        # examples for classify and tokens for instruct (before --max-tokens, the only count).
        if "seen" in d and "examples_seen" not in d and kind == "classify":
            progress.examples_seen = d["seen"]
        if "seen" in d and "tokens_seen" not in d and kind == "instruct":
            progress.tokens_seen = d["seen"]
        return progress


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# Data


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
            {"template": cfg.template, "val_records": val[:1], "test_records": test},
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


def make_optimizer(model: torch.nn.Module, cfg: FinetuneConfig, device: torch.device) -> torch.optim.AdamW:
    """The book's AdamW(lr=5e-5, weight_decay=0.1) over the parameters that train (the frozen ones
    never get a gradient, so the update is the same as the book's over all of them)."""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=device.type in ("cpu", "cuda"))


# ---------------------------------------------------------------------------------------------
# The run


class FinetuneTrainer:
    def __init__(
        self,
        cfg: FinetuneConfig,
        run_dir: Path | str,
        *,
        on_event: Callable[[dict[str, Any]], None] | None = None,
        should_stop: Callable[[], int | None] | None = None,
        resume_from: dict[str, Any] | None = None,
    ):
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.on_event = on_event or (lambda r: None)
        self.should_stop = should_stop or (lambda: None)
        self.device = resolve_device(cfg.device)
        self.dist = distributed.init(self.device.type)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        if not self.dist.is_main:  # rank 0 reports for all
            self.on_event = lambda r: None
        if cfg.batch_size < self.dist.world_size:
            raise UsageError(
                f"invalid --batch-size: {cfg.batch_size} is fewer than the {self.dist.world_size} processes "
                "torchrun started (it is the global batch, split between them)"
            )
        if resume_from is None:
            check_new_split(cfg.split)  # before the base model is loaded: a bad flag fails at once
        extra = (resume_from or {}).get("finetune", {})
        self.base_path, base = load_base(extra.get("base", {}).get("path", cfg.init))
        self.base_sha = file_sha256(self.base_path)
        if resume_from is not None and extra.get("base", {}).get("sha256") not in (None, self.base_sha):
            raise CheckpointError(f"{self.base_path}: the base model changed since this run started (its hash differs)")
        model_cfg = dataclasses.replace(ckpt.read_model_config(base, self.base_path), drop_rate=cfg.drop_rate)
        self.splits = prepare_splits(cfg, model_cfg, labels=extra.get("labels"))
        if resume_from is None:
            check_split_sizes(cfg, self.splits)
        n_classes = len(self.splits.extra["labels"]) if cfg.kind == "classify" else None
        self.model, self.model_cfg = build_model(cfg, base, self.base_path, n_classes=n_classes)
        self.base_keys = set(base["model_state_dict"])
        del base
        self.model.to(self.device)
        torch.manual_seed(cfg.seed)  # the book seeds again right before its optimizer and loop
        self.optimizer = make_optimizer(self.model, cfg, self.device)
        self.progress = Progress()
        self.metrics: MetricsWriter | None = None
        self._clock: tuple[float, float] | None = None  # (monotonic time, train_seconds) when fit began
        self.stop_reason: str | None = None  # the budget flag that ended the run, if one did
        self._best_saved = float("inf")  # the validation loss of the checkpoint best.pth links to
        if resume_from is not None:
            self.restore(resume_from)
        # What the training steps run: under torchrun, DDP (over the trainable parameters only)
        # averages the gradients; evaluation uses the plain model.
        self.train_model: torch.nn.Module = self.model
        if self.dist.enabled:
            self.train_model = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.dist.local_rank] if self.device.type == "cuda" else None
            )

    # -- checkpoints ----------------------------------------------------------------------------

    def finetune_info(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "kind": self.cfg.kind,
            "base": {"path": str(Path(self.base_path).resolve()), "sha256": self.base_sha},
            "lora": {"rank": self.cfg.lora_rank, "alpha": self.cfg.lora_alpha, "targets": self.cfg.lora_targets}
            if self.cfg.lora_rank
            else None,
        }
        if self.cfg.kind == "classify":
            info["labels"] = self.splits.extra["labels"]
            info["max_length"] = self.splits.extra["max_length"]
        else:
            info["template"] = self.cfg.template
        return info

    def checkpoint_dict(self) -> dict[str, Any]:
        return ckpt.training_checkpoint(
            self.model_cfg,
            self.cfg.to_dict(),
            saved_state(self.model, self.cfg, self.base_keys),
            optimizer_state=self.optimizer.state_dict(),
            progress=self.progress.to_dict(),
            rng=ckpt.capture_rng(),
            world_size=self.dist.world_size,
            kind=self.cfg.kind,
            finetune=self.finetune_info(),
        )

    def save(self) -> Path:
        path = rundir.step_checkpoint_path(self.run_dir, self.progress.step)
        self.progress.train_seconds = self._elapsed()
        if self.dist.is_main:
            self.progress.metrics_lines = self.metrics.lines if self.metrics else 0
            ckpt.atomic_save(self.checkpoint_dict(), path)
            self._update_best(path)
            rundir.rotate(self.run_dir, self.cfg.keep_last, protect={path.resolve()})
            self.on_event({"type": "save", "path": str(path)})
        distributed.barrier()
        return path

    def _update_best(self, path: Path) -> None:
        """best.pth, as train's: a link to the checkpoint whose latest validation loss is the lowest."""
        self._best_saved = update_best(
            self.run_dir,
            path,
            self.progress.history,
            self.progress.best_val,
            self._best_saved,
            lambda text: self.on_event({"type": "warning", "text": text}),
        )

    def restore(self, obj: dict[str, Any]) -> None:
        load_partial(self.model, obj["model_state_dict"], full=not self.cfg.lora_rank, source="checkpoint")
        self.optimizer.load_state_dict(obj["optimizer_state_dict"])
        for group in self.optimizer.param_groups:
            group["fused"] = self.device.type in ("cpu", "cuda")
        self.progress = Progress.from_dict(obj.get("progress", {}), kind=self.cfg.kind)
        self._best_saved = self.progress.best_val
        if "rng" in obj:
            ckpt.restore_rng(obj["rng"])

    # -- pieces of the book's loops ---------------------------------------------------------------

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x, y = x.to(self.device), y.to(self.device)
        with autocast_for(self.device, self.cfg.precision):
            if self.cfg.kind == "classify":
                return cls_.classify_loss(self.model, x, y)
            return self.model(x, targets=y)

    # -- one rank's share of a batch (under torchrun) --------------------------------------------

    def _mine(self, t: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous slice of a global batch's rows (all of them on one process)."""
        n, r, w = t.shape[0], self.dist.rank, self.dist.world_size
        return t[n * r // w : n * (r + 1) // w]

    def _count(self, y: torch.Tensor) -> int:
        """What the book's loss averages over: examples (classify) or non-ignored targets (instruct)."""
        return y.shape[0] if self.cfg.kind == "classify" else int((y != ins.IGNORE_INDEX).sum())

    def _loss_sum(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The sum of the losses the book's loss averages (0 for a slice whose targets are all
        ignored), so that ranks' sums add up to the whole batch's."""
        x, y = x.to(self.device), y.to(self.device)
        with autocast_for(self.device, self.cfg.precision):
            if self.cfg.kind == "classify":
                return F.cross_entropy(cls_.last_token_logits(model, x), y, reduction="sum").float()
            logits = model(x)  # (B, T, vocab)
            return F.cross_entropy(
                logits.flatten(0, 1), y.flatten(), ignore_index=ins.IGNORE_INDEX, reduction="sum"
            ).float()

    def _all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        if self.dist.enabled:
            torch.distributed.all_reduce(t)
        return t

    @torch.no_grad()
    def _batch_loss(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """One batch's mean loss: on one process the book's ``calc_loss_batch``; under torchrun
        each rank's sum over its slice, added up and divided by the whole batch's count."""
        if not self.dist.enabled:
            return self.loss(x, y).item()
        count = self._count(y)  # the same on every rank: each holds the whole batch
        if count == 0:
            return float("nan")  # as the book's mean over no targets
        xs, ys = self._mine(x), self._mine(y)
        part = self._loss_sum(self.model, xs, ys) if len(xs) else torch.zeros((), device=self.device)
        return self._all_reduce(part.reshape(1)).item() / count

    @torch.no_grad()
    def loader_loss(self, data: Any, *, shuffle: bool, num_batches: int | None) -> float:
        """The book's ``calc_loss_loader`` over a fresh loader (train: shuffled, drop_last)."""
        n_batches = len(data) // self.cfg.batch_size if shuffle else -(-len(data) // self.cfg.batch_size)
        if n_batches == 0:
            return float("nan")
        seed = loader_iter_seed(shuffle=shuffle)
        order = permutation(len(data), seed) if shuffle else list(range(len(data)))
        batches = batches_of(order, self.cfg.batch_size, drop_last=shuffle)
        k = n_batches if num_batches is None else min(num_batches, n_batches)
        return sum(self._batch_loss(*data.batch(b)) for b in batches[:k]) / k

    @torch.no_grad()
    def loader_accuracy(self, data: Any, *, shuffle: bool, num_batches: int | None) -> float:
        """The book's ``calc_accuracy_loader``."""
        self.model.eval()
        seed = loader_iter_seed(shuffle=shuffle)
        order = permutation(len(data), seed) if shuffle else list(range(len(data)))
        batches = batches_of(order, self.cfg.batch_size, drop_last=shuffle)
        k = len(batches) if num_batches is None else min(num_batches, len(batches))
        correct = total = 0
        for b in batches[:k]:
            x, y = (self._mine(t) for t in data.batch(b))  # under torchrun, this rank's rows
            if len(x):
                correct += cls_.correct_count(self.model, x.to(self.device), y.to(self.device))
            total += len(b)
        if self.dist.enabled:
            correct = int(self._all_reduce(torch.tensor([correct], device=self.device)).item())
        return correct / total if total else float("nan")

    def evaluate(self) -> tuple[float, float]:
        self.model.eval()
        tr = self.loader_loss(self.splits.train, shuffle=True, num_batches=self.cfg.eval_iter)
        va = self.loader_loss(self.splits.val, shuffle=False, num_batches=self.cfg.eval_iter)
        self.model.train()
        return tr, va

    @torch.no_grad()
    def greedy_sample(self, prompt: str) -> str:
        """The book's ``generate_and_print_sample``: 50 greedy tokens, no stop at end-of-text."""
        self.model.eval()
        ctx = self.model_cfg.context_length
        idx = torch.tensor([encode(prompt)], device=self.device)
        for _ in range(self.cfg.sample_tokens):
            logits = self.model(idx[:, -ctx:])[:, -1, :]
            idx = torch.cat([idx, logits.argmax(dim=-1, keepdim=True)], dim=1)
        self.model.train()
        return decode(idx[0].tolist())

    def _log(self, record: dict[str, Any]) -> None:
        if self.metrics is not None:
            self.metrics.write(record)
        self.on_event(record)

    # -- the run's length: epochs, budgets, the LR schedule ---------------------------------------

    def steps_per_epoch(self) -> int:
        return len(self.splits.train) // self.cfg.batch_size

    def tokens_per_step(self) -> int:
        """The most tokens (``x.numel()``) a training batch can hold: exact for classify, whose
        texts all pad to one length; for instruct, whose batches pad to their longest record, a
        bound, so a token budget's planned length (the LR schedule's) ends no later than it does."""
        data = self.splits.train
        if self.cfg.kind == "classify":
            width = data.max_length
        else:
            width = min(
                max((len(ids) for ids in data.ids), default=1), data.max_length or self.model_cfg.context_length
            )
        return self.cfg.batch_size * max(1, width)

    def planned_steps(self) -> int:
        return planned_steps(self.cfg, self.steps_per_epoch(), self.tokens_per_step())

    def _plan(self) -> None:
        """The planned length; a resume whose budget changed it says how the LR schedule changes."""
        st, cfg = self.progress, self.cfg
        new = self.planned_steps()
        if st.planned_steps and st.planned_steps != new and (cfg.warmup_steps or cfg.min_lr is not None) and st.step:
            self.on_event(
                {
                    "type": "info",
                    "text": f"LR schedule: the cosine decay now ends at step {new} (was step {st.planned_steps}), "
                    f"from step {st.step} on",
                }
            )
        st.planned_steps = new

    def _elapsed(self) -> float:
        """Training time so far, over all resumes."""
        if self._clock is None:
            return self.progress.train_seconds
        return self._clock[1] + time.monotonic() - self._clock[0]

    def _budget(self, *, at_start: bool = False, evaluated: bool = True) -> str | None:
        """Why the run stops now (a budget or --patience, as train's ``_stop_check``); None to go on."""
        st = self.progress
        seconds = st.train_seconds if at_start else self._elapsed()
        reason = budget_reached(self.cfg, step=st.step, tokens_seen=st.tokens_seen, seconds=seconds)
        if reason is None and self.cfg.patience and st.evals_since_best >= self.cfg.patience and evaluated:
            reason = (
                f"--patience {self.cfg.patience} ({st.evals_since_best} evaluations without a new best validation loss)"
            )
        if self.dist.enabled and self.cfg.max_time is not None:  # clocks differ between ranks: agree
            if distributed.all_reduce_max_int(int(reason is not None), self.device) and reason is None:
                reason = f"--max-time {format_duration(self.cfg.max_time)}"
        return reason

    def _due(self, every: Every, tokens_before: int) -> bool:
        """Whether an --eval-freq/--save-every interval falls due after this step, the same on
        every rank (each has its own clock)."""
        due = every.due(self.progress.step, tokens_before, self.progress.tokens_seen)
        if self.dist.enabled and every.unit == "seconds":
            due = bool(distributed.all_reduce_max_int(int(due), self.device))
        return due

    def _stop_requested(self) -> int | None:
        """The signal that asks the run to stop, if any rank got one: every rank stops at the same step."""
        signum = self.should_stop() or 0
        if self.dist.enabled:
            signum = distributed.all_reduce_max_int(signum, self.device)
        return signum or None

    # -- the loop ---------------------------------------------------------------------------------

    def fit(self) -> Progress:
        """The book's loop, for ``epochs`` or until a budget (``--max-steps``, ``--max-tokens``,
        ``--max-time``) ends it, whichever comes first: a budget ends it after the step that reaches
        it, evaluated and saved (``stop_reason`` names it)."""
        cfg, st = self.cfg, self.progress
        steps_per_epoch = self.steps_per_epoch()
        if steps_per_epoch < 1:
            raise DataError(
                f"{cfg.data}: {len(self.splits.train)} training examples, fewer than one batch of {cfg.batch_size}"
            )
        if self.dist.is_main:  # under torchrun, rank 0 writes for all
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.metrics = MetricsWriter(rundir.metrics_path(self.run_dir))
            if self.metrics.lines != st.metrics_lines:
                self.metrics.truncate(st.metrics_lines)
        self.on_event(
            {
                "type": "start",
                "train": len(self.splits.train),
                "val": len(self.splits.val),
                "test": len(self.splits.test),
                "steps_per_epoch": steps_per_epoch,
                "trainable": sum(p.numel() for p in self.model.parameters() if p.requires_grad),
                "resumed": st.step > 0 or st.epoch > 0,
            }
        )
        self.model.train()
        self._plan()
        self._clock = (time.monotonic(), st.train_seconds)
        eval_every, save_every = Every(cfg.eval_freq, first=True), Every(cfg.save_every, first=False)
        self.stop_reason = self._budget(at_start=True)
        while st.epoch < cfg.epochs and self.stop_reason is None:
            if st.epoch_seed is None:
                st.epoch_seed = loader_iter_seed(shuffle=True)
                st.batches_done = 0
            batches = batches_of(permutation(len(self.splits.train), st.epoch_seed), cfg.batch_size, drop_last=True)
            while st.batches_done < len(batches):
                tokens_before = st.tokens_seen
                self._step(batches[st.batches_done])
                st.batches_done += 1
                st.step += 1
                evaluated = self._due(eval_every, tokens_before)  # N steps: the book's (step - 1) % N == 0
                if evaluated:
                    self._evaluate_and_log(steps_per_epoch)
                self.stop_reason = self._budget(evaluated=evaluated)
                if self.stop_reason is not None:
                    if not evaluated:  # off the --eval-freq schedule: must not shift the RNG streams
                        rng = ckpt.capture_rng()
                        self._evaluate_and_log(steps_per_epoch, scheduled=False)
                        ckpt.restore_rng(rng)
                    if st.batches_done < len(batches):  # an epoch's end saves below
                        self.save()
                    break
                stop = self._stop_requested()
                # With --patience, each new best is saved, so best.pth holds the best weights when it stops.
                best = cfg.patience > 0 and evaluated and st.evals_since_best == 0
                due = self._due(save_every, tokens_before) or best
                if (due and st.batches_done < len(batches)) or stop:
                    path = self.save()
                    if stop:
                        return self._interrupted(path, stop)
            if st.batches_done < len(batches):  # a budget ended the run inside the epoch
                break
            self._end_epoch()
            st.epoch += 1
            st.epoch_seed = None
            st.batches_done = 0
            path = self.save()
            stop = self._stop_requested()
            if stop and st.epoch < cfg.epochs and self.stop_reason is None:
                return self._interrupted(path, stop)
        if self.stop_reason is not None:
            text = stopped_message(self.stop_reason, step=st.step, tokens_seen=st.tokens_seen, seconds=self._elapsed())
            self.on_event({"type": "stopped", "reason": self.stop_reason, "step": st.step, "text": text})
        return st

    def _evaluate_and_log(self, steps_per_epoch: int, *, scheduled: bool = True) -> None:
        """The book's periodic evaluation: losses on both splits, in the history and the log."""
        st = self.progress
        tr, va = self.evaluate()
        h = {"epoch": st.epoch + 1, "step": st.step - 1, **self._seen(), "train_loss": tr, "val_loss": va}
        st.history.append(h)
        if scheduled:  # --patience counts the evaluations of the --eval-freq schedule only, as train's
            improved = not math.isnan(va) and va < st.best_val
            st.evals_since_best = 0 if improved else st.evals_since_best + 1
        if not math.isnan(va):
            st.best_val = min(st.best_val, va)
        self._log({"type": "eval", **h, "lr": self.optimizer.param_groups[0]["lr"], "steps_per_epoch": steps_per_epoch})

    def _seen(self) -> dict[str, int]:
        """What a metrics record says was trained on so far: the tokens (every kind, as train's
        records and --max-tokens count them) and, for classify, the examples (chapter 6's
        ``examples_seen``)."""
        st = self.progress
        seen = {"tokens_seen": st.tokens_seen}
        if self.cfg.kind == "classify":
            seen["examples_seen"] = st.examples_seen
        return seen

    def _interrupted(self, path: Path, signum: int):
        from gptcli.training import Interrupted

        raise Interrupted(
            f"interrupted at step {self.progress.step}; saved {path}; continue with: gptcli finetune resume {self.run_dir}",
            128 + signum,
        )

    def _step(self, rows: list[int]) -> None:
        cfg, st = self.cfg, self.progress
        # Constant (the book's) unless --warmup-steps or --min-lr asks for warm-up and cosine decay.
        lr = lr_at(st.step, lr=cfg.lr, warmup_steps=cfg.warmup_steps, total_steps=st.planned_steps, min_lr=cfg.min_lr)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        self.optimizer.zero_grad()
        x, y = self.splits.train.batch(rows)  # the whole (global) batch, padded as one process pads it
        if self.dist.enabled:
            self._shared_backward(x, y)
        else:
            loss = self.loss(x, y)
            if not torch.isfinite(loss):
                raise DataError(f"non-finite loss at step {st.step}; nothing saved for it")
            loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.optimizer.step()
        st.tokens_seen += x.numel()  # the book's tokens_seen (chapter 7), and what --max-tokens counts
        st.examples_seen += x.shape[0]

    def _shared_backward(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """This rank's part of a step under torchrun: its rows' loss sum over the whole batch's
        count, times the world size, as DDP averages the ranks' gradients, which are then those
        of the whole batch's mean loss. Every rank raises together on a non-finite loss."""
        count, world = self._count(y), self.dist.world_size
        part = self._loss_sum(self.train_model, self._mine(x), self._mine(y))
        (part * (world / max(count, 1))).backward()
        total = self._all_reduce(part.detach().reshape(1).clone()).item()
        if count == 0 or not math.isfinite(total):
            raise DataError(f"non-finite loss at step {self.progress.step}; nothing saved for it")

    def _end_epoch(self) -> None:
        st = self.progress
        if self.cfg.kind == "classify":
            tr = self.loader_accuracy(self.splits.train, shuffle=True, num_batches=self.cfg.eval_iter)
            va = self.loader_accuracy(self.splits.val, shuffle=False, num_batches=self.cfg.eval_iter)
            self.model.train()
            self._log(
                {
                    "type": "accuracy",
                    "epoch": st.epoch + 1,
                    "step": st.step - 1,
                    **self._seen(),  # every metrics record carries them (runs, plot)
                    "train_acc": tr,
                    "val_acc": va,
                }
            )
        elif self.splits.first_val_prompt is not None and self.dist.is_main:
            text = self.greedy_sample(self.splits.first_val_prompt)
            self._log({"type": "sample", "epoch": st.epoch + 1, "step": st.step - 1, **self._seen(), "text": text})

    def final_accuracy(self) -> dict[str, float]:
        """The book's accuracies after training: every batch of each split (a test split of 0 has none)."""
        return {
            name: self.loader_accuracy(getattr(self.splits, name), shuffle=name == "train", num_batches=None)
            for name in ("train", "val", "test")
            if len(getattr(self.splits, name))
        }


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


@torch.no_grad()
def evaluate_split(
    model: torch.nn.Module, kind: str, data: Any, *, batch_size: int, device: torch.device | str = "cpu"
) -> dict[str, Any]:
    """The book's ``calc_loss_loader`` over every batch of a split in order (its test loader:
    no shuffle, last batch kept), and for a classifier ``calc_accuracy_loader`` too."""
    model.eval()
    batches = batches_of(list(range(len(data))), batch_size, drop_last=False)
    losses, correct = [], 0
    for rows in batches:
        x, y = (t.to(device) for t in data.batch(rows))
        if kind == "classify":
            losses.append(cls_.classify_loss(model, x, y).item())
            correct += cls_.correct_count(model, x, y)
        else:
            losses.append(model(x, targets=y).item())
    result: dict[str, Any] = {"examples": len(data), "batches": len(batches), "loss": sum(losses) / len(losses)}
    if kind == "classify":
        result["accuracy"] = correct / len(data)
    return result


def evaluate_checkpoint_split(
    obj: dict[str, Any], path: Path | str, split: str, *, device: torch.device | str = "cpu"
) -> dict[str, Any]:
    """Loss (and a classifier's accuracy) of a finetune checkpoint on one split of its run's data,
    split again exactly as the run split it."""
    if split not in ("train", "val", "test"):
        raise UsageError(f"invalid --split: {split!r} (choose from train, val, test)")
    model, cfg, info = model_from_finetune_checkpoint(obj, path)
    splits = prepare_splits(cfg, model.cfg, labels=info.get("labels"))
    data = getattr(splits, split)
    if len(data) == 0:
        raise no_split_error("--split", split, data=cfg.data, split=cfg.split)
    model.to(device)
    return {
        "kind": cfg.kind,
        "split": split,
        **evaluate_split(model, cfg.kind, data, batch_size=cfg.batch_size, device=device),
    }
