"""PRED.zarr's commit protocol: rows first, commit record last; incomplete outputs refused.

- Commit order: a write that fails between a chunk's rows and its commit
  record (the chunk file of ``pred``, ``margin`` or ``proba`` of chunk i,
  failed on progress: the first write of that file, not at a time) leaves
  chunk i uncommitted, the output without ``_SUCCESS`` and refused by
  ``open_predictions``; ``--resume`` then scores exactly the uncommitted
  rows and the output equals an uninterrupted run's.
- A complete output with any one commit record missing (the first, one in
  the middle, the LAST, whose chunk is the ragged one) is refused by
  ``open_predictions`` and by ``report``, naming the chunk.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import zarr

from digitbatch.errors import IncompleteOutputError, StoreError
from digitbatch.scoring.output import committed, open_predictions
from digitbatch.scoring.api import score

from .conftest import STORE_SHAPES


class InjectedWriteError(OSError):
    pass


class FailWrite:
    """Fail every write of one output chunk file (``ARRAY/c/I``), counting the attempts.

    Both ways a chunk file is put in place are covered: the rename of a
    finished temporary file (``os.replace``: digitbatch's direct chunk
    writes and ``storage.write_atomic``) and Zarr's own store writes.
    """

    def __init__(self, monkeypatch, out: Path, array: str, chunk: int):
        self.target = f"{array}/c/{chunk}"
        self.out = str(out.resolve())
        self.hits = 0
        real_replace = os.replace

        def replace(src, dst, *a, **k):
            self._check(os.path.abspath(os.fspath(dst)))
            return real_replace(src, dst, *a, **k)

        monkeypatch.setattr(os, "replace", replace)
        from zarr.storage import LocalStore

        real_set = LocalStore.set
        me = self

        async def set_(store, key, value):
            me._check(os.path.join(str(store.root), key))
            return await real_set(store, key, value)

        monkeypatch.setattr(LocalStore, "set", set_)

    def _check(self, path: str) -> None:
        if not path.startswith(self.out + os.sep):
            return
        rel = path[len(self.out) + 1:].replace(os.sep, "/")
        if rel == self.target or rel.startswith(self.target + "/"):
            self.hits += 1
            raise InjectedWriteError(f"injected failure writing {rel}")


def _arrays(out: Path) -> dict[str, np.ndarray]:
    g = zarr.open_group(str(out), mode="r")
    return {n: g[n][:] for n in ("pred", "margin", "proba", "keys") if n in g}


@pytest.fixture(scope="module")
def ref(shaped_stores, shared_model, tmp_path_factory):
    """An uninterrupted run over the 4-chunk store (last chunk ragged), with --proba."""
    out = tmp_path_factory.mktemp("ref") / "ref.zarr"
    score(shaped_stores["4-chunks-ragged"], model=shared_model, out=out, proba=True,
          scheduler="synchronous")
    return out


@pytest.mark.parametrize("array", ["pred", "margin", "proba"])  # first, middle, last row write
@pytest.mark.parametrize("chunk", [1, 3])  # a full chunk, the ragged last one
def test_a_failed_row_write_leaves_the_chunk_uncommitted_and_resumable(
        array, chunk, ref, shaped_stores, shared_model, tmp_path, monkeypatch):
    store = shaped_stores["4-chunks-ragged"]
    n, c = STORE_SHAPES["4-chunks-ragged"]
    out = tmp_path / "p.zarr"
    fault = FailWrite(monkeypatch, out, array, chunk)
    with pytest.raises(InjectedWriteError):
        score(store, model=shared_model, out=out, proba=True, scheduler="synchronous")
    assert fault.hits >= 1  # the fault landed, mid-run
    records = committed(out)
    assert chunk not in records, f"chunk {chunk} was committed before its {array} rows"
    assert sorted(records) == list(range(chunk))  # (synchronous: chunks in order)
    assert not (out / "_SUCCESS").exists() and not (out / "metrics.json").exists()
    with pytest.raises(IncompleteOutputError):
        open_predictions(out)
    monkeypatch.undo()

    left = n - sum(r["stop"] - r["start"] for r in records.values())
    r = score(store, model=shared_model, out=out, proba=True, resume=True,
              scheduler="synchronous")
    assert r.metrics["resumed"] is True
    assert r.metrics["n_scored_this_run"] == left == n - chunk * c
    assert r.metrics["n_images"] == n
    want = json.loads((ref / "metrics.json").read_text())
    assert r.metrics["confusion_matrix"] == want["confusion_matrix"]
    assert sorted(committed(out)) == list(range(math.ceil(n / c)))
    got, exp = _arrays(out), _arrays(ref)
    for name in exp:
        if name == "keys":
            assert list(got[name]) == list(exp[name])
        else:
            np.testing.assert_array_equal(got[name], exp[name])


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("shape, drop", [
    ("4-chunks-ragged", 3),  # the last chunk (ragged): n // chunk_size would not count it
    ("4-chunks-ragged", 0),  # the first
    ("9-chunks-ragged", 4),  # one in the middle
    ("9-chunks-ragged", 8),  # the last of an odd count
    ("1-chunk-short", 0),    # the only one, shorter than chunk_size
    ("5-chunks-full", 4),    # the last, full
])
def test_output_missing_a_commit_record_is_refused(shape, drop, shaped_stores, shared_model,
                                                   tmp_path):
    out = tmp_path / "p.zarr"
    score(shaped_stores[shape], model=shared_model, out=out, scheduler="synchronous")
    open_predictions(out)  # complete: opens
    (out / "_commits" / f"chunk-{drop:06d}.json").unlink()
    with pytest.raises(IncompleteOutputError, match=rf"missing committed chunks \[{drop}\]: "
                                                    r"rerun with --resume"):
        open_predictions(out)
    from digitbatch.report import write_report

    with pytest.raises(IncompleteOutputError, match=rf"\[{drop}\]"):
        write_report(out, out=tmp_path / "report")
    assert not (tmp_path / "report" / "report.html").exists()


def test_archive_output_missing_its_last_commit_record_is_refused(shared_model, tmp_path):
    from .test_ingest import digit_members, make_tar

    members, _, _ = digit_members(600, seed=4)  # 3 slot chunks of 256, the last ragged
    src = make_tar(tmp_path / "a.tar", members, mode="w")
    out = tmp_path / "p.zarr"
    score(src, model=shared_model, out=out, chunk_size=256, scheduler="synchronous")
    open_predictions(out)
    (out / "_commits" / "chunk-000002.json").unlink()
    with pytest.raises(IncompleteOutputError, match=r"missing committed chunks \[2\]"):
        open_predictions(out)


def test_output_without_success_is_refused(shaped_stores, shared_model, tmp_path):
    out = tmp_path / "p.zarr"
    score(shaped_stores["3-chunks-ragged"], model=shared_model, out=out,
          scheduler="synchronous")
    (out / "_SUCCESS").unlink()
    with pytest.raises(IncompleteOutputError, match="has no _SUCCESS marker: .*--resume"):
        open_predictions(out)


# --- reading a finished output a chunk at a time (Predictions.chunks) ---------------


@pytest.mark.parametrize("name", ["1-chunk-short", "4-chunks-ragged", "5-chunks-full"])
def test_chunks_cover_the_output_in_order(tmp_path, shaped_stores, shared_model, name):
    out = tmp_path / "p.zarr"
    score(shaped_stores[name], model=shared_model, out=out, proba=True, scheduler="synchronous")
    p = open_predictions(out)
    n, c = STORE_SHAPES[name]
    chunks = list(p.chunks(proba=True))
    assert [(ch.start, ch.stop) for ch in chunks] == p.chunk_bounds()
    assert p.chunk_bounds() == [(a, min(a + c, n)) for a in range(0, n, c)]
    g = zarr.open_group(str(out), mode="r")
    for field in ("pred", "margin", "proba"):
        np.testing.assert_array_equal(np.concatenate([getattr(ch, field) for ch in chunks]),
                                      g[field][:])
    assert [str(k) for ch in chunks for k in ch.keys] == [str(k) for k in g["keys"][:]]
    assert all(ch.labels is None for ch in chunks)  # a store input: labels in the store
    assert all(ch.proba is None for ch in p.chunks())


def test_chunks_of_an_archive_output_read_its_labels_even_a_chunk_left_out(tmp_path,
                                                                           shared_model):
    from .test_ingest import digit_members, make_tar

    members, _, _ = digit_members(600, seed=4)
    # the first 256 members at the top level: no folder, no label: an all-unknown
    # labels chunk, which zarr does not store
    members = {(f"top{i:03d}.png" if i < 256 else k): v
               for i, (k, v) in enumerate(members.items())}
    src = make_tar(tmp_path / "a.tar", members, mode="w")
    out = tmp_path / "p.zarr"
    score(src, model=shared_model, out=out, chunk_size=256, scheduler="synchronous")
    assert not (out / "labels" / "c" / "0").exists()  # (the case this is about)
    p = open_predictions(out)
    labels = np.concatenate([ch.labels for ch in p.chunks()])
    np.testing.assert_array_equal(labels, zarr.open_group(str(out), mode="r")["labels"][:])
    assert (labels[:256] == -1).all() and (labels[256:] >= 0).all()


def test_a_damaged_chunk_is_named_not_read_as_fill(tmp_path, shaped_stores, shared_model):
    out = tmp_path / "p.zarr"
    score(shaped_stores["3-chunks-ragged"], model=shared_model, out=out,
          scheduler="synchronous")
    (out / "keys" / "c" / "2").write_bytes(b"not zstd")
    with pytest.raises(IncompleteOutputError, match=r"keys cannot be read .*chunk 2.*corrupt"):
        list(open_predictions(out).chunks())
    (out / "margin" / "c" / "1").unlink()
    with pytest.raises(IncompleteOutputError, match=r"margin cannot be read .*chunk 1.*missing"):
        list(open_predictions(out).chunks())


def test_read_strings_of_other_codecs_goes_through_zarr(tmp_path):
    from digitbatch.chunkio import read_strings, stored

    g = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    arr = g.create_array("k", shape=(5,), chunks=(2,), dtype=str, compressors=None)
    arr[:] = np.array(["a", "=b", "c", "dé", "e"])
    assert [list(read_strings(arr, i)) for i in range(3)] == [["a", "=b"], ["c", "dé"], ["e"]]
    assert stored(arr, 2)
    (tmp_path / "g.zarr" / "k" / "c" / "2").unlink()
    assert not stored(arr, 2)
    with pytest.raises(StoreError, match="missing"):
        read_strings(arr, 2)
