"""What a new user of `gptcli finetune` ran into: empty splits, a JSON list for classify, info's
settings, true token counts in the logs, --eval-freq/--save-every units, plain messages, and
`sample`/`classify` without -c picking a run of the right kind."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from gptcli import checkpoint as ckpt
from gptcli import rundir
from gptcli.cli import app
from gptcli.config import ModelConfig
from gptcli.finetune import classify as cls_
from gptcli.metrics import read_metrics
from gptcli.model import GPT
from gptcli.plot import eval_series

from .finetune_helpers import BOOK_CFG, RECORDS

ROWS = [
    {"Label": "spam" if i % 3 == 0 else "ham", "Text": f"{'win cash' if i % 3 else 'lunch'} {i}"} for i in range(24)
]


@pytest.fixture
def root(tmp_path, monkeypatch):
    """A tiny base model, 20 instruction records and a 24-row CSV, in cwd."""
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    cfg = ModelConfig(**dict(BOOK_CFG, context_length=48))
    ckpt.atomic_save(ckpt.weights_checkpoint(cfg, GPT(cfg).state_dict()), tmp_path / "base.pth")
    (tmp_path / "data.json").write_text(json.dumps(RECORDS * 4), encoding="utf-8")
    lines = ["Label,Text"] + [f"{r['Label']},{r['Text']}" for r in ROWS]
    (tmp_path / "d.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return tmp_path


COMMON = ["--init", "base.pth", "--batch-size", "4", "--eval-iter", "1", "--device", "cpu", "--epochs", "1"]
INSTRUCT = ["finetune", "instruct", "data.json", *COMMON]
CLASSIFY = ["finetune", "classify", "d.csv", *COMMON]


def cli(*args, expect=0):
    res = CliRunner().invoke(app, [str(a) for a in args])
    assert res.exit_code == expect, (res.output, res.exception)
    assert "Traceback" not in res.output and "Error)" not in res.output, res.output
    if expect:
        lines = [line for line in res.output.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:"), res.output
    return res.output


def test_empty_train_or_val_splits_are_refused_and_a_run_without_test_says_so(root):
    out = cli(*INSTRUCT, "--split", "1,0,0", "-o", "runs/x", expect=2)
    assert "invalid --split: '1,0,0'" in out and "validation" in out
    assert not (root / "runs/x").exists()  # refused before anything was written
    # Fractions above 0 whose rounding leaves no example for the data given: the file, count, split.
    out = cli(*CLASSIFY, "--split", "0.7,0.03,0.27", "-o", "runs/x", expect=2)
    assert "d.csv: 24 examples split 0.7,0.03,0.27" in out and "no validation examples" in out
    out = cli(*INSTRUCT, "--split", "0.04,0.5,0.46", "-o", "runs/x", expect=2)
    assert "data.json: 20 records split 0.04,0.5,0.46" in out and "no training examples" in out
    assert not (root / "runs/x").exists()
    # A test fraction of 0 is allowed: no NaN, and asking for the test split says there is none.
    out = cli(*INSTRUCT, "--split", "0.9,0.1,0", "--max-steps", "1", "-o", "runs/notest")
    assert "nan" not in out.lower() and "no test split" in out
    assert "the run has no test split" in cli("eval", "-c", "runs/notest", "--split", "test", expect=2)
    msg = cli("sample", "-c", "runs/notest", "--responses", "test", "-o", "r.json", expect=2)
    assert "invalid --responses test: the run has no test split" in msg and not (root / "r.json").exists()


def test_classify_reads_a_json_list_as_instruct_does(root):
    (root / "d.json").write_text(json.dumps(ROWS, indent=2), encoding="utf-8")  # a pretty-printed list
    (root / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    expected = cls_.read_table(root / "d.csv", text_field="Text", label_field="Label")
    for name in ("d.json", "d.jsonl"):
        assert cls_.read_table(root / name, text_field="Text", label_field="Label") == expected
    out = cli("finetune", "classify", "d.json", *COMMON, "--max-steps", "1", "-o", "runs/j")
    assert "Train accuracy" in out
    (root / "bad.json").write_text("[1, 2]", encoding="utf-8")
    assert "bad.json: record 1 is not an object" in cli("finetune", "classify", "bad.json", *COMMON, expect=2)


def _train_section(out: str) -> str:
    return out.split("\ntrain:\n", 1)[1]


def test_info_shows_only_the_settings_of_the_runs_kind(root):
    cli(*INSTRUCT, "--max-steps", "1", "-o", "runs/ins")
    cli(*CLASSIFY, "--max-steps", "1", "--lora-rank", "2", "-o", "runs/cls")
    ins = _train_section(cli("info", "runs/ins", "--verbose"))
    assert "kind: instruct" in ins and "mask_prompt:" in ins and "template:" in ins
    for key in ("text_field", "label_field", "trainable", "balance", "lora_rank", "lora_alpha"):
        assert f"{key}:" not in ins, key  # classify's, and LoRA's on a full finetune
    out = cli("info", "runs/cls", "--verbose")
    cls = _train_section(out)
    assert "text_field: Text" in cls and "trainable: last-block" in cls and "lora_rank: 2" in cls
    for key in ("mask_prompt", "template", "split_seed", "sample_tokens"):
        assert f"{key}:" not in cls, key
    assert "base:" in out and "rank 2" in out
    cli("convert", "runs/cls", "--merge-lora", "-o", "merged.pth", "-q")
    out = cli("info", "merged.pth", "--verbose")
    assert "merged" in out and "no base needed" in out and "\nbase:" not in out
    for key in ("lora_rank", "lora_alpha", "trainable"):
        assert f"{key}:" not in _train_section(out), key


def test_metrics_carry_true_tokens_and_plot_labels_its_top_axis_by_them(root):
    cli(*CLASSIFY, "--max-length", "8", "--eval-freq", "1", "--max-steps", "2", "-o", "runs/c")
    records = read_metrics(root / "runs/c/metrics.jsonl")
    assert [(r["tokens_seen"], r["examples_seen"]) for r in records if r["type"] == "eval"] == [(32, 4), (64, 8)]
    table = {r["run"].rsplit("/", 1)[-1]: r for r in json.loads(cli("runs", "--json"))}
    assert table["c"]["tokens_seen"] == 64
    assert "64 tokens seen (8 examples)" in cli("info", "runs/c")
    assert eval_series(root / "runs/c/metrics.jsonl")["seen_label"] == "Tokens seen"
    # A classify run logged before examples_seen existed kept examples in tokens_seen: say so.
    old = [{**r, "tokens_seen": r["examples_seen"]} for r in records]
    for r in old:
        r.pop("examples_seen")
    old.append({"type": "accuracy", "epoch": 1, "step": 1, "tokens_seen": 8, "train_acc": 0.5, "val_acc": 0.5})
    (root / "old.jsonl").write_text("".join(json.dumps(r) + "\n" for r in old), encoding="utf-8")
    assert eval_series(root / "old.jsonl")["seen_label"] == "Examples seen"


def test_eval_freq_and_save_every_take_steps_tokens_or_durations(root):
    # 4 rows of 8 tokens: 32 tokens a step. Every 64 tokens: evaluated after steps 1 (the book's
    # first), 2 and 4; saved when 96 tokens are crossed (step 3), and at the budget's stop (4).
    args = ("--max-length", "8", "--max-steps", "4", "--keep-last", "5", "-o", "runs/t")
    cli(*CLASSIFY, "--eval-freq", "64 tokens", "--save-every", "96tok", *args)
    evals = [r["step"] for r in read_metrics(root / "runs/t/metrics.jsonl") if r["type"] == "eval"]
    assert evals == [0, 1, 3]
    assert [p.name for p in rundir.list_step_checkpoints(root / "runs/t")] == [
        "step-00000003.pth",
        "step-00000004.pth",
    ]
    saved = ckpt.load_checkpoint(rundir.list_step_checkpoints(root / "runs/t")[-1])["train_config"]
    assert (saved["eval_freq"], saved["save_every"]) == ("64 tokens", "96tok")
    cli(*INSTRUCT, "--eval-freq", "30m", "--max-steps", "1", "-o", "runs/m")  # a duration, as train's
    assert "invalid --eval-freq: 0" in cli(*INSTRUCT, "--eval-freq", "0", expect=2)
    assert "invalid --save-every: '5x'" in cli(*INSTRUCT, "--save-every", "5x", expect=2)
    help_text = " ".join(cli("finetune", "instruct", "--help").split())  # as one line, however it wraps
    assert "--eval-freq INTERVAL" in help_text and "[default: 5 steps, the book's]" in help_text
    assert "--save-every INTERVAL" in help_text
    assert "the book's order" not in help_text and "train,val,test" in help_text


def test_messages_name_the_file_in_plain_words(root):
    (root / "adir").mkdir()
    assert "error: adir: is a directory, not a file" in cli("finetune", "instruct", "adir", *COMMON, expect=2)
    assert "error: adir: is a directory, not a file" in cli("finetune", "classify", "adir", *COMMON, expect=2)
    out = cli(*INSTRUCT, "--template", "tpl.txt", expect=2)
    assert "invalid --template: tpl.txt: no such file" in out
    cli(*INSTRUCT, "--max-steps", "1", "-o", "runs/ins")  # 20 records: 17 train, 1 val, 2 test
    (root / "empty.txt").write_text("\n  \n", encoding="utf-8")
    out = cli("classify", "-c", "runs/ins", "--file", "empty.txt", expect=2)
    assert "invalid --file: empty.txt: has no texts" in out
    assert "no such file" in cli("classify", "--file", "nope.txt", expect=2)
    out = cli("sample", "-c", "runs/ins", "--responses", "val", "-o", "r.json", "--max-new-tokens", "1")
    assert "wrote 1 response to r.json" in out


def test_commands_without_c_pick_the_newest_run_they_can_use(root, monkeypatch):
    cli(*INSTRUCT, "--max-steps", "1", "-o", "runs/ins")
    cli(*CLASSIFY, "--max-steps", "1", "-o", "runs/cls")  # the newest run: a classifier
    out = cli("sample", "--prompt", "Hi", "--max-new-tokens", "1")
    assert "(the most recent run that generates text; the newer runs/cls is a classifier)" in out
    assert "using runs/ins/" in out
    out = cli("sample", "--instruction", "Hi", "--max-new-tokens", "1")
    assert "using runs/ins/" in out and "the most recent instruct finetune" in out
    cli(*INSTRUCT, "--max-steps", "1", "-o", "runs/ins2")  # now the newest
    out = cli("classify", "win cash")
    assert "using runs/cls/" in out and "the newer runs/ins2 is an instruct finetune" in out
    assert out.rstrip().endswith("\twin cash")
    # Only a classifier: one line that says why it cannot be used and what to do.
    cls_only = root / "only"
    (cls_only / "runs").mkdir(parents=True)
    (root / "runs/cls").rename(cls_only / "runs/cls")
    monkeypatch.chdir(cls_only)
    out = cli("sample", "--prompt", "Hi", expect=2)
    assert "no run that generates text under runs/ (the most recent run, runs/cls, is a classifier)" in out
    assert "gptcli classify -c runs/cls TEXT" in out
