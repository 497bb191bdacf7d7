import socket

import pytest
import tiktoken
import tiktoken.load

from gptcli.tokenizer import EOT_ID, decode, encode, get_tokenizer

from .conftest import ROOT, VERDICT

ASSETS = ROOT / "gptcli" / "assets"


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("the tokenizer touched the network")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


def test_book_example_ids(no_network):
    get_tokenizer.cache_clear()
    assert encode("Every effort moves you") == [6109, 3626, 6100, 345]


def test_endoftext_allowed_in_text():
    ids = encode("Hello<|endoftext|>world")
    assert EOT_ID in ids
    assert decode(ids) == "Hello<|endoftext|>world"


def test_identical_to_tiktokens_own_gpt2_construction(tmp_path, monkeypatch):
    # tiktoken's own loader, fed the shipped files, is what get_encoding("gpt2") builds.
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    ranks = tiktoken.load.data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=str(ASSETS / "vocab.bpe"), encoder_json_file=str(ASSETS / "encoder.json")
    )
    import tiktoken_ext.openai_public as pub
    from tiktoken_ext.openai_public import gpt2 as gpt2_spec  # noqa: F401  (pattern source)

    ref = tiktoken.Encoding(
        name="gpt2-ref", pat_str=pub.r50k_pat_str, mergeable_ranks=ranks, special_tokens={"<|endoftext|>": 50256}
    )
    text = VERDICT.read_text(encoding="utf-8")
    samples = [text, "  leading spaces\n\n\ttabs and ünïcödé 😀 1234567 it's we'll", "<|endoftext|> a<|endoftext|>b"]
    for s in samples:
        assert encode(s) == ref.encode(s, allowed_special="all")
    assert get_tokenizer().n_vocab == 50257


def test_package_ships_bpe_files():
    assert (ASSETS / "encoder.json").stat().st_size == 1042301
    assert (ASSETS / "vocab.bpe").stat().st_size == 456318
