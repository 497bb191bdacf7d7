"""Sampling: a pure next-token function and ``generate`` with a KV cache.

Semantics follow the book's ``generate``: top-k filtering happens before temperature scaling,
temperature 0 means greedy (argmax), and a row stops at ``<|endoftext|>``. Everything is written
for a batch of rows, each stopping on its own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from gptcli.model import GPT, KVCache, StaticKVCache
from gptcli.quantize import SplitLinear
from gptcli.settings.sample import MIN_TEMPERATURE, SampleConfig  # noqa: F401  (the settings, torch-free)
from gptcli.tokenizer import EOT_ID


def sample_next_token(
    logits: torch.Tensor,
    *,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Pick the next token for each row of ``logits`` (B, V); returns (B, 1) ids."""
    logits = logits.float()
    dropped = None
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        dropped = logits < kth
        logits = logits.masked_fill(dropped, float("-inf"))
    if temperature <= 0.0:
        return logits.argmax(dim=-1, keepdim=True)
    scaled = logits / temperature
    if dropped is not None:  # a temperature beyond float32's range is inf there, and -inf / inf is nan
        scaled = scaled.masked_fill(dropped, float("-inf"))
    probs = torch.softmax(scaled, dim=-1)
    if top_p is not None and top_p < 1.0:
        sorted_probs, sorted_idx = probs.sort(dim=-1, descending=True)
        # Keep the smallest prefix whose mass reaches top_p: a token stays if the mass before it < p.
        drop = sorted_probs.cumsum(dim=-1) - sorted_probs >= top_p
        drop[:, 0] = False  # the most likely token always stays (a top_p below float32's range is 0)
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter_(-1, sorted_idx, sorted_probs)
    return torch.multinomial(probs, num_samples=1, generator=generator)


@torch.no_grad()
def generate(
    model: GPT,
    idx: torch.Tensor | Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_id: int | None = None,
    use_cache: bool = True,
    generator: torch.Generator | None = None,
    on_token: Callable[[torch.Tensor], None] | None = None,
) -> list[list[int]]:
    """Extend each row of ``idx`` (B, T), or each prompt of a list of token-id lists of any
    lengths, by up to ``max_new_tokens`` tokens.

    Returns the new tokens of each row, cut before its first ``eos_id``. Prompts longer than the
    context are cropped from the left, as are sequences that grow past it. With ``use_cache``,
    each new token costs one position; once the sequence is longer than the context, every step
    must re-run the last ``context_length`` tokens (their positions all shift), exactly as the
    uncached model does, so the two give identical tokens.

    Prompts of different lengths run as one left-padded batch (``_generate_static``) when every
    row fits in the context with its new tokens; otherwise, prompts of equal length run together,
    one length after another. On CUDA a batch that fits also takes that static path, its one-token
    step captured once as a CUDA graph and replayed, so each token costs one launch.
    """
    ctx = model.cfg.context_length
    sampling = dict(temperature=temperature, top_k=top_k, top_p=top_p, eos_id=eos_id, generator=generator)
    if not isinstance(idx, torch.Tensor):
        prompts = [list(p)[-ctx:] for p in idx]
        if any(not p for p in prompts):
            raise ValueError("every prompt needs at least one token")
        device = next(model.parameters()).device
        if use_cache and max(map(len, prompts)) + max_new_tokens <= ctx:
            return _generate_static(
                model, prompts, max_new_tokens=max_new_tokens, device=device, on_token=on_token, **sampling
            )
        out: list[list[int] | None] = [None] * len(prompts)
        for n in sorted({len(p) for p in prompts}):  # one batch per length, shortest first
            rows = [i for i, p in enumerate(prompts) if len(p) == n]
            batch = torch.tensor([prompts[i] for i in rows], device=device)
            new = generate(
                model, batch, max_new_tokens=max_new_tokens, use_cache=use_cache, on_token=on_token, **sampling
            )
            for i, toks in zip(rows, new):
                out[i] = toks
        return out  # type: ignore[return-value]
    if use_cache and idx.device.type == "cuda" and idx.shape[1] + max_new_tokens <= ctx:
        return _generate_static(
            model, idx.tolist(), max_new_tokens=max_new_tokens, device=idx.device, on_token=on_token, **sampling
        )
    B = idx.shape[0]
    finished = torch.zeros(B, dtype=torch.bool, device=idx.device)
    out: list[torch.Tensor] = []
    cache = None
    if use_cache:
        # On CPU the cache, and so attention, is fp32 whatever the weights: with bf16 weights the
        # CPU attention kernels are several times slower at one query in bf16 than in fp32
        # (benchmarks/bench_sample_cpu.py), and fp32 keeps bf16 decoding closer to fp32's.
        dtype = torch.float32 if idx.device.type == "cpu" else next(model.parameters()).dtype
        cache = KVCache(model.cfg, B, device=idx.device, dtype=dtype)
    seq = idx
    next_input = None  # what the cache has not seen yet
    for _ in range(max_new_tokens):
        if cache is not None and next_input is not None and cache.length < ctx:
            logits = model(next_input, cache)[:, -1, :]
        else:
            window = seq[:, -ctx:]
            if cache is not None:
                cache.reset()
            logits = model(window, cache)[:, -1, :]
        tok = sample_next_token(logits, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)
        if eos_id is not None:
            tok = tok.masked_fill(finished.unsqueeze(1), eos_id)
            finished |= tok.squeeze(1) == eos_id
        out.append(tok)
        if on_token is not None:
            on_token(tok)
        if eos_id is not None and bool(finished.all()):
            break
        seq = torch.cat([seq, tok], dim=1)
        next_input = tok
    if not out:
        return [[] for _ in range(B)]
    new = torch.cat(out, dim=1).tolist()
    if eos_id is not None:
        new = [row[: row.index(eos_id)] if eos_id in row else row for row in new]
    return new


