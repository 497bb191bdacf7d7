"""A fake Hugging Face Hub on 127.0.0.1: the routes huggingface_hub 2.x calls to download a file
and to push a folder, answering as the Hub does (the headers it reads, its error codes).

Downloads: ``HEAD``/``GET /{repo}/resolve/{revision}/{file}`` with ``X-Repo-Commit``, ``ETag``
and ``Content-Length``; ``Range`` requests answered with 206. ``cut_once`` names files whose
first GET drops the connection halfway through the body. No ``X-Xet-Hash`` header is ever sent,
so huggingface_hub downloads over plain HTTP.

Uploads: ``POST /api/repos/create``, ``/api/validate-yaml``, ``/api/models/{repo}/preupload/{rev}``
(every file "regular", so its bytes travel base64-encoded in the commit: no LFS or Xet storage
is involved) and ``/api/models/{repo}/commit/{rev}`` (NDJSON), each needing the token.

Every request is recorded in ``requests`` as (method, path, Range header).
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse


@dataclass
class Repo:
    files: dict[str, bytes]
    commit: str = ""
    private: bool = False

    def __post_init__(self) -> None:
        if not self.commit:
            digest = hashlib.sha1(b"".join(k.encode() + v for k, v in sorted(self.files.items())))
            self.commit = digest.hexdigest()


@dataclass
class FakeHub:
    repos: dict[str, Repo] = field(default_factory=dict)
    token: str = "hf_fake_write_token"
    cut_once: set[str] = field(default_factory=set)
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)
    url: str = ""

    def add_folder(self, repo_id: str, folder: Path) -> Repo:
        repo = Repo({p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()})
        self.repos[repo_id] = repo
        return repo

    def start(self) -> FakeHub:
        hub = self

        class Handler(_Handler):
            fake = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    fake: FakeHub

    def log_message(self, *args) -> None:  # quiet
        pass

    # -- helpers ---------------------------------------------------------------------------

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None, *, head=False) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _json(self, status: int, obj, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), {"Content-Type": "application/json", **(headers or {})})

    def _error(self, status: int, code: str, message: str, *, head=False, extra=None) -> None:
        headers = {"X-Error-Code": code, "X-Error-Message": message, **(extra or {})}
        if head:
            self._send(status, b"", headers, head=True)
        else:
            self._json(status, {"error": message}, headers)

    def _body(self) -> bytes:
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _authorised(self) -> bool:
        return self.headers.get("Authorization") == f"Bearer {self.fake.token}"

    def _record(self) -> str:
        path = unquote(urlparse(self.path).path)
        self.fake.requests.append((self.command, path, self.headers.get("Range")))
        return path

    # -- downloads -------------------------------------------------------------------------

    def do_HEAD(self) -> None:
        self._resolve(self._record(), head=True)

    def do_GET(self) -> None:
        path = self._record()
        if "/resolve/" in path:
            return self._resolve(path, head=False)
        if path.startswith("/api/models/"):
            repo = self.fake.repos.get(path[len("/api/models/") :].split("/revision/")[0])
            if repo is None:
                return self._error(404, "RepoNotFound", "Repository not found")
            return self._json(200, {"id": path, "sha": repo.commit, "siblings": [{"rfilename": f} for f in repo.files]})
        self._error(404, "NotFound", "no such route")

    def _resolve(self, path: str, *, head: bool) -> None:
        repo_id, _, rest = path.lstrip("/").partition("/resolve/")
        revision, _, name = rest.partition("/")
        repo = self.fake.repos.get(repo_id)
        if repo is not None and repo.private and not self._authorised():
            repo = None  # a private repository is not there for a request without its token
        if repo is None:  # the Hub answers 401 for a repository it will not show (or that does not exist)
            return self._error(401, "RepoNotFound", "Repository Not Found", head=head)
        if revision not in ("main", repo.commit):
            return self._error(404, "RevisionNotFound", "Invalid rev id", head=head)
        commit = {"X-Repo-Commit": repo.commit}
        if name not in repo.files:
            return self._error(404, "EntryNotFound", "Entry not found", head=head, extra=commit)
        data = repo.files[name]
        headers = {**commit, "ETag": f'"{hashlib.sha256(data).hexdigest()}"', "Accept-Ranges": "bytes"}
        if head:
            return self._send(200, data, headers, head=True)
        start = 0
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes=") and rng.endswith("-"):
            start = int(rng[len("bytes=") : -1])
        body = data[start:]
        self.send_response(206 if start else 200)
        for k, v in headers.items():
            self.send_header(k, v)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if name in self.fake.cut_once:  # half the body, then the connection drops
            self.fake.cut_once.discard(name)
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)
            return
        self.wfile.write(body)

    # -- uploads ---------------------------------------------------------------------------

    def do_POST(self) -> None:
        path = self._record()
        body = self._body()
        if not self._authorised():
            return self._error(401, "Unauthorized", "Invalid credentials in Authorization header")
        if path == "/api/repos/create":
            req = json.loads(body)
            repo_id = f"{req['organization']}/{req['name']}" if req.get("organization") else req["name"]
            url = {"url": f"{self.fake.url}/{repo_id}"}
            if repo_id in self.fake.repos:
                return self._json(409, {"error": "You already created this model repo", **url})
            self.fake.repos[repo_id] = Repo({}, commit="0" * 40, private=req.get("visibility") == "private")
            return self._json(200, url)
        if path == "/api/validate-yaml":
            return self._json(200, {"errors": [], "warnings": []})
        if path.startswith("/api/models/") and "/preupload/" in path:
            files = json.loads(body)["files"]
            return self._json(
                200,
                {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]},
            )
        if path.startswith("/api/models/") and "/commit/" in path:
            repo_id = path[len("/api/models/") :].split("/commit/")[0]
            repo = self.fake.repos.get(repo_id)
            if repo is None:
                return self._error(404, "RepoNotFound", "Repository not found")
            for line in body.splitlines():
                item = json.loads(line)
                if item["key"] == "file":
                    value = item["value"]
                    assert value.get("encoding") == "base64"
                    repo.files[value["path"]] = base64.b64decode(value["content"])
            repo.commit = hashlib.sha1(body).hexdigest()
            return self._json(
                200, {"commitUrl": f"{self.fake.url}/{repo_id}/commit/{repo.commit}", "commitOid": repo.commit}
            )
        self._error(404, "NotFound", "no such route")
