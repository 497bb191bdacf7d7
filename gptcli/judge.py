"""The book's LLM-as-judge (section 7.8): a larger model scores each answer of an instruct model
from 0 to 100, as ``generate_model_scores`` and ``query_model`` do.

The request is the book's byte for byte: its prompt around ``format_input``, the model, one user
message, and the options ``seed`` 123, ``temperature`` 0 and ``num_ctx`` 2048, posted to Ollama's
native ``/api/chat``. The book sends no ``stream`` key, so Ollama streams JSON lines; their
``message.content`` pieces are joined as the book joins them (a server that answers one JSON object
reads the same). ``int(reply)`` is the score, and a reply it refuses is counted and kept, not fatal.
Any OpenAI-compatible server (``gptcli serve`` among them) can judge too: the same prompt and
settings, posted to ``/v1/chat/completions``.

Each verdict is appended to a JSON Lines file as it arrives (flushed and fsynced), keyed by a hash
of the prompt, so an interrupted run resumes without asking again for what it has; a last line
torn by a kill is discarded. Only the standard library: judging needs no extra.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gptcli.errors import DataError, GptCliError, UsageError

APIS = ("ollama", "openai")
DEFAULT_URL = "http://localhost:11434"
DEFAULT_MODEL = "llama3"
DEFAULT_API = "ollama"
DEFAULT_TIMEOUT = 300.0  # seconds for each try: a first request waits while Ollama loads the model
DEFAULT_RETRIES = 3
# query_model's options: "required for deterministic responses", as the book says
BOOK_OPTIONS = {"seed": 123, "temperature": 0, "num_ctx": 2048}
API_KEY_ENV = ("GPTCLI_JUDGE_API_KEY", "OPENAI_API_KEY")
RESPONSE_FIELDS = ("instruction", "output", "model_response")
_ENDPOINTS = {"ollama": "/api/chat", "openai": "/v1/chat/completions"}
MAX_BACKOFF = 30.0


class JudgeError(GptCliError):
    """The judge could not be asked or answered something unusable: the message names its URL."""


def judge_prompt(entry: dict[str, Any], json_key: str = "model_response") -> str:
    """``generate_model_scores``'s prompt for one record, character for character."""
    from gptcli.finetune.instruct import format_input

    return (
        f"Given the input `{format_input(entry)}` "
        f"and correct output `{entry['output']}`, "
        f"score the model response `{entry[json_key]}`"
        f" on a scale from 0 to 100, where 100 is the best score. "
        f"Respond with the integer number only."
    )


def score_of(reply: str) -> int | None:
    """The book's ``int(score)``: the score, or None for a reply that is not an integer."""
    try:
        return int(reply)
    except ValueError:
        return None


def prompt_key(prompt: str) -> str:
    """What a verdict is filed under: the prompt's hash (a changed response is a new prompt)."""
    import hashlib

    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()


def read_responses(path: str | Path) -> list[dict[str, Any]]:
    """The records of a responses file (``sample --responses``, the book's
    ``instruction-data-with-response.json``): each needs string ``instruction``, ``output`` and
    ``model_response`` (``input`` may be absent or empty); a bad one is a DataError naming it."""
    from gptcli.finetune.files import json_records

    p = Path(path)
    if p.is_dir():
        raise DataError(f"{p}: is a directory; --responses takes the JSON file sample --responses wrote")
    if not p.exists():
        raise DataError(
            f"{p}: responses file not found (write one with: gptcli sample -c RUN --responses test -o FILE)"
        )
    records = []
    for i, r in enumerate(json_records(p)):
        if not isinstance(r, dict):
            raise DataError(f"{p}: record {i} is not an object")
        for key in RESPONSE_FIELDS:
            if not isinstance(r.get(key), str):
                raise DataError(f"{p}: record {i} has no string {key!r}")
        if not isinstance(r.get("input", ""), str):
            raise DataError(f"{p}: record {i}: 'input' is not a string")
        records.append({**r, "input": r.get("input") or ""})
    if not records:
        raise DataError(f"{p}: no records")
    return records


