"""``gptcli eval --task lm-eval:...``: the bridge (gptcli.lm_harness_bridge) against the harness's
own HFLM on gptcli's Hugging Face export of the same checkpoint, over tiny tasks these tests
write in the harness's YAML format over local JSONL files (no network): a multiple-choice task,
a rolling-loglikelihood task and a generate_until task."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch

pytest.importorskip("lm_eval", reason="the harness is in the eval extra: pip install 'gptcli[eval]'")

from gptcli.checkpoint import atomic_save, load_checkpoint, weights_checkpoint  # noqa: E402
from gptcli.config import ModelConfig  # noqa: E402
from gptcli.errors import DataError, SaveError, UsageError  # noqa: E402
from gptcli.model import GPT  # noqa: E402
from tests.conftest import run_gptcli  # noqa: E402

# No test here may reach the Hub: tests/conftest.py sets HF_HUB_OFFLINE and HF_DATASETS_OFFLINE.
assert os.environ["HF_HUB_OFFLINE"] == os.environ["HF_DATASETS_OFFLINE"] == "1"

TASKS = ["tiny_mc", "tiny_roll", "tiny_gen"]
CONTEXT = 32  # short, so that some rows, documents and prompts overflow it

WORDS = "red green heavy light fast slow warm cold".split()
MC = [
    {
        "question": f"Which thing is {w}?" + (" Think about it for a long while, then answer." * (i % 3)),
        # one-token choices (" cat", " seven") share a forward pass; the others are several tokens
        "choices": ["cat", "the big brown dog", "seven", "a clear blue sky"],
        "label": i % 4,
    }
    for i, w in enumerate(WORDS)
]
ROLL = [{"text": "Every effort moves you. " * (2 + 4 * i) + "The end."} for i in range(4)] + [{"text": "Short."}]
GEN = [{"question": f"What is {i} plus {i}?" + " Be quick." * (i * 2), "answer": str(2 * i)} for i in range(6)]


def _yaml(name: str, data: Path, cache: Path, body: str) -> str:
    return (
        f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
        f"  cache_dir: {cache}\ntest_split: test\n{body}metadata:\n  version: 1.0\n"
    )


def write_tasks(folder: Path) -> Path:
    """The three tiny tasks: JSONL files and the harness's YAMLs over them."""
    folder.mkdir(parents=True, exist_ok=True)
    cache = folder / "hf-datasets-cache"
    for name, rows in (("mc", MC), ("roll", ROLL), ("gen", GEN)):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    bodies = {
        "tiny_mc": (
            "mc",
            'output_type: multiple_choice\ndoc_to_text: "Question: {{question}}\\nAnswer:"\n'
            'doc_to_choice: "{{choices}}"\ndoc_to_target: label\n'
            "metric_list:\n  - metric: acc\n  - metric: acc_norm\n",
        ),
        "tiny_roll": (
            "roll",
            'output_type: loglikelihood_rolling\ndoc_to_text: ""\ndoc_to_target: "{{text}}"\n'
            "metric_list:\n  - metric: word_perplexity\n  - metric: byte_perplexity\n  - metric: bits_per_byte\n",
        ),
        "tiny_gen": (
            "gen",
            'output_type: generate_until\ndoc_to_text: "Q: {{question}}\\nA:"\ndoc_to_target: "{{answer}}"\n'
            'generation_kwargs:\n  until: ["\\n", "."]\n  max_gen_toks: 6\n  do_sample: false\n'
            "metric_list:\n  - metric: exact_match\n",
        ),
    }
    for task, (data, body) in bodies.items():
        (folder / f"{task}.yaml").write_text(_yaml(task, folder / f"{data}.jsonl", cache, body))
    return folder


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny checkpoint, its Hugging Face export, the tasks and the harness's results of HFLM
    on the export (the oracle), computed once for the module."""
    from lm_eval.models.huggingface import HFLM

    from gptcli import lm_harness
    from gptcli.weights.convert import convert

    root = tmp_path_factory.mktemp("lm_eval")
    cfg = ModelConfig(vocab_size=50257, context_length=CONTEXT, emb_dim=32, n_heads=4, n_layers=2, drop_rate=0.0)
    torch.manual_seed(7)
    net = GPT(cfg)
    ckpt = atomic_save(weights_checkpoint(cfg, net.state_dict()), root / "runs" / "tiny" / "checkpoints" / "m.pth")
    # what `gptcli convert CKPT --to hf -o hf` writes: config, safetensors and the tokenizer's files
    hf_dir = convert(ckpt, root / "hf", target="hf")
    tasks = write_tasks(root / "tasks")
    manager = lm_harness.task_manager(tasks, include_defaults=False)
    oracle = HFLM(pretrained=str(hf_dir), batch_size=1, device="cpu")
    ref = lm_harness.run_tasks(oracle, TASKS, manager, log_samples=True, bootstrap_iters=0)
    return {"root": root, "ckpt": ckpt, "tasks": tasks, "manager": manager, "ref": ref}


def _bridge_run(path: Path, manager, *, batch_size: int = 3):
    from gptcli import lm_harness
    from gptcli.inference import load_model_for_inference
    from gptcli.lm_harness_bridge import GptcliLM

    loaded = load_model_for_inference(path, None, device="cpu")  # gptcli's one loader, as the command
    lm = GptcliLM(loaded.net, batch_size=batch_size, checkpoint=str(path))
    return lm, lm_harness.run_tasks(lm, TASKS, manager, log_samples=True, bootstrap_iters=0)


def _per_request(run) -> dict[str, list]:
    """Each task's answers per request, in the harness's document order: log-likelihoods as
    floats (multiple choice, rolling) and generated strings."""
    out = {}
    for task in TASKS:
        rows = []
        for sample in sorted(run.raw["samples"][task], key=lambda s: s["doc_id"]):
            for resp in sample["resps"]:
                r = resp[0]
                rows.append(float(r[0]) if isinstance(r, (list, tuple)) else r if isinstance(r, str) else float(r))
        out[task] = rows
    return out


def _metrics(run) -> dict[tuple[str, str], float]:
    return {
        (task, key): float(value)
        for task, res in run.raw["results"].items()
        for key, value in res.items()
        if "," in key and "stderr" not in key
    }


def test_the_bridge_equals_hflm_on_the_export_of_the_same_checkpoint(setup):
    _, ours = _bridge_run(setup["ckpt"], setup["manager"])
    ref = setup["ref"]
    assert ours.summary["versions"] == ref.summary["versions"] == {t: 1.0 for t in TASKS}
    assert ours.raw["n-samples"] == ref.raw["n-samples"]
    mine, theirs = _per_request(ours), _per_request(ref)
    assert len(mine["tiny_mc"]) == 4 * len(MC) and len(mine["tiny_roll"]) == len(ROLL)
    for task in ("tiny_mc", "tiny_roll"):
        assert mine[task] == pytest.approx(theirs[task], abs=1e-4), task
    assert mine["tiny_gen"] == theirs["tiny_gen"]  # greedy: the same text, token for token
    assert any(mine["tiny_gen"]), "the model generated nothing: the comparison would be empty"
    m, r = _metrics(ours), _metrics(ref)
    assert set(m) == set(r) and len(m) == 6
    for key in m:  # word perplexity runs to 1e5 and more on a random model: relative for it
        assert m[key] == pytest.approx(r[key], rel=1e-4, abs=1e-4), key
    assert "tiny_mc" in ours.table and "word_perplexity" in ours.table


def test_the_bridge_scores_the_checkpoint_it_is_given(setup, tmp_path):
    """Its model holds the checkpoint's tensors exactly; a perturbed checkpoint no longer matches
    HFLM on the original's export (so the equality above cannot come from other weights)."""
    obj = load_checkpoint(setup["ckpt"])
    lm, _ = _bridge_run(setup["ckpt"], setup["manager"])
    state = lm.net.state_dict()
    assert set(state) == set(obj["model_state_dict"])
    for name, t in obj["model_state_dict"].items():
        assert torch.equal(state[name], t), name
    sd = {k: v.clone() for k, v in obj["model_state_dict"].items()}
    sd["h.1.mlp.c_fc.weight"] += 0.05 * torch.randn_like(sd["h.1.mlp.c_fc.weight"])
    other = atomic_save(weights_checkpoint(ModelConfig(**obj["model_config"]), sd), tmp_path / "perturbed.pth")
    _, moved = _bridge_run(other, setup["manager"])
    mine, theirs = _per_request(moved), _per_request(setup["ref"])
    worst = max(abs(a - b) for t in ("tiny_mc", "tiny_roll") for a, b in zip(mine[t], theirs[t]))
    assert worst > 1e-3, "the bridge's scores did not move with the weights"


