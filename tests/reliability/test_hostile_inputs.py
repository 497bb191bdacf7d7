"""Hostile inputs that must give a warning or one ``error:`` line, never a traceback (issue 12):
bad ``sample -i`` settings, checkpoints whose config does not fit their weights, malformed
``metrics.jsonl`` lines, and symlink loops among the inputs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from gptcli import checkpoint as ckpt
from gptcli import console, rundir
from gptcli.cli import app
from gptcli.config import ModelConfig
from gptcli.errors import CheckpointError
from gptcli.model import GPT

from ..conftest import TINY_FLAGS, TINY_MODEL, VERDICT


def invoke(*args: str):
    console.set_quiet(False)
    try:
        return CliRunner().invoke(app, list(args))
    finally:
        console.set_quiet(False)


def error_lines(res) -> list[str]:
    assert "Traceback" not in res.output, res.output
    return [x for x in res.output.splitlines() if x.startswith("error:")]


@pytest.fixture
def weights(tmp_path) -> Path:
    """A tiny weights-only checkpoint, written directly (no training)."""
    torch.manual_seed(0)
    cfg = ModelConfig(**TINY_MODEL)
    return ckpt.atomic_save(ckpt.weights_checkpoint(cfg, GPT(cfg).state_dict()), tmp_path / "tiny.pth")


def rewrite_config(path: Path, out: Path, model_config) -> Path:
    obj = torch.load(path, weights_only=True)
    obj["model_config"] = model_config
    torch.save(obj, out)
    return out


# ---------------------------------------------------------------------------------------------
# sample -i: a bad setting is a warning, the setting is unchanged, and the session goes on


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        ("/temperature nan", "/temperature needs a finite number"),
        ("/temperature inf", "/temperature needs a finite number"),
        ("/seed 99999999999999999999999", "/seed"),
        (f"/seed {2**70}", "/seed"),
        # already a warning before issue 12 (int() refuses them); kept as guards
        ("/seed 2**70", "/seed needs an integer"),
        ("/top-k 1e99", "/top-k needs an integer"),
    ],
)
def test_sample_interactive_bad_setting_warns_and_the_session_goes_on(weights, capsys, line, needle):
    from gptcli.commands import sample

    lines = iter([line, "/settings", "Every effort moves you"])

    def read(_prompt):
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None

    # top-k on: with it, an infinite temperature turns the kept logits into NaN probabilities
    n = sample.interactive_sample(
        checkpoint=weights, max_new_tokens=3, temperature=0.7, top_k=5, seed=1, stream=False, input_fn=read
    )
    out, err = capsys.readouterr()
    assert n == 1, err  # the prompt after the bad setting still ran
    assert out.startswith("Every effort moves you"), out
    value = line.split(" ", 1)[1]
    warning = next((x for x in err.splitlines() if x.startswith("warning:")), "")
    assert needle in warning and value in warning, err  # names the setting and the value
    assert "temperature 0.7, top-k 5" in err and "seed 1" in err, err  # /settings: unchanged
    assert "Traceback" not in err


# ---------------------------------------------------------------------------------------------
# Checkpoints whose model_config does not fit


@pytest.mark.parametrize("bad", [[1, 2, 3], "gpt2-124M", 12])
def test_checkpoint_whose_model_config_is_not_a_mapping(weights, tmp_path, bad):
    path = rewrite_config(weights, tmp_path / "bad.pth", bad)
    res = invoke("sample", "--checkpoint", str(path), "--prompt", "Hi", "--max-new-tokens", "1")
    lines = error_lines(res)
    assert res.exit_code == 2 and len(lines) == 1, res.output
    assert "bad.pth" in lines[0] and "model_config is not a mapping" in lines[0], lines[0]


INFLATED = {
    "wide": {"emb_dim": 4096, "n_heads": 4},  # ~13 GB of float32 with AdamW, the case
    "deep": {"n_layers": 100_000},
    "long": {"context_length": 10_000_000},
    "vocab": {"vocab_size": 50_000_000},
}


def _no_model_built(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("a model was built for a config that does not fit its weights")

    monkeypatch.setattr(ckpt, "GPT", refuse)
    import gptcli.tasks.lm

    monkeypatch.setattr(gptcli.tasks.lm, "GPT", refuse)


@pytest.mark.parametrize("case", list(INFLATED))
def test_inflated_config_is_refused_before_anything_is_allocated(weights, tmp_path, monkeypatch, case):
    path = rewrite_config(weights, tmp_path / "big.pth", {**TINY_MODEL, **INFLATED[case]})
    _no_model_built(monkeypatch)
    with pytest.raises(CheckpointError, match=r"big\.pth: model_config does not fit the weights"):
        ckpt.model_from_checkpoint(ckpt.load_checkpoint(path), path)
    res = invoke("sample", "--checkpoint", str(path), "--prompt", "Hi", "--max-new-tokens", "1")
    lines = error_lines(res)
    assert res.exit_code == 2 and len(lines) == 1, res.output
    assert "big.pth" in lines[0] and "does not fit" in lines[0], lines[0]


def test_inflated_config_names_the_first_mismatched_tensors(weights, tmp_path):
    path = rewrite_config(weights, tmp_path / "big.pth", {**TINY_MODEL, "emb_dim": 4096, "n_heads": 4})
    with pytest.raises(CheckpointError) as e:
        ckpt.model_from_checkpoint(ckpt.load_checkpoint(path), path)
    msg = str(e.value)
    assert "wrong shape wte.weight (file [50304, 32], config [50304, 4096])" in msg, msg
    assert "and " in msg and "more" in msg and len(msg) < 600, msg  # the first few, not all of them


def test_init_from_an_inflated_checkpoint_is_refused_before_building(weights, tmp_path, monkeypatch):
    path = rewrite_config(weights, tmp_path / "big.pth", {**TINY_MODEL, "emb_dim": 4096, "n_heads": 4})
    _no_model_built(monkeypatch)
    res = invoke("train", str(VERDICT), "--init", str(path), "--epochs", "1", "--out", str(tmp_path / "run"))
    lines = error_lines(res)
    assert res.exit_code == 2 and len(lines) == 1, res.output
    assert "big.pth" in lines[0] and "does not fit" in lines[0], lines[0]


def test_resume_of_an_inflated_checkpoint_is_refused_before_building(weights, tmp_path, monkeypatch):
    from gptcli.config import TrainConfig

    small = ModelConfig(**TINY_MODEL)
    state = torch.load(weights, weights_only=True)["model_state_dict"]
    obj = ckpt.training_checkpoint(
        small, TrainConfig(data=[str(VERDICT)]).to_dict(), state, optimizer_state={}, progress={"epoch": 0}
    )
    obj["model_config"] = {**TINY_MODEL, "emb_dim": 4096, "n_heads": 4}
    run = tmp_path / "run"
    path = ckpt.atomic_save(obj, rundir.step_checkpoint_path(run, 3))
    _no_model_built(monkeypatch)
    res = invoke("resume", str(path))
    lines = error_lines(res)
    assert res.exit_code == 2 and len(lines) == 1, res.output
    assert "step-00000003.pth" in lines[0] and "does not fit" in lines[0], lines[0]


# ---------------------------------------------------------------------------------------------
# Malformed metrics.jsonl lines: skipped with a warning, by runs and plot alike


def _record(kind: str, step: int, loss: float) -> dict:
    if kind == "eval":
        return {"type": "eval", "epoch": 1, "step": step, "tokens_seen": 40 * (step + 1), "train_loss": loss,
                "val_loss": loss + 0.5, "lr": 4e-4, "tokens_per_sec": 100.0}  # fmt: skip
    return {"type": "sample", "epoch": 1, "step": step, "tokens_seen": 40 * (step + 1), "text": "hi"}


def _write_run(run: Path, bad_line: bytes | None = None) -> Path:
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("model: {}\ntrain:\n  epochs: 2\n", encoding="utf-8")
    good = [_record("eval", 0, 9.0), _record("eval", 4, 7.0), _record("eval", 9, 6.5), _record("sample", 9, 0)]
    lines = [json.dumps(r).encode() for r in good]
    if bad_line is not None:
        lines.insert(2, bad_line)  # line 3: between good records
        lines.append(bad_line)  # and last, where the old reader took the step from
    (run / "metrics.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    rundir.checkpoint_dir(run).mkdir()
    rundir.step_checkpoint_path(run, 10).write_bytes(b"")  # runs reads only its name
    return run


BAD_LINES = {
    "a number": b"5",
    "a list": b"[1, 2]",
    "null": b"null",
    "eval without step": json.dumps({"type": "eval", "tokens_seen": 1, "train_loss": 1.0, "val_loss": 1.0}).encode(),
    "eval without val_loss": json.dumps({"type": "eval", "step": 3, "tokens_seen": 1, "train_loss": 1.0}).encode(),
    "eval without tokens_seen": json.dumps({"type": "eval", "step": 3, "train_loss": 1.0, "val_loss": 1.0}).encode(),
    "string step": json.dumps({"type": "eval", "step": "3", "tokens_seen": 1, "train_loss": 1, "val_loss": 1}).encode(),
    "string loss": json.dumps(
        {"type": "eval", "step": 3, "tokens_seen": 1, "train_loss": 1, "val_loss": "low"}
    ).encode(),
    "sample without step": json.dumps({"type": "sample", "tokens_seen": 1, "text": "x"}).encode(),
    "not UTF-8": b'{"type": "eval", "step": 3, "\xff\xfe": 1}',
}


@pytest.mark.parametrize("case", list(BAD_LINES))
def test_runs_and_plot_skip_a_malformed_metrics_line_with_a_warning(tmp_path, monkeypatch, case):
    monkeypatch.chdir(tmp_path)
    run = _write_run(tmp_path / "runs" / "r", BAD_LINES[case])
    res = invoke("runs")
    assert res.exit_code == 0 and "Traceback" not in res.output, res.output
    warnings = [x for x in res.output.splitlines() if x.startswith("warning:")]
    assert len(warnings) == 1 and "metrics.jsonl: skipped malformed line 3" in warnings[0], res.output
    assert "and 1 more" in warnings[0], warnings[0]
    row = next(x for x in res.output.splitlines() if x.startswith("runs/r"))
    assert row.split()[2:5] == ["1/2", "10", "400"] and "7.000" in row, row  # from the good records (after KIND)
    res = invoke("plot", "--terminal", str(run))
    assert res.exit_code == 0 and "Traceback" not in res.output, res.output
    assert "warning:" in res.output and "skipped malformed line 3" in res.output, res.output
    assert "training loss" in res.output


def test_one_unreadable_run_never_breaks_runs_for_the_others(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _write_run(tmp_path / "runs" / "a-good")
    _write_run(tmp_path / "runs" / "b-locked")
    bad_cfg = _write_run(tmp_path / "runs" / "c-bad-config")
    (bad_cfg / "config.yaml").write_bytes(b"train:\n  epochs: \xff\xfe\n")
    real = rundir.read_metrics

    def read(path, **kw):
        if "b-locked" in str(path):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, **kw)

    monkeypatch.setattr(rundir, "read_metrics", read)
    res = invoke("runs")
    assert res.exit_code == 0 and "Traceback" not in res.output, res.output
    out = res.output.splitlines()
    rows = {
        name: next(x for x in out if x.startswith(f"runs/{name}")) for name in ("a-good", "b-locked", "c-bad-config")
    }
    assert rows["a-good"].split()[2:5] == ["1/2", "10", "400"], rows  # after the KIND column
    # what cannot be read shows as '-'; the epochs planned and the step come from other files
    assert rows["b-locked"].split()[2:8] == ["-/2", "10", "-", "-", "-", "-"], rows
    assert rows["c-bad-config"].split()[1:3] == ["-", "1"], rows  # kind and total unknown, epochs done
    warnings = [x for x in out if x.startswith("warning:")]
    assert any("b-locked/metrics.jsonl: cannot be read (Permission denied)" in w for w in warnings), warnings
    assert any("c-bad-config/config.yaml: cannot be read" in w for w in warnings), warnings


# ---------------------------------------------------------------------------------------------
# Symlink loops among the inputs


@pytest.fixture
def loops(tmp_path) -> Path:
    (tmp_path / "loop.txt").symlink_to("loop.txt")
    d = tmp_path / "corpus" / "sub"
    d.mkdir(parents=True)
    (d / "a.txt").symlink_to("b.txt")
    (d / "b.txt").symlink_to("a.txt")
    return tmp_path


def _says_symlink_loop(res, path: Path) -> None:
    lines = error_lines(res)
    assert res.exit_code == 2 and len(lines) == 1, res.output
    assert "symlink loop" in lines[0] and str(path) in lines[0] and "not found" not in lines[0], lines[0]


def test_training_on_a_symlink_loop_says_so(loops, tmp_path):
    res = invoke("train", str(loops / "loop.txt"), *TINY_FLAGS, "--epochs", "1", "--out", str(tmp_path / "r"))
    _says_symlink_loop(res, loops / "loop.txt")


def test_a_val_file_that_is_a_symlink_loop_says_so(loops, tmp_path):
    res = invoke(
        "train", str(VERDICT), "--val-file", str(loops / "loop.txt"), *TINY_FLAGS, "--out", str(tmp_path / "r")
    )
    _says_symlink_loop(res, loops / "loop.txt")


def test_a_directory_holding_a_symlink_loop_says_so(loops, tmp_path):
    res = invoke("train", str(loops / "corpus"), *TINY_FLAGS, "--epochs", "1", "--out", str(tmp_path / "r"))
    _says_symlink_loop(res, loops / "corpus" / "sub" / "a.txt")


def test_eval_on_a_symlink_loop_says_so(loops):
    res = invoke("eval", str(loops / "loop.txt"))
    _says_symlink_loop(res, loops / "loop.txt")


def test_a_path_through_a_looping_directory_link_says_so(loops, tmp_path):
    (loops / "d1").symlink_to("d2")
    (loops / "d2").symlink_to("d1")
    target = loops / "d1" / "x.txt"
    assert not os.path.lexists(target)
    res = invoke("train", str(target), *TINY_FLAGS, "--epochs", "1", "--out", str(tmp_path / "r"))
    _says_symlink_loop(res, target)
