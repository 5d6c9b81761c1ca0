"""Object storage: stores, archives, models and outputs at s3:// URLs.

Against moto's S3 server (tests/s3server.py): the same results as local
paths, the same exactly-once guarantees (conditional PUT for the lock,
one PUT per commit record), and missing chunks are errors, never fills.
"""

from __future__ import annotations

import numpy as np
import pytest

from digitbatch import storage
from digitbatch.errors import SourceNotFoundError, StoreError, StoreExistsError
from digitbatch.ingestion import ingest
from digitbatch.layout import open_store

from .s3server import s3_server
from .test_ingest import digit_members, make_tar, png_bytes

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def bucket():
    with s3_server() as url:
        yield url


def test_local_paths_stay_pathlib(tmp_path):
    assert type(storage.to_path(str(tmp_path))) is type(tmp_path)
    assert storage.to_path(f"file://{tmp_path}") == tmp_path
    assert not storage.is_url("relative/dir") and not storage.is_url("C:/x")
    assert storage.is_url("s3://b/k") and storage.is_url("gs://b/k")
    assert str(storage.to_path("s3://b/k/")) == "s3://b/k"


def test_primitives_on_s3(bucket):
    p = storage.to_path(f"{bucket}/prims")
    storage.write_atomic(p / "a.json", '{"x": 1}')
    assert (p / "a.json").read_text() == '{"x": 1}'
    storage.create_exclusive(p / ".lock", "me")
    with pytest.raises(FileExistsError):
        storage.create_exclusive(p / ".lock", "you")
    assert (p / ".lock").read_text() == "me"
    assert sorted(storage.listdir(p)) == [".lock", "a.json"]
    # a listing is never served from a cache: a file written by another
    # process (another filesystem instance) shows up at once
    import s3fs

    other = s3fs.S3FileSystem(skip_instance_cache=True)
    other.pipe_file(f"{p.path}/b.json", b"{}")
    assert "b.json" in storage.listdir(p)
    storage.rmtree(p)
    assert storage.listdir(p) == []


def _archive(tmp_path):
    members, x, _ = digit_members(700, seed=5)
    members["bad/broken.png"] = png_bytes(x[0])[:30]
    members["notes.txt"] = b"not an image"
    return make_tar(tmp_path / "digits.tar.gz", members)


def _upload(local, url):
    p = storage.to_path(url)
    p.fs.put_file(str(local), p.path)


def test_ingest_an_archive_in_a_bucket_into_a_bucket(bucket, tmp_path):
    src = _archive(tmp_path)
    _upload(src, f"{bucket}/in/digits.tar.gz")
    local = ingest(src, tmp_path / "local.zarr", chunk_size=256, scheduler="synchronous")
    url = f"{bucket}/stores/s.zarr"
    remote = ingest(f"{bucket}/in/digits.tar.gz", url, chunk_size=256, scheduler="local")
    assert remote.path == url
    assert (remote.n_images, remote.n_rejects, remote.checksum) == \
        (local.n_images, local.n_rejects, local.checksum)
    s, ls = open_store(url), open_store(tmp_path / "local.zarr")
    assert s.meta["source"]["path"] == f"{bucket}/in/digits.tar.gz"
    np.testing.assert_array_equal(s.images[:], ls.images[:])
    np.testing.assert_array_equal(s.keys[:], ls.keys[:])
    assert s.rejects() == ls.rejects()
    # an existing store is refused, and replaced with overwrite
    with pytest.raises(StoreExistsError):
        ingest(f"{bucket}/in/digits.tar.gz", url, chunk_size=256, scheduler="synchronous")
    again = ingest(f"{bucket}/in/digits.tar.gz", url, chunk_size=256, overwrite=True,
                   scheduler="synchronous")
    assert again.checksum == local.checksum and open_store(url).n == local.n_images
    with pytest.raises(SourceNotFoundError):
        ingest(f"{bucket}/in/nothing.tar.gz", f"{bucket}/stores/n.zarr")


