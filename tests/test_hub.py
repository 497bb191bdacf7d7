"""The Hugging Face Hub, both ways, against a fake Hub on 127.0.0.1 (tests/hub_fake.py).

huggingface_hub reads HF_ENDPOINT, HF_HOME and HF_HUB_OFFLINE once, when it is imported, so the
in-process tests set its constants; one test runs the installed gptcli with the real variables.
Nothing here reaches the network.
"""

from __future__ import annotations

import hashlib
import json
import sys

import pytest
import torch

from gptcli.checkpoint import load_checkpoint, model_from_checkpoint
from gptcli.weights import gpt2_dir, hub_dir, resolve_model

from .conftest import TINY_FLAGS, VERDICT, run_gptcli
from .hub_fake import FakeHub
from .weights_helpers import invoke, logits_of

# huggingface_hub's settings, which the tests set (imported as a module: a package attribute only once imported)
hub_constants = pytest.importorskip(
    "huggingface_hub.constants", reason="the Hub tests need huggingface_hub (pip install 'gptcli[export]')"
)
transformers = pytest.importorskip("transformers", reason="the Hub tests make their models with transformers")

REPO = "someone/tiny-gpt2"
HF_TINY = dict(vocab_size=50257, n_positions=16, n_embd=32, n_layer=2, n_head=4)


