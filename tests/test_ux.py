"""What using gptcli feels like: fast help, completion, config precedence, progress on and off a
terminal, Ctrl-C, NO_COLOR, --quiet, plots, TensorBoard, `info`, `runs` and `sample --interactive`.

The real `gptcli` runs in a pseudo-terminal (pexpect) where a terminal matters; the rest calls the
same Typer app in-process, which is faster. Training uses a tiny model and a large stride, so a
run is a dozen steps.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from gptcli import checkpoint as ckpt
from gptcli import rundir
from gptcli.cli import app
from gptcli.metrics import read_metrics

from .conftest import TINY_FLAGS, VERDICT, gptcli_exe

# A dozen optimizer steps per epoch: 46 windows of 12 tokens, 100 tokens apart, 4 per batch.
QUICK = [*TINY_FLAGS, "--batch-size", "4", "--stride", "100", "--eval-freq", "3", "--eval-iter", "1"]
# One thread: on a shared 2-core machine torch's thread pool fights the other processes and a tiny
# model trains 2-3x slower with two threads than with one.
ENV = {"OMP_NUM_THREADS": "1", "COLUMNS": "120"}
ANSI_SGR = re.compile(r"\x1b\[[0-9;]*m")
ANSI_COLOR = re.compile(
    r"\x1b\[(?:[0-9;]*;)?(?:3[0-9]|4[0-9]|9[0-7]|10[0-7])(?:;[0-9;]*)?m"
)  # NO_COLOR allows bold, not colour


def invoke(*args: str, expect: int = 0):
    res = CliRunner().invoke(app, list(args))
    if res.exit_code != expect:
        raise AssertionError(
            f"gptcli {' '.join(args)} exited {res.exit_code}, expected {expect}\n{res.output}\n{res.exception!r}"
        )
    return res


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """One tiny two-epoch run, trained in-process from a config file plus flags, with TensorBoard."""
    from gptcli import console

    root = tmp_path_factory.mktemp("ux")
    (root / "c.yaml").write_text(
        f"model:\n  emb_dim: 32\n  n_heads: 4\ntrain:\n  data: [{VERDICT}]\n  epochs: 5\n  lr: 0.001\n"
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        res = CliRunner().invoke(
            app,
            [
                "train",
                "--config",
                str(root / "c.yaml"),
                *QUICK,
                "--epochs",
                "2",
                "--out",
                str(root / "runs" / "a"),
                "--tensorboard",
            ],
        )
    finally:
        torch.set_num_threads(threads)
        console.set_quiet(False)
    assert res.exit_code == 0, (res.output, res.exception)
    (root / "output.txt").write_text(res.output)
    return root / "runs" / "a"


# ------------------------------------------------------------------------------------------
# speed of the CLI itself, examples in help, completion


def _commands() -> list[str]:
    import typer.main

    return sorted(typer.main.get_command(app).commands)


def _leaf_commands() -> list[list[str]]:
    """Every command that runs something, as its words: ``["train"]``, ``["finetune", "instruct"]``."""
    import typer.main

    leaves = []
    for name, cmd in sorted(typer.main.get_command(app).commands.items()):
        subs = getattr(cmd, "commands", None)
        leaves.extend([[name, sub] for sub in sorted(subs)] if subs else [[name]])
    return leaves


def _timed(cmd: list[str], cwd: Path) -> tuple[float, float]:
    """Wall-clock and CPU (user + system) seconds of one run of the installed gptcli."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run([*gptcli_exe(), *cmd], cwd=cwd, capture_output=True, text=True, env={**os.environ, **ENV})
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert proc.returncode == 0, proc.stderr
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def test_help_answers_in_under_half_a_second_without_torch(tmp_path):
    timings = {}
    for cmd in [[], *([c] for c in _commands())]:
        best_wall = best_cpu = float("inf")
        for _ in range(5):  # best of five: the machine is shared, and one slow start is noise
            wall, cpu = _timed([*cmd, "--help"], tmp_path)
            best_wall, best_cpu = min(best_wall, wall), min(best_cpu, cpu)
            if best_wall < 0.5:
                break
        timings[" ".join(["gptcli", *cmd, "--help"])] = (round(best_wall, 3), round(best_cpu, 3))
    print("help timings (wall s, cpu s):", timings)
    assert all(cpu < 0.5 for _, cpu in timings.values()), timings
    # Wall-clock time is what a user feels. When other processes keep every core busy it measures
    # them rather than gptcli, so then only the CPU time above is held to the limit.
    overloaded = os.getloadavg()[0] > (os.cpu_count() or 1)
    slow = {k: v for k, v in timings.items() if v[0] >= 0.5}
    if slow and not overloaded:
        raise AssertionError(f"help slower than 0.5 s: {slow} (all: {timings})")

    # None of them imports torch (or numpy, or matplotlib).
    code = (
        "import sys\nfrom gptcli.cli import app\n"
        f"for cmd in {[[], *([c] for c in _commands())]!r}:\n"
        "    try:\n        app([*cmd, '--help'], prog_name='gptcli')\n    except SystemExit:\n        pass\n"
        "print('HEAVY', sorted(m for m in ('torch', 'numpy', 'matplotlib', 'tensorboard') if m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert "HEAVY []" in proc.stdout, proc.stdout[-500:] + proc.stderr[-2000:]


def test_every_command_help_has_examples():
    for cmd in _commands():
        res = invoke(cmd, "--help")
        assert "Examples:" in res.output and "gptcli " + cmd in res.output.split("Examples:")[1], cmd


def test_shell_completion(tmp_path):
    env = {**os.environ, "_GPTCLI_COMPLETE": "complete_bash", "COMP_WORDS": "gptcli tr", "COMP_CWORD": "1"}
    proc = subprocess.run(gptcli_exe(), env=env, capture_output=True, text=True, cwd=tmp_path)
    assert proc.stdout.split() == ["train"], proc.stdout + proc.stderr
    env.update(COMP_WORDS="gptcli train --ep", COMP_CWORD="2")
    proc = subprocess.run(gptcli_exe(), env=env, capture_output=True, text=True, cwd=tmp_path)
    assert "--epochs" in proc.stdout.split()
    script = subprocess.run(
        [*gptcli_exe(), "--show-completion", "bash"], capture_output=True, text=True, cwd=tmp_path
    ).stdout
    assert "_gptcli_completion" in script and "complete -o default -F _gptcli_completion gptcli" in script


# ------------------------------------------------------------------------------------------
# configs: defaults, then the file, then flags


def print_config(*args: str) -> dict:
    return yaml.safe_load(invoke("train", *args, "--print-config").output)


def test_config_precedence_defaults_file_flags(tmp_path):
    from gptcli.config import ModelConfig, TrainConfig

    defaults = print_config()
    assert defaults == {"model": ModelConfig().to_dict(), "train": TrainConfig().to_dict()}
    (tmp_path / "c.yaml").write_text(
        "model:\n  emb_dim: 64\n  n_heads: 4\n  drop_rate: 0.0\n"
        "train:\n  epochs: 3\n  lr: 0.001\n  batch_size: 8\n  start_context: From the file\n"
    )
    c = str(tmp_path / "c.yaml")
    from_file = print_config("--config", c)
    assert from_file["model"] == {**defaults["model"], "emb_dim": 64, "n_heads": 4, "drop_rate": 0.0}
    assert from_file["train"] == {
        **defaults["train"],
        "epochs": 3,
        "lr": 0.001,
        "batch_size": 8,
        "start_context": "From the file",
    }
    both = print_config("--config", c, "--n-heads", "8", "--lr", "0.002", "--seed", "7", "--no-qkv-bias")
    assert both["model"] == {**from_file["model"], "n_heads": 8}  # a flag beats the file ...
    assert both["train"] == {**from_file["train"], "lr": 0.002, "seed": 7}  # ... and the defaults
    # a preset in the file, an architecture flag on top
    (tmp_path / "p.yaml").write_text("model:\n  preset: gpt2-355M\n")
    p = print_config("--config", str(tmp_path / "p.yaml"), "--context-length", "512")["model"]
    assert (p["emb_dim"], p["n_layers"], p["context_length"], p["tie_weights"]) == (1024, 24, 512, True)
    # positional text files replace the file's `data`
    (tmp_path / "d.yaml").write_text(f"train:\n  data: [{VERDICT}]\n")
    other = tmp_path / "other.txt"
    other.write_text("x")
    assert print_config("--config", str(tmp_path / "d.yaml"))["train"]["data"] == [str(VERDICT)]
    assert print_config(str(other), "--config", str(tmp_path / "d.yaml"))["train"]["data"] == [str(other)]


@pytest.mark.parametrize(
    "text,needle",
    [
        ("model:\n  emb_dimm: 64\n", "emb_dimm"),
        ("train:\n  epochz: 3\n", "epochz"),
        ("trian:\n  epochs: 3\n", "trian"),
        ("train:\n  lr: -1\n", "lr"),
        ("train:\n  epochs: ten\n", "epochs"),
        ("train:\n  precision: fp8\n", "precision"),
        ("model:\n  emb_dim: 30\n  n_heads: 4\n", "emb_dim"),
        ("model:\n  drop_rate: 1.5\n", "drop_rate"),
        ("train: [1, 2]\n", "train"),
        ("model: {emb_dim: 64\n", "not valid YAML"),
    ],
)
def test_config_errors_name_the_key(tmp_path, text, needle):
    (tmp_path / "bad.yaml").write_text(text)
    res = invoke("train", "--config", str(tmp_path / "bad.yaml"), "--print-config", expect=2)
    lines = [x for x in res.output.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], res.output


@pytest.mark.parametrize("name", ["verdict", "tiny", "gpt2-124M-continue", "gpt2-124M-fineweb"])
def test_example_configs_load(name, monkeypatch, _isolated_home):
    monkeypatch.chdir(VERDICT.parents[1])  # the configs' data paths are relative to the repository root
    save_fake_gpt2(_isolated_home)  # --init gpt2-124M may read the downloaded weights' architecture
    cfg = print_config("--config", f"examples/configs/{name}.yaml")
    if name == "gpt2-124M-fineweb":  # the shards `gptcli prepare` writes, which are not in the repository
        assert cfg["train"]["data"] == ["data/fineweb10B"]
        batch_tokens = cfg["train"]["batch_size"] * cfg["train"]["grad_accum"] * 8 * cfg["model"]["context_length"]
        assert batch_tokens == 2**19 and cfg["train"]["max_tokens"] == 10**10 and cfg["model"]["tie_weights"]
        return
    assert cfg["train"]["data"] == [str(VERDICT)]
    if name == "verdict":  # the book's run is gptcli's defaults, written out
        assert cfg == {**print_config(), "train": {**print_config()["train"], "data": [str(VERDICT)]}}
    if name == "gpt2-124M-continue":
        assert cfg["train"]["init"] == "gpt2-124M" and cfg["train"]["lr"] == 5e-5


def test_run_saves_its_resolved_config_and_resume_needs_nothing_else(run, tmp_path, monkeypatch, one_thread):
    from gptcli import console

    saved = yaml.safe_load((run / "config.yaml").read_text())
    cfg_file = run.parents[1] / "c.yaml"
    resolved = print_config("--config", str(cfg_file), *QUICK, "--epochs", "2")
    assert saved == resolved
    assert saved["train"]["lr"] == 0.001 and saved["train"]["epochs"] == 2 and saved["model"]["emb_dim"] == 32
    # Resume from elsewhere, with the config file gone: the checkpoint carries everything.
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    cfg_text = cfg_file.read_text()
    cfg_file.unlink()
    monkeypatch.chdir(tmp_path)
    try:
        res = invoke("resume", "copy", "--epochs", "3", "--quiet")
    finally:
        cfg_file.write_text(cfg_text)
        console.set_quiet(False)
    last = ckpt.load_checkpoint(rundir.list_step_checkpoints(copy)[-1])
    assert last["progress"]["epoch"] == 3 and last["train_config"]["lr"] == 0.001
    # --quiet: no progress or log lines on stderr, only the epoch's sample on stdout
    assert "ep 3 step" not in res.output and "saved" not in res.output
    assert res.output.count("Every effort moves you") == 1
    # TensorBoard goes on in a resumed run, and tells TensorBoard to drop what came after the checkpoint
    events = tb_events(copy)
    starts = [e for e in events if e.HasField("session_log")]
    assert [e.step for e in starts] == [ckpt.load_checkpoint(rundir.list_step_checkpoints(run)[-1])["progress"]["step"]]


# ------------------------------------------------------------------------------------------
# progress: a bar on a terminal, log lines otherwise, nothing with --quiet; Ctrl-C


def test_log_lines_when_not_a_terminal(run):
    out = (run.parents[1] / "output.txt").read_text()
    assert re.search(
        r"^ep 1 step 000000: train loss \d+\.\d{3}, val loss \d+\.\d{3}, [\d,]+ tokens seen, [\d,]+ tok/s$", out, re.M
    ), out
    assert "\r" not in out and "━" not in out and not ANSI_SGR.search(out)
    assert re.search(r"^model: [\d,]+ parameters on cpu$", out, re.M)
    assert re.search(r"^saved .*step-\d{8}\.pth$", out, re.M)
    for line in out.splitlines():  # one line per event, never wrapped at 80 columns
        if line.startswith("ep "):
            assert line.endswith("tok/s"), line


def test_eval_progress_is_log_lines_when_not_a_terminal(run, tmp_path, one_thread):
    (tmp_path / "part.txt").write_text(VERDICT.read_text()[:4000])
    res = invoke("eval", str(tmp_path / "part.txt"), "--checkpoint", str(run), "--batch-size", "16")
    lines = [x for x in res.output.splitlines() if x.startswith("evaluating:")]
    assert lines and re.match(r"evaluating: 100% \((\d+)/\1, \d+\.\d s\)$", lines[-1]), res.output
    assert len(lines) <= 10


def test_building_the_token_cache_reports_progress(tmp_path, monkeypatch, one_thread):
    from gptcli import tokencache

    monkeypatch.setattr(tokencache, "MEMMAP_MIN_BYTES", 0)  # the verdict alone takes the large-corpus path
    res = invoke("train", str(VERDICT), *QUICK, "--epochs", "1", "--out", str(tmp_path / "r"))
    lines = [x for x in res.stderr.splitlines() if x.startswith("tokenizing into the token cache:")]
    assert lines and re.match(r"tokenizing into the token cache: 100% \(20\.\d kB of 20\.\d kB, ", lines[-1]), (
        res.stderr
    )
    assert res.stderr.index(lines[-1]) < res.stderr.index("model: ")  # before training starts
    again = invoke("train", str(VERDICT), *QUICK, "--epochs", "1", "--out", str(tmp_path / "s"))
    assert "tokenizing" not in again.stderr  # reused: nothing to report


def test_eval_and_sample_quiet_print_only_results(run, tmp_path, one_thread):
    (tmp_path / "part.txt").write_text(VERDICT.read_text()[:4000])
    res = invoke(
        "eval", str(tmp_path / "part.txt"), "--checkpoint", str(run), "--batch-size", "16", "--quiet", "--json"
    )
    assert json.loads(res.stdout)["tokens"] > 0
    assert "evaluating" not in res.output and res.stderr == "", res.stderr
    res = invoke("sample", "--checkpoint", str(run), "--max-new-tokens", "5", "-q")
    assert res.stdout.startswith("Every effort moves you") and res.stderr == "", res.stderr
    # without --quiet the same commands report progress on stderr, so the test above can fail
    res = invoke("eval", str(tmp_path / "part.txt"), "--checkpoint", str(run), "--batch-size", "16", "--json")
    assert "evaluating:" in res.stderr


def test_progress_bar_and_ctrl_c_in_a_terminal(tmp_path):
    pexpect = pytest.importorskip("pexpect")
    import io

    shutil.copy(VERDICT, tmp_path / "the-verdict.txt")
    args = ["train", "the-verdict.txt", *QUICK, "--epochs", "50", "--out", "runs/tty"]
    child = pexpect.spawn(
        gptcli_exe()[0],
        [*gptcli_exe()[1:], *args],
        cwd=str(tmp_path),
        env={**os.environ, **ENV},
        dimensions=(30, 150),
        encoding="utf-8",
        timeout=120,
    )
    child.logfile_read = log = io.StringIO()
    child.expect("tok/s")
    child.expect("tok/s")  # a redraw: training is under way
    child.sendintr()
    child.expect(pexpect.EOF)
    child.close()
    out = ANSI_SGR.sub("", log.getvalue())
    assert child.exitstatus == 130, out
    # the bar: epoch, bar, steps done/total, last losses, speed, time left; a dash, never "nan",
    # before the first evaluation and the first measured speed (issue 21)
    assert re.search(
        r"epoch 1/50 +━+.* \d+/550 +train (\d+\.\d{3}|–) val (\d+\.\d{3}|–) +([\d,]+|–) tok/s +(\d+:\d\d:\d\d|-:--:--)",
        out,
    ), out
    assert "nan" not in out
    assert "Ctrl-C: saving a checkpoint at the end of this step" in out
    # a deliberate stop is said as one, not as an error (issue 21)
    m = re.search(r"interrupted: at step (\d+); saved (\S+); continue with: gptcli resume (\S+)", out)
    assert m, out
    # each evaluation's line scrolls by above the bar (issue 21: it used to vanish into the bar)
    assert re.search(r"ep 1 step 000000: train loss \d+\.\d{3}, val loss \d+\.\d{3}", out), out
    saved = ckpt.load_checkpoint(tmp_path / m.group(2))
    assert saved["progress"]["step"] == int(m.group(1)) and 0 < int(m.group(1)) < 550
    assert Path(m.group(3)) == Path("runs/tty")


def test_no_color_is_respected(tmp_path):
    pexpect = pytest.importorskip("pexpect")

    def stderr_in_a_terminal(extra_env):
        env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR")}
        child = pexpect.spawn(
            gptcli_exe()[0],
            [*gptcli_exe()[1:], "train", "--config", "missing.yaml"],
            cwd=str(tmp_path),
            env={**env, "TERM": "xterm-256color", **extra_env},
            encoding="utf-8",
            timeout=60,
        )
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == 2
        return child.before

    coloured = stderr_in_a_terminal({})
    assert ANSI_COLOR.search(coloured), f"expected a coloured error on a terminal: {coloured!r}"
    plain = stderr_in_a_terminal({"NO_COLOR": "1"})
    assert "error: config file not found: missing.yaml" in plain and not ANSI_COLOR.search(plain), repr(plain)


# ------------------------------------------------------------------------------------------
# plots


def test_plot_overlays_runs_with_a_legend(run, tmp_path):
    other = tmp_path / "b"
    other.mkdir()
    recs = read_metrics(run / "metrics.jsonl")
    with open(other / "metrics.jsonl", "w") as f:
        for r in recs:
            if r["type"] == "eval":
                r = {**r, "train_loss": r["train_loss"] / 2, "val_loss": r["val_loss"] / 2}
            f.write(json.dumps(r) + "\n")
    invoke("plot", str(run), str(other), "-o", str(tmp_path / "both.svg"))
    svg = (tmp_path / "both.svg").read_text()
    for label in ("a: Training loss", "a: Validation loss", "b: Training loss", "b: Validation loss"):
        assert f"<!-- {label} -->" in svg, label  # matplotlib writes each text as a comment
    assert 'id="legend_1"' in svg and "<!-- Loss -->" in svg
    invoke("plot", str(run), "--log-y", "-o", str(tmp_path / "log.svg"))
    assert "<!-- Loss (log scale) -->" in (tmp_path / "log.svg").read_text()
    invoke("plot", str(run / "metrics.jsonl"), "-o", str(tmp_path / "one.png"))
    assert (tmp_path / "one.png").read_bytes()[:4] == b"\x89PNG"

    term = invoke("plot", str(run), str(other), "--terminal").output
    assert "t training loss, v validation loss: a" in term and "* training loss, o validation loss: b" in term
    grid = [line.split("|", 1)[1] for line in term.splitlines() if "|" in line]
    assert len(grid) == 18 and all(ch in grid_chars(grid) for ch in "tv*o")
    top, bottom = (
        float(term.splitlines()[1].split("|")[0]),
        float([x for x in term.splitlines() if "|" in x][-1].split("|")[0]),
    )
    all_losses = [r[k] for r in recs if r["type"] == "eval" for k in ("train_loss", "val_loss")]
    assert abs(top - max(all_losses)) < 1e-3 and abs(bottom - min(all_losses) / 2) < 1e-3
    log = invoke("plot", str(run), "--terminal", "--log-y").output
    assert log.startswith("loss (log scale)")


def grid_chars(grid: list[str]) -> set[str]:
    return {ch for row in grid for ch in row}


def test_plot_errors_are_one_line(run, tmp_path):
    res = invoke("plot", str(tmp_path), "-o", str(tmp_path / "x.png"), expect=2)
    assert res.output.strip().count("\n") == 0 and "no metrics file" in res.output


# ------------------------------------------------------------------------------------------
# logs: metrics.jsonl always, TensorBoard on request


def tb_events(run: Path) -> list:
    """Every event in a run's TensorBoard files, read with the TFRecord framing (no TensorFlow)."""
    from tensorboard.compat.proto.event_pb2 import Event

    events = []
    for path in sorted((run / "tensorboard").glob("events.out.tfevents.*")):
        data = path.read_bytes()
        i = 0
        while i < len(data):
            (n,) = struct.unpack("<Q", data[i : i + 8])
            events.append(Event.FromString(data[i + 12 : i + 12 + n]))
            i += 12 + n + 4
    return events


def test_tensorboard_events_mirror_metrics_jsonl(run):
    pytest.importorskip("tensorboard")
    evals = [r for r in read_metrics(run / "metrics.jsonl") if r["type"] == "eval"]
    assert evals  # metrics.jsonl is always written
    scalars: dict[str, list] = {}
    texts = []
    for e in tb_events(run):
        for v in e.summary.value:
            if v.HasField("simple_value"):
                scalars.setdefault(v.tag, []).append((e.step, v.simple_value))
            elif v.metadata.plugin_data.plugin_name == "text":
                texts.append((e.step, v.tensor.string_val[0].decode()))
    assert [s for s, _ in scalars["loss/val"]] == [r["step"] for r in evals]
    assert [round(x, 4) for _, x in scalars["loss/train"]] == [round(r["train_loss"], 4) for r in evals]
    assert {"loss/train", "loss/val", "perplexity/val", "lr", "tokens_seen", "tokens_per_sec"} <= set(scalars)
    assert len(texts) == 2 and texts[0][1].startswith("epoch 1: Every effort moves you")


def test_tensorboard_missing_is_a_one_line_error(monkeypatch, tmp_path):
    for name in [m for m in sys.modules if m == "tensorboard" or m.startswith("tensorboard.")] or ["tensorboard"]:
        monkeypatch.setitem(sys.modules, name, None)
    res = invoke("train", str(VERDICT), *QUICK, "--out", str(tmp_path / "r"), "--tensorboard", expect=2)
    lines = [x for x in res.output.splitlines() if x.strip()]
    assert lines == [
        "error: --tensorboard needs the tensorboard package, which is not installed; run: pip install tensorboard"
    ]
    assert not (tmp_path / "r").exists()


# ------------------------------------------------------------------------------------------
# info and runs


def test_info_shows_config_params_progress_and_losses(run):
    last = ckpt.load_checkpoint(rundir.list_step_checkpoints(run)[-1])
    prog, hist = last["progress"], last["progress"]["history"]
    from gptcli.config import ModelConfig

    params = ModelConfig(**last["model_config"]).num_params()
    text = invoke("info", str(run), "--verbose").output
    assert f"parameters:    {params:,}" in text
    assert f"epoch 2 of 2 done, step {prog['step']:,}, {prog['tokens_seen']:,} tokens seen" in text
    assert f"train {hist[-1]['train_loss']:.3f}, val {hist[-1]['val_loss']:.3f} (step {hist[-1]['step']})" in text
    assert "kind:          training" in text and "\nmodel:\n  vocab_size: 50257\n" in text and "\ntrain:\n" in text
    data = json.loads(invoke("info", str(rundir.list_step_checkpoints(run)[-1]), "--json").output)
    assert data["parameters"] == params and data["step"] == prog["step"] and data["epoch"] == 2
    assert data["tokens_seen"] == prog["tokens_seen"] and data["last_eval"] == hist[-1]
    assert data["model_config"] == last["model_config"] and data["train_config"]["lr"] == 0.001


def test_info_on_downloaded_weights_and_errors(tmp_path, _isolated_home):
    fake = save_fake_gpt2(_isolated_home)
    text = invoke("info", "gpt2-124M").output
    assert str(fake) in text and "kind:       weights" in text and "progress" not in text
    res = invoke("info", str(tmp_path / "nope.pth"), expect=2)
    assert res.output.count("\n") == 1 and "nope.pth" in res.output


def save_fake_gpt2(home: Path) -> Path:
    """A tiny stand-in for the converted GPT-2 124M (the real one needs a download)."""
    from gptcli.config import ModelConfig
    from gptcli.model import GPT

    cfg = ModelConfig(context_length=12, emb_dim=32, n_heads=4, n_layers=2, qkv_bias=True, tie_weights=True)
    torch.manual_seed(0)
    path = home / "gpt2" / "124M" / "model.pth"
    obj = {
        "format": ckpt.FORMAT,
        "version": ckpt.VERSION,
        "kind": "weights",
        "model_config": cfg.to_dict(),
        "model_state_dict": GPT(cfg).state_dict(),
    }
    return ckpt.atomic_save(obj, path)


def test_runs_lists_runs_with_last_losses(run, tmp_path, monkeypatch):
    (tmp_path / "runs").mkdir()
    shutil.copytree(run, tmp_path / "runs" / "first")
    (tmp_path / "runs" / "not-a-run").mkdir()
    monkeypatch.chdir(tmp_path)
    evals = [r for r in read_metrics(run / "metrics.jsonl") if r["type"] == "eval"]
    lines = invoke("runs").output.splitlines()
    assert lines[0].split() == ["RUN", "KIND", "EPOCHS", "STEP", "TOKENS", "TRAIN", "VAL", "BEST", "VAL", "UPDATED"]
    row = lines[1].split()
    assert row[:7] == [
        "runs/first",
        "training",
        "2/2",
        str(ckpt.load_checkpoint(rundir.list_step_checkpoints(run)[-1])["progress"]["step"]),
        f"{evals[-1]['tokens_seen']:,}",
        f"{evals[-1]['train_loss']:.3f}",
        f"{evals[-1]['val_loss']:.3f}",
    ]
    assert len(lines) == 2
    data = json.loads(invoke("runs", "--json").output)
    assert [r["run"] for r in data] == ["runs/first"] and data[0]["val_loss"] == evals[-1]["val_loss"]
    (tmp_path / "elsewhere").mkdir()  # an empty root (a missing one is an error: see below)
    assert json.loads(invoke("runs", "--root", "elsewhere", "--json").output) == []
    assert "no runs under elsewhere/" in invoke("runs", "--root", "elsewhere").output


def test_runs_and_plot_do_not_import_torch(run, tmp_path):
    code = (
        "import sys\nfrom gptcli.commands import runs\n"
        f"runs.runs_command({str(run.parent)!r})\n"
        f"runs.plot_command([{str(run)!r}], output=None, terminal=True)\n"
        "print('TORCH', 'torch' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert "TORCH False" in proc.stdout, proc.stdout + proc.stderr


# ------------------------------------------------------------------------------------------
# sample --interactive


def test_interactive_sampling_in_a_terminal(run):
    pexpect = pytest.importorskip("pexpect")
    args = ["sample", "--interactive", "-c", str(run), "--max-new-tokens", "6"]
    child = pexpect.spawn(
        gptcli_exe()[0],
        [*gptcli_exe()[1:], *args],
        env={**os.environ, **ENV},
        encoding="utf-8",
        timeout=120,
        dimensions=(30, 150),
    )
    child.expect("parameters, context 12")
    child.expect(">>> ")
    child.sendline("Every effort moves you")
    child.expect(">>> ")
    first = child.before
    child.sendline("/temperature 2.5")
    child.expect("temperature = 2.5")
    child.expect(">>> ")
    child.sendline("/top-k 3")
    child.expect(">>> ")
    child.sendline("Every effort moves you")
    child.expect(">>> ")
    child.sendline("/bogus")
    child.expect("unknown command /bogus")
    child.expect(">>> ")
    child.sendeof()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    greedy = invoke(
        "sample", "-c", str(run), "--max-new-tokens", "6", "--prompt", "Every effort moves you"
    ).output.strip()
    assert greedy.startswith("Every effort moves you") and greedy in first.replace("\r\n", "\n"), (greedy, first)


def test_interactive_sampling_keeps_the_model_loaded(run, monkeypatch, capsys):
    from gptcli.commands import sample

    loads = []
    real = sample.load_model_for_inference
    monkeypatch.setattr(sample, "load_model_for_inference", lambda *a, **k: loads.append(1) or real(*a, **k))
    lines = iter(
        [
            "Every effort moves you",
            "",
            "/max-new-tokens 3",
            "I had",
            "/seed 5",
            "/temperature 1",
            "Hello",
            "/quit",
            "never read",
        ]
    )
    n = sample.interactive_sample(checkpoint=run, max_new_tokens=6, stream=False, input_fn=lambda _prompt: next(lines))
    assert n == 3 and len(loads) == 1
    out = capsys.readouterr().out.splitlines()
    assert [len(line) > 0 for line in out] == [True] * 3
    assert out[0].startswith("Every effort moves you") and out[1].startswith("I had") and out[2].startswith("Hello")
    # the same greedy continuation as a one-shot `gptcli sample`
    one_shot = sample.sample_command(checkpoint=run, prompts=["Every effort moves you"], max_new_tokens=6, stream=False)
    capsys.readouterr()
    assert out[0] == one_shot[0]


def test_interactive_ctrl_c_stops_one_generation(run, monkeypatch, capsys):
    from gptcli import generation
    from gptcli.commands import sample

    calls = []

    def interrupted(*a, **k):
        calls.append(1)
        if len(calls) == 1:
            raise KeyboardInterrupt
        return real(*a, **k)

    real = generation.generate
    monkeypatch.setattr(generation, "generate", interrupted)
    lines = iter(["first", "second"])

    def read(_prompt):
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None

    assert sample.interactive_sample(checkpoint=run, max_new_tokens=2, stream=False, input_fn=read) == 1
    captured = capsys.readouterr()
    assert "(stopped)" in captured.err and captured.out.splitlines()[-1].startswith("second")


def test_interactive_refuses_one_shot_flags(run):
    res = invoke("sample", "--interactive", "--json", "-c", str(run), expect=2)
    assert "--interactive" in res.output and res.output.count("\n") == 1


# ------------------------------------------------------------------------------------------
# issue 13: plot defaults and figure, `runs` and `info` after lines outlive the checkpoint


def test_plot_without_output_writes_into_the_run_and_says_where(run, tmp_path, monkeypatch):
    shutil.copytree(run, tmp_path / "runs" / "r")
    shutil.copytree(run, tmp_path / "runs" / "s")
    (tmp_path / "runs" / "r" / "metrics.jsonl").touch()  # the most recent run
    (tmp_path / "loss.png").write_bytes(b"the user's own file")
    monkeypatch.chdir(tmp_path)
    out = invoke("plot").output
    assert "wrote runs/r/loss.png" in out
    assert (tmp_path / "runs" / "r" / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "loss.png").read_bytes() == b"the user's own file"
    invoke("plot", "runs/s/metrics.jsonl")
    assert (tmp_path / "runs" / "s" / "loss.png").read_bytes()[:4] == b"\x89PNG"
    res = invoke("plot", "runs/r", "runs/s", expect=2)
    assert res.output.count("\n") == 1 and "-o/--output" in res.output
    # --terminal with -o does both: the characters on stdout and the file
    both = invoke("plot", "runs/r", "--terminal", "-o", "both.svg").output
    assert "t training loss, v validation loss: r" in both and "wrote both.svg" in both
    assert (tmp_path / "both.svg").read_text().startswith("<?xml")


def _svg_numbers(svg: str) -> set[float]:
    """Every number matplotlib wrote as a text (each text is also an SVG comment)."""
    return {float(m) for m in re.findall(r"<!-- (-?[0-9.]+) -->", svg)}


def test_single_run_plot_has_its_name_readable_log_ticks_and_the_legend_outside(run, tmp_path, monkeypatch):
    shutil.copytree(run, tmp_path / "my-run")
    invoke("plot", str(tmp_path / "my-run"), "--log-y", "-o", str(tmp_path / "log.svg"))
    svg = (tmp_path / "log.svg").read_text()
    assert "<!-- my-run -->" in svg  # the title
    # A tiny run's losses span well under a decade: several labelled ticks must fall inside it.
    losses = [
        r[k] for r in read_metrics(run / "metrics.jsonl") if r["type"] == "eval" for k in ("train_loss", "val_loss")
    ]
    inside = {v for v in _svg_numbers(svg) if min(losses) <= v <= max(losses)}
    assert len(inside) >= 3, (sorted(inside), min(losses), max(losses))
    # Over one to two decades (the book's run: 0.39 to 9.9) 2, 3 and 5 times the powers of ten are labelled.
    wide = tmp_path / "wide"
    wide.mkdir()
    with open(wide / "metrics.jsonl", "w") as f:
        for i, (t, v) in enumerate([(9.8, 9.9), (4.4, 6.3), (1.3, 6.2), (0.39, 6.45)]):
            f.write(
                json.dumps(
                    {"type": "eval", "step": 5 * i, "tokens_seen": 512 * (5 * i + 1), "train_loss": t, "val_loss": v}
                )
                + "\n"
            )
    invoke("plot", str(wide), "--log-y", "-o", str(tmp_path / "wide.svg"))
    assert {0.5, 1.0, 2.0, 3.0, 5.0, 10.0} <= _svg_numbers((tmp_path / "wide.svg").read_text())

    # The legend lies outside the axes, so it covers no curve.
    import matplotlib.figure

    overlaps = []
    real_savefig = matplotlib.figure.Figure.savefig

    def savefig(fig, *args, **kwargs):
        real_savefig(fig, *args, **kwargs)
        renderer, ax = fig.canvas.get_renderer(), fig.axes[0]
        overlaps.append(ax.get_legend().get_window_extent(renderer).overlaps(ax.get_window_extent(renderer)))

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig)
    for target in (str(run), str(wide)):
        invoke("plot", target, "-o", str(tmp_path / "legend.png"))
    assert overlaps == [False, False]


def test_a_run_stopped_inside_its_first_epoch_is_not_stretched_to_one(run, tmp_path):
    from gptcli.plot import eval_series

    records = read_metrics(run / "metrics.jsonl")
    per_epoch = next(r for r in records if r["type"] == "sample")["step"] + 1
    evals = [r for r in records if r["type"] == "eval"]
    assert evals and all(r["steps_per_epoch"] == per_epoch for r in evals)  # the trainer records it
    first = [r for r in evals if r["step"] + 1 < per_epoch]  # stopped (no sample record) mid-epoch 1
    (tmp_path / "cut").mkdir()
    (tmp_path / "cut" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in first))
    epochs = eval_series(tmp_path / "cut" / "metrics.jsonl")["epoch"]
    assert epochs == [(r["step"] + 1) / per_epoch for r in first] and epochs[-1] < 1
    term = invoke("plot", str(tmp_path / "cut"), "--terminal").output
    assert f"{epochs[-1]:.2f}  epochs" in term
    # A run from before steps_per_epoch was recorded keeps the old rule: its epochs' sample records.
    old = [{k: v for k, v in r.items() if k != "steps_per_epoch"} for r in records]
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in old))
    assert eval_series(tmp_path / "old" / "metrics.jsonl")["epoch"] == [(r["step"] + 1) / per_epoch for r in evals]


