"""Each command's settings dataclass (gptcli.settings): its fields are the command's flags, and it
checks them, alone and together, whoever builds it (the command line or Python)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from gptcli.cli import app
from gptcli.config import flag_fields
from gptcli.errors import UsageError
from gptcli.settings.classify import ClassifySettings
from gptcli.settings.evaluate import EvalSettings
from gptcli.settings.prepare import PrepareSettings
from gptcli.settings.runs import InfoSettings, PlotSettings, RunsSettings
from gptcli.settings.sample import SampleSettings
from gptcli.settings.weights import ConvertSettings, DownloadSettings

COMMANDS = {
    "eval": EvalSettings,
    "sample": SampleSettings,
    "plot": PlotSettings,
    "download": DownloadSettings,
    "convert": ConvertSettings,
    "info": InfoSettings,
    "runs": RunsSettings,
    "prepare": PrepareSettings,
    "classify": ClassifySettings,
}


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_flag_is_a_field_of_the_settings(name):
    command = typer.main.get_command(app).commands[name]
    params = [p.name for p in command.params if p.name != "help"]
    assert params == [f.name for f in flag_fields(COMMANDS[name])]


def test_the_settings_import_neither_torch_nor_the_terminal():
    code = (
        "import sys\n"
        "import gptcli.settings.classify, gptcli.settings.evaluate, gptcli.settings.prepare\n"
        "import gptcli.settings.runs, gptcli.settings.sample, gptcli.settings.weights\n"
        "print(sorted(m for m in ('torch', 'typer', 'rich', 'click') if m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert proc.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "cls,kwargs,message",
    [
        (SampleSettings, {"top_k": 0}, "invalid --top-k: 0 (must be >= 1)"),
        (SampleSettings, {"device": "gpu"}, "invalid --device: 'gpu' (choose from auto, cpu, cuda, cuda:N or mps)"),
        (SampleSettings, {"dtype": "fp8"}, "invalid --dtype: 'fp8' (choose from auto, fp32, bf16, int8)"),
        (SampleSettings, {"threads": 0}, "invalid --threads: 0 (must be >= 1)"),
        (
            SampleSettings,
            {"interactive": True, "prompt": ["Hi"]},
            "invalid --interactive: cannot be combined with --prompt, --json or --num-samples",
        ),
        (SampleSettings, {"input_text": "x"}, "invalid --input: needs --instruction"),
        (SampleSettings, {"responses": "test"}, "--responses needs -o/--output FILE"),
        (SampleSettings, {"instruction": "x", "output": "a.json"}, "-o/--output goes with --responses SPLIT"),
        (EvalSettings, {}, "no FILE given"),
        (EvalSettings, {"paths": ["a.txt"], "split": "val"}, "--split evaluates a finetune run's own data"),
        (EvalSettings, {"paths": ["a.txt"], "stride": 0}, "invalid --stride: 0 (must be at least 1)"),
        (
            EvalSettings,
            {"paths": ["a.txt"], "task": "mmlu"},
            "invalid --task: 'mmlu' (choose from loss, hellaswag; or lm-eval:mmlu, lm-evaluation-harness's task)",
        ),
        (EvalSettings, {"paths": ["a.txt"], "task": "hellaswag", "stride": 4}, "--stride applies to --task loss only"),
        (EvalSettings, {"paths": ["a.txt"], "format": "xml"}, "invalid --format: 'xml'"),
        (EvalSettings, {"paths": ["a.txt"], "text_field": ""}, "invalid --text-field: '' (must not be empty)"),
        (PrepareSettings, {"inputs": ["a"], "out": "o", "shard_size": "1.5"}, "invalid --shard-size: '1.5'"),
        (PrepareSettings, {"inputs": ["a"], "out": "o", "val_ratio": 1.0}, "invalid --val-ratio: 1.0"),
        (PrepareSettings, {"inputs": ["a"], "out": "o", "encoding_errors": "x"}, "invalid --encoding-errors: 'x'"),
        (ConvertSettings, {"src": "a", "n_heads": 0}, "invalid --n-heads: 0 (must be an integer >= 1)"),
        (ConvertSettings, {"src": "a", "drop_rate": 1.0}, "invalid --drop-rate: 1.0 (must be in [0, 1))"),
        (
            ConvertSettings,
            {"src": "a", "target": "onnx"},
            "invalid --to: 'onnx' (choose from gptcli, hf, gguf, safetensors)",
        ),
        (DownloadSettings, {"size": "7B"}, "invalid --size: '7B' (choose from 124M, 355M, 774M, 1558M)"),
        (ClassifySettings, {}, "nothing to classify: give TEXT arguments or --file"),
    ],
)
def test_settings_check_their_values_from_python(cls, kwargs, message):
    with pytest.raises(UsageError) as e:
        cls(**kwargs)
    assert message in str(e.value)


def test_settings_resolve_what_the_flags_leave_open():
    assert SampleSettings().max_new_tokens == 50
    assert SampleSettings(instruction="Say hi").max_new_tokens == 256  # the book's chapter 7
    assert SampleSettings(max_new_tokens=3, instruction="Say hi").max_new_tokens == 3
    s = PrepareSettings(inputs=["a.txt"], out="o", shard_size="100M", val_tokens="2k")
    assert (s.shard_size, s.val_tokens, s.out) == (100_000_000, 2_000, Path("o"))
    assert EvalSettings(paths=["a.txt"]).paths == [Path("a.txt")]
    assert PlotSettings().targets == [] and ClassifySettings(texts=["hi"]).texts == ["hi"]
    # Settings are plain dataclasses: replace() checks the new values too.
    with pytest.raises(UsageError, match="--top-p"):
        dataclasses.replace(SampleSettings(), top_p=1.5)


@pytest.mark.parametrize(
    "args,needle",
    [
        (["sample", "--interactive", "--json"], "invalid --interactive: cannot be combined"),
        (["sample", "--device", "tpu"], "invalid --device: 'tpu'"),
        (["eval", "--split", "val", "a.txt"], "--split evaluates a finetune run's own data"),
        (["prepare", "a.txt", "-o", "out", "--shard-size", "zz"], "invalid --shard-size: 'zz'"),
        (["classify"], "nothing to classify"),
    ],
)
def test_a_bad_setting_is_one_line_and_exit_2_before_any_work(args, needle, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing to load here: the settings fail first
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert needle in result.output
    assert not list(tmp_path.iterdir())
