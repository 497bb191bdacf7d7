"""What each command does, as plain functions the CLI calls (and tests and scripts can too).

These functions print results to stdout and progress to stderr through ``gptcli.console``;
the training, data and model code below them never prints.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from gptcli import console
from gptcli.config import ModelConfig, TrainConfig, dump_yaml_config, load_yaml_config
from gptcli.errors import CheckpointError, UsageError

# ---------------------------------------------------------------------------------------------
# Signals: the handler only sets a flag; the loop saves at the next step boundary.


class StopFlag:
    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __call__(self) -> int | None:
        return self.signum

    def _handle(self, signum, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: abort now; atomic saves keep the last checkpoint
        self.signum = signum
        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        console.warn(f"{name}: saving a checkpoint at the end of this step (Ctrl-C again to abort)")

    def install(self) -> StopFlag:
        for s in (signal.SIGINT, signal.SIGTERM):
            self._old[s] = signal.signal(s, self._handle)
        return self

    def restore(self) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


# ---------------------------------------------------------------------------------------------
# train / resume


def resolve_train_configs(
    *,
    config_file: Path | None,
    preset: str | None,
    model_flags: dict[str, Any],
    train_flags: dict[str, Any],
) -> tuple[ModelConfig | None, TrainConfig, dict[str, Any]]:
    """Defaults, then the config file, then flags given on the command line.

    With ``--init`` the architecture comes from the initial weights, so the model is not built
    here (None): the model settings given are returned for comparison with the checkpoint's.
    """
    file_cfg = load_yaml_config(config_file) if config_file else {"model": {}, "train": {}}
    where = str(config_file) if config_file else "flags"
    model_dict = dict(file_cfg["model"])
    chosen_preset = preset or model_dict.pop("preset", None)
    model_dict.update({k: v for k, v in model_flags.items() if v is not None})
    train_dict = dict(file_cfg["train"])
    train_dict.update({k: v for k, v in train_flags.items() if v is not None})
    train_dict["data"] = [str(Path(p).resolve()) if Path(p).exists() else str(p) for p in train_dict.get("data") or []]
    if train_dict.get("val_file") and Path(train_dict["val_file"]).exists():
        train_dict["val_file"] = str(Path(train_dict["val_file"]).resolve())
    train_cfg = TrainConfig.from_dict(train_dict, where=where)
    if train_cfg.init:
        if chosen_preset:
            model_dict = {**ModelConfig.from_preset(chosen_preset).to_dict(), **model_dict}
        return None, train_cfg, model_dict
    if chosen_preset:
        model_cfg = ModelConfig.from_preset(chosen_preset, **model_dict)
    else:
        model_cfg = ModelConfig.from_dict(model_dict, where=where)
    return model_cfg, train_cfg, model_dict


def _init_weights(train_cfg: TrainConfig, given_model: dict[str, Any]):
    """Weights and architecture for ``--init``: the checkpoint's config wins; explicit
    architecture flags that disagree with it are an error listing each field."""
    from gptcli.checkpoint import load_checkpoint
    from gptcli.training import check_architecture
    from gptcli.weights import resolve_model

    path = resolve_model(train_cfg.init)
    obj = load_checkpoint(path)
    saved = ModelConfig.from_dict(dict(obj["model_config"]), where=f"{path}: model_config")
    arch = {k: v for k, v in given_model.items() if k != "drop_rate"}
    check_architecture(saved, arch, f"--init {train_cfg.init}")
    if "drop_rate" in given_model:
        saved.drop_rate = given_model["drop_rate"]
    return saved, obj["model_state_dict"]


def train_command(
    *,
    config_file: Path | None = None,
    preset: str | None = None,
    model_flags: dict[str, Any] | None = None,
    train_flags: dict[str, Any] | None = None,
    out: Path | None = None,
    print_config: bool = False,
    quiet: bool = False,
    tensorboard: bool = False,
) -> Path:
    console.set_quiet(quiet)
    model_cfg, train_cfg, given_model = resolve_train_configs(
        config_file=config_file, preset=preset, model_flags=model_flags or {}, train_flags=train_flags or {}
    )
    init_state = None
    if train_cfg.init:
        model_cfg, init_state = _init_weights(train_cfg, given_model)
    if print_config:
        console.print_result(dump_yaml_config(model_cfg, train_cfg), end="")
        return Path()
    if tensorboard:
        from gptcli.tensorboard import check_available

        check_available()
    if not train_cfg.data:
        raise UsageError("no training text given: pass one or more files or directories (or 'data' in --config)")
    from gptcli.checkpoint import list_step_checkpoints
    from gptcli.training import default_run_dir

    run_dir = Path(out) if out else default_run_dir(train_cfg.data)
    if list_step_checkpoints(run_dir):
        raise UsageError(
            f"--out {run_dir} already holds checkpoints; continue it with 'gptcli resume {run_dir}' "
            "or choose another --out"
        )
    return _fit(model_cfg, train_cfg, run_dir, init_state=init_state, tensorboard=tensorboard)


def _fit(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    run_dir: Path,
    *,
    init_state=None,
    restore_from=None,
    tensorboard: bool = False,
) -> Path:
    from gptcli import distributed
    from gptcli.training import Trainer

    main_rank = os.environ.get("RANK", "0") == "0"  # under torchrun only rank 0 reports
    if not main_rank:
        console.set_quiet(True)
    progress = _train_callbacks(
        console.TrainProgress(print_samples=main_rank),
        run_dir,
        tensorboard=tensorboard and main_rank,
        restore_from=restore_from,
    )
    stop = StopFlag().install()
    try:
        trainer = Trainer(
            model_cfg, train_cfg, run_dir, callbacks=progress, should_stop=stop, init_state_dict=init_state
        )
        if restore_from is not None:
            trainer.restore(restore_from)
        trainer.fit()
    finally:
        progress.close()
        stop.restore()
        distributed.shutdown()
    console.info(f"done: {run_dir} (sample with: gptcli sample -c {run_dir})")
    return run_dir


def resume_command(target: Path | None, *, epochs: int | None = None, quiet: bool = False) -> Path:
    from gptcli.checkpoint import load_checkpoint, resolve_checkpoint, run_dir_of
    from gptcli.training import default_run_dir

    console.set_quiet(quiet)
    path = resolve_checkpoint(target, warn=console.warn)
    obj = load_checkpoint(path)
    if obj.get("kind") != "training" or "optimizer_state_dict" not in obj or "train_config" not in obj:
        raise CheckpointError(
            f"{path}: holds weights only (no optimizer state or progress); start a run from it with: gptcli train FILE --init {path}"
        )
    model_cfg = ModelConfig.from_dict(dict(obj["model_config"]), where=f"{path}: model_config")
    train_dict = dict(obj["train_config"])
    progress = obj.get("progress", {})
    if epochs is not None:
        if epochs < max(1, progress.get("epoch", 0)):
            raise UsageError(
                f"invalid --epochs: {epochs} (the run has already completed {progress.get('epoch')} epochs)"
            )
        train_dict["epochs"] = epochs
    train_cfg = TrainConfig.from_dict(train_dict, where=f"{path}: train_config")
    if progress.get("epoch", 0) >= train_cfg.epochs:
        raise UsageError(
            f"{path}: the run already finished its {train_cfg.epochs} epochs; pass --epochs N to extend it"
        )
    run_dir = run_dir_of(path) or default_run_dir(train_cfg.data)
    return _fit(model_cfg, train_cfg, run_dir, restore_from=obj)


# ---------------------------------------------------------------------------------------------
# loading a model for eval and sample


def load_model_for_inference(
    checkpoint: Path | None, model: str | None, *, device: str, dtype: str = "fp32", fallback_gpt2: bool = False
):
    from gptcli.checkpoint import load_checkpoint, model_from_checkpoint, resolve_checkpoint
    from gptcli.training import resolve_device
    from gptcli.weights import downloaded_default, resolve_model

    if checkpoint is not None and model is not None:
        raise UsageError("give either --checkpoint or --model, not both")
    if model is not None:
        path = resolve_model(model)
    else:
        try:
            path = resolve_checkpoint(checkpoint, warn=console.warn)
        except CheckpointError:
            fallback = downloaded_default() if (fallback_gpt2 and checkpoint is None) else None
            if fallback is None:
                raise
            console.info(f"no run under runs/; using the downloaded GPT-2 124M ({fallback})")
            path = fallback
    if dtype not in ("auto", "fp32", "bf16"):
        raise UsageError(f"invalid --dtype: {dtype!r} (choose from auto, fp32, bf16)")
    obj = load_checkpoint(path)
    net = model_from_checkpoint(obj, path)
    dev = resolve_device(device)
    prepare_for_inference(net, dtype=dtype, device=dev)
    return net, path, dev


def prepare_for_inference(net, *, dtype: str, device):
    """Move a model to ``device``, cast it for ``--dtype`` and set eval mode.

    fp32 on CPU also stores every Linear weight column-major (the same values and state dict):
    ``F.linear`` computes ``x @ W.t()``, and with ``W.t()`` contiguous MKL's batch-1 kernels stream
    the weights about 1.4x faster (benchmarks/bench_sample_cpu.py). bf16 kernels are fastest with
    the usual row-major layout, so bf16 weights keep it.
    """
    import torch

    net.to(device)
    if resolve_dtype(dtype, device) == torch.bfloat16:
        net.to(torch.bfloat16)
    elif device.type == "cpu":
        for m in net.modules():
            if isinstance(m, torch.nn.Linear):
                m.weight.data = m.weight.data.t().contiguous().t()
    return net.eval()


def native_bf16(device) -> bool:
    """Whether bf16 matmuls run natively here: a CUDA GPU of compute capability 8.0 or newer, or a
    CPU with AVX512-BF16 or AMX (x86) or the BF16 extension (Arm). Elsewhere bf16 is emulated."""
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_capability(device)[0] >= 8
    if device.type != "cpu":
        return False
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return bool({"avx512_bf16", "amx_bf16", "bf16"} & set(line.split(":", 1)[1].split()))
    except OSError:
        pass
    return False


def resolve_dtype(dtype: str, device):
    """The weights' dtype for ``--dtype``. ``auto`` is bf16 on CPUs with native bf16, where
    benchmarks/bench_sample_cpu.py measured greedy decoding faster than fp32 with the first tokens
    the same, and fp32 everywhere else, GPUs included, until sampling is measured there."""
    import torch

    if dtype == "bf16" or (dtype == "auto" and device.type == "cpu" and native_bf16(device)):
        return torch.bfloat16
    return torch.float32


def eval_command(
    paths: list[Path],
    *,
    checkpoint: Path | None = None,
    model: str | None = None,
    batch_size: int = 8,
    device: str = "auto",
    json_out: bool = False,
    encoding_errors: str = "strict",
    quiet: bool = False,
) -> dict[str, Any]:
    from gptcli.data import read_corpus, tokenize
    from gptcli.evaluation import evaluate_tokens

    console.set_quiet(quiet)
    if encoding_errors not in ("strict", "replace", "ignore"):
        raise UsageError(f"invalid --encoding-errors: {encoding_errors!r} (choose from strict, replace, ignore)")
    text = read_corpus(paths, errors=encoding_errors)
    tokens = tokenize(text)
    if len(tokens) < 2:
        raise UsageError(f"{paths[0]}: needs at least 2 tokens to evaluate, has {len(tokens)}")
    net, path, dev = load_model_for_inference(checkpoint, model, device=device)
    with console.step_progress("evaluating", None) as prog:
        task = prog.add_task("eval", total=None)
        res = evaluate_tokens(
            net,
            tokens,
            batch_size=batch_size,
            device=dev,
            on_progress=lambda d, t: prog.update(task, completed=d, total=t),
        )
    result = {
        "checkpoint": str(path),
        "files": [str(p) for p in paths],
        "tokens": res.tokens,
        "windows": res.windows,
        "loss": res.loss,
        "perplexity": res.perplexity,
    }
    if json_out:
        console.print_result(json.dumps(result))
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=None, show_header=True)
        for col in ("checkpoint", "tokens", "loss", "perplexity"):
            table.add_column(col, justify="right" if col != "checkpoint" else "left")
        table.add_row(str(path), f"{res.tokens:,}", f"{res.loss:.4f}", f"{res.perplexity:.2f}")
        Console(highlight=False, no_color=True if not sys.stdout.isatty() else None).print(table)
    return result


def _token_printer(*, echo: bool):
    """An ``on_token`` callback for one row that collects its tokens and, with ``echo``, prints
    each complete UTF-8 piece as it arrives; also returns its state (ids, text printed so far)."""
    from gptcli.tokenizer import EOT_ID, decode

    state: dict[str, Any] = {"ids": [], "printed": ""}

    def on_token(tok) -> None:
        t = int(tok[0, 0])
        if t == EOT_ID:
            return
        state["ids"].append(t)
        text = decode(state["ids"])
        if echo and not text.endswith("\ufffd"):  # wait for a complete UTF-8 character
            console.print_result(text[len(state["printed"]) :], end="")
            state["printed"] = text

    return on_token, state


def _generate(net, idx, scfg, *, use_cache: bool, on_token=None, generator=None) -> list[list[int]]:
    """``generate`` with a SampleConfig's settings, stopping at <|endoftext|>."""
    from gptcli.generation import generate
    from gptcli.tokenizer import EOT_ID

    return generate(
        net,
        idx,
        max_new_tokens=scfg.max_new_tokens,
        temperature=scfg.temperature,
        top_k=scfg.top_k,
        top_p=scfg.top_p,
        eos_id=EOT_ID,
        use_cache=use_cache,
        generator=generator,
        on_token=on_token,
    )


