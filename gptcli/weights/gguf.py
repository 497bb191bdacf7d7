"""gptcli -> GGUF, llama.cpp's file format, as its ``gpt2`` architecture (what llama.cpp, Ollama
and LM Studio run), written with the ``gguf`` package, llama.cpp's own writer.

The names and the metadata follow llama.cpp's GPT-2 loader (``src/models/gpt2.cpp``) and its
Hugging Face converter (``convert_hf_to_gguf.py``'s ``GPT2Model``):

- every block's qkv bias is a required tensor there, so a model without one (the book's default
  ``qkv_bias: false``) gets a zero bias, which computes the same function;
- ``output.weight`` is optional: an untied head (the book's) is written, a tied one (OpenAI's) is
  left out and llama.cpp reuses ``token_embd.weight``;
- ggml lists a tensor's dimensions innermost first, so our ``(out, in)`` Linear weights go in as
  they are; the vocabulary's padding rows (50257 -> 50304) are cut off;
- the position embedding and every 1-D tensor stay f32 whatever ``--outtype`` says, as the
  converter keeps them.

An instruct run's prompt template travels as ``tokenizer.chat_template`` (Jinja, as Hugging Face
chat templates are), and ``modelfile`` writes the same prompt in Ollama's Go-template syntax.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from gptcli import fsutil
from gptcli.config import ModelConfig
from gptcli.errors import SaveError, UsageError, os_error_reason
from gptcli.tokenizer import EOT_ID, EOT_TOKEN
from gptcli.weights import GGUF_OUTTYPES as OUTTYPES
from gptcli.weights.common import Progress

ARCH = "gpt2"
GPT2_VOCAB = 50257
LAYER_NORM_EPS = 1e-5  # gptcli.model's LayerNorms
# Stand-ins rendered through an instruct template to find where each field goes.
_FIELD = {"instruction": "\x00instruction\x00", "output": "\x00output\x00"}

# our name (after "h.N.") -> llama.cpp's (after "blk.N.")
_BLOCK = {
    "ln_1.weight": "attn_norm.weight",
    "ln_1.bias": "attn_norm.bias",
    "attn.c_attn.weight": "attn_qkv.weight",
    "attn.c_attn.bias": "attn_qkv.bias",
    "attn.c_proj.weight": "attn_output.weight",
    "attn.c_proj.bias": "attn_output.bias",
    "ln_2.weight": "ffn_norm.weight",
    "ln_2.bias": "ffn_norm.bias",
    "mlp.c_fc.weight": "ffn_up.weight",
    "mlp.c_fc.bias": "ffn_up.bias",
    "mlp.c_proj.weight": "ffn_down.weight",
    "mlp.c_proj.bias": "ffn_down.bias",
}
_TOP = {
    "wte.weight": "token_embd.weight",
    "wpe.weight": "position_embd.weight",
    "ln_f.weight": "output_norm.weight",
    "ln_f.bias": "output_norm.bias",
    "lm_head.weight": "output.weight",
}
_ALWAYS_F32 = ("position_embd.weight",)


def _gguf():
    try:
        import gguf
    except ImportError:
        raise UsageError("--to gguf needs the gguf package: pip install 'gptcli[export]'") from None
    return gguf


def gguf_tensors(cfg: ModelConfig, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A gptcli state dict under llama.cpp's GPT-2 names, fp32 on the CPU: the vocabulary cut to
    ``vocab_size`` rows, a zero qkv bias where the model has none, no ``output.weight`` when tied."""
    V, C = cfg.vocab_size, cfg.emb_dim
    out: dict[str, torch.Tensor] = {}
    for name in ("wte.weight", "wpe.weight"):
        out[_TOP[name]] = state[name]
    for i in range(cfg.n_layers):
        for ours, theirs in _BLOCK.items():
            key = f"h.{i}.{ours}"
            t = state[key] if key in state or ours != "attn.c_attn.bias" else torch.zeros(3 * C)
            out[f"blk.{i}.{theirs}"] = t
    for name in ("ln_f.weight", "ln_f.bias"):
        out[_TOP[name]] = state[name]
    if not cfg.tie_weights:
        out["output.weight"] = state["lm_head.weight"]
    for name in ("token_embd.weight", "output.weight"):
        if name in out:
            out[name] = out[name][:V]
    return {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in out.items()}


