"""What a new user hit (issue 21): a prompt given as an argument or piped in, the empty prompt,
top-k without a temperature, ``sample -i`` on an instruct run; piped tables cut at 80 columns;
``convert`` guessing a book state dict's head count; the offline download error; unknown config
keys without a suggestion; ``info``'s 45 lines; ``runs`` without a kind or an interrupted run.

One tiny pretraining run and a LoRA instruct finetune started from it serve most tests; all of it
runs in-process on a 2-layer, 32-wide model, but for the download, which runs the installed
gptcli against a closed loopback port.
"""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from gptcli import console, fsutil, rundir
from gptcli.checkpoint import load_checkpoint, model_from_checkpoint
from gptcli.cli import app
from gptcli.config import TrainConfig, build_config, load_yaml_config
from gptcli.errors import DownloadError, UsageError
from gptcli.generation import generate_with
from gptcli.settings.sample import SampleConfig
from gptcli.tokenizer import EOT_ID, decode
from gptcli.weights import download as dl
from gptcli.weights.book import infer_config

from .conftest import TINY_FLAGS, VERDICT, run_gptcli
from .finetune_helpers import RECORDS

# A context of 64: the instruct finetune's prompts need more than the usual tiny 12.
QUICK = [*TINY_FLAGS[2:], "--context-length", "64", "--stride", "100", "--batch-size", "4", "--eval-iter", "1"]


def invoke(*args: str | Path, expect: int = 0, input: str | None = None):
    console.set_quiet(False)
    res = CliRunner().invoke(app, [str(a) for a in args], input=input)
    console.set_quiet(False)
    assert res.exit_code == expect, (res.exit_code, res.output, res.exception)
    assert "Traceback" not in res.output, res.output
    return res


