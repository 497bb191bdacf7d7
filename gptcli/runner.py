"""What each command does, as plain functions the CLI calls (and tests and scripts can too).

These functions print results to stdout and progress to stderr through ``gptcli.console``;
the training, data and model code below them never prints.
"""

from __future__ import annotations

import json
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
) -> tuple[ModelConfig, TrainConfig, dict[str, Any]]:
    """Defaults, then the config file, then flags given on the command line."""
    file_cfg = load_yaml_config(config_file) if config_file else {"model": {}, "train": {}}
    given_model = {k: v for k, v in model_flags.items() if v is not None}
    model_dict = dict(file_cfg["model"])
    file_preset = model_dict.pop("preset", None)
    chosen_preset = preset or file_preset
    model_dict.update(given_model)
    if chosen_preset:
        model_cfg = ModelConfig.from_preset(chosen_preset, **model_dict)
    else:
        model_cfg = ModelConfig.from_dict(model_dict, where=str(config_file) if config_file else "model flags")
    train_dict = dict(file_cfg["train"])
    train_dict.update({k: v for k, v in train_flags.items() if v is not None})
    train_dict["data"] = [str(Path(p).resolve()) if Path(p).exists() else str(p) for p in train_dict.get("data") or []]
    if train_dict.get("val_file") and Path(train_dict["val_file"]).exists():
        train_dict["val_file"] = str(Path(train_dict["val_file"]).resolve())
    train_cfg = TrainConfig.from_dict(train_dict, where=str(config_file) if config_file else "train flags")
    return model_cfg, train_cfg, given_model


def _init_weights(train_cfg: TrainConfig, model_cfg: ModelConfig, given_model: dict[str, Any]):
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
) -> Path:
    console.set_quiet(quiet)
    model_cfg, train_cfg, given_model = resolve_train_configs(
        config_file=config_file, preset=preset, model_flags=model_flags or {}, train_flags=train_flags or {}
    )
    if print_config:
        console.print_result(dump_yaml_config(model_cfg, train_cfg), end="")
        return Path()
    if not train_cfg.data:
        raise UsageError("no training text given: pass one or more files or directories (or 'data' in --config)")
    init_state = None
    if train_cfg.init:
        model_cfg, init_state = _init_weights(train_cfg, model_cfg, given_model)
    from gptcli.checkpoint import list_step_checkpoints
    from gptcli.training import default_run_dir

    run_dir = Path(out) if out else default_run_dir(train_cfg.data)
    if list_step_checkpoints(run_dir):
        raise UsageError(
            f"--out {run_dir} already holds checkpoints; continue it with 'gptcli resume {run_dir}' "
            "or choose another --out"
        )
    return _fit(model_cfg, train_cfg, run_dir, init_state=init_state)


def _fit(model_cfg: ModelConfig, train_cfg: TrainConfig, run_dir: Path, *, init_state=None, restore_from=None) -> Path:
    from gptcli.training import Trainer

    progress = console.TrainProgress()
    stop = StopFlag().install()
    try:
        trainer = Trainer(model_cfg, train_cfg, run_dir, callbacks=progress, should_stop=stop, init_state_dict=init_state)
        if restore_from is not None:
            trainer.restore(restore_from)
        trainer.fit()
    finally:
        progress.close()
        stop.restore()
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
            raise UsageError(f"invalid --epochs: {epochs} (the run has already completed {progress.get('epoch')} epochs)")
        train_dict["epochs"] = epochs
    train_cfg = TrainConfig.from_dict(train_dict, where=f"{path}: train_config")
    if progress.get("epoch", 0) >= train_cfg.epochs:
        raise UsageError(f"{path}: the run already finished its {train_cfg.epochs} epochs; pass --epochs N to extend it")
    run_dir = run_dir_of(path) or default_run_dir(train_cfg.data)
    return _fit(model_cfg, train_cfg, run_dir, restore_from=obj)


