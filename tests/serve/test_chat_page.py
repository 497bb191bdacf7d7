"""The chat page at ``/`` in headless Chromium (Playwright's sync API driving Debian's
``/usr/bin/chromium``, so no browser is downloaded), against a real ``gptcli serve`` on a tiny
random model: the streamed answer is the API's greedy answer, Stop keeps a strict prefix of a long
answer and leaves the page usable, and a refusal (a wrong API key, too many max tokens) shows in
the page, after which a good message succeeds.

Without chromium (``GPTCLI_CHROMIUM`` names another path) the test is skipped, saying so, except
in CI (the ``CI`` variable set), where .ci/run installs it and its absence is a failure."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import threading
import urllib.request
from pathlib import Path

import pytest
import torch

from gptcli import checkpoint as ckpt
from gptcli.config import ModelConfig
from gptcli.model import GPT

from ..conftest import gptcli_exe

CHROMIUM = Path(os.environ.get("GPTCLI_CHROMIUM", "/usr/bin/chromium"))
KEY = "test-key-123"
# A context long enough for an answer that takes a while to stream, so Stop lands mid-answer.
CONTEXT = 1024
LONG = 900


@pytest.fixture(scope="module")
def sync_playwright():
    """Playwright's sync API, once chromium is known to be there (before any server starts)."""
    if not CHROMIUM.exists():
        reason = f"no chromium at {CHROMIUM} (apt-get install chromium; .ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(reason + ", and CI must run the browser test")
        pytest.skip(reason)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("playwright is not installed (pip install 'gptcli[test]')")
        pytest.skip("playwright is not installed (pip install 'gptcli[test]')")
    return sync_playwright


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``gptcli serve`` of a tiny random model on a free loopback port, wanting an API key; its URL."""
    pytest.importorskip("fastapi", reason="gptcli serve needs the [serve] extra")
    root = tmp_path_factory.mktemp("page")
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=50257, context_length=CONTEXT, emb_dim=32, n_heads=2, n_layers=2, drop_rate=0.0)
    ckpt.atomic_save(ckpt.weights_checkpoint(cfg, GPT(cfg).state_dict()), root / "tiny.pth")
    proc = subprocess.Popen(
        [*gptcli_exe(), "serve", "-c", str(root / "tiny.pth"), "--port", "0", "--api-key", KEY, "--device", "cpu"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=root,
    )
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout] + [lines.put(None)], daemon=True).start()
    try:
        line = lines.get(timeout=120)  # None: it exited without one
    except queue.Empty:
        line = None
    if line is None:
        proc.kill()
        pytest.fail("gptcli serve printed no URL: " + proc.stderr.read()[-2000:])
    url = line.split(" at ")[-1].strip()
    assert url.startswith("http://127.0.0.1:"), line
    yield url
    proc.terminate()
    proc.wait(timeout=30)


def _api_chat(url: str, messages: list[dict], **fields) -> str:
    """The non-streamed answer of /v1/chat/completions."""
    body = json.dumps({"messages": messages, **fields}).encode()
    req = urllib.request.Request(
        url + "v1/chat/completions",
        data=body,
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"},
    )
    with urllib.request.urlopen(req, timeout=120) as resp:
        return json.loads(resp.read())["choices"][0]["message"]["content"]


def _answers(page) -> list[str]:
    return page.eval_on_selector_all(".msg.assistant .text", "els => els.map(e => e.textContent)")


def _send(page, text: str) -> None:
    page.fill("#prompt", text)
    page.press("#prompt", "Enter")


def _wait_idle(page, answers: int) -> None:
    page.wait_for_function(
        f"document.querySelectorAll('.msg.assistant[data-done]').length === {answers} "
        "&& document.body.dataset.state === 'idle'",
        timeout=60_000,
    )


def test_the_chat_page_streams_stops_and_survives_errors(sync_playwright, server):
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox", "--headless=new"])
        try:
            page = browser.new_page(viewport={"width": 900, "height": 700})
            page.goto(server)
            # 1. No key yet: the server's 401 is in the page; the key field then gets the card.
            page.wait_for_selector(".error")
            assert "API key" in page.inner_text(".error")
            page.fill("#api-key", KEY)
            page.dispatch_event("#api-key", "change")
            page.wait_for_function("document.getElementById('model-context').textContent.includes('1024')")
            assert page.inner_text("#model-name") == "tiny" and page.inner_text("#model-kind") == "pretrained"

            # 2. A greedy answer, streamed, equals the API's; Shift+Enter made a new line in the message.
            page.fill("#max-tokens", "24")
            page.fill("#prompt", "Every effort")
            page.press("#prompt", "Shift+Enter")
            page.type("#prompt", "moves you")
            assert page.input_value("#prompt") == "Every effort\nmoves you"
            pieces: list[int] = []
            page.expose_function("gptcliSeen", lambda n: pieces.append(n))
            page.evaluate(
                "new MutationObserver(() => { const t = document.querySelector('.msg.assistant .text'); "
                "if (t) gptcliSeen(t.textContent.length); })"
                ".observe(document.getElementById('messages'), {subtree: true, childList: true, characterData: true})"
            )
            page.press("#prompt", "Enter")
            _wait_idle(page, 1)
            user = {"role": "user", "content": "Every effort\nmoves you"}
            expected = _api_chat(server, [user], temperature=0, max_tokens=24)
            assert _answers(page) == [expected] and expected
            assert len(set(pieces)) > 2, pieces  # it grew piece by piece, not in one go

            # 3. Stop a long answer mid-stream: a strict prefix stays, and the page is usable again.
            # A tiny model writes 900 tokens in about a second, so the browser's network is slowed
            # to a few chunks a second for this answer, or it could end before Stop is pressed.
            cdp = page.context.new_cdp_session(page)
            cdp.send("Network.enable")
            slow = {"offline": False, "latency": 0, "downloadThroughput": 2000, "uploadThroughput": -1}
            cdp.send("Network.emulateNetworkConditions", slow)
            page.fill("#max-tokens", str(LONG))
            _send(page, "Tell me everything")
            page.wait_for_function("document.querySelectorAll('.msg.assistant .text')[1]?.textContent.length > 20")
            page.click("#stop")
            _wait_idle(page, 2)
            cdp.send("Network.emulateNetworkConditions", {**slow, "downloadThroughput": -1})
            partial = _answers(page)[1]
            assert "stopped" in page.inner_text(".msg.assistant >> nth=1")
            history = [
                user,
                {"role": "assistant", "content": expected},
                {"role": "user", "content": "Tell me everything"},
            ]
            full = _api_chat(server, history, temperature=0, max_tokens=LONG)
            assert full.startswith(partial) and 0 < len(partial) < len(full), (len(partial), len(full))
            assert page.is_enabled("#send") and not page.is_enabled("#stop")

            # 4. A refusal (max tokens past the context) is shown; the next good message succeeds.
            page.fill("#max-tokens", str(10**6))
            _send(page, "Too long")
            page.wait_for_function("document.querySelectorAll('.error').length === 2")
            assert "max_tokens" in page.inner_text(".error >> nth=1")
            assert page.input_value("#prompt") == "Too long"  # given back to edit
            page.fill("#max-tokens", "8")
            _send(page, "Short one")
            _wait_idle(page, 3)
            assert _answers(page)[2]

            # 5. Clear forgets the conversation.
            page.click("#clear")
            assert _answers(page) == [] and page.is_visible("#empty")
        finally:
            browser.close()
