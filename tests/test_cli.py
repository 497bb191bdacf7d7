"""The CLI two ways: CliRunner for argument handling, and the installed gptcli in subprocesses."""

import json
import signal
import subprocess
import time

import pytest
import torch

from gptcli import checkpoint as ckpt
from gptcli import rundir
from gptcli.metrics import read_metrics

from .conftest import TINY_FLAGS, gptcli_exe, run_gptcli

FAST = [*TINY_FLAGS, "--eval-freq", "50", "--batch-size", "4"]


def one_line_error(proc, *needles, code=2):
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


# ------------------------------------------------------------------------------------------
# error cases, run from the shell as a user would


def test_missing_file(workdir):
    one_line_error(run_gptcli("train", "nope.txt", cwd=workdir), "nope.txt", "not found")


def test_directory_without_txt(workdir):
    (workdir / "empty").mkdir()
    one_line_error(run_gptcli("train", "empty", cwd=workdir), "empty", "no .txt files")


@pytest.mark.parametrize("content,needle", [("", "empty"), ("   \n\n  ", "only whitespace")])
def test_empty_or_blank_file(workdir, content, needle):
    (workdir / "blank.txt").write_text(content)
    one_line_error(run_gptcli("train", "blank.txt", cwd=workdir), "blank.txt", needle)


def test_text_too_short_says_how_many_tokens(workdir):
    (workdir / "short.txt").write_text("Every effort moves you forward, slowly but surely.")
    line = one_line_error(run_gptcli("train", "short.txt", cwd=workdir), "too short")
    assert "tokens" in line and "need at least" in line


@pytest.mark.parametrize(
    "args,needle",
    [
        (["sample", "--temperature", "-1"], "--temperature"),
        (["sample", "--top-k", "0"], "--top-k"),
        (["train", "the-verdict.txt", "--epochs", "0"], "--epochs"),
        (["train", "the-verdict.txt", "--precision", "fp8"], "--precision"),
        (["train", "the-verdict.txt", "--bogus-flag"], "--bogus-flag"),
    ],
)
def test_bad_flag_values(workdir, args, needle):
    one_line_error(run_gptcli(*args, cwd=workdir), needle)


def test_not_a_checkpoint(workdir):
    (workdir / "fake.pth").write_bytes(b"this is not a checkpoint")
    one_line_error(run_gptcli("sample", "--checkpoint", "fake.pth", cwd=workdir), "fake.pth")
    torch.save({"some": torch.zeros(2)}, workdir / "other.pth")
    one_line_error(
        run_gptcli("sample", "--checkpoint", "other.pth", cwd=workdir), "other.pth", "not a gptcli checkpoint"
    )


def test_sample_without_any_run_says_to_train_first(workdir):
    one_line_error(run_gptcli("sample", cwd=workdir), "train")


def test_debug_env_shows_traceback(workdir):
    proc = run_gptcli("train", "nope.txt", cwd=workdir, env={"GPTCLI_DEBUG": "1"})
    assert proc.returncode != 0 and "Traceback" in proc.stderr


# ------------------------------------------------------------------------------------------
# end to end


