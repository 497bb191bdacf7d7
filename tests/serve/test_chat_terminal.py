"""``gptcli chat`` and ``/v1/chat/completions`` lay a conversation out with the same code: turn
for turn, the terminal's greedy answers are the API's, on an instruct run and on a plain model,
trimmed turns included."""

from __future__ import annotations

import pytest

from gptcli.commands import chat as chat_mod
from gptcli.settings.chat import ChatSettings

QUESTIONS = ["Name the capital of France.", "And of Italy?", "Sort 3, 1, 2."]


def _terminal_answers(checkpoint, monkeypatch, *, max_new_tokens: int) -> list[str]:
    answers: list[str] = []
    real = chat_mod.reply
    monkeypatch.setattr(chat_mod, "reply", lambda *a: answers.append(real(*a)) or answers[-1])
    lines = iter(QUESTIONS)

    def read(_prompt: str) -> str:
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None

    settings = ChatSettings(checkpoint=checkpoint, max_new_tokens=max_new_tokens, device="cpu", quiet=True)
    assert chat_mod.chat_command(settings, input_fn=read) == len(QUESTIONS)
    return answers


@pytest.mark.parametrize("which", ["instruct", "base"])
def test_terminal_chat_answers_as_the_chat_endpoint(which, runs, instruct_server, base_server, monkeypatch, capsys):
    server, checkpoint = (instruct_server, runs / "ins") if which == "instruct" else (base_server, runs / "base.pth")
    # 6 new tokens in a context of 64: the instruct run's turns no longer all fit by the third question
    answers = _terminal_answers(checkpoint, monkeypatch, max_new_tokens=6)
    err = capsys.readouterr().err
    assert ("dropped the oldest" in err) == (which == "instruct"), err
    client = server.client()
    messages: list[dict] = []
    for question, answer in zip(QUESTIONS, answers):
        messages.append({"role": "user", "content": question})
        got = client.chat.completions.create(model=server.name, messages=messages, temperature=0, max_tokens=6)
        assert got.choices[0].message.content == answer, (question, answer)
        messages.append({"role": "assistant", "content": answer})
