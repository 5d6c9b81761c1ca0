"""digitbatch.bench's shared pieces (the benches themselves run in make bench / test-long)."""

from __future__ import annotations

import pytest

from digitbatch.bench import scratch


def test_scratch_removes_only_the_folder_it_made(tmp_path):
    with scratch(None, "digitbatch-test-scratch-") as work:
        (work / "f").write_text("x")
        made = work
    assert not made.exists()
    given = tmp_path / "w" / "bench"
    with pytest.raises(RuntimeError), scratch(given) as work:
        assert work == given and work.is_dir()
        (work / "model").write_text("reused next run")
        raise RuntimeError("a bench that fails")
    assert (given / "model").read_text() == "reused next run"


def test_archive_bench_keeps_the_fastest_run_and_the_highest_peak():
    from digitbatch.bench.archive import Run, best_of

    runs = [Run(10, 3.0, 1.5, 500, 0.9), Run(10, 2.0, 1.8, 400, 0.9), Run(10, 2.5, 1.2, 600, 0.9)]
    best = best_of(runs)
    assert (best.seconds, best.first_chunk, best.peak_rss) == (2.0, 1.2, 600)


@pytest.mark.parametrize("sizes", ["70000", "5,3", "0,10", "a,b"])
def test_archive_bench_refuses_sizes_that_are_not_small_then_big(sizes):
    from click.testing import CliRunner

    from digitbatch.cli import main

    r = CliRunner().invoke(main, ["bench", "archive", "--png-sizes", sizes])
    assert r.exit_code == 2 and "--png-sizes" in r.output and repr(sizes) in r.output


def test_archive_bench_keeps_the_least_cpu_of_the_runs():
    from digitbatch.bench.archive import Run, best_of

    runs = [Run(10, 3.0, 1.5, 500, 0.9, 4.0), Run(10, 2.0, 1.8, 400, 0.9, 5.0),
            Run(10, 2.5, 1.2, 600, 0.9, 4.5)]
    assert best_of(runs).cpu == 4.0


def test_machine_busy_counts_the_cpu_of_other_processes():
    import subprocess
    import sys

    from digitbatch.bench import machine_busy

    before = machine_busy()
    # (a CPU-bound child: about 0.2-0.5 s of CPU on these machines; no clock involved)
    subprocess.run([sys.executable, "-c", "x = 0\nfor i in range(4_000_000):\n    x += i"],
                   check=True)
    assert machine_busy() - before >= 0.1
