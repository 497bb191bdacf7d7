"""gptcli's model as an lm-evaluation-harness model: the harness asks, gptcli's own GPT answers.

``GptcliLM`` is a ``lm_eval.api.model.TemplateLM`` (the harness's ``LM`` with its tokenization
boilerplate) over a ``GPT`` that ``gptcli.inference`` loaded from the checkpoint given, and over
``gptcli.generation.generate`` for the generative tasks. Its tokenization conventions are those of
the harness's ``HFLM`` for GPT-2 (lm_eval/models/huggingface.py), so that on the same weights the
two give the same numbers (tests/test_lm_eval.py checks it):

* ``loglikelihood``: ``TemplateLM`` splits each (context, continuation) pair as ``HFLM`` does: a
  trailing space of the context moves to the continuation, the whole text is encoded and the
  context's tokens are cut off its front; an empty context becomes the ``<|endoftext|>`` token.
  A row longer than the context keeps its last ``context_length + 1`` tokens.
* ``loglikelihood_rolling``: the document's tokens in disjoint windows of the model's context
  (``lm_eval.utils.get_rolling_token_windows`` with ``<|endoftext|>`` as the first window's
  prefix), each window scored as a continuation; the document's log-likelihood is their sum.
* ``generate_until``: the context's last ``context_length - max_gen_toks`` tokens, greedy unless
  the task samples, stopped at ``<|endoftext|>``, decoded and cut at the task's first stop string.

Requests are sorted by length, longest first, and run ``batch_size`` at a time
(``lm_eval.models.utils.Collator``, as ``HFLM``); requests whose rows agree but for the last token
(continuations of one token after one context, say) share one forward pass. Where such requests
split the row differently (two rolling windows of repeated text), each is scored on its own
continuation's positions, the row's last ones; HFLM 0.4.13 scores the shorter one on the first
positions of the longer one's instead, so with ``batch_size`` above 1 its rolling figures can be
off there (the tests compare against HFLM at batch size 1, where it never shares rows across
windows).

Why not export the checkpoint to Hugging Face's format and wrap it in ``HFLM``? That route scores
whatever ``HFLM`` ends up loading, not necessarily the checkpoint given: ``litgpt evaluate`` handed
it a Hub name instead of its converted folder, so it silently scored the downloaded base model, and
LoRA, QLoRA and full finetunes all got the same benchmark numbers (Lightning-AI/litgpt#1357). Here
the harness scores the very module ``gptcli.inference`` loaded from the checkpoint given (a test
checks its tensors are the checkpoint's).

``generate_until`` also ends a batch's generation once every row holds a stop string (HFLM's
stopping criteria do the same), raising out of ``generate``'s ``on_token``.

This module imports ``lm_eval`` at the top: it is imported (by ``gptcli.commands.evaluate``) only
after ``gptcli.lm_harness.require_harness`` has found the ``eval`` extra installed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from lm_eval.api.model import TemplateLM
from lm_eval.models.utils import Collator, handle_stop_sequences, normalize_gen_kwargs, postprocess_generated_text
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from gptcli.errors import DataError, UsageError
from gptcli.generation import generate
from gptcli.model import GPT
from gptcli.tokenizer import EOT_ID, EOT_TOKEN, encode, get_tokenizer

DEFAULT_MAX_GEN_TOKS = 256  # HFLM's max_gen_toks, for tasks that set none

Request = tuple[tuple[str, str] | None, list[int], list[int]]  # (strings or None, context ids, continuation ids)


class GptcliLM(TemplateLM):
    """The harness's view of a gptcli ``GPT``: log-likelihoods and greedy generations, batched."""

    def __init__(
        self,
        net: GPT,
        *,
        batch_size: int = 8,
        checkpoint: str | None = None,
        on_progress: Callable[[str, int, int], None] | None = None,
    ) -> None:
        """``on_progress(kind, done, total)`` hears after each batch of each kind of request
        ("loglikelihood", "loglikelihood_rolling", "generate_until"); the bridge never prints."""
        super().__init__()
        if batch_size < 1:
            raise UsageError(f"invalid --batch-size: {batch_size} (must be at least 1)")
        self.net = net.eval()
        self._batch_size = batch_size
        self._checkpoint = checkpoint
        self._on_progress = on_progress or (lambda kind, done, total: None)

    # --- what the harness asks of every model ---------------------------------------------------

    @property
    def eot_token_id(self) -> int:
        return EOT_ID

    @property
    def prefix_token_id(self) -> int:
        return EOT_ID  # GPT-2's bos_token_id, which HFLM uses: the same <|endoftext|>

    @property
    def max_length(self) -> int:
        return self.net.cfg.context_length

    @property
    def max_gen_toks(self) -> int:
        return DEFAULT_MAX_GEN_TOKS

    @property
    def batch_size(self) -> int:
        return self._batch_size

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    @property
    def tokenizer_name(self) -> str:
        return "gpt2"

    def get_model_info(self) -> dict[str, Any]:
        """What the harness records under ``config`` of its results."""
        return {"model_num_parameters": self.net.num_params(), "checkpoint": self._checkpoint}

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        """GPT-2's BPE as Hugging Face's GPT-2 tokenizer gives it: no BOS added, and the text
        ``<|endoftext|>`` is the special token."""
        ids = encode(string)
        left_truncate_len = kwargs.get("left_truncate_len")
        return ids[-left_truncate_len:] if left_truncate_len else ids

    def tok_decode(self, tokens: list[int]) -> str:
        """The text of ``tokens`` without ``<|endoftext|>`` (``skip_special_tokens``, as HFLM)."""
        return get_tokenizer().decode([t for t in tokens if t != EOT_ID])

    # --- scoring ----------------------------------------------------------------------------------

    @torch.no_grad()
    def _loglikelihood_tokens(
        self, requests: list[Request], disable_tqdm: bool = False, *, kind: str = "loglikelihood", **kwargs: Any
    ) -> list[tuple[float, bool]]:
        """(sum of the continuation's log-probabilities, whether greedy decoding gives it) per
        request, computed longest rows first in batches; the results in the requests' order."""
        T = self.max_length
        for _, ctx, cont in requests:
            if not ctx or not cont:
                raise DataError("a loglikelihood request needs a context and a continuation of at least one token")
            if len(cont) > T:
                raise DataError(f"a continuation of {len(cont)} tokens is longer than the model's context ({T})")

        def by_length(req: Request) -> tuple[int, tuple[int, ...]]:
            toks = req[1] + req[2]
            return -len(toks), tuple(toks)

        # Requests whose context + continuation[:-1] agree need one forward pass between them.
        order = Collator(requests, sort_fn=by_length, group_by="contexts", group_fn=lambda r: r[-2] + r[-1][:-1])
        results: list[tuple[float, bool]] = []
        for chunk in order.get_batched(n=self.batch_size):
            rows = [(ctx + cont)[-(T + 1) :][:-1] for _, ctx, cont in chunk]
            width = max(map(len, rows))
            idx = torch.zeros((len(rows), width), dtype=torch.long)
            for i, row in enumerate(rows):
                idx[i, : len(row)] = torch.tensor(row)  # padded on the right: causal attention never sees it
            logprobs = F.log_softmax(self.net(idx.to(self.device)).float(), dim=-1)  # (B, width, V)
            for (strings, ctx, cont), row, lp in zip(chunk, rows, logprobs):
                scored = lp[len(row) - len(cont) : len(row)].unsqueeze(0)  # (1, len(cont), V)
                greedy = scored.argmax(dim=-1)
                for req_strings, cont_toks, lps in order.get_cache(
                    req_str=strings, cxt_toks=ctx, cont_toks=cont, logits=scored
                ):
                    # A request sharing this row may split it later (a shorter continuation): its
                    # tokens are the last ones of the row. (HFLM gathers the first ones there.)
                    n = len(cont_toks)
                    target = torch.tensor(cont_toks, dtype=torch.long, device=lps.device).view(1, n, 1)
                    is_greedy = bool((greedy[:, -n:] == target[..., 0]).all())
                    answer = (float(torch.gather(lps[:, -n:], 2, target).sum()), is_greedy)
                    results.append(answer)
                    if req_strings is not None:
                        self.cache_hook.add_partial("loglikelihood", req_strings, answer)
            self._on_progress(kind, len(results), len(requests))
        return order.get_original(results)

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        """Each document's log-likelihood, every token scored once, in windows of the context."""
        windows: list[Request] = []
        owner: list[int] = []
        for i, (text,) in enumerate(req.args for req in requests):
            pieces = get_rolling_token_windows(
                token_list=self.tok_encode(text),
                prefix_token=self.prefix_token_id,
                max_seq_len=self.max_length,
                context_len=1,
            )
            for ctx, cont in map(make_disjoint_window, pieces):
                windows.append((None, ctx, cont))
                owner.append(i)
        scores = self._loglikelihood_tokens(windows, disable_tqdm=True, kind="loglikelihood_rolling")
        totals = [0.0] * len(requests)
        for i, (logprob, _) in zip(owner, scores):
            totals[i] += logprob
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    @torch.no_grad()
    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """Each request's continuation up to its first stop string, through ``generate``; the
        requests of one set of generation settings run together, longest context first."""

        def by_length(req: tuple[str, dict]) -> tuple[int, str]:
            return -len(self.tok_encode(req[0])), req[0]

        order = Collator(
            [req.args for req in requests], sort_fn=by_length, group_by="gen_kwargs", group_fn=lambda r: r[1]
        )
        results: list[str] = []
        for chunk in order.get_batched(n=self.batch_size):
            contexts, all_kwargs = zip(*chunk)
            kwargs = normalize_gen_kwargs(all_kwargs[0], self.max_gen_toks)
            until = handle_stop_sequences(kwargs.pop("until", None), eos=EOT_TOKEN)
            max_gen_toks = kwargs.pop("max_gen_toks")
            room = self.max_length - max_gen_toks
            if room <= 0:
                raise UsageError(
                    f"the task asks for {max_gen_toks} new tokens, which leaves no room for a prompt in the "
                    f"model's context of {self.max_length} tokens"
                )
            prompts = [self.tok_encode(c, left_truncate_len=room) or [EOT_ID] for c in contexts]
            sampling = bool(kwargs.get("do_sample")) and float(kwargs.get("temperature", 1.0)) > 0
            new = self._generate_until_stop(
                prompts,
                until,
                max_new_tokens=max_gen_toks,
                temperature=float(kwargs.get("temperature", 1.0)) if sampling else 0.0,
                top_k=kwargs.get("top_k") if sampling else None,
                top_p=kwargs.get("top_p") if sampling else None,
            )
            for context, gen_kwargs, toks in zip(contexts, all_kwargs, new):
                text = postprocess_generated_text(self.tok_decode(toks), stop=until, think_end_token=None)
                results.append(text)
                self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
            self._on_progress("generate_until", len(results), len(requests))
        return order.get_original(results)

    def _generate_until_stop(self, prompts: list[list[int]], until: list[str], **sampling: Any) -> list[list[int]]:
        """``generate``'s new tokens for each prompt (cut before <|endoftext|>), ending early once
        every row holds one of the stop strings, as HFLM's stopping criteria end its batch: the
        text before the first stop string, all the harness keeps, is the same either way."""
        rows: list[list[int]] = [[] for _ in prompts]
        done = [False] * len(prompts)
        window = _STOP_WINDOW + max(map(len, until), default=0)  # tokens enough to hold any stop string

        def on_token(tok: torch.Tensor) -> None:
            if tok.shape[0] != len(rows):  # a batch split by prompt length: no early end
                return
            for i, t in enumerate(tok[:, 0].tolist()):
                if done[i]:
                    continue
                if t == EOT_ID:
                    done[i] = True
                    continue
                rows[i].append(t)
                text = self.tok_decode(rows[i][-window:])
                done[i] = any(stop and stop in text for stop in until)
            if all(done):
                raise _AllStopped

        try:
            return generate(self.net, prompts, eos_id=EOT_ID, on_token=on_token, **sampling)
        except _AllStopped:
            return rows


# The last tokens of a row searched for a stop string, beyond the longest one's length in characters
# (a token decodes to at least one character, so the string, just completed, lies within them).
_STOP_WINDOW = 8


class _AllStopped(Exception):
    """Raised from ``generate``'s ``on_token`` once every row has met a stop string."""