def test_runs_and_info_agree_when_metrics_outlive_the_last_checkpoint(run, tmp_path, monkeypatch):
    """A second Ctrl-C (or a crash) after the epoch-1 save: metrics.jsonl holds epoch 2's lines,
    the newest checkpoint is epoch 1's. Both commands report the checkpoint and count the rest."""
    cut = tmp_path / "runs" / "cut"
    shutil.copytree(run, cut)
    rundir.list_step_checkpoints(cut)[-1].unlink()
    saved = ckpt.load_checkpoint(rundir.list_step_checkpoints(cut)[-1])["progress"]
    later = [r for r in read_metrics(cut / "metrics.jsonl") if r["type"] == "eval" and r["step"] >= saved["step"]]
    assert later  # the run fixture evaluates during epoch 2
    monkeypatch.chdir(tmp_path)
    row = json.loads(invoke("runs", "--root", "runs", "--json").output)[0]
    assert (row["step"], row["tokens_seen"], row["epochs_done"]) == (
        saved["step"],
        saved["tokens_seen"],
        saved["epoch"],
    )
    assert (
        row["train_loss"] == saved["history"][-1]["train_loss"] and row["val_loss"] == saved["history"][-1]["val_loss"]
    )
    assert row["unsaved_evals"] == len(later)
    lines = invoke("runs", "--root", "runs").output.splitlines()
    assert lines[0].split()[-2:] == ["UNSAVED", "STOPPED"] and lines[1].split()[3] == str(saved["step"])
    assert lines[1].endswith(f"{len(later)} evals  interrupted") and any(x.startswith("UNSAVED: ") for x in lines)
    info = json.loads(invoke("info", "runs/cut", "--json").output)
    assert info["step"] == row["step"] and info["last_eval"]["train_loss"] == row["train_loss"]
    assert info["unsaved_evals"] == len(later)
    assert (
        f"unsaved:       {len(later)} evals in metrics.jsonl after the run's last checkpoint"
        in invoke("info", "runs/cut").output
    )
    # The complete run has nothing unsaved, and its table keeps its usual columns.
    full = json.loads(invoke("runs", "--root", str(run.parent), "--json").output)[0]
    assert full["unsaved_evals"] == 0
    assert invoke("runs", "--root", str(run.parent)).output.splitlines()[0].split()[-1] == "UPDATED"


