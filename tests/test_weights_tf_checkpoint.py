"""The built-in TensorFlow checkpoint reader and writer, checked against TensorFlow's own bytes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gptcli.errors import CheckpointError
from gptcli.weights import tf_checkpoint as tfc

from .weights_helpers import mask_crc, write_bundle

TF_WRITTEN = Path(__file__).parent / "weights_data" / "tf_written"


def _sample_tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    t = {
        f"model/h{i}/mlp/c_fc/{p}": rng.standard_normal((i + 1, 3)).astype(np.float32) for i in range(12) for p in "wb"
    }
    t["model/scalar"] = np.float32(2.5)
    t["model/ints"] = np.arange(5, dtype=np.int64)
    t["model/half"] = np.array([1.0, -0.5], dtype=np.float16)
    t["model/flags"] = np.array([True, False])
    t["model/empty"] = np.zeros((0, 4), dtype=np.float32)
    return t


def test_crc32c_and_mask():
    assert tfc.crc32c(b"123456789") == 0xE3069283  # the standard check value
    assert tfc.crc32c(bytearray(b"123456789")) == 0xE3069283
    for v in (0, 1, 0xE3069283, 0xFFFFFFFF):
        assert tfc.unmask_crc(mask_crc(v)) == v


@pytest.mark.parametrize("block_size", [64, 262144])
def test_write_then_read_round_trip(tmp_path, block_size):
    tensors = _sample_tensors()
    write_bundle(tmp_path / "model.ckpt", tensors, block_size=block_size)
    with tfc.BundleReader(tmp_path / "model.ckpt") as r:
        assert r.names() == sorted(tensors)
        for name, value in tensors.items():
            got = r.read(name)
            assert got.dtype == np.asarray(value).dtype and got.shape == np.shape(value)
            np.testing.assert_array_equal(got, value)


def test_reads_a_checkpoint_tensorflow_wrote():
    with tfc.BundleReader(TF_WRITTEN) as r:
        assert r.names() == ["model/h0/attn/c_attn/w", "model/h0/ln_1/g", "model/half", "model/step", "model/wte"]
        np.testing.assert_array_equal(r.read("model/wte"), np.arange(12, dtype=np.float32).reshape(3, 4) / 7)
        np.testing.assert_array_equal(
            r.read("model/h0/attn/c_attn/w"), (np.arange(24, dtype=np.float32).reshape(1, 4, 6) - 10) / 3
        )
        np.testing.assert_array_equal(r.read("model/h0/ln_1/g"), np.array([1.5, -2.25, 3.0, 0.125], np.float32))
        assert r.read("model/step").dtype == np.int64 and int(r.read("model/step")) == 42
        np.testing.assert_array_equal(r.read("model/half"), np.array([0.5, -1.0], np.float16))


def test_find_prefix(tmp_path):
    write_bundle(tmp_path / "model.ckpt", {"a": np.ones(2, np.float32)})
    (tmp_path / "checkpoint").write_text('model_checkpoint_path: "/elsewhere/model.ckpt"\n')
    prefix = tmp_path / "model.ckpt"
    assert tfc.find_prefix(tmp_path) == prefix  # an absolute path from another machine
    assert tfc.find_prefix(tmp_path / "model.ckpt.index") == prefix
    assert tfc.find_prefix(tmp_path / "model.ckpt.data-00000-of-00001") == prefix
    with pytest.raises(CheckpointError, match="no TensorFlow checkpoint"):
        tfc.find_prefix(tmp_path / "nothing")


def test_flipped_byte_in_data_names_the_tensor(tmp_path):
    tensors = _sample_tensors()
    write_bundle(tmp_path / "model.ckpt", tensors)
    with tfc.BundleReader(tmp_path / "model.ckpt") as r:
        victim = r.entries["model/h7/mlp/c_fc/w"]
    data = tfc.data_file(tmp_path / "model.ckpt")
    raw = bytearray(data.read_bytes())
    raw[victim.offset + 5] ^= 0x01
    data.write_bytes(bytes(raw))
    with tfc.BundleReader(tmp_path / "model.ckpt") as r:
        np.testing.assert_array_equal(r.read("model/h6/mlp/c_fc/w"), tensors["model/h6/mlp/c_fc/w"])
        with pytest.raises(CheckpointError, match=r"tensor model/h7/mlp/c_fc/w fails its CRC32C check"):
            r.read("model/h7/mlp/c_fc/w")


def test_truncated_data_names_the_tensor(tmp_path):
    write_bundle(tmp_path / "model.ckpt", _sample_tensors())
    data = tfc.data_file(tmp_path / "model.ckpt")
    with tfc.BundleReader(tmp_path / "model.ckpt") as r:
        last = max(r.entries.values(), key=lambda e: e.offset + e.size)
    data.write_bytes(data.read_bytes()[: last.offset + 2])
    with (
        tfc.BundleReader(tmp_path / "model.ckpt") as r,
        pytest.raises(CheckpointError, match=f"tensor {last.name} is truncated"),
    ):
        r.read(last.name)


def test_corrupt_index_is_a_clear_error(tmp_path):
    write_bundle(tmp_path / "model.ckpt", _sample_tensors(), block_size=64)
    index = tmp_path / "model.ckpt.index"
    raw = bytearray(index.read_bytes())
    raw[20] ^= 0xFF
    index.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="not a readable TensorFlow checkpoint index.*CRC32C"):
        tfc.BundleReader(tmp_path / "model.ckpt")
    index.write_bytes(b"<?xml version='1.0'?><Error>BlobNotFound</Error>" * 2)
    with pytest.raises(CheckpointError, match="no table magic"):
        tfc.BundleReader(tmp_path / "model.ckpt")


def test_tensorflow_reads_what_we_write_and_we_read_what_it_writes(tmp_path):
    """An independent implementation on both sides: TensorFlow's own reader and writer."""
    tf = pytest.importorskip("tensorflow", reason="optional: pip install 'gptcli[tf]'")
    tensors = _sample_tensors()
    write_bundle(tmp_path / "ours", tensors, block_size=64)  # many blocks and restarts
    listed = dict(tf.train.list_variables(str(tmp_path / "ours")))
    assert sorted(listed) == sorted(tensors)
    for name, value in tensors.items():
        got = tf.train.load_variable(str(tmp_path / "ours"), name)
        assert np.asarray(got).dtype == np.asarray(value).dtype
        np.testing.assert_array_equal(got, value)

    names = [n for n in tensors if n != "model/flags"]
    tf.raw_ops.SaveV2(
        prefix=str(tmp_path / "theirs"),
        tensor_names=names,
        shape_and_slices=[""] * len(names),
        tensors=[tensors[n] for n in names],
    )
    with tfc.BundleReader(tmp_path / "theirs") as r:
        for name in names:
            np.testing.assert_array_equal(r.read(name), tensors[name])


def test_tensorflow_flags_our_crc_too(tmp_path):
    """TensorFlow checks the CRC we wrote: a flipped byte fails in its reader as in ours."""
    tf = pytest.importorskip("tensorflow", reason="optional: pip install 'gptcli[tf]'")
    write_bundle(tmp_path / "m", {"model/w": np.arange(64, dtype=np.float32)})
    data = tfc.data_file(tmp_path / "m")
    raw = bytearray(data.read_bytes())
    raw[9] ^= 0x10
    data.write_bytes(bytes(raw))
    with pytest.raises(Exception, match="(?i)checksum|crc|data loss"):
        tf.train.load_variable(str(tmp_path / "m"), "model/w")
