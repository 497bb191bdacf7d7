"""``gptcli serve``'s settings: which model, where to listen, who may call, and the limits."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from gptcli import settings as shared
from gptcli.errors import UsageError
from gptcli.settings import flag, invalid

API_KEY_ENV = "GPTCLI_API_KEY"
MAX_BATCH_LIMIT = 256
MAX_QUEUE_LIMIT = 4096
BATCH_MATH = ("exact", "fast")


@dataclass
class ServeSettings:
    """``gptcli serve``: an OpenAI-compatible HTTP API (and a chat page) for one model."""

    checkpoint: Path | None = shared.checkpoint_flag(
        "A run directory or checkpoint: a pretraining or instruct run (completions and chat) or a classify run "
        "(/v1/classify) [default: the most recent run that generates text].",
        metavar="RUN",
    )
    model: str | None = shared.model_flag()
    host: str = flag(
        "127.0.0.1", metavar="ADDR", help="Address to listen on; 0.0.0.0 opens it to the network (give --api-key)."
    )
    port: int = flag(8000, metavar="N", help="Port to listen on; 0 picks a free one (the printed URL says which).")
    api_key: str | None = flag(
        None,
        metavar="KEY",
        help=f"Require 'Authorization: Bearer KEY' on every /v1 route [default: ${API_KEY_ENV}, else no key].",
        show_default=False,
    )
    max_batch: int = flag(16, metavar="N", help="Most rows decoded together (requests in flight times their n).")
    max_queue: int = flag(64, metavar="N", help="Most requests waiting for a row; past it the server answers 429.")
    batch_math: str = flag(
        "exact",
        choices=BATCH_MATH,
        help="exact: every row of a batch is bit for bit its answer alone (the same tokens as gptcli sample); "
        "fast: one matrix product over 4 or more rows, faster with many clients on CPU, its last bits (and so, "
        "rarely, a greedy token at a near tie) differing from gptcli sample's.",
    )
    cors_origin: str | None = flag(
        None,
        metavar="ORIGIN",
        help="Let web pages from ORIGIN (e.g. http://localhost:3000) call the API [default: no CORS].",
    )
    device: str = shared.device_flag()
    threads: int | None = shared.threads_flag()
    dtype: str = shared.dtype_flag()
    quiet: bool = shared.quiet_flag("No notes on stderr (the URL on stdout and warnings still print).")

    def __post_init__(self) -> None:
        shared.check_flags(self)
        if self.checkpoint is not None and self.model is not None:
            raise UsageError("give either --checkpoint or --model, not both")
        if not 0 <= self.port <= 65535:
            raise invalid("--port", f"{self.port} (must be from 0 to 65535)")
        if not 1 <= self.max_batch <= MAX_BATCH_LIMIT:
            raise invalid("--max-batch", f"{self.max_batch} (must be from 1 to {MAX_BATCH_LIMIT})")
        if not 0 <= self.max_queue <= MAX_QUEUE_LIMIT:
            raise invalid("--max-queue", f"{self.max_queue} (must be from 0 to {MAX_QUEUE_LIMIT})")
        if not self.host:
            raise invalid("--host", "'' (give an address such as 127.0.0.1)")
        if self.api_key is None:
            self.api_key = os.environ.get(API_KEY_ENV) or None
        if self.api_key is not None and not self.api_key.strip():
            raise invalid("--api-key", "'' (give a key, or leave the flag out for none)")
        if self.cors_origin is not None and not self.cors_origin.startswith(("http://", "https://")):
            raise invalid("--cors-origin", f"{self.cors_origin!r} (an origin such as http://localhost:3000)")
