"""digitbatch.sources.fitjit: the compiled fit step, byte for byte the numpy one.

The compiled resize is checked against Pillow itself for every pair of
sizes normalisation uses (as tests/test_sources_lanczos.py checks the numpy
one); the whole fit against the numpy path and the single-image reference
on the corpora of tests/test_sources_normalise.py.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from digitbatch.sources import fitjit, lanczos
from digitbatch.sources import normalise as N
from digitbatch.sources.decoders import grey

from . import reference_mnist as ref
from .test_sources_lanczos import resize_cases
from .test_sources_normalise import _grey_corpus, _pillow_corpus, _stroke_digit

pytestmark = pytest.mark.skipif(not fitjit.installed(), reason="numba is not installed")


@pytest.fixture(autouse=True)
def _jit_on(monkeypatch):
    monkeypatch.delenv("DIGITBATCH_NO_JIT", raising=False)
    fitjit.load()
    assert fitjit.ready()


def _prints_ok(code: str) -> None:
    """Run ``code`` in a new Python process (its own imports, its own numba
    state); it must exit 0 printing ``ok``."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=240)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def _pillow(img: np.ndarray, h: int, w: int) -> np.ndarray:
    return np.asarray(Image.fromarray(img).resize((w, h), Image.Resampling.LANCZOS,
                                                  reducing_gap=lanczos.REDUCING_GAP))


def test_compiled_resize_equals_pillow_for_every_size():
    """Each input side 1..119 to each output side 1..20 that Pillow resamples
    itself, both pass orders, on random, bilevel and flat images."""
    checked = 0
    for img, (oh, ow) in resize_cases():
        assert np.array_equal(fitjit.resize(img, oh, ow), _pillow(img, oh, ow)), (img.shape, oh, ow)
        checked += 1
    assert checked > 500


def test_compiled_resize_both_pass_orders():
    rng = np.random.default_rng(1)
    for (h, w), (oh, ow) in [((90, 30), (20, 7)), ((30, 90), (7, 20)), ((50, 48), (20, 19)),
                             ((21, 60), (7, 20)), ((60, 21), (20, 7))]:
        img = rng.integers(0, 256, (h, w)).astype(np.uint8)
        assert np.array_equal(fitjit.resize(img, oh, ow), _pillow(img, oh, ow)), (h, w)


def _numpy(greys, monkeypatch):
    monkeypatch.setenv("DIGITBATCH_NO_JIT", "1")
    assert not fitjit.available() and not fitjit.ready()
    try:
        return N.normalise(greys)
    finally:
        monkeypatch.delenv("DIGITBATCH_NO_JIT")


def test_compiled_normalise_equals_numpy_and_reference_on_grey_corpus(monkeypatch):
    greys = _grey_corpus(seed=11)
    order = np.random.default_rng(2).permutation(len(greys))
    greys = [greys[i] for i in order]
    got = N.normalise(greys)
    assert np.array_equal(got, _numpy(greys, monkeypatch))
    want = np.stack([ref.to_mnist(Image.fromarray(g)) for g in greys])
    bad = [greys[i].shape for i in range(len(greys)) if not np.array_equal(got[i], want[i])]
    assert not bad


def test_compiled_normalise_every_mode_equals_reference(monkeypatch):
    imgs = [img for _, img in _pillow_corpus()]
    got = N.normalise([grey(i) for i in imgs])
    for (name, img), out in zip(_pillow_corpus(), got):
        assert np.array_equal(out, ref.to_mnist(img)), name


