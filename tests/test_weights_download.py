"""Downloading GPT-2 against a loopback server that injects faults (127.0.0.1 only)."""

from __future__ import annotations

import threading

import pytest

from gptcli.errors import DownloadError
from gptcli.weights import download as dl
from gptcli.weights.download import DATA_FILE, ORDER, DownloadCallbacks, RetryPolicy, download_gpt2

from .conftest import run_gptcli
from .weights_helpers import BOOK_SAMPLE, FaultServer, random_openai_tensors, tiny_openai_cfg, write_openai_dir

FAST = RetryPolicy(attempts=4, backoff=0.001, max_backoff=0.01, timeout=10)


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY", dl.BASE_URL_ENV):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """What the server holds: <root>/gpt2/124M/<the seven files>, tiny weights in OpenAI's layout."""
    r = tmp_path_factory.mktemp("served")
    cfg = tiny_openai_cfg()
    write_openai_dir(r / "gpt2" / "124M", cfg, random_openai_tensors(cfg, seed=11))
    return r


@pytest.fixture
def server(root):
    with FaultServer(root) as srv:
        yield srv


class Recorder(DownloadCallbacks):
    def __init__(self):
        self.events = []

    def on_file_start(self, name, total, done):
        self.events.append(("start", name, total, done))

    def on_file_done(self, name, path, *, skipped):
        self.events.append(("done", name, skipped))

    def on_restart(self, name, reason):
        self.events.append(("restart", name, reason))

    def on_retry(self, url, reason, delay):
        self.events.append(("retry", url, reason, delay))

    def on_fallback(self, failed_url, reason, next_url):
        self.events.append(("fallback", failed_url, next_url))

    def of(self, kind):
        return [e for e in self.events if e[0] == kind]


def _download(server, dest, **kw):
    rec = kw.pop("callbacks", None) or Recorder()
    out = download_gpt2(
        "124M", dest, base_url=kw.pop("base_url", f"{server.url}/gpt2"), policy=FAST, callbacks=rec, **kw
    )
    return out, rec


def _same_files(root, dest, names=ORDER):
    for name in names:
        assert (dest / name).read_bytes() == (root / "gpt2" / "124M" / name).read_bytes(), name


def _no_temporaries(dest):
    assert not list(dest.glob("*.part")), list(dest.glob("*.part"))


def test_downloads_all_files_and_a_rerun_makes_no_requests(server, root, tmp_path):
    out, rec = _download(server, tmp_path / "d")
    _same_files(root, out)
    _no_temporaries(out)
    assert sorted(r[0] for r in server.requests) == sorted(ORDER)
    assert all(r[1] is None and r[2] == 200 for r in server.requests)
    total = (out / DATA_FILE).stat().st_size
    assert ("start", DATA_FILE, total, 0) in rec.events
    before = len(server.requests)
    _, rec2 = _download(server, tmp_path / "d")
    assert len(server.requests) == before  # not a single GET
    assert [e for e in rec2.events if e[0] == "done"] == [("done", n, True) for n in ORDER]


@pytest.mark.parametrize("fault", ["drop", "reset"])
def test_dropped_connection_resumes_where_it_stopped(server, root, tmp_path, fault):
    server.faults[DATA_FILE] = [fault]
    out, rec = _download(server, tmp_path / "d")
    _same_files(root, out)
    size = (out / DATA_FILE).stat().st_size
    (_, r1, s1, sent1), (_, r2, s2, _) = server.gets(DATA_FILE)
    assert (r1, s1) == (None, 200) and 0 < sent1 < size
    # A Range request for the rest: resumed, not restarted. After a reset, the bytes still in
    # flight are lost, so it resumes from what arrived.
    resumed_at = int(r2.removeprefix("bytes=").rstrip("-"))
    assert s2 == 206 and (resumed_at == sent1 if fault == "drop" else 0 < resumed_at <= sent1)
    assert len(rec.of("retry")) == 1 and not rec.of("restart")


