"""The per-chunk worker functions of scoring (digitbatch.scoring.chunks), one chunk at a time."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import zarr
from PIL import Image
from sklearn.metrics import confusion_matrix

from digitbatch.errors import ScoreError
from digitbatch.layout import open_store
from digitbatch.modelio import load_model
from digitbatch.scoring.chunks import score_archive_chunk, score_store_chunk
from digitbatch.scoring.output import OutputSpec, commit_path, create_output, create_staging
from digitbatch.scoring.tasks import ChunkTask
from digitbatch.sources.base import Reject
from digitbatch.sources.labels import LabelMap
from digitbatch.sources.listing import pack
from digitbatch.sources.members import Member

from .conftest import synthetic_digits


@pytest.mark.parametrize("i", [0, 3])  # a full chunk and the ragged last one
def test_store_chunk_writes_its_rows_and_commits_sklearn_counts(tmp_path, shaped_stores,
                                                               shared_model, i):
    s = open_store(shaped_stores["4-chunks-ragged"])
    loaded = load_model(shared_model)
    out = tmp_path / "p.zarr"
    create_output(out, OutputSpec(s.n, s.chunk_size, 10, True, loaded.sha256, s.checksum))
    a, b = s.chunks[i]
    assert score_store_chunk(ChunkTask(i, a, b), store_path=str(s.path), out_path=str(out),
                             model=loaded.model, proba=True) == i
    g = zarr.open_group(str(out), mode="r")
    x, y = s.images[a:b], s.labels[a:b]
    want = loaded.model.predict(x)
    np.testing.assert_array_equal(g["pred"][a:b], want)
    assert np.all(g["pred"][:a] == -1) and np.all(g["pred"][b:] == -1)  # nothing else written
    assert list(g["keys"][a:b]) == list(s.keys[a:b])
    rec = json.loads(commit_path(out, i).read_text())
    assert (rec["chunk"], rec["start"], rec["stop"], rec["n"]) == (i, a, b, b - a)
    np.testing.assert_array_equal(rec["confusion"], confusion_matrix(y, want, labels=range(10)))
    assert rec["hist"] == np.bincount(want, minlength=10).tolist()


def test_store_chunk_of_the_wrong_length_is_refused(tmp_path, small_store, shared_model):
    s = open_store(small_store)
    loaded = load_model(shared_model)
    out = tmp_path / "p.zarr"
    create_output(out, OutputSpec(s.n, s.chunk_size, 10, False, loaded.sha256, s.checksum))
    with pytest.raises(ScoreError, match="chunk 0 .* 256 rows, expected 200"):
        score_store_chunk(ChunkTask(0, 0, 200), store_path=str(s.path), out_path=str(out),
                          model=loaded.model, proba=False)
    assert not commit_path(out, 0).exists()


def _png(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def test_archive_chunk_stages_one_row_per_slot(tmp_path, shared_model):
    """Members with bytes, a header reject, an undecodable member and a bad CSV label:
    valid rows scored, the others rejected with their reasons, slots kept in order."""
    loaded = load_model(shared_model)
    x, y = synthetic_digits(7, seed=9)
    entries = [Member(f"{y[j]}/{j}.png", _png(x[j]), int(y[j])) for j in range(5)]
    entries.insert(2, Reject("link.png", "link: a symlink"))
    entries.append(Member("junk.png", b"not an image", None))
    labels = LabelMap("labels.csv", {entries[4].key: "bad-label: 'x'"})
    out = tmp_path / "p.zarr"
    n = len(entries)
    create_output(out, OutputSpec(n, 256, 10, False, loaded.sha256, "x"), arrays=False)
    create_staging(out, n=n, chunk_size=256, n_classes=10, proba=False)
    score_archive_chunk(ChunkTask(0, 0, n, pack(entries)), out_path=str(out), model=loaded.model,
                        proba=False, container="unused", kind="tar", limit=1 << 20, labels=labels)
    st = zarr.open_group(str(out), mode="r")["_staging"]
    valid = st["valid"][:].astype(bool)
    assert valid.tolist() == [True, True, False, True, False, True, False]
    rec = json.loads(commit_path(out, 0).read_text())
    reasons = {k: r.split(":")[0] for k, r in rec["rejects"]}
    assert reasons == {"link.png": "link", entries[4].key: "bad-label", "junk.png": "decode-error"}
    assert rec["n"] == 4 and rec["n_rejected"] == 3
    ok = [0, 1, 3, 5]  # the slots of members 0, 1, 2 and 4
    np.testing.assert_array_equal(st["pred"][:][ok], loaded.model.predict(x[[0, 1, 2, 4]]))
    assert np.all(st["pred"][:][[2, 4, 6]] == -1)
    assert list(st["keys"][:]) == [e.key for e in entries]
    assert st["labels"][:][ok].tolist() == [int(y[0]), int(y[1]), int(y[2]), int(y[4])]
