"""The README's own commands, run in order in a scratch directory, as a newcomer would run them.

Every command in a ```bash block of README.md is either run here or listed in SKIP with the reason.
`gptcli` lines run in-process through the same Typer app as the installed command, rewritten to a
tiny model and one epoch; placeholders like `runs/<run>` become the newest run. `bash examples/...`
lines are the example scripts that tests/test_examples.py runs, and `make` lines must name
Makefile targets.
"""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from gptcli import checkpoint as ckpt
from gptcli import rundir
from gptcli.cli import app

from .conftest import ROOT, TINY_FLAGS
from .test_examples import TESTED as TESTED_SCRIPTS
from .test_ux import save_fake_gpt2

README = ROOT / "README.md"

# README commands this test does not run, and why. Match is on the command with its comment removed.
SKIP = {
    "make install && make demo": "builds .venv and runs the full book run (CI runs `make install && make test`)",
    "make install && make test": "the test suite this file is part of",
    "gptcli download --size 124M": "needs the network (tests/test_weights_download.py serves it from loopback)",
    "pip install -e '.[tensorboard]'": "installs into the running environment; the test extra installs tensorboard",
    "python3 -m venv .venv && source .venv/bin/activate": "the by-hand install; `make install` does the same",
    "source .venv/bin/activate": "puts gptcli on the reader's own shell's PATH; this test runs gptcli itself",
    "pip install torch==2.13.0": "the by-hand install; `make install` does the same",
    "pip wheel . torch==2.13.0 -w wheels/": "tests/test_install.py runs the wheel route (slow)",
    "pip install --no-index --find-links wheels/ gptcli": "tests/test_install.py runs the wheel route (slow)",
    "tensorboard --logdir runs": "starts a web server",
    "gptcli convert ~/.cache/gptcli/gpt2/124M": "needs OpenAI's downloaded TensorFlow checkpoint",
    "gptcli convert hf-gpt2/ -o gpt2.pth": "needs a Hugging Face model folder",
    "gptcli download --size 124M --source hf": "needs the Hub (tests/test_hub.py serves it from a fake Hub on loopback)",
    "gptcli download distilgpt2": "needs the Hub (tests/test_hub.py downloads a repository from a fake Hub)",
    'gptcli sample --model distilgpt2 --prompt "Every effort moves you"': "needs distilgpt2 from the Hub (tests/test_hub.py samples a downloaded repository)",
    "gptcli sample --model path/to/hf-folder/": "needs a Hugging Face folder (tests/test_hub.py samples one)",
    "gptcli convert runs/verdict --to hf -o verdict-hf/ --push me/verdict-gpt2 --private": "needs the Hub and a token (tests/test_hub.py pushes to a fake Hub)",
    "gptcli convert model.pth -o book.pth": "needs the book's model.pth",
    "gptcli convert model_and_optimizer.pth --data the-verdict.txt -o book.pth": "needs the book's model_and_optimizer.pth",
    "gptcli resume book.pth --epochs 12": "needs the book checkpoint converted on the line before",
    "torchrun --standalone --nproc_per_node=8 -m gptcli train data/ --preset gpt2-124M --batch-size 16 --precision bf16": "needs 8 GPUs",
    "torchrun --nnodes=2 --nproc_per_node=8 --rdzv_backend=c10d --rdzv_endpoint=$MASTER_ADDR:29500      -m gptcli train data/ --preset gpt2-124M --batch-size 16 --grad-accum 4 --precision bf16": "needs two machines with GPUs",
    "gptcli prepare 'fineweb-10BT/*.parquet' -o data/fineweb10B --val-tokens 100M": "needs the FineWeb download (tests/test_formats.py and tests/test_shards.py prepare Parquet and shards they write)",
    "torchrun --standalone --nproc_per_node=8 -m gptcli train      --config examples/configs/gpt2-124M-fineweb.yaml --out runs/gpt2-124M-fineweb": "needs 8 GPUs and the prepared corpus; tests/test_distributed.py runs this config tiny under torchrun with 2 gloo processes",
    "torchrun --nproc_per_node=2 -m gptcli train examples/the-verdict.txt --epochs 1": "the full model on 2 CPU ranks; tests/test_distributed.py runs the same with gloo at tiny settings",
    "ollama serve": "starts Ollama, the book's judge (tests/test_judge.py serves a fake judge on loopback)",
    "ollama pull llama3": "needs Ollama and the network",
    "gptcli eval --judge -c runs/alpaca": "needs a judge running (tests/test_judge.py judges with a fake one on loopback)",
    "gptcli eval --judge --responses responses.json --json": "needs a judge running (tests/test_judge.py)",
    "gptcli sample -c runs/alpaca --responses test -o responses.json": "needs an instruct run (tests/test_judge.py answers a tiny one's test split)",
    "gptcli serve -c runs/judge-run --port 8000": "starts a server that runs until stopped (tests/serve/ serves on loopback)",
    "gptcli eval --judge -c runs/alpaca --judge-api openai --judge-url http://127.0.0.1:8000 --judge-model judge-run": "needs the server of the line before (tests/test_judge.py judges through an OpenAI-style fake)",
    'llama-cli -m verdict.gguf -p "Every effort moves you" -n 50': "needs llama.cpp's command-line tools; tests/test_gguf.py runs the GGUF files through llama.cpp's Python bindings",
    'cd q8 && ollama create verdict -f Modelfile && ollama run verdict "Every effort moves you"': "needs Ollama; tests/test_gguf.py checks the Modelfile",
}
# One epoch of a dozen steps: 46 windows of 12 tokens, 100 tokens apart, 4 per batch.
TINY_TRAIN = [
    *TINY_FLAGS,
    "--batch-size",
    "4",
    "--stride",
    "100",
    "--eval-freq",
    "5",
    "--eval-iter",
    "1",
    "--epochs",
    "1",
]