# ------------------------------------------------------------------------------------------
# issue 13: CLI conventions (--version, choices, metavars, --threads), which run, messages


def test_version_prints_the_installed_version():
    from importlib.metadata import version

    assert invoke("--version").output == f"gptcli {version('gptcli')}\n"


# The flags with a fixed set of values, with that set: --help lists it and completion offers it.
CHOICES = [
    ("train", "--preset", ["gpt2-124M", "gpt2-355M", "gpt2-774M", "gpt2-1558M"]),
    ("train", "--precision", ["fp32", "bf16", "fp16"]),
    ("train", "--encoding-errors", ["strict", "replace", "ignore"]),
    ("sample", "--dtype", ["auto", "fp32", "bf16", "int8"]),
    ("eval", "--encoding-errors", ["strict", "replace", "ignore"]),
    ("download", "--size", ["124M", "355M", "774M", "1558M"]),
    ("download", "--reader", ["builtin", "tensorflow"]),
    ("convert", "--from", ["openai", "hf", "book", "gptcli"]),
    ("convert", "--to", ["gptcli", "hf", "gguf", "safetensors"]),
    ("convert", "--reader", ["builtin", "tensorflow"]),
]
DEVICES = ["auto", "cpu", "cuda", "mps"]  # --device also takes cuda:N, so it lists and offers these without enforcing