def _qtype(gguf: Any, name: str, t: torch.Tensor, outtype: str):
    """The type a tensor is stored in: 1-D tensors and the position embedding stay f32; a
    matrix whose rows do not split into q8_0 blocks of 32 falls back to f16 (as the converter)."""
    T = gguf.GGMLQuantizationType
    if outtype == "f32" or t.dim() < 2 or name in _ALWAYS_F32:
        return T.F32
    if outtype == "q8_0":
        block = gguf.GGML_QUANT_SIZES[T.Q8_0][0]
        return T.Q8_0 if t.shape[-1] % block == 0 else T.F16
    return {"f16": T.F16, "bf16": T.BF16}[outtype]


def _file_type(gguf: Any, outtype: str) -> int:
    F = gguf.LlamaFileType
    return {"f32": F.ALL_F32, "f16": F.MOSTLY_F16, "bf16": F.MOSTLY_BF16, "q8_0": F.MOSTLY_Q8_0}[outtype]


def _vocab() -> tuple[list[str], list[str]]:
    """GPT-2's tokens in id order (byte-level strings, as Hugging Face's vocab.json has them) and
    its merges, from the files gptcli ships."""
    assets = resources.files("gptcli.assets")
    encoder = json.loads((assets / "encoder.json").read_text(encoding="utf-8"))
    tokens = [""] * len(encoder)
    for tok, i in encoder.items():
        tokens[i] = tok
    lines = (assets / "vocab.bpe").read_text(encoding="utf-8").splitlines()
    merges = [line for line in lines[1:] if line.strip()]  # the first line is "#version: 0.2"
    return tokens, merges


# ---------------------------------------------------------------------------------------------
# An instruct run's prompt, for llama.cpp (Jinja) and for Ollama (Go templates)


def template_parts(template: Any) -> tuple[str, str, str, str]:
    """(before the instruction, after it, before the response, after the response) of an instruct
    run's ``gptcli.finetune.instruct.Template``, with an empty ``input``: a chat turn has one
    text, the instruction. The model is given the first three around the user's message, as
    ``sample --instruction`` gives it (``Template.response_prefix``)."""
    entry = {"instruction": _FIELD["instruction"], "input": "", "output": _FIELD["output"]}
    before, after = template.prompt(entry).split(_FIELD["instruction"], 1)
    rest = template.full(entry)[len(before + _FIELD["instruction"] + after) :]
    header, suffix = rest.split(_FIELD["output"], 1)
    return before, after, header, suffix


def _jinja_text(s: str) -> str:
    """``s`` as a Jinja string expression: JSON's escapes are Jinja's (a double-quoted literal)."""
    return "{{ " + json.dumps(s) + " }}"


def chat_template(template: Any) -> str:
    """``tokenizer.chat_template``: each user message formatted as the run formats an
    instruction, each assistant message as its response followed by <|endoftext|> (as the run
    trained on them), and with ``add_generation_prompt`` the text the response follows."""
    before, after, header, suffix = template_parts(template)
    return (
        "{%- for message in messages -%}"
        "{%- if message['role'] == 'user' -%}"
        f"{_jinja_text(before)}{{{{ message['content'] }}}}{_jinja_text(after)}"
        "{%- elif message['role'] == 'assistant' -%}"
        f"{_jinja_text(header)}{{{{ message['content'] }}}}{_jinja_text(suffix)}{{{{ eos_token }}}}"
        "{%- endif -%}"
        "{%- endfor -%}"
        f"{{%- if add_generation_prompt -%}}{_jinja_text(header)}{{%- endif -%}}"
    )


def _go_text(s: str) -> str:
    """Literal text in a Go template: only ``{{`` means something there."""
    return s.replace("{{", '{{ "{{" }}')


def ollama_template(template: Any) -> str:
    """The run's prompt in Ollama's template syntax: ``.Prompt`` is the instruction, and the
    text after ``.Response`` is what Ollama cuts while generating."""
    before, after, header, suffix = template_parts(template)
    return f"{_go_text(before)}{{{{ .Prompt }}}}{_go_text(after + header)}{{{{ .Response }}}}{_go_text(suffix)}"