def test_a_batch_of_one_and_a_batch_of_eight_agree(setup):
    """Sorting, padding and the shared one-token continuations change nothing."""
    _, one = _bridge_run(setup["ckpt"], setup["manager"], batch_size=1)
    _, eight = _bridge_run(setup["ckpt"], setup["manager"], batch_size=8)
    a, b = _per_request(one), _per_request(eight)
    for task in ("tiny_mc", "tiny_roll"):
        assert a[task] == pytest.approx(b[task], abs=1e-4)
    assert a["tiny_gen"] == b["tiny_gen"]


def test_rolling_windows_cover_every_token_once(setup):
    """A long document's log-likelihood is the sum over its disjoint windows: every token is
    scored once, the first after <|endoftext|>; so it equals a direct computation."""
    import torch.nn.functional as F

    from gptcli.inference import load_model_for_inference
    from gptcli.lm_harness_bridge import GptcliLM
    from gptcli.tokenizer import EOT_ID, encode

    net = load_model_for_inference(setup["ckpt"], None, device="cpu").net
    text = ROLL[3]["text"]
    ids = encode(text)
    assert len(ids) > 2 * CONTEXT  # several windows

    class Req:
        args = (text,)

    (ours,) = GptcliLM(net, batch_size=2).loglikelihood_rolling([Req()])
    # Direct: the harness's windows by hand. Window k predicts tokens [k*T, (k+1)*T) given the
    # T tokens before each (the first given <|endoftext|>).
    seq = [EOT_ID] + ids
    total = 0.0
    with torch.no_grad():
        for start in range(0, len(ids), CONTEXT):
            end = min(start + CONTEXT, len(ids))
            inp_start = max(0, end - CONTEXT)  # the window's input: the T tokens before its last target
            inp = torch.tensor([seq[inp_start:end]])
            logp = F.log_softmax(net(inp).float(), dim=-1)[0]
            for pos in range(start, end):
                total += logp[pos - inp_start, ids[pos]].item()
    assert ours == pytest.approx(total, abs=1e-3)