def test_a_complete_partial_file_is_kept_when_the_server_refuses_its_range(server, root, tmp_path):
    """A ``.part`` file that already holds the whole file: the server answers the Range request
    with 416 and the full size, and the file is kept as it is."""
    dest = tmp_path / "d"
    dest.mkdir()
    (dest / ("vocab.bpe" + dl.PART_SUFFIX)).write_bytes((root / "gpt2" / "124M" / "vocab.bpe").read_bytes())
    out, rec = _download(server, dest)
    _same_files(root, out)
    _no_temporaries(out)
    assert [r[2] for r in server.gets("vocab.bpe")] == [416]
    assert not rec.of("restart") and not rec.of("retry")


def test_503_twice_then_200(server, root, tmp_path):
    server.faults["hparams.json"] = ["503", "503"]
    out, rec = _download(server, tmp_path / "d")
    _same_files(root, out)
    assert [r[2] for r in server.gets("hparams.json")] == [503, 503, 200]
    retries = rec.of("retry")
    assert len(retries) == 2 and all("HTTP 503" in e[2] for e in retries)
    assert all(e[3] <= FAST.max_backoff for e in retries)


def test_404_with_xml_body_fails_at_once_and_leaves_no_file(server, tmp_path):
    server.faults["vocab.bpe"] = ["404"]
    with pytest.raises(DownloadError) as e:
        _download(server, tmp_path / "d")
    assert f"{server.url}/gpt2/124M/vocab.bpe: HTTP 404" in str(e.value)
    assert len(server.gets("vocab.bpe")) == 1  # never retried
    assert not (tmp_path / "d" / "vocab.bpe").exists()
    assert not (tmp_path / "d" / DATA_FILE).exists()  # stops at the first failure


def test_server_ignoring_range_starts_over_cleanly(root, tmp_path):
    dest = tmp_path / "d"
    dest.mkdir()
    # A partial file from an earlier run, whose bytes must not survive: appending to it would corrupt
    (dest / (DATA_FILE + ".part")).write_bytes(b"\xff" * 12345)
    with FaultServer(root, ignore_range=True) as server:
        server.faults[DATA_FILE] = ["drop"]
        out, rec = _download(server, dest)
    _same_files(root, out)
    (_, r1, s1, sent1), (_, r2, s2, _) = server.gets(DATA_FILE)
    assert (r1, s1, r2, s2) == ("bytes=12345-", 200, f"bytes={sent1}-", 200)
    assert len(rec.of("restart")) == 2  # both times the whole file came back: started over, twice


def test_content_length_longer_than_the_body_fails(server, tmp_path):
    server.faults["model.ckpt.index"] = ["long-length"]
    with pytest.raises(
        DownloadError, match=r"model\.ckpt\.index: server announced .* bytes, then .*wrong Content-Length"
    ):
        _download(server, tmp_path / "d")
    assert not (tmp_path / "d" / "model.ckpt.index").exists()
    _no_temporaries(tmp_path / "d")


@pytest.mark.parametrize("name", ["encoder.json", DATA_FILE])
def test_content_length_off_the_known_size_fails_before_downloading(server, tmp_path, name):
    """encoder.json is the same for every GPT-2; the data file's size follows from hparams.json."""
    server.faults[name] = ["short-length"]
    with pytest.raises(DownloadError, match=rf"{name}: server says .* bytes, but {name} is .* bytes"):
        _download(server, tmp_path / "d")
    assert not (tmp_path / "d" / name).exists()
    part = tmp_path / "d" / (name + ".part")
    assert not part.exists() or part.stat().st_size == 0  # gave up at the headers, before the body


def test_html_page_is_never_a_model_file(server, tmp_path):
    server.faults["checkpoint"] = ["html"]
    with pytest.raises(DownloadError, match="checkpoint: server sent an HTML/XML page"):
        _download(server, tmp_path / "d")
    assert not (tmp_path / "d" / "checkpoint").exists()


