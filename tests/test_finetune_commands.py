"""The generic commands on finetune runs: info, runs, plot, resume, sample (--instruction,
--responses), eval --split and convert --merge-lora; each wrong use refused with one line."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from gptcli import checkpoint as ckpt
from gptcli import rundir
from gptcli.cli import app
from gptcli.commands.finetune import finetune_command
from gptcli.config import ModelConfig
from gptcli.finetune import instruct as ins
from gptcli.finetune.trainer import model_from_finetune_checkpoint
from gptcli.model import GPT

from .finetune_helpers import BOOK_CFG, RECORDS

TINY = dict(BOOK_CFG, context_length=48)


def _base(path):
    torch.manual_seed(0)
    cfg = ModelConfig(**TINY)
    return ckpt.atomic_save(ckpt.weights_checkpoint(cfg, GPT(cfg).state_dict()), path)


def _csv(path):
    rows = ["Label,Text"] + [
        f"{'spam' if i % 3 == 0 else 'ham'},{'win cash now' if i % 3 == 0 else 'see you at lunch'} {i}"
        for i in range(20)
    ]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A LoRA instruct run and a LoRA classify run, each a few steps on a tiny model."""
    root = tmp_path_factory.mktemp("ft")
    base = _base(root / "base.pth")
    data = root / "data.json"
    data.write_text(json.dumps(RECORDS * 2), encoding="utf-8")
    common = dict(init=str(base), epochs=1, batch_size=2, eval_iter=1, lr=1e-2, device="cpu", eval_freq=2)
    ins_cfg = dict(kind="instruct", data=str(data), lora_rank=2, lora_alpha=4.0, sample_tokens=3, **common)
    finetune_command(ins_cfg, out=root / "ins")
    finetune_command(dict(kind="classify", data=str(_csv(root / "d.csv")), lora_rank=2, **common), out=root / "cls")
    return root