def test_generation_ends_once_every_row_meets_a_stop_string(setup, monkeypatch):
    """The text is the same as from the whole generation, cut at the stop string; generate is
    told to end as soon as every row has met it (HFLM's stopping criteria)."""
    from gptcli import lm_harness_bridge
    from gptcli.inference import load_model_for_inference

    lm = lm_harness_bridge.GptcliLM(load_model_for_inference(setup["ckpt"], None, device="cpu").net, batch_size=2)

    class Req:
        def __init__(self, context: str, until: list[str]):
            self.args = (context, {"until": until, "max_gen_toks": 20, "do_sample": False})

    contexts = ["Q: What is 1 plus 1?\nA:", "Every effort moves you"]
    whole = lm.generate_until([Req(c, []) for c in contexts])
    assert all(len(t) > 12 for t in whole), whole
    stops = [whole[0][4:7], whole[1][5:8]]  # met a few tokens in
    steps = []
    real = lm_harness_bridge.generate

    def counting(*args, on_token, **kwargs):
        return real(*args, on_token=lambda tok: (steps.append(1), on_token(tok)), **kwargs)

    monkeypatch.setattr(lm_harness_bridge, "generate", counting)
    cut = lm.generate_until([Req(c, stops) for c in contexts])
    assert cut == [t.split(stops[0])[0].split(stops[1])[0] for t in whole]
    assert len(steps) < 20, "generation ran to max_gen_toks although every row had met a stop string"


