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


@pytest.mark.e2e
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


@pytest.mark.e2e
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


@pytest.mark.e2e
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


@pytest.mark.e2e
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
    # labels chunk, which zarr does not store when it writes it (as compaction did
    # before it wrote chunks directly, which stores every chunk)
    members = {(f"top{i:03d}.png" if i < 256 else k): v
               for i, (k, v) in enumerate(members.items())}
    src = make_tar(tmp_path / "a.tar", members, mode="w")
    out = tmp_path / "p.zarr"
    score(src, model=shared_model, out=out, chunk_size=256, scheduler="synchronous")
    (out / "labels" / "c" / "0").unlink()  # (the case this is about)
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


# --- the functions of output.py on their own, on tiny outputs (fast: `make mutants`
# runs these). n = 10 rows in chunks of 4: chunks [0, 4), [4, 8) and the ragged [8, 10).

from digitbatch.errors import ScoreError  # noqa: E402
from digitbatch.layout import COMPRESSORS  # noqa: E402
from digitbatch.scoring import output as O  # noqa: E402

N, C, K = 10, 4, 3


def _blosc(a) -> list:
    return [(type(c).__name__, str(c.cname), c.clevel, str(c.shuffle)) for c in a.compressors]


BLOSC = [(type(c).__name__, str(c.cname), c.clevel, str(c.shuffle)) for c in COMPRESSORS]


def _spec(**kw) -> O.OutputSpec:
    args = dict(n=N, chunk_size=C, n_classes=K, proba=True, model_sha256="ab" * 32,
                input_checksum="cafe")
    args.update(kw)
    return O.OutputSpec(**args)


def _new(tmp_path, name="p.zarr", **kw) -> Path:
    out = tmp_path / name
    out.mkdir()
    O.create_output(out, _spec(**kw))
    return out


def _rows(start: int, stop: int) -> dict:
    i = np.arange(start, stop)
    return dict(pred=(i % K).astype(np.int8), margin=(i / 10).astype(np.float32),
                proba=np.stack([i, i + 0.5, i + 0.25], axis=1).astype(np.float32),
                keys=np.array([f"k{j}" for j in i]))


def _counts(start: int, stop: int) -> dict:
    return {"confusion": np.eye(K, dtype=np.int64) * (stop - start), "hist": np.arange(K),
            "n": stop - start, "n_unlabeled": 0}


def _write_all(out: Path, proba: bool = True) -> None:
    for i, (a, b) in enumerate([(0, 4), (4, 8), (8, 10)]):
        rows = _rows(a, b)
        if not proba:
            rows["proba"] = None
        O.write_chunk(str(out), i, a, b, **rows, counts=_counts(a, b))


def test_create_output_arrays_settings_and_fill(tmp_path):
    out = _new(tmp_path)
    g = zarr.open_group(str(out), mode="r")
    assert g.attrs[O.ATTRS_KEY] == {"version": 2, "n": N, "chunk_size": C, "n_classes": K,
                                    "proba": True, "model_sha256": "ab" * 32,
                                    "input_checksum": "cafe"}
    assert O.OUTPUT_VERSION == 2  # 2: gap and second (issue 15)
    want = {"pred": ((N,), (C,), "int8"), "margin": ((N,), (C,), "float32"),
            "proba": ((N, K), (C, K), "float32"), "gap": ((N,), (C,), "float32"),
            "second": ((N,), (C,), "int8")}
    for name, (shape, chunks, dtype) in want.items():
        a = g[name]
        assert (a.shape, a.chunks, str(a.dtype)) == (shape, chunks, dtype), name
        assert _blosc(a) == BLOSC, name  # (and the direct chunk writes apply)
    assert g["keys"].shape == (N,) and g["keys"].chunks == (C,)
    assert g["keys"].dtype.kind in "TUO"
    assert (g["pred"][:] == -1).all() and O.PRED_FILL == -1   # unwritten rows: no label
    assert np.isnan(g["margin"][:]).all() and np.isnan(g["proba"][:]).all()
    assert np.isnan(g["gap"][:]).all() and (g["second"][:] == -1).all()
    assert (out / "_commits").is_dir() and O.committed(out) == {}
    assert O.has_spec(out) and O.is_output(out) and not O.is_complete(out)


