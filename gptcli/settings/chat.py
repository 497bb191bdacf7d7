"""``gptcli chat``'s settings: the model, and sample's sampling flags."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gptcli import settings as shared
from gptcli.settings import flag
from gptcli.settings.sample import DEFAULT_MAX_NEW_TOKENS, INSTRUCT_MAX_NEW_TOKENS, SampleConfig


@dataclass
class ChatSettings:
    """``gptcli chat``: a multi-turn conversation in the terminal, formatted as the chat endpoint
    of ``gptcli serve`` formats it."""

    checkpoint: Path | None = shared.checkpoint_flag(
        "Checkpoint or run directory [default: the most recent run that generates text]."
    )
    model: str | None = shared.model_flag()
    system: str | None = flag(None, metavar="TEXT", help="A system message that starts the conversation.")
    max_new_tokens: int | None = flag(
        None,
        metavar="N",
        help=f"Tokens per answer at most [default: {INSTRUCT_MAX_NEW_TOKENS} on an instruct run, as the book; "
        f"else {DEFAULT_MAX_NEW_TOKENS}].",
    )
    temperature: float = flag(0.0, metavar="X", help="0 is greedy; higher is more random.")
    top_k: int | None = flag(None, metavar="N", help="Keep only the k most likely tokens.")
    top_p: float | None = flag(
        None, metavar="X", help="Nucleus sampling: keep the smallest set with this much probability."
    )
    seed: int | None = flag(None, metavar="N", help="Seed for repeatable sampling.")
    device: str = shared.device_flag()
    threads: int | None = shared.threads_flag()
    dtype: str = shared.dtype_flag()
    quiet: bool = shared.quiet_flag("No banner on stderr (warnings and errors still).")

    def __post_init__(self) -> None:
        shared.check_flags(self)  # --device, --threads, --dtype
        self.sampling(DEFAULT_MAX_NEW_TOKENS)  # checks --max-new-tokens, --temperature, --top-k, --top-p, --seed

    def sampling(self, default_max_new_tokens: int) -> SampleConfig:
        """How to pick tokens; ``default_max_new_tokens`` where --max-new-tokens was not given."""
        return SampleConfig(
            max_new_tokens=self.max_new_tokens if self.max_new_tokens is not None else default_max_new_tokens,
            temperature=self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
            seed=self.seed,
        )
