"""HellaSwag (Zellers et al., 2019), scored as llm.c and nanoGPT (build-nanogpt) score GPT-2.

Each example has a context ``ctx``, four ``endings`` and the index ``label`` of the right one
(the official ``hellaswag_val.jsonl``, https://github.com/rowanz/hellaswag, 10,042 examples).
Every ending is scored as a completion of the context, the way llm.c's ``dev/data/hellaswag.py``
does: the row is ``encode(ctx) + encode(" " + ending)`` and only the ending's tokens count.

* ``acc``: the ending with the highest *sum* of its tokens' log-likelihoods is the prediction.
* ``acc_norm``: the ending with the highest *mean* log-likelihood per ending token (llm.c's and
  nanoGPT's ``avg_loss``). lm-evaluation-harness's ``acc_norm`` divides by the ending's length in
  characters instead (its bytes, for English text), and its ``hellaswag`` task also rewrites the
  text (``activity_label: ctx_a Ctx_b``, WikiHow's bracketed markers cleaned), so its figures
  differ (llm.c quotes acc 0.2892, acc_norm 0.3114 from the harness against its own 0.2859,
  0.2955 for GPT-2 124M); ``gptcli eval --task lm-eval:hellaswag`` runs the harness's.

A row longer than the model's context keeps its last tokens (the ending and as much context as
fits), which only happens for models with a short context.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from gptcli import jsontext
from gptcli.errors import DataError
from gptcli.tokenizer import encode

NORMALISATION = "mean log-likelihood per ending token (llm.c, nanoGPT)"


@dataclass(frozen=True)
class Example:
    ctx: str
    endings: tuple[str, ...]
    label: int
    where: str  # "file: line N", for messages


def read_examples(path: str | Path) -> list[Example]:
    """The examples of a HellaSwag jsonl file (``.gz`` etc. accepted), each checked: a bad line
    is one DataError naming the file, line and field."""
    from gptcli.formats import Input, detect, open_binary

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    examples = []
    with open_binary(Input(path, "jsonl", detect(path)[1])) as f:
        for lineno, raw in enumerate(f, 1):
            where = f"{path}: line {lineno}"
            if not raw.strip():
                continue
            if lineno == 1:
                raw = raw.removeprefix(b"\xef\xbb\xbf")  # a byte order mark
            obj = jsontext.loads(raw, where, what="not a valid JSON line")
            examples.append(_example(obj, where))
    if not examples:
        raise DataError(f"{path}: no examples")
    return examples


def _example(obj: object, where: str) -> Example:
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object with ctx, endings and label")
    ctx = obj.get("ctx")
    if not isinstance(ctx, str) or not ctx:
        raise DataError(f"{where}: field 'ctx' must be a non-empty string")
    endings = obj.get("endings")
    if not isinstance(endings, list) or len(endings) < 2 or not all(isinstance(e, str) and e for e in endings):
        raise DataError(f"{where}: field 'endings' must be a list of at least 2 non-empty strings")
    label = obj.get("label")
    if label is None:
        raise DataError(f"{where}: no field 'label' (the test split has no answers: use hellaswag_val.jsonl)")
    if isinstance(label, str) and label.isascii() and label.isdigit():  # not "²", which int() refuses
        label = int(label)  # Hugging Face's copy stores the label as a string
    if not isinstance(label, int) or isinstance(label, bool) or not 0 <= label < len(endings):
        raise DataError(f"{where}: field 'label' must be an index into the {len(endings)} endings, got {label!r}")
    return Example(ctx, tuple(endings), label, where)


def render(example: Example) -> tuple[list[int], list[list[int]]]:
    """Context ids and each ending's ids; the ending gets a leading space, as GPT-2's tokenizer
    attaches a word's space to the word (llm.c's ``render_example``)."""
    return encode(example.ctx), [encode(" " + e) for e in example.endings]


@torch.no_grad()
def ending_logprobs(
    model: torch.nn.Module, example: Example, *, device: torch.device | str = "cpu"
) -> list[list[float]]:
    """Log-likelihood of each token of each ending given the context (and the ending before it)."""
    T = model.cfg.context_length
    ctx, ends = render(example)
    rows, n_ctx = [], []
    for end in ends:
        if len(end) > T:
            raise DataError(
                f"{example.where}: an ending of {len(end)} tokens does not fit the model's context of {T} tokens"
            )
        row = (ctx + end)[-(T + 1) :]  # inputs row[:-1] are at most T tokens
        rows.append(row)
        n_ctx.append(len(row) - len(end))
    width = max(len(r) for r in rows)
    idx = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        idx[i, : len(r)] = torch.tensor(r)
    idx = idx.to(device)
    # Padding sits after each row, so causal attention keeps it out of every scored position.
    logits = model(idx[:, :-1]).float()  # (4, width - 1, V)
    logp = F.log_softmax(logits, dim=-1).gather(-1, idx[:, 1:, None]).squeeze(-1)  # (4, width - 1)
    return [logp[i, n_ctx[i] - 1 : len(rows[i]) - 1].tolist() for i in range(len(rows))]


@dataclass
class HellaSwagResult:
    examples: int
    correct: int
    correct_norm: int

    @property
    def acc(self) -> float:
        return self.correct / self.examples

    @property
    def acc_norm(self) -> float:
        return self.correct_norm / self.examples


def predictions(logprobs: Sequence[Sequence[float]]) -> tuple[int, int]:
    """(by sum, by mean per token): the index of the most likely ending, the first on a tie."""
    sums = [sum(lp) for lp in logprobs]
    means = [s / len(lp) for s, lp in zip(sums, logprobs)]
    return max(range(len(sums)), key=lambda i: sums[i]), max(range(len(means)), key=lambda i: means[i])


def evaluate(
    model: torch.nn.Module,
    examples: Sequence[Example],
    *,
    device: torch.device | str = "cpu",
    on_progress: Callable[[int, int], None] | None = None,
) -> HellaSwagResult:
    model.eval()
    correct = correct_norm = 0
    for k, ex in enumerate(examples, 1):
        pred, pred_norm = predictions(ending_logprobs(model, ex, device=device))
        correct += pred == ex.label
        correct_norm += pred_norm == ex.label
        if on_progress is not None:
            on_progress(k, len(examples))
    return HellaSwagResult(len(examples), correct, correct_norm)