def _help_rows(command: str | list[str]) -> dict[str, str]:
    """``--flag`` -> its help row (the help text joined onto it), from a wide ``--help``."""
    words = [command] if isinstance(command, str) else command
    res = CliRunner().invoke(app, [*words, "--help"], terminal_width=400, max_content_width=400)
    assert res.exit_code == 0, res.output
    rows: dict[str, str] = {}
    for line in res.output.split("Options:")[1].split("Examples:")[0].splitlines():
        if line.startswith("  -"):
            words = [w.rstrip(",") for w in line.split()]
            last = next(w for w in words if w.startswith("--"))
            rows[last] = line
        elif line.startswith("   ") and rows:
            rows[last] += " " + line.strip()
    return rows


def _complete(*words: str) -> list[str]:
    env = {
        **os.environ,
        "_GPTCLI_COMPLETE": "complete_bash",
        "COMP_WORDS": " ".join(words),
        "COMP_CWORD": str(len(words) - 1),
    }
    return subprocess.run(gptcli_exe(), env=env, capture_output=True, text=True).stdout.split()


@pytest.mark.parametrize("command,flag,values", CHOICES)
def test_choice_flags_list_their_values_and_refuse_others(command, flag, values):
    assert f"{flag} <{'|'.join(values)}>" in _help_rows(command)[flag]
    res = invoke(command, *(["x.txt"] if command in ("eval", "convert") else []), flag, "bogus", expect=2)
    assert flag in res.output and all(repr(v) in res.output for v in values) and res.output.count("\n") == 1