def one_error(*args: str | Path, expect: int = 2) -> str:
    res = invoke(*args, expect=expect)
    lines = [x for x in res.output.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    return lines[0]


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """runs/tiny: two epochs of a tiny model; runs/ins: a LoRA instruct finetune of it."""
    root = tmp_path_factory.mktemp("new_user")
    invoke("train", VERDICT, *QUICK, "--epochs", "2", "-o", root / "runs" / "tiny", "-q")
    data = root / "instr.json"
    data.write_text(json.dumps(RECORDS * 2), encoding="utf-8")
    invoke(
        "finetune", "instruct", data, "--init", root / "runs" / "tiny", "-o", root / "runs" / "ins",
        "--max-steps", "1", "--batch-size", "2", "--lora-rank", "2", "--device", "cpu", "-q",
    )  # fmt: skip
    return root


@pytest.fixture
def tiny(root) -> Path:
    return root / "runs" / "tiny"


# ---------------------------------------------------------------------------------------------
# 1. sample: PROMPT, stdin, the empty prompt, top-k without a temperature, -i on an instruct run


def test_sample_takes_the_prompt_as_an_argument_or_from_stdin(tiny):
    common = ["-c", tiny, "--max-new-tokens", "4"]
    by_flag = invoke("sample", "--prompt", "Every effort", *common).stdout
    assert by_flag.startswith("Every effort")
    assert invoke("sample", "Every effort", *common).stdout == by_flag
    assert invoke("sample", *common, input="Every effort\n").stdout == by_flag  # one trailing newline goes
    assert invoke("sample", *common, input="").stdout.startswith("Every effort moves you")  # nothing piped
    line = one_error("sample", "Every effort", "--prompt", "I had", *common)
    assert "PROMPT" in line and "--prompt" in line


def test_an_empty_prompt_starts_from_endoftext(tiny):
    res = invoke("sample", "--prompt", "", "-c", tiny, "--max-new-tokens", "5", "--json")
    text = json.loads(res.stdout)["samples"][0]["samples"][0]
    obj = load_checkpoint(rundir.list_step_checkpoints(tiny)[-1])
    net = model_from_checkpoint(obj).eval()
    new = generate_with(net, [[EOT_ID]], SampleConfig(max_new_tokens=5))[0]
    assert text == decode(new) and not text.startswith("<|endoftext|>")


def test_top_k_without_temperature_warns_once(tiny):
    res = invoke("sample", "-c", tiny, "--max-new-tokens", "2", "--top-k", "25")
    warnings = [x for x in res.stderr.splitlines() if x.startswith("warning:")]
    assert len(warnings) == 1 and "--top-k" in warnings[0] and "--temperature" in warnings[0], res.stderr
    res = invoke("sample", "-c", tiny, "--max-new-tokens", "2", "--top-k", "25", "--temperature", "1", "--seed", "1")
    assert "warning:" not in res.stderr


def test_interactive_sample_on_an_instruct_run_uses_its_template(root):
    ins = root / "runs" / "ins"
    answer = invoke("sample", "-c", ins, "--instruction", "Name a color.", "--max-new-tokens", "6").stdout
    res = invoke("sample", "-i", "-c", ins, "--max-new-tokens", "6", input="Name a color.\n")
    assert res.stdout == answer, (res.stdout, answer)
    assert "instruct" in res.stderr


# ---------------------------------------------------------------------------------------------
# 2. A table written to a pipe or a file is never cut


def test_piped_eval_table_keeps_a_long_checkpoint_path_whole(tiny, tmp_path):
    deep = tmp_path / ("a-run-directory-with-a-name-long-enough-to-pass-eighty-columns-" * 2)
    shutil.copytree(tiny, deep)
    newest = rundir.list_step_checkpoints(deep)[-1]
    text = VERDICT.read_text(encoding="utf-8")[:2000]
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    out = invoke("eval", tmp_path / "t.txt", "-c", newest).stdout
    assert str(newest) in out and "…" not in out, out


# ---------------------------------------------------------------------------------------------
# 3. convert: a book state dict's head count is GPT-2's for its four sizes, else asked for


def test_book_state_dict_head_count_is_refused_unless_gpt2_sized(tmp_path):
    ch04 = pytest.importorskip("llms_from_scratch.ch04", reason="make install provides llms-from-scratch")
    cfg = dict(vocab_size=1000, context_length=12, emb_dim=64, n_heads=2, n_layers=2, drop_rate=0.0, qkv_bias=False)
    torch.manual_seed(0)
    book = ch04.GPTModel(cfg).eval()
    torch.save(book.state_dict(), tmp_path / "model.pth")
    line = one_error("convert", tmp_path / "model.pth", "-o", tmp_path / "guess.pth")
    assert "--n-heads" in line and "emb_dim 64" in line
    assert not (tmp_path / "guess.pth").exists()
    invoke("convert", tmp_path / "model.pth", "--n-heads", "2", "-o", tmp_path / "two.pth")
    x = torch.randint(0, 1000, (1, 12))
    ours = model_from_checkpoint(load_checkpoint(tmp_path / "two.pth")).eval()
    torch.testing.assert_close(ours(x)[..., :1000], book(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("emb", "layers", "heads"), [(768, 12, 12), (1024, 24, 16), (1280, 36, 20), (1600, 48, 25)])
def test_gpt2_sizes_take_gpt2s_head_count_and_say_so(emb, layers, heads):
    sd = {
        "tok_emb.weight": torch.empty(50257, emb, device="meta"),
        "pos_emb.weight": torch.empty(1024, emb, device="meta"),
    }
    sd |= {f"trf_blocks.{i}.norm1.scale": torch.empty(emb, device="meta") for i in range(layers)}
    notes: list[str] = []
    cfg = infer_config(sd, n_heads=None, drop_rate=0.0, source="model.pth", on_note=notes.append)
    assert cfg.n_heads == heads and len(notes) == 1 and f"{heads} attention heads" in notes[0]
    assert "--n-heads" in notes[0]
    assert infer_config(sd, n_heads=8, drop_rate=0.0, source="model.pth", on_note=notes.append).n_heads == 8
    sd["trf_blocks.99.norm1.scale"] = torch.empty(emb, device="meta")  # 100 layers: no GPT-2 size
    with pytest.raises(UsageError, match="--n-heads"):
        infer_config(sd, n_heads=None, drop_rate=0.0, source="model.pth")


# ---------------------------------------------------------------------------------------------
# 4. Offline: one short error line, one hint, no folder left behind


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_offline_download_is_one_error_and_a_hint_and_leaves_no_folder(tmp_path):
    port = _closed_port()
    env = {"GPTCLI_HOME": str(tmp_path / "home"), "NO_PROXY": "127.0.0.1", dl.BASE_URL_ENV: ""}
    proc = run_gptcli(
        "download", "--size", "355M", "--base-url", f"http://127.0.0.1:{port}/gpt2", cwd=tmp_path, env=env
    )
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert proc.returncode == 1 and len(lines) == 2, proc.stderr
    assert lines[0].startswith("error: ") and f"127.0.0.1:{port}" in lines[0] and len(lines[0]) < 100, lines[0]
    assert lines[1].startswith("hint: ") and "--base-url" in lines[1], lines[1]
    assert not (tmp_path / "home").exists()  # nothing created is left: not 355M/, nor gpt2/ above it
    (tmp_path / "mine").mkdir()  # a folder the user made stays
    proc = run_gptcli("download", "--dir", "mine", "--base-url", f"http://127.0.0.1:{port}/gpt2", cwd=tmp_path, env=env)
    assert proc.returncode == 1 and (tmp_path / "mine").is_dir() and not list((tmp_path / "mine").iterdir())


def test_offline_with_both_default_hosts_names_each_host_once(tmp_path, monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY", dl.BASE_URL_ENV):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    a, b = _closed_port(), _closed_port()
    monkeypatch.setattr(dl, "PRIMARY_URL", f"http://127.0.0.1:{a}/gpt-2/models")
    monkeypatch.setattr(dl, "MIRROR_URL", f"http://127.0.0.1:{b}/gpt2")
    events = []

    class Recorder(dl.DownloadCallbacks):
        def on_retry(self, url, reason, delay):
            events.append(("retry", url))

        def on_fallback(self, failed_url, reason, next_url):
            events.append(("fallback", failed_url))

    policy = dl.RetryPolicy(backoff=0.001, max_backoff=0.01, timeout=10)
    with pytest.raises(DownloadError) as e:
        dl.download_gpt2("124M", tmp_path / "d", policy=policy, callbacks=Recorder())
    msg = str(e.value)
    assert msg == f"hparams.json: cannot reach 127.0.0.1:{a} or 127.0.0.1:{b} (connection refused)", msg
    assert e.value.hint and "--base-url" in e.value.hint
    assert events == [] and not (tmp_path / "d").exists()


# ---------------------------------------------------------------------------------------------
# 5. An unknown config key suggests the closest one


@pytest.mark.parametrize(
    ("key", "meant"),
    [("lr_rate", "lr"), ("learning_rate", "lr"), ("eval_frq", "eval_freq"), ("batchsize", "batch_size")],
)
def test_unknown_key_suggests_the_closest(key, meant):
    with pytest.raises(UsageError) as e:
        build_config(TrainConfig, ("c.yaml", {key: 1}))
    assert str(e.value) == f"c.yaml: unknown key {key!r} (did you mean {meant!r}?)"


def test_unknown_key_without_a_close_one_lists_them_all(tmp_path):
    with pytest.raises(UsageError, match=r"unknown key 'zzzz' \(known keys: .*\blr\b.*\)$"):
        build_config(TrainConfig, ("c.yaml", {"zzzz": 1}))
    (tmp_path / "c.yaml").write_text("trian:\n  epochs: 2\n", encoding="utf-8")
    with pytest.raises(UsageError, match=r"unknown key 'trian' \(did you mean 'train'\?\)$"):
        load_yaml_config(tmp_path / "c.yaml")


# ---------------------------------------------------------------------------------------------
# 6. info: the key lines and the settings that differ; everything with --verbose


def test_info_is_compact_by_default_and_whole_with_verbose(tiny):
    short = invoke("info", tiny).stdout
    for key in ("kind:          training", "run:", "parameters:", "progress:", "best val loss:"):
        assert key in short, short
    assert "emb_dim: 32" in short and "n_layers: 2" in short and "stride: 100" in short  # not the defaults
    assert "vocab_size" not in short and "lr:" not in short and "weight_decay" not in short  # the defaults
    assert "--verbose" in short and len(short.splitlines()) < 25, short
    full = invoke("info", tiny, "--verbose").stdout
    assert full.startswith(short.split("\n# ")[0]) and "vocab_size: 50257" in full and "lr: 0.0004" in full
    assert len(full.splitlines()) > 45
    data = json.loads(invoke("info", tiny, "--json").stdout)
    assert data["model_config"]["vocab_size"] == 50257 and data["train_config"]["lr"] == 0.0004


def test_info_of_a_finetune_run_compares_with_its_kinds_defaults(root):
    short = invoke("info", root / "runs" / "ins").stdout
    assert "lora_rank: 2" in short and "init:" in short and "data:" in short
    assert "mask_prompt" not in short and "split:" not in short  # instruct's defaults


# ---------------------------------------------------------------------------------------------
# 7. runs: a KIND column, and an interrupted run says so


def test_runs_shows_the_kind_and_an_interrupted_run(root, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(root / "runs", runs)
    cut = runs / "cut"
    shutil.copytree(runs / "tiny", cut)
    for p in rundir.list_step_checkpoints(cut)[1:]:  # as if stopped after the first epoch's save
        p.unlink()
    (cut / "checkpoints" / "best.pth").unlink(missing_ok=True)
    lines = invoke("runs", "--root", runs).stdout.splitlines()
    header = lines[0].split()
    assert header[:2] == ["RUN", "KIND"] and header[-1] == "STOPPED", lines
    rows = {line.split()[0].rsplit("/", 1)[-1]: line.split() for line in lines[1:]}
    assert rows["tiny"][1] == "training" and rows["ins"][1] == "instruct" and rows["cut"][1] == "training"
    assert rows["cut"][-1] == "interrupted" and rows["tiny"][-1] == "-"
    data = {Path(r["run"]).name: r for r in json.loads(invoke("runs", "--root", runs, "--json").stdout)}
    assert (data["ins"]["kind"], data["cut"]["status"], data["tiny"]["status"]) == ("instruct", "interrupted", "done")
    lock = fsutil.FileLock(cut / rundir.LOCK_FILE)
    lock.acquire()
    try:  # a run being trained now is not interrupted
        data = {Path(r["run"]).name: r for r in json.loads(invoke("runs", "--root", runs, "--json").stdout)}
        assert data["cut"]["status"] == "running"
    finally:
        lock.release()
