"""gptcli.hellaswag: scores equal an independent computation with transformers' GPT2LMHeadModel
on the exported model, over hand-written examples in the official jsonl format."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from gptcli import hellaswag
from gptcli.checkpoint import atomic_save, weights_checkpoint
from gptcli.config import ModelConfig
from gptcli.errors import DataError
from gptcli.model import GPT
from gptcli.weights.hf import export_hf
from tests.conftest import run_gptcli

EXAMPLES = Path(__file__).parent / "data" / "hellaswag_examples.jsonl"


@pytest.fixture(scope="module")
def tiny_model():
    cfg = ModelConfig(vocab_size=50257, context_length=48, emb_dim=32, n_heads=4, n_layers=2, drop_rate=0.0)
    torch.manual_seed(3)
    return GPT(cfg).eval()


def _hf_scores(hf_dir: Path, examples: list[dict]) -> list[list[tuple[float, int]]]:
    """(sum of log-likelihoods, token count) of each ending, with transformers' tokenizer and model,
    one row at a time (no padding): llm.c's render_example written out independently."""
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
    model = transformers.GPT2LMHeadModel.from_pretrained(hf_dir).eval()
    out = []
    for ex in examples:
        ctx = tok(ex["ctx"])["input_ids"]
        scores = []
        for ending in ex["endings"]:
            end = tok(" " + ending)["input_ids"]
            row = torch.tensor([ctx + end])
            with torch.no_grad():
                logp = F.log_softmax(model(row).logits.float(), dim=-1)
            lp = [logp[0, len(ctx) + j - 1, t].item() for j, t in enumerate(end)]
            scores.append((sum(lp), len(end)))
        out.append(scores)
    return out


def test_scores_match_transformers_on_the_exported_model(tiny_model, tmp_path):
    raw = [json.loads(line) for line in EXAMPLES.read_text().splitlines()]
    hf = _hf_scores(export_hf(tiny_model.cfg, tiny_model.state_dict(), tmp_path / "hf"), raw)
    examples = hellaswag.read_examples(EXAMPLES)
    assert len(examples) == len(raw) == 5
    correct = correct_norm = 0
    for ex, ref in zip(examples, hf):
        ours = hellaswag.ending_logprobs(tiny_model, ex)
        assert [len(lp) for lp in ours] == [n for _, n in ref]
        for lp, (s, _) in zip(ours, ref):
            assert sum(lp) == pytest.approx(s, abs=1e-3)
        sums = [s for s, _ in ref]
        means = [s / n for s, n in ref]
        correct += sums.index(max(sums)) == ex.label
        correct_norm += means.index(max(means)) == ex.label
    res = hellaswag.evaluate(tiny_model, examples)
    assert (res.examples, res.correct, res.correct_norm) == (5, correct, correct_norm)


def test_acc_uses_the_sum_and_acc_norm_the_mean_per_token():
    # ending 0: three likely tokens; ending 1: one less likely token, but a larger sum
    assert hellaswag.predictions([[-1.0, -1.0, -1.0], [-2.5]]) == (1, 0)
    assert hellaswag.predictions([[-1.0], [-1.0]]) == (0, 0)  # a tie goes to the first


def test_long_rows_keep_the_ending_and_the_end_of_the_context(tiny_model):
    ex = hellaswag.Example("word " * 200, ("a short ending.", "another one."), 0, "x: line 1")
    short = hellaswag.Example("word " * 60, ex.endings, 0, "x: line 1")
    # only the last context tokens matter once the row is cut to the model's context
    long_lp, short_lp = hellaswag.ending_logprobs(tiny_model, ex), hellaswag.ending_logprobs(tiny_model, short)
    assert [len(lp) for lp in long_lp] == [len(lp) for lp in short_lp] == [4, 3]
    for a, b in zip(long_lp, short_lp):
        assert a == pytest.approx(b, abs=1e-5)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"ctx": "a", "endings": ["b", "c"]}', r"line 2: no field 'label' \(the test split has no answers"),
        ('{"ctx": "a", "endings": ["b", "c"], "label": 2}', r"line 2: field 'label' must be an index into the 2"),
        ('{"ctx": "a", "endings": "b", "label": 0}', r"line 2: field 'endings' must be a list"),
        ('{"endings": ["b", "c"], "label": 0}', r"line 2: field 'ctx' must be a non-empty string"),
        ("{not json", r"line 2: not a valid JSON line"),
    ],
)
def test_bad_lines_are_one_clear_error(tmp_path, line, message):
    p = tmp_path / "h.jsonl"
    p.write_text(EXAMPLES.read_text().splitlines()[0] + "\n" + line + "\n")
    with pytest.raises(DataError, match=message):
        hellaswag.read_examples(p)


def test_eval_task_hellaswag_prints_acc_acc_norm_and_the_count(tiny_model, tmp_path):
    atomic_save(weights_checkpoint(tiny_model.cfg, tiny_model.state_dict()), tmp_path / "m.pth")
    res = hellaswag.evaluate(tiny_model, hellaswag.read_examples(EXAMPLES))
    proc = run_gptcli(
        "eval", "--task", "hellaswag", str(EXAMPLES), "-c", "m.pth", "--device", "cpu", "--json", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert (out["examples"], out["acc"], out["acc_norm"]) == (5, res.acc, res.acc_norm)
    from typer.testing import CliRunner

    from gptcli.cli import app

    ckpt = str(tmp_path / "m.pth")
    table = CliRunner().invoke(app, ["eval", "--task", "hellaswag", str(EXAMPLES), "-c", ckpt, "--device", "cpu"])
    assert table.exit_code == 0, table.output
    assert "acc_norm" in table.stdout and f"{res.acc_norm:.4f}" in table.stdout
    bad = CliRunner().invoke(app, ["eval", "--task", "hellaswag", str(EXAMPLES), "-c", ckpt, "--stride", "4"])
    assert bad.exit_code == 2 and bad.stderr.strip() == "error: --stride applies to --task loss only"


def test_eval_task_hellaswag_with_dtype_scores_the_model_as_that_dtype_runs_it(tiny_model, tmp_path):
    from typer.testing import CliRunner

    from gptcli.cli import app
    from gptcli.inference import load_model_for_inference

    path = atomic_save(weights_checkpoint(tiny_model.cfg, tiny_model.state_dict()), tmp_path / "m.pth")
    args = ["eval", "--task", "hellaswag", str(EXAMPLES), "-c", str(path), "--json", "--dtype", "int8"]
    proc = CliRunner().invoke(app, args)
    assert proc.exit_code == 0, proc.output
    out = json.loads(proc.stdout)
    want = hellaswag.evaluate(
        load_model_for_inference(path, None, device="cpu", dtype="int8").net, hellaswag.read_examples(EXAMPLES)
    )
    assert (out["dtype"], out["examples"], out["acc"], out["acc_norm"]) == ("int8", 5, want.acc, want.acc_norm)