def test_completion_offers_choices_not_file_names(tmp_path):
    (tmp_path / "bf16-notes.txt").write_text("a file completion must not offer")
    assert _complete("gptcli", "train", "--precision", "") == ["fp32", "bf16", "fp16"]
    assert _complete("gptcli", "sample", "--dtype", "b") == ["bf16"]
    assert _complete("gptcli", "convert", "--to", "") == ["gptcli", "hf", "gguf", "safetensors"]
    assert _complete("gptcli", "eval", "--device", "c") == ["cpu", "cuda"]
    assert _complete("gptcli", "train", "--device", "") == DEVICES


def test_device_lists_its_names_and_still_takes_cuda_n():
    for command in ("train", "sample", "eval"):
        assert "--device <auto|cpu|cuda|cuda:N|mps>" in _help_rows(command)["--device"], command
    cfg = print_config("x.txt", "--device", "cuda:1")
    assert cfg["train"]["device"] == "cuda:1"  # parsed; whether the machine has it is checked on use
    res = invoke("train", "x.txt", "--device", "tpu", "--print-config", expect=2)
    assert "--device" in res.output and "cuda:N" in res.output


def test_every_help_shows_values_as_words_not_python_types():
    """FILE..., PROMPT-like words, N and X: never <list[Path]>, {src}, <int range> or <str>."""
    python_type = re.compile(r"<(?:int|float|str|bool|path|list\[[^>]*\]|[a-z]+ range)>")  # braces: usage line
    for words in _leaf_commands():
        command = " ".join(words)
        res = CliRunner().invoke(app, [*words, "--help"], terminal_width=400, max_content_width=400)
        usage = res.output.splitlines()[0]
        assert not python_type.search(res.output), (command, python_type.search(res.output)[0])
        if "Arguments:" in res.output:  # each argument's row: its word, then its help
            for row in res.output.split("Arguments:")[1].split("Options:")[0].strip().splitlines()[:1]:
                assert re.match(r"[A-Z]+(\.\.\.)?  ", row), (command, row)
        assert re.fullmatch(rf"Usage: \S+ {command} \[OPTIONS\]( \[?[A-Z]+(\.\.\.)?\]?)?", usage), usage
        for flag, row in _help_rows(words).items():
            rest = re.sub(r"^(, -[-\w]+)+", "", row.split(flag, 1)[1])  # past aliases (--output, --out)
            if rest.strip() and not rest.startswith(("  ", " /")):  # it takes a value
                value = rest.split()[0]
                assert re.fullmatch(r"[A-Z]+|<[\w:.|-]+>", value), (command, flag, value)
    assert "train [OPTIONS] [FILE...]" in invoke("train", "--help").output
    assert "eval [OPTIONS] [FILE...]" in invoke("eval", "--help").output  # optional: or --split
    assert "convert [OPTIONS] SRC" in invoke("convert", "--help").output


