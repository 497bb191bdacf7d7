"""Output flags and failed writes (issue 21): no output flag writes over a run's checkpoint, or
over an existing file or export without --force; a read-only or full disk is one error line
with nothing partial left behind; --num-samples has a bound; --wandb-project is checked as a
flag; and gptcli's own rotation never deletes the step checkpoint a finetune run stands on."""

from __future__ import annotations

import errno
import json
import subprocess

import pytest
import torch
from typer.testing import CliRunner

from gptcli import checkpoint as ckpt
from gptcli import rundir
from gptcli.cli import app
from gptcli.config import ModelConfig
from gptcli.model import GPT

from ..conftest import TINY_MODEL, VERDICT, gptcli_exe, run_gptcli

TINY = ModelConfig(**TINY_MODEL)


def cli(*args, expect=0):
    res = CliRunner().invoke(app, [str(a) for a in args])
    assert res.exit_code == expect, (res.output, res.exception)
    if expect:
        lines = [line for line in res.output.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:"), res.output
        assert "Traceback" not in res.output
        return lines[0]
    return res.output


def one_line(proc, code):
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert proc.returncode == code, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


def _weights(path):
    torch.manual_seed(0)
    return ckpt.atomic_save(ckpt.weights_checkpoint(TINY, GPT(TINY).state_dict()), path)


@pytest.fixture
def run_a(workdir):
    """runs/a with one step checkpoint and best.pth, as training leaves them."""
    step = _weights(rundir.step_checkpoint_path(workdir / "runs/a", 9))
    rundir.link_best(workdir / "runs/a", step)
    return workdir / "runs/a"


def _unchanged(path, before):
    assert path.read_bytes() == before, f"{path} was overwritten"


# ---------------------------------------------------------------------------------------------
# 1. Output flags never write over saved checkpoints or exports


def test_convert_never_writes_over_a_runs_checkpoint(run_a, workdir):
    cli("convert", "runs/a", "--to", "hf", "-o", "x-hf")
    for name in ("step-00000009.pth", "best.pth"):
        target = run_a / "checkpoints" / name
        before = target.read_bytes()
        for force in ([], ["--force"]):  # --force does not unlock a run's checkpoint
            line = cli("convert", "x-hf", "-o", target, *force, expect=2)
            assert f"-o {target}: is a checkpoint of run" in line and "refusing to overwrite it" in line
        _unchanged(target, before)
    # nor a new file that would pass for one of its checkpoints
    line = cli("convert", "x-hf", "-o", run_a / "checkpoints/step-00000099.pth", expect=2)
    assert "refusing" in line and not (run_a / "checkpoints/step-00000099.pth").exists()


def test_convert_replaces_an_existing_file_or_export_only_with_force(run_a, workdir):
    cli("convert", "runs/a", "--to", "hf", "-o", "x-hf")
    cli("convert", "x-hf", "-o", "y.pth")
    before = (workdir / "y.pth").read_bytes()
    line = cli("convert", "x-hf", "-o", "y.pth", expect=2)
    assert "-o y.pth: exists" in line and "pass --force to overwrite it" in line
    _unchanged(workdir / "y.pth", before)
    (workdir / "x-hf" / "config.json").write_text("{}")  # an export with a change of the user's
    line = cli("convert", "runs/a", "--to", "hf", "-o", "x-hf", expect=2)
    assert "-o x-hf: exists; pass --force to overwrite it" in line
    assert (workdir / "x-hf" / "config.json").read_text() == "{}"
    line = cli("convert", "y.pth", "--to", "hf", "-o", "runs/a", expect=2)
    assert "is the run directory" in line and not (run_a / "config.json").exists()
    cli("convert", "runs/a", "--to", "hf", "-o", "x-hf", "--force")
    assert json.loads((workdir / "x-hf" / "config.json").read_text())["n_layer"] == TINY.n_layers
    cli("convert", "x-hf", "-o", "y.pth", "--force")


def test_sample_responses_never_writes_over_a_checkpoint_or_a_file(run_a, workdir):
    target = run_a / "checkpoints" / "step-00000009.pth"
    before = target.read_bytes()
    line = cli("sample", "-c", "runs/a", "--responses", "test", "-o", target, "--force", expect=2)
    assert f"-o {target}: is a checkpoint of run" in line
    _unchanged(target, before)
    (workdir / "out.json").write_text("[]")
    line = cli("sample", "-c", "runs/a", "--responses", "test", "-o", "out.json", expect=2)
    assert "-o out.json: exists; pass --force to overwrite it" in line
    assert (workdir / "out.json").read_text() == "[]"


# ---------------------------------------------------------------------------------------------
# 2. Read-only or full outputs: one line, nothing partial left behind (tests run as root, who
# ignores permission bits: a path under a regular file, /dev/full and injected errors instead)


def test_sample_to_a_full_stdout_is_one_error_line(workdir):
    _weights(workdir / "w.pth")
    with open("/dev/full", "w") as full:
        proc = subprocess.run(
            [*gptcli_exe(), "sample", "--model", "w.pth", "--max-new-tokens", "2"],
            cwd=workdir,
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            timeout=300,
        )
    line = one_line(proc, 1)
    assert "stdout" in line and "No space left on device" in line


def test_eval_with_an_unwritable_token_cache_tokenizes_without_it(workdir, monkeypatch):
    _weights(workdir / "w.pth")
    (workdir / "data.jsonl").write_text("".join(json.dumps({"text": f"some words here {i}"}) + "\n" for i in range(30)))
    (workdir / "afile").write_text("")
    monkeypatch.setenv("GPTCLI_HOME", str(workdir / "afile" / "home"))  # cannot be created
    out = cli("eval", "data.jsonl", "-c", "w.pth", "--json")
    assert "warning: the token cache" in out and "cannot be written" in out and "Traceback" not in out
    assert json.loads(out[out.index("{") :].splitlines()[0])["tokens"] > 0


def test_tokencache_falls_back_to_a_temporary_folder(tmp_path):
    from gptcli.errors import GptCliWarning
    from gptcli.tokencache import cached_corpus_tokens

    (tmp_path / "afile").write_text("")
    with pytest.warns(GptCliWarning, match="cannot be written"):
        got = cached_corpus_tokens([VERDICT], cache_dir=tmp_path / "afile" / "tokens")
    assert len(got.train) > 1000 and not (tmp_path / "afile" / "tokens").exists()


def test_prepare_into_an_unwritable_folder_is_one_line_and_leaves_nothing(workdir, monkeypatch):
    (workdir / "afile").write_text("")
    line = cli("prepare", "the-verdict.txt", "-o", "afile/shards", expect=1)
    assert "afile/shards: could not write the shards (Not a directory)" in line
    # a disk that fills up after the first shard: no shard and no folder left
    from gptcli import shards

    real = shards.write_shard
    calls = []

    def fill_up(path, blocks):
        calls.append(path)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, blocks)

    monkeypatch.setattr(shards, "write_shard", fill_up)
    line = cli("prepare", "the-verdict.txt", "-o", "new/shards", "--shard-size", "1000", expect=1)
    assert "new/shards: could not write the shards (No space left on device)" in line
    assert len(calls) == 2 and not (workdir / "new").exists()


