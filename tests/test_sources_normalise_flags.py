"""digitbatch.sources.normalise.normalise_flagged, and the flags taskdecode gives.

The per-image flags (inverted, resized) are computed with the batch from
the frames normalisation reads anyway; here they must equal
:func:`~digitbatch.sources.normalise.polarity_and_size` image by image, on
the corpus of tests/test_sources_normalise.py (all sizes, both polarities,
blank and tiny images), in the numpy path and in the compiled one, and
``taskdecode.decode_members`` must give them for every decoded image
(never for a reject), whatever its blocks.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from digitbatch.sources import fitjit, taskdecode
from digitbatch.sources import normalise as N
from digitbatch.sources.members import Member

from .test_sources_normalise import _file_corpus, _grey_corpus, _stroke_digit


def _shuffled_corpus(seed: int) -> list[np.ndarray]:
    greys = _grey_corpus(seed=seed)
    rng = np.random.default_rng(seed)
    greys += [_stroke_digit(rng, 28, 28, dark_on_light=bool(i % 3 == 0)) for i in range(23)]
    return [greys[i] for i in rng.permutation(len(greys))]


def _check_flags(greys: list[np.ndarray]) -> None:
    got, flags = N.normalise_flagged(greys)
    assert flags.shape == (len(greys), 2) and flags.dtype == bool
    want = [N.polarity_and_size(g) for g in greys]
    bad = [i for i, g in enumerate(greys) if tuple(flags[i].tolist()) != want[i]]
    assert not bad, [(greys[i].shape, flags[i].tolist(), want[i]) for i in bad]
    assert np.array_equal(got, N.normalise(greys))


def test_flags_equal_polarity_and_size_numpy_path(monkeypatch):
    monkeypatch.setenv("DIGITBATCH_NO_JIT", "1")
    _check_flags(_shuffled_corpus(21))


@pytest.mark.skipif(not fitjit.installed(), reason="numba is not installed")
def test_flags_equal_polarity_and_size_compiled_path(monkeypatch):
    monkeypatch.delenv("DIGITBATCH_NO_JIT", raising=False)
    fitjit.load()
    _check_flags(_shuffled_corpus(22))


def test_flags_with_small_fit_parts(monkeypatch):
    """Groups split into parts (FIT_PIXELS) keep flags and digits in place."""
    greys = _shuffled_corpus(23)
    whole, flags = N.normalise_flagged(greys)
    monkeypatch.setattr(N, "FIT_PIXELS", 3 * 28 * 28)
    monkeypatch.setattr(N, "STACK_PIXELS", 5 * 28 * 28)
    got, got_flags = N.normalise_flagged(greys)
    assert np.array_equal(got, whole) and np.array_equal(got_flags, flags)


def test_28x28_group_does_not_touch_its_input():
    rng = np.random.default_rng(3)
    greys = [_stroke_digit(rng, 28, 28, dark_on_light=bool(i % 2)) for i in range(5)]
    before = [g.copy() for g in greys]
    out, flags = N.normalise_flagged(greys)
    assert all(np.array_equal(a, b) for a, b in zip(greys, before))
    assert flags[:, 0].tolist() == [False, True, False, True, False] and not flags[:, 1].any()
    for g, o, inv in zip(greys, out, flags[:, 0]):
        assert np.array_equal(o, 255 - g if inv else g)
    one, one_flags = N.normalise_flagged([greys[1]])  # one image: the view path
    assert np.array_equal(one[0], 255 - greys[1]) and np.array_equal(greys[1], before[1])
    assert one_flags.tolist() == [[True, False]]


def test_28x28_non_contiguous_input():
    rng = np.random.default_rng(4)
    base = _stroke_digit(rng, 56, 56, dark_on_light=True)
    view = base[::2, ::2]  # a 28x28 strided view
    assert not view.flags.c_contiguous
    for greys in ([view], [view, view.copy()]):
        out, flags = N.normalise_flagged(greys)
        assert np.array_equal(out[0], 255 - view) and flags[0].tolist() == [True, False]


def test_empty_batch():
    out, flags = N.normalise_flagged([])
    assert out.shape == (0, 28, 28) and flags.shape == (0, 2)


def _png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize("block", [None, 1, 3000])
def test_decode_members_flags_every_decoded_image(monkeypatch, block):
    if block is not None:
        monkeypatch.setattr(taskdecode, "PENDING_PIXELS", block)
    files = _file_corpus()[:30]
    rng = np.random.default_rng(5)
    files += [(f"s{i}.png", _png(_stroke_digit(rng, 28, 28, dark_on_light=bool(i % 2))))
              for i in range(7)]
    files.insert(5, ("bad.png", b"not an image"))
    files.insert(17, ("empty.png", b""))
    got = taskdecode.decode_members([Member(k, d, None) for k, d in files])
    assert got.keys == [k for k, _ in files]
    decoded = [k for k, ok in zip(got.keys, got.ok) if ok]
    assert "bad.png" not in decoded and "empty.png" not in decoded and len(decoded) == len(files) - 2
    from digitbatch.sources.decoders import decode_grey

    data = dict(files)
    for j in np.flatnonzero(got.ok):
        inv, res = got.flags[j].tolist()
        assert (inv, res) == N.polarity_and_size(decode_grey(data[got.keys[j]])), got.keys[j]
        assert isinstance(inv, bool) and isinstance(res, bool)
