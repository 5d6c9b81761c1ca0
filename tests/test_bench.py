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
    with pytest.raises(RuntimeError):
        with scratch(given) as work:
            assert work == given and work.is_dir()
            (work / "model").write_text("reused next run")
            raise RuntimeError("a bench that fails")
    assert (given / "model").read_text() == "reused next run"