def test_plot_to_an_unwritable_path_is_one_line(run_a, workdir):
    rec = {"type": "eval", "epoch": 1, "step": 0, "tokens_seen": 9, "train_loss": 10.0, "val_loss": 10.5}
    (run_a / "metrics.jsonl").write_text(json.dumps(rec) + "\n" + json.dumps({**rec, "step": 5}) + "\n")
    (workdir / "afile").write_text("")
    line = cli("plot", "runs/a", "-o", "afile/loss.png", expect=1)
    assert "afile/loss.png: could not write the plot" in line


def test_convert_to_hf_on_a_full_disk_leaves_no_folder(run_a, workdir, monkeypatch):
    from gptcli.weights import hf

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(hf, "save_file", full)
    line = cli("convert", "runs/a", "--to", "hf", "-o", "exports/x-hf", "-q", expect=1)
    assert "exports/x-hf: could not write the export (No space left on device)" in line
    assert not (workdir / "exports").exists()
    (workdir / "afile").write_text("")
    line = cli("convert", "runs/a", "--to", "hf", "-o", "afile/x-hf", "-q", expect=1)
    assert "afile/x-hf" in line


def test_sample_responses_to_an_unwritable_path_is_one_line(tmp_path):
    from gptcli.commands.sample import _write_json
    from gptcli.errors import SaveError

    (tmp_path / "afile").write_text("")
    with pytest.raises(SaveError, match="could not write the responses"):
        _write_json(tmp_path / "afile" / "r.json", [{"a": 1}])