# ---------------------------------------------------------------------------------------------
# loading a model for eval and sample


def load_model_for_inference(checkpoint: Path | None, model: str | None, *, device: str, dtype: str = "fp32", fallback_gpt2: bool = False):
    import torch

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
    obj = load_checkpoint(path)
    net = model_from_checkpoint(obj, path)
    dev = resolve_device(device)
    if dtype not in ("auto", "fp32", "bf16"):
        raise UsageError(f"invalid --dtype: {dtype!r} (choose from auto, fp32, bf16)")
    net.to(dev)
    if dtype == "bf16":
        net.to(torch.bfloat16)
    net.eval()
    return net, path, dev


def eval_command(
    paths: list[Path], *, checkpoint: Path | None = None, model: str | None = None, batch_size: int = 8,
    device: str = "auto", json_out: bool = False, encoding_errors: str = "strict",
) -> dict[str, Any]:
    from gptcli.data import read_corpus, tokenize
    from gptcli.evaluation import evaluate_tokens

    if encoding_errors not in ("strict", "replace", "ignore"):
        raise UsageError(f"invalid --encoding-errors: {encoding_errors!r} (choose from strict, replace, ignore)")
    text = read_corpus(paths, errors=encoding_errors)
    tokens = tokenize(text)
    if len(tokens) < 2:
        raise UsageError(f"{paths[0]}: needs at least 2 tokens to evaluate, has {len(tokens)}")
    net, path, dev = load_model_for_inference(checkpoint, model, device=device)
    with console.step_progress("evaluating", None) as prog:
        task = prog.add_task("eval", total=None)
        res = evaluate_tokens(net, tokens, batch_size=batch_size, device=dev,
                              on_progress=lambda d, t: prog.update(task, completed=d, total=t))
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


def sample_command(
    *, checkpoint: Path | None = None, model: str | None = None, prompts: list[str], max_new_tokens: int = 50,
    temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
    num_samples: int = 1, device: str = "auto", dtype: str = "auto", use_cache: bool = True,
    json_out: bool = False, stream: bool | None = None,
) -> list[str]:
    import torch

    from gptcli.generation import SampleConfig, generate
    from gptcli.tokenizer import EOT_ID, decode, encode

    scfg = SampleConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                        seed=seed, num_samples=num_samples)
    net, path, dev = load_model_for_inference(checkpoint, model, device=device, dtype=dtype, fallback_gpt2=True)
    encoded = [encode(p) for p in prompts]
    for p, ids in zip(prompts, encoded):
        if not ids:
            raise UsageError("invalid --prompt: empty prompt")
        if len(ids) > net.cfg.context_length:
            console.warn(f"prompt of {len(ids)} tokens is longer than the context ({net.cfg.context_length}); keeping its last {net.cfg.context_length}")
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
            state = {"ids": [], "printed": ""}

            def on_token(tok, state=state):
                t = int(tok[0, 0])
                if t == EOT_ID:
                    return
                state["ids"].append(t)
                text = decode(state["ids"])
                if not text.endswith("\ufffd"):  # wait for a complete UTF-8 character
                    console.print_result(text[len(state["printed"]):], end="")
                    state["printed"] = text

        new = generate(net, idx, max_new_tokens=scfg.max_new_tokens, temperature=scfg.temperature, top_k=scfg.top_k,
                       top_p=scfg.top_p, eos_id=EOT_ID, use_cache=use_cache, generator=gen, on_token=on_token)
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
    from gptcli.checkpoint import find_latest_run
    from gptcli.plot import plot_runs, terminal_plot

    if not targets:
        latest = find_latest_run()
        if latest is None:
            raise UsageError("no training run found under runs/; give a run directory or metrics.jsonl")
        targets = [latest]
    if terminal:
        console.print_result(terminal_plot(targets, log_y=log_y))
        return
    path = plot_runs(targets, output, log_y=log_y)
    console.info(f"wrote {path}")