def test_ingest_a_folder_prefix_in_a_bucket(bucket, tmp_path):
    members, _, labels = digit_members(300, seed=6)
    fs = storage.to_path(bucket).fs
    for name, data in members.items():
        fs.pipe_file(f"{bucket[5:]}/folder/{name}", data)
    root = tmp_path / "folder"
    for name, data in members.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    a = ingest(f"{bucket}/folder", tmp_path / "a.zarr", chunk_size=256, scheduler="synchronous")
    b = ingest(root, tmp_path / "b.zarr", chunk_size=256, scheduler="synchronous")
    assert a.checksum == b.checksum and a.n_images == 300


def test_a_remote_store_with_a_missing_or_corrupt_chunk_is_an_error(bucket, tmp_path):
    from digitbatch.layout import read_rows

    src = _archive(tmp_path)
    url = f"{bucket}/stores/damaged.zarr"
    ingest(src, url, chunk_size=256, scheduler="synchronous")
    s = open_store(url)
    fs = storage.to_path(url).fs
    fs.rm(f"{url[5:]}/images/c/1/0/0")
    with pytest.raises(StoreError, match="chunk 1 .* missing"):
        read_rows(s.images, 1)
    fs.rm(f"{url[5:]}/keys/c/2")
    with pytest.raises(StoreError, match="chunk 2 .* missing"):
        read_rows(s.keys, 2)
    fs.pipe_file(f"{url[5:]}/images/c/0/0/0", b"garbage")
    with pytest.raises(StoreError, match="chunk 0 .* corrupt"):
        read_rows(s.images, 0)


def test_an_interrupted_remote_store_does_not_open(bucket, tmp_path):
    from digitbatch.layout import StoreWriter

    url = f"{bucket}/stores/partial.zarr"
    w = StoreWriter(url, source={"kind": "test"}, chunk_size=256)
    w.append(np.zeros((300, 28, 28), np.uint8), np.zeros(300, np.int8),
             [f"k{i}" for i in range(300)])
    # one whole chunk is written in place, the rest never (a killed ingest)
    with pytest.raises(StoreError, match="not a digitbatch store|incomplete"):
        open_store(url)
    w.abort()
    assert not storage.to_path(url).exists()


def _remote_arrays(url):
    g = storage.open_group(url, mode="r")
    return {n: g[n][:] for n in ("pred", "margin", "proba", "keys") if n in g}


