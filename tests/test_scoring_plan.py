"""The scoring plan (digitbatch.scoring.plan): store chunks or archive slot chunks, typed."""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import tarfile
import time

import numpy as np
import pytest
from PIL import Image

from digitbatch.errors import ScoreError
from digitbatch.layout import open_store
from digitbatch.modelio import load_model
from digitbatch.scoring.chunks import decoding, score_archive_chunk, score_store_chunk
from digitbatch.scoring.plan import make_plan
from digitbatch.scoring.tasks import ChunkTask
from digitbatch.sources.base import MemberRef, Reject
from digitbatch.sources.listing import unpack

from .conftest import synthetic_digits


def _plan(source, model, **kw):
    args = {"out_path": "unused", "proba": False, "labels": None, "chunk_size": 256,
            "limit": 1 << 24, "stack": contextlib.ExitStack()}
    return make_plan(source, model, **{**args, **kw})


def _tar(tmp_path, n: int, bad: tuple[int, ...] = ()) -> str:
    x, y = synthetic_digits(n, seed=2)
    p = tmp_path / "a.tar"
    with tarfile.open(p, "w") as tf:
        for i in range(n):
            buf = io.BytesIO()
            Image.fromarray(x[i]).save(buf, format="PNG")
            info = tarfile.TarInfo(f"{y[i]}/{i:04d}.png")
            if i in bad:  # a link: refused from its header alone
                info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
                tf.addfile(info)
                continue
            data = buf.getvalue()
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return str(p)


@pytest.mark.parametrize("name", ["1-chunk-short", "4-chunks-ragged", "5-chunks-full"])
def test_store_plan_has_a_task_per_chunk_and_skips_the_done(shaped_stores, shared_model, name):
    s = open_store(shaped_stores[name])
    m = load_model(shared_model).model
    plan = _plan(shaped_stores[name], m, out_path="/out")
    assert plan.n == s.n and plan.n_chunks == len(s.chunks) and not plan.archive
    assert plan.checksum == s.checksum and plan.input["kind"] == "store"
    assert [(t.index, t.start, t.stop) for t in plan.tasks(set())] == [
        (i, a, b) for i, (a, b) in enumerate(s.chunks)]
    assert [t.index for t in plan.tasks({0})] == list(range(1, len(s.chunks)))
    w = plan.work
    assert w.fn is score_store_chunk and w.batch and not w.processes
    assert w.kwargs["out_path"] == "/out" and w.broadcast == {"model": m}
    last = plan.tasks(set())[-1]
    keys = w.describe(last)
    assert keys[-1] == str(s.keys[last.stop - 1])  # the ragged last chunk's last key


def test_store_plan_refuses_labels(small_store, shared_model):
    with pytest.raises(ScoreError, match="--labels applies to archives"):
        _plan(small_store, load_model(shared_model).model, labels="x.csv")


def test_archive_plan_packs_each_slot_chunk(tmp_path, shared_model):
    src = _tar(tmp_path, 600, bad=(5, 300))
    m = load_model(shared_model).model
    plan = _plan(tmp_path / "a.tar", m)
    assert plan.archive and plan.n == 600 and plan.n_chunks == 3  # 256, 256, 88 slots
    assert plan.checksum.startswith("archive-sha256:") and plan.input["n_members"] == 600
    tasks = plan.tasks({1})
    assert [(t.index, t.start, t.stop) for t in tasks] == [(0, 0, 256), (2, 512, 600)]
    assert all(t.packed is None for t in tasks)  # packed as each is submitted
    entries = unpack(plan.work.fill(tasks[0]).packed)
    assert len(entries) == 256 and isinstance(entries[5], Reject)
    assert all(isinstance(e, MemberRef) for i, e in enumerate(entries) if i != 5)
    assert [e.key for e in entries] == [e.key for e in plan.listing.entries[:256]]
    w = plan.work
    assert w.fn is score_archive_chunk and w.processes and not w.batch
    assert w.stuck_on is decoding and w.kwargs["container"] == src
    assert w.describe(ChunkTask(2, 512, 600)) == [plan.listing.entries[512].key,
                                                 plan.listing.entries[599].key]