@pytest.fixture
def restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_threads_sets_pytorchs_threads_for_train_sample_eval_and_resume(run, tmp_path, restore_threads):
    (tmp_path / "part.txt").write_text(VERDICT.read_text()[:2000])
    for n, args, code in [
        (3, ["train", "x.txt", "--print-config"], 0),
        (2, ["sample", "-c", str(run), "--max-new-tokens", "2"], 0),
        (3, ["eval", str(tmp_path / "part.txt"), "-c", str(run)], 0),
        (2, ["sample", "-i", "-c", str(run)], 0),
        (3, ["resume", str(run)], 2),  # finished: refused, but after --threads took effect
    ]:
        torch.set_num_threads(1)
        invoke(*args, "--threads", str(n), expect=code)
        assert torch.get_num_threads() == n, args
    torch.set_num_threads(1)
    invoke("sample", "-c", str(run), "--max-new-tokens", "2")
    assert torch.get_num_threads() == 1  # not given: left alone
    assert "--threads" in invoke("sample", "--threads", "0", expect=2).output


def test_several_samples_get_a_header_line_and_json_groups_them_by_prompt(run, one_thread):
    res = invoke("sample", "-c", str(run), "--max-new-tokens", "4", "--num-samples", "2")
    assert "2 identical samples" in res.stderr and "--temperature" in res.stderr  # greedy copies are warned of
    lines = res.stdout.splitlines()
    assert lines[0] == "--- sample 1 of 2 ---" and lines[2] == "--- sample 2 of 2 ---" and len(lines) == 4
    assert lines[1].startswith("Every effort moves you") and lines[1] == lines[3]
    args = [
        "sample",
        "-c",
        str(run),
        "--max-new-tokens",
        "4",
        "--temperature",
        "1",
        "--seed",
        "3",
        "-p",
        "I had",
        "-p",
        "Hi",
    ]
    res = invoke(*args, "--num-samples", "2", "--json")
    assert "identical" not in res.stderr
    out = json.loads(res.stdout)
    assert out["checkpoint"] == str(rundir.list_step_checkpoints(run)[-1])
    assert [g["prompt"] for g in out["samples"]] == ["I had", "Hi"]
    assert [len(g["samples"]) for g in out["samples"]] == [2, 2]
    assert all(s.startswith(g["prompt"]) for g in out["samples"] for s in g["samples"])
    text = invoke(*args, "--num-samples", "2").stdout.splitlines()
    headers = [x for x in text if x.startswith("--- ")]
    assert headers == [f"--- prompt {p} of 2, sample {s} of 2 ---" for p in (1, 2) for s in (1, 2)]
    assert [x for x in text if not x.startswith("--- ")] == [s for g in out["samples"] for s in g["samples"]]
    single = invoke("sample", "-c", str(run), "--max-new-tokens", "4").stdout
    assert not single.startswith("---") and single.startswith("Every effort moves you")