def test_falls_back_to_the_mirror_when_the_primary_fails(server, root, tmp_path, monkeypatch):
    monkeypatch.setattr(dl, "PRIMARY_URL", f"{server.url}/not-here")
    monkeypatch.setattr(dl, "MIRROR_URL", f"{server.url}/gpt2")
    out, rec = _download(server, tmp_path / "d", base_url=None)
    _same_files(root, out)
    assert len(rec.of("fallback")) == len(ORDER)
    monkeypatch.setattr(dl, "MIRROR_URL", f"{server.url}/also-not-here")
    with pytest.raises(DownloadError) as e:
        _download(server, tmp_path / "e", base_url=None)
    assert "not-here/124M/hparams.json: HTTP 404" in str(
        e.value
    ) and "also-not-here/124M/hparams.json: HTTP 404" in str(e.value)


def test_unreachable_server_is_retried_then_reported(tmp_path):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(
        DownloadError, match=rf"^hparams.json: cannot reach 127.0.0.1:{port} \(connection refused\)$"
    ) as e:
        download_gpt2("124M", tmp_path / "d", base_url=f"http://127.0.0.1:{port}/gpt2", policy=FAST)
    assert "--base-url" in e.value.hint and "offline" in e.value.hint


def test_two_downloads_into_one_folder_take_turns(server, root, tmp_path):
    errors = []

    def run():
        try:
            _download(server, tmp_path / "d")
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    _same_files(root, tmp_path / "d")
    assert sorted(r[0] for r in server.requests) == sorted(ORDER)  # each file fetched once


def test_known_sizes_apply_where_they_can():
    official = "https://openaipublic.blob.core.windows.net/gpt-2/models/124M/x"
    mirror = "https://f001.backblazeb2.com/file/LLMs-from-scratch/gpt2/124M/x"
    other = "http://127.0.0.1:1/gpt2/124M/x"
    assert dl.expected_size("124M", "model.ckpt.index", official) == 5_215
    assert dl.expected_size("355M", "model.ckpt.meta", mirror) == 926_519
    assert dl.expected_size("124M", DATA_FILE, official) == 497_759_232
    assert dl.expected_size("124M", "model.ckpt.index", other) is None  # depends on the writer
    assert dl.expected_size("124M", "encoder.json", other) == 1_042_301  # the same tokenizer everywhere
    assert dl.expected_size("124M", "checkpoint", official) is None


def test_backoff_is_capped_and_configurable(monkeypatch):
    p = RetryPolicy(backoff=1.0, max_backoff=8.0)
    assert [p.delay(n) for n in range(1, 7)] == [1, 2, 4, 8, 8, 8]
    assert p.delay(1, retry_after=5) == 5 and p.delay(1, retry_after=100) == 8
    monkeypatch.setenv(dl.BACKOFF_ENV, "0.01")
    assert RetryPolicy.from_env().backoff == 0.01


