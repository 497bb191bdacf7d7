"""Sizes on disk of a 124M run's checkpoint and of the files convert writes from it.

Trains the book's default model (gpt2-124M dimensions, context 256, untied head) for one step on
the-verdict.txt with ``gptcli train``, so the checkpoint is the one users get, AdamW's state
included; then ``convert --weights-only`` (.pth), ``--to safetensors`` and ``--to gguf`` (f32,
q8_0) from it, and prints each size and its share of the checkpoint.

    python benchmarks/weights_only_size.py     # ~2 minutes on 2 busy cores, ~3 GB of disk in a temp dir
"""

from __future__ import annotations

import datetime
import subprocess
import sys
import tempfile
from pathlib import Path

import _common as C  # noqa: I001 (puts the checkout on sys.path)

GPTCLI = [sys.executable, "-m", "gptcli"]


def run(*args: str) -> None:
    subprocess.run([*GPTCLI, *args, "-q"], check=True)


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        run("train", str(C.VERDICT), "--max-steps", "1", "--batch-size", "1", "--eval-iter", "1", "-o", str(run_dir))
        ckpt = sorted((run_dir / "checkpoints").glob("step-*.pth"))[-1]
        outputs = {
            "training checkpoint (weights + AdamW)": ckpt,
            "--weights-only (.pth)": Path(tmp) / "w.pth",
            "--to safetensors": Path(tmp) / "w.safetensors",
            "--to gguf (f32)": Path(tmp) / "w.gguf",
            "--to gguf --outtype q8_0": Path(tmp) / "q8.gguf",
        }
        run("convert", str(run_dir), "--weights-only", "-o", str(outputs["--weights-only (.pth)"]))
        run("convert", str(run_dir), "--to", "safetensors", "-o", str(outputs["--to safetensors"]))
        run("convert", str(run_dir), "--to", "gguf", "-o", str(outputs["--to gguf (f32)"]))
        run(
            "convert", str(run_dir), "--to", "gguf", "--outtype", "q8_0", "-o", str(outputs["--to gguf --outtype q8_0"])
        )
        full = ckpt.stat().st_size
        rows, sizes = [], {}
        for name, path in outputs.items():
            size = path.stat().st_size
            sizes[name] = size
            rows.append([name, f"{size / 1e6:,.1f}", f"{size / full:.2f}"])
    C.print_table(rows, ["file", "MB", "of the checkpoint"])
    machine = C.machine_info()
    print(f"\n{datetime.date.today()}, torch {machine['torch']}")
    C.write_result("weights_only_size", {"date": str(datetime.date.today()), "machine": machine, "bytes": sizes})
    return 0


if __name__ == "__main__":
    sys.exit(main())
