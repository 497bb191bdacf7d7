"""Continuous batching for ``gptcli serve``: one thread owns the model and decodes every request
in flight together, up to ``max_batch`` rows.

Between two decode steps, waiting requests join (their prompt prefilled alone, as ``generate``
starts a single prompt) and finished or abandoned rows leave. The steps are generation's
``prefill_row`` and ``decode_rows``, whose rows are bit for bit what each row computes alone, so a
greedy answer is token for token ``gptcli sample``'s whatever shares its batch. Each request
samples with its own ``torch.Generator`` (seeded by ``seed``, else at random), so a seeded
request draws the same tokens whatever else runs. Results go back through each request's
``emit`` callback (called on the engine thread); the web layer turns them into responses.

Never prints.
"""

from __future__ import annotations

import secrets
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from gptcli.generation import copy_cache, decode_rows, prefill_row, sample_next_token
from gptcli.model import GPT, KVCache
from gptcli.tokenizer import EOT_ID, decode

# view(text, final) -> (text to show, whether a stop text ended it): what a row's generated text
# shows (a completion cut at its stop texts, a chat answer cut out of it), see gptcli.chat_template
TextView = Callable[[str, bool], tuple[str, bool]]


class QueueFull(Exception):
    """More requests wait than the queue holds."""


class ShuttingDown(Exception):
    """The server is stopping and takes no new requests."""


@dataclass
class Request:
    """One prompt to continue ``n`` times. ``emit`` receives, for each row ``i``:
    ``("delta", i, text, logprobs)`` as text becomes final and ``("done", i, text, finish_reason,
    completion_tokens, logprobs)`` at its end (``text`` the last piece); or once ``("error",
    message)`` for the whole request. ``logprobs`` is None or the token's ``{"token", "logprob",
    "top": [(token, logprob), ...]}`` (None for the <|endoftext|> that ends a row)."""

    ids: list[int]
    max_tokens: int
    emit: Callable[[tuple], None]
    view: TextView
    n: int = 1
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    logprobs: int | None = None  # how many alternatives per token; None: no logprobs
    cancelled: bool = False  # set by the web layer when the client leaves: its rows are freed
    generator: torch.Generator = field(init=False)

    def __post_init__(self) -> None:
        self.generator = torch.Generator().manual_seed(self.seed if self.seed is not None else secrets.randbits(63))

    def cancel(self) -> None:
        self.cancelled = True


@dataclass
class _Row:
    req: Request
    index: int
    cache: KVCache
    ids: list[int] = field(default_factory=list)
    shown: str = ""
    done: bool = False


