"""``gptcli serve``: load one model and answer OpenAI's API over HTTP until Ctrl-C or SIGTERM."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from gptcli import console
from gptcli.errors import GptCliError
from gptcli.settings.serve import ServeSettings

SERVE_EXTRA = "pip install 'gptcli[serve]'"
GRACE_SECONDS = 3  # how long a stop waits for open connections once every stream has ended


def _need_server_packages() -> None:
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise GptCliError(f"gptcli serve needs FastAPI and uvicorn ({e.name} is missing): {SERVE_EXTRA}") from None


def _model_name(path: Path, model: str | None) -> str:
    from gptcli import rundir

    if model is not None:
        return Path(model).stem if model.endswith(".pth") else model
    run = rundir.run_dir_of(path)
    return run.name if run is not None else path.stem


def load_served(s: ServeSettings) -> Any:
    """The ``ServedModel`` of the settings: a classify run's classifier, else a text model behind
    an engine (its chat format from its run: an instruct run's template, else the plain transcript)."""
    import torch

    from gptcli.chat_template import ChatFormat
    from gptcli.checkpoint import load_checkpoint, resolve_checkpoint
    from gptcli.commands.sample import _load
    from gptcli.device import resolve_device
    from gptcli.serve.api import ServedModel
    from gptcli.serve.engine import Engine
    from gptcli.tasks import KIND_INFO

    classifier = KIND_INFO["classify"].recorded
    if s.checkpoint is not None:
        path = resolve_checkpoint(s.checkpoint, warn=console.warn)
        obj = load_checkpoint(path)
        if obj.get("kind") == classifier:
            from gptcli.finetune.classify import classify_texts
            from gptcli.tasks.finetune import model_from_finetune_checkpoint

            net, _, info = model_from_finetune_checkpoint(obj, path)
            dev = resolve_device(s.device)
            net.to(dev).eval()

            def classify(texts: list[str]) -> list[list[float]]:
                with torch.inference_mode():
                    return classify_texts(net, texts, max_length=info["max_length"], device=dev).tolist()

            return ServedModel(
                name=_model_name(path, None),
                kind="classify",
                context_length=net.cfg.context_length,
                classify=classify,
                labels=list(info["labels"]),
            )
        del obj
    loaded = _load(s.checkpoint, s.model, device=s.device, dtype=s.dtype)
    chat = ChatFormat.for_model(loaded.finetune)
    return ServedModel(
        name=_model_name(loaded.path, s.model),
        kind="instruct" if chat.instruct else "lm",
        context_length=loaded.net.cfg.context_length,
        engine=Engine(loaded.net, max_batch=s.max_batch, max_queue=s.max_queue, exact=s.batch_math == "exact"),
        chat=chat,
    )


def serve_command(s: ServeSettings) -> None:
    """Load the model, print the URL once listening, serve until Ctrl-C or SIGTERM; the requests
    in flight then end with an error event (a stream) or a 503 (a whole answer) within seconds."""
    _need_server_packages()
    import uvicorn

    from gptcli.device import set_threads
    from gptcli.serve.api import create_app

    console.set_quiet(s.quiet)
    set_threads(s.threads)
    if s.host in ("0.0.0.0", "::") and s.api_key is None:
        console.warn(
            f"--host {s.host} without --api-key: anyone who can reach this machine can use the model "
            "(give --api-key KEY or set GPTCLI_API_KEY)"
        )
    served = load_served(s)
    app = create_app(served, api_key=s.api_key, cors_origin=s.cors_origin)

    class Server(uvicorn.Server):
        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets)
            if self.started and not self.should_exit:
                host, port = self.servers[0].sockets[0].getsockname()[:2]
                shown = f"[{host}]" if ":" in host else host
                console.print_result(f"serving {served.name} ({served.kind}) at http://{shown}:{port}/")
                console.info(f"OpenAI API at http://{shown}:{port}/v1; Ctrl-C stops")

        def handle_exit(self, sig: int, frame: Any) -> None:
            if served.engine is not None:  # every stream ends now, with its final event
                served.engine.stop(timeout=0)
            super().handle_exit(sig, frame)
            # uvicorn raises the signal again once stopped, which would end the process with it;
            # a stop asked for is a clean exit here ("stopped", exit 0)
            captured = getattr(self, "_captured_signals", None)
            if isinstance(captured, list):
                captured.clear()

    config = uvicorn.Config(
        app,
        host=s.host,
        port=s.port,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=GRACE_SECONDS,
        lifespan="off",
    )
    server = Server(config)
    try:
        asyncio.run(server.serve())
    except SystemExit:  # uvicorn exits when it cannot bind (it has logged why on stderr)
        pass
    finally:
        if served.engine is not None:
            served.engine.stop()
    if not server.started:
        raise GptCliError(f"could not listen on {s.host}:{s.port} (is the port in use? try --port 0 for a free one)")
    console.info("stopped")
