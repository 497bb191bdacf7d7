"""Downloads against hostile or broken servers (issue 12): a body cut short with no Content-Length,
a hostile hparams.json, stalls and the overall deadline, an offline machine, Ctrl-C and the lock,
and a finished file that does not parse. Loopback servers only (127.0.0.1), short timeouts."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from gptcli.errors import DownloadError, UsageError
from gptcli.weights import download as dl
from gptcli.weights.download import DATA_FILE, HPARAMS, LOCK_NAME, ORDER, RetryPolicy, download_gpt2

from ..conftest import gptcli_exe
from ..weights_helpers import invoke, random_openai_tensors, tiny_openai_cfg, write_openai_dir

FAST = RetryPolicy(attempts=3, backoff=0.001, max_backoff=0.01, timeout=5)


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY", dl.BASE_URL_ENV):
        monkeypatch.delenv(var, raising=False)
    for var in (dl.BACKOFF_ENV, dl.STALL_ENV, dl.DEADLINE_ENV):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Path:
    """<root>/gpt2/124M/<the seven files>: tiny weights in OpenAI's layout."""
    root = tmp_path_factory.mktemp("served")
    cfg = tiny_openai_cfg()
    write_openai_dir(root / "gpt2" / "124M", cfg, random_openai_tensors(cfg, seed=3))
    return root


