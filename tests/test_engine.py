"""The one engine: pretraining and both finetunes run the same loop, so a capability written
once (gradient accumulation, the fused loss, --config, the KV-cache sample, the non-finite
guard) reaches every kind."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch

from gptcli import checkpoint as ckpt
from gptcli.errors import TrainingError, UsageError
from gptcli.finetune.trainer import FinetuneConfig, FinetuneTrainer
from gptcli.training import Interrupted

from .conftest import VERDICT, run_gptcli
from .finetune_helpers import book_model, save_base
from .test_finetune_classify import write_csv

WORDS = ["cat", "dog", "sun", "sea", "red", "big", "old", "new", "hot", "ice", "one", "two", "sky", "owl"]


@pytest.fixture
def data(tmp_path):
    records = [{"instruction": f"Repeat the word {w}.", "input": "", "output": f"{w} {w} {w}"} for w in WORDS * 2]
    (tmp_path / "instruct.json").write_text(json.dumps(records), encoding="utf-8")
    write_csv(tmp_path / "sms.csv", n=40)
    save_base(book_model(), tmp_path / "base.pth")
    return tmp_path


def _cfg(data, kind: str, **kw) -> FinetuneConfig:
    path = data / ("instruct.json" if kind == "instruct" else "sms.csv")
    base = dict(kind=kind, data=str(path), init=str(data / "base.pth"), epochs=2, eval_freq=1, eval_iter=2, lr=1e-3)
    return FinetuneConfig(**{**base, **kw})


def _run(data, name: str, cfg: FinetuneConfig, **kw):
    events: list[dict] = []
    trainer = FinetuneTrainer(cfg, data / name, on_event=events.append, **kw)
    trainer.fit()
    return trainer, events


@pytest.mark.parametrize("kind", ["instruct", "classify"])
@pytest.mark.parametrize("lora", [0, 2])
def test_a_batch_of_6_equals_3_with_2_accumulation_steps(data, kind, lora):
    whole, e1 = _run(data, "whole", _cfg(data, kind, batch_size=6, lora_rank=lora))
    accum, e2 = _run(data, "accum", _cfg(data, kind, batch_size=3, grad_accum=2, lora_rank=lora))
    evals1 = [e[k] for e in e1 if e["type"] == "eval" for k in ("train_loss", "val_loss")]
    evals2 = [e[k] for e in e2 if e["type"] == "eval" for k in ("train_loss", "val_loss")]
    assert len(evals1) == len(evals2) >= 8
    assert evals1 == pytest.approx(evals2, abs=1e-5)
    assert abs(evals1[0] - evals1[-2]) > 1e-3  # it trained: the comparison has teeth
    a, b = whole.model.state_dict(), accum.model.state_dict()
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5
    assert [e["type"] for e in e1 if e["type"] in ("accuracy", "sample")] == [
        e["type"] for e in e2 if e["type"] in ("accuracy", "sample")
    ]
    assert whole.progress.tokens_seen == accum.progress.tokens_seen


@pytest.mark.parametrize("kind", ["instruct", "classify"])
def test_fused_loss_finetune_equals_the_plain_one_and_resumes_exactly(data, kind):
    plain, e1 = _run(data, "plain", _cfg(data, kind, batch_size=4, lora_rank=2))
    fused, e2 = _run(data, "fused", _cfg(data, kind, batch_size=4, lora_rank=2, fused_loss=True))
    l1 = [e["train_loss"] for e in e1 if e["type"] == "eval"]
    assert l1 == pytest.approx([e["train_loss"] for e in e2 if e["type"] == "eval"], abs=1e-5)
    calls = iter(range(1000))
    stopping = FinetuneTrainer(
        _cfg(data, kind, batch_size=4, lora_rank=2, fused_loss=True),
        data / "cut",
        should_stop=lambda: 15 if next(calls) == 2 else None,
    )
    with pytest.raises(Interrupted, match="continue with: gptcli resume"):
        stopping.fit()
    saved = sorted((data / "cut" / "checkpoints").glob("step-*.pth"))[-1]
    obj = ckpt.load_checkpoint(saved)
    assert obj["train_config"]["fused_loss"] is True
    resumed = FinetuneTrainer(FinetuneConfig.from_dict(obj["train_config"]), data / "cut", resume_from=obj)
    resumed.fit()
    a, b = fused.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_fp16_is_refused_off_cuda_in_trains_words(data):
    with pytest.raises(UsageError, match=r"invalid --precision: 'fp16' needs a CUDA device \(use bf16 or fp32\)"):
        FinetuneTrainer(_cfg(data, "instruct", precision="fp16", device="cpu"), data / "fp16")


def test_a_nonfinite_finetune_loss_goes_through_the_guard(data, monkeypatch):
    import gptcli.finetune.classify as cls_

    real = cls_.classify_loss
    calls = iter(range(1000))

    def poisoned(model, x, y):
        loss = real(model, x, y)
        return loss * float("nan") if torch.is_grad_enabled() and next(calls) == 1 else loss

    monkeypatch.setattr(cls_, "classify_loss", poisoned)
    cfg = _cfg(data, "classify", batch_size=4, epochs=1)
    with pytest.raises(TrainingError, match="non-finite loss at step 1; no checkpoint written for it"):
        _run(data, "nan", cfg)
    calls = iter(range(1000))
    trainer, events = _run(data, "skip", _cfg(data, "classify", batch_size=4, epochs=1, skip_nonfinite=1))
    assert any(e["type"] == "warning" and "skipped non-finite loss at step 1" in e["text"] for e in events)


def test_the_epoch_sample_of_every_kind_uses_the_kv_cache(data, monkeypatch):
    import gptcli.generation as generation

    seen = []
    real = generation.generate

    def spy(*a, **k):
        seen.append(k.get("use_cache"))
        return real(*a, **k)

    monkeypatch.setattr(generation, "generate", spy)
    _, events = _run(data, "sample", _cfg(data, "instruct", batch_size=4, epochs=1))
    assert [e for e in events if e["type"] == "sample"] and seen == [True]


def test_finetune_takes_config_files_with_trains_wording(data):
    def cli(*args):
        return run_gptcli(*args, cwd=data, env={"OMP_NUM_THREADS": "1"})

    first = cli("finetune", "instruct", "instruct.json", "--init", "base.pth", "--device", "cpu", "--max-steps", "2",
                "--batch-size", "4", "--eval-iter", "1", "-q", "-o", "runs/a")  # fmt: skip
    assert first.returncode == 0, first.stderr
    # A run's own config.yaml is a valid --config for the same kind of run; flags override it.
    again = cli("finetune", "instruct", "--config", "runs/a/config.yaml", "--max-steps", "3", "-q", "-o", "runs/b")
    assert again.returncode == 0, again.stderr
    saved = ckpt.load_checkpoint(sorted((data / "runs/b/checkpoints").glob("step-*.pth"))[-1])
    assert saved["train_config"]["batch_size"] == 4 and saved["train_config"]["max_steps"] == 3
    (data / "bad.yaml").write_text("finetune:\n  grad_accum: 0\n", encoding="utf-8")
    bad = cli("finetune", "instruct", "instruct.json", "--init", "base.pth", "--config", "bad.yaml", "-o", "runs/c")
    assert bad.returncode == 2 and bad.stderr.strip() == (
        "error: bad.yaml: invalid grad_accum (--grad-accum): 0 (must be an integer >= 1)"
    )
    (data / "train.yaml").write_text("train:\n  grad_accum: 0\n", encoding="utf-8")
    train = cli("train", "instruct.json", "--config", "train.yaml", "-o", "runs/d")
    assert train.returncode == 2 and train.stderr.strip() == (
        "error: train.yaml: invalid grad_accum (--grad-accum): 0 (must be an integer >= 1)"
    )
    other = cli("finetune", "classify", "--config", "runs/a/config.yaml", "-o", "runs/e")
    assert other.returncode == 2 and "use: gptcli finetune instruct" in other.stderr
    assert not (data / "runs/c").exists() and not (data / "runs/e").exists()


def test_instruct_says_how_many_responses_the_length_limit_cuts_and_refuses_when_none_is_left(data):
    from gptcli.errors import DataError
    from gptcli.finetune.instruct import Template
    from gptcli.tokenizer import encode

    records = json.loads((data / "instruct.json").read_text(encoding="utf-8"))
    prompt = len(encode(Template().prompt(records[0])))
    full = len(encode(Template().full(records[0])))
    with pytest.raises(DataError, match=rf"no training record keeps any of its response within {prompt - 1} tokens"):
        _run(data, "none", _cfg(data, "instruct", batch_size=4, epochs=1, max_length=prompt - 1))
    assert not (data / "none" / "checkpoints").exists()
    _, events = _run(data, "part", _cfg(data, "instruct", batch_size=4, epochs=1, max_length=full - 1))
    warnings = [e["text"] for e in events if e["type"] == "warning"]
    assert any(f"0 of {len(records) * 85 // 100} training records lose all of their response" in w for w in warnings)
    _, events = _run(data, "whole", _cfg(data, "instruct", batch_size=4, epochs=1, max_length=full + 5))
    assert not [e for e in events if e["type"] == "warning"]


def test_every_config_file_gptcli_writes_is_a_valid_config_for_the_same_kind_of_run(workdir):
    tiny = ["--context-length", "12", "--emb-dim", "32", "--n-heads", "4", "--n-layers", "2"]
    common = ["--max-steps", "1", "--eval-iter", "1", "-q"]
    first = run_gptcli("train", "the-verdict.txt", *tiny, *common, "-o", "runs/tiny", cwd=workdir)
    assert first.returncode == 0, first.stderr
    again = run_gptcli("train", "--config", "runs/tiny/config.yaml", "-o", "runs/again", "-q", cwd=workdir)
    assert again.returncode == 0, again.stderr
    printed = run_gptcli("train", "the-verdict.txt", *tiny, "--print-config", cwd=workdir)
    (workdir / "printed.yaml").write_text(printed.stdout, encoding="utf-8")
    edited = run_gptcli("train", "--config", "printed.yaml", *common, "-o", "runs/printed", cwd=workdir)
    assert edited.returncode == 0, edited.stderr
    # A setting the file really sets, and that the data cannot use, is still refused.
    (workdir / "bad.yaml").write_text("train:\n  text_field: body\n  data: [the-verdict.txt]\n", encoding="utf-8")
    bad = run_gptcli("train", "--config", "bad.yaml", "-o", "runs/bad", cwd=workdir)
    assert bad.returncode == 2 and "invalid text_field (--text-field) in bad.yaml 'body'" in bad.stderr


def test_a_config_files_data_paths_are_found_beside_it_and_a_missing_one_says_where_it_looked(tmp_path, monkeypatch):
    (tmp_path / "conf").mkdir()
    shutil.copy(VERDICT, tmp_path / "conf" / "the-verdict.txt")
    model = "model:\n  context_length: 12\n  emb_dim: 32\n  n_heads: 4\n  n_layers: 2\n"
    (tmp_path / "conf" / "c.yaml").write_text(
        model + "train:\n  data: [the-verdict.txt]\n  max_steps: 1\n  eval_iter: 1\n"
    )
    (tmp_path / "conf" / "m.yaml").write_text("train:\n  data: [missing.txt]\n")
    ok = run_gptcli("train", "--config", "conf/c.yaml", "-o", "runs/a", "-q", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr  # found beside the config file, not in the current directory
    bad = run_gptcli("train", "--config", "conf/m.yaml", "-o", "runs/b", cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.strip() == (
        f"error: conf/m.yaml: data 'missing.txt': not found, neither from the current directory ({tmp_path}) "
        "nor beside the config file (conf)"
    )


def test_c_means_checkpoint_everywhere_and_trains_old_c_for_config_still_works_with_a_warning(workdir):
    tiny = "model:\n  context_length: 12\n  emb_dim: 32\n  n_heads: 4\n  n_layers: 2\ntrain:\n  max_steps: 1\n"
    (workdir / "c.yaml").write_text(tiny, encoding="utf-8")
    help_text = run_gptcli("train", "--help", cwd=workdir).stdout
    assert "--config" in help_text and not re.search(r"-c, --config|--config, -c", help_text)
    old = run_gptcli(
        "train", "the-verdict.txt", "-c", "c.yaml", "--eval-iter", "1", "-o", "runs/old", "-q", cwd=workdir
    )
    assert old.returncode == 0, old.stderr
    assert old.stderr.strip() == (
        "warning: -c is --checkpoint in every other gptcli command; for train's config file write --config FILE"
    )
    both = run_gptcli("train", "the-verdict.txt", "-c", "c.yaml", "--config", "c.yaml", "-o", "runs/both", cwd=workdir)
    assert both.returncode == 2 and both.stderr.startswith("error: give the config file once")


def test_every_kind_of_run_keeps_the_same_number_of_checkpoints_by_default():
    from gptcli.config import TrainConfig

    assert FinetuneConfig(kind="instruct", data="d", init="m").keep_last == TrainConfig().keep_last == 2