def test_train_and_score_in_a_bucket_resume_exactly_once(bucket, tmp_path):
    """Store, model and output all in the bucket; a run killed after some chunks
    resumes on a LocalCluster (worker processes reach S3 themselves) to the
    same bytes as a local run."""
    from digitbatch.errors import OutputLockedError
    from digitbatch.scoring.api import score
    from digitbatch.scoring.chunks import score_store_chunk
    from digitbatch.scoring.lock import run_lock
    from digitbatch.scoring.output import OutputSpec, create_output
    from digitbatch.scoring.tasks import ChunkTask
    from digitbatch.modelio import load_model
    from digitbatch.training import train

    from .conftest import synthetic_digits, write_idx

    x, y = synthetic_digits(1500, seed=4)
    write_idx(tmp_path / "idx", x[:1200], y[:1200])
    write_idx(tmp_path / "idx", x[1200:], y[1200:], prefix="t10k")
    store = f"{bucket}/runs/s.zarr"
    ingest(tmp_path / "idx", store, chunk_size=256, scheduler="synchronous")
    model = f"{bucket}/runs/model"
    train(store, model, seed=0, scheduler="synchronous")
    assert load_model(model).path == storage.to_path(model)
    ref = score(store, model=model, out=tmp_path / "ref.zarr", proba=True,
                scheduler="synchronous")
    ref_pred = storage.open_group(str(tmp_path / "ref.zarr"))["pred"][:]

    # a run killed after committing chunks 0 and 3, with chunk 1 half written
    out = f"{bucket}/runs/pred.zarr"
    s, loaded = open_store(store), load_model(model)
    with run_lock(storage.to_path(out)):
        create_output(storage.to_path(out),
                      OutputSpec(s.n, s.chunk_size, 10, True, loaded.sha256, s.checksum))
        for i in (0, 3):
            a, b = s.chunks[i]
            score_store_chunk(ChunkTask(i, a, b), store_path=store, out_path=out, model=loaded.model,
                        proba=True)
        storage.open_group(out, mode="r+")["pred"][256:266] = 7
        with pytest.raises(OutputLockedError):  # the lock is a conditional PUT
            with run_lock(storage.to_path(out)):
                pass
    from digitbatch.errors import ScoreError

    with pytest.raises(ScoreError, match="--resume"):
        score(store, model=model, out=out, proba=True, scheduler="synchronous")
    r = score(store, model=model, out=out, proba=True, resume=True, scheduler="local")
    assert r.metrics["resumed"] is True
    assert r.metrics["n_scored_this_run"] == 1500 - 2 * 256
    assert r.metrics["confusion_matrix"] == ref.metrics["confusion_matrix"]
    got, want = _remote_arrays(out), _remote_arrays(str(tmp_path / "ref.zarr"))
    assert set(got) == set(want)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])
    names = storage.listdir(storage.to_path(out))
    assert "_SUCCESS" in names and ".lock" not in names
    assert not [n for n in names if ".tmp-" in n]
    from digitbatch.scoring.output import open_predictions

    assert open_predictions(out).metrics["n_images"] == 1500
    # the person-facing commands take the URLs too
    from click.testing import CliRunner

    from digitbatch.cli import main

    r = CliRunner().invoke(main, ["show", store, "--index", "3", "--out", str(tmp_path / "d.png")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "d.png").stat().st_size > 0
    (tmp_path / "one.png").write_bytes(png_bytes(x[1203]))
    r = CliRunner().invoke(main, ["predict", str(tmp_path / "one.png"), "--model", model, "--json"])
    assert r.exit_code == 0, r.output
    import json

    assert json.loads(r.output)[0]["digit"] == int(ref_pred[1203])


def test_a_job_spec_with_bucket_paths(bucket, tmp_path):
    from click.testing import CliRunner

    from digitbatch.cli import main

    from .conftest import synthetic_digits, write_idx

    x, y = synthetic_digits(800, seed=8)
    write_idx(tmp_path / "idx", x[:600], y[:600])
    write_idx(tmp_path / "idx", x[600:], y[600:], prefix="t10k")
    spec = tmp_path / "job.toml"
    spec.write_text(f"""
[job]
name = "bucket"
workdir = "{tmp_path / 'work'}"
[ingest]
source = "{tmp_path / 'idx'}"
out = "{bucket}/job/s.zarr"
[train]
out = "{bucket}/job/model"
[score]
out = "{bucket}/job/pred.zarr"
[report]
out = "{tmp_path / 'report'}"
""")
    r = CliRunner().invoke(main, ["run", str(spec), "--scheduler", "synchronous"])
    assert r.exit_code == 0, r.output
    assert storage.to_path(f"{bucket}/job/pred.zarr/_SUCCESS").exists()
    html = (tmp_path / "report" / "report.html").read_text()
    assert f"{bucket}/job/pred.zarr" in html and "confusion" in html.lower()
    # a missing input in the bucket is reported before any work starts
    spec.write_text(f"""
[job]
name = "missing"
workdir = "{tmp_path / 'work2'}"
[score]
input = "{bucket}/job/nothing.zarr"
model = "{bucket}/job/model"
""")
    r = CliRunner().invoke(main, ["run", str(spec), "--scheduler", "synchronous"])
    assert r.exit_code == 2 and "score.input" in r.output and "does not exist" in r.output


def test_score_an_archive_in_a_bucket_directly(bucket, tmp_path):
    """Archive and output in the bucket, on a LocalCluster: equal to the local
    run; resuming a complete output changes nothing."""
    from click.testing import CliRunner

    from digitbatch.cli import main
    from digitbatch.scoring.api import score
    from digitbatch.training import train

    from .conftest import synthetic_digits, write_idx

    x, y = synthetic_digits(900, seed=9)
    write_idx(tmp_path / "idx", x[:700], y[:700])
    write_idx(tmp_path / "idx", x[700:], y[700:], prefix="t10k")
    ingest(tmp_path / "idx", tmp_path / "s.zarr", scheduler="synchronous")
    train(tmp_path / "s.zarr", tmp_path / "model", seed=0, scheduler="synchronous")
    src = _archive(tmp_path)
    _upload(src, f"{bucket}/nightly/digits.tar.gz")
    ref = score(src, model=tmp_path / "model", out=tmp_path / "ref.zarr", chunk_size=256,
                scheduler="synchronous")
    out = f"{bucket}/nightly/pred.zarr"
    r = score(f"{bucket}/nightly/digits.tar.gz", model=tmp_path / "model", out=out,
              chunk_size=256, scheduler="local")
    assert r.metrics["input"]["path"] == f"{bucket}/nightly/digits.tar.gz"
    for k in ("confusion_matrix", "n_images", "n_rejected", "prediction_histogram"):
        assert r.metrics[k] == ref.metrics[k], k
    got, want = _remote_arrays(out), _remote_arrays(str(tmp_path / "ref.zarr"))
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])
    assert "_staging" not in storage.listdir(storage.to_path(out))
    again = score(f"{bucket}/nightly/digits.tar.gz", model=tmp_path / "model", out=out,
                  chunk_size=256, resume=True, scheduler="synchronous")
    assert again.metrics == r.metrics  # complete: read back, nothing rescored
    from digitbatch.report import write_report

    write_report(out, out=tmp_path / "report")  # galleries decode from the bucket's archive
    assert (tmp_path / "report" / "errors.png").stat().st_size > 0
    assert f"{bucket}/nightly/digits.tar.gz" in (tmp_path / "report" / "report.html").read_text()
    # the CLI refuses an existing output without --resume, naming the fix
    res = CliRunner().invoke(main, ["-q", "score", f"{bucket}/nightly/digits.tar.gz", "--model",
                                    str(tmp_path / "model"), "--out", out,
                                    "--scheduler", "synchronous"])
    assert res.exit_code == 1 and "--resume" in res.output


