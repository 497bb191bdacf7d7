"""gptcli.chat_template: messages -> prompt text, the answer back out, and trimming old turns."""

from __future__ import annotations

import subprocess
import sys

import pytest

from gptcli.chat_template import ChatError, ChatFormat, check_messages, cut_at_stops, trim_messages
from gptcli.finetune.instruct import Template, format_input, response_text

CUSTOM = Template.from_text("Q: {instruction}{input}\nA: {output}")


def msgs(*pairs: tuple[str, str]) -> list[dict[str, str]]:
    return [{"role": r, "content": c} for r, c in pairs]


def test_module_is_torch_free():
    code = "import sys, gptcli.chat_template; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


@pytest.mark.parametrize("template", [Template(), CUSTOM])
def test_single_user_message_is_sample_instructions_prompt(template):
    fmt = ChatFormat(template)
    record = {"instruction": "Name a colour.", "input": ""}
    assert fmt.prompt(msgs(("user", "Name a colour."))) == template.prompt(record)
    if template.text is None:
        assert fmt.prompt(msgs(("user", "Name a colour."))) == format_input(record)


@pytest.mark.parametrize("template", [Template(), CUSTOM])
def test_answer_is_sample_instructions_answer(template):
    fmt = ChatFormat(template)
    prompt = template.prompt({"instruction": "x", "input": ""})
    for gen in ["\n\n### Response:\nBlue.  ", " ### Response: a ### Response:b\n", "", "   \n", "plain"]:
        assert fmt.answer(gen) == response_text(template, prompt, prompt + gen)


def test_multi_turn_instruct_layout():
    fmt = ChatFormat(Template())
    m = msgs(("system", "Be brief."), ("user", "A?"), ("assistant", "a."), ("user", "B?"))
    full = Template().full({"instruction": "A?", "input": "", "output": "a."})
    assert fmt.prompt(m) == "Be brief.\n\n" + full + "\n\n" + format_input({"instruction": "B?", "input": ""})


def test_plain_transcript_layout_and_stop():
    fmt = ChatFormat.for_model(None)
    assert not fmt.instruct
    m = msgs(("system", "S"), ("user", "hi"), ("assistant", "hello"), ("user", "how?"))
    assert fmt.prompt(m) == "S\n\nUser: hi\nAssistant: hello\nUser: how?\nAssistant:"
    assert fmt.answer(" fine, thanks.\nUser: and you?") == "fine, thanks."
    assert ChatFormat.for_model({"template": None}).instruct


def test_streamed_answers_are_prefixes_of_the_final_one():
    cases = [
        (ChatFormat(Template()), "\n\n### Response:\nIt is  blue ### Res and ### Response: red.\n\n"),
        (ChatFormat(None), " Well,\n  it is\nUs and then\nUser: more"),
        (ChatFormat(CUSTOM), "  one two \n three  "),
    ]
    for fmt, text in cases:
        final = fmt.answer(text)
        for i in range(len(text) + 1):
            assert final.startswith(fmt.answer(text[:i], final=False)), (text[:i], final)
        assert fmt.answer(text, final=False) in (final, final.rstrip())


def test_cut_at_stops():
    assert cut_at_stops("abc END def", ["END"]) == ("abc ", True)
    assert cut_at_stops("abc EN", ["END"], final=False) == ("abc ", False)
    assert cut_at_stops("abc EN", ["END"]) == ("abc EN", False)
    assert cut_at_stops("a x b y", ["y", "x"]) == ("a ", True)
    assert cut_at_stops("abc", []) == ("abc", False)


@pytest.mark.parametrize(
    "bad, param",
    [
        ([], "messages"),
        ("hi", "messages"),
        ([{"role": "robot", "content": "x"}], "messages[0].role"),
        ([{"role": "user", "content": 3}], "messages[0].content"),
        ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "messages[1].role"),
        ([{"role": "assistant", "content": "a"}], "messages[0].role"),
        ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], "messages[1].role"),
        ([{"role": "user", "content": "a"}, {"role": "system", "content": "b"}], "messages[1].role"),
        (["x"], "messages[0]"),
    ],
)
def test_bad_messages_name_the_field(bad, param):
    with pytest.raises(ChatError) as e:
        check_messages(bad)
    assert e.value.param == param


def test_text_parts_are_joined():
    m = check_messages([{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}])
    assert m == [{"role": "user", "content": "ab"}]


def test_trim_drops_oldest_turns_never_system_or_newest():
    fmt = ChatFormat(None)
    m = msgs(("system", "S"), ("user", "u1"), ("assistant", "a1"), ("user", "u2"), ("assistant", "a2"), ("user", "u3"))
    kept, dropped = trim_messages(m, fmt, budget=10_000)
    assert (kept, dropped) == (m, 0)
    count = len  # characters stand in for tokens
    budget = len(fmt.prompt([m[0], *m[3:]]))
    kept, dropped = trim_messages(m, fmt, budget=budget, count=count)
    assert kept == [m[0], *m[3:]] and dropped == 1
    kept, dropped = trim_messages(m, fmt, budget=1, count=count)
    assert kept == [m[0], m[-1]] and dropped == 2
    kept, dropped = trim_messages(m[1:], fmt, budget=len(fmt.prompt([m[-1]])), count=count)
    assert kept == [m[-1]] and dropped == 2


def test_trim_counts_tokens_by_default():
    fmt = ChatFormat(Template())
    m = msgs(("user", "word " * 50), ("assistant", "ok"), ("user", "last"))
    kept, dropped = trim_messages(m, fmt, budget=60)
    assert dropped == 1 and kept == [m[-1]]
