"""``gptcli eval``: loss and perplexity of a model over a text: the book's ``calc_loss_loader``
over its stride = context windows by default, a sliding window with ``--stride``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gptcli import console
from gptcli.config import ENCODING_ERRORS
from gptcli.data import corpus_tokens
from gptcli.device import set_threads
from gptcli.errors import UsageError
from gptcli.evaluation import evaluate_tokens
from gptcli.inference import load_model_for_inference

TASKS = ("loss", "hellaswag")


def hellaswag_command(
    paths: list[Path], *, checkpoint: Path | None, model: str | None, device: str, json_out: bool
) -> dict[str, Any]:
    """HellaSwag accuracy (``gptcli.hellaswag``) of the model over the examples of the files."""
    from gptcli import hellaswag

    examples = [ex for p in paths for ex in hellaswag.read_examples(p)]
    loaded = load_model_for_inference(checkpoint, model, device=device, warn=console.warn)
    if loaded.note:
        console.info(loaded.note)
    with console.step_progress("hellaswag", None) as prog:
        task = prog.add_task("hellaswag", total=len(examples))
        res = hellaswag.evaluate(
            loaded.net,
            examples,
            device=loaded.device,
            on_progress=lambda d, t: prog.update(task, completed=d, total=t),
        )
    result = {
        "checkpoint": str(loaded.path),
        "files": [str(p) for p in paths],
        "task": "hellaswag",
        "examples": res.examples,
        "acc": res.acc,
        "acc_norm": res.acc_norm,
        "acc_norm_by": hellaswag.NORMALISATION,
    }
    if json_out:
        console.print_result(json.dumps(result))
    else:
        console.print_table(
            ["checkpoint", "task", "examples", "acc", "acc_norm"],
            [[str(loaded.path), "hellaswag", f"{res.examples:,}", f"{res.acc:.4f}", f"{res.acc_norm:.4f}"]],
            left={0, 1},
        )
    return result


def eval_command(
    paths: list[Path],
    *,
    checkpoint: Path | None = None,
    model: str | None = None,
    batch_size: int = 8,
    stride: int | None = None,
    device: str = "auto",
    json_out: bool = False,
    encoding_errors: str = "strict",
    quiet: bool = False,
    threads: int | None = None,
    task: str = "loss",
) -> dict[str, Any]:
    console.set_quiet(quiet)
    set_threads(threads)
    if task not in TASKS:
        raise UsageError(f"invalid --task: {task!r} (choose from {', '.join(TASKS)})")
    if task == "hellaswag":
        if stride is not None:
            raise UsageError("--stride applies to --task loss only")
        return hellaswag_command(paths, checkpoint=checkpoint, model=model, device=device, json_out=json_out)
    if encoding_errors not in ENCODING_ERRORS:
        raise UsageError(f"invalid --encoding-errors: {encoding_errors!r} (choose from {', '.join(ENCODING_ERRORS)})")
    if stride is not None and stride < 1:
        raise UsageError(f"invalid --stride: {stride} (must be at least 1)")
    tokens = corpus_tokens(paths, errors=encoding_errors)
    if len(tokens) < 2:
        raise UsageError(f"{paths[0]}: needs at least 2 tokens to evaluate, has {len(tokens)}")
    loaded = load_model_for_inference(checkpoint, model, device=device, warn=console.warn)
    if loaded.note:  # which run was picked, when none was named
        console.info(loaded.note)
    T = loaded.net.cfg.context_length
    if stride is not None and stride > T:
        raise UsageError(f"invalid --stride: {stride} (at most the model's context length, {T})")
    if stride is None and len(tokens) <= T:
        raise UsageError(
            f"{paths[0]}: {len(tokens)} tokens, too short for one of the book's windows of {T} tokens "
            f"(needs {T + 1}); --stride {T} scores a shorter text"
        )
    with console.step_progress("evaluating", None) as prog:
        task = prog.add_task("eval", total=None)
        res = evaluate_tokens(
            loaded.net,
            tokens,
            batch_size=batch_size,
            stride=stride,
            device=loaded.device,
            on_progress=lambda d, t: prog.update(task, completed=d, total=t),
        )
    result = {
        "checkpoint": str(loaded.path),
        "files": [str(p) for p in paths],
        "method": res.method,
        "context_length": T,
        "stride": res.stride,
        "batch_size": batch_size,
        "tokens": res.tokens,
        "windows": res.windows,
        "loss": res.loss,
        "perplexity": res.perplexity,
    }
    if json_out:
        console.print_result(json.dumps(result))
    else:
        console.print_table(
            ["checkpoint", "method", "tokens", "loss", "perplexity"],
            [[str(loaded.path), res.method, f"{res.tokens:,}", f"{res.loss:.4f}", f"{res.perplexity:.2f}"]],
            left={0, 1},
        )
    return result
