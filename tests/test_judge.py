"""``gptcli eval --judge``: the book's LLM-as-judge (section 7.8) against a fake judge on the
loopback: the request is the book's own (its ``query_model`` and ``generate_model_scores`` are the
oracle), the scores and the average are the book's, and timeouts, dropped connections, malformed
replies, an unreachable judge and an interrupted run are each handled."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from typer.testing import CliRunner

from gptcli import judge as jd
from gptcli.cli import app
from gptcli.errors import DataError

from .finetune_helpers import RECORDS

# Each record's model_response names the reply the fake judge gives it.
ANSWERED = [dict(r, model_response=f"answer {i}") for i, r in enumerate(RECORDS)]


class FakeJudge:
    """A judge on 127.0.0.1 that records every request and answers as ``script(n, prompt)`` says:
    ("say", text), ("slow", seconds, text), ("drop",) (close without a reply), ("cut", text) (the
    first streamed line, then close) or ("status", code, body). Ollama's replies are streamed as
    Ollama streams them: one JSON line a piece of the text, then a "done" line."""

    def __init__(self, script, *, api: str = "ollama"):
        self.script, self.api, self.requests = script, api, []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                fake.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                prompt = json.loads(body)["messages"][0]["content"]
                action = fake.script(len(fake.requests) - 1, prompt)
                try:
                    fake.reply(self, action)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up waiting

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def reply(self, h: BaseHTTPRequestHandler, action: tuple) -> None:
        kind = action[0]
        if kind == "drop":
            h.close_connection = True
            return
        if kind == "status":
            h.send_response(action[1])
            h.send_header("Content-Type", "application/json")
            h.end_headers()
            h.wfile.write(json.dumps(action[2]).encode())
            return
        if kind == "slow":
            time.sleep(action[1])
        text = action[-1]
        h.send_response(200)
        if self.api == "openai":
            h.send_header("Content-Type", "application/json")
            h.end_headers()
            h.wfile.write(json.dumps({"choices": [{"message": {"role": "assistant", "content": text}}]}).encode())
            return
        h.send_header("Content-Type", "application/x-ndjson")
        h.end_headers()
        pieces = [text[i : i + 2] for i in range(0, len(text), 2)] or [""]
        for piece in pieces:
            h.wfile.write(json.dumps({"message": {"role": "assistant", "content": piece}, "done": False}).encode())
            h.wfile.write(b"\n")
            h.wfile.flush()
            if kind == "cut":
                return
        h.wfile.write(json.dumps({"message": {"role": "assistant", "content": ""}, "done": True}).encode() + b"\n")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def replies(*texts: str):
    """A script: record i (by its model_response "answer i") gets ``texts[i]``."""

    def script(n, prompt):
        i = int(prompt.split("score the model response `answer ")[1].split("`")[0])
        return ("say", texts[i])

    return script


SCORES = ("85", "70", "Eighty", " 60\n", "0")  # one reply is not an integer; int() takes " 60\n"


@pytest.fixture
def fake():
    made = []

    def make(script, **kw):
        made.append(FakeJudge(script, **kw))
        return made[-1]

    yield make
    for f in made:
        f.close()


def _book_requests(fake_judge, records):
    """What the book's own generate_model_scores sends and returns against ``fake_judge``."""
    from llms_from_scratch import ch07

    original = ch07.query_model
    try:
        ch07.query_model = lambda prompt, model="llama3": original(prompt, model, url=f"{fake_judge.url}/api/chat")
        scores = ch07.generate_model_scores(records, "model_response")
    finally:
        ch07.query_model = original
    return scores


def test_the_request_and_the_scores_are_the_books(fake, tmp_path, capsys):
    book = fake(replies(*SCORES))
    book_scores = _book_requests(book, ANSWERED)
    ours = fake(replies(*SCORES))
    res = jd.judge_records(ANSWERED, jd.Judge(url=ours.url), tmp_path / "v.jsonl")
    assert len(ours.requests) == len(book.requests) == len(ANSWERED)
    for mine, theirs in zip(ours.requests, book.requests, strict=True):
        assert mine["path"] == theirs["path"] == "/api/chat"
        assert mine["body"] == theirs["body"]  # byte for byte: prompt, model, options, no stream key
        assert mine["headers"]["Content-Type"] == "application/json"
    body = json.loads(ours.requests[2]["body"])
    assert body["model"] == "llama3" and body["options"] == {"seed": 123, "temperature": 0, "num_ctx": 2048}
    assert "stream" not in body  # the book's query_model reads Ollama's stream, as we do
    assert body["messages"][0]["content"].startswith("Given the input `Below is an instruction")
    assert res.scores == book_scores == [85, 70, 60, 0]
    assert res.unscored == [(2, "Eighty")] and res.asked == 5
    assert res.average == pytest.approx(sum(book_scores) / len(book_scores))
    lines = [json.loads(x) for x in (tmp_path / "v.jsonl").read_text().splitlines()]
    assert [(v["index"], v["score"], v["reply"]) for v in lines] == [
        (0, 85, "85"),
        (1, 70, "70"),
        (2, None, "Eighty"),
        (3, 60, " 60\n"),
        (4, 0, "0"),
    ]