def test_create_output_without_proba_or_without_arrays(tmp_path):
    g = zarr.open_group(str(_new(tmp_path, proba=False)), mode="r")
    assert "proba" not in g and {"pred", "margin", "keys"} <= set(g.keys())
    out = tmp_path / "a.zarr"
    out.mkdir()
    O.create_output(out, _spec(), arrays=False)  # an archive: compaction makes the arrays
    g = zarr.open_group(str(out), mode="r")
    assert list(g.keys()) == [] and (out / "_commits").is_dir()
    assert g.attrs[O.ATTRS_KEY] == {"version": 2, **_spec().to_dict()}
    assert O.has_spec(out)


def test_create_output_refuses_an_output_that_holds_predictions(tmp_path):
    out = _new(tmp_path)
    with pytest.raises(ScoreError, match=r"p\.zarr already holds predictions: pass --resume"):
        O.create_output(out, _spec())
    with pytest.raises(ScoreError, match="already holds predictions"):
        O.create_output(out, _spec(), partial_ok=True)  # its settings landed: not partial


def _partial(tmp_path) -> Path:
    """A creation killed before its settings (written last) landed."""
    out = _new(tmp_path)
    zarr.open_group(str(out), mode="r+")["pred"][:] = 5
    g = zarr.open_group(str(out), mode="r+")
    g.attrs.__delitem__(O.ATTRS_KEY)
    assert not O.has_spec(out) and O.is_output(out) is False
    return out


def test_create_output_remakes_a_partial_creation(tmp_path):
    out = _partial(tmp_path)
    with pytest.raises(ScoreError, match="already holds predictions"):
        O.create_output(out, _spec())  # a partial creation is remade only when asked
    O.create_output(out, _spec(proba=False), partial_ok=True)
    g = zarr.open_group(str(out), mode="r")
    assert (g["pred"][:] == -1).all()  # afresh: nothing of the killed creation is left
    assert "proba" not in g
    assert O.has_spec(out)


def test_create_output_refuses_a_partial_creation_with_commits(tmp_path):
    out = _partial(tmp_path)
    O.write_chunk(str(out), 0, 0, 4, **_rows(0, 4), counts=_counts(0, 4))
    with pytest.raises(ScoreError, match=r"has commit records but no output settings: it is "
                                         r"damaged; score into a new --out"):
        O.create_output(out, _spec(), partial_ok=True)


def test_check_resume_same_settings_pass_different_ones_are_named(tmp_path):
    out = _new(tmp_path)
    O.check_resume(out, _spec())
    with pytest.raises(ScoreError) as e:
        O.check_resume(out, _spec(chunk_size=5, proba=False))
    msg = str(e.value)
    assert "cannot resume" in msg and "with different settings" in msg
    assert "(chunk_size: output has 4, this run 5; proba: output has True, this run False)" in msg
    assert "n:" not in msg and msg.endswith("score into a new --out")
    with pytest.raises(ScoreError, match="model_sha256: output has 'abab"):
        O.check_resume(out, _spec(model_sha256="cd" * 32))


def test_check_resume_of_something_else(tmp_path):
    with pytest.raises(ScoreError, match=r"cannot resume .*nothing\.zarr: it is not a "
                                         r"digitbatch output"):
        O.check_resume(tmp_path / "nothing.zarr", _spec())
    out = _partial(tmp_path)  # no settings: every one differs
    with pytest.raises(ScoreError, match="version: output has None, this run 2"):
        O.check_resume(out, _spec())


