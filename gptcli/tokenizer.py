"""GPT-2's byte-pair encoding through tiktoken, built offline from the BPE files gptcli ships.

``tiktoken.get_encoding("gpt2")`` downloads its files on first use, which fails on machines with
no internet (most GPU clusters' compute nodes). The package carries OpenAI's ``encoder.json`` and
``vocab.bpe`` in ``gptcli/assets`` and builds the identical encoding from them.
"""

from __future__ import annotations

import functools
import json
from importlib import resources

import tiktoken

EOT_TOKEN = "<|endoftext|>"
EOT_ID = 50256

# tiktoken's r50k/gpt2 pre-tokenisation pattern (tiktoken_ext/openai_public.py).
_GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""


def _data_gym_byte_decoder() -> dict[str, int]:
    """GPT-2 stores byte-level tokens as printable unicode; this maps each character back to its byte."""
    printable = [b for b in range(256) if chr(b).isprintable() and chr(b) != " "]
    decoder = {chr(b): b for b in printable}
    n = 0
    for b in range(256):
        if b not in printable:
            decoder[chr(256 + n)] = b
            n += 1
    return decoder


def _mergeable_ranks() -> dict[bytes, int]:
    encoder = json.loads(resources.files("gptcli.assets").joinpath("encoder.json").read_text("utf-8"))
    byte_of = _data_gym_byte_decoder()
    # In GPT-2's encoder.json a token's id is its merge rank, which is what tiktoken needs.
    return {bytes(byte_of[ch] for ch in token): rank for token, rank in encoder.items() if token != EOT_TOKEN}


@functools.lru_cache(maxsize=1)
def get_tokenizer() -> tiktoken.Encoding:
    """The GPT-2 encoding, identical to ``tiktoken.get_encoding("gpt2")``, with no network access."""
    return tiktoken.Encoding(
        name="gpt2",
        pat_str=_GPT2_PATTERN,
        mergeable_ranks=_mergeable_ranks(),
        special_tokens={EOT_TOKEN: EOT_ID},
    )


def encode(text: str) -> list[int]:
    """Token ids of ``text``; ``<|endoftext|>`` in the text becomes id 50256."""
    return get_tokenizer().encode(text, allowed_special={EOT_TOKEN})


def encode_ordinary(text: str) -> list[int]:
    """Token ids of a document's text: a literal ``<|endoftext|>`` in it is text (seven ordinary
    tokens), never the separator, as llm.c and nanoGPT encode documents (``encode_ordinary``)."""
    return get_tokenizer().encode_ordinary(text)


# A corpus is its documents' text joined by ``<|endoftext|>``, cut and tokenized as one string
# (the book's split is by characters). So that a literal ``<|endoftext|>`` inside a document stays
# text, the readers hand it on as ``LITERAL_EOT``: the same length (character offsets and the
# split do not move), its first "|" replaced by a lone surrogate, which decoded UTF-8 text and
# checked JSON never hold. ``encode_corpus`` turns it back into "|" and encodes it ordinarily.
_MARK = "\udcff"
LITERAL_EOT = EOT_TOKEN[0] + _MARK + EOT_TOKEN[2:]


def mask_literal_eot(text: str) -> str:
    """A document's text with each literal ``<|endoftext|>`` as ``LITERAL_EOT``."""
    return text.replace(EOT_TOKEN, LITERAL_EOT) if EOT_TOKEN in text else text


def unmask(text: str) -> str:
    """The text ``mask_literal_eot`` was given (for a piece of corpus text cut anywhere)."""
    return text.replace(_MARK, "|")


def corpus_pieces(text: str) -> list[str] | None:
    """None when ``text`` (corpus text) holds no masked literal, so that ``encode`` gives its ids;
    else its documents (split at the real separators), literals restored, to encode ordinarily."""
    if _MARK not in text:
        return None
    return [unmask(doc) for doc in text.split(EOT_TOKEN)]


def encode_corpus(text: str) -> list[int]:
    """Token ids of corpus text: each ``<|endoftext|>`` between documents is id 50256, a literal one
    inside a document (``LITERAL_EOT``) is ordinary text."""
    docs = corpus_pieces(text)
    if docs is None:
        return encode(text)
    enc = get_tokenizer()
    ids: list[int] = []
    for i, doc in enumerate(docs):
        if i:
            ids.append(EOT_ID)
        ids.extend(enc.encode_ordinary(doc))
    return ids


def decode(ids: list[int]) -> str:
    return get_tokenizer().decode(ids)
