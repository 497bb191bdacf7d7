"""The instruction prompt template (the book's chapter 7): the Alpaca format of ``format_input``,
character for character, or a ``--template`` format string with ``{instruction}``, ``{input}`` and
``{output}``. Torch-free, so the chat formatting (``gptcli.chat_template``) reads it without
loading a model."""

from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gptcli.errors import UsageError
from gptcli.finetune.files import read_file


def format_input(entry: dict[str, Any]) -> str:
    """The book's ``format_input``: the Alpaca-style prompt, the input section only when there is one."""
    instruction_text = (
        "Below is an instruction that describes a task. "
        "Write a response that appropriately completes the request."
        f"\n\n### Instruction:\n{entry['instruction']}"
    )
    input_text = f"\n\n### Input:\n{entry['input']}" if entry["input"] else ""
    return instruction_text + input_text


def format_response(entry: dict[str, Any]) -> str:
    """The part of the book's training text after the prompt (``InstructionDataset``)."""
    return f"\n\n### Response:\n{entry['output']}"


_FIELDS = ("instruction", "input", "output")


def _parse(text: str, where: str) -> list[tuple[str, str | None]]:
    """(literal text, field or None) pieces of a template, ``str.format``'s parse; a format spec,
    a conversion or an escaped ``{{field}}`` is a UsageError naming ``where``."""
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as e:
        raise UsageError(f"invalid {where}: not a format string ({e})") from None
    pieces: list[tuple[str, str | None]] = []
    literal = ""  # the literal text since the last field ("{{" and "}}" come as pieces of their own)
    for text_piece, field, spec, conversion in parsed:
        literal += text_piece
        if field is None:
            continue
        if spec or conversion:
            written = field + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "")
            raise UsageError(
                f"invalid {where}: {{{written}}} has a format spec or conversion; write the plain field {{{field}}}"
            )
        pieces.append((literal, field))
        literal = ""
    pieces.append((literal, None))
    for lit, _ in pieces:
        escaped = next((f for f in _FIELDS if "{" + f + "}" in lit), None)
        if escaped:
            raise UsageError(
                f"invalid {where}: {{{{{escaped}}}}} is the literal text {{{escaped}}}, not the field; "
                f"write {{{escaped}}} (single braces)"
            )
    return pieces


@dataclass(frozen=True)
class Template:
    """The prompt template: the book's (``text`` None) or a format string with ``{instruction}``,
    ``{input}`` and ``{output}``, where everything before ``{output}`` is the prompt."""

    text: str | None = None

    @classmethod
    def from_file(cls, path: str | Path) -> Template:
        p = Path(path)
        text = read_file(p, error=UsageError, prefix="invalid --template: ")
        return cls.from_text(text, where=f"--template {p}")

    @classmethod
    def from_text(cls, text: str, *, where: str = "template") -> Template:
        """Only plain ``{instruction}``, ``{input}`` and ``{output}`` fields: no format spec or
        conversion (``{output:d}`` fails on text; ``{output:>99999999999}`` pads without bound),
        and no ``{{output}}``, which is the literal text "{output}", not the field."""
        pieces = _parse(text, where)
        fields = [f for _, f in pieces if f is not None]
        unknown = sorted(set(fields) - set(_FIELDS))
        if unknown:
            raise UsageError(
                f"invalid {where}: unknown field {{{unknown[0]}}} (use {{instruction}}, {{input}}, {{output}})"
            )
        if fields.count("output") != 1 or "instruction" not in fields:
            raise UsageError(f"invalid {where}: needs {{instruction}} and exactly one {{output}}")
        return cls(text)

    def _render(self, entry: dict[str, Any], *, stop_at_output: bool) -> str:
        assert self.text is not None
        out = []
        for literal, field in _parse(self.text, "template"):
            out.append(literal)
            if field == "output" and stop_at_output:
                break
            if field is not None:
                out.append(entry.get(field, "") if field == "input" else entry[field])
        return "".join(out)

    def prompt(self, entry: dict[str, Any]) -> str:
        if self.text is None:
            return format_input(entry)
        return self._render(entry, stop_at_output=True)

    def full(self, entry: dict[str, Any]) -> str:
        """The training text: prompt and response."""
        if self.text is None:
            return format_input(entry) + format_response(entry)
        return self._render(entry, stop_at_output=False)

    def response_prefix(self, entry: dict[str, Any]) -> str:
        """What the model is given to answer: the prompt plus the response header (no output)."""
        if self.text is None:
            return format_input(entry) + "\n\n### Response:\n"
        return self.prompt(entry)

    def to_dict(self) -> dict[str, Any]:
        return {"template": self.text}


def response_text(template: Template, prompt: str, generated: str) -> str:
    """The response in a generated text (prompt included), as the book's chapter 7 extracts it:
    ``generated_text[len(input_text):].replace("### Response:", "").strip()``."""
    rest = generated[len(prompt) :] if generated.startswith(prompt) else generated
    if template.text is None:
        rest = rest.replace("### Response:", "")
    return rest.strip()