def modelfile(gguf_name: str, cfg: ModelConfig, template: Any | None = None) -> str:
    """An Ollama ``Modelfile`` for the GGUF file ``gguf_name`` beside it: the instruct template
    (when ``template``), <|endoftext|> as the stop, the model's context as ``num_ctx``."""
    lines = [f"FROM ./{gguf_name}"]
    if template is not None:
        text = ollama_template(template)
        if '"""' in text:
            raise UsageError('invalid --ollama: the run\'s template holds """, which a Modelfile cannot quote')
        lines.append(f'TEMPLATE """{text}"""')
    lines += [f'PARAMETER stop "{EOT_TOKEN}"', f"PARAMETER num_ctx {cfg.context_length}"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Writing


def export_gguf(
    cfg: ModelConfig,
    state: dict[str, torch.Tensor],
    out_path: str | Path,
    *,
    outtype: str = "f32",
    template: Any | None = None,
    name: str | None = None,
    on_progress: Progress | None = None,
) -> Path:
    """Write ``state`` (a gptcli state dict of the model ``cfg``; a LoRA run merged first) as a
    GGUF file of llama.cpp's ``gpt2`` architecture at ``out_path`` and return the path.

    ``outtype``: f32, f16, bf16 or q8_0 for the matrices (1-D tensors and the position embedding
    stay f32). ``template``: an instruct run's ``gptcli.finetune.instruct.Template``, written as
    ``tokenizer.chat_template``; None for a model that continues text. ``name``: ``general.name``.
    The file appears whole or not at all (written beside it, then renamed)."""
    if outtype not in OUTTYPES:
        raise UsageError(f"invalid --outtype: {outtype!r} (choose from {', '.join(OUTTYPES)})")
    if cfg.vocab_size != GPT2_VOCAB:
        raise UsageError(
            f"--to gguf: the model's vocabulary has {cfg.vocab_size} tokens, not GPT-2's {GPT2_VOCAB}, "
            "so GPT-2's tokenizer cannot go with it"
        )
    gguf = _gguf()
    out_path = Path(out_path)
    tensors = gguf_tensors(cfg, state)
    try:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        with fsutil.atomic_path(out_path) as tmp:
            _write(gguf, cfg, tensors, tmp, outtype=outtype, template=template, name=name, on_progress=on_progress)
    except OSError as e:
        raise SaveError(f"{out_path}: could not write the GGUF file ({os_error_reason(e)})") from None
    return out_path


def _write(
    gguf: Any,
    cfg: ModelConfig,
    tensors: dict[str, torch.Tensor],
    path: Path,
    *,
    outtype: str,
    template: Any | None,
    name: str | None,
    on_progress: Callable[[int, int], None] | None,
) -> None:
    w = gguf.GGUFWriter(str(path), ARCH)
    if name:
        w.add_name(name)
    w.add_context_length(cfg.context_length)
    w.add_embedding_length(cfg.emb_dim)
    w.add_feed_forward_length(4 * cfg.emb_dim)
    w.add_block_count(cfg.n_layers)
    w.add_head_count(cfg.n_heads)
    w.add_layer_norm_eps(LAYER_NORM_EPS)
    w.add_file_type(_file_type(gguf, outtype))
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)

    tokens, merges = _vocab()
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    types = [gguf.TokenType.NORMAL] * len(tokens)
    types[EOT_ID] = gguf.TokenType.CONTROL
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(EOT_ID)
    w.add_eos_token_id(EOT_ID)
    # gptcli never puts <|endoftext|> before a prompt; neither should llama.cpp
    w.add_add_bos_token(False)
    w.add_add_eos_token(False)
    if template is not None:
        w.add_chat_template(chat_template(template))

    for done, (tname, t) in enumerate(tensors.items(), 1):
        qtype = _qtype(gguf, tname, t, outtype)
        data = gguf.quants.quantize(t.numpy(), qtype)
        w.add_tensor(tname, data, raw_dtype=qtype)
        if on_progress is not None:
            on_progress(done, len(tensors))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