class Server:
    """Serves ``root`` on 127.0.0.1 (HTTP/1.1, Range); ``modes[name]`` is consumed one per request:

      "nolength-cut"  200 with no Content-Length; half the body, then the connection closes
      "drip"          the right Content-Length, then one byte every ``drip`` seconds
    ``body[name]`` replaces a file's bytes. ``gets`` lists (name, Range header) per request.
    """

    def __init__(self, root: Path, *, drip: float = 0.2):
        self.root, self.drip = root, drip
        self.modes: dict[str, list[str]] = {}
        self.body: dict[str, bytes] = {}
        self.gets: list[tuple[str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = 10

            def log_message(self, *args):
                pass

            def do_GET(self):
                rel = self.path.lstrip("/")
                name = rel.rsplit("/", 1)[-1]
                rng = self.headers.get("Range")
                server.gets.append((name, rng))
                queue = server.modes.get(name) or []
                mode = queue.pop(0) if queue else None
                path = server.root / rel
                if name not in server.body and not path.is_file():
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = server.body.get(name) or path.read_bytes()
                start = int(rng.removeprefix("bytes=").rstrip("-")) if rng else 0
                if mode == "nolength-cut":
                    self.send_response(200)
                    self.send_header("Content-Type", "application/octet-stream")
                    self.end_headers()
                    self.wfile.write(data[: len(data) // 2])
                    self.close_connection = True
                    return
                self.send_response(206 if start else 200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(data) - start))
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                if mode == "drip":
                    try:
                        for i in range(start, len(data)):
                            self.wfile.write(data[i : i + 1])
                            self.wfile.flush()
                            time.sleep(server.drip)
                    except OSError:
                        pass
                    self.close_connection = True
                    return
                self.wfile.write(data[start:])

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/gpt2"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def names(self) -> list[str]:
        return [g[0] for g in self.gets]


@pytest.fixture
def server(served):
    with Server(served) as srv:
        yield srv


def in_thread(fn, timeout: float):
    """Run ``fn`` with a time limit, so that old code that hangs fails the test instead."""
    result: dict = {}

    def target():
        try:
            result["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the test
            result["error"] = e

    t = threading.Thread(target=target, daemon=True)
    started = time.monotonic()
    t.start()
    t.join(timeout)
    assert not t.is_alive(), f"still running after {timeout}s"
    return result, time.monotonic() - started


# ---------------------------------------------------------------------------------------------
# A body cut short with no Content-Length


def test_file_without_content_length_cut_short_is_never_finalised(server, tmp_path):
    """model.ckpt.index has no size known in advance from a non-official host: with no
    Content-Length, a cut-short copy cannot be told from a whole one, so it is not kept."""
    server.modes["model.ckpt.index"] = ["nolength-cut"]
    with pytest.raises(DownloadError, match=r"model\.ckpt\.index: sent without a Content-Length.*not kept"):
        download_gpt2("124M", tmp_path / "d", base_url=server.url, policy=FAST)
    assert not (tmp_path / "d" / "model.ckpt.index").exists()
    assert not (tmp_path / "d" / "model.ckpt.index.part").exists()
    assert DATA_FILE not in server.names()  # stopped there


def test_data_file_without_content_length_cut_short_resumes_to_its_known_size(server, served, tmp_path):
    """The data file's size follows from hparams.json: a short body is a retry that resumes, not a
    fatal size mismatch that throws the bytes away."""
    server.modes[DATA_FILE] = ["nolength-cut"]
    out = download_gpt2("124M", tmp_path / "d", base_url=server.url, policy=FAST)
    want = (served / "gpt2" / "124M" / DATA_FILE).read_bytes()
    assert (out / DATA_FILE).read_bytes() == want
    gets = [g for g in server.gets if g[0] == DATA_FILE]
    assert gets == [(DATA_FILE, None), (DATA_FILE, f"bytes={len(want) // 2}-")]


# ---------------------------------------------------------------------------------------------
# A hostile hparams.json


@pytest.mark.parametrize(
    ("key", "value", "needle"),
    [
        ("n_layer", 1_000_000, "n_layer is 1000000, outside 1..256"),
        ("n_layer", -3, "n_layer is -3"),
        ("n_embd", 10**9, "n_embd is 1000000000"),
        ("n_ctx", 2**40, "n_ctx is"),
        ("n_vocab", 0, "n_vocab is 0"),
        ("n_head", "4", "n_head must be an integer"),
        ("n_layer", 2.5, "n_layer must be an integer"),
        ("n_layer", True, "n_layer must be an integer"),
        ("n_head", 5, "n_head 5 does not divide n_embd 32"),
    ],
)
def test_hostile_hparams_is_refused_at_once(server, tmp_path, key, value, needle):
    hp = {"n_vocab": 50257, "n_ctx": 16, "n_embd": 32, "n_head": 4, "n_layer": 2, key: value}
    server.body[HPARAMS] = json.dumps(hp).encode()
    result, took = in_thread(
        lambda: download_gpt2("124M", tmp_path / "d", base_url=server.url, policy=FAST), timeout=20
    )
    assert isinstance(result.get("error"), DownloadError), result
    assert needle in str(result["error"]), result["error"]
    assert took < 10
    assert not (tmp_path / "d" / HPARAMS).exists()
    assert server.names() == [HPARAMS]  # nothing else requested


def test_hostile_hparams_left_from_an_earlier_run_is_fetched_again(server, served, tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    (d / HPARAMS).write_text(json.dumps({"n_vocab": 50257, "n_ctx": 16, "n_embd": 32, "n_head": 4, "n_layer": -1}))
    download_gpt2("124M", d, base_url=server.url, policy=FAST)
    assert (d / HPARAMS).read_bytes() == (served / "gpt2" / "124M" / HPARAMS).read_bytes()
    assert server.names()[0] == HPARAMS


# ---------------------------------------------------------------------------------------------
# Stalls and the overall deadline


def test_a_dripping_server_counts_as_stalled_and_is_retried_then_given_up(server, tmp_path):
    server.modes[HPARAMS] = ["drip"] * 5
    policy = RetryPolicy(attempts=2, backoff=0.001, max_backoff=0.01, timeout=30, stall=1.0)
    result, took = in_thread(lambda: download_gpt2("124M", tmp_path / "d", base_url=server.url, policy=policy), 15)
    err = result.get("error")
    assert isinstance(err, DownloadError) and "stalled" in str(err) and "gave up after 2 attempts" in str(err), err
    assert took < 8
    assert [g[1] for g in server.gets][:2] == [None, server.gets[1][1]] and server.gets[1][1]  # resumed


def test_overall_deadline_stops_a_slow_download(server, tmp_path):
    server.modes[HPARAMS] = ["drip"] * 5
    policy = RetryPolicy(attempts=5, backoff=0.001, max_backoff=0.01, timeout=30, stall=60, deadline=1.5)
    result, took = in_thread(lambda: download_gpt2("124M", tmp_path / "d", base_url=server.url, policy=policy), 15)
    err = result.get("error")
    assert isinstance(err, DownloadError) and "deadline" in str(err) and dl.DEADLINE_ENV in str(err), err
    assert 1.4 < took < 6
    assert (tmp_path / "d" / (HPARAMS + ".part")).exists()  # kept: a rerun resumes it


def test_stall_and_deadline_come_from_the_environment(monkeypatch):
    monkeypatch.setenv(dl.STALL_ENV, "2.5")
    monkeypatch.setenv(dl.DEADLINE_ENV, "90")
    p = RetryPolicy.from_env()
    assert (p.stall, p.deadline) == (2.5, 90.0)
    monkeypatch.setenv(dl.STALL_ENV, "soon")
    with pytest.raises(UsageError, match=dl.STALL_ENV):
        RetryPolicy.from_env()


# ---------------------------------------------------------------------------------------------
# An offline machine


def test_dns_failure_gives_up_after_one_quick_retry_and_points_to_the_readme(tmp_path, monkeypatch):
    calls = []

    def no_dns(host, *args, **kwargs):
        calls.append(host)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    policy = RetryPolicy(attempts=8, backoff=0.01, max_backoff=0.01)
    with pytest.raises(DownloadError) as e:
        download_gpt2("124M", tmp_path / "d", base_url="http://gpt2-mirror.example.invalid/gpt2", policy=policy)
    assert len(calls) == 2, calls
    msg = f"{e.value}\n{e.value.hint}"  # the error, and its hint line (issue 21: one short line each)
    assert "Name or service not known" in msg and "An offline machine" in msg and "README" in msg, msg
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    assert "**An offline machine.**" in readme  # the section the message points to


def test_refused_connection_gives_up_after_one_quick_retry(tmp_path, monkeypatch):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    connects = []
    real = socket.create_connection
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: connects.append(a) or real(*a, **k))
    started = time.monotonic()
    res = invoke("download", "--size", "124M", "--base-url", f"http://127.0.0.1:{port}/gpt2", "--dir", str(tmp_path))
    lines = [x for x in res.output.splitlines() if x.startswith("error:")]
    assert res.exit_code == 1 and len(lines) == 1, res.output
    hint = [x for x in res.output.splitlines() if x.startswith("hint:")]  # issue 21: the fix on a line of its own
    assert "connection refused" in lines[0] and len(hint) == 1 and "An offline machine" in hint[0], res.output
    assert len(connects) == 2 and time.monotonic() - started < 5


# ---------------------------------------------------------------------------------------------
# Ctrl-C and the lock


def test_ctrl_c_during_a_download_leaves_no_lock(server, tmp_path):
    server.modes[HPARAMS] = ["drip"]
    d = tmp_path / "d"
    env = {"GPTCLI_HOME": str(tmp_path / "home"), "NO_PROXY": "127.0.0.1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [*gptcli_exe(), "download", "--size", "124M", "--base-url", server.url, "--dir", str(d)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env},
    )
    try:
        deadline = time.monotonic() + 30
        part = d / (HPARAMS + ".part")
        while not part.exists():  # the transfer has begun (its bytes are still in a write buffer)
            assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
            time.sleep(0.05)
        time.sleep(0.5)
        assert (d / LOCK_NAME).exists()  # held while downloading
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert not (d / LOCK_NAME).exists()
    assert part.stat().st_size > 0  # the bytes so far are kept for a resume


def test_a_finished_download_leaves_no_lock_and_a_rerun_still_skips(server, tmp_path):
    out = download_gpt2("124M", tmp_path / "d", base_url=server.url, policy=FAST)
    assert not (out / LOCK_NAME).exists()
    n = len(server.gets)
    download_gpt2("124M", out, base_url=server.url, policy=FAST)
    assert len(server.gets) == n and sorted(server.names()) == sorted(ORDER)


# ---------------------------------------------------------------------------------------------
# A finished file that does not parse


def test_a_downloaded_file_that_fails_to_parse_says_to_delete_or_refetch_it(server, served, tmp_path):
    data = bytearray((served / "gpt2" / "124M" / DATA_FILE).read_bytes())
    data[len(data) // 2] ^= 0xFF  # the right size, one byte wrong: caught by the tensor's CRC32C
    server.body[DATA_FILE] = bytes(data)
    res = invoke("download", "--size", "124M", "--base-url", server.url, "--dir", str(tmp_path / "d"))
    lines = [x for x in res.output.splitlines() if x.startswith("error:")]
    assert res.exit_code != 0 and len(lines) == 1, res.output
    assert "delete" in lines[0] and "gptcli download --size 124M" in lines[0] and "fetch it yourself" in lines[0]