def sample_command(
    *,
    checkpoint: Path | None = None,
    model: str | None = None,
    prompts: list[str],
    max_new_tokens: int = 50,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    num_samples: int = 1,
    device: str = "auto",
    dtype: str = "auto",
    use_cache: bool = True,
    json_out: bool = False,
    stream: bool | None = None,
    quiet: bool = False,
) -> list[str]:
    import torch

    from gptcli.generation import SampleConfig
    from gptcli.tokenizer import decode, encode

    console.set_quiet(quiet)
    scfg = SampleConfig(
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        seed=seed,
        num_samples=num_samples,
    )
    net, path, dev = load_model_for_inference(checkpoint, model, device=device, dtype=dtype, fallback_gpt2=True)
    encoded = [encode(p) for p in prompts]
    for ids in encoded:
        if not ids:
            raise UsageError("invalid --prompt: empty prompt")
        if len(ids) > net.cfg.context_length:
            console.warn(
                f"prompt of {len(ids)} tokens is longer than the context ({net.cfg.context_length}); keeping its last {net.cfg.context_length}"
            )
    gen = None  # the global RNG, as the book's generate uses, so a seed gives the book's samples
    if scfg.seed is not None:
        torch.manual_seed(scfg.seed)
    rows = [(i, ids) for i, ids in enumerate(encoded) for _ in range(scfg.num_samples)]
    streaming = (sys.stdout.isatty() if stream is None else stream) and len(rows) == 1 and not json_out
    outputs: dict[int, list[str]] = {}
    # Prompts of equal length form one batch; different lengths run as separate batches.
    by_len: dict[int, list[tuple[int, list[int]]]] = {}
    for i, ids in rows:
        by_len.setdefault(len(ids), []).append((i, ids))
    for _, group in sorted(by_len.items()):
        idx = torch.tensor([ids for _, ids in group], device=dev)
        on_token = None
        if streaming:
            console.print_result(prompts[group[0][0]], end="")
            on_token, _ = _token_printer(echo=True)

        new = _generate(net, idx, scfg, use_cache=use_cache, generator=gen, on_token=on_token)
        for (i, ids), toks in zip(group, new):
            outputs.setdefault(i, []).append(decode(ids + toks))
    texts = [t for i in range(len(prompts)) for t in outputs.get(i, [])]
    if json_out:
        console.print_result(json.dumps({"checkpoint": str(path), "samples": texts}))
    elif streaming:
        console.print_result("")
    else:
        console.print_result("\n\n".join(texts))
    return texts