def test_write_chunk_rows_then_commit_record(tmp_path):
    out = _new(tmp_path)
    _write_all(out)
    g = zarr.open_group(str(out), mode="r")
    want = _rows(0, N)
    for name in ("pred", "margin", "proba"):
        np.testing.assert_array_equal(g[name][:], want[name])
    assert list(g["keys"][:]) == list(want["keys"])
    rec = O.committed(out)
    assert sorted(rec) == [0, 1, 2]
    assert rec[2] == {"chunk": 2, "start": 8, "stop": 10, "confusion": [[2, 0, 0], [0, 2, 0],
                                                                        [0, 0, 2]],
                      "hist": [0, 1, 2], "n": 2, "n_unlabeled": 0}
    assert O.commit_path(out, 2) == out / "_commits" / "chunk-000002.json"
    assert json.loads(O.commit_path(out, 2).read_text()) == rec[2]


def test_write_chunk_rows_not_on_a_chunk_boundary(tmp_path):
    out = _new(tmp_path)
    O.write_chunk(str(out), 7, 2, 6, **_rows(2, 6), counts={"n": 4})  # (across two chunks)
    O.write_chunk(str(out), 8, 4, 6, **_rows(4, 6), counts={"n": 2})  # aligned start, short
    g = zarr.open_group(str(out), mode="r")
    want = _rows(2, 6)
    np.testing.assert_array_equal(g["pred"][2:6], want["pred"])
    np.testing.assert_array_equal(g["proba"][2:6], want["proba"])
    assert (g["pred"][:2] == -1).all() and (g["pred"][6:] == -1).all()
    assert np.isnan(g["margin"][6:]).all()
    assert list(g["keys"][2:6]) == list(want["keys"])
    assert O.committed(out)[7] == {"chunk": 7, "start": 2, "stop": 6, "n": 4}


def test_write_chunk_skips_arrays_given_as_none(tmp_path):
    out = _new(tmp_path, proba=False)
    rows = _rows(0, 4)
    O.write_chunk(str(out), 0, 0, 4, pred=rows["pred"], margin=rows["margin"], proba=None,
                  keys=None, counts={})
    g = zarr.open_group(str(out), mode="r")
    np.testing.assert_array_equal(g["pred"][:4], rows["pred"])
    assert list(g["keys"][:4]) == [""] * 4  # the caller copies the keys chunk itself
    assert O.committed(out)[0] == {"chunk": 0, "start": 0, "stop": 4}


def test_write_chunk_that_fails_before_its_commit_record_commits_nothing(tmp_path, monkeypatch):
    out = _new(tmp_path)
    real = O.write_span

    def failing(arr, a, b, rows):
        if arr.path.endswith("proba"):  # (after pred and margin, before the record)
            raise InjectedWriteError("disk full")
        return real(arr, a, b, rows)

    monkeypatch.setattr(O, "write_span", failing)
    with pytest.raises(InjectedWriteError):
        O.write_chunk(str(out), 1, 4, 8, **_rows(4, 8), counts=_counts(4, 8))
    assert O.committed(out) == {}
    assert not O.commit_path(out, 1).exists()


def test_committed_reads_only_commit_records(tmp_path):
    out = _new(tmp_path)
    assert O.COMMITS == "_commits"
    _write_all(out)
    d = out / "_commits"
    (d / ".chunk-000005.json.tmp-1234abcd").write_text("{")  # a killed writer's temporary
    (d / "notes.txt").write_text("x")
    (d / "chunk-000009.txt").write_text("{")
    assert sorted(O.committed(out)) == [0, 1, 2]
    assert O.committed(tmp_path / "absent.zarr") == {}


@pytest.mark.parametrize("name, text", [("chunk-000003.json", "{not json"),
                                        ("chunk-x.json", "{}"),
                                        ("chunk-.json", "{}")])
def test_committed_refuses_a_damaged_record(tmp_path, name, text):
    out = _new(tmp_path)
    (out / "_commits" / name).write_text(text)
    with pytest.raises(ScoreError, match=rf"commit record .*{name} is damaged .*: delete it and "
                                         r"--resume"):
        O.committed(out)


