"""Batching store chunks into Dask tasks (digitbatch.scoring.tasks)."""

from __future__ import annotations

import pytest

from digitbatch.scoring import tasks as score_tasks
from digitbatch.scoring.tasks import ChunkTask, batches, run_batch


def _tasks(n, c=256):
    return [ChunkTask(i, i * c, (i + 1) * c) for i in range(n)]


@pytest.mark.parametrize("n, workers, size", [
    (0, 2, 1), (1, 2, 1), (15, 2, 1), (16, 2, 1), (32, 2, 2), (123, 2, 4), (123, 100, 1),
    (1000, 2, 4), (48, 3, 2),
])
def test_batches_cover_every_task_once_in_order(n, workers, size):
    todo = _tasks(n)
    got = batches(todo, workers)
    assert [t for b in got for t in b] == todo
    assert all(len(b) == size for b in got[:-1]) and all(0 < len(b) <= size for b in got)
    # enough batches to keep every worker busy to the end, where there are enough chunks
    assert len(got) >= min(n, score_tasks.MIN_BATCHES_PER_WORKER * workers)


def test_batches_off_and_resumed_todo():
    todo = [t for t in _tasks(200) if t.index % 3]  # a resumed run: some chunks committed
    assert batches(todo, 2, batch=False) == [[t] for t in todo]
    assert [t for b in batches(todo, 2) for t in b] == todo
    assert batches(todo, 0)  # a cluster that reports no workers yet: still batches


def test_run_batch_runs_each_task_in_order():
    seen = []
    assert run_batch(_tasks(3), lambda t, k: seen.append((t.index, k)) or t.index, k="x") == [0, 1, 2]
    assert seen == [(0, "x"), (1, "x"), (2, "x")]


def test_a_task_counts_its_rows_and_keeps_its_entries_out_of_its_repr():
    t = ChunkTask(3, 768, 1000, b"x" * 10_000)
    assert t.n_images == 232 and score_tasks.images_of([t, ChunkTask(0, 0, 256)]) == 488
    assert "xxxx" not in repr(t)


@pytest.mark.parametrize("n, want", [(0, 0), (1, 1), (20, 20), (21, 2)])
def test_listed_keys_are_all_or_first_and_last(n, want):
    keys = [f"k{i}" for i in range(n)]
    got = score_tasks.listed(keys)
    assert len(got) == want
    if n > score_tasks.MAX_KEYS_LISTED:
        assert got == [keys[0], keys[-1]]
