import numpy as np
import torch
import torch.nn.functional as F

from gptcli.config import ModelConfig
from gptcli.data import tokenize
from gptcli.evaluation import evaluate_tokens
from gptcli.model import GPT

from .conftest import TINY_MODEL, VERDICT


def test_eval_equals_cross_entropy_computed_by_hand():
    torch.manual_seed(0)
    m = GPT(ModelConfig(**TINY_MODEL))
    tokens = tokenize(VERDICT.read_text(encoding="utf-8"))[:1000]
    res = evaluate_tokens(m, tokens, batch_size=7)
    # by hand: every token after the first, predicted from up to 12 tokens before it, in
    # consecutive non-overlapping windows
    m.eval()
    losses = []
    with torch.no_grad():
        for s in range(0, len(tokens) - 1, 12):
            chunk = torch.tensor(np.asarray(tokens[s : s + 13], dtype=np.int64))
            logits = m(chunk[:-1].unsqueeze(0))[0]
            losses.append(F.cross_entropy(logits, chunk[1:], reduction="none"))
    by_hand = torch.cat(losses)
    assert res.tokens == len(tokens) - 1 == by_hand.numel()
    assert abs(res.loss - by_hand.mean().item()) < 1e-5
    assert abs(res.perplexity / float(torch.exp(by_hand.mean())) - 1) < 1e-4
