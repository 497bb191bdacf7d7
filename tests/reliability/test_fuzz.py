"""Property-based fuzzing: random values of every type for every config key (train's and the
finetunes'), and random flag values for ``sample`` (one prompt or several), ``eval`` (and its
``--task``), ``prepare``, ``finetune`` and ``classify``. Whatever the input, gptcli answers with exit 0, 1 or 2, at most
three lines on stderr, and never a traceback.

Runs in-process through typer's CliRunner (stderr captured on its own) with a bounded number of
examples, so the whole file takes seconds. Hypothesis prints the failing input when one is found.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path
from unittest import mock

import pytest
import typer
import typer.main
import typer.testing
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from gptcli import checkpoint as ckpt
from gptcli.cli import app
from gptcli.commands.train import resolve_train_configs
from gptcli.config import ModelConfig, TrainConfig, flag_fields
from gptcli.device import resolve_device
from gptcli.errors import GptCliError
from gptcli.finetune.config import FinetuneConfig
from gptcli.finetune.config import flag_fields as ft_flag_fields
from gptcli.model import GPT
from gptcli.tokenizer import encode

from ..conftest import TINY_MODEL

MODEL_KEYS = [f.name for f in dataclasses.fields(ModelConfig)] + ["preset"]
TRAIN_KEYS = [f.name for f in dataclasses.fields(TrainConfig)]


def fuzz(examples: int) -> settings:
    """Bounded and without a database: the same cost on every run, and no files left in the tree.
    GPTCLI_FUZZ_SCALE=N runs N times as many examples, for a longer hunt."""
    return settings(
        max_examples=examples * int(os.environ.get("GPTCLI_FUZZ_SCALE", "1")),
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


# Values a YAML file can hold, of every type, with the spellings people actually write.
WORDS = st.sampled_from(
    [
        "nan", "inf", "-inf", ".nan", "4e-4", "1e309", "-1", "0", "1.5", "yes", "no", "on", "off",
        "true", "~", "", " ", "/", ".", "..", "cpu", "cuda", "cuda:0", "cuda:x", "meta", "tpu", "fp16",
        "bf16", "gpt2-124M", "auto", "strict", "Every effort", "x" * 300, "a\x00b",
    ]
)  # fmt: skip
SCALARS = st.one_of(
    st.integers(-10, 100),
    st.integers(2**62, 2**80),
    st.integers(-(2**80), -(2**62)),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.booleans(),
    st.none(),
    WORDS,
)
VALUES = st.one_of(
    SCALARS,
    st.lists(SCALARS, max_size=3),
    st.dictionaries(st.text(max_size=4), SCALARS, max_size=2),
)
# Unquoted YAML 1.1 scalars that do not read as what they look like, and some broken syntax.
RAW_YAML = st.sampled_from(
    [
        "4e-4", "1e3", "1_000", "0x1F", "0o17", "017", "0b101", "12:30", "12:30:00", "2001-12-14",
        "2001-12-14T21:59:43Z", ".inf", "-.inf", ".NaN", "~", "null", "yes", "No", "ON", "y", "n",
        "'4e-4'", '"4e-4"', "[1, 2]", "{a: 1}", "[a, [b]]", "!!binary aGk=", "!!float '1'", "!!str 5",
        "&a [*a]", "*undefined", "[", "{", "'", "|\n    text\n", ">-\n    folded\n", "- a\n  - b",
        "9" * 5000, "!!python/object:os.system x", "\t", "%", "@x", "`x`",
    ]
)  # fmt: skip


DEVICES = st.sampled_from(["auto", "cpu", "cuda", "cuda:0", "cuda:99", "mps", "meta", "tpu", "cpu:0", "", "CPU"])
FLOATS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["nan", "inf", "-inf", "1e309", "0", "0.7", "1", "abc", ""]),
)
INTS = st.one_of(st.integers(-3, 60000).map(str), st.sampled_from([str(2**70), str(-(2**70)), "1.5", "x", ""]))


def check_cli(res) -> None:
    """The contract every input gets."""
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert res.exit_code in (0, 1, 2), (res.exit_code, res.output)
    assert "Traceback" not in res.output, res.output
    lines = [x for x in res.stderr.splitlines() if x.strip()]
    assert len(lines) <= 3, res.stderr


def check_usable(train: TrainConfig) -> None:
    """Settings that were accepted can be used: every one is checked before any work, so nothing
    can fail at the end of an epoch (an empty sample prompt) or when the device is chosen."""
    assert encode(train.start_context), repr(train.start_context)
    try:
        resolve_device(train.device)
    except GptCliError:
        pass  # a device this machine lacks: one line, before any work


def check_loader(path: Path) -> None:
    """The config loader itself: settings, or a GptCliError, never another exception."""
    try:
        _, train, _ = resolve_train_configs(config_file=path, preset=None, model_flags={}, train_flags={})
    except GptCliError as e:
        assert str(e) and "\n" not in str(e), str(e)
    else:
        check_usable(train)


def check_printed(res) -> None:
    """What ``--print-config`` printed reads back as the same, usable settings."""
    if res.exit_code == 0:
        printed = yaml.safe_load(res.stdout)
        assert ModelConfig.from_dict(printed["model"]).to_dict() == printed["model"]
        train = TrainConfig.from_dict(printed["train"])
        assert train.to_dict() == printed["train"]
        check_usable(train)


@pytest.fixture(scope="module")
def scratch():
    with tempfile.TemporaryDirectory(prefix="gptcli-fuzz-") as d:
        yield Path(d)


_COMMAND = None


def run(*args: str):
    """``CliRunner().invoke(app, args)`` with the click command built once: typer rebuilds it on
    every call (~70 ms with the generated train flags), which would be most of an example's time."""
    global _COMMAND
    if _COMMAND is None:
        _COMMAND = typer.main.get_command(app)
    with mock.patch.object(typer.testing, "_get_command", lambda _app: _COMMAND):
        return CliRunner().invoke(app, list(args))


