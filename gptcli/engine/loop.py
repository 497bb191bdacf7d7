"""The training loop every task runs: the book's ``train_model_simple`` (chapters 5 and 7) and
``train_classifier_simple`` (chapter 6), made resumable, and reporting through callbacks (it
never prints).

The task (``gptcli.tasks``) gives the data, the prepared model, the loss and the records of an
epoch's end; this loop owns the rest, once for every kind: gradient accumulation and the global
batch under DDP or FSDP, autocast and the gradient scaler, the non-finite guard, intervals,
budgets, patience and the LR schedule, signals, saves, rotation and best.pth, and metrics.jsonl.

A checkpoint holds everything needed to continue exactly: weights, AdamW state, the position in
the epoch, every RNG state and the loss history, so a run stopped at any step and resumed ends
with the same weights, bit for bit on CPU, as one that never stopped.

Batches: a step takes one global batch of rows (windows or examples). On one process without
accumulation the loss is the task's mean, the book's ``calc_loss_batch``; otherwise each rank
and micro-batch adds its loss sum, divided by the whole batch's count, so the gradient and the
logged loss are those of the whole batch's mean however the work is split.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from gptcli import checkpoint as ckpt
from gptcli import distributed, fsdp, fused_loss, rundir
from gptcli.callbacks import Callbacks
from gptcli.data import batches_of, loader_iter_seed, permutation
from gptcli.device import autocast_for, resolve_device, threads_requested
from gptcli.engine.parts import Interrupted, NonFiniteGuard, check_disk_space, make_optimizer, update_best
from gptcli.engine.progress import Progress
from gptcli.engine.schedule import Every, budget_reached, format_duration, lr_at, planned_steps, stopped_message
from gptcli.errors import SaveError, TrainingError, UsageError
from gptcli.generation import SampleConfig, generate_with
from gptcli.metrics import MetricsWriter, flops_per_token, gpu_bf16_peak, read_metrics
from gptcli.paths import display_path, shell_path
from gptcli.tokenizer import decode, encode

THROUGHPUT = ("tokens_per_sec", "mfu")  # an eval record's measurements of speed, not of the model


class Engine:
    def __init__(
        self,
        task: Any,
        cfg: Any,
        run_dir: Path | str,
        *,
        callbacks: Callbacks | None = None,
        should_stop: Callable[[], int | None] | None = None,
        resume_from: dict[str, Any] | None = None,
    ):
        self.task, self.cfg, self.run_dir = task, cfg, Path(run_dir)
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
        if task.batch_is_global and cfg.batch_size < self.dist.world_size:
            raise UsageError(
                f"invalid --batch-size: {cfg.batch_size} is fewer than the {self.dist.world_size} processes "
                "torchrun started (it is the global batch, split between them)"
            )
        self.state = Progress()
        self.model, self.model_cfg = task.build(self, resume_from)
        # Memory savers that compute the same function (tests/test_training.py checks the losses).
        self.model.activation_checkpointing = cfg.activation_checkpointing
        self.model.fused_loss_chunk = fused_loss.DEFAULT_CHUNK_ROWS if cfg.fused_loss else None
        self.model.to(self.device)
        # --fsdp shards the model across the torchrun processes (the optimizer is then built over
        # the shards). A run on a process of its own trains unsharded: its checkpoints are ordinary.
        self.fsdp = cfg.fsdp and self.dist.enabled
        if self.fsdp:
            fsdp.shard(self.model)
        elif cfg.fsdp:
            self.cb.info("--fsdp: not launched by torchrun, so this process trains the whole model unsharded")
        if task.reseed_before_optimizer:  # the book's finetuning seeds again before its optimizer
            torch.manual_seed(cfg.seed)
        self.optimizer = make_optimizer(self.model, cfg, self.device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=cfg.precision == "fp16")
        use_compile = cfg.compile if cfg.compile is not None else self.device.type == "cuda"
        net: torch.nn.Module = torch.compile(self.model) if use_compile else self.model
        if self.dist.enabled and not self.fsdp:  # DDP averages the gradients of the trainable weights
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
        if resume_from is not None:
            self.restore(resume_from)

    # -- checkpoints --------------------------------------------------------------------------

    def _full_state(self) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """The whole model's and optimizer's state dicts, in the ordinary layout. Under --fsdp
        this gathers the shards onto rank 0's CPU: collective (every rank must call it), and
        None on the other ranks."""
        if not self.fsdp:
            return self.task.saved_state(self.model), self.optimizer.state_dict()
        model_sd, optim_sd = fsdp.full_state_dict(self.model, self.optimizer)
        if not self.dist.is_main:
            return None
        keep = set(self.task.saved_state(self.model))
        return {k: v for k, v in model_sd.items() if k in keep}, fsdp.optimizer_state_by_position(optim_sd)

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
            world_size=self.dist.world_size,
            **self.task.checkpoint_extra(self),
        )

    def save(self, reason: str) -> Path:
        self.guard.check()
        self.state.nonfinite_steps = self.guard.count
        self.state.train_seconds = self._elapsed()
        self.state.threads = torch.get_num_threads()
        path = rundir.step_checkpoint_path(self.run_dir, self.state.step)
        state = self._full_state() if self.fsdp else None  # every rank takes part in gathering the shards
        if self.dist.is_main:
            self.state.metrics_lines = self.metrics.lines if self.metrics else 0
            try:
                ckpt.atomic_save(self.checkpoint_dict(state), path)
            except SaveError as e:
                raise self._write_failed(e) from e.__cause__
            self._best_saved = update_best(
                self.run_dir, path, self.state.history, self.state.best_val, self._best_saved, self.cb.warn
            )
            rundir.rotate(self.run_dir, self.cfg.keep_last, protect={path.resolve()}, warn=self.cb.warn)
            self.cb.on_save(path, reason)
        distributed.barrier()
        return path

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
        self.task.check_resume(self, obj)
        optim_sd = obj.get("optimizer_state_dict") or None
        flags = {k: self.optimizer.param_groups[0].get(k) for k in ("fused", "foreach")}
        if self.fsdp:
            # An ordinary checkpoint, saved at any world size, with or without --fsdp: each rank
            # keeps its shards of it (of copies: the load replaces the dicts' values by shards).
            # A LoRA run's checkpoint holds only the adapters and the new head: the rest is the
            # base the task already loaded, so only those tensors are set (strict off).
            state = dict(obj["model_state_dict"])
            if not self.task.partial_state:
                ckpt.check_state_fits(self.model_cfg, state, "checkpoint")
            if optim_sd is not None:
                optim_sd = fsdp.optimizer_state_by_name(self.model, self.optimizer, optim_sd)
            fsdp.load_full_state_dict(self.model, state, self.optimizer, optim_sd, strict=not self.task.partial_state)
        else:
            self.task.load_state(self.model, obj["model_state_dict"], source="checkpoint")
            if optim_sd is not None:
                self.optimizer.load_state_dict(optim_sd)
        if optim_sd is not None:
            # A state saved by another AdamW (the book's default, non-fused one) carries its own
            # implementation flags; keep ours, which the update rule does not depend on.
            for group in self.optimizer.param_groups:
                group.update(flags)
        if obj.get("scaler_state_dict"):
            self.scaler.load_state_dict(obj["scaler_state_dict"])
        self.state = Progress.from_dict(
            obj.get("progress", {}), legacy=self.task.legacy_counts, batch_size=self.cfg.batch_size
        )
        self.guard.restore(self.state.nonfinite_steps)
        self._check_threads()
        self._best_saved = self.state.best_val
        if "rng" in obj:
            ckpt.restore_rng(obj["rng"])

    def _check_threads(self) -> None:
        """A CPU run resumes with the thread count it last saved with, which exact resumption
        (bit for bit) needs; one given with ``--threads`` wins, and its cost is said."""
        saved, now = self.state.threads, torch.get_num_threads()
        if self.device.type != "cpu" or not saved or saved == now:
            return
        if threads_requested() is None:
            torch.set_num_threads(saved)
            self.cb.info(f"resuming with the {saved} CPU thread(s) this run last trained with (--threads N to change)")
            return
        self.cb.info(
            f"this run last trained with {saved} CPU thread(s) and resumes with {now}: its numbers will differ "
            f"slightly (about 1e-8) from a run that never stopped; for exact resumption pass --threads {saved}"
        )

    # -- batches ------------------------------------------------------------------------------

    def global_batch(self) -> int:
        """Rows per optimizer step, over all ranks and micro-batches. Pretraining's --batch-size
        is each process's micro-batch; finetuning's is the global batch (the book's)."""
        per_step = self.cfg.batch_size * self.cfg.grad_accum
        return per_step if self.task.batch_is_global else per_step * self.dist.world_size

    def micro_batches(self, data: Any, rows: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's micro-batches of one global batch of ``rows``, on the device."""
        parts = self.task.micro_batches(data, rows, self.cfg.grad_accum, self.dist.rank, self.dist.world_size)
        return [(x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)) for x, y in parts]

    def _count(self, parts: list[tuple[torch.Tensor, torch.Tensor]]) -> int:
        """What the loss averages over in the whole global batch (targets, or examples)."""
        n = sum(self.task.count(y) for _, y in parts)
        if self.dist.enabled:
            n = distributed.all_reduce_sum_int(n, self.device)
        return n

    def _single(self, parts: list) -> bool:
        """One process and one micro-batch: the task's own mean, the book's exact numbers."""
        return not self.dist.enabled and len(parts) == 1

    # -- evaluation ---------------------------------------------------------------------------

    @torch.no_grad()
    def batch_loss(self, data: Any, rows: list[int]) -> torch.Tensor:
        """One global batch's mean loss, however the work is split."""
        parts = self.micro_batches(data, rows)
        if self._single(parts):
            with autocast_for(self.device, self.cfg.precision):
                return self.task.loss_mean(self.model, *parts[0]).float()
        count = self._count(parts)
        total = torch.zeros((), device=self.device)
        # Under --fsdp each forward pass gathers the shards from every rank, so a rank with fewer
        # micro-batches (a short last batch) keeps step with passes it does not count.
        n = distributed.all_reduce_max_int(len(parts), self.device) if self.fsdp else len(parts)
        for i in range(n):
            counted = i < len(parts) and parts[i][0].shape[0] > 0
            if not counted and not self.fsdp:
                continue
            x, y = parts[i] if counted else self._dummy(data, rows)
            with autocast_for(self.device, self.cfg.precision):
                s = self.task.loss_sum(self.model, x, y).float()
            if counted:
                total += s
        if self.dist.enabled:
            torch.distributed.all_reduce(total)
        return total / count if count else torch.full((), float("nan"), device=self.device)

    def _dummy(self, data: Any, rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = data.batch(rows[:1])
        return x.to(self.device), y.to(self.device)

    def loader_batches(self, data: Any, *, shuffle: bool, num_batches: int | None) -> list[list[int]]:
        """The batches of a fresh book ``DataLoader`` over ``data`` (train: shuffled, drop_last),
        the first ``num_batches`` of them; its iteration draws from the RNG as the book's does."""
        seed = loader_iter_seed(shuffle=shuffle)
        order = permutation(len(data), seed) if shuffle else list(range(len(data)))
        batches = batches_of(order, self.global_batch(), drop_last=shuffle)
        return batches if num_batches is None else batches[:num_batches]

    def loader_loss(self, data: Any, *, shuffle: bool, num_batches: int | None) -> float:
        """The book's ``calc_loss_loader``: the mean over batches of each batch's mean loss."""
        batches = self.loader_batches(data, shuffle=shuffle, num_batches=num_batches)
        if not batches:
            return float("nan")
        total = torch.zeros((), device=self.device)
        for b in batches:
            total += self.batch_loss(data, b)
        return total.item() / len(batches)

    def evaluate(self) -> tuple[float, float]:
        """The book's ``evaluate_model``: mean loss over ``eval_iter`` batches of each split."""
        self.model.eval()
        train_loss = self.loader_loss(self.task.train, shuffle=True, num_batches=self.cfg.eval_iter)
        val_loss = self.loader_loss(self.task.val, shuffle=False, num_batches=self.cfg.eval_iter)
        self.model.train()
        return train_loss, val_loss

    def sample_text(self, prompt: str | None = None) -> str:
        """The book's ``generate_and_print_sample``: ``sample_tokens`` greedy tokens from
        ``prompt`` (the start context), the whole text returned, with the KV cache, never
        stopping at <|endoftext|>."""
        idx = torch.tensor([encode(self.cfg.start_context if prompt is None else prompt)], device=self.device)
        # Under --fsdp every rank generates alike (each forward pass gathers the shards); on CUDA
        # without the KV cache, whose CUDA graph cannot capture those collectives.
        use_cache = not (self.fsdp and self.device.type == "cuda")
        self.model.eval()
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

    # -- one optimizer step -------------------------------------------------------------------

    def steps_per_epoch(self) -> int:
        return len(self.task.train) // self.global_batch()

    def planned_steps(self) -> int:
        return planned_steps(self.cfg, self.steps_per_epoch(), self.task.max_step_tokens(self))

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

    def _train_step(self, rows: list[int]) -> torch.Tensor:
        cfg, st = self.cfg, self.state
        lr = lr_at(st.step, lr=cfg.lr, warmup_steps=cfg.warmup_steps, total_steps=st.planned_steps, min_lr=cfg.min_lr)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        parts = self.micro_batches(self.task.train, rows)
        single = self._single(parts)
        count = 1 if single else self._count(parts)
        scale = self.dist.world_size / max(count, 1)  # DDP averages the ranks' gradients
        loss_sum = torch.zeros((), device=self.device)
        for i, (x, y) in enumerate(parts):
            last = i == len(parts) - 1
            # Gradients are all-reduced (reduce-scattered under --fsdp) once per step, on the last micro-batch.
            sync = contextlib.nullcontext()
            if self.fsdp:
                self.model.set_requires_gradient_sync(last)
            elif not last and self.dist.enabled:
                sync = self.train_model.no_sync()
            with sync:
                with autocast_for(self.device, cfg.precision):
                    if single:
                        loss = self.task.loss_mean(self.train_model, x, y)
                    else:
                        loss = self.task.loss_sum(self.train_model, x, y).float()
                self.scaler.scale(loss if single else loss * scale).backward()
            loss_sum += loss.detach().float()
        if single:
            loss_mean = loss_sum
        else:
            if self.dist.enabled:
                torch.distributed.all_reduce(loss_sum)
            loss_mean = loss_sum / count if count else torch.full((), float("nan"), device=self.device)
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

    # -- the loop -----------------------------------------------------------------------------

    def fit(self) -> Progress:
        try:
            return self._fit()
        except torch.cuda.OutOfMemoryError:
            raise TrainingError(
                f"CUDA out of memory at --batch-size {self.cfg.batch_size} and context {self.model_cfg.context_length}; "
                "use a smaller --batch-size (with --grad-accum to keep the effective batch), a shorter "
                "--context-length, or --precision bf16"
            ) from None
        except RuntimeError as e:
            if not (self.dist.enabled and distributed.peer_lost(e)):
                raise
            # The survivor of a rank that was killed: one line, not gloo's or NCCL's traceback.
            raise TrainingError(
                f"another process of this torchrun run stopped ({str(e).splitlines()[0][:160]}), so this one stops "
                f"too; its last checkpoint is intact: continue with: gptcli resume {shell_path(self.run_dir)}"
            ) from None

    def _fit(self) -> Progress:
        pending = self.state.sample_pending
        self._adopt_logged_records()  # rank 0 reads metrics.jsonl; every rank must then agree (collectives)
        if self.dist.enabled and distributed.all_reduce_max_int(
            int(pending and not self.state.sample_pending), self.device
        ):
            self.state.sample_pending = False
        steps_per_epoch = self.steps_per_epoch()
        if steps_per_epoch < 1:
            raise self.task.too_little_data(self)
        self._open_run_dir()
        self._plan()
        self.cb.on_start(self._start_info(steps_per_epoch))
        self.model.train()
        if self.state.sample_pending:  # resumed from an epoch's checkpoint: its records come first
            self._epoch_records()
        self._throughput = (time.perf_counter(), self.state.tokens_seen)
        self._clock = (time.monotonic(), self.state.train_seconds)
        self._eval_every = Every(self.cfg.eval_freq, first=True)
        self._save_every = Every(self.cfg.save_every, first=False)
        self.stop_reason = self._stop_check(evaluated=True, at_start=True)
        while self.state.epoch < self.cfg.epochs and self.stop_reason is None:
            if self._train_epoch(steps_per_epoch):
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

    def _start_info(self, steps_per_epoch: int) -> dict[str, Any]:
        st = self.state
        return {
            "kind": self.task.kind,
            "params": self.model.num_params(),
            "trainable": sum(p.numel() for p in self.model.parameters() if p.requires_grad),
            "device": str(self.device)
            + (f" x {self.dist.world_size} ranks" if self.dist.enabled else "")
            + (" (FSDP)" if self.fsdp else ""),
            "steps_per_epoch": steps_per_epoch,
            "total_steps": self.planned_steps(),
            "epochs": self.cfg.epochs,
            "run_dir": str(self.run_dir),
            "resumed": st.step > 0 or st.epoch > 0,
            "last_eval": st.history[-1] if st.history else None,  # what a resumed run's display starts from
            **self.task.start_info(self),
        }

    def _train_epoch(self, steps_per_epoch: int) -> bool:
        """Optimizer steps over this epoch's shuffled rows, from wherever it stopped; False when a
        budget or --patience ended the run before the epoch did (evaluated and saved)."""
        st, gb = self.state, self.global_batch()
        if st.epoch_seed is None:
            st.epoch_seed = loader_iter_seed(shuffle=True)
            st.windows_done = 0
        order = permutation(len(self.task.train), st.epoch_seed)
        usable = (len(self.task.train) // gb) * gb
        while st.windows_done + gb <= usable:
            rows = order[st.windows_done : st.windows_done + gb]
            loss = self._train_step(rows)
            tokens_before = st.tokens_seen
            st.step += 1
            st.windows_done += gb
            st.tokens_seen += self.task.step_tokens(self, rows)
            st.examples_seen += gb
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
                    f"at step {st.step}; saved {display_path(path)}; "
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
        h = {"epoch": st.epoch + 1, "step": st.step - 1, **self.task.seen(st), "train_loss": train_loss}
        h["val_loss"] = val_loss
        record = {
            "type": "eval",
            **h,
            "lr": self.optimizer.param_groups[0]["lr"],
            "tokens_per_sec": tps,
            "steps_per_epoch": self.steps_per_epoch(),
        }
        peak = gpu_bf16_peak(torch.cuda.get_device_name(self.device)) if self.device.type == "cuda" else None
        if peak:
            record["mfu"] = tps * flops_per_token(self.model_cfg) / (peak * self.dist.world_size)
        self._throughput = (now, st.tokens_seen)
        st.history.append(h)
        if scheduled:  # --patience counts the evaluations of the --eval-freq schedule only
            improved = not math.isnan(val_loss) and val_loss < st.best_val
            st.evals_since_best = 0 if improved else st.evals_since_best + 1
        if not math.isnan(val_loss):
            st.best_val = min(st.best_val, val_loss)
        self._log(record if self.task.logs_throughput else {k: v for k, v in record.items() if k not in THROUGHPUT})
        self.cb.on_eval(record)

    def _end_epoch(self) -> None:
        """The book's end of epoch, in the order that cannot lose it: save the finished epoch,
        then its records (the greedy sample, or the accuracies).

        The checkpoint marks the records pending and counts the metrics lines without them, so a
        run that dies meanwhile (or is resumed from this checkpoint for any reason) writes them
        again first thing on resume: the same numbers, as the RNG state saved is the one they
        started from, and the same lines in metrics.jsonl.
        """
        st = self.state
        st.epoch += 1
        st.epoch_seed = None
        st.windows_done = 0
        st.sample_pending = True
        self.save("epoch")
        self._epoch_records()
        signum = self._stop_requested()
        if signum is not None and st.epoch < self.cfg.epochs:
            raise Interrupted(
                f"after epoch {st.epoch}; continue with: gptcli resume {shell_path(self.run_dir)}",
                128 + signum,
            )

    def _epoch_records(self) -> None:
        """Log and report the end-of-epoch records of the epoch just completed (and saved)."""
        for record in self.task.epoch_end(self):
            self._log(record)
            if record["type"] == "sample":
                self.cb.on_sample(record)
            else:
                self.cb.on_record(record)
        self.state.sample_pending = False

    # -- the run directory --------------------------------------------------------------------

    def _adopt_logged_records(self) -> None:
        """Resuming from an epoch's checkpoint: if metrics.jsonl already holds that epoch's
        records (the run went on past the save), keep the lines instead of writing them again."""
        st = self.state
        path = rundir.metrics_path(self.run_dir)
        # Records whose making draws random numbers (a classifier's shuffled accuracy batches)
        # are made again instead: the checkpoint's RNG state is the one they started from.
        if self.task.epoch_end_draws_rng or not (st.sample_pending and self.dist.is_main and path.is_file()):
            return
        try:
            records = read_metrics(path)
        except OSError:
            return  # _open_run_dir reports an unreadable metrics.jsonl
        after = records[st.metrics_lines : st.metrics_lines + len(self.task.epoch_end_types)]
        ok = [
            isinstance(r, dict) and r.get("type") in self.task.epoch_end_types and r.get("epoch") == st.epoch
            for r in after
        ]
        if after and len(after) == len(self.task.epoch_end_types) and all(ok):
            st.metrics_lines += len(after)
            st.sample_pending = False

    def _open_run_dir(self) -> None:
        """Write the resolved config, and cut metrics.jsonl back to what the checkpoint knows."""
        if not self.dist.is_main:
            return
        check_disk_space(self)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        rundir.remove_stale_temporaries(rundir.checkpoint_dir(self.run_dir))
        self.task.write_config(self)
        self.metrics = MetricsWriter(rundir.metrics_path(self.run_dir))
        if self.metrics.lines == 0 and self.state.metrics_lines > 0:
            self._rebuild_metrics()
        if self.metrics.lines != self.state.metrics_lines:
            self.metrics.truncate(self.state.metrics_lines)

    def _rebuild_metrics(self) -> None:
        """Resumed without metrics.jsonl: write it again from the checkpoint's history (every
        evaluation) and the epochs completed (each epoch's sample, its text lost)."""
        st, spe = self.state, self.steps_per_epoch()
        per_step = self.task.max_step_tokens(self)
        sampled = st.epoch - (1 if st.sample_pending else 0)
        total = self.planned_steps()
        sample_type = "sample" in self.task.epoch_end_types

        def sample(epoch: int) -> list[dict[str, Any]]:
            step = epoch * spe
            text = {"type": "sample", "epoch": epoch, "step": step - 1, "tokens_seen": step * per_step, "text": ""}
            return [text] if sample_type else []

        records: list[dict[str, Any]] = []
        done = 0
        for h in st.history:
            while done < sampled and done + 1 < h["epoch"]:
                done += 1
                records += sample(done)
            lr = lr_at(
                h["step"], lr=self.cfg.lr, warmup_steps=self.cfg.warmup_steps, total_steps=total, min_lr=self.cfg.min_lr
            )
            records.append({"type": "eval", **h, "lr": lr, "steps_per_epoch": spe})
        for e in range(done + 1, sampled + 1):
            records += sample(e)
        for r in records:
            r["rebuilt"] = True
        try:
            self.metrics.write_all(records)
        except SaveError as e:
            raise self._write_failed(e) from None
        if not rundir.list_step_checkpoints(self.run_dir):  # a new run directory: nothing was lost
            self.cb.info(f"{self.metrics.path}: started from the checkpoint's history ({len(records)} records)")
            return
        lost = "the epoch samples' texts are lost" if sample_type else "the epochs' accuracies are lost"
        self.cb.warn(
            f"{self.metrics.path} was missing: rebuilt {len(records)} records from the checkpoint's history ({lost})"
        )
