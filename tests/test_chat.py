"""``gptcli chat``: the first answer on an instruct run is ``sample --instruction``'s, each turn's
prompt is chat_template's, the oldest turns go (and stderr says so) when the context fills,
``/reset`` starts afresh, Ctrl-C stops one answer, and a classifier is refused in one line.

A tiny random base model (2 layers, 32 wide, context 128) and one-step finetunes of it, made
in-process once for the module."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from gptcli import checkpoint as ckpt
from gptcli import console
from gptcli.chat_template import ChatFormat
from gptcli.cli import app
from gptcli.config import ModelConfig
from gptcli.model import GPT
from gptcli.tokenizer import encode

from .finetune_helpers import BOOK_CFG, RECORDS


def invoke(*args: str | Path, expect: int = 0, input: str | None = None):
    console.set_quiet(False)
    res = CliRunner().invoke(app, [str(a) for a in args], input=input)
    console.set_quiet(False)
    assert res.exit_code == expect, (res.exit_code, res.output, res.exception)
    assert "Traceback" not in res.output, res.output
    return res


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """base.pth: a tiny random model; runs/ins: a one-step instruct finetune; runs/cls: a classifier."""
    root = tmp_path_factory.mktemp("chat")
    torch.manual_seed(0)
    cfg = ModelConfig(**dict(BOOK_CFG, context_length=128))
    ckpt.atomic_save(ckpt.weights_checkpoint(cfg, GPT(cfg).state_dict()), root / "base.pth")
    (root / "data.json").write_text(json.dumps(RECORDS * 2), encoding="utf-8")
    rows = "Label,Text\n" + "".join(f"{'spam' if i % 3 == 0 else 'ham'},text {i}\n" for i in range(24))
    (root / "d.csv").write_text(rows, encoding="utf-8")
    common = ["--init", root / "base.pth", "--max-steps", "1", "--batch-size", "2", "--device", "cpu", "-q"]
    invoke("finetune", "instruct", root / "data.json", *common, "-o", root / "runs" / "ins")
    invoke("finetune", "classify", root / "d.csv", *common, "--eval-iter", "1", "-o", root / "runs" / "cls")
    return root


def chat(*args: str | Path, input: str):
    return invoke("chat", *args, input=input)


def test_first_answer_is_sample_instructions_and_chat_goes_on(root):
    ins = root / "runs" / "ins"
    answers = {}
    for question in ("Name the capital of France.", "Sort the numbers 3, 1, 2."):
        answers[question] = invoke("sample", "-c", ins, "--instruction", question, "--max-new-tokens", "6").stdout
        res = chat("-c", ins, "--max-new-tokens", "6", input=question + "\n")
        assert res.stdout == answers[question], (res.stdout, answers[question])
        assert "instruct run" in res.stderr
    # a second turn is answered too, and the chat ends with its input
    res = chat("-c", ins, "--max-new-tokens", "6", input="Name the capital of France.\nAnd of Italy?\n")
    lines = res.stdout.splitlines()
    assert len(lines) == 2 and lines[0] + "\n" == answers["Name the capital of France."]


def _prompts_seen(monkeypatch) -> list[list[int]]:
    """Records the prompt (token ids) of every answer ``gptcli chat`` generates."""
    from gptcli.commands import chat as chat_mod

    seen: list[list[int]] = []
    real = chat_mod.generate_with

    def spy(net, idx, scfg, **kw):
        seen.append(idx[0].tolist())
        return real(net, idx, scfg, **kw)

    monkeypatch.setattr(chat_mod, "generate_with", spy)
    return seen


def test_each_prompt_is_chat_templates_and_reset_starts_afresh(root, monkeypatch):
    from gptcli.chat_template import ChatFormat
    from gptcli.finetune.template import Template

    seen = _prompts_seen(monkeypatch)
    ins = root / "runs" / "ins"
    res = chat("-c", ins, "--max-new-tokens", "4", input="Hi\nMore?\n/reset\nHi\n")
    first, second, third = res.stdout.splitlines()
    fmt = ChatFormat(Template(None))
    assert seen[0] == encode(fmt.prompt([{"role": "user", "content": "Hi"}]))
    turns = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": first},
        {"role": "user", "content": "More?"},
    ]
    assert seen[1] == encode(fmt.prompt(turns))  # 63 tokens fit 128 - 4
    assert "(conversation cleared)" in res.stderr and "dropped" not in res.stderr
    assert seen[2] == seen[0] and third == first  # after /reset, the first question's prompt again


def test_the_oldest_turns_go_when_the_context_fills_and_stderr_says_so(root, monkeypatch):
    seen = _prompts_seen(monkeypatch)
    ins = root / "runs" / "ins"
    # 128 tokens of context less 64 new ones: a question (~28 tokens) fits, not with an earlier turn
    res = chat("-c", ins, "--max-new-tokens", "64", input="Name a color.\nAnd another one?\nA third?\n")
    assert len(res.stdout.splitlines()) == 3
    notes = [line for line in res.stderr.splitlines() if "dropped the oldest" in line]
    assert len(notes) == 2 and "context of 128 tokens" in notes[0], res.stderr
    fmt = ChatFormat.for_model({"template": None})
    assert seen[1] == encode(fmt.prompt([{"role": "user", "content": "And another one?"}]))
    assert all(len(ids) <= 128 - 64 for ids in seen)


def test_a_plain_model_chats_in_a_transcript_and_stops_at_the_next_user_turn(root):
    from gptcli.commands.chat import _StopText, _streamer

    written: list[str] = []
    on_token, state = _streamer(ChatFormat(None), written.append)
    with pytest.raises(_StopText):
        for t in encode(" Fine, thanks.\nUser: and you?"):
            on_token(torch.tensor([[t]]))
    assert "".join(written) == "Fine, thanks." == state["written"]
    res = chat("-c", root / "base.pth", "--max-new-tokens", "3", "--system", "Be brief.", input="Hello\n")
    assert "plain User:/Assistant: transcript" in res.stderr and len(res.stdout.splitlines()) == 1


def test_ctrl_c_stops_one_answer_not_the_chat(root, monkeypatch):
    from gptcli.commands import chat as chat_mod

    calls = []
    real = chat_mod.generate_with

    def interrupted(net, idx, scfg, **kw):
        calls.append(idx[0].tolist())
        if len(calls) == 1:
            kw["on_token"](torch.tensor([[encode(" Red")[0]]]))  # one piece shown, then Ctrl-C
            raise KeyboardInterrupt
        return real(net, idx, scfg, **kw)

    monkeypatch.setattr(chat_mod, "generate_with", interrupted)
    res = chat("-c", root / "runs" / "ins", "--max-new-tokens", "3", input="Name a color.\nWhy?\n")
    assert "(stopped)" in res.stderr and len(res.stdout.splitlines()) == 2
    fmt = ChatFormat.for_model({"template": None})
    partial = [
        {"role": "user", "content": "Name a color."},
        {"role": "assistant", "content": "Red"},
        {"role": "user", "content": "Why?"},
    ]
    assert calls[1] == encode(fmt.prompt(partial))  # the part shown stays in the conversation


def test_bad_uses_are_one_error_line(root):
    for args, code, words in (
        (["-c", root / "runs" / "cls"], 2, "is a classifier: use gptcli classify"),
        (["-c", root / "runs" / "ins", "--temperature", "-1"], 2, "invalid --temperature"),
        (["-c", root / "nope"], 2, "nope: checkpoint or run directory not found"),
    ):
        res = invoke("chat", *args, expect=code, input="Hi\n")
        lines = [x for x in res.output.splitlines() if x.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], res.output


def test_in_a_terminal_ctrl_c_stops_the_answer_and_the_chat_goes_on(tmp_path):
    pexpect = pytest.importorskip("pexpect", reason="the terminal test drives gptcli chat through pexpect")
    from .conftest import gptcli_exe

    torch.manual_seed(0)
    cfg = ModelConfig(**dict(BOOK_CFG, context_length=1024))  # room for an answer long enough to interrupt
    ckpt.atomic_save(ckpt.weights_checkpoint(cfg, GPT(cfg).state_dict()), tmp_path / "long.pth")
    exe, *pre = gptcli_exe()
    args = [*pre, "chat", "-c", str(tmp_path / "long.pth"), "--max-new-tokens", "1000", "--device", "cpu"]
    term = pexpect.spawn(exe, args, encoding="utf-8", timeout=120, dimensions=(40, 200))
    try:
        term.expect(">>> ")
        term.sendline("Hello there")
        term.expect_exact("Hello there\r\n")  # the terminal's echo
        term.expect(r"[^\r\n]{20}")  # the answer has begun to stream
        term.sendintr()
        term.expect(r"\(stopped\)")
        term.expect(">>> ")  # the chat goes on
        term.sendline("/reset")
        term.expect("conversation cleared")
        term.sendline("/quit")
        term.expect(pexpect.EOF)
    finally:
        term.close()
    assert term.exitstatus == 0