def test_the_lease_in_a_bucket(bucket):
    """The lease on object storage: taken with a conditional PUT, renewed by PUTs,
    aged by the lock's own timestamp; an expired foreign lease is taken over and
    the run it was taken from notices."""
    import datetime as dt
    import json
    import time

    from digitbatch.errors import LeaseLostError, OutputLockedError
    from digitbatch.scoring.lock import check_owner, run_lock

    out = storage.to_path(f"{bucket}/lease/pred.zarr")
    lock = out / ".lock"

    def held() -> dict:  # (a read the renewal overtakes may expire: read again)
        for _ in range(20):
            try:
                return json.loads(lock.read_text())
            except OSError:
                time.sleep(0.05)
        raise AssertionError("the lock could not be read")

    def foreign(age: float, ttl: float = 60.0) -> None:
        t = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=age)).isoformat()
        lock.write_text(json.dumps({"token": "e" * 32, "host": "node-b", "machine": "b",
                                    "pid": 1, "pid_start": 1.0, "started": t, "renewed": t,
                                    "ttl": ttl}))

    foreign(age=0)
    with pytest.raises(OutputLockedError, match="run eeeeeeee .* on node-b"):
        with run_lock(out, wait=False):
            pass
    foreign(age=300)  # expired by its own timestamp, whatever the object's mtime says
    with run_lock(out, ttl=1) as lease:
        first = held()
        assert first["token"] == lease.token
        deadline = time.monotonic() + 10
        while held()["renewed"] == first["renewed"]:
            assert time.monotonic() < deadline, "never renewed"
            time.sleep(0.05)
        foreign(age=0)  # taken over in turn
        with pytest.raises(LeaseLostError):
            check_owner(str(out), lease.token)
    assert held()["token"] == "e" * 32  # the new owner's, untouched