def test_interactive_settings_say_off_not_none(run, capsys, one_thread):
    from gptcli.commands import sample

    lines = iter(["/settings", "/top-k 5", "/top-k off", "/settings"])

    def read(_prompt):
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None

    sample.interactive_sample(checkpoint=run, input_fn=read, quiet=True)
    err = capsys.readouterr().err
    assert "None" not in err
    settings = [x for x in err.splitlines() if x.startswith("temperature ")]
    assert len(settings) == 2 and all("top-k off, top-p off" in x and "seed off" in x for x in settings), err
    assert "top-k = 5" in err and "top-k = off" in err


def _runs_here(tmp_path, monkeypatch, run, *names: str) -> list[Path]:
    """Copies of the fixture run under tmp_path/runs, the last named the most recent; cwd tmp_path."""
    copies = []
    for i, name in enumerate(names):
        shutil.copytree(run, tmp_path / "runs" / name)
        copies.append(tmp_path / "runs" / name)
        for f in [rundir.metrics_path(copies[-1]), *rundir.list_step_checkpoints(copies[-1])]:
            os.utime(f, (1_000_000 + i, 1_000_000 + i))
    monkeypatch.chdir(tmp_path)
    return copies


def test_sample_eval_and_plot_name_the_run_they_picked(run, tmp_path, monkeypatch, one_thread):
    _runs_here(tmp_path, monkeypatch, run, "old", "new")
    (tmp_path / "part.txt").write_text(VERDICT.read_text()[:2000])
    newest = f"runs/new/checkpoints/{rundir.list_step_checkpoints(run)[-1].name}"
    picked = f"using {newest} (the most recent run)"
    assert picked in invoke("sample", "--max-new-tokens", "2").stderr.splitlines()
    assert picked in invoke("eval", "part.txt").stderr.splitlines()
    assert "plotting runs/new (the most recent run)" in invoke("plot").stderr.splitlines()
    # named explicitly: nothing to announce
    assert "most recent" not in invoke("sample", "-c", "runs/old", "--max-new-tokens", "2").stderr
    assert "most recent" not in invoke("eval", "part.txt", "-c", "runs/old").stderr