def test_train_sample_eval_plot_end_to_end(workdir):
    proc = run_gptcli("train", "the-verdict.txt", "--epochs", "2", *FAST, "--out", "runs/tiny", cwd=workdir, check=True)
    assert "parameters" in proc.stderr
    # one greedy sample per epoch, on stdout
    assert proc.stdout.count("Every effort moves you") == 2
    run = workdir / "runs" / "tiny"
    assert (run / "config.yaml").exists()
    assert len(rundir.list_step_checkpoints(run)) == 2
    recs = read_metrics(run / "metrics.jsonl")
    assert [r["type"] for r in recs].count("sample") == 2

    # sample: default checkpoint is the latest run; stdout is only the text
    out1 = run_gptcli("sample", "--temperature", "1.4", "--top-k", "25", "--seed", "5", cwd=workdir, check=True)
    out2 = run_gptcli("sample", "--temperature", "1.4", "--top-k", "25", "--seed", "5", cwd=workdir, check=True)
    assert out1.stdout == out2.stdout and out1.stdout.startswith("Every effort moves you")
    greedy = run_gptcli("sample", "--prompt", "Every effort", "--json", cwd=workdir, check=True)
    assert json.loads(greedy.stdout)["samples"][0]["samples"][0].startswith("Every effort")

    # eval: the book's windows (5,145 tokens at context 12: 428 windows, the 8-token tail left out)
    ev = run_gptcli("eval", "the-verdict.txt", "--json", cwd=workdir, check=True)
    res = json.loads(ev.stdout)
    assert (
        res["tokens"] == 428 * 12
        and abs(res["perplexity"] - __import__("math").exp(res["loss"])) < 1e-6 * res["perplexity"]
    )
    table = run_gptcli("eval", "the-verdict.txt", cwd=workdir, check=True)
    assert "perplexity" in table.stdout

    # plot
    run_gptcli("plot", "-o", "loss.png", cwd=workdir, check=True)
    assert (workdir / "loss.png").read_bytes()[:4] == b"\x89PNG"
    run_gptcli("plot", str(run), "-o", "loss.svg", cwd=workdir, check=True)
    assert b"<svg" in (workdir / "loss.svg").read_bytes()[:500]
    bad = run_gptcli("plot", "-o", "loss.gif", cwd=workdir)
    one_line_error(bad, "loss.gif")


def _wait_for(proc, needle, timeout=600):
    """Read stderr until a line contains needle."""
    deadline = time.time() + timeout
    seen = []
    while time.time() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        seen.append(line)
        if needle in line:
            return seen
    raise AssertionError("never saw " + needle + " in:\n" + "".join(seen))