def test_errors_are_one_line_each(setup, monkeypatch):
    from gptcli import lm_harness
    from gptcli.settings.evaluate import EvalSettings, lm_eval_task_names

    with pytest.raises(UsageError, match=r"unknown lm-eval task 'tiny_mcc'; did you mean tiny_mc"):
        lm_harness.check_tasks(["tiny_mcc"], setup["manager"])
    with pytest.raises(UsageError, match="invalid --task: 'lm-eval:arc_easy,,piqa'"):
        EvalSettings(task="lm-eval:arc_easy,,piqa")
    assert lm_eval_task_names("lm-eval:piqa, arc_easy,piqa") == ["piqa", "arc_easy"]
    with pytest.raises(UsageError, match="give no FILE"):
        EvalSettings(paths=[Path("a.txt")], task="lm-eval:arc_easy")
    with pytest.raises(UsageError, match="invalid --limit"):
        EvalSettings(task="lm-eval:arc_easy", limit=2.5)
    with pytest.raises(UsageError, match="invalid --limit"):
        EvalSettings(task="lm-eval:arc_easy", limit=0)
    assert EvalSettings(task="lm-eval:arc_easy", limit=10.0).limit == 10
    with pytest.raises(UsageError, match="--num-fewshot applies to --task lm-eval"):
        EvalSettings(paths=[Path("a.txt")], num_fewshot=5)
    with pytest.raises(UsageError, match="invalid --task"):
        EvalSettings(paths=[Path("a.txt")], task="arc_easy")
    with pytest.raises(UsageError, match="invalid --include-path"):
        lm_harness.task_manager(setup["root"] / "nowhere")
    monkeypatch.setitem(__import__("sys").modules, "lm_eval", None)  # as if the extra were missing
    with pytest.raises(UsageError, match=r"pip install 'gptcli\[eval\]'"):
        lm_harness.require_harness()


def test_the_cli_refuses_bad_flags_in_one_line(tmp_path):
    from typer.testing import CliRunner

    from gptcli.cli import app

    (tmp_path / "a.txt").write_text("some text")
    for args, words in (
        (["--task", "lm-eval:arc_easy", str(tmp_path / "a.txt")], "reads its tasks' own data: give no FILE"),
        (["--task", "arc_easy", str(tmp_path / "a.txt")], "invalid --task: 'arc_easy'"),
        (["--task", "lm-eval:arc_easy", "--limit", "-3"], "invalid --limit"),
        (["--num-fewshot", "5", str(tmp_path / "a.txt")], "--num-fewshot applies to --task lm-eval:... only"),
    ):
        res = CliRunner().invoke(app, ["eval", *args])
        assert res.exit_code == 2, (args, res.output)
        lines = [line for line in res.output.splitlines() if line.strip()]
        assert lines[0].startswith("error: ") and words in lines[0], (args, res.output)
        assert "Traceback" not in res.output


def test_results_are_written_whole_and_never_over_an_earlier_run(setup, tmp_path):
    from gptcli import lm_harness

    ref = setup["ref"]
    run = lm_harness.HarnessRun(ref.raw, {**ref.summary, "checkpoint": "x.pth"}, ref.table)
    first = lm_harness.write_results(run, tmp_path / "eval", stamp="20260101-000000")
    second = lm_harness.write_results(run, tmp_path / "eval", stamp="20260101-000000")
    assert first != second and all(p.is_file() for p in (*first, *second))
    assert json.loads(second[0].read_text())["versions"] == {t: 1.0 for t in TASKS}
    assert [p.name for p in sorted((tmp_path / "eval").iterdir())] == sorted(p.name for p in (*first, *second))


