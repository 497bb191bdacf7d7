"""``gptcli eval``: loss and perplexity of a model over every window of some text."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gptcli import console
from gptcli.config import ENCODING_ERRORS
from gptcli.data import corpus_tokens
from gptcli.errors import UsageError
from gptcli.evaluation import evaluate_tokens
from gptcli.inference import load_model_for_inference


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
    console.set_quiet(quiet)
    if encoding_errors not in ENCODING_ERRORS:
        raise UsageError(f"invalid --encoding-errors: {encoding_errors!r} (choose from {', '.join(ENCODING_ERRORS)})")
    tokens = corpus_tokens(paths, errors=encoding_errors)
    if len(tokens) < 2:
        raise UsageError(f"{paths[0]}: needs at least 2 tokens to evaluate, has {len(tokens)}")
    loaded = load_model_for_inference(checkpoint, model, device=device, warn=console.warn)
    with console.step_progress("evaluating", None) as prog:
        task = prog.add_task("eval", total=None)
        res = evaluate_tokens(
            loaded.net,
            tokens,
            batch_size=batch_size,
            device=loaded.device,
            on_progress=lambda d, t: prog.update(task, completed=d, total=t),
        )
    result = {
        "checkpoint": str(loaded.path),
        "files": [str(p) for p in paths],
        "tokens": res.tokens,
        "windows": res.windows,
        "loss": res.loss,
        "perplexity": res.perplexity,
    }
    if json_out:
        console.print_result(json.dumps(result))
    else:
        console.print_table(
            ["checkpoint", "tokens", "loss", "perplexity"],
            [[str(loaded.path), f"{res.tokens:,}", f"{res.loss:.4f}", f"{res.perplexity:.2f}"]],
            left={0},
        )
    return result
