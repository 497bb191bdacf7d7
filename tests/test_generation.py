import pytest
import torch

from gptcli.config import ModelConfig
from gptcli.errors import UsageError
from gptcli.generation import SampleConfig, generate, sample_next_token
from gptcli.model import GPT

from .conftest import TINY_MODEL


def test_greedy_is_argmax_per_row():
    logits = torch.tensor([[0.1, 3.0, 0.2], [5.0, 0.0, 1.0]])
    assert sample_next_token(logits).tolist() == [[1], [0]]


def test_top_k_filters_before_temperature_for_every_row():
    torch.manual_seed(0)
    logits = torch.tensor([[4.0, 3.0, 0.0, -1.0], [0.0, 1.0, 9.0, 8.0]]).repeat(200, 1)
    picks = sample_next_token(logits, temperature=5.0, top_k=2)
    even, odd = picks[0::2].flatten(), picks[1::2].flatten()
    assert set(even.tolist()) <= {0, 1} and set(odd.tolist()) <= {2, 3}
    assert len(set(even.tolist())) == 2  # high temperature really samples both


def test_top_p_keeps_the_smallest_set_reaching_p():
    torch.manual_seed(0)
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log().repeat(500, 1)
    picks = set(sample_next_token(logits, temperature=1.0, top_p=0.75).flatten().tolist())
    assert picks == {0, 1}


@pytest.mark.parametrize("kwargs", [{"temperature": -1.0}, {"top_k": 0}, {"top_p": 1.5}, {"num_samples": 0}])
def test_bad_sampling_values(kwargs):
    with pytest.raises(UsageError):
        SampleConfig(**kwargs)


@pytest.fixture(scope="module")
def long_ctx_model():
    torch.manual_seed(1)
    m = GPT(ModelConfig(**{**TINY_MODEL, "context_length": 256, "drop_rate": 0.0}))
    return m.eval()


def test_kv_cache_matches_uncached_for_300_tokens_past_a_256_context(long_ctx_model):
    idx = torch.tensor([[6109, 3626, 6100, 345]])
    a = generate(long_ctx_model, idx, max_new_tokens=300, use_cache=True)
    b = generate(long_ctx_model, idx, max_new_tokens=300, use_cache=False)
    assert len(a[0]) == 300
    assert a == b


def test_batched_generation_equals_one_row_at_a_time(long_ctx_model):
    prompts = torch.tensor([[1, 2, 3], [40, 50, 60], [7, 8, 9]])
    batched = generate(long_ctx_model, prompts, max_new_tokens=20)
    singles = [generate(long_ctx_model, prompts[i : i + 1], max_new_tokens=20)[0] for i in range(3)]
    assert batched == singles


def test_each_row_stops_at_its_own_eos(long_ctx_model):
    idx = torch.tensor([[1, 2, 3], [4, 5, 6]])
    free = generate(long_ctx_model, idx, max_new_tokens=10)
    eos = free[0][3]  # make row 0's 4th token the end-of-text id
    stopped = generate(long_ctx_model, idx, max_new_tokens=10, eos_id=eos)
    assert stopped[0] == free[0][:3]
    cut = free[1].index(eos) if eos in free[1] else 10
    assert stopped[1] == free[1][:cut]


def test_greedy_matches_the_books_generate():
    ch05 = pytest.importorskip("llms_from_scratch.ch05")
    torch.manual_seed(3)
    m = GPT(ModelConfig(**{**TINY_MODEL, "drop_rate": 0.0})).eval()
    idx = torch.tensor([[6109, 3626, 6100, 345]])
    book = ch05.generate(m, idx, max_new_tokens=30, context_size=12)[0, 4:].tolist()
    assert generate(m, idx, max_new_tokens=30)[0] == book
    # and seeded temperature/top-k sampling draws the same tokens as the book's
    torch.manual_seed(9)
    book = ch05.generate(m, idx, max_new_tokens=30, context_size=12, temperature=1.4, top_k=25)[0, 4:].tolist()
    torch.manual_seed(9)
    assert generate(m, idx, max_new_tokens=30, temperature=1.4, top_k=25)[0] == book