def generate_with(
    net: GPT,
    idx: torch.Tensor | Sequence[Sequence[int]],
    scfg: SampleConfig,
    *,
    use_cache: bool = True,
    stop_at_eos: bool = True,
    on_token: Callable[[torch.Tensor], None] | None = None,
) -> list[list[int]]:
    """``generate`` with a SampleConfig's settings: the new ids of each row of ``idx``, a (B, T)
    tensor or a list of token-id lists of any lengths (one left-padded batch, see ``generate``).
    A row stops at <|endoftext|> unless ``stop_at_eos`` is off (the book's epoch sample runs on)."""
    if not isinstance(idx, torch.Tensor) and len({len(row) for row in idx}) == 1:
        # Rows of one length need no padding: as a (B, T) tensor they take exactly the path a
        # single prompt always took, so its greedy and seeded tokens stay the book's.
        idx = torch.tensor([list(row) for row in idx], device=next(net.parameters()).device)
    return generate(
        net,
        idx,
        max_new_tokens=scfg.max_new_tokens,
        temperature=scfg.temperature,
        top_k=scfg.top_k,
        top_p=scfg.top_p,
        eos_id=EOT_ID if stop_at_eos else None,
        use_cache=use_cache,
        on_token=on_token,
    )


def _static_decoder(
    model: GPT, cache: StaticKVCache, batch_size: int, first_slot: int, *, capture: bool
) -> Callable[[torch.Tensor, int], torch.Tensor]:
    """``step(tok, slot) -> logits`` (B, V) for one new token per row written at ``slot``.

    Every call runs the same kernels on tensors of the same shapes (the slot is a tensor the step
    reads), so with ``capture`` (CUDA only) the step is recorded once as a CUDA graph and each
    token is one replay; without, the very same code runs eagerly (how the tests check it on CPU).
    """
    device = cache.pad.device
    tok_in = torch.zeros(batch_size, 1, dtype=torch.long, device=device)
    slot_in = torch.full((), first_slot, dtype=torch.long, device=device)

    def run() -> torch.Tensor:
        cache.decode(slot_in)
        return model(tok_in, cache)[:, -1, :]

    if not capture:

        def eager(tok: torch.Tensor, slot: int) -> torch.Tensor:
            tok_in.copy_(tok)
            slot_in.fill_(slot)
            return run()

        return eager
    # Warm-up on a side stream (as torch.cuda.graphs asks); it writes garbage at ``first_slot``
    # only, which the first real step overwrites before any query can see it.
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(2):
            run()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        logits_out = run()

    def replay(tok: torch.Tensor, slot: int) -> torch.Tensor:
        tok_in.copy_(tok)
        slot_in.fill_(slot)
        graph.replay()
        return logits_out.clone()

    return replay


