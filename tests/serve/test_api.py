"""gptcli serve's API with the official openai client: the same tokens as gptcli sample, streams
equal to whole answers, seeds, usage, logprobs, batching, and the classifier."""

from __future__ import annotations

import concurrent.futures
import json

import httpx
import torch

from gptcli.chat_template import ChatFormat
from gptcli.commands.sample import sample_command
from gptcli.generation import generate
from gptcli.settings.sample import SampleSettings
from gptcli.tokenizer import encode


def _greedy_ids(server, prompt: str, n: int) -> list[int]:
    net = server.served.engine.model
    return generate(net, torch.tensor([encode(prompt)]), max_new_tokens=n, eos_id=50256)[0]


def test_models_says_name_context_kind(base_server, instruct_server, classify_server):
    for srv, kind, tuned in (
        (base_server, "lm", False),
        (instruct_server, "instruct", True),
        (classify_server, "classify", False),
    ):
        (card,) = srv.client().models.list().data
        assert card.id == srv.name and card.context_length == 64
        assert card.kind == kind and card.instruction_tuned is tuned
    assert classify_server.client().models.retrieve(classify_server.name).labels == ["ham", "spam"]


def test_greedy_completions_equal_gptcli_sample(base_server, runs, capsys):
    client = base_server.client()
    for prompt, n in (("Every effort moves you", 20), ("I", 7), ("The quick brown fox jumps over the lazy", 30)):
        r = client.completions.create(model=base_server.name, prompt=prompt, max_tokens=n, temperature=0)
        (expected,) = sample_command(checkpoint=runs / "base.pth", prompts=[prompt], max_new_tokens=n, device="cpu")
        assert prompt + r.choices[0].text == expected
        ids = _greedy_ids(base_server, prompt, n)
        assert r.usage.completion_tokens == len(ids) and r.usage.prompt_tokens == len(encode(prompt))
        assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
        assert r.choices[0].finish_reason == ("length" if len(ids) == n else "stop")
    capsys.readouterr()


def test_a_prompt_list_answers_each(base_server):
    prompts = ["Hello there", "A much longer prompt than the first one is"]
    r = base_server.client().completions.create(model=base_server.name, prompt=prompts, max_tokens=5)
    solo = [base_server.client().completions.create(model=base_server.name, prompt=p, max_tokens=5) for p in prompts]
    assert [c.text for c in r.choices] == [s.choices[0].text for s in solo]
    assert r.usage.prompt_tokens == sum(len(encode(p)) for p in prompts)


def test_seeded_sampling_repeats_and_matches_sample_seed(base_server, runs, capsys):
    client = base_server.client()
    kw = dict(
        model=base_server.name,
        prompt="Every effort",
        max_tokens=12,
        temperature=1.0,
        extra_body={"top_k": 50},
        seed=7,
        n=3,
    )
    a, b = client.completions.create(**kw), client.completions.create(**kw)
    assert [c.text for c in a.choices] == [c.text for c in b.choices]
    assert len({c.text for c in a.choices}) > 1  # the three rows draw differently
    one = client.completions.create(**{**kw, "n": 1})
    (expected,) = sample_command(
        checkpoint=runs / "base.pth",
        prompts=["Every effort"],
        max_new_tokens=12,
        temperature=1.0,
        top_k=50,
        seed=7,
        device="cpu",
    )
    assert "Every effort" + one.choices[0].text == expected
    capsys.readouterr()


def _stream_text(client, method, **kw) -> tuple[dict[int, str], dict[int, str]]:
    texts: dict[int, str] = {}
    reasons: dict[int, str] = {}
    for chunk in method(stream=True, stream_options={"include_usage": True}, **kw):
        if chunk.usage is not None:
            reasons["usage"] = chunk.usage.completion_tokens
        for c in chunk.choices:
            piece = c.text if hasattr(c, "text") else (c.delta.content or "")
            texts[c.index] = texts.get(c.index, "") + piece
            if c.finish_reason:
                reasons[c.index] = c.finish_reason
    return texts, reasons


def test_streamed_text_equals_whole_text(base_server, instruct_server):
    client = base_server.client()
    for kw in (
        dict(prompt="Every effort moves you", max_tokens=40),
        dict(
            prompt="Ünïcödé ☃ text", max_tokens=50, temperature=2.0, seed=3, n=4
        ),  # byte-level tokens split characters
        dict(prompt="Stop here", max_tokens=40, temperature=1.5, seed=1, stop=["e", "a"]),
    ):
        whole = client.completions.create(model=base_server.name, **kw)
        texts, reasons = _stream_text(client, client.completions.create, model=base_server.name, **kw)
        assert texts == {c.index: c.text for c in whole.choices}
        assert reasons == {c.index: c.finish_reason for c in whole.choices} | {"usage": whole.usage.completion_tokens}
    for srv in (base_server, instruct_server):
        chat = srv.client().chat.completions
        for kw in (dict(max_tokens=30), dict(max_tokens=30, temperature=1.8, seed=2, n=2)):
            msgs = [{"role": "user", "content": "Name the capital of France."}]
            whole = chat.create(model=srv.name, messages=msgs, **kw)
            texts, reasons = _stream_text(srv.client(), chat.create, model=srv.name, messages=msgs, **kw)
            assert texts == {c.index: c.message.content for c in whole.choices}
            assert reasons == {c.index: c.finish_reason for c in whole.choices} | {
                "usage": whole.usage.completion_tokens
            }