def test_prompt_longer_than_context_is_cropped_from_the_left(long_ctx_model):
    m = GPT(ModelConfig(**{**TINY_MODEL, "drop_rate": 0.0})).eval()
    long = torch.arange(100, 140).unsqueeze(0)
    assert generate(m, long, max_new_tokens=5) == generate(m, long[:, -12:], max_new_tokens=5)


# ---------------------------------------------------------------------------------------------
# gptcli sample: every prompt and sample as one batch

PROMPTS = ["Every effort moves you", "I", "He had painted the picture of a"]  # 4, 1 and 7 tokens


@pytest.fixture
def ctx32_checkpoint(tmp_path):
    from gptcli import checkpoint

    torch.manual_seed(4)
    cfg = ModelConfig(**{**TINY_MODEL, "context_length": 32, "drop_rate": 0.0})
    return checkpoint.atomic_save(checkpoint.weights_checkpoint(cfg, GPT(cfg).state_dict()), tmp_path / "m.pth")


def test_sample_runs_prompts_of_different_lengths_and_samples_as_one_batch(ctx32_checkpoint, monkeypatch, capsys):
    from gptcli import generation
    from gptcli.commands import sample
    from gptcli.tokenizer import encode

    assert len({len(encode(p)) for p in PROMPTS}) == 3
    alone = [sample.sample_command(checkpoint=ctx32_checkpoint, prompts=[p], max_new_tokens=12)[0] for p in PROMPTS]
    calls, shapes = [], []
    real_generate, real_forward = generation.generate, GPT.forward
    monkeypatch.setattr(
        generation, "generate", lambda net, idx, **k: (calls.append(idx), real_generate(net, idx, **k))[1]
    )
    monkeypatch.setattr(
        GPT, "forward", lambda self, idx, *a, **k: (shapes.append(idx.shape), real_forward(self, idx, *a, **k))[1]
    )
    capsys.readouterr()
    texts = sample.sample_command(checkpoint=ctx32_checkpoint, prompts=PROMPTS, num_samples=2, max_new_tokens=12)
    assert len(calls) == 1  # one generate call for 3 prompt lengths x 2 samples
    assert [len(row) for row in calls[0]] == [len(encode(p)) for p in PROMPTS for _ in range(2)]
    assert shapes[0] == (6, 7) and set(shapes[1:]) == {(6, 1)}  # one left-padded prefill, then one step per token
    # each prompt's greedy tokens are the ones it gets alone, in the order and shape of before
    assert texts == [t for t in alone for _ in range(2)]
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "--- prompt 1 of 3, sample 1 of 2 ---" and out[1] == alone[0] and out[-1] == alone[2]


def test_seeded_batched_samples_are_reproducible_and_a_single_prompt_keeps_its_tokens(ctx32_checkpoint):
    from gptcli.commands import sample
    from gptcli.inference import load_model_for_inference
    from gptcli.tokenizer import decode, encode

    kw = dict(checkpoint=ctx32_checkpoint, max_new_tokens=10, temperature=1.0, top_k=20, seed=7)
    first = sample.sample_command(prompts=PROMPTS, num_samples=2, **kw)
    assert sample.sample_command(prompts=PROMPTS, num_samples=2, **kw) == first
    assert len(set(first)) == 6  # really sampled, each row its own draws
    # a single prompt is an unpadded (1, T) batch: the seeded tokens of generate on that tensor
    net = load_model_for_inference(ctx32_checkpoint, None, device="cpu").net
    ids = encode(PROMPTS[0])
    torch.manual_seed(7)
    want = generate(net, torch.tensor([ids]), max_new_tokens=10, temperature=1.0, top_k=20, eos_id=50256)[0]
    assert sample.sample_command(prompts=PROMPTS[:1], **kw) == [decode(ids + want)]