def test_the_prompt_is_the_books_for_every_record():
    from llms_from_scratch import ch07

    entry = dict(RECORDS[0], model_response="The mouse was chased.")
    expected = (
        f"Given the input `{ch07.format_input(entry)}` and correct output `{entry['output']}`, score the model "
        f"response `{entry['model_response']}` on a scale from 0 to 100, where 100 is the best score. "
        "Respond with the integer number only."
    )
    assert jd.judge_prompt(entry) == expected
    no_input = dict(RECORDS[1], model_response="Paris.")
    assert "### Input" not in jd.judge_prompt(no_input) and ch07.format_input(no_input) in jd.judge_prompt(no_input)


def test_an_openai_compatible_judge_gets_the_same_prompt_and_settings(fake, tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("GPTCLI_JUDGE_API_KEY", "sk-test")
    server = fake(replies(*SCORES), api="openai")
    res = jd.judge_records(ANSWERED, jd.Judge(url=server.url, api="openai", model="m"), tmp_path / "v.jsonl")
    assert res.scores == [85, 70, 60, 0]
    first = server.requests[0]
    assert first["path"] == "/v1/chat/completions" and first["headers"]["Authorization"] == "Bearer sk-test"
    body = json.loads(first["body"])
    assert body == {
        "model": "m",
        "messages": [{"role": "user", "content": jd.judge_prompt(ANSWERED[0])}],
        "seed": 123,
        "temperature": 0,
        "stream": False,
    }
    # a base URL that ends in /v1 (OpenAI's own) or the endpoint itself is taken as it is
    assert jd.Judge(url="https://api.example.com/v1", api="openai").endpoint == (
        "https://api.example.com/v1/chat/completions"
    )
    assert jd.Judge(url=f"{server.url}/api/chat").endpoint == f"{server.url}/api/chat"


def test_slow_replies_dropped_connections_and_5xx_are_tried_again(fake, tmp_path):
    plan = {0: ("slow", 1.0, "90"), 1: ("drop",), 2: ("cut", "7777"), 3: ("status", 503, {"error": "busy"})}
    server = fake(lambda n, prompt: plan.get(n, ("say", "50")))
    retries = []
    judge = jd.Judge(url=server.url, timeout=0.3, retries=4, backoff=0.01)
    res = jd.judge_records(ANSWERED[:3], judge, tmp_path / "v.jsonl", on_retry=retries.append)
    # record 0: a timeout, a connection closed without a reply, one cut mid-stream, a 503, then its score
    assert len(server.requests) == 7 and res.scores == [50, 50, 50]
    assert len(retries) == 4 and "no reply within 0.3s" in retries[0] and "dropped" in retries[1]
    assert "dropped" in retries[2] and "HTTP 503 busy" in retries[3]
    bodies = [r["body"] for r in server.requests]
    assert len(set(bodies[:5])) == 1 and bodies[4] != bodies[5]  # the same request again, for record 0


def test_retries_are_bounded(fake, tmp_path):
    server = fake(lambda n, prompt: ("drop",))
    judge = jd.Judge(url=server.url, retries=2, backoff=0.01)
    with pytest.raises(jd.JudgeError, match=r"failed 3 tries: the connection dropped"):
        jd.judge_records(ANSWERED, judge, tmp_path / "v.jsonl")
    assert len(server.requests) == 3


def test_an_interrupted_run_asks_only_for_what_it_lacks(fake, tmp_path):
    server = fake(replies(*SCORES))
    out = tmp_path / "v.jsonl"

    def stop_after_two(i, verdict):
        if i == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        jd.judge_records(ANSWERED, jd.Judge(url=server.url), out, on_verdict=stop_after_two)
    assert len(server.requests) == 2 and len(out.read_text().splitlines()) == 2
    # a kill in the middle of a write leaves a torn last line: it is dropped and asked again
    with open(out, "a") as f:
        f.write('{"index": 2, "key": "abc", "sco')
    resumed = []
    res = jd.judge_records(ANSWERED, jd.Judge(url=server.url), out, on_resume=resumed.append)
    assert resumed == [2] and len(server.requests) == 5 and res.asked == 3
    assert res.scores == [85, 70, 60, 0]
    assert [json.loads(x)["index"] for x in out.read_text().splitlines()] == [0, 1, 2, 3, 4]
    # all judged: nothing asked again; a changed response is a new prompt, so it alone is asked
    assert jd.judge_records(ANSWERED, jd.Judge(url=server.url), out).asked == 0 and len(server.requests) == 5
    changed = [*ANSWERED[:4], dict(ANSWERED[4], model_response="answer 1")]
    res = jd.judge_records(changed, jd.Judge(url=server.url), out)
    assert res.asked == 1 and res.scores == [85, 70, 60, 70] and len(out.read_text().splitlines()) == 5


def test_a_verdicts_file_that_is_not_ours_is_refused(tmp_path):
    out = tmp_path / "v.jsonl"
    out.write_text('{"index": 0}\n')
    with pytest.raises(DataError, match=r"v.jsonl: line 1 is not a verdict"):
        jd.read_verdicts(out)


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def cli(*args, expect=0, env=None):
    res = CliRunner(env=env).invoke(app, [str(a) for a in args])
    assert res.exit_code == expect, (res.output, res.exception)
    if expect:
        lines = [line for line in res.output.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:"), res.output
    return res.output


@pytest.fixture
def responses(tmp_path):
    path = tmp_path / "instruction-data-with-response.json"
    path.write_text(json.dumps(ANSWERED, indent=4))
    return path


def test_cli_prints_the_books_lines_and_writes_the_verdicts(fake, responses):
    server = fake(replies(*SCORES))
    out = cli("eval", "--judge", "--responses", responses, "--judge-url", server.url, "-q")
    assert out.splitlines()[-2:] == ["Number of scores: 4 of 5", f"Average score: {(85 + 70 + 60 + 0) / 4:.2f}"]
    assert "record 2: Could not convert score: Eighty" in out  # a warning (stderr), as the book prints it
    verdicts = responses.with_name("instruction-data-with-response.judge-llama3.jsonl")
    assert len(verdicts.read_text().splitlines()) == 5
    res = CliRunner().invoke(
        app, ["eval", "--judge", "--responses", str(responses), "--judge-url", server.url, "--json"]
    )
    result = json.loads(res.stdout)
    assert result["scores"] == 4 and result["records"] == 5 and result["asked"] == 0
    assert result["average"] == pytest.approx(53.75) and result["unscored"] == [{"index": 2, "reply": "Eighty"}]
    assert len(server.requests) == 5
    run = responses.parent / "run"
    run.mkdir()
    cli("eval", "--judge", "-c", run, "--responses", responses, "--judge-url", server.url, "-q")
    assert (run / "eval" / "judge-llama3-instruction-data-with-response.jsonl").read_text() == verdicts.read_text()
    assert len(server.requests) == 10


def test_a_judge_that_fails_midway_keeps_what_it_judged(fake, responses):
    server = fake(lambda n, prompt: ("say", "75") if n < 2 else ("drop",))
    args = ["eval", "--judge", "--responses", str(responses), "--judge-url", server.url, "--judge-retries", "1", "-q"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 1 and res.stdout == ""
    assert f"error: the judge at {server.url}/api/chat failed 2 tries: the connection dropped" in res.stderr
    assert "2 of 5 verdicts kept in" in res.stderr and "Traceback" not in res.stderr
    assert len(server.requests) == 4


def test_cli_errors_are_one_line(fake, responses, tmp_path):
    port = _closed_port()
    out = cli("eval", "--judge", "--responses", responses, "--judge-url", f"http://127.0.0.1:{port}", "-q", expect=1)
    assert f"http://127.0.0.1:{port}/api/chat" in out and "ollama serve" in out and "ollama pull llama3" in out
    assert not responses.with_name("instruction-data-with-response.judge-llama3.jsonl").exists()
    missing = fake(lambda n, p: ("status", 404, {"error": "model 'llama3' not found, try pulling it first"}))
    out = cli("eval", "--judge", "--responses", responses, "--judge-url", missing.url, "-q", expect=1)
    assert "not found" in out and "ollama pull llama3" in out
    never = fake(lambda n, p: ("say", "I cannot score this."))
    res = CliRunner().invoke(app, ["eval", "--judge", "--responses", str(responses), "--judge-url", never.url, "-q"])
    assert res.exit_code == 1 and res.stdout == "Number of scores: 0 of 5\n"
    assert "error: none of the judge's 5 replies is an integer (the first: 'I cannot score this.')" in res.stderr
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([ANSWERED[0], {"instruction": "x", "output": "y"}]))
    assert f"{bad}: record 1 has no string 'model_response'" in cli("eval", "--judge", "--responses", bad, expect=2)
    assert "--judge-url goes with --judge" in cli("eval", "x.txt", "--judge-url", "http://h", expect=2)
    assert "no FILE, --model" in cli("eval", "--judge", "x.txt", expect=2)
    assert "invalid --judge-url" in cli("eval", "--judge", "--responses", responses, "--judge-url", "h:1", expect=2)
    assert "invalid --judge-timeout" in cli("eval", "--judge", "--judge-timeout", "0", expect=2)
    assert "nowhere: checkpoint or run directory not found" in cli(
        "eval", "--judge", "-c", tmp_path / "nowhere", "--responses", responses, expect=2
    )


def test_a_run_is_judged_on_its_own_test_split(fake, tmp_path, monkeypatch):
    """-c RUN: the run answers its test split as sample --responses does (kept in <run>/eval/ and
    reused), and the judge scores those answers."""
    monkeypatch.setattr("gptcli.settings.sample.INSTRUCT_MAX_NEW_TOKENS", 6)  # the book's 256, cut for speed
    import torch

    from gptcli import checkpoint as ckpt
    from gptcli.commands.finetune import finetune_command
    from gptcli.config import ModelConfig
    from gptcli.model import GPT

    from .finetune_helpers import BOOK_CFG

    torch.manual_seed(0)
    cfg = ModelConfig(**dict(BOOK_CFG, context_length=48))
    base = ckpt.atomic_save(ckpt.weights_checkpoint(cfg, GPT(cfg).state_dict()), tmp_path / "base.pth")
    data = tmp_path / "data.json"
    data.write_text(json.dumps(RECORDS * 4))
    run = tmp_path / "ins"
    common = dict(init=str(base), epochs=1, batch_size=4, eval_iter=1, lr=1e-3, device="cpu", eval_freq=100)
    finetune_command(dict(kind="instruct", data=str(data), sample_tokens=2, **common), out=run)
    server = fake(lambda n, prompt: ("say", str(10 * (n + 1))))
    out = cli("eval", "--judge", "-c", run, "--judge-url", server.url, "-q")
    written = sorted((run / "eval").glob("test-responses-*.json"))
    assert len(written) == 1
    answers = json.loads(written[0].read_text())
    sampled = tmp_path / "sampled.json"
    cli("sample", "-c", run, "--responses", "test", "-o", sampled, "-q")
    assert answers == json.loads(sampled.read_text())  # what sample --responses test writes
    n = len(answers)
    assert [r["body"] for r in server.requests] == [
        json.dumps(jd.Judge().payload(jd.judge_prompt(a))).encode() for a in answers
    ]
    assert out.splitlines()[-2:] == [f"Number of scores: {n} of {n}", f"Average score: {5 * (n + 1):.2f}"]
    assert (run / "eval" / "judge-llama3.jsonl").is_file()
    cli("eval", "--judge", "-c", run, "--judge-url", server.url, "-q")  # all reused: nothing asked again
    assert len(server.requests) == n


def test_ctrl_c_keeps_what_is_judged(fake, responses, tmp_path):
    """The installed gptcli, interrupted while the judge thinks over the third record, keeps the
    first two; started again it asks only for the other three."""
    import signal
    import subprocess

    from .conftest import gptcli_exe

    waiting = threading.Event()

    def script(n, prompt):
        if n == 2 and not waiting.is_set():
            waiting.set()
            return ("slow", 30, "1")
        return ("say", "42")

    server = fake(script)
    cmd = [*gptcli_exe(), "eval", "--judge", "--responses", str(responses), "--judge-url", server.url]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert waiting.wait(60)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr
    assert "2 of 5 verdicts kept" in stderr and "Traceback" not in stderr
    verdicts = responses.with_name("instruction-data-with-response.judge-llama3.jsonl")
    assert len(verdicts.read_text().splitlines()) == 2
    again = CliRunner().invoke(app, cmd[len(gptcli_exe()) :])
    assert again.exit_code == 0, again.output
    assert "resuming: 2 of 5 already judged" in again.stderr
    assert again.stdout.splitlines() == ["Number of scores: 5 of 5", "Average score: 42.00"]
    assert len(server.requests) == 6  # 3 before the interruption (one unanswered), then the other 3
