"""Worker-side handles opened once per process (digitbatch.scoring.handles)."""

from __future__ import annotations

import pytest
import zarr

from digitbatch.scoring import handles as H
from digitbatch.scoring import output as O


def _spec(n=10):
    return O.OutputSpec(n=n, chunk_size=4, n_classes=10, proba=True, model_sha256="ab" * 32,
                        input_checksum="cafe")


def _new(tmp_path, n=10):
    out = tmp_path / "p.zarr"
    out.mkdir()
    O.create_output(out, _spec(n))
    return out


def test_open_array_cached_reopens_a_group_made_again(tmp_path):
    out = _new(tmp_path)
    a = H.open_array_cached(str(out), "pred")
    assert H.open_array_cached(str(out), "pred") is a  # once per process
    assert H.open_group_cached(str(out)) is H.open_group_cached(str(out))
    assert H.open_array_cached(str(out), "margin") is not a
    import shutil

    shutil.rmtree(out)
    out.mkdir()
    O.create_output(out, _spec(n=3))
    b = H.open_array_cached(str(out), "pred")
    assert b is not a and b.shape == (3,)  # a new output at the same path: opened afresh


def test_open_group_cached_of_an_object_store():
    url = "memory://cached/p.zarr"
    g = zarr.open_group(url, mode="w")
    g.create_array("pred", shape=(4,), chunks=(2,), dtype="int8", fill_value=-1)
    a = H.open_array_cached(url, "pred")
    assert H.open_array_cached(url, "pred") is a and a.shape == (4,)
    g = zarr.open_group(url, mode="w")  # made again, its metadata (size) changed
    g.attrs["note"] = "made again"
    g.create_array("pred", shape=(6,), chunks=(2,), dtype="int8")
    assert H.open_array_cached(url, "pred").shape == (6,)


def test_open_group_cached_of_a_group_not_there_yet(tmp_path):
    with pytest.raises(FileNotFoundError):
        H.open_group_cached(str(tmp_path / "absent.zarr"), mode="r")


def test_forget_handles_opens_afresh(tmp_path):
    out = _new(tmp_path)
    a = H.open_array_cached(str(out), "pred")
    H.forget_handles()
    assert H.open_array_cached(str(out), "pred") is not a