def readme_commands() -> list[tuple[int, str]]:
    """(line number, command) for every command in the README's bash blocks, comments removed."""
    out, in_bash, pending = [], False, ""
    for n, line in enumerate(README.read_text(encoding="utf-8").splitlines(), 1):
        if line.startswith("```"):
            in_bash = line.strip() == "```bash"
            continue
        if not in_bash:
            continue
        line = pending + line
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        command = " ".join(shlex.split(line, comments=True))
        if command:
            out.append((n, re.sub(r"\s+#.*$", "", line).strip()))
    return out


def test_readme_lists_every_command_and_skips_only_what_it_names():
    commands = [c for _, c in readme_commands()]
    assert any(c.startswith("gptcli train") for c in commands)
    stale = set(SKIP) - set(commands)
    assert not stale, f"SKIP names commands no longer in the README: {stale}"
    for c in commands:
        if c in SKIP:
            continue
        word = shlex.split(c)[0]
        assert word in ("gptcli", "bash", "make"), f"README command {c!r} is neither run by this test nor in SKIP"


def test_readme_documents_every_command():
    import typer.main

    text = README.read_text(encoding="utf-8")
    for name in typer.main.get_command(app).commands:
        assert f"gptcli {name}" in text, f"`gptcli {name}` is not in the README"
    for section in ("## Quick tour", "## Commands", "## From the book to gptcli", "## Troubleshooting"):
        assert section in text
    for book_fn in (
        "generate_text_simple",
        "generate(",
        "calc_loss_batch",
        "calc_loss_loader",
        "train_model_simple",
        "evaluate_model",
        "generate_and_print_sample",
        "plot_losses",
        "text_to_token_ids",
        "token_ids_to_text",
        "create_dataloader_v1",
        "download_and_load_gpt2",
        "load_weights_into_gpt",
        "model_and_optimizer",
    ):
        assert f"`{book_fn}" in text, book_fn
    for topic in ("offline", "MPS", "Out of memory", "Windows"):
        assert topic in text
    image = re.search(r"!\[[^\]]*\]\((examples/[^)]+\.png)\)", text)
    assert image and (ROOT / image.group(1)).read_bytes()[:4] == b"\x89PNG"


def _newest_run() -> Path:
    found = rundir.find_latest_run(Path("runs"))
    assert found is not None, "a README command refers to a run before any was trained"
    return found