def test_finalize_writes_metrics_then_success(tmp_path):
    out = _new(tmp_path)
    m = {"accuracy": 0.5, "n_images": 10}
    O.finalize(out, m)
    want = json.dumps(m, indent=2) + "\n"
    assert (out / "metrics.json").read_text() == want
    assert (out / "_SUCCESS").read_text() == want
    assert O.metrics_path(out) == out / "metrics.json" and O.METRICS == "metrics.json"
    assert O.is_complete(out) and O.open_metrics(out) == m


def test_is_output_has_spec_is_complete(tmp_path):
    assert not O.is_output(tmp_path / "absent")
    (tmp_path / "x").mkdir()
    assert not O.is_output(tmp_path / "x") and not O.has_spec(tmp_path / "x")
    (tmp_path / "x" / "zarr.json").write_text("not json")
    assert not O.is_output(tmp_path / "x")
    (tmp_path / "x" / "zarr.json").write_text("[1]")
    assert not O.is_output(tmp_path / "x")
    zarr.open_group(str(tmp_path / "s.zarr"), mode="w").attrs["other"] = 1
    assert not O.is_output(tmp_path / "s.zarr") and not O.has_spec(tmp_path / "s.zarr")
    zarr.open_group(str(tmp_path / "t.zarr"), mode="w")  # no attributes at all
    assert not O.is_output(tmp_path / "t.zarr")
    out = _new(tmp_path)
    assert O.is_output(out) and O.is_output(str(out)) and O.has_spec(str(out))
    assert not O.is_complete(out) and not O.is_complete(tmp_path / "absent")


def test_sweep_temporaries_removes_only_temporary_files(tmp_path, caplog):
    out = _new(tmp_path)
    _write_all(out)
    tmps = [out / "_commits" / ".chunk-000001.json.tmp-1a2b3c4d",
            out / "pred" / "c" / ".0.tmp-99"]
    for p in tmps:
        p.write_bytes(b"x")
    (out / "_commits" / ".keep.tmp-dir").mkdir()  # a directory: left alone
    keep = sorted(p for p in out.rglob("*") if p not in tmps)
    with caplog.at_level("INFO", logger="digitbatch.scoring.output"):
        assert O.sweep_temporaries(out) == 2
    assert caplog.messages == [f"removed 2 temporary files left by killed workers in {out}"]
    assert sorted(out.rglob("*")) == keep
    caplog.clear()
    with caplog.at_level("INFO", logger="digitbatch.scoring.output"):
        assert O.sweep_temporaries(out) == 0
    assert "removed" not in caplog.text
    assert sorted(O.committed(out)) == [0, 1, 2]


def test_sweep_temporaries_of_an_object_store_does_nothing():
    assert O.sweep_temporaries("memory://sweep/p.zarr") == 0


# --- staging and compaction (archive inputs) -----------------------------------------


def _staged(tmp_path, valid: list[int], *, proba=True) -> Path:
    n = len(valid)
    out = tmp_path / "a.zarr"
    out.mkdir()
    O.create_output(out, _spec(n=n, proba=proba), arrays=False)
    O.create_staging(out, n=n, chunk_size=C, n_classes=K, proba=proba)
    for i, a in enumerate(range(0, n, C)):
        b = min(a + C, n)
        rows = _rows(a, b)
        O.write_slots(str(out), i, a, valid=np.array(valid[a:b], dtype=bool),
                      labels=(np.arange(a, b) % 10).astype(np.int8), pred=rows["pred"],
                      margin=rows["margin"], proba=rows["proba"] if proba else None,
                      keys=rows["keys"], counts=_counts(a, b))
    return out


def test_create_staging_arrays_and_fill(tmp_path):
    out = tmp_path / "a.zarr"
    out.mkdir()
    O.create_output(out, _spec(), arrays=False)
    O.create_staging(out, n=N, chunk_size=C, n_classes=K, proba=True)
    st = zarr.open_group(str(out), mode="r")["_staging"]
    assert O.STAGING == "_staging"
    want = {"pred": ("int8", -1), "margin": ("float32", None), "valid": ("int8", 0),
            "labels": ("int8", -1)}
    for name, (dtype, fill) in want.items():
        a = st[name]
        assert (a.shape, a.chunks, str(a.dtype)) == ((N,), (C,), dtype), name
        assert _blosc(a) == BLOSC
        if fill is None:
            assert np.isnan(a[:]).all()
        else:
            assert (a[:] == fill).all(), name
    assert st["proba"].shape == (N, K) and st["proba"].chunks == (C, K)
    assert str(st["proba"].dtype) == "float32" and np.isnan(st["proba"][:]).all()
    assert st["keys"].shape == (N,) and st["keys"].chunks == (C,)