def _generate_static(
    model: GPT,
    prompts: list[list[int]],
    *,
    max_new_tokens: int,
    device: torch.device,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    eos_id: int | None,
    generator: torch.Generator | None,
    on_token: Callable[[torch.Tensor], None] | None,
    capture: bool | None = None,
) -> list[list[int]]:
    """``generate`` for prompts that fit in the context with their new tokens, as one left-padded
    batch over a ``StaticKVCache``: a prefill of the padded prompts, then one fixed-shape step per
    token (a CUDA graph replay when ``capture``, which defaults to "on CUDA")."""
    B = len(prompts)
    if max_new_tokens <= 0:
        return [[] for _ in range(B)]
    width = max(len(p) for p in prompts)
    pad = torch.tensor([width - len(p) for p in prompts], device=device)
    idx = torch.tensor([[0] * (width - len(p)) + p for p in prompts], device=device)  # (B, W)
    # the cache is fp32 on CPU, as in generate's dynamic path (see there)
    dtype = torch.float32 if device.type == "cpu" else next(model.parameters()).dtype
    cache = StaticKVCache(model.cfg, pad, width + max_new_tokens, dtype=dtype)
    cache.prefill(width)
    logits = model(idx, cache)[:, -1, :]  # every row's last prompt token sits in the last slot
    if capture is None:
        capture = device.type == "cuda"
    step = _static_decoder(model, cache, B, width, capture=capture) if max_new_tokens > 1 else None
    # how often to ask the device whether every row has finished: each ask waits for the GPU
    check_every = 1 if device.type == "cpu" or on_token is not None else 16
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    out: list[torch.Tensor] = []
    for i in range(max_new_tokens):
        tok = sample_next_token(logits, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)
        if eos_id is not None:
            tok = tok.masked_fill(finished.unsqueeze(1), eos_id)  # a finished row only repeats eos
            finished |= tok.squeeze(1) == eos_id
        out.append(tok)
        if on_token is not None:
            on_token(tok)
        if i == max_new_tokens - 1 or (eos_id is not None and i % check_every == 0 and bool(finished.all())):
            break
        logits = step(tok, width + i)
    new = torch.cat(out, dim=1).tolist()
    if eos_id is not None:
        new = [row[: row.index(eos_id)] if eos_id in row else row for row in new]
    return new


# ---------------------------------------------------------------------------------------------
# Step-level pieces for a server's continuous batching: each row has its own KVCache (as a lone
# prompt in ``generate`` has), rows join and leave between steps, and one decode step runs every
# row at once. Every row's numbers are bit for bit those of the row generated alone: CPU matmul
# kernels round a row differently with other rows beside it (MKL's gemm for 4+ rows blocks the sum
# differently from its one-row kernel), so the weights' matmuls run as a batch of one-row products
# (``torch.baddbmm`` over the weight broadcast, which streams the weights once and keeps each row's
# arithmetic), and attention runs row by row over each row's own cache, as it does alone.


def cache_dtype(model: GPT, device: torch.device) -> torch.dtype:
    """The KV cache's dtype: fp32 on CPU whatever the weights (see ``generate``)."""
    return torch.float32 if device.type == "cpu" else next(model.parameters()).dtype


@torch.no_grad()
def prefill_row(model: GPT, ids: Sequence[int]) -> tuple[torch.Tensor, KVCache]:
    """A new row: its prompt through the model alone, as ``generate`` starts a single prompt;
    returns the logits after its last token (1, V) and its cache. The prompt must fit the context."""
    device = next(model.parameters()).device
    cache = KVCache(model.cfg, 1, device=device, dtype=cache_dtype(model, device))
    logits = model(torch.tensor([list(ids)], device=device), cache)[:, -1, :]
    return logits, cache


def copy_cache(cache: KVCache) -> KVCache:
    """An independent copy of a row's cache (the rows of one prompt's ``n`` samples)."""
    new = KVCache.__new__(KVCache)
    new.k, new.v, new.length = cache.k.clone(), cache.v.clone(), cache.length
    return new


FAST_ROWS = 4  # the fast batch math pads the rows to a multiple of this (see decode_rows)


