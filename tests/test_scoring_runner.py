"""The scoring runner on a Dask cluster (digitbatch.scoring.runner): time limits and failed batches."""

from __future__ import annotations

import pytest

from digitbatch.scoring.api import score


def hang_on_chunk_3(task, **kw):
    """A store chunk function for worker processes: chunk 3 never ends (until its
    worker is restarted), the others are scored as usual."""
    import threading

    from digitbatch.scoring.chunks import score_store_chunk

    if task.index == 3:
        threading.Event().wait()
    return score_store_chunk(task, **kw)


@pytest.mark.timeout(180)
def test_batch_timed_out_reports_only_its_uncommitted_chunks(tmp_path, small_store, model_dir,
                                                             monkeypatch):
    """Chunks 2 and 3 share a Dask task; chunk 3 hangs past task_timeout: the error
    names chunk 3 only (chunk 2 was committed), chunk 3 is never committed after
    (its worker process was restarted), and --resume scores chunk 3."""
    from digitbatch.errors import ChunkTimeoutError
    from digitbatch.scoring import plan as plan_mod
    from digitbatch.scoring import tasks as score_tasks
    from digitbatch.scoring.output import committed

    monkeypatch.setattr(score_tasks, "MIN_BATCHES_PER_WORKER", 1)  # batches (0, 1), (2, 3)
    ref = score(small_store, model=model_dir, out=tmp_path / "ref.zarr", scheduler="synchronous")
    real = plan_mod.score_store_chunk
    monkeypatch.setattr(plan_mod, "score_store_chunk", hang_on_chunk_3)
    out = tmp_path / "p.zarr"
    with pytest.raises(ChunkTimeoutError) as err:
        score(small_store, model=model_dir, out=out, scheduler="local", task_timeout=0.5)
    assert err.value.chunks == [3], str(err.value)
    assert "per chunk for its batch of 2 chunks" in str(err.value)
    assert sorted(committed(out)) == [0, 1, 2]  # what is reported failed is not committed
    monkeypatch.setattr(plan_mod, "score_store_chunk", real)
    r = score(small_store, model=model_dir, out=out, resume=True, scheduler="synchronous")
    assert r.metrics["n_scored_this_run"] == 1000 - 3 * 256
    assert sorted(committed(out)) == [0, 1, 2, 3]
    assert r.metrics["confusion_matrix"] == ref.metrics["confusion_matrix"]


def test_inline_runner_runs_every_task_in_order_and_counts_progress():
    import dataclasses

    from digitbatch.scoring.runner import run
    from digitbatch.scoring.tasks import ChunkTask, Work

    seen, progress = [], []

    def fn(task, *, tag, model):
        seen.append((task.index, tag, model))
        return task.index

    todo = [ChunkTask(0, 0, 256), ChunkTask(2, 512, 700)]
    work = Work(fn=fn, kwargs={"tag": "t"}, broadcast={"model": "M"}, describe=lambda t: [])
    run(todo, work, scheduler="synchronous", progress=lambda n, **kw: progress.append(n))
    assert seen == [(0, "t", "M"), (2, "t", "M")]
    assert progress == [256, 188]
    run([], work, scheduler="synchronous")  # nothing to do: no executor is even made
    assert len(seen) == 2
    # each task filled just before it runs
    filled = dataclasses.replace(work, fn=lambda task, **kw: seen.append(task.packed),
                                 fill=lambda t: seen.append(("fill", t.index))
                                 or dataclasses.replace(t, packed=b"%d" % t.index))
    seen.clear()
    run(todo, filled, scheduler="synchronous")
    assert seen == [("fill", 0), b"0", ("fill", 2), b"2"]


def note_start(task, *, path, model):
    """A chunk function for worker processes: notes which chunk it starts, in order."""
    with open(path, "a") as f:
        f.write(f"{task.index}\n")
    return task.index


@pytest.mark.timeout(120)
def test_chunks_start_in_chunk_order_on_a_cluster(tmp_path):
    """On one single-threaded worker, the chunks run in their order (the first
    chunk commits first), not in the order of their tasks' random keys."""
    from digitbatch import cluster
    from digitbatch.scoring.runner import run
    from digitbatch.scoring.tasks import ChunkTask, Work

    path = tmp_path / "order.txt"
    todo = [ChunkTask(i, i * 10, i * 10 + 10) for i in range(12)]
    work = Work(fn=note_start, kwargs={"path": str(path)}, broadcast={"model": "M"},
                describe=lambda t: [], processes=True, batch=False)
    with cluster.client("local", n_workers=1) as c:
        run(todo, work, scheduler=c.scheduler.address)
    assert [int(x) for x in path.read_text().split()] == list(range(12))


def note_model_holders(task, *, path, model):
    """A chunk function: notes how many workers hold the model as the chunk starts."""
    from distributed import get_client

    holders = [w for k, w in get_client().who_has().items() if "digitbatch-model-" in k]
    with open(path, "w") as f:
        f.write(str(len(holders[0])))
    return task.index


@pytest.mark.timeout(120)
def test_the_model_is_on_every_worker_before_the_first_chunk(tmp_path):
    """One chunk on three workers: all three hold the model when it starts (a worker
    busy with its first chunk would otherwise be asked for it by its peers)."""
    from digitbatch import cluster
    from digitbatch.scoring.runner import run
    from digitbatch.scoring.tasks import ChunkTask, Work

    path = tmp_path / "holders.txt"
    work = Work(fn=note_model_holders, kwargs={"path": str(path)}, broadcast={"model": "M"},
                describe=lambda t: [], processes=True, batch=False)
    with cluster.client("local", n_workers=3) as c:
        run([ChunkTask(0, 0, 10)], work, scheduler=c.scheduler.address)
    assert path.read_text() == "3"


@pytest.mark.timeout(120)
def test_the_first_chunk_runs_before_the_last_task_is_filled(tmp_path):
    """Tasks are filled (an archive's entries packed) as they are submitted:
    the first chunk starts on a worker while the last is still being filled."""
    import dataclasses
    import time

    from digitbatch import cluster
    from digitbatch.scoring.runner import run
    from digitbatch.scoring.tasks import ChunkTask, Work

    path = tmp_path / "order.txt"
    started_first: list[bool] = []

    def first_started():
        return path.exists() and path.read_text().startswith("0:")

    def fill(task):
        if task.index == 5:  # the last: wait (bounded) until a worker has started chunk 0
            for _ in range(600):
                if first_started():
                    break
                time.sleep(0.05)
            started_first.append(first_started())
        return dataclasses.replace(task, packed=b"p%d" % task.index)

    todo = [ChunkTask(i, i * 10, i * 10 + 10) for i in range(6)]
    work = Work(fn=note_filled, kwargs={"path": str(path)}, broadcast={"model": "M"},
                describe=lambda t: [], processes=True, batch=False, fill=fill)
    with cluster.client("local", n_workers=1) as c:
        run(todo, work, scheduler=c.scheduler.address)
    assert started_first == [True]
    assert path.read_text().split() == [f"{i}:p{i}" for i in range(6)]  # each ran filled


def note_filled(task, *, path, model):
    """A chunk function: notes the chunk it starts and what it was filled with."""
    with open(path, "a") as f:
        f.write(f"{task.index}:{task.packed.decode()}\n")
    return task.index
