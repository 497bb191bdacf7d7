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


@pytest.mark.parametrize("name", ["verdict", "tiny", "gpt2-124M-continue"])
def test_example_configs_load(name, monkeypatch, _isolated_home):
    monkeypatch.chdir(VERDICT.parents[1])  # the configs' data paths are relative to the repository root
    save_fake_gpt2(_isolated_home)  # --init gpt2-124M may read the downloaded weights' architecture
    cfg = print_config("--config", f"examples/configs/{name}.yaml")
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
    # the bar: epoch, bar, steps done/total, last losses, speed, time left
    assert re.search(
        r"epoch 1/50 +━+.* \d+/550 +train (\d+\.\d{3}|nan) val (\d+\.\d{3}|nan) +[\d,]+ tok/s +(\d+:\d\d:\d\d|-:--:--)",
        out,
    ), out
    assert "Ctrl-C: saving a checkpoint at the end of this step" in out
    m = re.search(r"error: interrupted at step (\d+); saved (\S+); continue with: gptcli resume (\S+)", out)
    assert m, out
    assert "ep 1 step" not in out  # no log lines when there is a bar
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
        "error: --tensorboard needs the tensorboard package, which is not installed; run: pip install 'gptcli[tensorboard]'"
    ]
    assert not (tmp_path / "r").exists()


# ------------------------------------------------------------------------------------------
# info and runs


def test_info_shows_config_params_progress_and_losses(run):
    last = ckpt.load_checkpoint(rundir.list_step_checkpoints(run)[-1])
    prog, hist = last["progress"], last["progress"]["history"]
    from gptcli.config import ModelConfig

    params = ModelConfig(**last["model_config"]).num_params()
    text = invoke("info", str(run)).output
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
    assert lines[0].split() == ["RUN", "EPOCHS", "STEP", "TOKENS", "TRAIN", "VAL", "BEST", "VAL", "UPDATED"]
    row = lines[1].split()
    assert row[:6] == [
        "runs/first",
        "2/2",
        str(ckpt.load_checkpoint(rundir.list_step_checkpoints(run)[-1])["progress"]["step"]),
        f"{evals[-1]['tokens_seen']:,}",
        f"{evals[-1]['train_loss']:.3f}",
        f"{evals[-1]['val_loss']:.3f}",
    ]
    assert len(lines) == 2
    data = json.loads(invoke("runs", "--json").output)
    assert [r["run"] for r in data] == ["runs/first"] and data[0]["val_loss"] == evals[-1]["val_loss"]
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
    from gptcli import inference
    from gptcli.commands import sample

    calls = []

    def interrupted(*a, **k):
        calls.append(1)
        if len(calls) == 1:
            raise KeyboardInterrupt
        return real(*a, **k)

    real = inference.generate
    monkeypatch.setattr(inference, "generate", interrupted)
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