def plot_command(targets: list[Path], *, output: Path, log_y: bool = False, terminal: bool = False) -> None:
    from gptcli.plot import plot_runs, terminal_plot

    if not targets:
        from gptcli.checkpoint import find_latest_run  # imports torch: only when no run is named

        latest = find_latest_run()
        if latest is None:
            raise UsageError("no training run found under runs/; give a run directory or metrics.jsonl")
        targets = [latest]
    if terminal:
        console.print_result(terminal_plot(targets, log_y=log_y))
        return
    path = plot_runs(targets, output, log_y=log_y)
    console.info(f"wrote {path}")


# ---------------------------------------------------------------------------------------------
# training callbacks: the progress display, plus TensorBoard when asked for


class _Fanout:
    """Passes each training callback to several receivers (the progress display, TensorBoard)."""

    def __init__(self, *receivers: Any):
        self.receivers = receivers

    def __getattr__(self, name: str):
        if not (name.startswith("on_") or name == "warn"):
            raise AttributeError(name)

        def call(*args: Any, **kwargs: Any) -> None:
            for r in self.receivers:
                method = getattr(r, name, None)
                if method is not None:
                    method(*args, **kwargs)

        return call

    def close(self) -> None:
        for r in self.receivers:
            r.close()


def _train_callbacks(progress: Any, run_dir: Path, *, tensorboard: bool, restore_from: dict[str, Any] | None) -> Any:
    """The progress display, and a TensorBoard writer for ``--tensorboard`` or for a resumed run
    that wrote TensorBoard events before (the run directory remembers it; resume takes no flag)."""
    from gptcli.tensorboard import LOG_DIR, TensorBoardWriter, is_main_process

    if not is_main_process():  # under torchrun, rank 0 reports for all; the others only warn
        console.set_quiet(True)
        progress.print_samples = False
        return progress
    if not (tensorboard or (Path(run_dir) / LOG_DIR).is_dir()):
        return progress
    purge = int(restore_from.get("progress", {}).get("step", 0)) if restore_from is not None else None
    try:
        writer = TensorBoardWriter(run_dir, purge_step=purge)
    except UsageError:
        if tensorboard:
            raise
        console.warn(f"{run_dir}/{LOG_DIR} exists but tensorboard is not installed; not logging to it")
        return progress
    return _Fanout(progress, writer)