class Engine:
    """The model's one thread. ``submit`` queues a request (``QueueFull`` past ``max_queue``
    waiting requests); ``stop`` ends every request in flight with an error event and the thread."""

    def __init__(self, model: GPT, *, max_batch: int = 16, max_queue: int = 64, exact: bool = True):
        self.model = model
        self.exact = exact  # decode_rows's batch math: bit for bit each row alone, or faster
        self.max_batch = max_batch
        self.max_queue = max_queue
        self._pending: deque[Request] = deque()
        self._rows: list[_Row] = []
        self._cond = threading.Condition()
        self._stopping = False
        self.peak_rows = 0  # the most rows one decode step has run (the tests check batching with it)
        self.tokens = 0  # tokens generated so far, every row together
        self._thread = threading.Thread(target=self._run, name="gptcli-engine", daemon=True)
        self._thread.start()

    # -- the web layer's side ----------------------------------------------------------------

    def submit(self, req: Request) -> None:
        if req.n > self.max_batch:
            raise ValueError(f"n={req.n} is more than --max-batch {self.max_batch}")
        with self._cond:
            if self._stopping:
                raise ShuttingDown()
            if len(self._pending) >= self.max_queue:
                raise QueueFull()
            self._pending.append(req)
            self._cond.notify()

    def wake(self) -> None:
        """Let the thread notice a cancelled request now (it frees the rows at its next step)."""
        with self._cond:
            self._cond.notify()

    def stop(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(timeout)

    def load(self) -> dict[str, int]:
        """Rows decoding and requests waiting, for the health route."""
        with self._cond:
            return {"rows": len(self._rows), "waiting": len(self._pending), "tokens": self.tokens}

    # -- the engine thread ---------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and not self._pending and not self._rows:
                    self._cond.wait()
                if self._stopping:
                    self._shutdown()
                    return
                joining = []
                used = sum(not r.done for r in self._rows)
                while self._pending and used + self._pending[0].n <= self.max_batch:
                    req = self._pending.popleft()
                    if not req.cancelled:
                        joining.append(req)
                        used += req.n
            for req in joining:
                self._guarded([req], lambda req=req: self._join(req))
            self._rows = [r for r in self._rows if not r.done and not r.req.cancelled]
            if self._rows:
                rows = list(self._rows)
                self.peak_rows = max(self.peak_rows, len(rows))
                self._guarded(list({id(r.req): r.req for r in rows}.values()), lambda rows=rows: self._step(rows))
                self._rows = [r for r in self._rows if not r.done and not r.req.cancelled]

    def _guarded(self, reqs: list[Request], work: Callable[[], None]) -> None:
        """Run ``work``; a failure ends ``reqs`` with an error event, and the engine goes on."""
        try:
            work()
        except Exception as e:  # noqa: BLE001  (one request's failure must not stop the server)
            for req in reqs:
                self._fail(req, f"generation failed: {type(e).__name__}: {e}")

    def _fail(self, req: Request, message: str) -> None:
        for r in self._rows:
            if r.req is req:
                r.done = True
        req.cancelled = True
        req.emit(("error", message))

    def _shutdown(self) -> None:
        for req in list(self._pending) + list({id(r.req): r.req for r in self._rows}.values()):
            if not req.cancelled:
                req.emit(("error", "the server is shutting down"))
        self._pending.clear()
        self._rows = []

    def _join(self, req: Request) -> None:
        """Prefill the prompt once, copy its cache for each of the ``n`` rows, pick each row's first token."""
        logits, cache = prefill_row(self.model, req.ids)
        caches = [cache] if req.n == 1 else [copy_cache(cache) for _ in range(req.n)]
        rows = [_Row(req, i, c) for i, c in enumerate(caches)]
        self._rows.extend(rows)
        self._accept(rows, logits.expand(req.n, -1))

    def _step(self, rows: list[_Row]) -> None:
        logits = decode_rows(self.model, [r.ids[-1] for r in rows], [r.cache for r in rows], exact=self.exact)
        by_req: dict[int, list[int]] = {}
        for i, r in enumerate(rows):
            by_req.setdefault(id(r.req), []).append(i)
        for idx in by_req.values():
            self._accept([rows[i] for i in idx], logits[idx])

    def _accept(self, rows: list[_Row], logits: torch.Tensor) -> None:
        """Sample the next token of each of one request's ``rows`` from ``logits`` (len(rows), V)."""
        req = rows[0].req
        toks = sample_next_token(
            logits, temperature=req.temperature, top_k=req.top_k, top_p=req.top_p, generator=req.generator
        )[:, 0].tolist()
        logprobs = torch.log_softmax(logits.float(), dim=-1) if req.logprobs is not None else None
        for i, (r, tok) in enumerate(zip(rows, toks)):
            if tok == EOT_ID:
                self._finish(r, "stop")
                continue
            r.ids.append(tok)
            self.tokens += 1
            lp = None
            if logprobs is not None:
                top = logprobs[i].topk(req.logprobs) if req.logprobs > 0 else None
                lp = {
                    "token": tok,
                    "logprob": float(logprobs[i, tok]),
                    "top": [] if top is None else list(zip(top.indices.tolist(), top.values.tolist())),
                }
            text = decode(r.ids)
            shown, stopped = req.view(text.rstrip("\ufffd"), False)  # only complete characters
            if stopped:
                self._finish(r, "stop", lp)
            elif len(r.ids) >= req.max_tokens:
                self._finish(r, "length", lp)
            else:
                delta = shown[len(r.shown) :] if shown.startswith(r.shown) else ""
                r.shown += delta
                req.emit(("delta", r.index, delta, lp))

    def _finish(self, r: _Row, reason: str, lp: Any = None) -> None:
        final, _ = r.req.view(decode(r.ids), True)
        delta = final[len(r.shown) :] if final.startswith(r.shown) else ""
        r.done = True
        r.req.emit(("done", r.index, delta, reason, len(r.ids), lp))