def test_archive_plan_prepares_staging(tmp_path, shared_model):
    import zarr

    _tar(tmp_path, 300)
    out = tmp_path / "o.zarr"
    zarr.open_group(str(out), mode="w")
    plan = _plan(tmp_path / "a.tar", load_model(shared_model).model, proba=True)
    plan.prepare(out)
    st = zarr.open_group(str(out), mode="r")["_staging"]
    assert st["valid"].shape == (300,) and st["proba"].shape == (300, 10)
    assert np.all(st["valid"][:] == 0)


def test_not_a_store_nor_an_archive(tmp_path, shared_model):
    p = tmp_path / "notes.txt"
    p.write_text("hello")
    with pytest.raises(ScoreError, match="neither a digitbatch store nor an image"):
        _plan(p, load_model(shared_model).model)


@pytest.mark.parametrize("n,chunk_size,slot", [
    (100, 32_768, 1024),     # small archive: MIN_SLOT (a task per worker at least)
    (20_000, 32_768, 1250),  # ~ARCHIVE_TASKS tasks
    (210_000, 32_768, 8192),  # MAX_SLOT
    (20_000, 256, 256),      # never more than chunk_size
])
def test_archive_slot_size(n, chunk_size, slot):
    from digitbatch.scoring.plan import ARCHIVE_TASKS, slot_size

    assert slot_size(n, chunk_size) == slot
    assert -(-n // slot) <= max(ARCHIVE_TASKS, -(-n // 8192)) or slot == chunk_size


def test_archive_slot_chunks_smaller_than_output_chunks(tmp_path, shared_model):
    """Slots of 1,024 members (the first of 512) for 2,500 members and the default 32,768-row output
    chunks: 3 tasks; the spec records the slot size, so an output cut into
    other slots (as before slots could be smaller) is not resumed."""
    from digitbatch.scoring.api import score
    from digitbatch.scoring.output import OutputSpec, check_resume

    model = load_model(shared_model).model
    src = tmp_path / "a.tar"
    _tar(tmp_path, 2500)
    plan = _plan(src, model, chunk_size=32_768)
    assert plan.slot_size == 1024 and plan.chunk_size == 32_768 and plan.first_slot == 512
    assert [(t.start, t.stop) for t in plan.tasks(set())] == [(0, 512), (512, 1536),
                                                              (1536, 2500)]
    out = tmp_path / "out.zarr"
    r = score(src, model=shared_model, out=out, scheduler="synchronous")
    assert r.metrics["n_images"] == 2500
    spec = OutputSpec(2500, 32_768, 10, False, load_model(shared_model).sha256, plan.checksum)
    with pytest.raises(ScoreError, match="slot_size"):
        check_resume(out, spec)


@pytest.mark.parametrize("n,slot,first,want", [
    (600, 256, 100, ([(0, 100), (100, 356), (356, 600)], 156, 100)),  # ragged last slot
    (357, 256, 100, ([(0, 100), (100, 356), (356, 357)], 156, 100)),  # a one-member last slot
    (101, 256, 100, ([(0, 100), (100, 101)], 156, 100)),
    (100, 256, 100, ([(0, 100)], 0, None)),  # no more than the first slot: one task
    (600, 256, 256, ([(0, 256), (256, 512), (512, 600)], 0, None)),  # first == slot
    (600, 64, 100, ([(0, 64), (64, 128), (128, 192), (192, 256), (256, 320), (320, 384),
                     (384, 448), (448, 512), (512, 576), (576, 600)], 0, None)),  # slot < first
])
def test_archive_slot_layout(monkeypatch, n, slot, first, want):
    """A small first task, then whole slots; every later task fills exactly one
    staging chunk and the first the end of chunk 0, so no two tasks share a chunk."""
    from digitbatch.scoring import plan as P

    monkeypatch.setattr(P, "FIRST_SLOT", first)
    bounds, offset, first_slot = P.slot_layout(n, slot)
    assert (bounds, offset, first_slot) == want
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(b == c for (_, b), (c, _) in itertools.pairwise(bounds))  # contiguous
    chunks = [{(m + offset) // slot for m in range(a, b)} for a, b in bounds]
    assert all(len(c) == 1 for c in chunks) and len(set().union(*chunks)) == len(bounds)


def test_archive_plan_with_a_small_first_slot(tmp_path, shared_model, monkeypatch):
    """Scored with a first slot of 100 members (and whole slots of 256 after it),
    an archive gives the same rows, keys, labels, rejects and counts as cut into
    equal slots; the spec records the first slot, so neither layout resumes the other."""
    import zarr

    from digitbatch.scoring import plan as P
    from digitbatch.scoring.api import score
    from digitbatch.scoring.output import OutputSpec, check_resume, create_output

    src = tmp_path / "a.tar"
    _tar(tmp_path, 600, bad=(5, 99, 100, 355, 356, 599))  # at both ends of the first slot
    plan = _plan(src, load_model(shared_model).model)
    assert plan.first_slot is None  # FIRST_SLOT (512) is over a whole slot of 256: no first slot
    monkeypatch.setattr(P, "FIRST_SLOT", 100)
    plan = _plan(src, load_model(shared_model).model)
    assert plan.first_slot == 100 and plan.work.kwargs["offset"] == 156
    tasks = plan.tasks(set())
    assert [(t.start, t.stop) for t in tasks] == [(0, 100), (100, 356), (356, 600)]
    # each task writes staging chunks no other task writes (tasks run at once)
    out = tmp_path / "staged.zarr"
    out.mkdir()
    create_output(out, OutputSpec(n=600, chunk_size=256, n_classes=10, proba=False, model_sha256="-",
                                  input_checksum=plan.checksum, first_slot=100), arrays=False)
    plan.prepare(out)
    w = plan.work
    written = []

    def files():
        return {(p.name, p.stat().st_ino, p.stat().st_mtime_ns)
                for p in (out / "_staging" / "valid" / "c").glob("*")}

    for t in tasks:
        before = files()
        time.sleep(0.01)  # (so that a rewritten file's mtime differs)
        w.fn(w.fill(t), **{**w.kwargs, "out_path": str(out)}, **w.broadcast)
        written.append({name for name, *_ in files() - before})
    assert written == [{"0"}, {"1"}, {"2"}]
    outs = {}
    for first in (100, 256):
        monkeypatch.setattr(P, "FIRST_SLOT", first)
        outs[first] = out = tmp_path / f"out{first}.zarr"
        r = score(src, model=shared_model, out=out, scheduler="synchronous", chunk_size=256)
        assert r.metrics["n_images"] == 594 and r.metrics["n_rejected"] == 6
    a, b = (zarr.open_group(str(outs[f]), mode="r") for f in (100, 256))
    for name in ("pred", "margin", "keys", "labels", "gap", "second"):
        np.testing.assert_array_equal(a[name][:], b[name][:])
    assert a["keys"].shape == (594,) and "_staging" not in a
    ma, mb = (json.loads((outs[f] / "metrics.json").read_text()) for f in (100, 256))
    for k in ("confusion_matrix", "rejects", "n_images", "accuracy", "per_class", "calibration",
              "prediction_histogram", "drift"):
        assert ma[k] == mb[k], k
    sha = load_model(shared_model).sha256
    base = {"n": 600, "chunk_size": 256, "n_classes": 10, "proba": False, "model_sha256": sha,
            "input_checksum": plan.checksum}
    with pytest.raises(ScoreError, match="first_slot: output has 100, this run None"):
        check_resume(outs[100], OutputSpec(**base))
    with pytest.raises(ScoreError, match="first_slot: output has None, this run 100"):
        check_resume(outs[256], OutputSpec(**base, first_slot=100))
    check_resume(outs[100], OutputSpec(**base, first_slot=100))


def test_first_slot_never_waits_for_the_compiled_kernels():
    """The first task's scans alone never start the kernels' loading in its worker."""
    from digitbatch.scoring.plan import FIRST_SLOT, MIN_SLOT
    from digitbatch.sources.fitjit import LOAD_AFTER

    assert FIRST_SLOT < LOAD_AFTER and FIRST_SLOT <= MIN_SLOT
