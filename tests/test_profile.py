"""The fixed-bin profile of scored rows: counts against plain numpy, pairwise sums, checks."""

from __future__ import annotations

import numpy as np
import pytest

from digitbatch import profile as P
from digitbatch.digits import UNKNOWN_LABEL
from digitbatch.sources.normalise import normalise_group, polarity_and_size


def _rows(n: int, seed: int = 0, k: int = 10):
    rng = np.random.default_rng(seed)
    images = (rng.random((n, 28, 28)) < rng.uniform(0.02, 0.5, (n, 1, 1))) * \
        rng.integers(0, 256, (n, 28, 28))
    pred = rng.integers(0, k, n)
    margin = rng.random(n).astype(np.float32)
    target = np.where(rng.random(n) < 0.3, UNKNOWN_LABEL, np.where(rng.random(n) < 0.8, pred,
                                                                    (pred + 1) % k))
    return images.astype(np.uint8), pred, margin, target


def test_profile_counts_match_plain_numpy():
    images, pred, margin, target = _rows(997)
    prof = P.chunk_profile(images, pred, margin, target, range(10))
    assert P.check(prof, 10) is None
    assert prof["n"] == 997 and prof["normalisation"] is None
    assert prof["prediction"] == np.bincount(pred, minlength=10).tolist()
    assert prof["margin"] == np.histogram(margin, bins=P.MARGIN_EDGES)[0].tolist()
    known = target != UNKNOWN_LABEL
    assert prof["margin_labelled"] == np.histogram(margin[known], P.MARGIN_EDGES)[0].tolist()
    right = known & (target == pred)
    assert prof["margin_correct"] == np.histogram(margin[right], P.MARGIN_EDGES)[0].tolist()
    flat = images.reshape(997, -1).astype(np.float64)
    ink = (flat >= 128).mean(axis=1)
    mean = flat.mean(axis=1) / 255
    for name, values in (("ink", ink), ("intensity", mean)):
        want = np.histogram(values, P.INPUT_EDGES)[0]
        assert prof[name] == want.tolist(), name


def test_a_chunk_without_rows_has_an_empty_profile():
    """(an archive chunk whose members were all rejected)"""
    prof = P.chunk_profile(np.zeros((0, 28, 28), np.uint8), np.zeros(0, np.int8),
                           np.zeros(0, np.float32), np.zeros(0, np.int8), range(10),
                           rows=np.zeros(0, np.int64), input_every=8, normalisation=(0, 0, 0))
    assert P.check(prof, 10) is None and prof["n"] == 0 and sum(prof["ink"]) == 0


def test_margin_bins_edges_nan_and_out_of_range():
    m = np.array([0.0, 0.049, 0.05, 0.999, 1.0, np.nan, -0.5, 7.0])
    assert P.margin_bins(m).tolist() == [0, 0, 1, 19, 19, 0, 0, 19]


def test_classes_of_a_detector_and_of_a_digit_subset():
    images, _, margin, _ = _rows(50)
    pred = np.array([0, 2, 7] * 16 + [2, 2])
    prof = P.chunk_profile(images, pred, margin, np.full(50, UNKNOWN_LABEL), [0, 2, 7])
    assert prof["prediction"] == [16, 18, 16]
    assert sum(prof["margin_labelled"]) == 0


def test_profiles_add_pairwise_to_the_whole():
    images, pred, margin, target = _rows(1000, seed=3)
    whole = P.chunk_profile(images, pred, margin, target, range(10))
    bounds = [0, 256, 512, 768, 1000]  # uneven: a ragged last chunk
    for cut in (bounds, [0, 1000], [0, 100, 1000], [0, 1, 2, 500, 999, 1000]):
        parts = [P.chunk_profile(images[a:b], pred[a:b], margin[a:b], target[a:b], range(10))
                 for a, b in zip(cut[:-1], cut[1:])]
        assert P.reduce_profiles(parts) == whole
    assert P.reduce_profiles([]) is None
    assert P.reduce_profiles([whole, None]) is None


def test_sampled_input_statistics_do_not_depend_on_the_chunking():
    images, pred, margin, target = _rows(1000, seed=4)
    whole = P.chunk_profile(images, pred, margin, target, range(10), input_every=8)
    assert sum(whole["ink"]) == sum(whole["intensity"]) == 125 and whole["n"] == 1000
    assert P.check(whole) is None
    full = P.chunk_profile(images[::8], pred[::8], margin[::8], target[::8], range(10))
    assert whole["ink"] == full["ink"] and whole["intensity"] == full["intensity"]
    cut = [0, 5, 256, 511, 777, 1000]
    parts = [P.chunk_profile(images[a:b], pred[a:b], margin[a:b], target[a:b], range(10),
                             rows=np.arange(a, b), input_every=8)
             for a, b in zip(cut[:-1], cut[1:])]
    assert P.reduce_profiles(parts) == whole


def test_a_large_store_samples_its_input_statistics():
    assert [P.input_every(n) for n in (0, 1000, 32767, 32768, 100_000, 4_000_000)] == \
        [1, 1, 1, 2, 6, 32]


def test_normalisation_counts_add_only_where_known():
    images, pred, margin, target = _rows(10)
    a = P.chunk_profile(images, pred, margin, target, range(10), normalisation=(10, 3, 4))
    b = P.chunk_profile(images, pred, margin, target, range(10), normalisation=(10, 1, 0))
    assert P.add(a, b)["normalisation"] == {"n": 20, "inverted": 4, "resized": 4}
    c = P.chunk_profile(images, pred, margin, target, range(10))
    assert P.add(a, c)["normalisation"] is None


def test_check_names_what_is_wrong():
    images, pred, margin, target = _rows(40)
    prof = P.chunk_profile(images, pred, margin, target, range(10))
    assert "JSON object" in P.check([1, 2])
    assert "version" in P.check({**prof, "version": 99})
    assert "'margin' is not 20 counts" in P.check({**prof, "margin": prof["margin"][:-1]})
    assert "'prediction' is not 3 counts" in P.check(prof, 3)
    assert "does not match" in P.check({**prof, "n": 41})
    bad = dict(prof, margin_correct=[x + 1 for x in prof["margin_labelled"]])
    assert "more correct rows" in P.check(bad)
    assert "'ink' is not" in P.check({**prof, "ink": [-1] + prof["ink"][1:]})
    with pytest.raises(ValueError, match="one image, margin and label per row"):
        P.chunk_profile(images[:3], pred, margin, target, range(10))


def test_polarity_and_size_is_what_normalisation_does():
    """The inversion flag is the one normalisation decides (a light frame means paper)."""
    rng = np.random.default_rng(5)
    for shape in ((28, 28), (40, 33), (4, 4)):
        for paper in (0, 255):
            stack = np.full((1, *shape), paper, np.uint8)
            stack[0, shape[0] // 3: shape[0] // 2, 1: -1] = 255 - paper
            stack[0] ^= rng.integers(0, 8, shape).astype(np.uint8)  # (noise, not polarity)
            inverted, resized = polarity_and_size(stack[0])
            assert inverted == (paper == 255)
            assert resized == (shape != (28, 28))
            if shape == (28, 28):  # a 28x28 image is only inverted, never resized
                np.testing.assert_array_equal(normalise_group(stack)[0],
                                              stack[0] ^ (255 if inverted else 0))
