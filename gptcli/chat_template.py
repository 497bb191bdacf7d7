"""A conversation as prompt text: OpenAI-style ``messages`` (system, user, assistant) in, the text
the model continues out, and back from the generated text to the assistant's answer.

Shared by ``gptcli serve``'s ``/v1/chat/completions`` and by ``gptcli chat``. Torch-free.

**An instruct run** (``gptcli finetune instruct``) formats each turn with the run's own template
(the book's Alpaca format unless the run gave ``--template``)::

    [system]\\n\\n                                       (only when there is a system message)
    template.full(user 1, assistant 1)\\n\\n             (each earlier turn: instruction + response)
    ...
    template.prompt(newest user)                       (what the model continues)

Each user message is a record's ``instruction`` with an empty ``input``. With a single user
message and no system message the prompt is exactly what ``gptcli sample --instruction`` gives
the model, and the answer is cut out of the generated text the same way (the book's
``.replace("### Response:", "").strip()``), so the two answers are identical.

**A plain pretrained model** gets a plain transcript::

    [system]\\n\\n
    User: first question
    Assistant: first answer
    User: newest question
    Assistant:

and its answer is the generated text up to the first ``\\nUser:`` (the model writing the next
question itself), stripped of surrounding whitespace.

**Trimming**: ``trim_messages`` drops the oldest turns (a user message and the assistant's answer
to it) until the prompt and the new tokens fit the context; the system message and the newest user
message are never dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from gptcli.errors import UsageError
from gptcli.finetune.template import Template

ROLES = ("system", "user", "assistant")
PLAIN_USER = "User:"
PLAIN_ASSISTANT = "Assistant:"
PLAIN_STOPS = ("\n" + PLAIN_USER,)
INSTRUCT_HEADER = "### Response:"  # the book's answer extraction removes it


class ChatError(UsageError):
    """A bad ``messages`` list; ``param`` names the field (``messages[2].role``)."""

    def __init__(self, message: str, *, param: str = "messages"):
        super().__init__(message)
        self.param = param


def check_messages(raw: Any) -> list[dict[str, str]]:
    """``messages`` as a list of ``{"role", "content"}`` with string contents: an optional system
    message first, then user and assistant messages taking turns, ending with a user message.
    A content may also be OpenAI's list of ``{"type": "text", "text": ...}`` parts (joined)."""
    if not isinstance(raw, list) or not raw:
        raise ChatError("messages must be a non-empty list of {role, content} objects")
    out: list[dict[str, str]] = []
    for i, m in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise ChatError(f"{where} must be an object with role and content", param=where)
        role = m.get("role")
        if role not in ROLES:
            raise ChatError(f"{where}.role must be one of {', '.join(ROLES)}, got {role!r}", param=f"{where}.role")
        out.append({"role": role, "content": _content(m.get("content"), f"{where}.content")})
    for i, m in enumerate(out):
        want = _expected_role(out, i)
        if m["role"] not in want:
            raise ChatError(
                f"messages[{i}].role is {m['role']!r} where {' or '.join(want)} belongs (an optional system message "
                "first, then user and assistant messages taking turns, ending with a user message)",
                param=f"messages[{i}].role",
            )
    if out[-1]["role"] != "user":
        raise ChatError("the last message must be the user's", param=f"messages[{len(out) - 1}].role")
    return out


def _expected_role(messages: list[dict[str, str]], i: int) -> tuple[str, ...]:
    if i == 0:
        return ("system", "user")
    prev = messages[i - 1]["role"]
    return ("assistant",) if prev == "user" else ("user",)


def _content(c: Any, where: str) -> str:
    if isinstance(c, str):
        return c
    if isinstance(c, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in c):
        texts = [p.get("text") for p in c]
        if all(isinstance(t, str) for t in texts):
            return "".join(texts)
    raise ChatError(f"{where} must be a string (or a list of text parts)", param=where)