def _tiny(args: list[str]) -> tuple[list[str], str | None, str | None]:
    """The command with tiny settings; also stdout's redirect target and stdin for --interactive."""
    out_file = None
    if ">" in args:
        i = args.index(">")
        out_file, args = args[i + 1], args[:i]
    args = [str(_newest_run()) if re.fullmatch(r".*<[a-z-]+>.*", a) else a for a in args]
    cmd, stdin = args[0], None
    if "--help" in args or "-h" in args:
        return args, out_file, stdin
    if cmd == "train" and "--print-config" not in args:
        args = [*args, *TINY_TRAIN]
    elif cmd == "resume":
        positional = [a for a in args[1:] if not a.startswith("-") and not re.fullmatch(r"\d+", a)]
        target = Path(positional[0]) if positional else _newest_run()
        done = ckpt.load_checkpoint(ckpt.resolve_checkpoint(target))["progress"]["epoch"]
        args = [*args, "--epochs", str(done + 1)]  # one more tiny epoch, whatever the README asks
    elif cmd == "eval" and "--stride" in args:
        i = args.index("--stride")
        args = [*args[: i + 1], "6", *args[i + 2 :]]  # a stride within the tiny models' context of 12
    elif cmd == "sample":
        args = [*args, "--max-new-tokens", "8"]
        if "--interactive" in args or "-i" in args:
            stdin = "Every effort moves you\n/temperature 1.0\nI had\n"
    elif cmd == "chat":
        args, stdin = [*args, "--max-new-tokens", "4"], "Every effort moves you\nI had\n/reset\nHello\n"
    return args, out_file, stdin


@pytest.mark.slow
def test_readme_commands_run(tmp_path, monkeypatch, _isolated_home):
    from gptcli import console

    shutil.copytree(ROOT / "examples", tmp_path / "examples", ignore=shutil.ignore_patterns("*.png", "*.sh", "*.txt"))
    # The first third of the text: every `eval` reads all of it, and a tiny model's 50k-word output
    # layer makes that the slowest part of this test.
    part = (ROOT / "examples" / "the-verdict.txt").read_text(encoding="utf-8")[:7000]
    (tmp_path / "examples" / "the-verdict.txt").write_text(part, encoding="utf-8")
    (tmp_path / "data.txt").write_text(part, encoding="utf-8")  # the weights section's data.txt
    save_fake_gpt2(_isolated_home)  # a tiny stand-in for `gptcli download --size 124M`
    makefile = (ROOT / "Makefile").read_text()
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    ran = []
    try:
        for lineno, command in readme_commands():
            if command in SKIP:
                continue
            words = shlex.split(command)
            if words[0] == "make":
                for target in re.findall(r"make (\w+)", command):
                    assert re.search(rf"^{target}:", makefile, re.M), (
                        f"README.md:{lineno}: no Makefile target {target!r}"
                    )
                continue
            if words[0] == "bash":
                assert Path(words[1]).name in TESTED_SCRIPTS, f"README.md:{lineno}: {words[1]} is not smoke-tested"
                continue
            args, out_file, stdin = _tiny(words[1:])
            console.set_quiet(False)
            res = CliRunner().invoke(app, args, input=stdin)
            assert res.exit_code == 0, (
                f"README.md:{lineno}: `{command}` (run as gptcli {' '.join(args)}) exited {res.exit_code}:\n{res.output[-3000:]}\n{res.exception!r}"
            )
            if out_file:
                Path(out_file).write_text(res.stdout)
                assert Path(out_file).read_text().strip(), f"README.md:{lineno}: {out_file} is empty"
            ran.append(command)
            print(f"README.md:{lineno}: ran gptcli {' '.join(args)}")
    finally:
        torch.set_num_threads(threads)
        console.set_quiet(False)
    # What a newcomer ends up with: a trained model, samples, and a plot.
    assert any(c.startswith("gptcli train") for c in ran) and any(c.startswith("gptcli sample") for c in ran)
    assert (tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "runs" / "verdict" / "config.yaml").exists()


def test_the_first_screen_puts_gptcli_on_the_path_and_gives_one_time_for_the_books_run():
    """Issue 21: the hints gptcli prints (`continue with: gptcli resume RUN`) must work in the
    reader's shell, and the README gave three times for the same run."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    first = text.split("## Quick tour")[0]
    assert "source .venv/bin/activate" in first
    assert "15–30 minutes" not in text and "about 9\nminutes on the 2-core AMD EPYC" in first
