"""The GPT-2 model, built only from a ModelConfig.

Parameter names follow OpenAI's GPT-2 (``wte``, ``h.N.attn.c_attn``, ``ln_f`` ...), so released
weights map onto it almost one to one. It computes the same function as the book's ``GPTModel``
(checked in tests/test_model.py) but with one fused qkv projection, PyTorch's
``scaled_dot_product_attention`` with causal masking (no mask buffer), native LayerNorm and
tanh-GELU, and a vocabulary padded to a multiple of 64 internally.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from gptcli.config import ModelConfig
from gptcli.fused_loss import chunked_linear_cross_entropy


class Linear(nn.Linear):
    """nn.Linear whose construction leaves the weights uninitialised: GPT.reset_parameters draws
    every value exactly once, in the book's order (the default init would draw them twice)."""

    def reset_parameters(self) -> None:
        pass


class Embedding(nn.Embedding):
    """nn.Embedding, uninitialised at construction for the same reason as Linear."""

    def reset_parameters(self) -> None:
        pass


class KVCache:
    """Keys and values of every layer for positions already processed, for incremental decoding."""

    def __init__(self, cfg: ModelConfig, batch_size: int, *, device: torch.device | str, dtype: torch.dtype):
        shape = (cfg.n_layers, batch_size, cfg.n_heads, cfg.context_length, cfg.head_dim)
        # never read before written (attention sees positions < length only): no need to zero
        # 75 MB at the 124M shape before each generation
        self.k = torch.empty(shape, device=device, dtype=dtype)
        self.v = torch.empty(shape, device=device, dtype=dtype)
        self.length = 0  # positions filled so far

    def reset(self) -> None:
        self.length = 0


class StaticKVCache:
    """A KV cache of fixed shape for a left-padded batch, whose decode step has the same shapes and
    no Python-side state at every token, so CUDA graphs can capture it once and replay it.

    Row ``b`` holds ``pad[b]`` padding slots, then its prompt, then its new tokens: the batch
    shares one slot index per step while each row has its own positions (slot - pad[b]) and its own
    attention mask (its slots from ``pad[b]`` up to the current one). Before each forward call the
    caller sets ``slots`` (T,), ``positions`` (B, T) and ``mask`` (B, 1, T, S) with ``prefill`` or
    ``decode``; the model only reads them.
    """

    def __init__(self, cfg: ModelConfig, pad: torch.Tensor, n_slots: int, *, dtype: torch.dtype):
        B = pad.shape[0]
        shape = (cfg.n_layers, B, cfg.n_heads, n_slots, cfg.head_dim)
        self.k = torch.zeros(shape, device=pad.device, dtype=dtype)
        self.v = torch.zeros(shape, device=pad.device, dtype=dtype)
        self.pad = pad.long()  # (B,)
        self.arange = torch.arange(n_slots, device=pad.device)  # (S,)
        self.slots = self.positions = self.mask = None

    def prefill(self, width: int) -> None:
        """Inputs for the padded prompts, slots 0..width-1."""
        t = self.arange[:width]  # (T,)
        self.slots = t
        self.positions = (t.unsqueeze(0) - self.pad.unsqueeze(1)).clamp(min=0)  # (B, T)
        s = self.arange.view(1, 1, -1)  # (1, 1, S)
        valid = (s >= self.pad.view(-1, 1, 1)) & (s <= t.view(1, -1, 1))  # (B, T, S)
        # a padding query sees itself, so its row of the softmax is never empty (all -inf gives nan,
        # and nan values would leak through the zero weights of the real rows in later layers)
        valid |= s == t.view(1, -1, 1)
        self.mask = valid.unsqueeze(1)  # (B, 1, T, S)

    def decode(self, slot: torch.Tensor) -> None:
        """Inputs for one new token per row at ``slot`` (a 0-dim tensor, so a captured graph reads it)."""
        self.slots = slot.view(1)
        self.positions = (slot - self.pad).view(-1, 1)  # (B, 1)
        valid = (self.arange.unsqueeze(0) >= self.pad.unsqueeze(1)) & (self.arange <= slot).unsqueeze(0)  # (B, S)
        self.mask = valid.view(valid.shape[0], 1, 1, -1)  # (B, 1, 1, S)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads = cfg.n_heads
        self.head_dim = cfg.head_dim
        self.dropout = cfg.drop_rate
        self.c_attn = Linear(cfg.emb_dim, 3 * cfg.emb_dim, bias=cfg.qkv_bias)
        self.c_proj = Linear(cfg.emb_dim, cfg.emb_dim)

    def forward(self, x: torch.Tensor, cache: KVCache | StaticKVCache | None = None) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q = q.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        is_causal = True
        if isinstance(cache, StaticKVCache):
            ck, cv = cache.k[self.layer_idx], cache.v[self.layer_idx]  # (B, nh, S, hs)
            ck.index_copy_(2, cache.slots, k.to(ck.dtype))
            cv.index_copy_(2, cache.slots, v.to(cv.dtype))
            y = F.scaled_dot_product_attention(q.to(ck.dtype), ck, cv, attn_mask=cache.mask)  # (B, nh, T, hs)
            y = y.to(x.dtype).transpose(1, 2).contiguous().view(B, T, C)
            return self.c_proj(y)
        if cache is not None:
            start = cache.length
            cache.k[self.layer_idx, :, :, start : start + T] = k
            cache.v[self.layer_idx, :, :, start : start + T] = v
            k = cache.k[self.layer_idx, :, :, : start + T]  # (B, nh, start+T, hs)
            v = cache.v[self.layer_idx, :, :, : start + T]
            q = q.to(k.dtype)  # the cache may be wider than the weights (fp32 on CPU, see generate)
            if start > 0:
                # One new query sees every cached position; a longer chunk after a prefix is never
                # produced by generate(), which prefills from an empty cache.
                assert T == 1, "the KV cache takes one token at a time after the prefill"
                is_causal = False
        y = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=is_causal
        )  # (B, nh, T, hs)
        y = y.to(x.dtype).transpose(1, 2).contiguous().view(B, T, C)
        return self.c_proj(y)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.c_fc = Linear(cfg.emb_dim, 4 * cfg.emb_dim)
        self.c_proj = Linear(4 * cfg.emb_dim, cfg.emb_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.emb_dim, eps=1e-5)
        self.attn = CausalSelfAttention(cfg, layer_idx)
        self.ln_2 = nn.LayerNorm(cfg.emb_dim, eps=1e-5)
        self.mlp = MLP(cfg)
        self.drop = nn.Dropout(cfg.drop_rate)

    def forward(self, x: torch.Tensor, cache: KVCache | StaticKVCache | None = None) -> torch.Tensor:
        x = x + self.drop(self.attn(self.ln_1(x), cache))
        x = x + self.drop(self.mlp(self.ln_2(x)))
        return x