def test_a_task_whose_data_cannot_be_had_or_that_runs_model_code_is_refused(setup, tmp_path):
    from gptcli import lm_harness
    from gptcli.inference import load_model_for_inference
    from gptcli.lm_harness_bridge import GptcliLM

    (tmp_path / "gone.yaml").write_text(
        _yaml(
            "tiny_gone",
            tmp_path / "missing.jsonl",
            tmp_path / "cache",
            "output_type: loglikelihood_rolling\n"
            'doc_to_text: ""\ndoc_to_target: "{{text}}"\nmetric_list:\n  - metric: word_perplexity\n',
        )
    )
    unsafe = (setup["tasks"] / "tiny_roll.yaml").read_text().replace("task: tiny_roll", "task: tiny_unsafe")
    (tmp_path / "unsafe.yaml").write_text(unsafe + "unsafe_code: true\n")
    manager = lm_harness.task_manager(tmp_path, include_defaults=False)
    lm = GptcliLM(load_model_for_inference(setup["ckpt"], None, device="cpu").net)
    with pytest.raises(DataError, match="tiny_gone: could not load the task data"):
        lm_harness.run_tasks(lm, ["tiny_gone"], manager)
    with pytest.raises(UsageError, match="tiny_unsafe: a task runs code the model writes, which gptcli does not run"):
        lm_harness.run_tasks(lm, ["tiny_unsafe"], manager)


def test_the_command_prints_the_harness_table(setup, monkeypatch, capsys):
    """eval_command in-process (the registry limited to the tiny tasks, for speed): the table on
    stdout, the same table and the JSON in <run>/eval/."""
    from gptcli import lm_harness
    from gptcli.commands.evaluate import eval_command
    from gptcli.settings.evaluate import EvalSettings

    monkeypatch.setattr(lm_harness, "task_manager", lambda path: setup["manager"])
    task = "lm-eval:" + ",".join(TASKS)
    out_dir = setup["root"] / "runs" / "tiny" / "eval"
    before = set(out_dir.iterdir()) if out_dir.exists() else set()
    eval_command(EvalSettings(task=task, checkpoint=setup["ckpt"], batch_size=4, device="cpu", quiet=True))
    stdout = capsys.readouterr().out
    assert "|tiny_mc " in stdout and "word_perplexity" in stdout and "exact_match" in stdout
    written = sorted(set(out_dir.iterdir()) - before)
    assert [p.suffix for p in written] == [".json", ".md"]
    assert setup["ref"].table.splitlines()[0] in written[1].read_text()  # the same header row

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(lm_harness.fsutil, "atomic_write", full_disk)
    with pytest.raises(SaveError, match="could not write the results"):
        eval_command(EvalSettings(task=task, checkpoint=setup["ckpt"], json_out=True, device="cpu", quiet=True))
    assert set(json.loads(capsys.readouterr().out)["results"]) == set(TASKS)  # the figures still came out


@pytest.mark.slow
def test_the_installed_command_writes_json_beside_the_run(setup):
    """The installed gptcli with the harness's whole registry plus --include-path: --json on
    stdout, and the JSON (task versions, harness version) in <run>/eval/."""
    import lm_eval

    env = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    args = ["eval", "--task", "lm-eval:" + ",".join(TASKS), "--include-path", str(setup["tasks"])]
    args += ["-c", str(setup["ckpt"]), "--batch-size", "4", "--limit", "4", "--json", "--quiet"]
    proc = run_gptcli(*args, cwd=setup["root"], env=env, check=True)
    out = json.loads(proc.stdout)
    assert out["tasks"] == TASKS and set(out["results"]) == set(TASKS) and len(out["written"]) == 2
    assert "Running loglikelihood requests" not in proc.stderr  # --quiet silences the harness's bars
    saved = json.loads(Path(out["written"][0]).read_text())
    assert Path(out["written"][0]).parent == setup["root"] / "runs" / "tiny" / "eval"
    assert saved["lm_eval_version"] == lm_eval.__version__ == out["lm_eval_version"]
    assert saved["versions"] == {t: 1.0 for t in TASKS} and saved["limit"] == 4
    assert saved["n-samples"]["tiny_mc"] == {"original": len(MC), "effective": 4}
    assert saved["checkpoint"] == str(setup["ckpt"])
    assert not math.isnan(saved["results"]["tiny_roll"]["bits_per_byte,none"])
