"""digitbatch.sources.jitload: when kernels load, once, and what a failure does."""

from __future__ import annotations

import logging

import pytest

from digitbatch.sources import jitload

pytestmark = pytest.mark.skipif(not jitload.installed(), reason="numba is not installed")


@pytest.fixture(autouse=True)
def _jit_on(monkeypatch):
    monkeypatch.delenv("DIGITBATCH_NO_JIT", raising=False)


def test_loads_once_after_the_threshold():
    calls = []
    loader = jitload.KernelLoader("test kernels", lambda: calls.append(1))
    assert not loader.ready(3, 10) and not loader.threads  # 3 of 10 asked: not yet
    assert not loader.ready(6, 10) and not loader.threads  # 9 of 10
    loader.ready(1, 10)  # 10: the loader starts (on its own thread)
    assert len(loader.threads) == 1
    loader.threads[0].join()
    assert loader.ready(1, 10) and calls == [1]
    loader.wait()
    assert calls == [1] and len(loader.threads) == 1  # never loaded twice


def test_start_and_wait_load_at_once():
    calls = []
    loader = jitload.KernelLoader("test kernels", lambda: calls.append(1))
    loader.wait()
    assert loader.ready(0, 10**9) and calls == [1]


def test_a_failed_load_is_logged_and_never_retried(caplog):
    calls = []

    def broken():
        calls.append(1)
        raise ImportError("no such kernel")

    loader = jitload.KernelLoader("test kernels", broken)
    with caplog.at_level(logging.WARNING, logger="digitbatch.sources.jitload"):
        with pytest.raises(RuntimeError, match="test kernels could not be loaded"):
            loader.wait()
    assert "test kernels could not be loaded; using numpy" in caplog.text
    assert not loader.ready(100, 1) and calls == [1]  # the numpy path serves; no retry
    with pytest.raises(RuntimeError):
        loader.wait()
    assert calls == [1]


def test_switched_off(monkeypatch):
    monkeypatch.setenv("DIGITBATCH_NO_JIT", "1")
    calls = []
    loader = jitload.KernelLoader("test kernels", lambda: calls.append(1))
    assert not jitload.available()
    assert not loader.ready(10**6, 1, start=True) and not loader.threads and calls == []



def test_compile_in_compiles_the_named_kernels_callees_first(tmp_path, monkeypatch):
    import importlib

    import numba

    # a module whose kernels call each other through its globals (numba caches
    # a kernel beside its source file: this one is in tmp_path)
    (tmp_path / "toykernels.py").write_text(
        "def _twice(x):\n    return 2 * x\n\n\n"
        "def _twice_plus_one(x):\n    return _twice(x) + 1\n\n\nOTHER = len\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    toy = importlib.import_module("toykernels")
    jitload.compile_in(vars(toy), ("_twice", "_twice_plus_one"))
    assert isinstance(toy._twice, numba.core.dispatcher.Dispatcher)
    assert isinstance(toy._twice_plus_one, numba.core.dispatcher.Dispatcher)
    assert toy.OTHER is len  # (only the named ones)
    assert toy._twice_plus_one(20) == 41


def test_the_kernel_modules_load_compiled_kernels():
    import numba

    from digitbatch.sources import fitjit, jpegvouch, pngvouch

    for module in (fitjit, jpegvouch, pngvouch):
        module.load()
        for name in module._KERNELS:
            assert isinstance(getattr(module, name), numba.core.dispatcher.Dispatcher), name