def test_create_staging_again_keeps_what_was_staged(tmp_path):
    out = _staged(tmp_path, [1] * N)
    O.create_staging(out, n=N, chunk_size=C, n_classes=K, proba=True)  # a resumed run
    st = zarr.open_group(str(out), mode="r")["_staging"]
    for name in ("pred", "margin", "proba"):
        np.testing.assert_array_equal(st[name][:], _rows(0, N)[name])
    assert (st["valid"][:] == 1).all() and list(st["keys"][:]) == list(_rows(0, N)["keys"])
    assert st["labels"][:].tolist() == list(range(N))


def test_create_staging_without_proba(tmp_path):
    out = tmp_path / "a.zarr"
    out.mkdir()
    O.create_output(out, _spec(proba=False), arrays=False)
    O.create_staging(out, n=N, chunk_size=C, n_classes=K, proba=False)
    assert "proba" not in zarr.open_group(str(out), mode="r")["_staging"]


def test_write_slots_stages_then_commits(tmp_path):
    valid = [1, 0, 1, 1, 0, 0, 0, 0, 1, 0]
    out = _staged(tmp_path, valid)
    st = zarr.open_group(str(out), mode="r")["_staging"]
    assert st["valid"][:].tolist() == valid and str(st["valid"].dtype) == "int8"
    assert st["labels"][:].tolist() == list(range(N))
    np.testing.assert_array_equal(st["pred"][:], _rows(0, N)["pred"])
    assert list(st["keys"][:]) == list(_rows(0, N)["keys"])
    assert [(r["start"], r["stop"]) for _, r in sorted(O.committed(out).items())] == [
        (0, 4), (4, 8), (8, 10)]


@pytest.mark.parametrize("valid", [
    [1, 0, 1, 1, 0, 0, 0, 0, 1, 0],   # a slot chunk with none valid, in the middle
    [1] * N,                           # all valid: rows flushed a chunk at a time
    [0, 1, 1, 1, 1, 1, 1, 1, 1, 1],   # 9 valid: two full output chunks and a ragged one
    [0] * 9 + [1],                     # one valid, in the last slot
    [0, 1, 1, 1, 1, 0, 0, 0, 0, 0],   # exactly one output chunk
])
@pytest.mark.parametrize("proba", [True, False])
def test_compact_copies_the_valid_rows_in_order(tmp_path, valid, proba):
    out = _staged(tmp_path, valid, proba=proba)
    keep = np.array(valid, dtype=bool)
    n = O.compact(out, chunk_size=C, n_classes=K, proba=proba)
    assert n == keep.sum()
    g = zarr.open_group(str(out), mode="r")
    want = _rows(0, N)
    for name in ("pred", "margin") + (("proba",) if proba else ()):
        np.testing.assert_array_equal(g[name][:], want[name][keep])
        assert g[name].chunks[0] == C and _blosc(g[name]) == BLOSC, name
        assert g[name].dtype == want[name].dtype, name
    assert list(g["keys"][:]) == list(want["keys"][keep])
    assert g["labels"][:].tolist() == np.arange(N)[keep].tolist()
    assert str(g["labels"].dtype) == "int8" and g["labels"].fill_value == -1
    assert g["pred"].fill_value == -1
    if proba:
        assert g["proba"].shape == (n, K) and g["proba"].chunks == (C, K)
    else:
        assert "proba" not in g
    assert "_staging" not in g and not (out / "_staging").exists()