# ------------------------------------------------------------------------------------------
# train --print-config and the config loader


@fuzz(200)
@given(
    model=st.dictionaries(st.sampled_from(MODEL_KEYS), VALUES, max_size=3),
    train=st.dictionaries(st.sampled_from(TRAIN_KEYS), VALUES, max_size=3),
)
@example(model={}, train={"init": "x" * 300})  # a name too long for the file system
@example(model={"preset": [1]}, train={"data": "/", "compile": "no"})
def test_config_values_of_every_type(scratch, model, train):
    path = scratch / "typed.yaml"
    path.write_text(yaml.safe_dump({"model": model, "train": train}), encoding="utf-8")
    check_loader(path)
    res = run("train", "--config", str(path), "--print-config")
    check_cli(res)
    check_printed(res)


@fuzz(100)
@given(section=st.sampled_from(["model", "train"]), data=st.data())
def test_config_raw_yaml_spellings(scratch, section, data):
    key = data.draw(st.sampled_from(MODEL_KEYS if section == "model" else TRAIN_KEYS))
    raw = data.draw(RAW_YAML | st.text(max_size=8))
    path = scratch / "raw.yaml"
    path.write_text(f"{section}:\n  {key}: {raw}\n", encoding="utf-8")
    check_loader(path)
    res = run("train", "--config", str(path), "--print-config")
    check_cli(res)
    check_printed(res)


FLAG_NAMES = ["--" + f.name.replace("_", "-") for cls in (ModelConfig, TrainConfig) for f in flag_fields(cls)]


@fuzz(150)
@given(
    flags=st.lists(
        st.tuples(st.sampled_from(FLAG_NAMES + ["--preset"]), WORDS | st.text(max_size=8) | INTS | FLOATS),
        max_size=3,
    )
)
@example(flags=[("--start-context", "")])
@example(flags=[("--device", "cuda:x")])
def test_train_flag_values(flags):
    res = run("train", *[a for pair in flags for a in pair], "--print-config")
    check_cli(res)
    check_printed(res)


# ------------------------------------------------------------------------------------------
# sample and eval flags against a tiny checkpoint


@pytest.fixture(scope="module")
def tiny(scratch):
    cfg = ModelConfig(**TINY_MODEL)
    path = scratch / "tiny.pth"
    ckpt.atomic_save(ckpt.weights_checkpoint(cfg, GPT(cfg).state_dict()), path)
    text = scratch / "text.txt"
    text.write_text("Every effort moves you, and every word counts. " * 4, encoding="utf-8")
    return path, text


def option(name: str, values) -> st.SearchStrategy[list[str]]:
    return st.one_of(st.just([]), values.map(lambda v: [name, v]))


@fuzz(120)
@given(
    flags=st.tuples(
        option("--device", DEVICES),
        option("--temperature", FLOATS),
        option("--top-k", INTS),
        option("--top-p", FLOATS),
        option("--seed", st.integers(-(2**70), 2**70).map(str) | INTS),
        # small enough to run: a huge valid count would generate for hours, as asked
        option("--max-new-tokens", st.integers(-3, 4).map(str) | st.sampled_from([str(-(2**70)), "x"])),
        option("--num-samples", st.integers(-2, 2).map(str) | st.sampled_from([str(-(2**70)), "x"])),
        option("--dtype", st.sampled_from(["auto", "fp32", "bf16", "fp16", "", "x"])),
        option("--prompt", st.text(max_size=10)),
        st.sampled_from([[], ["--json"], ["--no-cache"], ["--stream"]]),
    )
)
def test_sample_flags(tiny, flags):
    check_cli(run("sample", "--checkpoint", str(tiny[0]), "--quiet", *[a for f in flags for a in f]))


