"""``gptcli sample``'s settings, and the sampling settings every way of generating takes."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from gptcli import settings as shared
from gptcli.config import SEED_MAX, SEED_MIN
from gptcli.errors import UsageError
from gptcli.settings import flag, invalid

MIN_TEMPERATURE = 1e-6
DEFAULT_PROMPT = "Every effort moves you"
DEFAULT_MAX_NEW_TOKENS = 50
INSTRUCT_MAX_NEW_TOKENS = 256  # the book's chapter 7 generates each response with 256 tokens
# Every sample of every prompt is one row of one batch (and its KV cache): a bound that keeps a
# typo like --num-samples 100000000 from trying to allocate terabytes, far above any real use.
MAX_SAMPLE_ROWS = 4096


def check_sample_rows(num_samples: int, prompts: int) -> None:
    """--num-samples times the prompts must fit in one call's batch (``MAX_SAMPLE_ROWS`` rows)."""
    if num_samples * max(1, prompts) > MAX_SAMPLE_ROWS:
        per = f" x {prompts} prompts = {num_samples * prompts:,}" if prompts > 1 else ""
        raise invalid(
            "--num-samples",
            f"{num_samples:,}{per} (at most {MAX_SAMPLE_ROWS} samples in all per call, --num-samples times the "
            "prompts; run the command several times for more)",
        )


@dataclass
class SampleConfig:
    """How to pick tokens, for ``generate``: ``sample``'s flags, ``sample -i``'s /settings and the
    sample a training run prints after each epoch."""

    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    num_samples: int = 1

    def __post_init__(self) -> None:
        if self.max_new_tokens < 0:
            raise invalid("--max-new-tokens", f"{self.max_new_tokens} (must be >= 0)")
        # nan or inf would reach softmax: nan probabilities, or -inf / inf = nan after top-k; and
        # below MIN_TEMPERATURE, float32 logits / temperature overflow to inf, then nan
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise invalid("--temperature", f"{self.temperature} (must be a finite number >= 0)")
        if 0 < self.temperature < MIN_TEMPERATURE:
            raise invalid("--temperature", f"{self.temperature} (0 is greedy; above 0, at least {MIN_TEMPERATURE:g})")
        if self.top_k is not None and self.top_k < 1:
            raise invalid("--top-k", f"{self.top_k} (must be >= 1)")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise invalid("--top-p", f"{self.top_p} (must be in (0, 1])")
        if self.seed is not None and not SEED_MIN <= self.seed <= SEED_MAX:
            raise invalid("--seed", f"{self.seed} (must be from {SEED_MIN} to {SEED_MAX})")
        if self.num_samples < 1:
            raise invalid("--num-samples", f"{self.num_samples} (must be >= 1)")
        check_sample_rows(self.num_samples, 1)