# ---------------------------------------------------------------------------------------------
# 3. and 5. Flags checked before any work


def test_num_samples_over_the_bound_is_refused_in_one_line(workdir):
    line = cli("sample", "--num-samples", "100000000", expect=2)
    assert "invalid --num-samples: 100,000,000" in line and "at most 4096" in line
    line = cli("sample", "--num-samples", "3000", "-p", "a", "-p", "b", expect=2)
    assert "3,000 x 2 prompts = 6,000" in line
    assert "4096" in cli("sample", "--help")


def test_a_wandb_project_wandb_refuses_is_a_usage_error(workdir):
    pytest.importorskip("wandb")
    line = cli("train", "the-verdict.txt", "--wandb", "--wandb-project", "a/b", "--out", "runs/w", expect=2)
    assert "invalid --wandb-project: 'a/b'" in line
    assert not (workdir / "runs/w").exists()


# ---------------------------------------------------------------------------------------------
# 4. Rotation keeps the step checkpoint a finetune run stands on


def test_rotate_keeps_a_pinned_checkpoint_while_its_dependent_exists(tmp_path):
    run = tmp_path / "base"
    for step in (1, 2, 3):
        rundir.step_checkpoint_path(run, step).parent.mkdir(parents=True, exist_ok=True)
        rundir.step_checkpoint_path(run, step).write_bytes(b"x")
    (tmp_path / "lora").mkdir()
    assert rundir.pin_checkpoint(rundir.step_checkpoint_path(run, 1), tmp_path / "lora") is not None
    warned = []
    assert rundir.rotate(run, 1, warn=warned.append) == [rundir.step_checkpoint_path(run, 2)]
    assert [p.name for p in rundir.list_step_checkpoints(run)] == ["step-00000001.pth", "step-00000003.pth"]
    assert len(warned) == 1 and "lora" in warned[0]
    (tmp_path / "lora").rmdir()  # its dependent deleted, a pin holds nothing
    rundir.rotate(run, 1)
    assert [p.name for p in rundir.list_step_checkpoints(run)] == ["step-00000003.pth"]


def test_resuming_a_base_run_keeps_a_lora_runs_base(workdir):
    (workdir / "small.txt").write_text(VERDICT.read_text(encoding="utf-8")[:4000], encoding="utf-8")
    rows = ["Label,Text"] + [
        f"{'spam' if i % 3 == 0 else 'ham'},{'win cash now' if i % 3 == 0 else 'see you at lunch'} {i}"
        for i in range(20)
    ]
    (workdir / "d.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    tiny = ["--context-length", "12", "--emb-dim", "32", "--n-heads", "4", "--n-layers", "2"]
    fast = [*tiny, "--batch-size", "8", "--eval-freq", "100", "--keep-last", "1", "-q"]
    run_gptcli("train", "small.txt", *fast, "--epochs", "1", "--out", "runs/b2", cwd=workdir, check=True)
    base = rundir.list_step_checkpoints(workdir / "runs/b2")[-1]
    run_gptcli(
        "finetune", "classify", "d.csv", "--init", str(base), "--lora-rank", "2", "--epochs", "1",
        "--batch-size", "2", "--out", "runs/cls", "-q", cwd=workdir, check=True,
    )  # fmt: skip
    proc = run_gptcli("resume", "runs/b2", "--epochs", "2", "-q", cwd=workdir, check=True)
    assert base.is_file(), "rotation deleted the LoRA run's base"
    assert "keeping" in proc.stderr and "runs/cls" in proc.stderr
    assert len(rundir.list_step_checkpoints(workdir / "runs/b2")) == 2  # the new one and the pinned base
    out = run_gptcli("classify", "-c", "runs/cls", "win cash now", cwd=workdir, check=True).stdout
    assert out.split("\t")[0] in ("ham", "spam")
    run_gptcli("convert", "runs/cls", "--merge-lora", cwd=workdir, check=True)
    run_gptcli("finetune", "resume", "runs/cls", "--epochs", "2", "-q", cwd=workdir, check=True)