def test_compiled_fit_many_scans_in_one_group(monkeypatch):
    """Many scans of one size (the bulk-archive case): dark on light and
    light on dark, thin and fat strokes, some so large Pillow must reduce
    them, some blank."""
    rng = np.random.default_rng(5)
    greys = [_stroke_digit(rng, 112, 112, dark_on_light=bool(i % 2), noise=4 * (i % 4),
                           margin=(0.01 if i % 7 == 0 else 0.15)) for i in range(120)]
    greys[10] = np.full((112, 112), 250, np.uint8)
    greys[11] = np.zeros((112, 112), np.uint8)
    big = np.full((300, 300), 255, np.uint8)
    big[5:295, 140:160] = 0  # a 290-px bar: Pillow box-reduces it before resampling
    greys += [big, big.T.copy()]
    got = N.normalise(greys)
    assert np.array_equal(got, _numpy(greys, monkeypatch))
    for i in (0, 1, 7, 10, 11, len(greys) - 2, len(greys) - 1):
        assert np.array_equal(got[i], ref.to_mnist(Image.fromarray(greys[i]))), i


def test_the_first_call_starts_loading_and_numpy_serves_meanwhile():
    """In a fresh process: the first normalise starts the loader and returns
    the numpy path's bytes; once loaded, the compiled path gives the same."""
    code = (
        "import numpy as np\n"
        "from digitbatch.sources import fitjit, normalise as N\n"
        "rng = np.random.default_rng(0)\n"
        "g = [rng.integers(0, 256, (40, 30), dtype=np.uint8) for _ in range(5)]\n"
        "first = N.normalise(g)\n"
        "fitjit.load()\n"
        "assert fitjit.ready()\n"
        "assert np.array_equal(N.normalise(g), first)\n"
        "import sys; assert 'numba' in sys.modules\n"
        "print('ok')\n")
    _prints_ok(code)


def test_loading_starts_only_after_load_after_scans():
    """A process that fits fewer than LOAD_AFTER scans never imports numba;
    past that the loader starts, and the results never change."""
    code = (
        "import sys, numpy as np\n"
        "from digitbatch.sources import fitjit, normalise as N\n"
        "fitjit.LOAD_AFTER = 50\n"
        "rng = np.random.default_rng(0)\n"
        "g = [rng.integers(0, 256, (40, 30), dtype=np.uint8) for _ in range(30)]\n"
        "first = N.normalise(g)\n"
        "assert 'numba' not in sys.modules and not fitjit.LOADER.threads\n"
        "assert np.array_equal(N.normalise(g), first)\n"  # 60 scans: the loader starts
        "assert fitjit.LOADER.threads\n"
        "fitjit.LOADER.threads[0].join()\n"
        "assert fitjit.ready() and np.array_equal(N.normalise(g), first)\n"
        "print('ok')\n")
    _prints_ok(code)


def test_importing_normalise_does_not_import_numba():
    code = ("import sys\nfrom digitbatch.sources import images, listing\n"
            "assert 'numba' not in sys.modules\nprint('ok')\n")
    _prints_ok(code)


def test_fit_marks_what_pillow_must_resize():
    big = np.zeros((1, 300, 300), np.uint8)
    big[0, 5:295, 140:160] = 255
    out, info = fitjit.fit(big)
    assert info[0, 0] == fitjit.PILLOW and not out.any()
    blank = np.zeros((1, 40, 40), np.uint8)
    out, info = fitjit.fit(blank)
    assert info[0, 0] == fitjit.BLANK and not out.any()


def _reference(greys):
    return np.stack([ref.to_mnist(Image.fromarray(g)) for g in greys])


@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (9, 1), (2, 3), (4, 4), (4, 30), (30, 4),
                                   (5, 5), (112, 112), (300, 300)])
