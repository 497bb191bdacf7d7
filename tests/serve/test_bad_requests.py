"""Every bad request gets OpenAI's error object with the status that fits, never a traceback, and
the server answers the good request that follows it."""

from __future__ import annotations

import concurrent.futures
import json
import time

import httpx
import pytest

from tests.serve.conftest import KEY, Served


def _post(srv, path: str, body, *, key: str | None = KEY, raw: bytes | None = None, headers=None) -> httpx.Response:
    h = {"Content-Type": "application/json", **(headers or {})}
    if key is not None:
        h["Authorization"] = f"Bearer {key}"
    content = raw if raw is not None else json.dumps(body).encode()
    return httpx.post(srv.url + path, content=content, headers=h, timeout=30)


def _good(srv) -> None:
    r = _post(srv, "/v1/completions", {"model": srv.name, "prompt": "Hello", "max_tokens": 3})
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] >= 0


def _refused(r: httpx.Response, status: int, param: str | None = None, words: str = "") -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and "Traceback" not in r.text
    if param is not None:
        assert err["param"] == param, err
    assert words in err["message"], err
    return err


BAD = [
    # (path, body or raw bytes, status, param, words in the message)
    ("/v1/completions", b"{not json", 400, None, "not valid JSON"),
    ("/v1/completions", b"[1, 2]", 400, None, "JSON object"),
    ("/v1/completions", {"prompt": 5}, 400, "prompt", "string"),
    ("/v1/completions", {"prompt": []}, 400, "prompt", "non-empty"),
    ("/v1/completions", {"prompt": "hi", "max_tokens": "3"}, 400, "max_tokens", "integer"),
    ("/v1/completions", {"prompt": "hi", "max_tokens": 2.5}, 400, "max_tokens", "integer"),
    ("/v1/completions", {"prompt": "hi", "n": True}, 400, "n", "integer"),
    ("/v1/completions", {"prompt": "hi", "stream": "yes"}, 400, "stream", "true or false"),
    ("/v1/completions", {"prompt": "hi", "stop": [1]}, 400, "stop", "string"),
    ("/v1/completions", {"prompt": "hi", "model": "gpt-4"}, 404, "model", "does not exist"),
    ("/v1/completions", {"prompt": "hi", "temperature": -1}, 400, "temperature", "greedy"),
    ("/v1/completions", b'{"prompt": "hi", "temperature": NaN}', 400, "temperature", "finite"),
    ("/v1/completions", b'{"prompt": "hi", "top_p": Infinity}', 400, "top_p", "finite"),
    ("/v1/completions", {"prompt": "hi", "top_p": 0}, 400, "top_p", "(0, 1]"),
    ("/v1/completions", {"prompt": "hi", "top_k": 0}, 400, "top_k", "from 1"),
    ("/v1/completions", {"prompt": "hi", "max_tokens": 0}, 400, "max_tokens", "at least 1"),
    ("/v1/completions", {"prompt": "hi", "max_tokens": 10**9}, 400, "max_tokens", "context of 64"),
    ("/v1/completions", {"prompt": "hi " * 100}, 400, "prompt", "context is 64"),
    ("/v1/completions", {"prompt": "hi", "n": 1000}, 400, "n", "from 1 to"),
    ("/v1/completions", {"prompt": "hi", "seed": 2**70}, 400, "seed", "from"),
    ("/v1/completions", {"prompt": "hi", "logprobs": 99}, 400, "logprobs", "from 0 to 20"),
    ("/v1/chat/completions", {"messages": "hi"}, 400, "messages", "non-empty list"),
    ("/v1/chat/completions", {"messages": [{"role": "bot", "content": "x"}]}, 400, "messages[0].role", "one of"),
    (
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": {"a": 1}}]},
        400,
        "messages[0].content",
        "string",
    ),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x" * 2000}]}, 400, "messages", "context is 64"),
    ("/v1/classify", {"input": ["x"]}, 400, "model", "classify run"),
    ("/v1/nowhere", {}, 404, None, "no route"),
]


@pytest.mark.parametrize("path, body, status, param, words", BAD, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD)])
def test_bad_request_then_a_good_one(base_server, path, body, status, param, words):
    r = _post(base_server, path, None, raw=body) if isinstance(body, bytes) else _post(base_server, path, body)
    _refused(r, status, param, words)
    _good(base_server)


def test_a_wrong_method_is_an_error_object(base_server):
    r = httpx.get(base_server.url + "/v1/completions", headers={"Authorization": f"Bearer {KEY}"})
    _refused(r, 405)
    _good(base_server)


def test_a_10_mb_body_is_413(base_server):
    big = json.dumps({"prompt": "x" * (10 * 1024 * 1024)}).encode()
    _refused(_post(base_server, "/v1/completions", None, raw=big), 413, None, "bytes")
    _good(base_server)


def test_missing_or_wrong_key_is_401(base_server):
    err = _refused(_post(base_server, "/v1/completions", {"prompt": "hi"}, key=None), 401, None, "missing API key")
    assert err["type"] == "authentication_error"
    _refused(_post(base_server, "/v1/completions", {"prompt": "hi"}, key="wrong"), 401, None, "invalid API key")
    _refused(httpx.get(base_server.url + "/v1/models", headers={"Authorization": "Basic x"}), 401)
    _good(base_server)


def test_a_client_leaving_mid_stream_frees_its_row(runs):
    """Steps slowed to 20 ms, so the 60-token answer would take over a second: the client reads
    two chunks and leaves, and the row is gone long before it could have finished."""
    srv = Served(runs / "base.pth", max_batch=1, max_queue=1)
    try:
        engine = srv.served.engine
        step = engine._step

        def slow(rows):
            time.sleep(0.02)
            step(rows)

        engine._step = slow
        body = {"prompt": "Hi", "max_tokens": 60, "stream": True}
        with httpx.stream(
            "POST", srv.url + "/v1/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}
        ) as r:
            lines = r.iter_lines()
            got = [next(lines) for _ in range(4)]  # two chunks and their blank lines
        assert got[0].startswith("data: ")
        deadline = time.monotonic() + 5
        while engine.load()["rows"] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert engine.load()["rows"] == 0
        assert engine.tokens < 50  # it stopped well before its 60 tokens
        _good(srv)
    finally:
        srv.close()


def test_a_full_queue_is_429(runs):
    """One row, one waiting place: a third request at once is refused, and later ones succeed."""
    srv = Served(runs / "base.pth", max_batch=1, max_queue=1)
    try:
        engine = srv.served.engine
        step = engine._step

        def slow(rows):
            time.sleep(0.05)
            step(rows)

        engine._step = slow
        body = {"prompt": "Hi", "max_tokens": 60}
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            first = pool.submit(_post, srv, "/v1/completions", body)
            deadline = time.monotonic() + 10
            while not engine.load()["rows"] and time.monotonic() < deadline:
                time.sleep(0.01)
            second = pool.submit(_post, srv, "/v1/completions", body)
            while not engine.load()["waiting"] and time.monotonic() < deadline:
                time.sleep(0.01)
            assert engine.load() == {**engine.load(), "rows": 1, "waiting": 1}
            err = _refused(_post(srv, "/v1/completions", {"prompt": "Hi", "max_tokens": 2}), 429)
            assert err["type"] == "rate_limit_error"
            assert first.result().status_code == second.result().status_code == 200
        _good(srv)
    finally:
        srv.close()
