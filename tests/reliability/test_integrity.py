"""Integrity on a hostile pass (issue 21): changed finetune data, a shard edited in its middle,
a token cache entry made from a file rewritten while it was read, leftover temporary files, a
shard truncated under a running job, a terminal on standard input, and settings that were
accepted silently. Each is refused (or cleaned up) with one line naming what is wrong."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from gptcli import checkpoint as ckpt
from gptcli import rundir
from gptcli.cli import app
from gptcli.commands.finetune import finetune_command
from gptcli.config import ModelConfig
from gptcli.model import GPT

from ..finetune_helpers import BOOK_CFG, RECORDS

TINY = dict(BOOK_CFG, context_length=48)


def invoke(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


def one_error(res, code: int = 2) -> str:
    assert "Traceback" not in res.output, res.output
    assert res.exit_code == code, (res.output, res.exception)
    lines = [x for x in res.output.splitlines() if x.startswith("error:")]
    assert len(lines) == 1, res.output
    return lines[0]


def _base(path):
    torch.manual_seed(0)
    cfg = ModelConfig(**TINY)
    return ckpt.atomic_save(ckpt.weights_checkpoint(cfg, GPT(cfg).state_dict()), path)


COMMON = dict(epochs=1, batch_size=2, eval_iter=1, lr=1e-2, device="cpu", eval_freq=2)


# ---------------------------------------------------------------------------------------------
# 1. Finetune data changed after training: resume, eval --split and sample --responses refuse


@pytest.fixture(scope="module")
def instruct_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("ft")
    base = _base(root / "base.pth")
    data = root / "data.json"
    data.write_text(json.dumps(RECORDS * 2), encoding="utf-8")
    cfg = dict(kind="instruct", data=str(data), init=str(base), sample_tokens=2, **COMMON)
    finetune_command(cfg, out=root / "run")
    return root


@pytest.fixture
def edited(instruct_run):
    data = instruct_run / "data.json"
    original = data.read_bytes()
    changed = [dict(r) for r in RECORDS * 2]
    changed[-1]["output"] = "relabelled"
    data.write_text(json.dumps(changed), encoding="utf-8")
    yield instruct_run
    data.write_bytes(original)


def test_the_finetune_checkpoint_records_its_data(instruct_run):
    path = rundir.list_step_checkpoints(instruct_run / "run")[-1]
    assert len(ckpt.load_checkpoint(path)["finetune"]["data_fingerprint"]) == 64


@pytest.mark.parametrize(
    "args",
    [
        ("finetune", "resume", "{run}", "--epochs", "2"),
        ("resume", "{run}", "--epochs", "2"),
        ("eval", "-c", "{run}", "--split", "test", "-q"),
        ("sample", "-c", "{run}", "--responses", "test", "-o", "{root}/out.json", "--max-new-tokens", "2", "-q"),
    ],
)
def test_changed_finetune_data_is_refused(edited, args):
    args = [a.format(run=edited / "run", root=edited) for a in args]
    line = one_error(invoke(*args))
    assert "data.json: the data differs from the one this run was trained on" in line


def test_unchanged_finetune_data_evaluates(instruct_run):
    res = invoke("eval", "-c", instruct_run / "run", "--split", "test", "-q", "--json")
    assert res.exit_code == 0, res.output


def test_a_checkpoint_without_a_data_fingerprint_still_evaluates(instruct_run, tmp_path):
    path = rundir.list_step_checkpoints(instruct_run / "run")[-1]
    obj = ckpt.load_checkpoint(path)
    obj["finetune"].pop("data_fingerprint", None)
    old = ckpt.atomic_save(obj, tmp_path / "old.pth")
    assert invoke("eval", "-c", old, "--split", "test", "-q", "--json").exit_code == 0


# ---------------------------------------------------------------------------------------------
# 2. A change inside a shard, past its first and last MiB, is a change of data


def _shard(path, n_tokens: int):
    from gptcli import shards

    ids = (np.arange(n_tokens) % 50000).astype(np.uint16)
    shards.write_shard(path, ids)
    return path


def test_a_change_in_the_middle_of_a_shard_changes_its_fingerprint(tmp_path):
    from gptcli import shards

    path = _shard(tmp_path / "train_000000.bin", 3 << 20)  # 6 MiB of ids
    before = shards.fingerprint([path])
    with open(path, "r+b") as f:
        f.seek(3 << 20)
        f.write(b"\x01\x00")
    assert shards.fingerprint([path]) != before


def test_the_shard_digest_is_cached_by_stat_and_rehashed_on_change(tmp_path, monkeypatch):
    from gptcli import shards

    path = _shard(tmp_path / "train_000000.bin", 1000)
    first = shards.fingerprint([path])
    calls = []
    real = shards._sha256_file
    monkeypatch.setattr(shards, "_sha256_file", lambda p: calls.append(p) or real(p))
    assert shards.fingerprint([path]) == first and calls == []  # the cache answered
    with open(path, "r+b") as f:
        f.seek(2000)
        f.write(b"\x02\x00")
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert shards.fingerprint([path]) != first and calls == [path]


def test_resume_accepts_the_sampled_fingerprint_of_older_checkpoints(tmp_path):
    from gptcli import shards

    files = [_shard(tmp_path / "train_000000.bin", 1000), _shard(tmp_path / "val_000000.bin", 100)]
    _, _, full, sampled = shards.run_tokens([tmp_path], None)
    assert sampled == shards.sampled_fingerprint(files) and full == shards.fingerprint(files)


# ---------------------------------------------------------------------------------------------
# 5. A shard truncated while a run reads it: a DataError, not SIGBUS


def test_a_shard_truncated_under_a_reader_is_a_data_error(tmp_path):
    from gptcli import shards
    from gptcli.errors import DataError

    path = _shard(tmp_path / "train_000000.bin", 1 << 16)
    tokens = shards.read_tokens([path])
    assert len(tokens[0:100]) == 100
    os.truncate(path, shards.HEADER_BYTES + 1000)
    with pytest.raises(DataError, match=r"train_000000\.bin: shrank from .* while this run was reading it"):
        tokens[60000:60100]


# ---------------------------------------------------------------------------------------------
# 3. The token cache keys the bytes it tokenized: a file rewritten while it is read is refused


def test_a_file_rewritten_between_hashing_and_tokenizing_poisons_no_cache_entry(tmp_path, monkeypatch):
    from gptcli import tokencache
    from gptcli.errors import DataError

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("first version of the text. " * 200, encoding="utf-8")
    real_scan = tokencache._scan

    def scan_then_rewrite(files, *a, **k):
        out = real_scan(files, *a, **k)
        if files:  # same size, and the mtime put back: only the bytes tell
            st = corpus.stat()
            corpus.write_text("other version of the text. " * 200, encoding="utf-8")
            os.utime(corpus, ns=(st.st_atime_ns, st.st_mtime_ns))
        return out

    monkeypatch.setattr(tokencache, "_scan", scan_then_rewrite)
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match=r"corpus\.txt: changed while it was being tokenized"):
        tokencache.cached_corpus_tokens([corpus], val_ratio=0.1, cache_dir=cache)
    assert not list(cache.glob("*.json")) and not list(cache.glob("*.bin"))


# ---------------------------------------------------------------------------------------------
# 4. Temporary files of killed processes are removed by the next prepare / cache build


def _dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)


def test_the_next_cache_build_removes_a_killed_builds_temporaries(tmp_path):
    from gptcli import tokencache

    cache = tmp_path / "cache"
    cache.mkdir()
    dead = _dead_pid()
    stale = [cache / f".tmp-{dead}-{'a' * 40}.bin.tmp", cache / f"stdin-{dead}-xyz.tmp"]
    live = [cache / f".tmp-{os.getpid()}-{'b' * 40}.bin.tmp", cache / f"stdin-{os.getpid()}-abc.tmp"]
    for p in stale + live:
        p.write_bytes(b"partial")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("some text to tokenize. " * 50, encoding="utf-8")
    tokencache.cached_corpus_tokens([corpus], val_ratio=0.1, cache_dir=cache)
    assert not any(p.exists() for p in stale) and all(p.exists() for p in live)


def test_the_next_prepare_removes_a_killed_prepares_temporaries(tmp_path):
    from gptcli import shards

    out = tmp_path / "out"
    out.mkdir()
    left = [out / ".tokens-k2j3h4.tmp", out / f".tmp-{_dead_pid()}-train_000000.bin.tmp"]
    for p in left:
        p.write_bytes(b"partial")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("some text to tokenize. " * 50, encoding="utf-8")
    shards.prepare([corpus], out, shard_size=1000)
    assert not any(p.exists() for p in left)
    assert sorted(p.name for p in out.iterdir()) == ["train_000000.bin", "val_000000.bin"]


def test_prepare_stopped_by_sigterm_leaves_no_temporary_file(tmp_path):
    import signal
    import subprocess
    import time

    from ..conftest import gptcli_exe

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("The quick brown fox jumps over the lazy dog, again and again.\n" * 400_000, encoding="utf-8")
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [*gptcli_exe(), "prepare", str(corpus), "-o", str(out), "--threads", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not list(out.glob(".tokens-*.tmp")) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.02)
        assert proc.poll() is None, "prepare finished before it could be stopped"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err and "error: SIGTERM: prepare stopped" in err
    assert not out.exists() or not list(out.iterdir())


# ---------------------------------------------------------------------------------------------
# 6. '-' on a terminal: refused at once instead of waiting silently


@pytest.fixture
def terminal_stdin(monkeypatch):
    from gptcli import formats

    monkeypatch.setattr(formats, "stdin_is_terminal", lambda: True)


def test_train_from_a_terminal_stdin_is_refused(terminal_stdin, tmp_path):
    from ..conftest import TINY_FLAGS

    line = one_error(invoke("train", "-", *TINY_FLAGS, "--device", "cpu", "-o", tmp_path / "run"))
    assert line == (
        "error: '-' reads standard input, which is a terminal here: pipe the text in, e.g. cat FILE | gptcli train -"
    )
    assert not (tmp_path / "run").exists()


def test_resume_of_a_stdin_run_from_a_terminal_is_refused(tmp_path, verdict, monkeypatch):
    from gptcli import formats

    from ..conftest import TINY_FLAGS

    run = tmp_path / "run"
    res = CliRunner().invoke(
        app,
        ["train", "-", *TINY_FLAGS, "--device", "cpu", "--max-steps", "1", "--batch-size", "2", "-o", str(run), "-q"],
        input=verdict.read_text(encoding="utf-8"),
    )
    assert res.exit_code == 0, res.output
    monkeypatch.setattr(formats, "stdin_is_terminal", lambda: True)
    line = one_error(invoke("resume", run, "--max-steps", "2"))
    assert "was trained on standard input ('-'), which is a terminal here, so it cannot be resumed" in line


# ---------------------------------------------------------------------------------------------
# 8. Settings that were accepted silently


@pytest.mark.parametrize(
    "flags, needle",
    [
        (["--lora-rank", "2", "--lora-alpha", "0"], "invalid --lora-alpha: 0 (must be a number > 0)"),
        (["--lora-alpha", "8"], "--lora-alpha sets the LoRA adapters, which --lora-rank R turns on"),
        (["--lora-targets", "attn"], "--lora-targets sets the LoRA adapters, which --lora-rank R turns on"),
        (["--lora-alpha", "8", "--lora-targets", "mlp"], "--lora-alpha and --lora-targets set the LoRA adapters"),
    ],
)
def test_lora_settings_without_effect_are_refused(instruct_run, tmp_path, flags, needle):
    data, base = instruct_run / "data.json", instruct_run / "base.pth"
    res = invoke("finetune", "instruct", data, "--init", base, "--device", "cpu", "-o", tmp_path / "r", *flags)
    assert needle in one_error(res)
    assert not (tmp_path / "r").exists()


def test_a_stored_lora_setting_without_a_rank_still_loads():
    from gptcli.finetune.config import FinetuneConfig

    cfg = FinetuneConfig.from_dict({"kind": "instruct", "data": "d", "init": "i", "lora_rank": 0, "lora_alpha": 8.0})
    assert cfg.lora_rank == 0


def test_text_field_equal_to_label_field_is_refused(instruct_run, tmp_path):
    csv_file = tmp_path / "d.csv"
    csv_file.write_text("Label,Text\nspam,win\nham,hi\n", encoding="utf-8")
    res = invoke("finetune", "classify", csv_file, "--init", instruct_run / "base.pth", "--device", "cpu",
                 "--text-field", "Label", "-o", tmp_path / "r")  # fmt: skip
    assert "invalid --text-field: 'Label' is also --label-field" in one_error(res)


def test_val_file_equal_to_the_training_file_is_refused(tmp_path, verdict):
    from ..conftest import TINY_FLAGS

    res = invoke("train", verdict, "--val-file", verdict, *TINY_FLAGS, "--device", "cpu", "-o", tmp_path / "r")
    assert "invalid --val-file: " in (line := one_error(res)) and "is also the training data" in line
    assert not (tmp_path / "r").exists()


# ---------------------------------------------------------------------------------------------
# 9. A CPU run resumed with another thread count says that it will not resume exactly


def test_resume_takes_the_runs_threads_or_says_what_other_ones_cost(tmp_path, verdict):
    from ..conftest import TINY_FLAGS

    run = tmp_path / "run"
    res = invoke("train", verdict, *TINY_FLAGS, "--device", "cpu", "--max-steps", "1", "--batch-size", "2",
                 "--threads", "1", "-o", run, "-q")  # fmt: skip
    assert res.exit_code == 0, res.output
    obj = ckpt.load_checkpoint(rundir.list_step_checkpoints(run)[-1])
    assert obj["progress"]["threads"] == 1
    try:
        torch.set_num_threads(2)  # what this process would use; the run's own count wins
        res = invoke("resume", run, "--max-steps", "2")
        assert res.exit_code == 0, res.output
        assert torch.get_num_threads() == 1 and "resuming with the 1 CPU thread(s)" in res.output, res.output
        res = invoke("resume", run, "--max-steps", "3", "--threads", "2")  # asked for: it wins, and its cost is said
    finally:
        torch.set_num_threads(1)
    assert res.exit_code == 0, res.output
    notes = [x for x in res.output.splitlines() if "thread" in x]
    assert len(notes) == 1 and "pass --threads 1" in notes[0] and torch.get_num_threads() == 1, res.output


# ---------------------------------------------------------------------------------------------
# 7. Messages that named the symptom, not the cause


def test_mask_prompt_with_prompts_that_fill_the_context_is_refused_at_the_start(instruct_run, tmp_path):
    short = [{"instruction": f"Say hi {i}.", "input": "", "output": "hi"} for i in range(3)]
    long = [{"instruction": "word " * 30 + str(i), "input": "", "output": "ok fine"} for i in range(17)]
    data = tmp_path / "long.json"
    data.write_text(json.dumps(short + long), encoding="utf-8")
    res = invoke("finetune", "instruct", data, "--init", instruct_run / "base.pth", "--device", "cpu", "--mask-prompt",
                 "--batch-size", "2", "--epochs", "1", "-o", tmp_path / "r")  # fmt: skip
    line = one_error(res)
    assert "long.json: with --mask-prompt, 14 of 17 training records have every target masked" in line


def test_eval_on_a_shard_directory_says_it_holds_shards(tmp_path, instruct_run):
    _shard(tmp_path / "train_000000.bin", 1000)
    _shard(tmp_path / "val_000000.bin", 100)
    line = one_error(invoke("eval", tmp_path, "--model", instruct_run / "base.pth", "--device", "cpu"))
    assert "holds token shards (.bin); eval takes text files" in line and "gptcli train" in line


def test_classify_max_length_over_the_context_names_the_flag(instruct_run, tmp_path):
    csv_file = tmp_path / "d.csv"
    csv_file.write_text("Label,Text\n" + "".join(f"{'spam' if i % 2 else 'ham'},text {i}\n" for i in range(20)))
    res = invoke("finetune", "classify", csv_file, "--init", instruct_run / "base.pth", "--device", "cpu",
                 "--max-length", "100000", "-o", tmp_path / "r")  # fmt: skip
    assert one_error(res) == "error: invalid --max-length: 100000 is over the model's context 48"


def test_a_stray_bin_leaves_a_text_directory_a_text_directory(tmp_path):
    from gptcli import shards

    (tmp_path / "a.txt").write_text("some text", encoding="utf-8")
    (tmp_path / "notes.bin").write_bytes(b"\x00\x01not a shard at all")
    assert not shards.is_shard_input(tmp_path)


def test_a_directory_mixing_shards_and_text_names_both(tmp_path):
    from gptcli import shards
    from gptcli.errors import DataError

    (tmp_path / "a.txt").write_text("some text", encoding="utf-8")
    _shard(tmp_path / "train_000000.bin", 100)
    with pytest.raises(DataError, match=r"holds both token shards \(train_000000\.bin\) and text files \(a\.txt\)"):
        shards.is_shard_input(tmp_path)