def test_compiled_groups_of_every_kind(shape, monkeypatch):
    """Groups of one size through the compiled measure and fit: both
    polarities, blank paper and blank dark, noise, ink touching the border,
    digits Pillow box-reduces (large sides), in uneven group sizes; the
    digits equal the numpy path's and the reference's, and the flags equal
    polarity_and_size per image."""
    rng = np.random.default_rng(sum(shape))
    h, w = shape
    greys = []
    for i in range(13):
        kind = i % 6
        if kind == 0:
            g = np.full(shape, 255 if i % 4 else 250, np.uint8)
        elif kind == 1:
            g = np.zeros(shape, np.uint8)
        elif kind == 2:
            g = rng.integers(0, 256, shape, dtype=np.uint8)
        else:
            g = _stroke_digit(rng, h, w, dark_on_light=bool(i % 2),
                              margin=0.0 if kind == 5 else 0.15, noise=3 * (i % 3))
        greys.append(g)
    if h >= 300:
        bar = np.full(shape, 255, np.uint8)
        bar[5:295, 140:160] = 0  # dark on light, box-reduced by Pillow
        greys += [bar, 255 - bar.T]
    for n in (1, 2, 5, len(greys)):  # uneven group sizes
        part = greys[:n]
        got, flags = N.normalise_flagged(part)
        assert np.array_equal(got, _numpy(part, monkeypatch)), n
        assert np.array_equal(got, _reference(part)), n
        assert [tuple(f) for f in flags.tolist()] == [N.polarity_and_size(g) for g in part]


def test_compiled_fit_reports_polarity_and_leaves_pillow_cases():
    light = np.zeros((2, 300, 300), np.uint8)
    light[:, 5:295, 140:160] = 255
    light[1] = 255 - light[1]  # the same bar, dark on light
    out, info = fitjit.fit(light)
    assert info[:, 0].tolist() == [fitjit.PILLOW] * 2 and not out.any()
    assert info[:, fitjit.INVERTED].tolist() == [0, 1]
    assert np.array_equal(info[0, 1:9], info[1, 1:9])  # measured on the inverted image


def test_weight_tables_grow_with_new_sizes():
    """The per-process weight tables take new (in, out) pairs as they come
    (a larger image than any before included) and keep the old ones."""
    rng = np.random.default_rng(9)
    for shape in [(40, 30), (90, 120), (150, 61), (40, 30)]:
        greys = [_stroke_digit(rng, *shape, dark_on_light=bool(i % 2)) for i in range(3)]
        assert np.array_equal(N.normalise(greys), _reference(greys)), shape
    pairs = lanczos.TABLES.pairs
    assert len(set(pairs)) == len(pairs)
    assert all(lanczos.TABLES.pair_of[a, b] == p for p, (a, b) in enumerate(pairs))


def test_compiled_path_takes_views_and_threads(monkeypatch):
    """Strided views (one image alone, and in a group) give the bytes of
    their copies, and two threads normalising at once (the kernels release
    the GIL; the weight tables are shared) give the serial results."""
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(12)
    base = _stroke_digit(rng, 120, 180, dark_on_light=True)
    view = base[::2, ::2]  # 60x90, not contiguous
    assert not view.flags.c_contiguous
    for greys in ([view], [view, view.copy(), 255 - view]):
        got = N.normalise(greys)
        assert np.array_equal(got, _reference([np.ascontiguousarray(g) for g in greys]))
    sizes = [(40 + 7 * i, 30 + 11 * i) for i in range(8)]
    jobs = [[_stroke_digit(rng, h, w, dark_on_light=bool(k % 2)) for k in range(6)]
            for h, w in sizes]
    serial = [N.normalise_flagged(j) for j in jobs]
    with ThreadPoolExecutor(2) as pool:
        threaded = list(pool.map(N.normalise_flagged, jobs))
    for (a, fa), (b, fb) in zip(serial, threaded):
        assert np.array_equal(a, b) and np.array_equal(fa, fb)


def test_28x28_images_never_count_towards_loading():
    """28x28 images need no fit: however many a process normalises, it never
    starts loading numba."""
    code = (
        "import sys, numpy as np\n"
        "from digitbatch.sources import fitjit, normalise as N\n"
        "fitjit.LOAD_AFTER = 50\n"
        "rng = np.random.default_rng(0)\n"
        "g = [rng.integers(0, 256, (28, 28), dtype=np.uint8) for _ in range(300)]\n"
        "N.normalise_flagged(g); N.normalise(g[:1])\n"
        "assert 'numba' not in sys.modules and not fitjit.LOADER.threads\n"
        "print('ok')\n")
    _prints_ok(code)
