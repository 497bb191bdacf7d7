"""Settings: one strict, typed validation layer for flags, config files and a checkpoint's stored
settings; every setting checked before any work; an epoch saved before its sample; and the
sample/eval flags that used to end in a traceback."""

from __future__ import annotations

import pytest
import torch
import yaml
from typer.testing import CliRunner

from gptcli import checkpoint as ckpt
from gptcli import rundir
from gptcli.cli import app
from gptcli.config import ModelConfig, TrainConfig
from gptcli.metrics import read_metrics
from gptcli.model import GPT
from gptcli.training import Trainer

from ..conftest import TINY_FLAGS, TINY_MODEL, VERDICT


def cli(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def one_error(res, code: int, *needles: str) -> str:
    """Exactly one ``error:`` line on stderr, holding each needle; no traceback."""
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert res.exit_code == code, (res.exit_code, res.stderr)
    lines = [x for x in res.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), res.stderr
    assert "Traceback" not in res.output
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def config_file(tmp_path, text: str):
    path = tmp_path / "c.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def printed_config(*args) -> dict:
    res = cli("train", *args, "--print-config")
    assert res.exit_code == 0, res.output
    return yaml.safe_load(res.stdout)


# ------------------------------------------------------------------------------------------
# Coercion: what a person obviously meant


def test_lr_written_as_yaml_1_1_reads_it_is_a_float(tmp_path):
    # YAML 1.1 reads an exponent without a dot (4e-4) as the string "4e-4"
    for spelling in ("4e-4", "'4e-4'", "' 4e-4 '", "0.0004"):
        cfg = printed_config("--config", config_file(tmp_path, f"train:\n  lr: {spelling}\n"))
        assert isinstance(cfg["train"]["lr"], float) and cfg["train"]["lr"] == 4e-4, spelling
    assert TrainConfig.from_dict({"lr": "4e-4", "min_lr": 1}).min_lr == 1.0  # an int is a float too


def test_a_single_data_path_is_a_one_item_list_not_its_characters(tmp_path):
    text = tmp_path / "x.txt"
    text.write_text("hello")
    cfg = printed_config("--config", config_file(tmp_path, f"train:\n  data: {text}\n"))
    assert cfg["train"]["data"] == [str(text)]


def test_compile_no_as_a_string_is_refused_and_only_a_real_bool_counts(tmp_path):
    c = config_file(tmp_path, "train:\n  compile: 'no'\n")
    one_error(cli("train", "--config", c, "--print-config"), 2, str(c), "compile (--compile)", "'no'", "true or false")
    assert printed_config("--config", config_file(tmp_path, "train:\n  compile: no\n"))["train"]["compile"] is False


@pytest.mark.parametrize("text,key", [("train:\n  seed: 1.5\n", "seed"), ("model:\n  n_layers: true\n", "n_layers")])
def test_an_int_must_be_an_int(tmp_path, text, key):
    c = config_file(tmp_path, text)
    one_error(cli("train", "--config", c, "--print-config"), 2, str(c), f"invalid {key}", "expected an integer")


@pytest.mark.parametrize(
    "section,key,value",
    [
        ("train", "lr", "[1]"),
        ("train", "stride", "abc"),
        ("model", "drop_rate", "x"),
        ("train", "min_lr", "{a: 1}"),
        ("train", "val_ratio", "''"),
        ("train", "seed", "'7'"),
        ("train", "init", "5"),
        ("train", "val_file", "[a]"),
        ("train", "start_context", "12345"),
        ("train", "epochs", "2.5"),
        ("train", "weight_decay", "true"),
        ("train", "device", "5"),
        ("train", "data", "{a: 1}"),
        ("train", "lr", ".nan"),
    ],
)
def test_wrong_types_are_one_line_naming_file_key_and_value(tmp_path, section, key, value):
    c = config_file(tmp_path, f"{section}:\n  {key}: {value}\n")
    line = one_error(cli("train", "--config", c, "--print-config"), 2, str(c), f"invalid {key}", "expected")
    assert "--" + key.replace("_", "-") in line or key == "data"  # the flag spelling too


def test_messages_use_the_flag_spelling_and_name_the_file_only_for_its_values(tmp_path):
    c = config_file(tmp_path, "model:\n  emb_dim: 30\n  n_heads: 4\n")
    one_error(cli("train", "--config", c, "--print-config"), 2, str(c), "emb_dim (--emb-dim)", "30")
    line = one_error(cli("train", "--emb-dim", "30", "--n-heads", "4", "--print-config"), 2, "invalid --emb-dim")
    assert str(c) not in line
    c2 = config_file(tmp_path, "train:\n  lr: 0.1\n")  # the file is fine; the flag is not
    line = one_error(cli("train", "--config", c2, "--lr", "nan", "--print-config"), 2, "invalid --lr: nan")
    assert str(c2) not in line


@pytest.mark.parametrize(
    "content,needle",
    [
        (b"train:\n  start_context: \xff\xfe\n", "not UTF-8"),
        (b"train:\n  seed: " + b"9" * 5000 + b"\n", "not valid YAML"),
        (b"1: 2\nx: 3\n", "unknown key"),
        (b"train: 0\n", "'train' must be a mapping"),
        (b"model:\n  preset: [1]\n", "preset"),
    ],
)
def test_config_files_that_cannot_be_read_as_settings_are_one_line(tmp_path, content, needle):
    c = tmp_path / "c.yaml"
    c.write_bytes(content)
    one_error(cli("train", "--config", c, "--print-config"), 2, str(c), needle)


def test_a_checkpoints_stored_settings_go_through_the_same_layer_on_resume(tmp_path):
    assert TrainConfig.from_dict({"lr": "4e-4"}).lr == 4e-4
    model_cfg = ModelConfig(**TINY_MODEL)
    obj = ckpt.training_checkpoint(
        model_cfg,
        {**TrainConfig(data=[str(VERDICT)]).to_dict(), "compile": "no"},
        GPT(model_cfg).state_dict(),
        optimizer_state={},
        progress={},
    )
    path = tmp_path / "edited.pth"
    torch.save(obj, path)
    one_error(cli("resume", path), 2, str(path), "train_config", "compile (--compile)", "'no'")


# ------------------------------------------------------------------------------------------
# Every setting checked before any work


@pytest.mark.parametrize("how", ["flag", "yaml"])
def test_a_bad_epoch_sample_prompt_is_refused_before_any_work(workdir, how):
    if how == "flag":
        args = ["--start-context", ""]
        needle = "invalid --start-context: ''"
    else:
        args = ["--config", config_file(workdir, "train:\n  start_context: 12345\n")]
        needle = "start_context (--start-context): 12345"
    res = cli("train", "the-verdict.txt", *TINY_FLAGS, "--epochs", "1", "--out", "run", *args)
    one_error(res, 2, needle)
    assert not (workdir / "run").exists()


def test_an_epoch_is_saved_before_its_sample_so_a_crash_in_sampling_loses_nothing(tmp_path, monkeypatch):
    mcfg = ModelConfig(**TINY_MODEL)
    cfg = TrainConfig(epochs=2, batch_size=8, stride=48, eval_freq=4, eval_iter=1, data=[str(VERDICT)])
    Trainer(mcfg, cfg, tmp_path / "full").fit()

    def crash(self):
        raise RuntimeError("crash while sampling")

    real = Trainer.sample_text
    monkeypatch.setattr(Trainer, "sample_text", crash)
    with pytest.raises(RuntimeError, match="crash while sampling"):
        Trainer(mcfg, cfg, tmp_path / "cut").fit()
    monkeypatch.setattr(Trainer, "sample_text", real)
    saved = rundir.list_step_checkpoints(tmp_path / "cut")
    assert saved, "the finished epoch must be saved before its sample is drawn"
    obj = ckpt.load_checkpoint(saved[-1])
    assert obj["progress"]["epoch"] == 1

    torch.manual_seed(999)  # as a fresh process would have it
    t = Trainer(
        ModelConfig.from_dict(obj["model_config"]), TrainConfig.from_dict(obj["train_config"]), tmp_path / "cut"
    )
    t.restore(obj)
    t.fit()

    def records(run):
        return [
            (r["type"], r["epoch"], r["step"], r.get("train_loss"), r.get("val_loss"), r.get("text"))
            for r in read_metrics(run / "metrics.jsonl")
        ]

    assert records(tmp_path / "cut") == records(tmp_path / "full")  # the lost sample is written once, on resume
    assert [r[0] for r in records(tmp_path / "cut")].count("sample") == 2
    full = ckpt.load_checkpoint(rundir.list_step_checkpoints(tmp_path / "full")[-1])["model_state_dict"]
    cut = ckpt.load_checkpoint(rundir.list_step_checkpoints(tmp_path / "cut")[-1])["model_state_dict"]
    assert all(torch.equal(full[k], cut[k]) for k in full)


# ------------------------------------------------------------------------------------------
# sample and eval flags


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    cfg = ModelConfig(**TINY_MODEL)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pth"
    ckpt.atomic_save(ckpt.weights_checkpoint(cfg, GPT(cfg).state_dict()), path)
    return path


@pytest.mark.parametrize(
    "args,needle",
    [
        (["sample", "--device", "tpu"], "invalid --device: 'tpu'"),
        (["sample", "--device", "meta"], "invalid --device: 'meta'"),
        (["eval", VERDICT, "--device", "meta"], "invalid --device: 'meta'"),
        (["sample", "--temperature", "nan"], "invalid --temperature: nan"),
        (["sample", "--temperature", "inf", "--top-k", "5"], "invalid --temperature: inf"),
        (["sample", "--seed", str(2**70)], f"invalid --seed: {2**70}"),
        (["sample", "--temperature", "1e-300"], "invalid --temperature: 1e-300"),  # logits / t overflow
    ],
)
def test_sample_and_eval_flags_that_used_to_crash_are_one_line(tiny_checkpoint, args, needle):
    one_error(cli(*args, "--checkpoint", tiny_checkpoint), 2, needle)


@pytest.mark.parametrize(
    "args",
    [
        ["--temperature", "1", "--top-p", "4.5e-241"],  # 0 in float32: the top token stays
        ["--temperature", "3.4028235677973366e+38", "--top-k", "2"],  # inf in float32: -inf / inf
    ],
)
def test_sampling_settings_at_the_edge_of_float32_still_sample(tiny_checkpoint, args):
    # found by tests/reliability/test_fuzz.py: each crashed torch.multinomial
    res = cli("sample", "--checkpoint", tiny_checkpoint, "--max-new-tokens", "3", "--seed", "1", *args)
    assert res.exit_code == 0 and res.exception is None, (res.stderr, res.exception)
    assert res.stdout.startswith("Every effort moves you")


def test_a_drop_rate_given_with_init_is_range_checked(tiny_checkpoint):
    one_error(cli("train", "--init", tiny_checkpoint, "--drop-rate", "1.5", "--print-config"), 2, "drop_rate", "1.5")


def test_a_cuda_index_this_machine_lacks_is_one_line(monkeypatch):
    from gptcli.device import resolve_device
    from gptcli.errors import UsageError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(UsageError, match=r"'cuda:3' \(this machine has 1 CUDA device"):
        resolve_device("cuda:3")
    with pytest.raises(UsageError, match="choose from auto, cpu, cuda, cuda:N or mps"):
        resolve_device("cuda:x")