def _is_loopback(host: str | None) -> bool:
    if host in (None, "", "localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class Judge:
    """Where the judge listens and how to ask it. ``url`` is the server's address (an endpoint's
    full URL is taken as it is); ``timeout`` bounds each try in seconds; ``retries`` more tries
    follow a timeout, a dropped connection or a 5xx/429 answer, ``backoff`` seconds apart, doubling."""

    url: str = DEFAULT_URL
    model: str = DEFAULT_MODEL
    api: str = DEFAULT_API
    timeout: float = DEFAULT_TIMEOUT
    retries: int = DEFAULT_RETRIES
    backoff: float = 1.0
    api_key: str | None = None
    answered: bool = field(default=False, init=False)  # whether it ever answered (then refusals are retried)

    def __post_init__(self) -> None:
        if self.api not in APIS:
            raise UsageError(f"invalid --judge-api: {self.api!r} (choose from {', '.join(APIS)})")
        parts = urllib.parse.urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise UsageError(f"invalid --judge-url: {self.url!r} (an http:// or https:// address)")
        if not self.model:
            raise UsageError("invalid --judge-model: '' (must not be empty)")
        if not self.timeout > 0:
            raise UsageError(f"invalid --judge-timeout: {self.timeout} (must be above 0)")
        if not 0 <= self.retries <= 100:
            raise UsageError(f"invalid --judge-retries: {self.retries} (must be from 0 to 100)")
        if self.api == "openai" and self.api_key is None:
            self.api_key = next((os.environ[k] for k in API_KEY_ENV if os.environ.get(k)), None)

    @property
    def endpoint(self) -> str:
        path = urllib.parse.urlsplit(self.url).path.rstrip("/")
        want = _ENDPOINTS[self.api]
        if path.endswith(want):
            return self.url
        if self.api == "openai" and path.endswith("/v1"):  # https://api.openai.com/v1
            return self.url.rstrip("/") + "/chat/completions"
        return self.url.rstrip("/") + want

    def payload(self, prompt: str) -> dict[str, Any]:
        """The request body: query_model's dict for Ollama; the same settings in OpenAI's words."""
        messages = [{"role": "user", "content": prompt}]
        if self.api == "ollama":
            return {"model": self.model, "messages": messages, "options": dict(BOOK_OPTIONS)}
        return {
            "model": self.model,
            "messages": messages,
            "seed": BOOK_OPTIONS["seed"],
            "temperature": BOOK_OPTIONS["temperature"],
            "stream": False,
        }

    def ask(self, prompt: str, *, on_retry: Callable[[str], None] | None = None) -> str:
        """The judge's reply to ``prompt``, retried with backoff over passing failures."""
        delay = self.backoff
        for attempt in range(self.retries + 1):
            try:
                reply = self._ask_once(prompt)
                self.answered = True
                return reply
            except _Passing as e:
                if attempt == self.retries:
                    tries = f"{self.retries + 1} tr{'ies' if self.retries else 'y'}"
                    raise JudgeError(f"the judge at {self.endpoint} failed {tries}: {e}") from None
                if on_retry is not None:
                    on_retry(f"the judge at {self.endpoint}: {e}; trying again in {delay:g}s")
                time.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF)
        raise AssertionError("unreachable")

    def _ask_once(self, prompt: str) -> str:
        # urllib, as query_model (imported here: `gptcli --help` reads this module for its defaults)
        import urllib.error
        import urllib.request
        from http.client import HTTPException

        body = json.dumps(self.payload(prompt)).encode("utf-8")  # the book's json.dumps(data)
        request = urllib.request.Request(self.endpoint, data=body, method="POST")
        request.add_header("Content-Type", "application/json")
        if self.api_key:
            request.add_header("Authorization", f"Bearer {self.api_key}")
        # A proxy from the environment must not take a judge on this machine's loopback
        loopback = _is_loopback(urllib.parse.urlsplit(self.endpoint).hostname)
        opener = urllib.request.build_opener(*([urllib.request.ProxyHandler({})] if loopback else []))
        try:
            with opener.open(request, timeout=self.timeout) as response:
                return self._read(response)
        except urllib.error.HTTPError as e:
            raise self._http_error(e) from None
        except urllib.error.URLError as e:
            raise self._url_error(e.reason) from None
        except (TimeoutError, OSError, HTTPException) as e:
            raise self._url_error(e) from None

    def _read(self, response: Any) -> str:
        if self.api == "openai":
            obj = self._json(response.read())
            try:
                content = obj["choices"][0]["message"]["content"]
            except (KeyError, IndexError, TypeError):
                raise JudgeError(f"the judge at {self.endpoint} answered without choices[0].message.content") from None
            if not isinstance(content, str):
                raise JudgeError(f"the judge at {self.endpoint} answered a content that is not text")
            return content
        # query_model: one JSON object a line, message.content joined; the last says "done"
        text, done = "", False
        while True:
            line = response.readline()
            if not line:
                break
            if not line.endswith(b"\n") and not done:  # cut mid-line: keep reading would block or end
                try:
                    obj = json.loads(line)
                except ValueError:
                    raise _Passing("the connection dropped in the middle of the reply") from None
            elif not line.strip():
                continue
            else:
                obj = self._json(line)
            if not isinstance(obj, dict):
                raise JudgeError(f"the judge at {self.endpoint} answered JSON that is not an object")
            if "error" in obj:
                raise JudgeError(f"the judge at {self.endpoint} answered: {obj['error']}")
            message = obj.get("message")
            if isinstance(message, dict) and isinstance(message.get("content"), str):
                text += message["content"]
            done = done or obj.get("done") is True
        if not done:
            raise _Passing("the connection dropped before the reply was done")
        return text

    def _json(self, raw: bytes) -> Any:
        try:
            return json.loads(raw)
        except ValueError:
            shown = raw[:80].decode("utf-8", "replace")
            raise JudgeError(
                f"the judge at {self.endpoint} answered something that is not {self.api}'s JSON: {shown!r}"
                + ("" if self.api == "openai" else " (an OpenAI-compatible server? --judge-api openai)")
            ) from None

    def _http_error(self, e: Any) -> Exception:
        from http.client import HTTPException

        try:
            raw = e.read()
        except (OSError, HTTPException):
            raw = b""
        detail = raw.decode("utf-8", "replace").strip()
        try:
            obj = json.loads(raw)
            err = obj.get("error") if isinstance(obj, dict) else None
            detail = err.get("message", str(err)) if isinstance(err, dict) else (err or detail)
        except ValueError:
            pass
        detail = re.sub(r"\s+", " ", str(detail))[:200] or (e.reason or "")
        if e.code == 429 or e.code >= 500:
            return _Passing(f"HTTP {e.code} {detail}".rstrip())
        where = f"the judge at {self.endpoint} answered HTTP {e.code}"
        if e.code == 404 and self.api == "ollama" and "model" in detail:
            return JudgeError(f"{where}: {detail}; fetch the model with: ollama pull {self.model}")
        if e.code in (401, 403):
            keys = " or ".join(API_KEY_ENV)
            return JudgeError(f"{where}: {detail}; put the server's API key in {keys}")
        if e.code == 404:
            other = "openai" if self.api == "ollama" else "ollama"
            return JudgeError(f"{where}: {detail} (a server of the other API? --judge-api {other})")
        return JudgeError(f"{where}: {detail}")

    def _url_error(self, reason: Any) -> Exception:
        from http.client import HTTPException

        if isinstance(reason, TimeoutError) or "timed out" in str(reason):
            return _Passing(f"no reply within {self.timeout:g}s (--judge-timeout)")
        if isinstance(reason, ConnectionRefusedError) and not self.answered:
            start = "start Ollama with: ollama serve (and ollama pull llama3)" if self.api == "ollama" else ""
            start = start.replace("llama3", self.model)
            return JudgeError(
                f"cannot reach the judge at {self.endpoint} (connection refused): "
                + (start or "start the OpenAI-compatible server (gptcli serve, say)")
                + ", or give its address with --judge-url"
            )
        if isinstance(reason, (ConnectionError, HTTPException)):
            return _Passing(f"the connection dropped ({type(reason).__name__})")
        return JudgeError(f"cannot reach the judge at {self.endpoint} ({reason}); check --judge-url")


