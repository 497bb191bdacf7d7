"""The ``gptcli serve`` command itself: its URL line, its warnings and refusals, and a SIGTERM that
ends a stream in flight with a proper final event."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import httpx
from typer.testing import CliRunner

from gptcli.cli import app
from tests.conftest import gptcli_exe
from tests.serve.conftest import save_base


def _one_error_line(args: list[str], expect: int) -> str:
    res = CliRunner().invoke(app, args)
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert res.exit_code == expect and len(lines) == 1 and lines[0].startswith("error:"), res.output
    return lines[0]


def test_bad_flags_are_one_error_line():
    assert "--port" in _one_error_line(["serve", "--port", "70000"], 2)
    assert "--max-batch" in _one_error_line(["serve", "--max-batch", "0"], 2)
    assert "--cors-origin" in _one_error_line(["serve", "--cors-origin", "example.com"], 2)
    assert "not both" in _one_error_line(["serve", "-c", "x", "--model", "y"], 2)


def test_a_missing_extra_is_one_error_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # import uvicorn raises ImportError
    assert "pip install 'gptcli[serve]'" in _one_error_line(["serve"], 1)


def test_help_imports_neither_torch_nor_fastapi():
    code = "import sys; from gptcli.cli import app; print(sorted({'torch', 'fastapi', 'uvicorn'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_url_warning_and_sigterm_ends_a_stream_properly(tmp_path):
    """0.0.0.0 without a key warns; the URL comes on stdout once listening; SIGTERM mid-stream ends
    the stream with an error event and [DONE], and the process within seconds."""
    base = save_base(tmp_path / "long.pth", context_length=1024)
    proc = subprocess.Popen(
        [*gptcli_exe(), "serve", "-c", str(base), "--host", "0.0.0.0", "--port", "0", "--device", "cpu"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("serving long (lm) at http://0.0.0.0:"), (
            line,
            proc.stderr.read() if proc.poll() else "",
        )
        port = int(line.rsplit(":", 1)[1].strip().rstrip("/"))
        body = {"prompt": "Hi", "max_tokens": 1000, "stream": True}
        events = []
        with httpx.stream("POST", f"http://127.0.0.1:{port}/v1/completions", json=body, timeout=30) as r:
            for text in r.iter_lines():
                if not text:
                    continue
                events.append(text)
                if len(events) == 2:
                    proc.send_signal(signal.SIGTERM)
                    stopped_at = time.monotonic()
        assert events[-1] == "data: [DONE]"
        last = json.loads(events[-2].removeprefix("data: "))
        assert "shutting down" in last["error"]["message"]
        assert proc.wait(timeout=15) == 0
        assert time.monotonic() - stopped_at < 10
        err = proc.stderr.read()
        assert "warning: --host 0.0.0.0 without --api-key" in err and "Traceback" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