class GPT(nn.Module):
    # Opt-in training levers that change memory and speed, never the computed function (both off
    # by default; the trainer sets them from --activation-checkpointing and --fused-loss):
    # recompute each block's activations in the backward pass instead of keeping them ...
    activation_checkpointing: bool = False
    # ... and compute the loss this many rows at a time, never holding all (B*T, vocab) logits.
    fused_loss_chunk: int | None = None

    def __init__(self, cfg: ModelConfig, *, init_weights: bool = True):
        """``init_weights=False`` leaves the weights uninitialised (and never touched, so no memory
        is spent on them either): for a model whose every tensor a checkpoint is about to replace."""
        super().__init__()
        self.cfg = cfg
        self.wte = Embedding(cfg.padded_vocab_size, cfg.emb_dim)
        self.wpe = Embedding(cfg.context_length, cfg.emb_dim)
        self.drop = nn.Dropout(cfg.drop_rate)
        self.h = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.emb_dim, eps=1e-5)
        self.lm_head = Linear(cfg.emb_dim, cfg.padded_vocab_size, bias=False)
        if cfg.tie_weights:
            self.lm_head.weight = self.wte.weight
        if init_weights:
            self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The book's initialisation for the book's (untied) model; GPT-2's for a tied one.

        Untied: PyTorch's defaults for nn.Embedding (N(0, 1)) and nn.Linear (U(-1/sqrt(fan_in),
        1/sqrt(fan_in)) for weight and bias), drawn in the book's module order and sizes, so
        ``torch.manual_seed(123)`` gives the book's ``GPTModel`` weights exactly. Tied (GPT-2's own
        architecture, every preset): the book's N(0, 1) embedding would also be the output layer,
        and a 124M model would start at a loss near 470 instead of ln(50257) = 10.8, so it is
        initialised as transformers' ``GPT2LMHeadModel`` and nanoGPT do it (``_gpt2_init``)."""
        if self.cfg.tie_weights:
            self._gpt2_init()
            return
        cfg, V, C = self.cfg, self.cfg.vocab_size, self.cfg.emb_dim

        def linear(weight: torch.Tensor, bias: torch.Tensor | None) -> None:
            nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
            if bias is not None:
                bound = 1 / math.sqrt(weight.shape[1])
                nn.init.uniform_(bias, -bound, bound)

        self.wte.weight.zero_()
        self.wte.weight[:V].normal_()
        self.wpe.weight.normal_()
        for block in self.h:
            attn = block.attn
            for i in range(3):  # the book's W_query, W_key, W_value, in that order
                rows = slice(i * C, (i + 1) * C)
                linear(attn.c_attn.weight[rows], attn.c_attn.bias[rows] if cfg.qkv_bias else None)
            linear(attn.c_proj.weight, attn.c_proj.bias)
            linear(block.mlp.c_fc.weight, block.mlp.c_fc.bias)
            linear(block.mlp.c_proj.weight, block.mlp.c_proj.bias)
            for ln in (block.ln_1, block.ln_2):
                ln.reset_parameters()
        self.ln_f.reset_parameters()
        self.lm_head.weight.zero_()
        linear(self.lm_head.weight[:V], None)

    @torch.no_grad()
    def _gpt2_init(self, std: float = 0.02) -> None:
        """transformers' ``GPT2PreTrainedModel._init_weights`` (initializer_range 0.02): every
        weight N(0, 0.02), the two residual projections of each block N(0, 0.02 / sqrt(2 n_layers)),
        biases zero, LayerNorms one and zero; the vocabulary's padding rows stay zero."""
        cfg, V = self.cfg, self.cfg.vocab_size
        self.wte.weight.zero_()
        self.wte.weight[:V].normal_(0.0, std)
        self.wpe.weight.normal_(0.0, std)
        residual = std / math.sqrt(2 * cfg.n_layers)
        for block in self.h:
            for lin, s in (
                (block.attn.c_attn, std),
                (block.attn.c_proj, residual),
                (block.mlp.c_fc, std),
                (block.mlp.c_proj, residual),
            ):
                lin.weight.normal_(0.0, s)
                if lin.bias is not None:
                    lin.bias.zero_()
            for ln in (block.ln_1, block.ln_2):
                ln.reset_parameters()
        self.ln_f.reset_parameters()

    def forward(
        self, idx: torch.Tensor, cache: KVCache | StaticKVCache | None = None, *, targets: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Logits over the real vocabulary, shape (B, T, vocab_size); with ``targets`` (B, T), the
        mean next-token cross-entropy instead (targets of -100 are left out of the mean)."""
        B, T = idx.shape
        if isinstance(cache, StaticKVCache):
            pos = cache.positions  # (B, T): each row its own (the caller keeps them in the context)
        else:
            start = cache.length if cache is not None else 0
            if start + T > self.cfg.context_length:
                raise ValueError(f"sequence of {start + T} tokens exceeds the context length {self.cfg.context_length}")
            pos = torch.arange(start, start + T, device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))  # (B, T, C)
        recompute = self.activation_checkpointing and cache is None and torch.is_grad_enabled()
        for block in self.h:
            # non-reentrant checkpointing restores the RNG state, so dropout draws the same masks twice
            x = checkpoint(block, x, use_reentrant=False) if recompute else block(x, cache)
        if isinstance(cache, KVCache):
            cache.length += T
        x = self.ln_f(x)
        V = self.cfg.vocab_size
        if targets is not None and self.fused_loss_chunk and type(self.lm_head) is Linear:
            # the head's padding rows would get -inf logits below: zero probability, zero gradient
            return chunked_linear_cross_entropy(x, self.lm_head.weight[:V], targets, chunk_rows=self.fused_loss_chunk)
        logits = self.lm_head(x)  # (B, T, padded_vocab)
        if targets is None:
            return logits[..., :V]
        # The padding columns get -inf, which the softmax turns into exactly zero probability, so
        # the loss equals the one over the real vocabulary without copying the huge logits tensor
        # (the matmul's backward does not need its output, so writing into it is safe).
        if logits.shape[-1] > V:
            logits[..., V:] = float("-inf")
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten())

    def num_params(self) -> int:
        """Parameters of the unpadded model (shared tensors counted once)."""
        pad = self.cfg.padded_vocab_size - self.cfg.vocab_size
        n = sum(p.numel() for p in self.parameters())
        n -= pad * self.cfg.emb_dim * (1 if self.cfg.tie_weights else 2)
        return n


def gptcli_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor of ``GPT(cfg).state_dict()`` and its shape, in parameter order, without
    building the model (tests check this against the model itself). It lives here, beside the
    model, so that ``checkpoint`` and the weight maps in ``weights/`` both read it from below."""
    C, Vp = cfg.emb_dim, cfg.padded_vocab_size
    shapes: dict[str, tuple[int, ...]] = {"wte.weight": (Vp, C), "wpe.weight": (cfg.context_length, C)}
    for i in range(cfg.n_layers):
        p = f"h.{i}."
        shapes[p + "ln_1.weight"] = (C,)
        shapes[p + "ln_1.bias"] = (C,)
        shapes[p + "attn.c_attn.weight"] = (3 * C, C)
        if cfg.qkv_bias:
            shapes[p + "attn.c_attn.bias"] = (3 * C,)
        shapes[p + "attn.c_proj.weight"] = (C, C)
        shapes[p + "attn.c_proj.bias"] = (C,)
        shapes[p + "ln_2.weight"] = (C,)
        shapes[p + "ln_2.bias"] = (C,)
        shapes[p + "mlp.c_fc.weight"] = (4 * C, C)
        shapes[p + "mlp.c_fc.bias"] = (4 * C,)
        shapes[p + "mlp.c_proj.weight"] = (C, 4 * C)
        shapes[p + "mlp.c_proj.bias"] = (C,)
    shapes["ln_f.weight"] = (C,)
    shapes["ln_f.bias"] = (C,)
    shapes["lm_head.weight"] = (Vp, C)
    return shapes


def gptcli_param_names(cfg: ModelConfig) -> list[str]:
    """``GPT(cfg).named_parameters()`` order: the order of AdamW's state. A tied head is the
    embedding's parameter, so it has no entry of its own."""
    names = list(gptcli_shapes(cfg))
    if cfg.tie_weights:
        names.remove("lm_head.weight")
    return names
