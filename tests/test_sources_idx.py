"""IDX source: parsing, validation, and the full-MNIST acceptance facts."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from digitbatch.errors import IdxFormatError, SourceNotFoundError
from digitbatch.sources.idx import is_idx_dir, load_idx, parse_idx

from .conftest import synthetic_digits, write_idx


def test_load_train_and_test(idx_dir):
    d = load_idx(idx_dir)
    assert d.images.shape == (1000, 28, 28) and d.images.dtype == np.uint8
    assert d.splits == {"train": (0, 700), "test": (700, 1000)}
    assert d.keys[0] == "idx:train:0" and d.keys[700] == "idx:test:0"
    x, y = synthetic_digits(1000)
    np.testing.assert_array_equal(d.images, x)
    np.testing.assert_array_equal(d.labels, y)


def test_raw_and_dotted_names(tmp_path):
    x, y = synthetic_digits(20)
    write_idx(tmp_path, x, y, gz=False)
    (tmp_path / "train-images-idx3-ubyte").rename(tmp_path / "train-images.idx3-ubyte")
    assert is_idx_dir(tmp_path)
    assert load_idx(tmp_path).images.shape == (20, 28, 28)


def _img_header(n, h=28, w=28, magic=2051):
    return magic.to_bytes(4, "big") + n.to_bytes(4, "big") + h.to_bytes(4, "big") + w.to_bytes(4, "big")


@pytest.mark.parametrize("data, match", [
    (b"", "too short"),                                         # zero-byte file
    (_img_header(2, magic=2049) + bytes(2 * 784), "magic number 2049"),  # labels file as images
    (_img_header(2, 32, 32) + bytes(2 * 1024), "dimensions"),   # not 28x28
    (_img_header(3) + bytes(2 * 784), "truncated"),            # count says 3, holds 2
    (_img_header(1) + bytes(784 + 5), "padded"),               # trailing garbage
    (_img_header(2)[:10], "truncated header"),                  # header cut short
    (_img_header(2**31), "refusing"),             # absurd size claim
])
def test_parse_idx_rejects(data, match):
    with pytest.raises(IdxFormatError, match=match):
        parse_idx(data, name="f", magic=2051, dims=(28, 28))


def test_count_mismatch(tmp_path):
    x, y = synthetic_digits(20)
    write_idx(tmp_path, x, y[:19])
    with pytest.raises(IdxFormatError, match="20 images but .* 19 labels"):
        load_idx(tmp_path)


def test_truncated_gzip(tmp_path):
    x, y = synthetic_digits(50)
    write_idx(tmp_path, x, y)
    p = tmp_path / "train-images-idx3-ubyte.gz"
    p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])
    with pytest.raises(IdxFormatError, match="truncated or corrupt"):
        load_idx(tmp_path)


def test_missing_half_of_pair(tmp_path):
    x, y = synthetic_digits(5)
    write_idx(tmp_path, x, y)
    (tmp_path / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(IdxFormatError, match="in pairs"):
        load_idx(tmp_path)


def test_label_out_of_range(tmp_path):
    x, y = synthetic_digits(5)
    y[3] = 12
    write_idx(tmp_path, x, y)
    with pytest.raises(IdxFormatError, match="label 12 at record 3"):
        load_idx(tmp_path)


def test_empty_and_missing_dir(tmp_path):
    with pytest.raises(IdxFormatError, match="no IDX files"):
        load_idx(tmp_path)
    with pytest.raises(SourceNotFoundError):
        load_idx(tmp_path / "nope")


@pytest.mark.mnist
def test_full_mnist_known_facts(mnist_path):
    d = load_idx(mnist_path)
    assert d.images.shape == (70000, 28, 28)
    train = d.images[:60000]
    assert round(float(train.mean()), 3) == 33.318
    assert round(float(train.std()), 3) == 78.567
    assert np.bincount(d.labels[:60000]).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918,
                                                      6265, 5851, 5949]
    assert np.bincount(d.labels[60000:]).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028,
                                                      974, 1009]
    assert d.labels[36001] == 2
    # MD5 of the uncompressed payloads as published (../shared/data/mnist/README.md)
    import hashlib
    raw = gzip.open(mnist_path / "t10k-labels-idx1-ubyte.gz").read()
    assert hashlib.md5(raw).hexdigest() == "27ae3e4e09519cfbb04c329615203637"
