"""convert --to gguf: the file read back by readers that are not ours, transformers' GGUF loader
(logits within 1e-5 of gptcli's in f32) and llama.cpp itself (greedy tokens), for the book's
model, OpenAI's tied layout, an instruct LoRA run (merged, its template kept); the --outtype
types; --ollama's Modelfile; a classifier refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gptcli import checkpoint as ckpt
from gptcli.config import ModelConfig
from gptcli.finetune.instruct import Template
from gptcli.tasks import model_from_checkpoint
from gptcli.tokenizer import EOT_ID, encode
from gptcli.weights.gguf import chat_template, gguf_tensors, modelfile, ollama_template

from .export_helpers import BOOK, OPENAI, cli, finetune_runs, greedy, training_checkpoint, weights_file

pytest.importorskip("gguf", reason="the gguf package is not installed (pip install 'gptcli[export]')")

ENTRY = {"instruction": "Name the capital of France.", "input": ""}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("gguf")
    return {
        "book": training_checkpoint(root / "book.pth", ModelConfig(**BOOK)),
        "openai": weights_file(root / "openai.pth", ModelConfig(**OPENAI), seed=1),
        **finetune_runs(root),
    }


def gptcli_model(src):
    path = ckpt.resolve_checkpoint(src)
    model, _ = model_from_checkpoint(ckpt.load_checkpoint(path), path)  # a LoRA run unmerged: as trained
    return model.eval()


def export(src, dest, *args):
    cli("convert", src, "--to", "gguf", "-o", dest, "-q", *args)
    return dest


def read(path):
    """GGUF metadata and tensors through gguf's own reader: {key: value}, {name: (type, array)}."""
    from gguf import GGUFReader

    r = GGUFReader(str(path))
    meta = {k: f.contents() for k, f in r.fields.items()}
    return meta, {t.name: (t.tensor_type.name, np.asarray(t.data)) for t in r.tensors}


def transformers_logits(path, ids, context_length):
    from transformers import AutoModelForCausalLM

    # transformers maps GGUF's gpt2.context_length to n_ctx, which GPT2Config does not use for the
    # position table (n_positions, default 1024): given here, as a 1024-token GPT-2 needs nothing
    hf = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, n_positions=context_length).eval()
    with torch.no_grad():
        return hf(torch.tensor([ids])).logits[0], hf.config


IDS = encode("Every effort moves you, and the picture was")


@pytest.mark.slow
def test_book_model_reads_back_through_transformers_within_1e_5(models, tmp_path):
    path = export(models["book"], tmp_path / "book.gguf")
    meta, tensors = read(path)
    assert meta["general.architecture"] == "gpt2" and meta["gpt2.context_length"] == 32
    assert meta["gpt2.attention.layer_norm_epsilon"] == pytest.approx(1e-5)
    assert len(meta["tokenizer.ggml.tokens"]) == 50257 and meta["tokenizer.ggml.tokens"][EOT_ID] == "<|endoftext|>"
    assert meta["tokenizer.ggml.merges"][0] == "Ġ t" and len(meta["tokenizer.ggml.merges"]) == 50000
    assert meta["tokenizer.ggml.token_type"][EOT_ID] == 3 and meta["tokenizer.ggml.token_type"][0] == 1
    assert meta["tokenizer.ggml.bos_token_id"] == meta["tokenizer.ggml.eos_token_id"] == EOT_ID
    assert "tokenizer.chat_template" not in meta
    # the untied head is written; the missing qkv bias is a zero one (llama.cpp's loader needs it)
    assert tensors["output.weight"][1].shape == (50257, 32)
    assert not tensors["blk.0.attn_qkv.bias"][1].any() and tensors["blk.0.attn_qkv.bias"][1].shape == (96,)
    assert {t for t, _ in tensors.values()} == {"F32"}
    ours = gptcli_model(models["book"])(torch.tensor([IDS]))[0].detach()
    theirs, config = transformers_logits(path, IDS, 32)
    assert not config.tie_word_embeddings
    assert (ours - theirs).abs().max() < 1e-5


@pytest.mark.slow
def test_tied_openai_layout_leaves_the_head_out_and_reads_back_within_1e_5(models, tmp_path):
    path = export(models["openai"], tmp_path / "openai.gguf")
    theirs, config = transformers_logits(path, IDS, 32)
    assert config.tie_word_embeddings  # transformers ties when output.weight is absent
    ours = gptcli_model(models["openai"])(torch.tensor([IDS]))[0].detach()
    assert (ours - theirs).abs().max() < 1e-5


@pytest.mark.slow
def test_instruct_lora_run_is_merged_and_carries_its_template(models, tmp_path):
    path = export(models["ins"], tmp_path / "ins.gguf")
    ids = encode(Template().response_prefix(ENTRY))[-24:]
    theirs, _ = transformers_logits(path, ids, 32)
    ours = gptcli_model(models["ins"])  # the run as trained: LoRA adapters beside the base
    assert any(".A" in k for k in ours.state_dict())
    assert (ours(torch.tensor([ids]))[0].detach() - theirs).abs().max() < 1e-5
    # the template is in the file (llama.cpp reads it under its key in the llama.cpp test)
    assert chat_template(Template()).encode() in path.read_bytes()


def render(template: str, messages, *, add_generation_prompt=True) -> str:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)  # as transformers renders
    return env.from_string(template).render(
        messages=messages, add_generation_prompt=add_generation_prompt, eos_token="<|endoftext|>"
    )