def test_compact_reads_a_staging_chunk_zarr_left_out_as_fill(tmp_path):
    """A staging chunk of fill values written through zarr is not stored (the
    labels of a slot whose members have none, say): its rows are fill values."""
    valid = [1, 0, 1, 1, 1, 1, 0, 1, 1, 1]
    out = _staged(tmp_path, valid)
    (out / "_staging" / "labels" / "c" / "1").unlink()
    O.compact(out, chunk_size=C, n_classes=K, proba=True)
    want = (np.arange(N) % 10).astype(np.int8)
    want[C:2 * C] = -1
    keep = np.array(valid, dtype=bool)
    assert zarr.open_group(str(out), mode="r")["labels"][:].tolist() == want[keep].tolist()


@pytest.mark.parametrize("name", ["pred", "keys"])
def test_compact_names_a_damaged_staging_chunk(tmp_path, name):
    out = _staged(tmp_path, [1] * N)
    chunk = out / "_staging" / name / "c" / "1"
    good = chunk.read_bytes()
    chunk.write_bytes(b"damaged")
    with pytest.raises(IncompleteOutputError, match=rf"chunk 1 of .*_staging/{name} is corrupt.*"
                                                    r"score again into a new --out"):
        O.compact(out, chunk_size=C, n_classes=K, proba=True)
    # nothing lost: staging is kept whole, the output is not finished
    assert (out / "_staging").is_dir() and not (out / "_SUCCESS").exists()
    chunk.write_bytes(good)  # once the chunk is whole again, compaction completes
    assert O.compact(out, chunk_size=C, n_classes=K, proba=True) == N
    np.testing.assert_array_equal(zarr.open_group(str(out), mode="r")["pred"][:],
                                  _rows(0, N)["pred"])


def test_compacted_chunks_hold_the_bytes_zarr_writes(tmp_path):
    """Output chunks written directly are those zarr would write for the same rows."""
    valid = [0, 1, 1, 1, 1, 1, 1, 1, 1, 1]
    out = _staged(tmp_path, valid)
    keep = np.array(valid, dtype=bool)
    want = _rows(0, N)
    O.compact(out, chunk_size=C, n_classes=K, proba=True)
    ref = zarr.open_group(str(tmp_path / "ref.zarr"), mode="w")
    g = zarr.open_group(str(out), mode="r")
    for name in ("pred", "margin", "proba", "keys"):
        a = ref.create_array(name, shape=g[name].shape, chunks=g[name].chunks,
                             dtype=str if name == "keys" else g[name].dtype,
                             **({} if name == "keys" else {"compressors": COMPRESSORS,
                                                           "fill_value": g[name].fill_value}))
        a[:] = np.asarray(want[name])[keep]
        for i in range(3):
            key = Path(name, "c", str(i), *(["0"] if name == "proba" else []))
            assert (out / key).read_bytes() == (tmp_path / "ref.zarr" / key).read_bytes(), key


def test_compact_with_nothing_valid_makes_empty_arrays(tmp_path):
    out = _staged(tmp_path, [0] * N)
    assert O.compact(out, chunk_size=C, n_classes=K, proba=True) == 0
    g = zarr.open_group(str(out), mode="r")
    assert g["pred"].shape == (0,) and g["proba"].shape == (0, K) and g["keys"].shape == (0,)


def test_compact_again_after_a_kill_while_compacting(tmp_path):
    """Arrays left by a killed compaction are made afresh from staging."""
    valid = [1, 1, 0, 1, 1, 1, 0, 1, 1, 1]
    out = _staged(tmp_path, valid)
    g = zarr.open_group(str(out), mode="r+")
    for name in ("pred", "margin", "keys", "labels", "proba"):
        g.create_array(name, shape=(3, K) if name == "proba" else (3,), chunks=(1, K) if
                       name == "proba" else (1,), dtype=str if name == "keys" else "float64")
    assert O.compact(out, chunk_size=C, n_classes=K, proba=True) == 8
    g = zarr.open_group(str(out), mode="r")
    keep = np.array(valid, dtype=bool)
    np.testing.assert_array_equal(g["proba"][:], _rows(0, N)["proba"][keep])
    assert g["pred"].chunks == (C,) and str(g["pred"].dtype) == "int8"


