"""convert --weights-only (.pth) and --to safetensors: the model and its config without the
optimizer's state, taken by sample, eval and --init as the checkpoint it came from is; an
instruct run's file keeps its template (its LoRA merged); a classifier's stays a classifier; a
damaged or foreign file is one line."""

from __future__ import annotations

import json

import pytest
import torch

from gptcli import checkpoint as ckpt
from gptcli.config import ModelConfig
from gptcli.tasks import model_from_checkpoint

from .conftest import VERDICT
from .export_helpers import BOOK, OPENAI, cli, finetune_runs, training_checkpoint, weights_file


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("weights_only")
    return {
        "book": training_checkpoint(root / "book.pth", ModelConfig(**BOOK)),
        "openai": weights_file(root / "openai.pth", ModelConfig(**OPENAI), seed=1),
        **finetune_runs(root),
    }


def logits(src, ids):
    path = ckpt.resolve_checkpoint(src)
    model, _ = model_from_checkpoint(ckpt.load_checkpoint(path), path)
    with torch.no_grad():
        return model.eval()(torch.tensor([ids]))[0]


SAMPLE = (
    "--prompt",
    "Every effort moves you",
    "--max-new-tokens",
    "8",
    "--seed",
    "3",
    "--temperature",
    "1",
    "--top-k",
    "5",
    "-q",
)


@pytest.mark.parametrize("to", ["pth", "safetensors"])
def test_weights_only_file_holds_the_model_alone_and_samples_and_evaluates_as_the_checkpoint(models, tmp_path, to):
    dest = tmp_path / f"w.{to}"
    args = ("--weights-only",) if to == "pth" else ("--to", "safetensors")
    cli("convert", models["book"], *args, "-o", dest, "-q")
    full, obj = ckpt.load_checkpoint(models["book"]), ckpt.load_checkpoint(dest)
    assert obj["kind"] == "weights" and "optimizer_state_dict" not in obj and "progress" not in obj
    assert obj["source"]["kind"] == "training" and obj["source"]["step"] == 1
    assert obj["model_config"] == full["model_config"]
    assert list(obj["model_state_dict"]) == list(full["model_state_dict"])  # the same names, in order
    assert all(torch.equal(obj["model_state_dict"][k], v) for k, v in full["model_state_dict"].items())
    # AdamW keeps two moments per weight: the file is about a third of the checkpoint
    assert dest.stat().st_size < 0.4 * models["book"].stat().st_size
    assert cli("sample", "--model", dest, *SAMPLE) == cli("sample", "-c", models["book"], *SAMPLE)
    text = tmp_path / "text.txt"
    text.write_text(VERDICT.read_text(encoding="utf-8")[:3000], encoding="utf-8")
    ev = ("--json", "-q")
    assert json.loads(cli("eval", text, "--model", dest, *ev))["loss"] == pytest.approx(
        json.loads(cli("eval", text, "-c", models["book"], *ev))["loss"], abs=1e-6
    )


def test_safetensors_keeps_a_tied_head_tied_and_init_takes_it(models, tmp_path):
    dest = tmp_path / "openai.safetensors"
    cli("convert", models["openai"], "--to", "safetensors", "-o", dest, "-q")
    state = ckpt.load_checkpoint(dest)["model_state_dict"]
    assert state["lm_head.weight"] is state["wte.weight"]
    ids = list(range(100, 120))
    assert torch.equal(logits(dest, ids), logits(models["openai"], ids))
    run = tmp_path / "run"
    cli("train", VERDICT, "--init", dest, "--stride", "4", "--batch-size", "2", "--eval-iter", "1",
        "--max-steps", "1", "-o", run, "-q")  # fmt: skip
    cfg = ckpt.load_checkpoint(ckpt.resolve_checkpoint(run))["model_config"]
    assert cfg["tie_weights"] and cfg["qkv_bias"] and cfg["emb_dim"] == 32


def test_instruct_run_keeps_its_template_and_is_merged(models, tmp_path):
    ask = ("--instruction", "Name the capital of France.", "--max-new-tokens", "6", "-q")
    expected = cli("sample", "-c", models["ins"], *ask)
    for dest, args in (
        (tmp_path / "ins.pth", ("--weights-only",)),
        (tmp_path / "ins.safetensors", ("--to", "safetensors")),
    ):
        cli("convert", models["ins"], *args, "-o", dest, "-q")
        obj = ckpt.load_checkpoint(dest)
        assert obj["finetuned_from"]["kind"] == "instruct" and "template" in obj["finetuned_from"]
        assert not any(".A" in k or ".B" in k for k in obj["model_state_dict"])  # LoRA folded in
        assert cli("sample", "-c", dest, *ask) == expected
    out = cli("sample", "-c", tmp_path / "ins.safetensors", "--responses", "test", "-o", tmp_path / "r.json", expect=2)
    assert "not its data settings" in out


def test_classifier_stays_a_classifier(models, tmp_path):
    dest = tmp_path / "cls.safetensors"
    cli("convert", models["cls"], "--to", "safetensors", "-o", dest, "-q")
    assert ckpt.load_checkpoint(dest)["kind"] == "classify"
    text = ("win cash 3", "--json")
    assert json.loads(cli("classify", "-c", dest, *text)) == json.loads(cli("classify", "-c", models["cls"], *text))


def test_damaged_or_foreign_files_are_one_line(models, tmp_path):
    dest = tmp_path / "w.safetensors"
    cli("convert", models["book"], "--to", "safetensors", "-o", dest, "-q")
    data = bytearray(dest.read_bytes())
    data[-5] ^= 0xFF  # a bit flipped in the last tensor
    dest.write_bytes(bytes(data))
    assert "CRC mismatch" in cli("sample", "--model", dest, *SAMPLE, expect=2)
    dest.write_bytes(bytes(data[: len(data) // 2]))
    assert "not a readable gptcli weights file" in cli("sample", "--model", dest, *SAMPLE, expect=2)
    hf = tmp_path / "hf"
    cli("convert", models["book"], "--to", "hf", "-o", hf, "-q")
    assert "not a gptcli weights file" in cli("sample", "--model", hf / "model.safetensors", *SAMPLE, expect=2)
    assert "--weights-only" in cli("convert", models["book"], "-o", tmp_path / "x.pth", expect=2)
