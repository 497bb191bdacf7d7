"""generation's step-level pieces for continuous batching (prefill_row, decode_rows): every row's
logits are bit for bit those of the row decoded alone, whichever rows share its steps."""

from __future__ import annotations

import pytest
import torch

from gptcli.config import ModelConfig
from gptcli.generation import copy_cache, decode_rows, generate, prefill_row
from gptcli.inference import prepare_for_inference
from gptcli.model import GPT, KVCache


def _model(**kw) -> GPT:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=300, **{"context_length": 48, "emb_dim": 64, "n_heads": 4, "n_layers": 2, **kw})
    return prepare_for_inference(GPT(cfg), dtype="fp32", device=torch.device("cpu"))


def _solo_logits(model: GPT, ids: list[int], steps: list[int]) -> list[torch.Tensor]:
    """The logits generate() computes for one prompt fed ``steps`` as its next tokens."""
    cache = KVCache(model.cfg, 1, device="cpu", dtype=torch.float32)
    out = [model(torch.tensor([ids]), cache)[:, -1, :]]
    for t in steps:
        out.append(model(torch.tensor([[t]]), cache)[:, -1, :])
    return out


WIDE = {"emb_dim": 768, "n_heads": 12, "n_layers": 1}  # GPT-2's width: its products split (SplitLinear)


@pytest.mark.parametrize("kw", [{}, {"qkv_bias": True, "tie_weights": True}, WIDE])
def test_rows_joining_and_leaving_match_solo_bit_for_bit(two_threads, kw):
    from gptcli.quantize import SplitLinear

    model = _model(**kw)
    splits = [m.parts(1) for m in model.modules() if isinstance(m, SplitLinear)]
    assert (max(splits) == 2) == (kw is WIDE)  # a solo row splits its products; rows share whole weights
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, 300, (n,), generator=g).tolist() for n in (3, 17, 1, 9, 30, 5, 12)]
    joins = [0, 0, 1, 2, 2, 4, 6]  # the step at which each row arrives
    lengths = [8, 3, 10, 6, 9, 4, 7]  # how many tokens each row generates
    feeds: dict[int, list[int]] = {i: [] for i in range(len(prompts))}
    got: dict[int, list[torch.Tensor]] = {i: [] for i in range(len(prompts))}
    active: dict[int, tuple[KVCache, int]] = {}
    for step in range(20):
        for i, j in enumerate(joins):
            if j == step:
                logits, cache = prefill_row(model, prompts[i])
                got[i].append(logits)
                active[i] = (cache, int(logits.argmax()))
        rows = [i for i in active if len(got[i]) < lengths[i]]
        for i in list(active):
            if i not in rows:
                del active[i]  # finished rows leave
        if not rows:
            continue
        toks = [active[i][1] for i in rows]
        logits = decode_rows(model, toks, [active[i][0] for i in rows])
        for r, i in enumerate(rows):
            feeds[i].append(toks[r])
            got[i].append(logits[r : r + 1])
            active[i] = (active[i][0], int(logits[r].argmax()))
    for i, ids in enumerate(prompts):
        solo = _solo_logits(model, ids, feeds[i])
        assert len(got[i]) == lengths[i]
        for a, b in zip(got[i], solo):
            assert torch.equal(a, b), i
        greedy = generate(model, torch.tensor([ids]), max_new_tokens=lengths[i])[0]
        assert greedy == [int(x.argmax()) for x in got[i]]


def test_copied_cache_is_independent():
    model = _model()
    logits, cache = prefill_row(model, [1, 2, 3])
    twin = copy_cache(cache)
    a = decode_rows(model, [5], [cache])
    b = decode_rows(model, [5], [twin])
    assert torch.equal(a, b) and cache.length == twin.length == 4
    assert not torch.equal(decode_rows(model, [6], [cache]), decode_rows(model, [7], [twin]))


def test_lora_layers_run_row_by_row():
    from gptcli.finetune.lora import apply_lora

    model = _model()
    apply_lora(model, rank=2, alpha=4)
    for p in model.parameters():
        p.data += 0.01 * torch.randn_like(p)
    ids = [[4, 5, 6], [7, 8]]
    rows = [prefill_row(model, p) for p in ids]
    logits = decode_rows(model, [9, 10], [c for _, c in rows])
    for r, p in enumerate(ids):
        assert torch.equal(logits[r : r + 1], _solo_logits(model, p, [9 + r])[1])


def test_a_full_row_is_refused():
    model = _model(context_length=4)
    _, cache = prefill_row(model, [1, 2, 3, 4])
    with pytest.raises(ValueError, match="context length"):
        decode_rows(model, [1], [cache])


def test_fast_batch_math_is_close_to_exact():
    """--batch-math fast: one matmul over 4 or more rows (padded to a multiple of 4), close to the
    solo logits (not bit for bit); fewer rows take the exact path."""
    model = _model()
    prompts = [[3 + i, 7, 11 + 2 * i][: 1 + i % 3] for i in range(8)]
    rows = [prefill_row(model, p) for p in prompts]
    exact = decode_rows(model, list(range(8)), [copy_cache(c) for _, c in rows])
    fast8 = decode_rows(model, list(range(8)), [copy_cache(c) for _, c in rows], exact=False)
    fast1 = decode_rows(model, [0], [copy_cache(rows[0][1])], exact=False)
    assert torch.allclose(fast8, exact, atol=1e-5, rtol=1e-5)
    assert torch.equal(fast1, exact[:1])  # under FAST_ROWS rows the fast math is the exact one