def test_chat_on_an_instruct_run_equals_sample_instruction(instruct_server, runs, capsys):
    from gptcli.commands.sample import instruct_command

    for text in ("Name the capital of France.", "Sort the numbers."):
        r = instruct_server.client().chat.completions.create(
            model=instruct_server.name, messages=[{"role": "user", "content": text}], max_tokens=20
        )
        (out,) = instruct_command(
            SampleSettings(checkpoint=runs / "ins", instruction=text, max_new_tokens=20, device="cpu")
        )
        assert r.choices[0].message.content == out["model_response"]
        fmt = instruct_server.served.chat
        assert r.usage.prompt_tokens == len(encode(fmt.prompt([{"role": "user", "content": text}])))
    capsys.readouterr()


def test_multi_turn_chat_uses_the_transcript_and_trims(base_server):
    msgs = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Hi."},
        {"role": "user", "content": "How are you?"},
    ]
    r = base_server.client().chat.completions.create(model=base_server.name, messages=msgs, max_tokens=5)
    assert r.usage.prompt_tokens == len(encode(ChatFormat(None).prompt(msgs)))
    assert r.model_extra["gptcli"]["dropped_turns"] == 0
    long = [msgs[0]] + [
        m
        for i in range(8)
        for m in ({"role": "user", "content": f"question {i} " * 3}, {"role": "assistant", "content": "ok"})
    ]
    long.append({"role": "user", "content": "last"})
    r = base_server.client().chat.completions.create(model=base_server.name, messages=long, max_tokens=16)
    assert r.model_extra["gptcli"]["dropped_turns"] > 0
    assert r.usage.prompt_tokens + 16 <= 64


def test_logprobs_equal_a_direct_forward_pass(base_server):
    prompt = "Every effort moves you"
    r = base_server.client().completions.create(model=base_server.name, prompt=prompt, max_tokens=8, logprobs=3)
    ids, new = encode(prompt), _greedy_ids(base_server, prompt, 8)
    net = base_server.served.engine.model
    with torch.no_grad():
        lp = torch.log_softmax(net(torch.tensor([ids + new])).float(), dim=-1)[0]
    got = r.choices[0].logprobs
    assert len(got.token_logprobs) == len(new)
    for i, t in enumerate(new):
        row = lp[len(ids) - 1 + i]
        assert abs(got.token_logprobs[i] - float(row[t])) < 1e-5
        top = sorted(got.top_logprobs[i].values(), reverse=True)
        assert len(top) <= 3 and all(abs(a - float(b)) < 1e-5 for a, b in zip(top, row.topk(3).values))
    chat = base_server.client().chat.completions.create(
        model=base_server.name,
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=4,
        logprobs=True,
        top_logprobs=2,
    )
    assert len(chat.choices[0].logprobs.content) == chat.usage.completion_tokens
    assert all(len(e.top_logprobs) == 2 for e in chat.choices[0].logprobs.content)


def test_sixteen_concurrent_greedy_requests_equal_their_solo_answers(base_server):
    client = base_server.client()
    words = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen".split()
    prompts = [" ".join(words[: i + 1] * (1 + i % 2)) for i in range(16)]  # 1 to 32 tokens
    solo = [client.completions.create(model=base_server.name, prompt=p, max_tokens=20).choices[0].text for p in prompts]
    base_server.served.engine.peak_rows = 0
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        together = list(
            pool.map(
                lambda p: client.completions.create(model=base_server.name, prompt=p, max_tokens=20).choices[0].text,
                prompts,
            )
        )
    assert together == solo
    assert base_server.served.engine.peak_rows > 1  # they did share decode steps


def test_classify_labels_texts_and_refuses_to_generate(classify_server, runs, capsys):
    from gptcli.commands.finetune import classify_command

    texts = ["win cash 3", "lunch 4"]
    r = httpx.post(
        classify_server.url + "/v1/classify",
        json={"input": texts},
        headers={"Authorization": f"Bearer {classify_server.api_key}"},
    )
    assert r.status_code == 200, r.text
    expected = classify_command(runs / "cls", texts, file=None, json_out=True)
    capsys.readouterr()
    for got, want in zip(r.json()["data"], expected):
        assert got["label"] == want["label"] and abs(got["probability"] - want["probability"]) < 1e-6
        assert abs(sum(got["probabilities"].values()) - 1) < 1e-5
    import openai

    client = classify_server.client()
    for call in (
        lambda: client.completions.create(model=classify_server.name, prompt="hi"),
        lambda: client.chat.completions.create(
            model=classify_server.name, messages=[{"role": "user", "content": "hi"}]
        ),
    ):
        try:
            call()
            raise AssertionError("a classifier generated")
        except openai.BadRequestError as e:
            assert "classifier" in e.message and e.code == "model_cannot_generate"
    assert client.models.list().data[0].kind == "classify"  # and it goes on serving


def test_page_is_served(base_server):
    r = httpx.get(base_server.url + "/")
    assert r.status_code == 200 and "<html" in r.text.lower()
    assert json.loads(httpx.get(base_server.url + "/health").text)["status"] == "ok"