@dataclass
class SampleSettings:
    """``gptcli sample``: continuations of prompts (``--prompt``), a prompt loop (``-i``), or an
    instruct run's answers (``--instruction``, ``--responses``); which one, the flags given say."""

    text: str | None = flag(
        None,
        argument=True,
        metavar="PROMPT",
        help="Prompt text, as --prompt; without either, the text piped in on stdin "
        f"(gptcli sample < prompt.txt), else {DEFAULT_PROMPT!r}. An empty prompt starts from <|endoftext|> "
        "(GPT-2's unconditional samples).",
        show_default=False,
    )
    checkpoint: Path | None = shared.checkpoint_flag()
    model: str | None = shared.model_flag()
    prompt: list[str] | None = flag(
        None,
        flags=("--prompt", "-p"),
        metavar="TEXT",
        help=f"Prompt text; repeat for a batch of prompts [default: PROMPT, stdin or {DEFAULT_PROMPT!r}].",
    )
    max_new_tokens: int | None = flag(
        None,
        metavar="N",
        help=f"Tokens to generate per sample [default: {DEFAULT_MAX_NEW_TOKENS}; {INSTRUCT_MAX_NEW_TOKENS} with "
        "--instruction or --responses, as the book].",
    )
    temperature: float = flag(0.0, metavar="X", help="0 is greedy; higher is more random.")
    top_k: int | None = flag(None, metavar="N", help="Keep only the k most likely tokens.")
    top_p: float | None = flag(
        None, metavar="X", help="Nucleus sampling: keep the smallest set with this much probability."
    )
    seed: int | None = flag(None, metavar="N", help="Seed for repeatable sampling.")
    num_samples: int = flag(
        1,
        metavar="N",
        help="Samples per prompt; several are printed each under a '--- sample I of N ---' line "
        f"(needs --temperature above 0 to differ); --num-samples times the prompts is at most {MAX_SAMPLE_ROWS}.",
    )
    device: str = shared.device_flag()
    threads: int | None = shared.threads_flag()
    dtype: str = shared.dtype_flag()
    no_cache: bool = flag(
        False, flags=("--no-cache",), help="Re-run the whole context for every token (slow; for checking)."
    )
    json_out: bool = shared.json_flag()
    stream: bool | None = flag(
        None, flags=("--stream/--no-stream",), help="Print tokens as they come [default: when stdout is a terminal]."
    )
    interactive: bool = flag(
        False,
        flags=("--interactive", "-i"),
        help="Prompt loop that keeps the model loaded (one prompt per line; Ctrl-D to leave).",
    )
    quiet: bool = shared.quiet_flag("No progress output on stderr (warnings and errors still).")
    instruction: str | None = flag(
        None,
        metavar="TEXT",
        help="An instruct finetune run: answer this instruction, formatted with the run's template; prints only "
        "the response.",
    )
    input_text: str | None = flag(
        None, flags=("--input",), metavar="TEXT", help="The instruction's input (with --instruction)."
    )
    responses: str | None = flag(
        None,
        metavar="SPLIT",
        help="An instruct finetune run: answer every record of its train, val or test split; writes -o FILE "
        "as the book's instruction-data-with-response.json.",
    )
    output: Path | None = shared.output_flag("The JSON file --responses writes.")
    force: bool = flag(
        False,
        flags=("--force",),
        help="With -o: replace the file if it exists (a run's checkpoints are never replaced).",
    )

    def __post_init__(self) -> None:
        shared.check_flags(self)  # --device, --threads, --dtype
        if self.text is not None:
            if self.prompt is not None:
                raise UsageError("give the prompt as PROMPT or as --prompt, not both")
            self.prompt, self.text = [self.text], None
        if self.instruct:
            self._check_instruct()
        elif self.interactive and (self.prompt or self.json_out or self.num_samples != 1):
            raise invalid("--interactive", "cannot be combined with --prompt, --json or --num-samples")
        # -i leaves it to the model loaded: an instruct run answers with the book's 256 tokens
        if self.max_new_tokens is None and not self.interactive:
            self.max_new_tokens = INSTRUCT_MAX_NEW_TOKENS if self.instruct else DEFAULT_MAX_NEW_TOKENS
        self.sampling()  # checks --max-new-tokens, --temperature, --top-k, --top-p, --seed
        check_sample_rows(self.num_samples, len(self.prompt or ()))

    @property
    def instruct(self) -> bool:
        """Whether these settings answer instructions (--instruction, --responses) with an instruct run."""
        return any(v is not None for v in (self.instruction, self.responses, self.input_text, self.output))

    def sampling(self) -> SampleConfig:
        """How to pick tokens."""
        return SampleConfig(
            max_new_tokens=self.max_new_tokens if self.max_new_tokens is not None else DEFAULT_MAX_NEW_TOKENS,
            temperature=self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
            seed=self.seed,
            num_samples=self.num_samples,
        )

    def _check_instruct(self) -> None:
        if self.interactive or self.prompt is not None or self.model or self.num_samples != 1:
            raise invalid(
                "--instruction/--responses", "cannot be combined with --interactive, --prompt, --model or --num-samples"
            )
        if self.input_text is not None and self.instruction is None:
            raise invalid("--input", "needs --instruction")
        if (self.instruction is None) == (self.responses is None):
            raise UsageError("give either --instruction or --responses SPLIT")
        if self.responses is not None and self.output is None:
            raise UsageError("--responses needs -o/--output FILE (the JSON file of records with model_response)")
        if self.output is not None and self.responses is None:
            raise UsageError("-o/--output goes with --responses SPLIT")
        if self.force and self.output is None:
            raise UsageError("--force goes with -o/--output FILE")