def _set_epochs(run_dir: Path, epochs: int) -> None:
    """Give a run's checkpoints another planned total (as if trained with --epochs N)."""
    for p in rundir.list_step_checkpoints(run_dir):
        obj = torch.load(p, weights_only=True)
        obj["train_config"]["epochs"] = epochs
        t = p.stat().st_mtime
        torch.save(obj, p)
        os.utime(p, (t, t))


def test_resume_without_a_run_picks_the_most_recent_unfinished_one(run, tmp_path, monkeypatch, one_thread):
    unfinished, _ = _runs_here(tmp_path, monkeypatch, run, "my unfinished", "finished")
    _set_epochs(unfinished, 3)  # has done 2 of 3; the newer run finished its 2
    res = invoke("resume")
    assert "resuming runs/my unfinished (the most recent unfinished run)" in res.stderr.splitlines()
    assert "run: runs/my unfinished (" in res.stderr  # relative to the cwd, as `train` prints it
    assert "done: runs/my unfinished (sample with: gptcli sample -c 'runs/my unfinished')" in res.stderr
    assert ckpt.load_checkpoint(rundir.list_step_checkpoints(unfinished)[-1])["progress"]["epoch"] == 3
    # now every run has finished: the error names the newest and how to extend it
    res = invoke("resume", expect=2)
    assert res.output.count("\n") == 1 and "the most recent, runs/my unfinished, did its 3 epochs" in res.output
    assert "gptcli resume 'runs/my unfinished' --epochs N (N > 3)" in res.output
    # --epochs counts: a run with epochs left below the new total is picked
    assert "resuming runs/my unfinished" in invoke("resume", "--epochs", "4").stderr


def test_resume_refusals_say_epochs_n_with_grammar_and_quoted_paths(run, tmp_path, monkeypatch):
    (one,) = _runs_here(tmp_path, monkeypatch, run, "one epoch")
    for p in rundir.list_step_checkpoints(one):
        obj = torch.load(p, weights_only=True)
        obj["progress"]["epoch"] = obj["train_config"]["epochs"] = 1
        torch.save(obj, p)
    res = invoke("resume", str(one), expect=2)  # an absolute path, shown relative
    assert "runs/one epoch: the run already finished its 1 epoch; extend it with: " in res.output
    assert "gptcli resume 'runs/one epoch' --epochs N (N > 1)" in res.output
    res = invoke("resume", "runs/one epoch", "--epochs", "0", expect=2)
    assert "invalid --epochs: 0 (must be an integer >= 1)" in res.output  # the range, not the run's epochs
    obj["train_config"]["epochs"] = obj["progress"]["epoch"] = 2
    torch.save(obj, p)
    res = invoke("resume", "runs/one epoch", "--epochs", "1", expect=2)
    assert "already completed 2 epochs)" in res.output
    res = invoke("train", "x.txt", "--out", "runs/one epoch", expect=2)
    assert "gptcli resume 'runs/one epoch'" in res.output


def test_sample_with_nothing_to_load_names_train_and_download(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = invoke("sample", expect=2)
    assert res.output.startswith("error: ") and res.output.count("\n") == 1
    assert "gptcli train" in res.output and "gptcli download" in res.output


def test_runs_root_that_does_not_exist_is_an_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = invoke("runs", "--root", "nope", expect=2)
    assert res.output == "error: invalid --root: nope (no such directory)\n"
    (tmp_path / "afile").write_text("")
    assert "not a directory" in invoke("runs", "--root", "afile", expect=2).output
    assert "no runs under runs/" in invoke("runs").output  # the default may not exist yet


def test_log_lines_come_at_most_every_few_seconds(monkeypatch, capsys):
    from gptcli import console

    monkeypatch.setattr(console, "interactive", lambda: False)
    now = [0.0]

    def lines_for(step_seconds: float) -> list[str]:
        prog = console.byte_progress(1)
        prog.clock = lambda: now[0]
        task = prog.add_task("converting", total=1000)
        for done in range(0, 1001, 10):
            now[0] += step_seconds
            prog.update(task, completed=done)
        return [x for x in capsys.readouterr().err.splitlines() if x.startswith("converting")]

    quick = lines_for(0.002)  # a 0.2-second job
    assert len(quick) == 1 and quick[0].startswith("converting: 100%")
    slow = lines_for(1.0)  # 100 s: a line per tenth, each at least 5 s after the last
    assert [int(x.split()[1].rstrip("%")) for x in slow] == list(range(10, 101, 10))
    assert len(lines_for(0.1)) == 2  # 10 s: one line after 5 s, then the last


def test_epoch_samples_on_stdout_have_no_trailing_spaces(capsys):
    from gptcli import console

    console.TrainProgress().on_sample({"epoch": 1, "text": "Every effort moves you\n\nto the end \n"})
    assert capsys.readouterr().out == "Every effort moves you  to the end\n"


@pytest.mark.slow
def test_tiny_config_samples_are_words_of_the_story(tmp_path, one_thread):
    """The README's first run: examples/configs/tiny.yaml ends with a sample in the story's own
    words, not commas (about 15 s of CPU)."""
    from gptcli import console

    config = yaml.safe_load((Path(__file__).parents[1] / "examples" / "configs" / "tiny.yaml").read_text())
    config["train"]["data"] = [str(VERDICT)]
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(config))
    try:
        invoke("train", "--config", str(tmp_path / "tiny.yaml"), "--out", str(tmp_path / "tiny"), "--quiet")
    finally:
        console.set_quiet(False)
    last = [r for r in read_metrics(tmp_path / "tiny" / "metrics.jsonl") if r["type"] == "sample"][-1]["text"]
    generated = last.removeprefix("Every effort moves you").split()
    story = set(re.findall(r"[A-Za-z]+", VERDICT.read_text(encoding="utf-8")))
    words = [w for w in generated if re.fullmatch(r"[A-Za-z]+", w.strip(".,;:!?\"'-"))]
    assert len(generated) >= 8 and len(words) >= 0.8 * len(generated), last
    assert sum(w.strip(".,;:!?\"'-") in story for w in words) >= 0.9 * len(words), last


def test_file_output_flags_also_answer_to_out_as_the_directory_ones_do(run, tmp_path):
    """train, prepare and finetune write a directory with -o/--out; plot, convert and sample write a
    file with -o/--output. Each of the file ones takes --out too, so a user need not remember which."""
    invoke("plot", str(run), "--out", str(tmp_path / "a.png"))
    assert (tmp_path / "a.png").read_bytes()[:4] == b"\x89PNG"
    invoke("convert", str(run), "--to", "hf", "--out", str(tmp_path / "hf"))
    assert (tmp_path / "hf" / "config.json").is_file()
    for cmd in ("plot", "convert", "sample"):
        assert "--out" in invoke(cmd, "--help").output