def _rows_linear(layer: torch.nn.Module, x: torch.Tensor, exact: bool = True) -> torch.Tensor:
    """``layer(x)`` for x (B, 1, C_in): each row computed as a one-row product (see above), or,
    not ``exact`` and with at least ``FAST_ROWS`` rows, as one matrix product over the rows padded to
    a multiple of ``FAST_ROWS`` (fewer rows gain nothing from it: one-row kernels stream the
    weights faster than a padded matmul)."""
    B = x.shape[0]
    if B == 1:
        return layer(x)  # generate's own call
    if not isinstance(layer, torch.nn.Linear) or type(layer).forward not in (
        torch.nn.Linear.forward,
        SplitLinear.forward,
    ):
        return torch.cat([layer(x[b : b + 1]) for b in range(B)])  # adapters (LoRA): row by row
    if not exact and B >= FAST_ROWS:
        pad = -B % FAST_ROWS
        if pad:
            x = torch.cat([x, x.new_zeros(pad, *x.shape[1:])])
        return layer(x)[:B]
    w = layer.weight.t().unsqueeze(0).expand(B, -1, -1)  # (B, C_in, C_out), no copy
    if layer.bias is None:
        return torch.bmm(x, w)
    return torch.baddbmm(layer.bias.view(1, 1, -1).expand(B, 1, -1), x, w)


@torch.no_grad()
def decode_rows(model: GPT, tokens: Sequence[int], caches: Sequence[KVCache], *, exact: bool = True) -> torch.Tensor:
    """One decode step over many rows: ``tokens[b]`` is appended to row ``b``, whose cache holds
    its ``caches[b].length`` earlier positions (each row its own); returns the next-token logits
    (B, V). Every row must have room left in the context.

    ``exact``: each row's logits are bit for bit those ``generate`` computes for it alone. Off, the
    weights' matmuls of a step with ``FAST_ROWS`` rows or more run as one matrix product over the
    rows (padded to a multiple of ``FAST_ROWS``): several times faster for many rows on CPU, but a
    row's last bits then differ from its one-row arithmetic (so a greedy answer can differ from
    ``gptcli sample``'s where two tokens nearly tie) and depend on how many rows share the step."""
    cfg = model.cfg
    device = next(model.parameters()).device
    if any(c.length >= cfg.context_length for c in caches):
        raise ValueError(f"a row is already at the context length {cfg.context_length}")
    B, C, nh, hd = len(tokens), cfg.emb_dim, cfg.n_heads, cfg.head_dim
    idx = torch.tensor(list(tokens), device=device).view(B, 1)
    pos = torch.tensor([c.length for c in caches], device=device).view(B, 1)
    x = model.wte(idx) + model.wpe(pos)  # (B, 1, C); dropout is off in eval mode
    for layer, block in enumerate(model.h):
        attn = block.attn
        q, k, v = _rows_linear(attn.c_attn, block.ln_1(x), exact).split(C, dim=2)  # each (B, 1, C)
        ys = []
        for b, cache in enumerate(caches):
            qb = q[b : b + 1].view(1, 1, nh, hd).transpose(1, 2)  # (1, nh, 1, hs)
            kb = k[b : b + 1].view(1, 1, nh, hd).transpose(1, 2)
            vb = v[b : b + 1].view(1, 1, nh, hd).transpose(1, 2)
            start = cache.length
            cache.k[layer, :, :, start : start + 1] = kb
            cache.v[layer, :, :, start : start + 1] = vb
            ck = cache.k[layer, :, :, : start + 1]  # (1, nh, start+1, hs)
            cv = cache.v[layer, :, :, : start + 1]
            y = torch.nn.functional.scaled_dot_product_attention(qb.to(ck.dtype), ck, cv, is_causal=start == 0)
            ys.append(y.to(x.dtype).transpose(1, 2).contiguous().view(1, 1, C))
        x = x + _rows_linear(attn.c_proj, torch.cat(ys), exact)
        h = block.ln_2(x)
        hidden = torch.nn.functional.gelu(_rows_linear(block.mlp.c_fc, h, exact), approximate="tanh")
        x = x + _rows_linear(block.mlp.c_proj, hidden, exact)
    for cache in caches:
        cache.length += 1
    logits = _rows_linear(model.lm_head, model.ln_f(x), exact)  # (B, 1, padded_vocab)
    return logits[:, -1, : cfg.vocab_size]