class _Passing(Exception):
    """A failure worth another try: a timeout, a dropped connection, a busy or failing server."""


# ---------------------------------------------------------------------------------------------
# The verdicts file


def read_verdicts(path: str | Path) -> dict[str, dict[str, Any]]:
    """The verdicts already in ``path`` by prompt key (none if it does not exist). A last line
    without its newline was torn by a kill: it is cut off the file, to be asked again."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise DataError(f"{p}: cannot read the judge's verdicts ({e.strerror or e})") from None
    end = raw.rfind(b"\n") + 1
    if end < len(raw):
        with open(p, "r+b") as f:
            f.truncate(end)
    verdicts = {}
    for n, line in enumerate(raw[:end].split(b"\n")[:-1], 1):
        try:
            obj = json.loads(line)
        except ValueError:
            obj = None
        if not (isinstance(obj, dict) and isinstance(obj.get("key"), str) and isinstance(obj.get("reply"), str)):
            raise DataError(f"{p}: line {n} is not a verdict this command wrote; move the file away to judge afresh")
        verdicts[obj["key"]] = obj
    return verdicts


@dataclass
class JudgeResult:
    """The verdicts of one judging: ``scores`` the integer ones, in record order; ``unscored``
    (record index, raw reply) for the replies that are not integers; ``asked`` how many prompts
    this run sent (the rest were in the file already)."""

    records: int
    scores: list[int]
    unscored: list[tuple[int, str]]
    asked: int
    path: Path

    @property
    def average(self) -> float | None:
        return sum(self.scores) / len(self.scores) if self.scores else None


def judge_records(
    records: Sequence[dict[str, Any]],
    judge: Judge,
    path: str | Path,
    *,
    on_verdict: Callable[[int, dict[str, Any]], None] | None = None,
    on_resume: Callable[[int], None] | None = None,
    on_retry: Callable[[str], None] | None = None,
) -> JudgeResult:
    """Score each record (instruction, input, output, model_response) with ``judge``, appending
    each verdict to ``path`` as it arrives; verdicts already there are not asked again. When all
    are in, the file is rewritten in record order without verdicts of other responses."""
    from gptcli.fsutil import FileLock, atomic_write

    p = Path(path)
    prompts = [judge_prompt(r) for r in records]
    keys = [prompt_key(q) for q in prompts]
    p.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(p.with_name(p.name + ".lock"), remove_on_release=True)
    if not lock.acquire(blocking=False):
        raise JudgeError(f"{p}: another gptcli eval --judge is writing it; wait for it to finish")
    try:
        verdicts = read_verdicts(p)
        if on_resume is not None and any(k in verdicts for k in keys):
            on_resume(len({k for k in keys if k in verdicts}))
        asked, f = 0, None
        try:
            for i, (prompt, key) in enumerate(zip(prompts, keys, strict=True)):
                if key in verdicts:
                    continue
                reply = judge.ask(prompt, on_retry=on_retry)
                asked += 1
                verdict = {"index": i, "key": key, "score": score_of(reply), "reply": reply, "judge": judge.model}
                if f is None:  # opened at the first verdict: a judge that never answers leaves no file
                    f = open(p, "a", encoding="utf-8")  # closed below
                f.write(json.dumps(verdict, ensure_ascii=False) + "\n")
                f.flush()
                os.fsync(f.fileno())
                verdicts[key] = verdict
                if on_verdict is not None:
                    on_verdict(i, verdict)
        finally:
            if f is not None:
                f.close()
        ordered = [dict(verdicts[k], index=i) for i, k in enumerate(keys)]
        tidy = "".join(json.dumps(v, ensure_ascii=False) + "\n" for v in ordered)
        if (p.read_text(encoding="utf-8") if p.exists() else "") != tidy:
            atomic_write(p, tidy)
    finally:
        lock.release()
    scores = [score_of(v["reply"]) for v in ordered]
    return JudgeResult(
        records=len(records),
        scores=[s for s in scores if s is not None],
        unscored=[(i, v["reply"]) for i, (s, v) in enumerate(zip(scores, ordered, strict=True)) if s is None],
        asked=asked,
        path=p,
    )
