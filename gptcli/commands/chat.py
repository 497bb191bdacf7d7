"""``gptcli chat``: a multi-turn conversation in the terminal.

Each turn is laid out by ``gptcli.chat_template``, the code ``gptcli serve``'s
``/v1/chat/completions`` uses, and answered by the one ``generate``: on an instruct run the first
answer is the one ``gptcli sample --instruction`` gives. The answer streams as it is written; when
the conversation no longer fits the context, its oldest turns are dropped, and stderr says so.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from gptcli import console
from gptcli.chat_template import ChatFormat, cut_at_stops, trim_messages
from gptcli.commands.sample import typed_lines, warn_filters_without_temperature
from gptcli.device import set_threads
from gptcli.generation import generate_with
from gptcli.inference import LoadedModel, load_model_for_inference, long_prompt_warning
from gptcli.settings.chat import ChatSettings
from gptcli.settings.sample import DEFAULT_MAX_NEW_TOKENS, INSTRUCT_MAX_NEW_TOKENS, SampleConfig
from gptcli.tokenizer import EOT_ID, decode, encode

_HELP = """\
Type a message and press Enter; the answer streams in below it.
  /reset    forget every turn and start again (a --system message stays)
  /quit     leave (so does Ctrl-D); Ctrl-C stops an answer, not the chat"""


@dataclass
class Conversation:
    """The turns so far, as OpenAI-style messages, and how they become the model's prompt."""

    fmt: ChatFormat
    context_length: int
    max_new_tokens: int
    system: str | None = None
    turns: list[dict[str, str]] = field(default_factory=list)

    @property
    def budget(self) -> int:
        """The prompt's share of the context: what the answer's new tokens leave, yet at least half
        of it, so that a --max-new-tokens as long as the context still keeps the newest turns whole
        (past the context, ``generate`` slides its window over the oldest tokens, as the book's does)."""
        return max(self.context_length - self.max_new_tokens, self.context_length // 2)

    def messages(self) -> list[dict[str, str]]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.turns

    def ask(self, text: str) -> tuple[list[int], int]:
        """The prompt's token ids with ``text`` as the newest user message, and how many of the
        oldest turns were dropped (for good) to fit it in ``budget``."""
        self.turns.append({"role": "user", "content": text})
        kept, dropped = trim_messages(self.messages(), self.fmt, budget=self.budget)
        if dropped:
            del self.turns[: 2 * dropped]
        return encode(self.fmt.prompt(kept)), dropped

    def answered(self, text: str) -> None:
        self.turns.append({"role": "assistant", "content": text})

    def reset(self) -> None:
        self.turns.clear()


class _StopText(Exception):
    """Raised from ``on_token`` once the model has written a stop text (the plain transcript's
    next ``User:``): the answer is complete."""


def _streamer(fmt: ChatFormat, write: Callable[[str], None]) -> tuple[Callable[[torch.Tensor], None], dict]:
    """An ``on_token`` callback that writes each settled piece of the answer as it comes (what
    ``ChatFormat.answer(final=False)`` says no later token can change), and its state: the new ids
    and the text written so far."""
    state: dict = {"ids": [], "written": ""}

    def on_token(tok: torch.Tensor) -> None:
        t = int(tok[0, 0])
        if t == EOT_ID:
            return
        state["ids"].append(t)
        text = decode(state["ids"])
        if text.endswith("\ufffd"):  # wait for a complete UTF-8 character
            return
        settled = fmt.answer(text, final=False)
        if len(settled) > len(state["written"]):
            write(settled[len(state["written"]) :])
            state["written"] = settled
        if fmt.stops and cut_at_stops(text, fmt.stops)[1]:
            raise _StopText

    return on_token, state


def reply(
    loaded: LoadedModel, fmt: ChatFormat, ids: list[int], scfg: SampleConfig, write: Callable[[str], None]
) -> str:
    """Generate the answer to the prompt ``ids``, writing it piece by piece as it comes, and return
    it; a KeyboardInterrupt (Ctrl-C) comes out with the part written so far in ``.partial``."""
    on_token, state = _streamer(fmt, write)
    try:
        generate_with(loaded.net, torch.tensor([ids], device=loaded.device), scfg, on_token=on_token)
    except _StopText:
        pass
    except KeyboardInterrupt as e:
        e.partial = state["written"]  # type: ignore[attr-defined]
        raise
    answer = fmt.answer(decode(state["ids"]))
    if len(answer) > len(state["written"]):
        write(answer[len(state["written"]) :])
    return answer


def chat_command(s: ChatSettings, *, input_fn: Callable[[str], str] = input) -> int:
    """Hold a conversation until end of input or /quit; returns how many answers were given."""
    console.set_quiet(False)  # -q drops the banner alone: trimming and /help must still show
    set_threads(s.threads)
    loaded = load_model_for_inference(
        s.checkpoint, s.model, device=s.device, dtype=s.dtype, fallback_gpt2=True, warn=console.warn
    )
    if loaded.note:
        console.info(loaded.note)
    fmt = ChatFormat.for_model(loaded.finetune)
    scfg = s.sampling(INSTRUCT_MAX_NEW_TOKENS if fmt.instruct else DEFAULT_MAX_NEW_TOKENS)
    warn_filters_without_temperature(scfg)
    if scfg.seed is not None:  # the global RNG, as sample's, so a seed repeats a conversation
        torch.manual_seed(scfg.seed)
    ctx = loaded.net.cfg.context_length
    conv = Conversation(fmt, ctx, scfg.max_new_tokens, s.system)
    tty = sys.stdin.isatty()
    if not s.quiet:
        kind = (
            "an instruct run: each message is an instruction, in its template"
            if fmt.instruct
            else ("not instruction-tuned: the conversation is a plain User:/Assistant: transcript")
        )
        console.info(f"loaded {loaded.path} (context {ctx}; {kind})")
        if tty:
            console.info(
                "type a message and press Enter; /help for commands; /reset starts again; Ctrl-D or /quit leaves"
            )
    answers = 0
    for text in typed_lines(input_fn, tty=tty):
        if text.startswith("/"):
            if not _command(text, conv):
                return answers
            continue
        ids, dropped = conv.ask(text)
        if dropped:
            console.info(
                f"(the conversation outgrew the context of {ctx} tokens: dropped the oldest "
                f"{'turn' if dropped == 1 else f'{dropped} turns'}; /reset starts afresh)"
            )
        if (warning := long_prompt_warning(len(ids), ctx)) is not None:
            console.warn(warning)
        try:
            answer = reply(loaded, fmt, ids, scfg, lambda piece: console.print_result(piece, end=""))
        except KeyboardInterrupt as e:
            conv.answered(getattr(e, "partial", ""))  # the part shown stays in the conversation
            console.print_result("")
            console.info("(stopped)")
            continue
        console.print_result("")
        conv.answered(answer)
        answers += 1
    return answers


def _command(line: str, conv: Conversation) -> bool:
    """A ``/command``; False to leave."""
    word = line[1:].strip().split(" ", 1)[0].lower()
    if word in ("quit", "exit", "q"):
        return False
    if word == "reset":
        conv.reset()
        console.info("(conversation cleared)")
    elif word in ("help", "h", "?"):
        console.info(_HELP)
    else:
        console.warn(f"unknown command /{word}; /help lists them")
    return True