def cli(*args, expect=0):
    res = CliRunner().invoke(app, [str(a) for a in args])
    assert res.exit_code == expect, (res.output, res.exception)
    if expect:
        lines = [line for line in res.output.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:"), res.output
        assert "Traceback" not in res.output
    return res.output


def newest(run):
    return rundir.list_step_checkpoints(run)[-1]


def test_info_shows_kind_lora_base_template_and_labels(runs):
    out = cli("info", runs / "ins")
    assert "kind:" in out and "instruct" in out
    assert "the book's format_input" in out and "rank 2, alpha 4.0" in out and str(runs / "base.pth") in out
    info = json.loads(cli("info", runs / "cls", "--json"))
    assert info["kind"] == "classify" and info["finetune"]["labels"] == ["ham", "spam"]
    assert info["finetune"]["lora"]["rank"] == 2 and len(info["finetune"]["base"]["sha256"]) == 64
    assert info["best_val_loss"] is not None and info["best_val_loss"] == info["best_val_loss"]  # not NaN


def test_runs_and_plot_read_finetune_runs_without_warnings(runs):
    res = CliRunner().invoke(app, ["runs", "--root", str(runs), "--json"])
    assert res.exit_code == 0 and "warning" not in res.output, res.output
    table = {r["run"].rsplit("/", 1)[-1]: r for r in json.loads(res.output)}
    assert table["ins"]["epochs"] == 1 and table["ins"]["epochs_done"] == 1
    assert table["cls"]["epochs"] == 1 and table["cls"]["epochs_done"] == 1  # an accuracy record per epoch
    assert table["cls"]["train_loss"] is not None
    out = cli("plot", runs / "cls", "--terminal")
    assert "validation loss" in out


def test_wrong_uses_are_one_line(runs, tmp_path):
    # `gptcli resume` goes on with a finetune run as `gptcli finetune resume` does: this one is done.
    assert "already finished its 1 epoch(s); extend it with: gptcli finetune resume" in cli(
        "resume", runs / "ins", expect=2
    )
    assert "not a finetuning checkpoint" in cli("finetune", "resume", runs / "base.pth", expect=2)
    assert "a classifier: use gptcli classify" in cli("sample", "-c", runs / "cls", expect=2)
    assert "not an instruction-finetuned model" in cli(
        "sample", "-c", runs / "base.pth", "--instruction", "Hi", expect=2
    )
    assert "not a finetune run" in cli("eval", "-c", runs / "base.pth", "--split", "test", expect=2)
    assert "no FILE given" in cli("eval", "-c", runs / "ins", expect=2)
    assert "invalid --split" in cli("eval", "-c", runs / "ins", "--split", "dev", expect=2)
    assert "not a finetune run" in cli("convert", runs / "base.pth", "--merge-lora", "-o", tmp_path / "m.pth", expect=2)
    assert "classifier" in cli("convert", runs / "cls", "--to", "hf", "-o", tmp_path / "hf", expect=2)


def _book_response(model, entry, max_new_tokens):
    """The book's chapter 7 loop: generate(..., eos_id=50256) greedy, then cut and strip."""
    from gptcli.tokenizer import decode, encode

    input_text = ins.format_input(entry)
    idx = torch.tensor([encode(input_text)])
    with torch.no_grad():
        for _ in range(max_new_tokens):
            nxt = model(idx[:, -model.cfg.context_length :])[:, -1, :].argmax(dim=-1, keepdim=True)
            if nxt.item() == 50256:
                break
            idx = torch.cat([idx, nxt], dim=1)
    return decode(idx[0].tolist())[len(input_text) :].replace("### Response:", "").strip()


def test_sample_instruction_and_responses_are_the_books(runs, tmp_path):
    path = newest(runs / "ins")
    model, cfg, _ = model_from_finetune_checkpoint(ckpt.load_checkpoint(path), path)
    entry = {"instruction": "Sort the numbers.", "input": "9, 4"}
    out = cli("sample", "-c", runs / "ins", "--instruction", entry["instruction"], "--input", entry["input"],
              "--max-new-tokens", "6", "-q")  # fmt: skip
    assert out.strip() == _book_response(model, entry, 6) and "Instruction" not in out
    dest = tmp_path / "responses.json"
    cli("sample", "-c", runs / "ins", "--responses", "test", "-o", dest, "--max-new-tokens", "4", "-q")
    written = json.loads(dest.read_text(encoding="utf-8"))
    _, _, test = ins.split_records(RECORDS * 2, ins.parse_split(cfg.split))
    assert [{k: r[k] for k in ("instruction", "input", "output")} for r in written] == test
    assert [r["model_response"] for r in written] == [_book_response(model, r, 4) for r in test]
    assert "needs -o" in cli("sample", "-c", runs / "ins", "--responses", "test", expect=2)


def test_eval_split_is_calc_loss_loader_and_accuracy(runs):
    path = newest(runs / "ins")
    model, cfg, _ = model_from_finetune_checkpoint(ckpt.load_checkpoint(path), path)
    _, _, test = ins.split_records(RECORDS * 2, ins.parse_split(cfg.split))
    data = ins.InstructData.build(test, ins.Template(), max_length=48, mask_prompt=False)
    losses = []
    with torch.no_grad():  # the book's calc_loss_loader: the mean of the batch losses, in order
        for i in range(0, len(test), cfg.batch_size):
            x, y = data.batch(list(range(i, min(i + cfg.batch_size, len(test)))))
            losses.append(model(x, targets=y).item())
    res = json.loads(cli("eval", "-c", runs / "ins", "--split", "test", "--json", "-q"))
    assert res["loss"] == pytest.approx(sum(losses) / len(losses), abs=1e-6) and res["examples"] == len(test)
    res = json.loads(cli("eval", "-c", runs / "cls", "--split", "test", "--json", "-q"))
    assert 0 <= res["accuracy"] <= 1 and res["loss"] > 0 and res["examples"] == 4


@pytest.mark.parametrize("run", ["ins", "cls"])
def test_merged_export_equals_the_unmerged_model(runs, tmp_path, run):
    path = newest(runs / run)
    unmerged, _, _ = model_from_finetune_checkpoint(ckpt.load_checkpoint(path), path)
    assert any(".A" in k for k in unmerged.state_dict())
    dest = tmp_path / "merged.pth"
    cli("convert", runs / run, "--merge-lora", "-o", dest, "-q")
    obj = ckpt.load_checkpoint(dest)
    assert not any(".A" in k or ".B" in k for k in obj["model_state_dict"])
    if run == "ins":
        assert obj["kind"] == "weights"
        merged = ckpt.model_from_checkpoint(obj, dest).eval()  # a plain model: loads anywhere
    else:
        assert obj["kind"] == "classify" and obj["finetune"]["lora"] is None
        merged, _, _ = model_from_finetune_checkpoint(obj, dest)  # needs no base any more
    x = torch.randint(0, 50257, (2, 11))
    with torch.no_grad():
        a, b = unmerged(x), merged(x)
    assert torch.allclose(a, b, atol=1e-5, rtol=0)
    if run == "ins":
        hf = tmp_path / "hf"
        cli("convert", runs / run, "--to", "hf", "-o", hf, "-q")
        assert (hf / "config.json").is_file()
