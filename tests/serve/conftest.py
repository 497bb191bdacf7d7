"""Tiny models and runs made here, each served by a real uvicorn on 127.0.0.1 (a free port) in a
thread of the test process; the command itself runs as a subprocess in test_serve_command.py."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("fastapi", reason="gptcli serve needs the serve extra: pip install 'gptcli[serve]'")
pytest.importorskip("uvicorn", reason="gptcli serve needs the serve extra: pip install 'gptcli[serve]'")
pytest.importorskip("openai", reason="the API tests use the official openai client (the dev extra)")

from gptcli import checkpoint as ckpt  # noqa: E402
from gptcli.config import ModelConfig  # noqa: E402
from gptcli.model import GPT  # noqa: E402
from tests.finetune_helpers import RECORDS  # noqa: E402

TINY = dict(vocab_size=50257, context_length=64, emb_dim=32, n_heads=4, n_layers=2, drop_rate=0.0, qkv_bias=False)
KEY = "test-key"


def save_base(path: Path, **kw) -> Path:
    torch.manual_seed(0)
    cfg = ModelConfig(**{**TINY, **kw})
    return ckpt.atomic_save(ckpt.weights_checkpoint(cfg, GPT(cfg).state_dict()), path)


@pytest.fixture(scope="session")
def runs(tmp_path_factory) -> Path:
    """base.pth (a plain model), ins/ (a LoRA instruct run) and cls/ (a LoRA classify run)."""
    from gptcli.commands.finetune import finetune_command

    root = tmp_path_factory.mktemp("serve_runs")
    base = save_base(root / "base.pth")
    data = root / "data.json"
    data.write_text(json.dumps(RECORDS * 2), encoding="utf-8")
    rows = ["Label,Text"] + [
        f"{'spam' if i % 3 == 0 else 'ham'},{'win cash' if i % 3 == 0 else 'lunch'} {i}" for i in range(20)
    ]
    (root / "d.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    common = dict(init=str(base), epochs=1, batch_size=2, eval_iter=1, lr=1e-2, device="cpu", eval_freq=2, lora_rank=2)
    finetune_command(
        dict(kind="instruct", data=str(data), lora_alpha=4.0, sample_tokens=3, **common), out=root / "ins", quiet=True
    )
    finetune_command(dict(kind="classify", data=str(root / "d.csv"), **common), out=root / "cls", quiet=True)
    return root


class Served:
    """A server in a thread: ``url``, ``served`` (the ServedModel) and ``client()``."""

    def __init__(self, checkpoint: Path, *, api_key: str | None = KEY, **settings):
        import uvicorn

        from gptcli.commands.serve import load_served
        from gptcli.serve.api import create_app
        from gptcli.settings.serve import ServeSettings

        s = ServeSettings(checkpoint=checkpoint, port=0, device="cpu", api_key=api_key, **settings)
        self.served = load_served(s)
        self.api_key = api_key
        app = create_app(self.served, api_key=api_key, cors_origin=s.cors_origin)
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    def client(self, **kw):
        import openai

        return openai.OpenAI(base_url=self.url + "/v1", api_key=self.api_key or "none", max_retries=0, **kw)

    @property
    def name(self) -> str:
        return self.served.name

    def close(self) -> None:
        self.server.should_exit = True
        if self.served.engine is not None:
            self.served.engine.stop()
        self.thread.join(10)


@pytest.fixture(scope="session")
def base_server(runs):
    s = Served(runs / "base.pth", max_batch=16, max_queue=64)
    yield s
    s.close()


@pytest.fixture(scope="session")
def instruct_server(runs):
    s = Served(runs / "ins")
    yield s
    s.close()


@pytest.fixture(scope="session")
def classify_server(runs):
    s = Served(runs / "cls")
    yield s
    s.close()