@fuzz(60)
@given(
    flags=st.tuples(
        option("--device", DEVICES),
        option("--batch-size", st.integers(-2, 4).map(str) | INTS),
        option("--encoding-errors", st.sampled_from(["strict", "replace", "ignore", "", "x"])),
        st.sampled_from([[], ["--json"]]),
    )
)
def test_eval_flags(tiny, flags):
    check_cli(run("eval", str(tiny[1]), "--checkpoint", str(tiny[0]), "--quiet", *[a for f in flags for a in f]))


# ------------------------------------------------------------------------------------------
# The newer commands (issue 21): prepare, the finetunes' flags and config keys, classify,
# eval --task and sample with several prompts


@fuzz(60)
@given(
    flags=st.tuples(
        option("--shard-size", INTS | st.sampled_from(["100M", "30m", "1e6", "1_000", "2b", "0", "-1"])),
        option("--val-tokens", INTS | st.sampled_from(["1k", "10m", "1e3"])),
        option("--val-ratio", FLOATS),
        option("--format", st.sampled_from(["auto", "txt", "jsonl", "csv", "parquet", "", "x"])),
        option("--text-field", st.text(max_size=6)),
        option("--encoding-errors", st.sampled_from(["strict", "replace", "", "x"])),
        option("--threads", INTS),
        st.sampled_from([[], ["--json"]]),
    )
)
def test_prepare_flags(tiny, scratch, flags):
    out = tempfile.mkdtemp(dir=scratch, prefix="shards-")
    check_cli(run("prepare", str(tiny[1]), "-o", out, "--quiet", *[a for f in flags for a in f]))


FINETUNE_KEYS = [f.name for f in dataclasses.fields(FinetuneConfig) if f.name not in ("kind",)]
FT_FLAGS = sorted({"--" + f.name.replace("_", "-") for kind in ("instruct", "classify") for f in ft_flag_fields(kind)})


@fuzz(80)
@given(
    kind=st.sampled_from(["instruct", "classify"]),
    flags=st.lists(st.tuples(st.sampled_from(FT_FLAGS), WORDS | st.text(max_size=8) | INTS | FLOATS), max_size=3),
)
def test_finetune_flag_values(scratch, kind, flags):
    """Every finetune flag's values are checked before any model is read: a base that does not
    exist is the error a valid set of flags ends in, after all of them passed."""
    data = scratch / "ft.json"
    data.write_text('[{"instruction": "a", "input": "", "output": "b"}]', encoding="utf-8")
    args = [a for pair in flags for a in pair]
    check_cli(run("finetune", kind, str(data), "--init", str(scratch / "no-base.pth"), "-q", *args))


@fuzz(80)
@given(
    kind=st.sampled_from(["instruct", "classify"]),
    values=st.dictionaries(st.sampled_from(FINETUNE_KEYS), VALUES, max_size=3),
)
def test_finetune_config_keys(scratch, kind, values):
    path = scratch / "ft.yaml"
    path.write_text(yaml.safe_dump({"finetune": {"init": str(scratch / "no-base.pth"), "data": "x.json", **values}}))
    check_cli(run("finetune", kind, "--config", str(path), "-q"))


@fuzz(40)
@given(
    texts=st.lists(st.text(max_size=12), max_size=3),
    flags=st.sampled_from([[], ["--json"], ["--file", "missing.txt"], ["--file", ""]]),
)
def test_classify_flags(tiny, texts, flags):
    check_cli(run("classify", "-c", str(tiny[0]), *flags, "--", *texts))


@fuzz(40)
@given(
    task=option("--task", st.sampled_from(["loss", "hellaswag", "", "x", "HellaSwag"])),
    flags=st.sampled_from([[], ["--json"], ["--stride", "4"], ["--stride", "0"], ["--split", "test"]]),
)
def test_eval_task_flags(tiny, task, flags):
    check_cli(run("eval", str(tiny[1]), "--checkpoint", str(tiny[0]), "--quiet", *task, *flags))


@fuzz(40)
@given(
    # short enough for the tiny model's 12-token context (a longer prompt is one warning each)
    prompts=st.lists(st.text("abcdefgh ,.", max_size=8), min_size=2, max_size=4),
    flags=st.tuples(
        option("--num-samples", st.integers(-1, 2).map(str)),
        option("--max-new-tokens", st.integers(0, 3).map(str)),
        st.sampled_from([[], ["--json"], ["--temperature", "1", "--seed", "1"]]),
    ),
)
def test_sample_with_several_prompts(tiny, prompts, flags):
    args = [a for p in prompts for a in ("--prompt", p)]
    check_cli(run("sample", "--checkpoint", str(tiny[0]), "--quiet", *args, *[a for f in flags for a in f]))