# ---------------------------------------------------------------------------------------------
# info and runs: inspecting checkpoints and run directories


def _human_size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return f"{n:.2f} TB"


def _display_path(p: Path) -> str:
    """A path relative to the current directory when it lies below it (as the user typed it)."""
    try:
        return str(Path(p).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(p)


def _resolve_info_target(target: str | None) -> Path:
    from gptcli.checkpoint import resolve_checkpoint
    from gptcli.weights import model_name_to_size, resolve_model

    if target is not None and not Path(target).exists() and model_name_to_size(target):
        return resolve_model(target)  # gpt2-124M etc.: the converted download
    return resolve_checkpoint(Path(target) if target is not None else None, warn=console.warn)


def info_command(target: str | None, *, json_out: bool = False) -> dict[str, Any]:
    """A checkpoint's kind, config, parameter count, progress and last losses."""
    from gptcli.checkpoint import load_checkpoint, run_dir_of

    path = _resolve_info_target(target)
    obj = load_checkpoint(path)  # memory-mapped: the tensors are not read
    model_cfg = ModelConfig.from_dict(dict(obj["model_config"]), where=f"{path}: model_config")
    progress = dict(obj.get("progress") or {})
    history = list(progress.get("history") or [])
    train_cfg = dict(obj.get("train_config") or {})
    run_dir = run_dir_of(path)
    result: dict[str, Any] = {
        "checkpoint": str(path),
        "size_bytes": path.stat().st_size,
        "kind": obj.get("kind", "unknown"),
        "version": obj.get("version"),
        "run_dir": str(run_dir) if run_dir else None,
        "parameters": model_cfg.num_params(),
        "model_config": model_cfg.to_dict(),
        "train_config": train_cfg or None,
        "step": progress.get("step"),
        "epoch": progress.get("epoch"),
        "epochs": train_cfg.get("epochs"),
        "tokens_seen": progress.get("tokens_seen"),
        "last_eval": history[-1] if history else None,
        "best_val_loss": progress.get("best_val") if history else None,
    }
    if json_out:
        console.print_result(json.dumps(result, indent=2, default=str))
        return result
    lines = [
        ("checkpoint", f"{path} ({_human_size(result['size_bytes'])})"),
        (
            "kind",
            f"{result['kind']}"
            + ("" if result["kind"] != "weights" else " (no optimizer state: use it with --init, --model)"),
        ),
    ]
    if run_dir:
        lines.append(("run", _display_path(run_dir)))
    lines.append(("parameters", f"{result['parameters']:,}"))
    if result["step"] is not None:
        epochs = f" of {result['epochs']}" if result["epochs"] else ""
        lines.append(
            (
                "progress",
                f"epoch {result['epoch']}{epochs} done, step {result['step']:,}, {result['tokens_seen'] or 0:,} tokens seen",
            )
        )
    last = result["last_eval"]
    if last:
        from gptcli.console import fmt_loss

        lines.append(
            (
                "last losses",
                f"train {fmt_loss(last['train_loss'])}, val {fmt_loss(last['val_loss'])} (step {last['step']})",
            )
        )
        lines.append(("best val loss", fmt_loss(result["best_val_loss"])))
    width = max(len(k) for k, _ in lines) + 2
    out = [f"{k + ':':<{width}}{v}" for k, v in lines]
    import yaml

    sections = {"model": result["model_config"], **({"train": train_cfg} if train_cfg else {})}
    console.print_result("\n".join(out) + "\n" + yaml.safe_dump(sections, sort_keys=False), end="")
    return result


def _run_summary(run: Path) -> dict[str, Any]:
    """What `gptcli runs` shows for one run, read from config.yaml, metrics.jsonl and file names
    (no checkpoint is opened, so listing stays instant)."""
    import re
    import time

    from gptcli.metrics import METRICS_FILE, read_metrics

    records = read_metrics(run / METRICS_FILE) if (run / METRICS_FILE).is_file() else []
    evals = [r for r in records if r.get("type") == "eval"]
    epochs_total = None
    if (run / "config.yaml").is_file():
        import yaml

        try:
            epochs_total = (
                (yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8")) or {}).get("train") or {}
            ).get("epochs")
        except (yaml.YAMLError, AttributeError):
            epochs_total = None
    steps = [
        int(m.group(1))
        for p in (run / "checkpoints").glob("step-*.pth")
        if (m := re.match(r"step-(\d+)\.pth$", p.name))
    ]
    files = [run / METRICS_FILE, *(run / "checkpoints").glob("step-*.pth")]
    mtime = max((f.stat().st_mtime for f in files if f.exists()), default=run.stat().st_mtime)
    last = evals[-1] if evals else {}
    return {
        "run": str(run),
        "epochs_done": sum(1 for r in records if r.get("type") == "sample"),
        "epochs": epochs_total,
        "step": max(steps) if steps else (records[-1]["step"] + 1 if records else 0),
        "tokens_seen": records[-1].get("tokens_seen", 0) if records else 0,
        "train_loss": last.get("train_loss"),
        "val_loss": last.get("val_loss"),
        "best_val_loss": min((r["val_loss"] for r in evals if r.get("val_loss") == r.get("val_loss")), default=None),
        "checkpoints": len(steps),
        "updated": time.strftime("%Y-%m-%d %H:%M", time.localtime(mtime)),
        "_mtime": mtime,
    }


def runs_command(root: Path = Path("runs"), *, json_out: bool = False) -> list[dict[str, Any]]:
    """Every run directory under ``root``, oldest first, with its progress and last losses."""
    from gptcli.console import fmt_loss

    root = Path(root)
    dirs = (
        [
            p
            for p in root.iterdir()
            if p.is_dir() and any((p / n).exists() for n in ("metrics.jsonl", "config.yaml", "checkpoints"))
        ]
        if root.is_dir()
        else []
    )
    runs = sorted((_run_summary(p) for p in dirs), key=lambda r: r["_mtime"])
    for r in runs:
        del r["_mtime"]
    if json_out:
        console.print_result(json.dumps(runs, indent=2))
        return runs
    if not runs:
        console.info(f"no runs under {root}/ (start one with: gptcli train FILE.txt)")
        return runs
    header = ("RUN", "EPOCHS", "STEP", "TOKENS", "TRAIN", "VAL", "BEST VAL", "UPDATED")
    rows = [
        (
            r["run"],
            f"{r['epochs_done']}/{r['epochs']}" if r["epochs"] else str(r["epochs_done"]),
            str(r["step"]),
            f"{r['tokens_seen']:,}",
            fmt_loss(r["train_loss"]) if r["train_loss"] is not None else "-",
            fmt_loss(r["val_loss"]) if r["val_loss"] is not None else "-",
            fmt_loss(r["best_val_loss"]) if r["best_val_loss"] is not None else "-",
            r["updated"],
        )
        for r in runs
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    left = {0, 7}
    for row in [header, *rows]:
        cells = [c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        console.print_result("  ".join(cells).rstrip())
    return runs


# ---------------------------------------------------------------------------------------------
# sample --interactive: a prompt loop that keeps the model loaded

_INTERACTIVE_HELP = """\
Type a prompt and press Enter to continue it. Settings for the next prompts:
  /temperature 1.4    /top-k 25    /top-p 0.9    /max-new-tokens 100    /seed 123
  /top-k off and /top-p off turn a filter off; /settings shows them all.
Ctrl-C stops a generation; Ctrl-D or /quit leaves."""


def interactive_sample(
    *,
    checkpoint: Path | None = None,
    model: str | None = None,
    max_new_tokens: int = 50,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    device: str = "auto",
    dtype: str = "auto",
    use_cache: bool = True,
    stream: bool | None = None,
    quiet: bool = False,
    input_fn=input,
) -> int:
    """Read prompts until end of input and print a continuation of each; returns how many ran.

    The model is loaded once. On a terminal the tokens stream as they are generated; with input
    piped in, each continuation is printed whole, so ``gptcli sample -i < prompts.txt`` works too.
    """
    import dataclasses

    import torch

    from gptcli.generation import SampleConfig
    from gptcli.tokenizer import decode, encode

    settings = SampleConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    net, path, dev = load_model_for_inference(checkpoint, model, device=device, dtype=dtype, fallback_gpt2=True)
    if seed is not None:
        torch.manual_seed(seed)
    tty = sys.stdin.isatty()
    streaming = sys.stdout.isatty() if stream is None else stream
    if not quiet:  # quiet drops the banner; answers to /help and /settings still print
        console.info(f"loaded {path} ({net.cfg.num_params():,} parameters, context {net.cfg.context_length}) on {dev}")
    if tty and not quiet:
        console.info("type a prompt and press Enter; /help for settings; Ctrl-D or /quit to leave")
        try:
            import readline  # noqa: F401  (line editing and history for input())
        except ImportError:
            pass
    names = {"temperature": float, "top_k": int, "top_p": float, "max_new_tokens": int, "seed": int}
    done = 0
    while True:
        try:
            line = input_fn(">>> " if tty else "")
        except EOFError:
            if tty:
                console.print_result("")
            return done
        except KeyboardInterrupt:
            console.print_result("")
            console.info("(Ctrl-D or /quit to leave)")
            continue
        prompt = line.rstrip("\n")
        if not prompt.strip():
            continue
        if prompt.startswith("/"):
            word, _, value = prompt[1:].strip().partition(" ")
            key = word.replace("-", "_")
            if key in ("quit", "exit", "q"):
                return done
            if key in ("help", "h", "?"):
                console.info(_INTERACTIVE_HELP)
            elif key == "settings":
                console.info(", ".join(f"{k.replace('_', '-')} {getattr(settings, k)}" for k in names))
            elif key in names:
                raw = value.strip()
                try:
                    parsed = (
                        None
                        if raw.lower() in ("off", "none") and key in ("top_k", "top_p", "seed")
                        else names[key](raw)
                    )
                    settings = dataclasses.replace(settings, **{key: parsed})
                except ValueError:
                    console.warn(f"/{word} needs a number, got {raw!r}")
                    continue
                except UsageError as e:
                    console.warn(str(e).replace("--", "/"))
                    continue
                if key == "seed" and parsed is not None:
                    torch.manual_seed(parsed)
                console.info(f"{word} = {parsed}")
            else:
                console.warn(f"unknown command /{word}; /help lists them")
            continue
        ids = encode(prompt)
        if len(ids) > net.cfg.context_length:
            console.warn(
                f"prompt of {len(ids)} tokens is longer than the context ({net.cfg.context_length}); keeping its last {net.cfg.context_length}"
            )
        on_token, state = _token_printer(echo=streaming)

        if streaming:
            console.print_result(prompt, end="")
        try:
            _generate(net, torch.tensor([ids], device=dev), settings, use_cache=use_cache, on_token=on_token)
        except KeyboardInterrupt:
            if not streaming:
                console.print_result(prompt + decode(state["ids"]), end="")
            console.print_result("")
            console.info("(stopped)")
            continue
        if streaming:
            console.print_result(decode(state["ids"])[len(state["printed"]) :])
        else:
            console.print_result(prompt + decode(state["ids"]))
        done += 1