def test_ctrl_c_then_resume_equals_uninterrupted(workdir):
    args = ["train", "the-verdict.txt", "--epochs", "2", *TINY_FLAGS, "--batch-size", "2", "--eval-freq", "10"]
    run_gptcli(*args, "--out", "runs/full", cwd=workdir, check=True)

    proc = subprocess.Popen(
        [*gptcli_exe(), *args, "--out", "runs/cut"],
        cwd=workdir,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    _wait_for(proc, "step 000020")  # mid-epoch 1
    proc.send_signal(signal.SIGINT)
    rest = proc.stderr.read()
    assert proc.wait(timeout=120) == 130, rest
    assert "gptcli resume" in rest
    cut = workdir / "runs" / "cut"
    stopped_at = ckpt.load_checkpoint(rundir.list_step_checkpoints(cut)[-1])["progress"]
    assert 0 < stopped_at["step"] < 192

    run_gptcli("resume", str(cut), cwd=workdir, check=True)
    full = ckpt.load_checkpoint(rundir.list_step_checkpoints(workdir / "runs" / "full")[-1])["model_state_dict"]
    resumed = ckpt.load_checkpoint(rundir.list_step_checkpoints(cut)[-1])["model_state_dict"]
    assert all(torch.equal(full[k], resumed[k]) for k in full)
    strip = lambda recs: [(r["type"], r["step"], r.get("train_loss"), r.get("val_loss"), r.get("text")) for r in recs]  # noqa: E731
    assert strip(read_metrics(workdir / "runs/full/metrics.jsonl")) == strip(read_metrics(cut / "metrics.jsonl"))


def test_resume_extends_epochs_and_refuses_finished_runs(workdir):
    run_gptcli("train", "the-verdict.txt", "--epochs", "1", *FAST, "--out", "runs/r", cwd=workdir, check=True)
    one_line_error(run_gptcli("resume", "runs/r", cwd=workdir), "--epochs")
    run_gptcli("resume", "runs/r", "--epochs", "2", cwd=workdir, check=True)
    assert ckpt.load_checkpoint(rundir.list_step_checkpoints(workdir / "runs/r")[-1])["progress"]["epoch"] == 2


def test_train_refuses_to_overwrite_a_run(workdir):
    run_gptcli("train", "the-verdict.txt", "--epochs", "1", *FAST, "--out", "runs/r", cwd=workdir, check=True)
    before = {p.name: p.stat().st_mtime_ns for p in (workdir / "runs/r/checkpoints").iterdir()}
    one_line_error(run_gptcli("train", "the-verdict.txt", *FAST, "--out", "runs/r", cwd=workdir), "runs/r", "resume")
    assert before == {p.name: p.stat().st_mtime_ns for p in (workdir / "runs/r/checkpoints").iterdir()}


def test_help_lists_every_command():
    from typer.testing import CliRunner

    from gptcli.cli import app

    res = CliRunner().invoke(app, ["--help"])
    assert res.exit_code == 0
    for cmd in ("train", "resume", "eval", "sample", "plot"):
        assert cmd in res.output


def test_train_flags_come_from_the_config_dataclasses(workdir):
    """Every ModelConfig/TrainConfig field with help metadata is a `train` flag showing the
    dataclass default, fields without it are not flags, and each flag sets its own section."""
    import dataclasses
    import re

    import yaml
    from typer.testing import CliRunner

    from gptcli.cli import app
    from gptcli.config import ModelConfig, TrainConfig, flag_fields

    res = CliRunner().invoke(app, ["train", "--help"], terminal_width=400, max_content_width=400)
    assert res.exit_code == 0, res.output
    rows: dict[str, str] = {}  # "--flag": its row, help included (a long flag's help goes on the next line)
    for line in res.output.split("Options:")[1].splitlines():
        if line.startswith("  -"):
            rows[last := line.split()[0]] = line
        elif line.startswith("   ") and rows:
            rows[last] += " " + line.strip()
    for cls in (ModelConfig, TrainConfig):
        for f in dataclasses.fields(cls):
            flag = "--" + f.name.replace("_", "-")
            if f not in flag_fields(cls):
                assert flag not in res.output, f.name
                continue
            row = rows[flag]
            assert f.metadata["help"].removesuffix(".") in row, (f.name, row)
            shown = re.search(r"\[default: (.*)\]", row)
            if "default_text" in f.metadata:
                assert shown and shown[1] == f.metadata["default_text"], (f.name, row)
            elif f.default is None:
                assert shown is None, (f.name, row)
            elif isinstance(f.default, bool):
                assert row.startswith(f"  {flag} / --no-{flag[2:]}") and shown[1] == ("yes" if f.default else "no")
            else:
                assert shown and type(f.default)(shown[1].strip("'")) == f.default, (f.name, row)

    res = CliRunner().invoke(
        app,
        ["train", "x.txt", "--lr", "1e-3", "--emb-dim", "64", "--n-heads", "4", "--qkv-bias", "--no-compile"]
        + ["--save-every", "7", "--val-file", "v.txt", "--start-context", "Hi there", "--print-config"],
    )
    assert res.exit_code == 0, (res.output, res.exception)
    cfg = yaml.safe_load(res.output)
    assert cfg["model"] == {**ModelConfig().to_dict(), "emb_dim": 64, "n_heads": 4, "qkv_bias": True}
    assert cfg["train"] == {
        **TrainConfig().to_dict(),
        "lr": 1e-3,
        "compile": False,
        "save_every": 7,
        "val_file": "v.txt",
        "start_context": "Hi there",
        "data": ["x.txt"],
    }


def test_print_config_applies_file_then_flags(workdir):
    (workdir / "c.yaml").write_text("model:\n  emb_dim: 64\n  n_heads: 4\ntrain:\n  epochs: 3\n  lr: 0.001\n")
    proc = run_gptcli(
        "train", "the-verdict.txt", "--config", "c.yaml", "--epochs", "5", "--print-config", cwd=workdir, check=True
    )
    import yaml

    cfg = yaml.safe_load(proc.stdout)
    assert cfg["model"]["emb_dim"] == 64 and cfg["model"]["n_layers"] == 12  # file, then default
    assert cfg["train"]["epochs"] == 5 and cfg["train"]["lr"] == 0.001  # flag beats file
    (workdir / "bad.yaml").write_text("train:\n  epochz: 3\n")
    one_line_error(run_gptcli("train", "the-verdict.txt", "--config", "bad.yaml", cwd=workdir), "epochz")
