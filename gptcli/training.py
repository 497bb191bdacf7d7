"""The training loop: the book's ``train_model_simple``, made resumable, and reporting through
callbacks (it never prints).

One run = a run directory (see ``gptcli.rundir``) plus a ``TrainState``. A checkpoint holds
everything needed to continue exactly: weights, AdamW state, progress within the epoch, every RNG
state and the loss history, so a run stopped at any step and resumed ends with the same weights,
bit for bit on CPU, as one that never stopped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from gptcli import checkpoint as ckpt
from gptcli import distributed, fsdp, fused_loss, rundir
from gptcli.callbacks import Callbacks
from gptcli.config import ModelConfig, TrainConfig, dump_yaml_config, parse_interval
from gptcli.data import TokenWindows, batches_of, loader_iter_seed, permutation, prepare_data
from gptcli.device import autocast_for, resolve_device
from gptcli.errors import CheckpointError, DataError, SaveError, TrainingError, UsageError, os_error_reason
from gptcli.generation import SampleConfig
from gptcli.inference import generate_with
from gptcli.metrics import MetricsWriter, flops_per_token, gpu_bf16_peak, read_metrics
from gptcli.model import GPT
from gptcli.paths import display_path, shell_path
from gptcli.tokenizer import decode, encode

# ---------------------------------------------------------------------------------------------
# Small pure pieces


def lr_at(step: int, *, lr: float, warmup_steps: int, total_steps: int, min_lr: float | None) -> float:
    """Learning rate for optimizer step ``step`` (0-based).

    Constant ``lr`` (the book's chapter 5) unless a warm-up or ``min_lr`` is set; then linear
    warm-up from 0 over ``warmup_steps``, followed by cosine decay to ``min_lr`` (default lr/10) at
    ``total_steps``, as in the book's appendix D.
    """
    if warmup_steps == 0 and min_lr is None:
        return lr
    floor = lr * 0.1 if min_lr is None else min_lr
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return floor + 0.5 * (lr - floor) * (1.0 + math.cos(math.pi * progress))


class Budgets(Protocol):
    """The length settings of a run, as ``TrainConfig`` and ``gptcli.finetune``'s config hold them."""

    epochs: int
    max_steps: int | None
    max_tokens: int | None
    max_time: float | None


def planned_steps(cfg: Budgets, steps_per_epoch: int, tokens_per_step: int) -> int:
    """The run's planned length in optimizer steps, over which the LR schedule decays: its epochs,
    or a step or token budget that ends it sooner (a time budget cannot be planned in steps).
    ``tokens_per_step``: a step's tokens, or the most a step can hold where batches differ (the
    plan then ends no later than the budget does)."""
    total = steps_per_epoch * cfg.epochs
    if cfg.max_steps is not None:
        total = min(total, cfg.max_steps)
    if cfg.max_tokens is not None:
        total = min(total, -(-cfg.max_tokens // tokens_per_step))
    return total


def format_duration(seconds: float) -> str:
    """90 -> "90s", 5400 -> "1h30m", 0.5 -> "0.5s": as ``--max-time`` takes it."""
    if seconds < 60 or seconds != int(seconds):
        return f"{seconds:g}s"
    h, rest = divmod(int(seconds), 3600)
    m, s = divmod(rest, 60)
    return "".join(f"{n}{u}" for n, u in ((h, "h"), (m, "m"), (s, "s")) if n) or "0s"


def budget_reached(cfg: Budgets, *, step: int, tokens_seen: int, seconds: float) -> str | None:
    """The budget flag that ends the run at this point (``--max-steps 12``), or None."""
    if cfg.max_steps is not None and step >= cfg.max_steps:
        return f"--max-steps {cfg.max_steps}"
    if cfg.max_tokens is not None and tokens_seen >= cfg.max_tokens:
        return f"--max-tokens {cfg.max_tokens:,}"
    if cfg.max_time is not None and seconds >= cfg.max_time:
        return f"--max-time {format_duration(cfg.max_time)}"
    return None


def stopped_message(reason: str, *, step: int, tokens_seen: int, seconds: float) -> str:
    """The line that says which budget ended a run, and where."""
    took = format_duration(round(seconds) if seconds >= 60 else round(seconds, 1))
    return f"stopped: {reason} at step {step} ({tokens_seen:,} tokens, {took} of training)"


class Every:
    """When an ``--eval-freq``/``--save-every`` interval falls due after a step: every N steps, every
    N tokens (when the tokens seen cross a multiple of N) or every S seconds of wall time. Steps
    and tokens follow the run's progress, so they fall on the same steps after a resume; time
    does not. ``first``: also due on the run's first step (the book evaluates at step 0)."""

    def __init__(self, value: int | str, *, first: bool):
        self.unit, self.every = parse_interval(value)
        self.first = first
        self._last = time.monotonic()

    def due(self, step: int, tokens_before: int, tokens_after: int) -> bool:
        if not self.every:
            return False
        if self.unit == "steps":
            return (step - 1) % self.every == 0 if self.first else step % self.every == 0
        if self.first and tokens_before == 0:
            self._last = time.monotonic()
            return True
        if self.unit == "tokens":
            return tokens_before // self.every != tokens_after // self.every
        now = time.monotonic()
        if now - self._last >= self.every:
            self._last = now
            return True
        return False


def update_best(
    run_dir: Path,
    path: Path,
    history: list[dict[str, Any]],
    best_val: float,
    best_saved: float,
    warn: Callable[[str], None],
) -> float:
    """Link best.pth to the checkpoint just saved at ``path`` when its latest validation loss is the
    run's best and lower than the one best.pth holds; returns the loss best.pth now holds. A failed
    link is a warning: the step checkpoint is saved, only the best.pth shortcut is stale."""
    if not history or math.isnan(history[-1]["val_loss"]) or history[-1]["val_loss"] > best_val:
        return best_saved
    if history[-1]["val_loss"] >= best_saved:
        return best_saved
    try:
        rundir.link_best(run_dir, path)
    except OSError as e:
        best = rundir.best_checkpoint_path(run_dir)
        warn(f"could not update {best} ({os_error_reason(e)}); it still points to an earlier checkpoint")
        return best_saved
    return history[-1]["val_loss"]


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    # The book decays every parameter (embeddings and LayerNorms too); kept so its run reproduces.
    # The fused kernel computes the same update in one pass: 10x faster than the loop on CPU.
    # ``--decay matrices`` is nanoGPT's split: no decay for biases and LayerNorm weights (one group
    # each, so the default keeps the book's single group and its checkpoints' optimizer state).
    fused = device.type in ("cpu", "cuda")
    betas = (0.9, cfg.adam_beta2)
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.decay == "matrices":
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=betas, fused=fused)
    return torch.optim.AdamW(params, lr=cfg.lr, betas=betas, weight_decay=cfg.weight_decay, fused=fused)


def batch_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The book's ``calc_loss_batch``: mean next-token cross-entropy (computed inside the model,
    over its padded logits, so no sliced copy of the (B, T, vocab) logits is made)."""
    return model(x, targets=y)


# ---------------------------------------------------------------------------------------------
# State


@dataclass
class TrainState:
    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps completed
    windows_done: int = 0  # training windows consumed in the current epoch
    epoch_seed: int | None = None  # shuffling seed of the current epoch, once drawn
    tokens_seen: int = 0
    metrics_lines: int = 0
    best_val: float = float("inf")
    nonfinite_steps: int = 0
    sample_pending: bool = False  # the epoch just saved has not logged its sample yet
    planned_steps: int = 0  # the run's planned length, over which the LR schedule decays
    train_seconds: float = 0.0  # training time so far, over all resumes (for --max-time)
    evals_since_best: int = 0  # evaluations without a new best validation loss (for --patience)
    history: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainState:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


class Interrupted(TrainingError):
    """Raised after a clean stop on SIGINT/SIGTERM; the exit code is 128 + the signal."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class NonFiniteGuard:
    """Counts optimizer steps whose loss was NaN or inf; more than ``allowed`` is an error.

    With the fused AdamW the check stays on the device: the kernel skips the update when
    ``found_inf`` is set, and the counters are read back only at eval and save points, so there is
    no per-step host sync on CUDA. CPU takes the same path, so CI tests the code GPUs run. Other
    optimizers (fp16 with a GradScaler) check on the host and skip the step there.
    """

    def __init__(self, *, allowed: int, device: torch.device, on_device: bool, warn: Callable[[str], None]):
        self.allowed, self.on_device, self.warn = allowed, on_device, warn
        self.count = 0  # non-finite steps known on the host
        self._bad = torch.zeros((), dtype=torch.int64, device=device)
        self._first = torch.full((), -1, dtype=torch.int64, device=device)
        self._last = torch.full((), -1, dtype=torch.int64, device=device)

    def restore(self, count: int) -> None:
        self.count = count
        self._bad.fill_(count)

    def record(self, nonfinite: torch.Tensor, step: int, optimizer: torch.optim.Optimizer) -> bool:
        """Note whether step ``step`` was non-finite; True when the caller must skip its update
        (host path only: on the device path the optimizer skips it itself)."""
        if self.on_device:
            self._bad += nonfinite.to(torch.int64)
            self._first = torch.where(nonfinite & (self._first < 0), step, self._first)
            self._last = torch.where(nonfinite, step, self._last)
            optimizer.found_inf = nonfinite.to(torch.float32)  # 0-dim, like the step counters
            return False
        if bool(nonfinite):
            self.count += 1
            self._report(step)
            return True
        return False

    def check(self) -> None:
        """Raise if more non-finite steps happened than allowed (reads the device counters)."""
        if self.on_device:
            bad = int(self._bad.item())
            if bad > self.count:
                self.count = bad
                self._report(int(self._last.item()), first=int(self._first.item()))

    def _report(self, step: int, first: int | None = None) -> None:
        """``step`` is the latest non-finite step, ``first`` the earliest (when known)."""
        n = self.count
        first = step if first is None or first < 0 else first
        where = f"step {first}" if first == step else f"step {first} (and {n - 1} more, up to step {step})"
        if n > self.allowed:
            hint = (
                f" ({n} such steps: more than --skip-nonfinite {self.allowed})"
                if self.allowed
                else "; --skip-nonfinite N tolerates N such steps"
            )
            raise TrainingError(f"non-finite loss at {where}; no checkpoint written for it{hint}")
        self.warn(f"skipped non-finite loss at {where}")


# ---------------------------------------------------------------------------------------------
# The run


class Trainer:
    def __init__(
        self,
        model_cfg: ModelConfig,
        cfg: TrainConfig,
        run_dir: Path,
        *,
        callbacks: Callbacks | None = None,
        should_stop: Callable[[], int | None] | None = None,
        init_state_dict: dict[str, torch.Tensor] | None = None,
    ):
        self.model_cfg, self.cfg, self.run_dir = model_cfg, cfg, Path(run_dir)
        self.cb = callbacks or Callbacks()
        self.should_stop = should_stop or (lambda: None)
        self.device = resolve_device(cfg.device)
        self.dist = distributed.init(self.device.type)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        if cfg.precision == "fp16" and self.device.type != "cuda":
            raise UsageError("invalid --precision: 'fp16' needs a CUDA device (use bf16 or fp32)")
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.data = prepare_data(model_cfg, cfg, on_progress=self.cb.on_tokenize)
        self.state = TrainState()

        # Every rank seeds alike: identical initial weights, and identical CPU RNG streams, so
        # all ranks draw the same shuffling order (each then takes its own slice of it).
        torch.manual_seed(cfg.seed)
        self.model = GPT(model_cfg)
        # Memory savers that compute the same function (tests/test_training.py checks the losses).
        self.model.activation_checkpointing = cfg.activation_checkpointing
        self.model.fused_loss_chunk = fused_loss.DEFAULT_CHUNK_ROWS if cfg.fused_loss else None
        if init_state_dict is not None:
            ckpt.load_weights(self.model, init_state_dict, source=f"--init {cfg.init}")
        self.model.to(self.device)
        # --fsdp shards the model across the torchrun processes (the optimizer is then built over
        # the shards). `gptcli train --fsdp` without torchrun is refused before this; an --fsdp run
        # resumed by a process on its own trains unsharded: its checkpoints are ordinary ones.
        self.fsdp = cfg.fsdp and self.dist.enabled
        if self.fsdp:
            fsdp.shard(self.model)
        elif cfg.fsdp:
            self.cb.info("--fsdp: not launched by torchrun, so this process trains the whole model unsharded")
        self.optimizer = make_optimizer(self.model, cfg, self.device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=cfg.precision == "fp16")
        use_compile = cfg.compile if cfg.compile is not None else self.device.type == "cuda"
        net: torch.nn.Module = torch.compile(self.model) if use_compile else self.model
        if self.dist.enabled and not self.fsdp:
            net = torch.nn.parallel.DistributedDataParallel(
                net, device_ids=[self.dist.local_rank] if self.device.type == "cuda" else None
            )
        self.train_model = net
        self.guard = NonFiniteGuard(
            allowed=cfg.skip_nonfinite,
            device=self.device,
            on_device=bool(self.optimizer.param_groups[0].get("fused")) and not self.scaler.is_enabled(),
            warn=self.cb.warn,
        )
        self.metrics: MetricsWriter | None = None
        self._best_saved = float("inf")
        self._clock: tuple[float, float] | None = None  # (monotonic time, train_seconds) at the start
        self.stop_reason: str | None = None  # why the run ended before its epochs did

    # -- checkpoints --------------------------------------------------------------------------

    def _full_state(self) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """The whole model's and optimizer's state dicts, in the ordinary layout. Under --fsdp
        this gathers the shards onto rank 0's CPU: collective (every rank must call it), and
        None on the other ranks."""
        if not self.fsdp:
            return self.model.state_dict(), self.optimizer.state_dict()
        model_sd, optim_sd = fsdp.full_state_dict(self.model, self.optimizer)
        return (model_sd, fsdp.optimizer_state_by_position(optim_sd)) if self.dist.is_main else None

    def checkpoint_dict(self, state: tuple[dict[str, Any], dict[str, Any]] | None = None) -> dict[str, Any]:
        """The training checkpoint; ``state``: what ``_full_state`` returned (gathered already)."""
        model_sd, optim_sd = state or self._full_state()
        return ckpt.training_checkpoint(
            self.model_cfg,
            self.cfg.to_dict(),
            model_sd,
            optimizer_state=optim_sd,
            scaler_state=self.scaler.state_dict(),
            progress=self.state.to_dict(),
            rng=ckpt.capture_rng(),
            data_fingerprint=self.data.fingerprint,
            world_size=self.dist.world_size,
        )

    def save(self, reason: str) -> Path:
        self.guard.check()
        self.state.nonfinite_steps = self.guard.count
        self.state.train_seconds = self._elapsed()
        path = rundir.step_checkpoint_path(self.run_dir, self.state.step)
        state = self._full_state() if self.fsdp else None  # every rank takes part in gathering the shards
        if self.dist.is_main:
            self.state.metrics_lines = self.metrics.lines if self.metrics else 0
            try:
                ckpt.atomic_save(self.checkpoint_dict(state), path)
            except SaveError as e:
                raise self._write_failed(e) from e.__cause__
            self._update_best(path)
            rundir.rotate(self.run_dir, self.cfg.keep_last, protect={path.resolve()})
            self.cb.on_save(path, reason)
        distributed.barrier()
        return path

    def _update_best(self, path: Path) -> None:
        """best.pth: a hard link to the checkpoint whose latest validation loss is the lowest."""
        self._best_saved = update_best(
            self.run_dir, path, self.state.history, self.state.best_val, self._best_saved, self.cb.warn
        )

    def _write_failed(self, e: SaveError) -> SaveError:
        """A failed write (checkpoint, metrics log), with what the run still has and how to go on."""
        saved = rundir.list_step_checkpoints(self.run_dir)
        if saved:
            hint = (
                f"the previous checkpoint is intact ({saved[-1].name}); once the cause is fixed, "
                f"continue with: gptcli resume {shell_path(self.run_dir)}"
            )
        else:
            hint = "no checkpoint of this run had been saved yet"
        return SaveError(f"{e}; {hint}")

    def restore(self, obj: dict[str, Any]) -> None:
        if obj.get("data_fingerprint") not in (None, self.data.fingerprint):
            raise CheckpointError(
                "the training text differs from the one this checkpoint was trained on; "
                "exact resumption needs the same data (start a new run with --init instead)"
            )
        optim_sd = obj.get("optimizer_state_dict") or None
        flags = {k: self.optimizer.param_groups[0].get(k) for k in ("fused", "foreach")}
        if self.fsdp:
            # An ordinary checkpoint, saved at any world size, with or without --fsdp: each rank
            # keeps its shards of it (of copies: the load replaces the dicts' values by shards).
            ckpt.check_state_fits(self.model_cfg, obj["model_state_dict"], "checkpoint")
            if optim_sd is not None:
                optim_sd = fsdp.optimizer_state_by_name(self.model, self.optimizer, optim_sd)
            fsdp.load_full_state_dict(self.model, dict(obj["model_state_dict"]), self.optimizer, optim_sd)
        else:
            ckpt.load_weights(self.model, obj["model_state_dict"], source="checkpoint")
            if optim_sd is not None:
                self.optimizer.load_state_dict(optim_sd)
        if optim_sd is not None:
            # A state saved by another AdamW (the book's default, non-fused one) carries its own
            # implementation flags; keep ours, which the update rule does not depend on.
            for group in self.optimizer.param_groups:
                group.update(flags)
        if obj.get("scaler_state_dict"):
            self.scaler.load_state_dict(obj["scaler_state_dict"])
        self.state = TrainState.from_dict(obj.get("progress", {}))
        self.guard.restore(self.state.nonfinite_steps)
        self._best_saved = self.state.best_val
        if "rng" in obj:
            ckpt.restore_rng(obj["rng"])

    # -- evaluation ---------------------------------------------------------------------------

    @torch.no_grad()
    def _mean_loss(self, windows: TokenWindows, batches: list[list[int]]) -> float:
        """Mean over batches of each batch's mean loss. A batch is the global batch (batch size x
        grad accum x world size) so the number does not depend on how the work is split: each
        rank takes its share, in micro-batches of --batch-size, and the sums are all-reduced."""
        if not batches:
            return float("nan")
        total = torch.zeros((), device=self.device)
        world, rank, bs = self.dist.world_size, self.dist.rank, self.cfg.batch_size
        for b in batches:
            share = -(-len(b) // world)
            mine = b[rank * share : (rank + 1) * share]
            acc = torch.zeros(2, device=self.device)  # (sum of window losses, windows)
            # Under --fsdp each forward pass gathers the shards from every rank, so a rank whose
            # share of a short last batch has run out keeps step with passes it does not count.
            for i in range(0, share if self.fsdp else len(mine), bs):
                counted = i < len(mine)
                x, y = windows.batch(mine[i : i + bs] if counted else b[:1])
                with autocast_for(self.device, self.cfg.precision):
                    loss = batch_loss(self.model, x.to(self.device), y.to(self.device)).float()
                if counted:
                    acc[0] += loss * x.shape[0]
                    acc[1] += x.shape[0]
            if self.dist.enabled:
                torch.distributed.all_reduce(acc)
            total += acc[0] / acc[1]
        return total.item() / len(batches)

    def evaluate(self) -> tuple[float, float]:
        """The book's ``evaluate_model``: mean loss over ``eval_iter`` batches of each split."""
        cfg, d = self.cfg, self.data
        gb = self._global_batch()
        self.model.eval()
        seed = loader_iter_seed(shuffle=True)
        train_batches = batches_of(permutation(len(d.train), seed), gb, drop_last=True)
        train_loss = self._mean_loss(d.train, train_batches[: cfg.eval_iter])
        loader_iter_seed(shuffle=False)
        val_batches = batches_of(list(range(len(d.val))), gb, drop_last=False)
        val_loss = self._mean_loss(d.val, val_batches[: cfg.eval_iter])
        self.model.train()
        return train_loss, val_loss

    def sample_text(self) -> str:
        """The book's ``generate_and_print_sample``: 50 greedy tokens from the start context."""
        self.model.eval()
        idx = torch.tensor([encode(self.cfg.start_context)], device=self.device)
        # Under --fsdp every rank generates alike (each forward pass gathers the shards); on CUDA
        # without the KV cache, whose CUDA graph cannot capture those collectives.
        use_cache = not (self.fsdp and self.device.type == "cuda")
        with autocast_for(self.device, self.cfg.precision):
            new = generate_with(
                self.model,
                idx,
                SampleConfig(max_new_tokens=self.cfg.sample_tokens),
                stop_at_eos=False,
                use_cache=use_cache,
            )
        self.model.train()
        return decode(idx[0].tolist() + new[0])

    def _adopt_logged_sample(self) -> None:
        """Resuming from an epoch's checkpoint: if metrics.jsonl already holds that epoch's sample
        (the run went on past the save), keep the line instead of sampling again."""
        st = self.state
        path = rundir.metrics_path(self.run_dir)
        if not (st.sample_pending and self.dist.is_main and path.is_file()):
            return
        try:
            records = read_metrics(path)
        except OSError:
            return  # _open_run_dir reports an unreadable metrics.jsonl
        if len(records) > st.metrics_lines:
            after = records[st.metrics_lines]
            if isinstance(after, dict) and after.get("type") == "sample" and after.get("epoch") == st.epoch:
                st.metrics_lines += 1
                st.sample_pending = False

    def _epoch_sample(self) -> None:
        """Log and report the sample of the epoch just completed (and saved)."""
        st = self.state
        record = {
            "type": "sample",
            "epoch": st.epoch,
            "step": st.step - 1,
            "tokens_seen": st.tokens_seen,
            "text": self.sample_text(),
        }
        self._log(record)
        self.cb.on_sample(record)
        st.sample_pending = False

    # -- one optimizer step ---------------------------------------------------------------------

    def _global_batch(self) -> int:
        """Windows per optimizer step, over all ranks and micro-batches."""
        return self.cfg.batch_size * self.cfg.grad_accum * self.dist.world_size

    def steps_per_epoch(self) -> int:
        return len(self.data.train) // self._global_batch()

    def planned_steps(self) -> int:
        return planned_steps(self.cfg, self.steps_per_epoch(), self._global_batch() * self.model_cfg.context_length)

    def _elapsed(self) -> float:
        """Training time so far, over all resumes."""
        if self._clock is None:
            return self.state.train_seconds
        return self._clock[1] + time.monotonic() - self._clock[0]

    def _log(self, record: dict[str, Any]) -> None:
        if self.metrics is not None and self.dist.is_main:
            try:
                self.metrics.write(record)
            except SaveError as e:
                raise self._write_failed(e) from None

    def _train_step(self, batch_ids: list[int]) -> torch.Tensor:
        cfg, st = self.cfg, self.state
        lr = lr_at(
            st.step,
            lr=cfg.lr,
            warmup_steps=cfg.warmup_steps,
            total_steps=self.planned_steps(),
            min_lr=cfg.min_lr,
        )
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        per_rank = cfg.batch_size * cfg.grad_accum
        mine = batch_ids[self.dist.rank * per_rank : (self.dist.rank + 1) * per_rank]
        micro = [mine[i : i + cfg.batch_size] for i in range(0, len(mine), cfg.batch_size)]
        loss_sum = torch.zeros((), device=self.device)
        for i, ids in enumerate(micro):
            x, y = self.data.train.batch(ids)
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            last = i == len(micro) - 1
            # Gradients are all-reduced (reduce-scattered under --fsdp) once per step, on the last micro-batch.
            sync = contextlib.nullcontext()
            if self.fsdp:
                self.model.set_requires_gradient_sync(last)
            elif not last and self.dist.enabled:
                sync = self.train_model.no_sync()
            with sync:
                with autocast_for(self.device, cfg.precision):
                    loss = batch_loss(self.train_model, x, y)
                self.scaler.scale(loss / len(micro)).backward()
            loss_sum += loss.detach().float()
        loss_mean = loss_sum / len(micro)
        nonfinite = ~torch.isfinite(loss_mean)
        if self.dist.enabled:
            flag = nonfinite.to(torch.float32)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            nonfinite = flag > 0
        if self.guard.record(nonfinite, st.step, self.optimizer):
            self.optimizer.zero_grad(set_to_none=True)
            return loss_mean
        if cfg.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss_mean

    def _stop_requested(self) -> int | None:
        signum = self.should_stop() or 0
        if self.dist.enabled:  # every rank must stop at the same step
            signum = distributed.all_reduce_max_int(signum, self.device)
        return signum or None

    # -- the loop: the book's train_model_simple ------------------------------------------------

    def fit(self) -> TrainState:
        try:
            return self._fit()
        except torch.cuda.OutOfMemoryError:
            raise TrainingError(
                f"CUDA out of memory at --batch-size {self.cfg.batch_size} and context {self.model_cfg.context_length}; "
                "use a smaller --batch-size (with --grad-accum to keep the effective batch), a shorter "
                "--context-length, or --precision bf16"
            ) from None

    def _fit(self) -> TrainState:
        self._adopt_logged_sample()
        self._open_run_dir()
        steps_per_epoch = self.steps_per_epoch()
        if steps_per_epoch < 1:
            raise DataError(
                f"training text has {len(self.data.train)} windows, fewer than one step needs "
                f"({self._global_batch()} = batch size x grad accum x world size)"
            )
        self._plan()
        self.cb.on_start(self._start_info(steps_per_epoch))
        self.model.train()
        if self.state.sample_pending:  # resumed from an epoch's checkpoint: its sample comes first
            self._epoch_sample()
        self._throughput = (time.perf_counter(), self.state.tokens_seen)
        self._clock = (time.monotonic(), self.state.train_seconds)
        self._eval_every = Every(self.cfg.eval_freq, first=True)
        self._save_every = Every(self.cfg.save_every, first=False)
        self.stop_reason = self._stop_check(evaluated=True, at_start=True)
        while self.state.epoch < self.cfg.epochs and self.stop_reason is None:
            epoch_done = self._train_epoch(steps_per_epoch)
            if epoch_done:
                self._end_epoch()
        if self.stop_reason is not None:
            st = self.state
            self.cb.info(
                stopped_message(self.stop_reason, step=st.step, tokens_seen=st.tokens_seen, seconds=self._elapsed())
            )
        return self.state

    def _plan(self) -> None:
        """The planned length of the run; a resume whose budget changed it says how the LR
        schedule changes (the steps already taken keep the rates they had)."""
        st, cfg = self.state, self.cfg
        new = self.planned_steps()
        old = st.planned_steps
        if old and old != new and (cfg.warmup_steps or cfg.min_lr is not None) and st.step > 0:
            self.cb.info(
                f"LR schedule: the cosine decay now ends at step {new} (was step {old}), from step {st.step} on"
            )
        st.planned_steps = new

    def _due(self, every: Every, tokens_before: int) -> bool:
        """Whether ``every`` falls due after this step, the same on every rank (clocks differ)."""
        due = every.due(self.state.step, tokens_before, self.state.tokens_seen)
        if self.dist.enabled and every.unit == "seconds":
            due = bool(distributed.all_reduce_max_int(int(due), self.device))
        return due

    def _stop_check(self, *, evaluated: bool, at_start: bool = False) -> str | None:
        """Why the run stops now (a budget or --patience), the same on every rank; None to go on.
        ``at_start``: before the first step, where only the time already spent (resumed) counts."""
        st, cfg = self.state, self.cfg
        seconds = st.train_seconds if at_start else self._elapsed()
        reason = budget_reached(cfg, step=st.step, tokens_seen=st.tokens_seen, seconds=seconds)
        if reason is None and cfg.patience and st.evals_since_best >= cfg.patience and evaluated:
            reason = f"--patience {cfg.patience} ({st.evals_since_best} evaluations without a new best validation loss)"
        if self.dist.enabled and cfg.max_time is not None:  # time differs between ranks: agree on it
            if distributed.all_reduce_max_int(int(reason is not None), self.device) and reason is None:
                reason = f"--max-time {format_duration(cfg.max_time)}"
        return reason

    def _open_run_dir(self) -> None:
        """Write the resolved config, and cut metrics.jsonl back to what the checkpoint knows."""
        if not self.dist.is_main:
            return
        self._check_disk_space()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        rundir.remove_stale_temporaries(rundir.checkpoint_dir(self.run_dir))
        rundir.write_config(self.run_dir, dump_yaml_config(self.model_cfg, self.cfg))
        self.metrics = MetricsWriter(rundir.metrics_path(self.run_dir))
        if self.metrics.lines == 0 and self.state.metrics_lines > 0:
            self._rebuild_metrics()
        if self.metrics.lines != self.state.metrics_lines:
            self.metrics.truncate(self.state.metrics_lines)

    def _check_disk_space(self) -> None:
        """Refuse to start when the disk cannot take one checkpoint, before any epoch's work is at
        risk (the size is known from the model and optimizer); warn when it cannot take all the
        checkpoints the run keeps."""
        if self.fsdp:  # shards have no storage of the whole tensor to measure: weights + 2 moments
            size = ckpt.with_margin(3 * sum(p.numel() * p.element_size() for p in self.model.parameters()))
        else:
            size = ckpt.estimate_training_checkpoint(self.model, self.optimizer)
        where = self.run_dir
        while not where.exists() and where != where.parent:
            where = where.parent
        try:
            ckpt.check_free_space(where, size, "one checkpoint of this model")
        except SaveError as e:
            raise SaveError(f"{e}; nothing was trained: free some space first") from None
        try:
            free = shutil.disk_usage(where).free
        except OSError:
            return
        have = len(rundir.list_step_checkpoints(self.run_dir))
        # The newest --keep-last, the one being written before the oldest goes, and best.pth,
        # which can keep a rotated-out checkpoint alive.
        peak = max(1, self.cfg.keep_last + 2 - have)
        if free < peak * size:
            self.cb.warn(
                f"{ckpt.format_bytes(free)} free in {where} holds {free // size} checkpoint(s) of "
                f"{ckpt.format_bytes(size)}; this run may need {peak} more (--keep-last {self.cfg.keep_last}, "
                "the save in progress and best.pth): a later save may fail for lack of space"
            )

    def _rebuild_metrics(self) -> None:
        """Resumed without metrics.jsonl: write it again from the checkpoint's history (every
        evaluation) and the epochs completed (each epoch's sample, its text lost)."""
        st, spe = self.state, self.steps_per_epoch()
        per_step = self._global_batch() * self.model_cfg.context_length
        sampled = st.epoch - (1 if getattr(st, "sample_pending", False) else 0)
        total = self.planned_steps()

        def sample(epoch: int) -> dict[str, Any]:
            step = epoch * spe
            return {"type": "sample", "epoch": epoch, "step": step - 1, "tokens_seen": step * per_step, "text": ""}

        records: list[dict[str, Any]] = []
        done = 0
        for h in st.history:
            while done < sampled and done + 1 < h["epoch"]:
                done += 1
                records.append(sample(done))
            lr = lr_at(
                h["step"], lr=self.cfg.lr, warmup_steps=self.cfg.warmup_steps, total_steps=total, min_lr=self.cfg.min_lr
            )
            records.append({"type": "eval", **h, "lr": lr, "steps_per_epoch": spe})
        records += [sample(e) for e in range(done + 1, sampled + 1)]
        for r in records:
            r["rebuilt"] = True
        try:
            self.metrics.write_all(records)
        except SaveError as e:
            raise self._write_failed(e) from None
        self.cb.warn(
            f"{self.metrics.path} was missing: rebuilt {len(records)} records from the checkpoint's "
            "history (the epoch samples' texts are lost)"
        )

    def _start_info(self, steps_per_epoch: int) -> dict[str, Any]:
        d, st = self.data, self.state
        return {
            "params": self.model.num_params(),
            "device": str(self.device)
            + (f" x {self.dist.world_size} ranks" if self.dist.enabled else "")
            + (" (FSDP)" if self.fsdp else ""),
            "train_tokens": d.train_tokens,
            "val_tokens": d.val_tokens,
            "train_windows": len(d.train),
            "val_windows": len(d.val),
            "steps_per_epoch": steps_per_epoch,
            "total_steps": self.planned_steps(),
            "epochs": self.cfg.epochs,
            "run_dir": str(self.run_dir),
            "resumed": st.step > 0 or st.epoch > 0,
        }

    def _train_epoch(self, steps_per_epoch: int) -> bool:
        """Optimizer steps over this epoch's shuffled windows, from wherever it stopped; False when
        a budget or --patience ended the run before the epoch did (evaluated and saved)."""
        st, gb = self.state, self._global_batch()
        if st.epoch_seed is None:
            st.epoch_seed = loader_iter_seed(shuffle=True)
            st.windows_done = 0
        order = permutation(len(self.data.train), st.epoch_seed)
        usable = (len(self.data.train) // gb) * gb
        while st.windows_done + gb <= usable:
            loss = self._train_step(order[st.windows_done : st.windows_done + gb])
            tokens_before = st.tokens_seen
            st.step += 1
            st.windows_done += gb
            st.tokens_seen += gb * self.model_cfg.context_length
            evaluated = self._due(self._eval_every, tokens_before)
            if evaluated:
                self._evaluate_and_log()
            self.cb.on_step(st, {"loss": loss, "steps_per_epoch": steps_per_epoch})
            epoch_done = st.windows_done + gb > usable
            self.stop_reason = self._stop_check(evaluated=evaluated)
            if self.stop_reason is not None:
                if not evaluated:  # off the --eval-freq schedule: must not shift the RNG streams
                    rng = ckpt.capture_rng()
                    self._evaluate_and_log(scheduled=False)
                    ckpt.restore_rng(rng)
                if not epoch_done:  # an epoch's end saves (and samples) in _end_epoch
                    self.save("budget")
                return epoch_done
            # With --patience, each new best is saved, so best.pth holds the best weights when it stops.
            best = self.cfg.patience > 0 and evaluated and st.evals_since_best == 0
            if (self._due(self._save_every, tokens_before) or best) and not epoch_done:
                self.save("save-every")
            signum = self._stop_requested()
            if signum is not None:
                path = self.save("interrupted")
                raise Interrupted(
                    f"interrupted at step {st.step}; saved {display_path(path)}; "
                    f"continue with: gptcli resume {shell_path(self.run_dir)}",
                    128 + signum,
                )
        return True

    def _evaluate_and_log(self, *, scheduled: bool = True) -> None:
        """The book's periodic evaluation: losses on both splits, logged with the throughput."""
        st = self.state
        self.guard.check()
        train_loss, val_loss = self.evaluate()
        now = time.perf_counter()
        t_last, tokens_last = self._throughput
        tps = (st.tokens_seen - tokens_last) / max(now - t_last, 1e-9)
        record = {
            "type": "eval",
            "epoch": st.epoch + 1,
            "step": st.step - 1,
            "tokens_seen": st.tokens_seen,
            "train_loss": train_loss,
            "val_loss": val_loss,
            "lr": self.optimizer.param_groups[0]["lr"],
            "tokens_per_sec": tps,
            "steps_per_epoch": self.steps_per_epoch(),
        }
        peak = gpu_bf16_peak(torch.cuda.get_device_name(self.device)) if self.device.type == "cuda" else None
        if peak:
            record["mfu"] = tps * flops_per_token(self.model_cfg) / (peak * self.dist.world_size)
        self._throughput = (now, st.tokens_seen)
        st.history.append({k: record[k] for k in ("epoch", "step", "tokens_seen", "train_loss", "val_loss")})
        if scheduled:  # --patience counts the evaluations of the --eval-freq schedule only
            improved = not math.isnan(val_loss) and val_loss < st.best_val
            st.evals_since_best = 0 if improved else st.evals_since_best + 1
        if not math.isnan(val_loss):
            st.best_val = min(st.best_val, val_loss)
        self._log(record)
        self.cb.on_eval(record)

    def _end_epoch(self) -> None:
        """The book's end of epoch, in the order that cannot lose it: save the finished epoch,
        then its greedy sample from the start context.

        The checkpoint marks the sample pending and counts the metrics lines without it, so a run
        that dies while sampling (or is resumed from this checkpoint for any reason) writes the
        sample again first thing on resume: the same text, as greedy decoding with dropout off
        draws no random numbers, and the same single line in metrics.jsonl.
        """
        st = self.state
        st.epoch += 1
        st.epoch_seed = None
        st.windows_done = 0
        st.sample_pending = True
        self.save("epoch")
        self._epoch_sample()
        signum = self._stop_requested()
        if signum is not None and st.epoch < self.cfg.epochs:
            raise Interrupted(
                f"interrupted after epoch {st.epoch}; continue with: gptcli resume {shell_path(self.run_dir)}",
                128 + signum,
            )
