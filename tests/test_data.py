import numpy as np
import pytest
import torch

from gptcli.data import SlidingWindows, TokenWindows, batches_of, split_text
from gptcli.errors import DataError
from gptcli.textfiles import expand_paths, read_corpus, read_text


def test_windows_follow_the_books_dataset():
    tokens = np.arange(30)
    w = TokenWindows(tokens, context_length=8, stride=8)
    # range(0, 30 - 8, 8) -> 0, 8, 16
    assert len(w) == 3
    x, y = w.batch([2, 0])
    assert x[0].tolist() == list(range(16, 24)) and y[0].tolist() == list(range(17, 25))
    assert x.dtype == torch.int64
    assert len(TokenWindows(tokens, 8, 4)) == 6


def test_batches_drop_the_last_partial_one_only_when_asked():
    assert batches_of([3, 1, 2, 0, 4], 2, drop_last=True) == [[3, 1], [2, 0]]
    assert batches_of([3, 1, 2, 0, 4], 2, drop_last=False) == [[3, 1], [2, 0], [4]]


def test_split_is_by_characters():
    assert split_text("abcdefghij", 0.1) == ("abcdefghi", "j")


def test_sliding_windows_score_every_token_once_with_enough_context():
    w = SlidingWindows(np.arange(26), context_length=8, stride=8)  # stride = T: the book's windows + tail
    assert [w.span(k) for k in range(len(w))] == [(0, 8, 0), (8, 8, 0), (16, 8, 0), (24, 1, 0)]
    for n, T, S in [(26, 8, 3), (9, 8, 1), (100, 16, 5), (5, 8, 2), (2, 4, 4)]:
        w = SlidingWindows(np.arange(n), T, S)
        scored = []
        for k in range(len(w)):
            start, length, first = w.span(k)
            assert 1 <= length <= T and first < length
            targets = range(start + 1 + first, start + length + 1)
            # each target has every earlier token of its window as context: at least T - S + 1
            assert all(j - start >= min(j, T - S + 1) for j in targets)
            scored += targets
        assert scored == list(range(1, n)), (n, T, S)
    x, y, first = SlidingWindows(np.arange(26), 8, 3).batch([1, 2])
    assert x[0].tolist() == list(range(3, 11)) and y[1].tolist() == list(range(7, 15)) and first.tolist() == [5, 5]
    with pytest.raises(ValueError):
        SlidingWindows(np.arange(26), 8, 9)


def test_directories_expand_to_sorted_txt_files(tmp_path):
    (tmp_path / "b.txt").write_text("second")
    (tmp_path / "a.txt").write_text("first")
    (tmp_path / "skip.md").write_text("no")
    assert [p.name for p in expand_paths([tmp_path])] == ["a.txt", "b.txt"]
    assert read_corpus([tmp_path]) == "first<|endoftext|>second"


@pytest.mark.parametrize(
    "content,message",
    [(b"", "empty"), (b"  \n\t ", "only whitespace"), (b"caf\xc3\xa9 \xff ok", "byte offset 6"), (b"a\x00b", "binary")],
)
def test_bad_files_name_the_file_and_problem(tmp_path, content, message):
    p = tmp_path / "bad.txt"
    p.write_bytes(content)
    with pytest.raises(DataError, match=message) as e:
        read_text(p)
    assert "bad.txt" in str(e.value)


def test_encoding_errors_replace_opts_in(tmp_path):
    p = tmp_path / "latin1.txt"
    p.write_bytes(b"caf\xe9 ok")
    assert read_text(p, errors="replace") == "caf\ufffd ok"


def test_missing_and_empty_directory(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        expand_paths([tmp_path / "nope.txt"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no .txt files"):
        expand_paths([tmp_path / "empty"])
