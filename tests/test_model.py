import pytest
import torch

from gptcli.config import ModelConfig
from gptcli.model import GPT

from .conftest import TINY_MODEL

book_ch04 = pytest.importorskip("llms_from_scratch.ch04", reason="make install provides llms-from-scratch")


def book_cfg(cfg: ModelConfig) -> dict:
    return dict(
        vocab_size=cfg.vocab_size,
        context_length=cfg.context_length,
        emb_dim=cfg.emb_dim,
        n_heads=cfg.n_heads,
        n_layers=cfg.n_layers,
        drop_rate=cfg.drop_rate,
        qkv_bias=cfg.qkv_bias,
    )


@pytest.mark.parametrize("qkv_bias", [False, True])
def test_same_seed_gives_the_books_weights(qkv_bias):
    cfg = ModelConfig(**{**TINY_MODEL, "qkv_bias": qkv_bias})
    torch.manual_seed(123)
    ours = GPT(cfg)
    torch.manual_seed(123)
    book = book_ch04.GPTModel(book_cfg(cfg))
    V, C = cfg.vocab_size, cfg.emb_dim
    assert torch.equal(ours.wte.weight[:V], book.tok_emb.weight)
    assert torch.equal(ours.wpe.weight, book.pos_emb.weight)
    for i, (b, r) in enumerate(zip(ours.h, book.trf_blocks)):
        w = b.attn.c_attn.weight
        assert torch.equal(w[:C], r.att.W_query.weight), i
        assert torch.equal(w[C : 2 * C], r.att.W_key.weight), i
        assert torch.equal(w[2 * C :], r.att.W_value.weight), i
        if qkv_bias:
            assert torch.equal(b.attn.c_attn.bias[C : 2 * C], r.att.W_key.bias)
        assert torch.equal(b.mlp.c_proj.weight, r.ff.layers[2].weight), i
    assert torch.equal(ours.lm_head.weight[:V], book.out_head.weight)
    # and the RNG is left where the book leaves it
    after_ours = torch.get_rng_state()
    torch.manual_seed(123)
    GPT(cfg)
    assert torch.equal(torch.get_rng_state(), after_ours)


def test_fast_model_matches_straightforward_implementation():
    """Fused qkv + SDPA + padded vocab vs the book's plain GPTModel on the same weights (fp32)."""
    cfg = ModelConfig(**{**TINY_MODEL, "context_length": 64, "emb_dim": 64})
    torch.manual_seed(0)
    ours = GPT(cfg)
    torch.manual_seed(0)
    book = book_ch04.GPTModel(book_cfg(cfg))
    x = torch.randint(0, cfg.vocab_size, (3, 64))
    ours.eval()
    book.eval()
    with torch.no_grad():
        a, b = ours(x), book(x)
    assert a.shape == (3, 64, 50257)
    assert (a - b).abs().max().item() < 1e-5
    # in training mode the dropout masks are drawn in the same order and sizes too
    ours.train()
    book.train()
    torch.manual_seed(7)
    a = ours(x)
    torch.manual_seed(7)
    b = book(x)
    assert (a - b).abs().max().item() < 1e-5


def test_vocab_is_padded_internally_but_not_outside():
    cfg = ModelConfig(**TINY_MODEL)
    assert cfg.padded_vocab_size == 50304
    m = GPT(cfg)
    assert m.lm_head.weight.shape[0] == 50304
    assert m(torch.zeros(1, 5, dtype=torch.long)).shape[-1] == 50257


def test_parameter_count_matches_config_and_book():
    cfg = ModelConfig(**TINY_MODEL)
    m = GPT(cfg)
    book = book_ch04.GPTModel(book_cfg(cfg))
    assert m.num_params() == cfg.num_params() == sum(p.numel() for p in book.parameters())


def test_tied_weights_share_storage():
    cfg = ModelConfig(**{**TINY_MODEL, "tie_weights": True})
    m = GPT(cfg)
    assert m.lm_head.weight is m.wte.weight
    assert m.num_params() == cfg.num_params()


def test_sequence_longer_than_context_is_refused():
    m = GPT(ModelConfig(**TINY_MODEL))
    with pytest.raises(ValueError):
        m(torch.zeros(1, 13, dtype=torch.long))


@pytest.mark.parametrize(
    "kwargs,field",
    [({"emb_dim": 30, "n_heads": 4}, "emb_dim"), ({"drop_rate": 1.5}, "drop_rate"), ({"n_layers": 0}, "n_layers")],
)
def test_config_errors_name_the_field(kwargs, field):
    from gptcli.errors import UsageError

    with pytest.raises(UsageError, match=field):
        ModelConfig(**{**TINY_MODEL, **kwargs})


def test_presets_are_openais_shapes():
    c = ModelConfig.from_preset("gpt2-355M")
    assert (c.emb_dim, c.n_layers, c.n_heads, c.context_length, c.qkv_bias, c.tie_weights) == (
        1024,
        24,
        16,
        1024,
        True,
        True,
    )
    assert ModelConfig.from_preset("gpt2-124M").num_params() == 124_439_808


def test_a_tied_model_is_initialised_as_transformers_gpt2_and_starts_near_ln_vocab():
    """A tied model's output layer is its embedding: the book's N(0, 1) embedding would start a
    124M model near a loss of 470. Tied models draw transformers' GPT-2 init instead."""
    import math

    import transformers

    from gptcli.config import ModelConfig
    from gptcli.model import GPT

    cfg = ModelConfig(
        context_length=32, emb_dim=96, n_heads=4, n_layers=6, drop_rate=0.0, qkv_bias=True, tie_weights=True
    )
    torch.manual_seed(0)
    ours = GPT(cfg)
    hf_cfg = transformers.GPT2Config(n_positions=32, n_embd=96, n_layer=6, n_head=4, vocab_size=cfg.vocab_size)
    theirs = transformers.GPT2LMHeadModel(hf_cfg)
    pairs = {
        "wte": (ours.wte.weight[: cfg.vocab_size], theirs.transformer.wte.weight),
        "wpe": (ours.wpe.weight, theirs.transformer.wpe.weight),
        "c_attn": (ours.h[0].attn.c_attn.weight, theirs.transformer.h[0].attn.c_attn.weight),
        "attn.c_proj": (ours.h[0].attn.c_proj.weight, theirs.transformer.h[0].attn.c_proj.weight),
        "mlp.c_proj": (ours.h[0].mlp.c_proj.weight, theirs.transformer.h[0].mlp.c_proj.weight),
    }
    for name, (a, b) in pairs.items():
        assert abs(a.std().item() - b.std().item()) < 0.1 * b.std().item(), name
        assert abs(a.mean().item()) < 2e-3, name
    assert abs(ours.h[0].attn.c_proj.weight.std().item() - 0.02 / math.sqrt(12)) < 5e-4
    assert all(m.bias.detach().abs().max().item() == 0.0 for m in (ours.h[0].attn.c_attn, ours.h[0].mlp.c_fc))
    assert (
        ours.lm_head.weight is ours.wte.weight and ours.wte.weight[cfg.vocab_size :].detach().abs().max().item() == 0.0
    )
    x = torch.randint(0, cfg.vocab_size, (4, 33))
    assert abs(ours(x[:, :-1], targets=x[:, 1:]).item() - math.log(cfg.vocab_size)) < 0.1