def _tiny_hf(seed: int = 0):
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(**HF_TINY, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return transformers.GPT2LMHeadModel(cfg).eval()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A tiny GPT-2 saved by transformers, the folder the fake Hub serves, and the model itself."""
    folder = tmp_path_factory.mktemp("served") / "tiny"
    model = _tiny_hf()
    model.save_pretrained(folder)
    return folder, model


@pytest.fixture
def fake_hub(tmp_path, monkeypatch, served):
    hub = FakeHub().start()
    c = hub_constants
    monkeypatch.setattr(c, "ENDPOINT", hub.url)
    monkeypatch.setattr(c, "HUGGINGFACE_CO_URL_TEMPLATE", hub.url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hf_home" / "hub"))
    monkeypatch.setattr(c, "HF_TOKEN_PATH", str(tmp_path / "hf_home" / "token"))
    monkeypatch.setattr(c, "HF_STORED_TOKENS_PATH", str(tmp_path / "hf_home" / "stored_tokens"))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", False)
    # huggingface_hub 2.x also fetches a registry of coding agents once a day (GET /api/agent-harnesses,
    # answered 404 here) and would cache it in the real HF_HOME
    monkeypatch.setattr(c, "AGENT_HARNESSES_PATH", str(tmp_path / "hf_home" / ".agent_harnesses.json"), raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    hub.add_folder(REPO, served[0])
    yield hub
    hub.stop()


def _idx() -> torch.Tensor:
    return torch.randint(0, 50257, (2, 16), generator=torch.Generator().manual_seed(1))


def _same_model(path, hf_model) -> None:
    obj = load_checkpoint(path)
    model = model_from_checkpoint(obj, path).eval()
    assert (logits_of(model, _idx()) - logits_of(hf_model, _idx())).abs().max().item() < 1e-4


def _one_error_line(res, *needles, code: int) -> str:
    """Exactly one ``error:`` line (after any progress lines), as the last line but a hint."""
    assert res.exit_code == code, res.output
    lines = [x for x in res.stderr.splitlines() if x.strip() and not x.startswith("hint:")]
    assert [x for x in lines if x.startswith("error:")] == lines[-1:], res.stderr
    lines = lines[-1:]
    assert "Traceback" not in res.output
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def _gets(hub: FakeHub, name: str) -> list[tuple[str, str, str | None]]:
    return [r for r in hub.requests if r[0] == "GET" and r[1].endswith("/" + name)]


# ---------------------------------------------------------------------------------------------
# Downloads


def test_download_repo_id_converts_and_model_name_finds_it(fake_hub, served):
    res = invoke("download", REPO)
    assert res.exit_code == 0, res.output
    target = hub_dir(REPO) / "model.pth"
    assert resolve_model(REPO) == target
    _same_model(target, served[1])
    origin = load_checkpoint(target)["hub"]
    assert origin["repo_id"] == REPO and origin["commit"] == fake_hub.repos[REPO].commit
    # the weights were fetched at the commit config.json came from
    assert _gets(fake_hub, "model.safetensors")[0][1] == f"/{REPO}/resolve/{origin['commit']}/model.safetensors"
    res = invoke("sample", "--model", REPO, "--prompt", "Hello", "--max-new-tokens", "3", "--seed", "1")
    assert res.exit_code == 0, res.output
    assert res.stdout.startswith("Hello")
    res = invoke("eval", str(VERDICT), "--model", REPO, "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["loss"] > 0


def test_size_from_the_hub_lands_where_gpt2_124m_is_found(fake_hub, served):
    fake_hub.add_folder("openai-community/gpt2", served[0])
    res = invoke("download", "--size", "124M", "--source", "hf")
    assert res.exit_code == 0, res.output
    assert resolve_model("gpt2-124M") == gpt2_dir("124M") / "model.pth"
    _same_model(gpt2_dir("124M") / "model.pth", served[1])
    assert "--model gpt2-124M" in res.stderr
    assert {r[1].split("/resolve/")[0] for r in fake_hub.requests} == {"/openai-community/gpt2"}


def test_a_cut_download_resumes_where_it_stopped(fake_hub, served, monkeypatch):
    # huggingface_hub writes what it receives in chunks of DOWNLOAD_CHUNK_SIZE (10 MB) and resumes
    # after the last whole chunk; the tiny model's file is 6.5 MB, so chunks are made smaller here.
    chunk = 1 << 16
    monkeypatch.setattr(hub_constants, "DOWNLOAD_CHUNK_SIZE", chunk)
    fake_hub.cut_once.add("model.safetensors")
    res = invoke("download", REPO)
    assert res.exit_code == 0, res.output
    gets = _gets(fake_hub, "model.safetensors")
    size = (served[0] / "model.safetensors").stat().st_size
    assert len(gets) == 2 and gets[0][2] is None
    kept = (size // 2) // chunk * chunk
    assert gets[1][2] == f"bytes={kept}-"  # the second request asks for the rest only
    _same_model(hub_dir(REPO) / "model.pth", served[1])


def test_a_rerun_makes_no_request_and_a_lost_conversion_fetches_nothing_again(fake_hub, served):
    assert invoke("download", REPO).exit_code == 0
    fake_hub.requests.clear()
    res = invoke("download", REPO)
    assert res.exit_code == 0, res.output
    assert "already downloaded" in res.stderr
    assert fake_hub.requests == []
    # Without the converted file, Hugging Face's cache still holds the files: one HEAD (which
    # commit is main now?) and no GET.
    (hub_dir(REPO) / "model.pth").unlink()
    res = invoke("download", REPO)
    assert res.exit_code == 0, res.output
    assert [r[0] for r in fake_hub.requests] == ["HEAD"]
    _same_model(hub_dir(REPO) / "model.pth", served[1])


def test_offline_mode_uses_the_cache_and_says_when_it_cannot(fake_hub, served, monkeypatch):
    assert invoke("download", REPO).exit_code == 0
    (hub_dir(REPO) / "model.pth").unlink()
    fake_hub.requests.clear()
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    res = invoke("download", REPO)
    assert res.exit_code == 0, res.output
    assert fake_hub.requests == []
    _same_model(hub_dir(REPO) / "model.pth", served[1])
    fake_hub.add_folder("someone/never-fetched", served[0])
    res = invoke("download", "someone/never-fetched")
    _one_error_line(res, "someone/never-fetched", "not in the Hugging Face cache", "HF_HUB_OFFLINE", code=1)
    assert fake_hub.requests == []


def test_a_repository_that_does_not_exist_is_one_line(fake_hub):
    res = invoke("download", "nobody/no-such-model")
    _one_error_line(res, "nobody/no-such-model", "no such model repository", code=1)
    assert not hub_dir("nobody/no-such-model").exists()


def test_a_sharded_repository_comes_whole(fake_hub, served, tmp_path):
    sharded = tmp_path / "sharded"
    served[1].save_pretrained(sharded, max_shard_size="2MB")
    assert not (sharded / "model.safetensors").exists()  # an index and its shards only
    fake_hub.add_folder("someone/sharded-gpt2", sharded)
    res = invoke("download", "someone/sharded-gpt2")
    assert res.exit_code == 0, res.output
    shards = sorted(p.name for p in sharded.glob("model-*.safetensors"))
    assert len(shards) > 1
    gets = [r[1] for r in fake_hub.requests if r[0] == "GET" and "/resolve/" in r[1]]
    assert sorted(g.rsplit("/", 1)[1] for g in gets) == sorted(["config.json", "model.safetensors.index.json", *shards])
    _same_model(hub_dir("someone/sharded-gpt2") / "model.pth", served[1])


def test_a_private_repository_is_fetched_with_the_token(fake_hub, served, monkeypatch):
    fake_hub.add_folder("someone/private-gpt2", served[0]).private = True
    _one_error_line(invoke("download", "someone/private-gpt2"), "no such model repository", "private", code=1)
    monkeypatch.setenv("HF_TOKEN", fake_hub.token)
    res = invoke("download", "someone/private-gpt2")
    assert res.exit_code == 0, res.output
    _same_model(hub_dir("someone/private-gpt2") / "model.pth", served[1])
    res = invoke("info", "someone/private-gpt2", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["checkpoint"] == str(hub_dir("someone/private-gpt2") / "model.pth")


def test_another_architecture_is_refused_before_its_weights_move(fake_hub, tmp_path):
    llama = tmp_path / "llama"
    llama.mkdir()
    (llama / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    (llama / "model.safetensors").write_bytes(b"\0" * 64)
    fake_hub.add_folder("someone/tiny-llama", llama)
    res = invoke("download", "someone/tiny-llama")
    _one_error_line(res, "someone/tiny-llama", "model_type 'llama'", "LlamaForCausalLM", code=2)
    assert _gets(fake_hub, "model.safetensors") == []


def test_an_invalid_repo_id_and_flag_clashes_are_usage_errors(fake_hub):
    _one_error_line(invoke("download", "../etc"), "invalid REPO", code=2)
    _one_error_line(invoke("download", REPO, "--size", "355M"), "--size", code=2)
    _one_error_line(invoke("download", REPO, "--base-url", "http://x"), "HF_ENDPOINT", code=2)
    assert fake_hub.requests == []


def test_without_huggingface_hub_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    _one_error_line(invoke("download", REPO), "huggingface_hub", "gptcli[export]", code=2)


def test_when_openais_server_fails_the_error_names_the_hub(monkeypatch):
    from gptcli.weights import download

    monkeypatch.delenv(download.BASE_URL_ENV, raising=False)
    monkeypatch.setattr(download, "PRIMARY_URL", "http://127.0.0.1:9/gpt-2/models")  # nothing listens there
    monkeypatch.setattr(download, "MIRROR_URL", "http://127.0.0.1:9/gpt2")
    res = invoke("download", "--size", "124M", "--dir", "x")
    _one_error_line(res, "cannot reach 127.0.0.1:9", code=1)
    assert "gptcli download --size 124M --source hf" in res.stderr
    # a mirror of the user's own choosing is not OpenAI's server: its errors stay as they were
    res = invoke("download", "--size", "124M", "--dir", "x", "--base-url", "http://127.0.0.1:9/m")
    assert res.exit_code == 1 and "--source hf" not in res.stderr


# ---------------------------------------------------------------------------------------------
# A Hugging Face folder as a model


def test_an_hf_folder_is_a_model_converted_once(served, tmp_path):
    folder = tmp_path / "my-hf-model"
    folder.mkdir()
    for f in served[0].iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    path = resolve_model(str(folder))
    _same_model(path, served[1])
    mtime = path.stat().st_mtime_ns
    assert resolve_model(str(folder)) == path and path.stat().st_mtime_ns == mtime  # kept, not redone
    res = invoke("sample", "--model", str(folder), "--prompt", "Hi", "--max-new-tokens", "2", "--seed", "1")
    assert res.exit_code == 0, res.output
    res = invoke("info", str(folder), "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["checkpoint"] == str(path)
    run = tmp_path / "from-hf"
    quick = ["--batch-size", "4", "--stride", "100", "--eval-freq", "5", "--eval-iter", "1", "--epochs", "1"]
    res = invoke("train", str(VERDICT), "--init", str(folder), *quick, "--out", str(run), "--quiet")
    assert res.exit_code == 0, res.output
    assert load_checkpoint(resolve_model(str(run)))["model_config"]["emb_dim"] == 32
    # a changed folder is converted again
    _tiny_hf(seed=5).save_pretrained(folder)
    _same_model(resolve_model(str(folder)), _tiny_hf(seed=5))


# ---------------------------------------------------------------------------------------------
# Uploads


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("push") / "run"
    args = [str(VERDICT), *TINY_FLAGS, "--batch-size", "4", "--stride", "100", "--eval-freq", "3"]
    res = invoke("train", *args, "--eval-iter", "1", "--epochs", "1", "--out", str(run), "--quiet")
    assert res.exit_code == 0, res.output
    return run


def test_push_uploads_the_export_intact_with_a_model_card(fake_hub, tiny_run, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", fake_hub.token)
    out = tmp_path / "export"
    res = invoke("convert", str(tiny_run), "--to", "hf", "-o", str(out), "--push", "me/verdict-gpt2", "--private")
    assert res.exit_code == 0, res.output
    pushed = fake_hub.repos["me/verdict-gpt2"]
    assert pushed.private
    local = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in out.iterdir() if p.is_file()}
    remote = {name: hashlib.sha256(data).hexdigest() for name, data in pushed.files.items()}
    assert remote == local
    assert {"model.safetensors", "config.json", "README.md", "loss.png", "vocab.json", "merges.txt"} <= set(remote)
    card = pushed.files["README.md"].decode()
    front = card.split("---")[1]
    assert "library_name: transformers" in front and "pipeline_tag: text-generation" in front
    obj = load_checkpoint(resolve_model(str(tiny_run)))
    assert obj["data_fingerprint"] in card
    assert "final validation loss" in card and "![Training and validation loss](loss.png)" in card
    assert "emb_dim: 32" in card or "n_layers" in card or "epochs: 1" in card
    # what was pushed loads in transformers and computes what the run's model computes
    folder = tmp_path / "from-hub"
    folder.mkdir()
    for name, data in pushed.files.items():
        (folder / name).write_bytes(data)
    hf = transformers.GPT2LMHeadModel.from_pretrained(folder).eval()
    model = model_from_checkpoint(obj, resolve_model(str(tiny_run))).eval()
    idx = _idx()[:, :12]
    assert (logits_of(model, idx) - logits_of(hf, idx)).abs().max().item() < 1e-4


def test_a_failed_push_is_one_line_and_keeps_the_export(fake_hub, tiny_run, tmp_path):
    out = tmp_path / "export"
    res = invoke("convert", str(tiny_run), "--to", "hf", "-o", str(out), "--push", "me/verdict-gpt2")
    _one_error_line(res, "me/verdict-gpt2", "not authorised", "kept", code=1)
    assert (out / "model.safetensors").is_file()
    assert "hf auth login" in res.stderr
    assert "me/verdict-gpt2" not in fake_hub.repos


def test_push_needs_to_hf():
    _one_error_line(invoke("convert", "x", "--push", "me/m"), "--push", "--to hf", code=2)
    _one_error_line(invoke("convert", "x", "--to", "hf", "--private"), "--private", code=2)


# ---------------------------------------------------------------------------------------------
# The installed gptcli, with the real environment variables


@pytest.mark.slow
def test_the_installed_cli_honours_hf_endpoint_and_hf_home(fake_hub, served, tmp_path):
    fake_hub.add_folder("openai-community/gpt2", served[0])
    env = {
        "HF_ENDPOINT": fake_hub.url,
        "HF_HOME": str(tmp_path / "hf_env_home"),
        "NO_PROXY": "127.0.0.1",
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "0",  # online here (tests/conftest.py keeps every other test offline)
    }
    run_gptcli("download", "--size", "124M", "--source", "hf", cwd=tmp_path, env=env, check=True)
    assert (tmp_path / "hf_env_home" / "hub" / "models--openai-community--gpt2").is_dir()
    proc = run_gptcli(
        "sample", "--model", "gpt2-124M", "--prompt", "Hi", "--max-new-tokens", "2", cwd=tmp_path, env=env, check=True
    )
    assert proc.stdout.startswith("Hi")
    fake_hub.requests.clear()
    proc = run_gptcli(
        "download", "--size", "124M", "--source", "hf", cwd=tmp_path, env={**env, "HF_HUB_OFFLINE": "1"}, check=True
    )
    assert "already downloaded" in proc.stderr and fake_hub.requests == []
