"""``gptcli serve`` under load, against a peer serving the same model: 1, 4 and 16 concurrent
clients, prompts of 16 to 128 tokens, 64 new tokens each, greedy, streamed.

The model is the GPT-2 124M shape in fp32, randomly initialised (seed 0): speed does not depend
on the weights, and a random model rarely writes <|endoftext|>, so every answer runs its 64
tokens. The peer is ``transformers serve`` on gptcli's Hugging Face export of the same weights
(``gptcli convert --to hf``), offline; it needs ``accelerate`` installed (without it it refuses to
load any model). Each server runs as its own process; the clients are threads here, each sending
its requests one after another.

Reported per server and client count: total generated tokens per second (all clients, wall
time), p50 and p95 request latency, p50 time to first token; and the ratios the targets name: at
16 clients gptcli's throughput over its own at 1 client (target >= 4x) and over the peer's at 16
(target >= 1.5x). It also checks that every greedy answer is the same at 1 and 16 clients (the
batching keeps each row's arithmetic, see gptcli/generation.py), and counts how many equal the
peer's. The machine's load (``uptime``) is recorded with the results.

    python benchmarks/bench_serve.py            # the real run (several minutes on 2 cores)
    python benchmarks/bench_serve.py --quick    # a tiny model and fewer requests: a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from _common import VERDICT, machine_info, print_table, verdict_met, write_result

GPTCLI = [sys.executable, "-m", "gptcli"]
NEW_TOKENS = 64


def make_model(tmp: Path, quick: bool) -> tuple[Path, Path]:
    """A random-init checkpoint and its Hugging Face export."""
    import torch

    from gptcli import checkpoint as ckpt
    from gptcli.config import PRESETS, ModelConfig
    from gptcli.model import GPT

    shape = dict(PRESETS["gpt2-124M"])
    if quick:
        shape.update(n_layers=2, emb_dim=128, n_heads=4, context_length=256)
    torch.manual_seed(0)
    cfg = ModelConfig(**shape)
    path = ckpt.atomic_save(ckpt.weights_checkpoint(cfg, GPT(cfg).state_dict()), tmp / "model.pth")
    hf = tmp / "hf"
    subprocess.run([*GPTCLI, "convert", str(path), "--to", "hf", "-o", str(hf)], check=True, capture_output=True)
    return path, hf


def make_prompts(count: int) -> list[str]:
    """Texts of 16 to 128 tokens from the-verdict.txt, lengths spread over that range."""
    from gptcli.tokenizer import decode, encode

    ids = encode(VERDICT.read_text(encoding="utf-8"))
    prompts = []
    for i in range(count):
        n = 16 + (i * 37) % 113  # 16..128
        start = (i * 211) % (len(ids) - n)
        prompts.append(decode(ids[start : start + n]))
    return prompts


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, name: str, cmd: list[str], url: str, model: str, env: dict | None = None):
        self.name, self.url, self.model = name, url, model
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        deadline = time.monotonic() + 600
        while True:
            if self.proc.poll() is not None:
                self.log.seek(0)
                raise RuntimeError(f"{name} exited: {self.log.read().decode()[-2000:]}")
            try:
                if httpx.get(url + "/v1/models", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start")
            time.sleep(0.5)

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def one_request(server: Server, prompt: str) -> dict:
    """One streamed greedy completion: latency, time to first token, tokens, text."""
    body = {
        "model": server.model,
        "prompt": prompt,
        "max_tokens": NEW_TOKENS,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start = time.perf_counter()
    first = None
    text, chunks, usage = "", 0, None
    with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=600) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            obj = json.loads(line[6:])
            if obj.get("usage"):
                usage = obj["usage"]["completion_tokens"]
            for c in obj.get("choices", []):
                if c.get("text"):
                    if first is None:
                        first = time.perf_counter()
                    text += c["text"]
                    chunks += 1
    end = time.perf_counter()
    return {
        "latency": end - start,
        "ttft": (first or end) - start,
        "tokens": usage if usage is not None else chunks,
        "text": text,
        "start": start,
        "end": end,
    }


def run_load(server: Server, prompts: list[str], clients: int, per_client: int) -> dict:
    """``clients`` threads, each sending ``per_client`` prompts one after another."""
    results: list[tuple[int, dict]] = []
    lock = threading.Lock()

    def client(k: int) -> None:
        for j in range(per_client):
            i = k * per_client + j
            r = one_request(server, prompts[i % len(prompts)])
            with lock:
                results.append((i, r))

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rs = [r for _, r in results]
    wall = max(r["end"] for r in rs) - min(r["start"] for r in rs)
    lat = sorted(r["latency"] for r in rs)
    return {
        "clients": clients,
        "requests": len(rs),
        "tokens": sum(r["tokens"] for r in rs),
        "wall_s": wall,
        "tokens_per_s": sum(r["tokens"] for r in rs) / wall,
        "p50_latency_s": statistics.median(lat),
        "p95_latency_s": lat[min(len(lat) - 1, round(0.95 * (len(lat) - 1)))],
        "p50_ttft_s": statistics.median(r["ttft"] for r in rs),
        "texts": {i % len(prompts): r["text"] for i, r in results},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny model, fewer requests (a smoke run)")
    ap.add_argument("--clients", default="1,4,16", help="client counts [default: 1,4,16]")
    ap.add_argument(
        "--per-client", type=int, default=None, help="requests per client [default: 2 with one client, else 1]"
    )
    ap.add_argument("--no-peer", action="store_true", help="gptcli only")
    ap.add_argument(
        "--batch-math", default="exact,fast", help="gptcli serve --batch-math modes to run [default: exact,fast]"
    )
    ap.add_argument("--peer-cb", action="store_true", help="transformers serve --continuous-batching")
    ap.add_argument("--out", default=None, help="results JSON [default: benchmarks/results/serve.json]")
    args = ap.parse_args()
    counts = [int(c) for c in args.clients.split(",")]
    load = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="bench_serve_"))
    ckpt_path, hf = make_model(tmp, args.quick)
    prompts = make_prompts(max(counts) * 4)
    servers = []
    for mode in args.batch_math.split(","):
        port = free_port()
        cmd = [*GPTCLI, "serve", "-c", str(ckpt_path), "--port", str(port), "--max-batch", str(max(counts))]
        servers.append(
            (f"gptcli serve ({mode})", [*cmd, "--batch-math", mode, "-q"], f"http://127.0.0.1:{port}", "model", None)
        )
    if not args.no_peer:
        port = free_port()
        cmd = [sys.executable, "-m", "transformers.cli.transformers", "serve", str(hf), "--port", str(port)]
        if args.peer_cb:
            cmd.append("--continuous-batching")
        env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        servers.append(("transformers serve", cmd, f"http://127.0.0.1:{port}", str(hf), env))
    results: dict[str, list[dict]] = {}
    for name, cmd, url, model, env in servers:
        print(f"starting {name} ...", file=sys.stderr)
        server = Server(name, cmd, url, model, env)
        try:
            one_request(server, prompts[0])  # warm-up
            results[name] = []
            for c in counts:
                per = args.per_client or (2 if c == 1 else 1)
                print(f"  {name}: {c} client(s) x {per} requests", file=sys.stderr)
                results[name].append(run_load(server, prompts, c, per))
        finally:
            server.close()
    rows = []
    for name, runs in results.items():
        for r in runs:
            rows.append(
                [
                    name,
                    str(r["clients"]),
                    str(r["requests"]),
                    f"{r['tokens_per_s']:.1f}",
                    f"{r['p50_latency_s']:.2f}",
                    f"{r['p95_latency_s']:.2f}",
                    f"{r['p50_ttft_s']:.2f}",
                ]
            )
    print_table(rows, ["server", "clients", "requests", "tokens/s", "p50 latency s", "p95 latency s", "p50 TTFT s"])
    summary: dict = {}
    peer = results.get("transformers serve")
    for name, g in results.items():
        if not name.startswith("gptcli"):
            continue
        mode = name[name.index("(") + 1 : -1]
        if len(g) > 1:
            scale = g[-1]["tokens_per_s"] / g[0]["tokens_per_s"]
            summary[f"{mode}_scaling"] = scale
            print(
                f"{name} at {g[-1]['clients']} clients / at {g[0]['clients']}: {scale:.2f}x (target >= 4x: {verdict_met(scale, 4)})"
            )
            shared = [i for i in g[0]["texts"] if i in g[-1]["texts"]]
            same = [i for i in shared if g[0]["texts"][i] == g[-1]["texts"][i]]
            summary[f"{mode}_greedy_same_batched"] = f"{len(same)}/{len(shared)}"
            print(
                f"{name}: greedy answers equal at {g[0]['clients']} and {g[-1]['clients']} clients: {len(same)}/{len(shared)}"
            )
        if peer is not None:
            ratio = g[-1]["tokens_per_s"] / peer[-1]["tokens_per_s"]
            summary[f"{mode}_vs_peer"] = ratio
            print(
                f"{name} / transformers serve at {g[-1]['clients']} clients: {ratio:.2f}x (target >= 1.5x: {verdict_met(ratio, 1.5)})"
            )
            shared = [i for i in g[-1]["texts"] if i in peer[-1]["texts"]]
            same = [i for i in shared if g[-1]["texts"][i] == peer[-1]["texts"][i]]
            summary[f"{mode}_greedy_same_as_peer"] = f"{len(same)}/{len(shared)}"
            print(f"{name}: greedy answers equal to the peer's: {len(same)}/{len(shared)}")
    after = os.getloadavg()
    print(
        f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; after: {after[0]:.2f} {after[1]:.2f} {after[2]:.2f}"
    )
    for runs in results.values():
        for r in runs:
            r.pop("texts")
    write_result(
        "serve_quick" if args.quick else "serve",
        {
            "machine": machine_info(),
            "load_before": load,
            "load_after": after,
            "runs": results,
            "summary": summary,
            "quick": args.quick,
        },
        args.out,
    )


if __name__ == "__main__":
    main()