def test_cli_download_resumes_converts_and_reports_failures(server, root, tmp_path):
    """``gptcli download`` as a user runs it: one dropped connection, then conversion; a 404 is one
    line naming the URL, exit 1, no final file."""
    env = {"GPTCLI_HOME": str(tmp_path / "home"), dl.BACKOFF_ENV: "0.01"}
    server.faults[DATA_FILE] = ["drop"]
    proc = run_gptcli("download", "--size", "124M", "--base-url", f"{server.url}/gpt2", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    cache = tmp_path / "home" / "gpt2" / "124M"
    _same_files(root, cache)
    assert (cache / "model.pth").is_file()
    assert "retrying" in proc.stderr and "resuming at" in proc.stderr
    assert "sample with: gptcli sample --model gpt2-124M" in proc.stderr
    assert [r[2] for r in server.gets(DATA_FILE)] == [200, 206]

    n = len(server.requests)
    again = run_gptcli("download", "--size", "124M", "--base-url", f"{server.url}/gpt2", cwd=tmp_path, env=env)
    assert again.returncode == 0 and len(server.requests) == n and "already converted" in again.stderr

    server.faults["hparams.json"] = ["404"]
    fail = run_gptcli("download", "--size", "355M", "--base-url", f"{server.url}/gpt2", "-q", cwd=tmp_path, env=env)
    lines = [x for x in fail.stderr.splitlines() if x.strip()]
    assert fail.returncode == 1 and len(lines) == 1, fail.stderr
    assert f"{server.url}/gpt2/355M/hparams.json: HTTP 404" in lines[0]
    assert not (tmp_path / "home" / "gpt2" / "355M").exists()  # nothing came: no folder is left either


@pytest.mark.slow
def test_acceptance_124m_shape_download_with_a_drop_then_sample(tmp_path_factory):
    """Random weights of GPT-2 124M's exact shape (a 497,759,232-byte data file) over loopback;
    the connection drops half-way through the data file; then sample --model gpt2-124M."""
    from gptcli.config import ModelConfig

    root = tmp_path_factory.mktemp("served124")
    cfg = ModelConfig.from_preset("gpt2-124M")
    write_openai_dir(root / "gpt2" / "124M", cfg, random_openai_tensors(cfg, seed=124))
    work = tmp_path_factory.mktemp("work")
    env = {"GPTCLI_HOME": str(work / "home"), dl.BACKOFF_ENV: "0.01", "NO_PROXY": "127.0.0.1"}
    with FaultServer(root) as server:
        server.faults[DATA_FILE] = ["drop"]
        proc = run_gptcli("download", "--size", "124M", "--base-url", f"{server.url}/gpt2", cwd=work, env=env)
        assert proc.returncode == 0, proc.stderr
        gets = server.gets(DATA_FILE)
    assert [(g[1], g[2]) for g in gets] == [(None, 200), (f"bytes={gets[0][3]}-", 206)]
    assert 0 < gets[0][3] < 497_759_232
    cache = work / "home" / "gpt2" / "124M"
    assert (cache / DATA_FILE).stat().st_size == 497_759_232 and (cache / "model.pth").is_file()
    s = run_gptcli(*BOOK_SAMPLE, "--max-new-tokens", "8", "--seed", "123", cwd=work, env=env)
    assert s.returncode == 0, s.stderr
    assert s.stdout.startswith("Every effort moves you") and len(s.stdout) > len("Every effort moves you")


def test_a_damaged_complete_file_is_fetched_again_and_only_it(server, root, tmp_path):
    out, _ = _download(server, tmp_path / "d")
    (out / "encoder.json").write_bytes(b"{}")  # not the tokenizer's 1,042,301 bytes
    n = len(server.requests)
    _download(server, tmp_path / "d")
    assert [r[0] for r in server.requests[n:]] == ["encoder.json"]
    _same_files(root, out)


def test_a_folder_that_cannot_be_written_is_one_error(server, tmp_path):
    (tmp_path / "f").write_text("a file, not a folder")
    with pytest.raises(DownloadError, match="cannot create the folder"):
        _download(server, tmp_path / "f" / "d")
    assert not server.requests


def test_a_complete_part_file_is_finished_when_the_server_answers_416(server, root, tmp_path):
    # Killed after the last byte was written but before the rename: the Range request for the
    # bytes after the end gets 416 with the file's size, which says the .part file is complete.
    dest = tmp_path / "d"
    dest.mkdir()
    served = root / "gpt2" / "124M" / "hparams.json"
    (dest / ("hparams.json" + dl.PART_SUFFIX)).write_bytes(served.read_bytes())
    out, _ = _download(server, dest)
    _same_files(root, out)
    _no_temporaries(out)
    assert [r[2] for r in server.gets("hparams.json")] == [416]
