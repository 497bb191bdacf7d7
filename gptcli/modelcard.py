"""The model card of a model pushed to the Hugging Face Hub: ``README.md`` with YAML front matter,
written into a ``--to hf`` export beside the weights, with the loss figure ``plot`` draws.

It says what was trained and how: the model's shape, the run's settings, the fingerprint of its
data, the final losses and the loss curves. Never prints; what it could not include (no
metrics, no matplotlib) comes back as notes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gptcli import fsutil, rundir
from gptcli.errors import GptCliError

LOSS_FIGURE = "loss.png"
CARD = "README.md"


@dataclass
class CardFacts:
    """What the card tells, gathered from a checkpoint and its run (any of it may be missing)."""

    model_config: dict[str, Any] = field(default_factory=dict)
    kind: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    data_fingerprint: str | None = None
    step: int | None = None
    tokens_seen: int | None = None
    train_loss: float | None = None
    val_loss: float | None = None
    run: Path | None = None
    source: str | None = None  # what the weights were converted from, when not a run


def gather(src: str | Path) -> CardFacts:
    """The facts of ``src``: a run directory or a gptcli checkpoint (its run, when it lies in
    one). Anything else (a Hugging Face folder, OpenAI's files) gives a card without a run."""
    from gptcli.checkpoint import load_checkpoint, resolve_checkpoint

    facts = CardFacts()
    try:
        path = resolve_checkpoint(Path(src))
        obj = load_checkpoint(path, verify=False)
    except (GptCliError, OSError):
        facts.source = str(src)
        return facts
    finetune = obj.get("finetune") if isinstance(obj.get("finetune"), dict) else {}
    facts.model_config = dict(obj.get("model_config") or {})
    facts.kind = obj.get("kind")
    facts.settings = dict(obj.get("train_config") or finetune.get("config") or {})
    facts.data_fingerprint = obj.get("data_fingerprint") or finetune.get("data_fingerprint")
    progress = obj.get("progress") if isinstance(obj.get("progress"), dict) else {}
    facts.step, facts.tokens_seen = progress.get("step"), progress.get("tokens_seen")
    facts.run = rundir.run_dir_of(path) or (Path(src) if rundir.is_run_dir(Path(src)) else None)
    if facts.run is not None:
        summary = rundir.run_summary(facts.run)
        facts.train_loss, facts.val_loss = summary.get("train_loss"), summary.get("val_loss")
        facts.tokens_seen = summary.get("tokens_seen") or facts.tokens_seen
    elif obj.get("source"):
        facts.source = str(obj.get("source"))
    return facts


def _params(cfg: dict[str, Any]) -> str | None:
    try:
        d, layers, vocab, ctx = cfg["emb_dim"], cfg["n_layers"], cfg["vocab_size"], cfg["context_length"]
    except KeyError:
        return None
    n = vocab * d + ctx * d + layers * (12 * d * d + 13 * d) + 2 * d
    if not cfg.get("tie_weights", False):
        n += vocab * d  # an untied output head
    return f"{n / 1e6:.1f}M"


def _public(value: Any) -> Any:
    """A setting as the card shows it: a local path by its file name only (the card is public)."""
    if isinstance(value, list):
        return [_public(v) for v in value]
    if isinstance(value, str) and ("/" in value or "\\" in value) and Path(value).is_absolute():
        return Path(value).name
    return value


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def render(facts: CardFacts, repo_id: str, *, figure: bool) -> str:
    """The card's text: front matter Hugging Face reads (library, pipeline, tags), then sections."""
    front = {
        "library_name": "transformers",
        "pipeline_tag": "text-generation",
        "tags": ["gpt2", "gptcli", "text-generation"],
    }
    if facts.val_loss is not None:
        front["model-index"] = [
            {
                "name": repo_id.split("/")[-1],
                "results": [
                    {
                        "task": {"type": "text-generation"},
                        "metrics": [{"type": "loss", "name": "validation loss", "value": round(facts.val_loss, 4)}],
                    }
                ],
            }
        ]
    cfg = facts.model_config
    lines = ["---", yaml.safe_dump(front, sort_keys=False).rstrip(), "---", "", f"# {repo_id.split('/')[-1]}", ""]
    shape = ", ".join(
        f"{label} {cfg[key]}"
        for key, label in (
            ("n_layers", "layers"),
            ("emb_dim", "width"),
            ("n_heads", "heads"),
            ("context_length", "context"),
            ("vocab_size", "vocabulary"),
        )
        if key in cfg
    )
    params = _params(cfg)
    what = "A GPT-2 model" + (f" ({params} parameters; {shape})" if params and shape else "")
    lines += [f"{what}, trained with gptcli and exported to Hugging Face's format.", ""]
    if facts.source and facts.run is None:
        lines += [f"Converted from: `{facts.source}`.", ""]
    results = [
        ("final training loss", facts.train_loss),
        ("final validation loss", facts.val_loss),
        ("optimizer steps", facts.step),
        ("tokens seen", facts.tokens_seen),
        ("data fingerprint", facts.data_fingerprint),
    ]
    results = [(k, v) for k, v in results if v is not None]
    if results:
        lines += ["## Results", "", "| | |", "|---|---|"] + [f"| {k} | {_fmt(v)} |" for k, v in results] + [""]
    if figure:
        lines += [f"![Training and validation loss]({LOSS_FIGURE})", ""]
    if facts.settings:
        settings = {k: _public(v) for k, v in facts.settings.items() if v is not None}
        lines += ["## Training settings", "", "```yaml", yaml.safe_dump(settings, sort_keys=True).rstrip(), "```", ""]
    lines += [
        "## Use",
        "",
        "```python",
        "from transformers import AutoTokenizer, GPT2LMHeadModel",
        "",
        f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}")',
        f'model = GPT2LMHeadModel.from_pretrained("{repo_id}")',
        "```",
        "",
        f"or with gptcli: `gptcli download {repo_id}` then `gptcli sample --model {repo_id}`.",
        "",
    ]
    return "\n".join(lines)


def write_card(export_dir: Path, src: str | Path, repo_id: str) -> list[str]:
    """Write README.md (and loss.png, where the run has metrics and matplotlib is installed) into
    ``export_dir``; returns notes on what was left out."""
    notes: list[str] = []
    facts = gather(src)
    figure = False
    if facts.run is not None:
        try:
            from gptcli.plot import plot_runs

            plot_runs([facts.run], export_dir / LOSS_FIGURE)
            figure = True
        except ImportError:
            notes.append("the model card has no loss figure: matplotlib is not installed")
        except GptCliError as e:
            notes.append(f"the model card has no loss figure: {e}")
    else:
        notes.append(f"{src} is not a gptcli run, so the model card has no settings or losses")
    fsutil.atomic_write(export_dir / CARD, render(facts, repo_id, figure=figure))
    return notes