@dataclass(frozen=True)
class ChatFormat:
    """How a model's conversations are laid out: an instruct run's template, or (``template``
    None) the plain transcript."""

    template: Template | None = None

    @classmethod
    def for_model(cls, finetune: dict | None) -> ChatFormat:
        """The format of a loaded model: its instruct run's template (``LoadedModel.finetune``)
        when it has one, else the plain transcript."""
        if finetune is None:
            return cls(None)
        return cls(Template(finetune.get("template")))

    @property
    def instruct(self) -> bool:
        return self.template is not None

    @property
    def stops(self) -> tuple[str, ...]:
        """Texts that end the answer when the model writes them (besides <|endoftext|>)."""
        return () if self.instruct else PLAIN_STOPS

    def prompt(self, messages: Sequence[dict[str, str]]) -> str:
        """The prompt text of checked ``messages`` (``check_messages``)."""
        system = messages[0]["content"] if messages[0]["role"] == "system" else None
        turns = [m for m in messages if m["role"] != "system"]
        parts = [] if system is None else [system + "\n\n"]
        if self.template is not None:
            for u, a in zip(turns[:-1:2], turns[1::2]):
                parts.append(self.template.full({"instruction": u["content"], "input": "", "output": a["content"]}))
                parts.append("\n\n")
            parts.append(self.template.prompt({"instruction": turns[-1]["content"], "input": ""}))
            return "".join(parts)
        lines = [f"{PLAIN_USER if m['role'] == 'user' else PLAIN_ASSISTANT} {m['content']}" for m in turns]
        return "".join(parts) + "\n".join(lines) + "\n" + PLAIN_ASSISTANT

    def answer(self, generated: str, *, final: bool = True) -> str:
        """The assistant's answer in ``generated`` (the text after the prompt). With ``final`` off
        (streaming), only the part no later text can change: a trailing piece that may start a
        stop text or the response header, and trailing whitespace (the end is stripped), wait
        until more text shows what they are. Every such answer is a prefix of the final one."""
        text, _ = cut_at_stops(generated, self.stops, final=final)
        if self.template is not None and self.template.text is None:
            if not final:
                text = text[: len(text) - _partial_suffix(text, (INSTRUCT_HEADER,))]
            text = text.replace(INSTRUCT_HEADER, "")
        text = text.lstrip()
        return text.strip() if final else text.rstrip()


def _partial_suffix(text: str, stops: Sequence[str]) -> int:
    """The length of the longest end of ``text`` that is the start (not the whole) of a stop."""
    best = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:n]):
                best = n
                break
    return best


def cut_at_stops(text: str, stops: Sequence[str], *, final: bool = True) -> tuple[str, bool]:
    """``text`` up to the first of ``stops`` (OpenAI's ``stop``: the stop text is not returned),
    and whether one was found. With ``final`` off, a trailing piece that may be the start of a
    stop is held back too, so the text returned never has to be taken back."""
    cut = min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=-1)
    if cut >= 0:
        return text[:cut], True
    if not final:
        return text[: len(text) - _partial_suffix(text, stops)], False
    return text, False


def trim_messages(
    messages: Sequence[dict[str, str]],
    fmt: ChatFormat,
    *,
    budget: int,
    count: Callable[[str], int] | None = None,
) -> tuple[list[dict[str, str]], int]:
    """The messages whose prompt takes at most ``budget`` tokens (the context less the new tokens),
    dropping the oldest turns first (a user message and the answer to it); and how many turns were
    dropped. The system message and the newest user message always stay, so the prompt may still
    be over ``budget``: the caller checks ``count(fmt.prompt(kept))`` and refuses it."""
    if count is None:
        from gptcli.tokenizer import encode

        def count(text: str) -> int:
            return len(encode(text))

    kept = list(messages)
    head = 1 if kept and kept[0]["role"] == "system" else 0
    dropped = 0
    while len(kept) - head > 1 and count(fmt.prompt(kept)) > budget:
        del kept[head : head + 2]  # a user message and the assistant's answer to it
        dropped += 1
    return kept, dropped
