"""How far a GGUF export's f16, bf16 and q8_0 weights take a model from gptcli's fp32, on 124M
shapes (random init: no trained weights can be had here).

Two 124M-shape models, each with gptcli's own initialisation (``GPT.reset_parameters``):

* book: ``gpt2-124M``'s dimensions in the book's chapter-5 shape (context 256, no qkv bias,
  untied head), the book's init (PyTorch's defaults: N(0, 1) embeddings);
* openai: OpenAI's layout (context 1024, qkv bias, tied head), GPT-2's init (N(0, 0.02)).

Each is exported with ``convert --to gguf`` (``export_gguf``) as f32, f16, bf16 and q8_0 and read
back by two readers:

* llama.cpp (llama-cpp-python): the runtime users run, its own kernels (f32 included: its GELU
  and matmuls differ from PyTorch's in the last bits);
* transformers' GGUF loader: the weights dequantized to fp32, run by PyTorch, which isolates what
  the rounding of the weights alone does.

Measured against gptcli fp32 on one sequence: the prompt "Every effort moves you" plus gptcli's
100 greedy tokens. max |dlogit|: the largest difference of any logit at any of the 104 positions
(with the spread of gptcli's logits, for scale); top-1 (forced): of the 100 positions that predict
a generated token, how many the reader's argmax agrees on, fed gptcli's sequence; greedy: of the
100 tokens the reader generates greedily itself, how many equal gptcli's at the same position,
and the first position where they part.

    python benchmarks/gguf_divergence.py                  # ~5 minutes on 2 busy cores
    python benchmarks/gguf_divergence.py --models book    # one model
    python benchmarks/gguf_divergence.py --readers llama.cpp
"""

from __future__ import annotations

import argparse
import datetime
import sys
import tempfile
from pathlib import Path

import _common as C  # noqa: I001 (puts the checkout on sys.path)
import numpy as np
import torch

PROMPT = "Every effort moves you"
NEW = 100
OUTTYPES = ("f32", "f16", "bf16", "q8_0")


def make_model(which: str):
    from gptcli.config import ModelConfig
    from gptcli.model import GPT

    # ModelConfig() is the book's chapter-5 shape; the gpt2-124M preset is OpenAI's
    cfg = ModelConfig(drop_rate=0.0) if which == "book" else ModelConfig.from_preset("gpt2-124M", drop_rate=0.0)
    torch.manual_seed(123)
    return GPT(cfg).eval()


def gptcli_reference(model, ids: list[int]) -> tuple[list[int], np.ndarray]:
    """gptcli fp32's greedy tokens (argmax steps on the full sequence) and its logits over the
    prompt and those tokens."""
    seq = list(ids)
    with torch.no_grad():
        for _ in range(NEW):
            seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
        logits = model(torch.tensor([seq]))[0].numpy()
    return seq[len(ids) :], logits


def compare(ref_new: list[int], ref_logits: np.ndarray, logits: np.ndarray, generated: list[int], n_prompt: int):
    forced = logits[n_prompt - 1 : n_prompt - 1 + NEW].argmax(-1)
    same = [a == b for a, b in zip(generated, ref_new)]
    first = next((i for i, s in enumerate(same) if not s), None)
    return {
        "max_abs_dlogit": float(np.abs(logits - ref_logits).max()),
        "top1_forced": int((forced == np.array(ref_new)).sum()),
        "greedy_same": int(sum(same)),
        "greedy_first_diff": first,
    }


def read_llama_cpp(path: Path, seq: list[int], n_prompt: int, n_ctx: int):
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_threads=2, logits_all=True, verbose=False)
    try:
        llm.eval(seq)
        logits = np.array(llm.scores[: len(seq)], dtype=np.float32)
        generated = []
        for tok in llm.generate(seq[:n_prompt], top_k=1, temp=0.0, reset=True):
            generated.append(int(tok))
            if len(generated) == NEW:
                break
    finally:
        llm.close()
    return logits, generated


def read_transformers(path: Path, seq: list[int], n_prompt: int, n_ctx: int):
    from transformers import AutoModelForCausalLM

    # n_positions: transformers maps gpt2.context_length to n_ctx, not to the position table's size
    hf = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, n_positions=n_ctx).eval()
    with torch.no_grad():
        logits = hf(torch.tensor([seq])).logits[0].numpy()
        out = hf.generate(
            torch.tensor([seq[:n_prompt]]), max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False, pad_token_id=50256
        )
    return logits, out[0, n_prompt:].tolist()


READERS = {"llama.cpp": read_llama_cpp, "transformers": read_transformers}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["book", "openai"], choices=["book", "openai"])
    ap.add_argument("--readers", nargs="+", default=list(READERS), choices=list(READERS))
    ap.add_argument("--out", default=None, help="JSON results [default: benchmarks/results/gguf_divergence.json]")
    args = ap.parse_args()
    torch.set_num_threads(2)

    from gptcli.tokenizer import encode
    from gptcli.weights.gguf import export_gguf

    ids = encode(PROMPT)
    rows, results = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for which in args.models:
            model = make_model(which)
            cfg = model.cfg
            ref_new, ref_logits = gptcli_reference(model, ids)
            seq = ids + ref_new
            spread = float(ref_logits.std())
            print(f"{which}: gptcli fp32 logits std {spread:.3f}", file=sys.stderr, flush=True)
            for outtype in OUTTYPES:
                path = Path(tmp) / which / f"{outtype}.gguf"
                export_gguf(cfg, model.state_dict(), path, outtype=outtype)
                size = path.stat().st_size
                for reader in args.readers:
                    logits, generated = READERS[reader](path, seq, len(ids), cfg.context_length)
                    r = compare(ref_new, ref_logits, logits, generated, len(ids))
                    r.update(model=which, outtype=outtype, reader=reader, file_mb=size / 1e6, logit_std=spread)
                    results.append(r)
                    print(f"  {outtype} {reader}: {r}", file=sys.stderr, flush=True)
                    rows.append([
                        which, outtype, f"{size / 1e6:.0f}", reader, f"{r['max_abs_dlogit']:.2e}",
                        f"{r['top1_forced']}/{NEW}", f"{r['greedy_same']}/{NEW}",
                        "-" if r["greedy_first_diff"] is None else str(r["greedy_first_diff"]),
                    ])  # fmt: skip
                path.unlink()
            del model
    machine = C.machine_info()
    C.print_table(
        rows,
        ["model", "outtype", "MB", "reader", "max |dlogit|", "top-1 (forced)", "greedy same", "first diff"],
    )
    print(f"\n{datetime.date.today()}, {machine['cpu']}, {machine['cores']} cores, torch {machine['torch']}")
    C.write_result(
        "gguf_divergence",
        {
            "date": str(datetime.date.today()),
            "machine": machine,
            "new_tokens": NEW,
            "prompt": PROMPT,
            "results": results,
        },
        args.out,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