# --- opening a finished output ------------------------------------------------------


def _finished(tmp_path, **kw) -> Path:
    out = _new(tmp_path, **kw)
    _write_all(out, kw.get("proba", True))
    O.finalize(out, {"n_images": N})
    return out


def test_open_predictions_of_a_finished_output(tmp_path):
    out = _finished(tmp_path)
    p = O.open_predictions(out)
    assert p.path == out and p.metrics == {"n_images": N}
    assert O.open_predictions(str(out)).metrics == {"n_images": N}
    want = _rows(0, N)
    np.testing.assert_array_equal(p.pred[:], want["pred"])
    np.testing.assert_array_equal(p.margin[:], want["margin"])
    np.testing.assert_array_equal(p.proba[:], want["proba"])
    assert list(p.keys[:]) == list(want["keys"])
    assert p.labels is None  # a store input holds its own labels


def test_open_predictions_without_proba_and_with_labels(tmp_path):
    p = O.open_predictions(_finished(tmp_path, proba=False))
    assert p.proba is None
    out = _staged(tmp_path, [1] * N)
    O.compact(out, chunk_size=C, n_classes=K, proba=True)
    O.finalize(out, {})
    assert O.open_predictions(out).labels[:].tolist() == list(range(N))


@pytest.mark.parametrize("drop", [[0], [1], [2], [0, 2]])
def test_open_predictions_refuses_missing_commits(tmp_path, drop):
    out = _finished(tmp_path)
    for i in drop:
        O.commit_path(out, i).unlink()
    with pytest.raises(IncompleteOutputError,
                       match=rf"p\.zarr is missing committed chunks \[{', '.join(map(str, drop))}\]"
                             r": rerun with --resume"):
        O.open_predictions(out)


def test_open_predictions_names_at_most_ten_missing_chunks(tmp_path):
    out = tmp_path / "p.zarr"
    out.mkdir()
    O.create_output(out, _spec(n=50, chunk_size=4))
    O.write_chunk(str(out), 3, 12, 16, **_rows(12, 16), counts={})
    O.finalize(out, {})
    with pytest.raises(IncompleteOutputError,
                       match=r"missing committed chunks \[0, 1, 2, 4, 5, 6, 7, 8, 9, 10\]: "):
        O.open_predictions(out)


def test_open_predictions_refuses_an_output_without_success(tmp_path):
    out = _new(tmp_path)
    _write_all(out)
    with pytest.raises(IncompleteOutputError,
                       match=r"p\.zarr has no _SUCCESS marker: the run did not finish; rerun "
                             r"`digitbatch score` with --resume"):
        O.open_predictions(out)
    assert O.SUCCESS == "_SUCCESS"


def test_open_predictions_refuses_what_is_not_an_output(tmp_path):
    """A _SUCCESS marker alone does not make an output: without the settings there is
    no count of chunks to check, so nothing would be refused as incomplete."""
    from digitbatch.errors import NotAnOutputError

    g = zarr.open_group(str(tmp_path / "other.zarr"), mode="w")
    g.create_array("pred", shape=(4,), chunks=(2,), dtype="int8")
    (tmp_path / "other.zarr" / "_SUCCESS").write_text("{}")
    with pytest.raises(NotAnOutputError, match=r"other\.zarr has a _SUCCESS marker but no "
                                               r"digitbatch output settings .*: it is not the "
                                               r"--out of a `digitbatch score` run"):
        O.open_predictions(tmp_path / "other.zarr")
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "_SUCCESS").write_text("{}")
    with pytest.raises(NotAnOutputError, match="score into a new --out"):
        O.open_predictions(tmp_path / "plain")  # not even a Zarr group
    out = _finished(tmp_path)
    g = zarr.open_group(str(out), mode="r+")
    g.attrs[O.ATTRS_KEY] = {k: v for k, v in g.attrs[O.ATTRS_KEY].items() if k != "n"}
    with pytest.raises(NotAnOutputError, match="KeyError"):
        O.open_predictions(out)  # settings without the row count