CUSTOM = "<instr>{instruction}</instr>{input}\n<answer>{output}</answer>"


@pytest.mark.parametrize("text", [None, CUSTOM], ids=["book", "custom"])
def test_chat_and_ollama_templates_give_the_prompt_the_run_gives(text):
    template = Template(text)
    user = [{"role": "user", "content": ENTRY["instruction"]}]
    assert render(chat_template(template), user) == template.response_prefix(ENTRY)
    answered = [*user, {"role": "assistant", "content": "Paris."}]
    full = template.full({**ENTRY, "output": "Paris."}) + "<|endoftext|>"
    assert render(chat_template(template), answered, add_generation_prompt=False) == full
    go = ollama_template(template)
    assert go.replace("{{ .Prompt }}", ENTRY["instruction"]).split("{{ .Response }}")[0] == template.response_prefix(
        ENTRY
    )


def test_ollama_modelfile(models, tmp_path):
    export(models["ins"], tmp_path / "ins" / "model.gguf", "--ollama")
    text = (tmp_path / "ins" / "Modelfile").read_text(encoding="utf-8")
    assert text == modelfile("model.gguf", ModelConfig(**BOOK), Template())
    lines = text.splitlines()
    assert lines[0] == "FROM ./model.gguf" and lines[1].startswith('TEMPLATE """Below is an instruction')
    assert '### Instruction:\n{{ .Prompt }}\n\n### Response:\n{{ .Response }}"""' in text
    assert lines[-2:] == ['PARAMETER stop "<|endoftext|>"', "PARAMETER num_ctx 32"]
    export(models["book"], tmp_path / "book" / "model.gguf", "--ollama")
    plain = (tmp_path / "book" / "Modelfile").read_text(encoding="utf-8")
    assert plain == 'FROM ./model.gguf\nPARAMETER stop "<|endoftext|>"\nPARAMETER num_ctx 32\n'
    # a Modelfile already there is replaced only with --force, like the GGUF file
    cli("convert", models["book"], "--to", "gguf", "-o", tmp_path / "book" / "other.gguf", "--ollama", expect=2)


def test_classifier_and_wrong_flags_are_refused_in_one_line(models, tmp_path):
    out = cli("convert", models["cls"], "--to", "gguf", "-o", tmp_path / "c.gguf", expect=2)
    assert "classifier" in out and "llama.cpp has no classification head for GPT-2" in out
    assert not (tmp_path / "c.gguf").exists()
    assert "--outtype" in cli("convert", models["book"], "--to", "hf", "--outtype", "q8_0", expect=2)
    assert "--ollama" in cli("convert", models["book"], "--weights-only", "--ollama", expect=2)
    assert "invalid value" in cli("convert", models["book"], "--to", "gguf", "--outtype", "q4_0", expect=2).lower()


@pytest.mark.slow
def test_outtypes_store_the_matrices_so_and_keep_vectors_and_positions_f32(models, tmp_path):
    path = export(models["book"], tmp_path / "q8.gguf", "--outtype", "q8_0")
    meta, tensors = read(path)
    assert meta["general.file_type"] == 7  # llama.cpp's MOSTLY_Q8_0
    types = {name: t for name, (t, _) in tensors.items()}
    assert types["token_embd.weight"] == types["output.weight"] == types["blk.1.ffn_down.weight"] == "Q8_0"
    assert types["position_embd.weight"] == types["blk.0.attn_norm.weight"] == types["blk.0.attn_qkv.bias"] == "F32"
    # bf16 and f16: each matrix but the position table at 2 bytes a value, vectors at 4 (the
    # tensors are 32-byte aligned in the file, hence the slack)
    f32 = export(models["book"], tmp_path / "f32.gguf").stat().st_size
    cfg = ModelConfig(**BOOK)
    matrices = sum(t.numel() for n, t in gguf_tensors(cfg, ckpt.load_checkpoint(models["book"])["model_state_dict"]).items()
                   if t.dim() == 2 and n != "position_embd.weight")  # fmt: skip
    for outtype in ("bf16", "f16"):
        size = export(models["book"], tmp_path / f"{outtype}.gguf", "--outtype", outtype).stat().st_size
        assert abs(f32 - 2 * matrices - size) <= 32 * len(tensors)


def _llama(path, n_ctx):
    llama_cpp = pytest.importorskip(
        "llama_cpp",
        reason="llama-cpp-python is not installed (pip install llama-cpp-python; make install adds "
        "../shared/wheels/llama_cpp_python-*.whl when that folder exists)",
    )
    return llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_threads=1, verbose=False)


@pytest.mark.parametrize("which", ["book", "openai", "ins"])
def test_llama_cpp_greedy_tokens_equal_gptclis(models, tmp_path, which):
    path = export(models[which], tmp_path / f"{which}.gguf")
    llm = _llama(path, 32)
    try:
        assert llm.n_vocab() == 50257 and llm.metadata["gpt2.context_length"] == "32"
        assert llm.tokenize(b"Every effort moves you", add_bos=False) == encode("Every effort moves you")
        if which == "ins":
            assert llm.metadata["tokenizer.chat_template"] == chat_template(Template())
        prompt = IDS
        n = 32 - len(prompt)
        ours = greedy(gptcli_model(models[which]), prompt, n)
        theirs = []
        for tok in llm.generate(prompt, top_k=1, temp=0.0, reset=True):
            theirs.append(tok)
            if len(theirs) == n:
                break
        assert theirs == ours
    finally:
        llm.close()
