"""digitbatch.sources.normalise and decode_batch against the single-image reference.

tests/reference_mnist.py is the single-image ``to_mnist`` / ``decode_one``
as they were before normalisation went batch-wise; here the batch path must
give the same bytes on a corpus of modes, sizes, polarities, alpha cases,
blank and tiny images, digits big enough for Pillow's reducing resize, and
every lossless format, mixed in one batch in a shuffled order.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from digitbatch.sources import normalise as N
from digitbatch.sources.decoders import grey
from digitbatch.sources.images import decode_batch, decode_one, to_mnist

from . import reference_mnist as ref


def _stroke_digit(rng: np.random.Generator, h: int, w: int, *, dark_on_light: bool,
                  noise: int = 0, margin: float = 0.15) -> np.ndarray:
    """A random anti-aliased stroke figure in an ``h`` x ``w`` field."""
    yy, xx = np.mgrid[:h, :w]
    img = np.zeros((h, w))
    lo_y, hi_y = margin * h, (1 - margin) * h
    lo_x, hi_x = margin * w, (1 - margin) * w
    pts = np.stack([rng.uniform(lo_y, hi_y, 4), rng.uniform(lo_x, hi_x, 4)], axis=1)
    width = max(0.6, min(h, w) / 14)
    for (y0, x0), (y1, x1) in zip(pts[:-1], pts[1:]):
        for t in np.linspace(0, 1, 16):
            cy, cx = y0 + t * (y1 - y0), x0 + t * (x1 - x0)
            img = np.maximum(img, np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * width**2)))
    out = img * 255
    if noise:
        out = out + rng.normal(0, noise, out.shape)
    out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    return 255 - out if dark_on_light else out


def _sizes() -> list[tuple[int, int]]:
    return [(28, 28), (28, 28), (1, 1), (2, 3), (4, 4), (5, 7), (9, 5), (20, 20), (27, 28),
            (28, 27), (29, 31), (40, 40), (56, 56), (60, 90), (90, 60), (112, 112), (113, 97),
            (150, 40), (40, 150), (200, 160), (300, 300)]


def _grey_corpus(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for h, w in _sizes():
        for dark in (False, True):
            out.append(_stroke_digit(rng, h, w, dark_on_light=dark))
            out.append(_stroke_digit(rng, h, w, dark_on_light=dark, noise=12))
        out.append(np.full((h, w), 255, np.uint8))                     # blank paper
        out.append(np.zeros((h, w), np.uint8))                         # blank dark
        out.append(rng.integers(0, 256, (h, w), dtype=np.uint8))       # noise
        low = _stroke_digit(rng, h, w, dark_on_light=False) // 9        # under MIN_CONTRAST
        out.append(low.astype(np.uint8))
        edge = _stroke_digit(rng, h, w, dark_on_light=True, margin=0.0)  # ink touching the border
        out.append(edge)
    return out


def _pillow_corpus() -> list[tuple[str, Image.Image]]:
    rng = np.random.default_rng(7)
    scan = _stroke_digit(rng, 60, 90, dark_on_light=True)
    ink = scan < 128
    base = Image.fromarray(scan)
    rgba_dark = np.zeros(scan.shape + (4,), np.uint8)
    rgba_dark[..., 3] = np.where(ink, 255, 0)
    rgba_light = rgba_dark.copy()
    rgba_light[..., :3] = 255
    half = rgba_dark.copy()
    half[..., 3] = np.where(ink, 255, 90)
    la = np.stack([np.zeros_like(scan), np.where(ink, 255, 0).astype(np.uint8)], axis=2)
    p_trans = base.convert("P")
    p_trans.info["transparency"] = p_trans.getpixel((0, 0))
    small = Image.fromarray(_stroke_digit(rng, 28, 28, dark_on_light=False))
    return [
        ("L", base),
        ("1", base.convert("1", dither=Image.Dither.NONE)),
        ("RGB", base.convert("RGB")),
        ("RGB colour ink", Image.fromarray(np.stack([scan, 255 - scan // 2, scan], axis=2))),
        ("RGBA opaque", base.convert("RGBA")),
        ("RGBA dark ink", Image.fromarray(rgba_dark)),
        ("RGBA light ink", Image.fromarray(rgba_light)),
        ("RGBA half transparent paper", Image.fromarray(half)),
        ("LA", Image.merge("LA", [Image.fromarray(la[..., 0]), Image.fromarray(la[..., 1])])),
        ("P", base.convert("P")),
        ("P transparent", p_trans),
        ("CMYK", base.convert("RGB").convert("CMYK")),
        ("I;16", Image.fromarray(scan.astype(np.uint16) * 257)),
        ("I", Image.fromarray(scan.astype(np.int32) * 257)),
        ("I wide range", Image.fromarray(scan.astype(np.int32) * 100000 - 7)),
        ("F 0..1", Image.fromarray(scan.astype(np.float32) / 255)),
        ("F 0..255", Image.fromarray(scan.astype(np.float32))),
        ("28x28 L", small),
        ("28x28 RGBA", small.convert("RGBA")),
        ("28x28 I;16", Image.fromarray(np.asarray(small).astype(np.uint16) * 257)),
        ("blank RGBA", Image.new("RGBA", (50, 40), (0, 0, 0, 0))),
        ("1x1", Image.new("L", (1, 1), 200)),
    ]


def test_batch_equals_single_image_reference_on_grey_corpus():
    greys = _grey_corpus()
    rng = np.random.default_rng(1)
    order = rng.permutation(len(greys))
    shuffled = [greys[i] for i in order]
    got = N.normalise(shuffled)
    want = np.stack([ref.to_mnist(Image.fromarray(g)) for g in shuffled])
    bad = [i for i in range(len(shuffled)) if not np.array_equal(got[i], want[i])]
    assert not bad, [shuffled[i].shape for i in bad]
    assert got.dtype == np.uint8 and got.shape == (len(greys), 28, 28)


@pytest.mark.parametrize("name,img", _pillow_corpus(), ids=[n for n, _ in _pillow_corpus()])
def test_to_mnist_equals_reference_every_mode(name, img):
    assert np.array_equal(to_mnist(img), ref.to_mnist(img)), name


def test_every_mode_in_one_batch_equals_reference():
    imgs = [img for _, img in _pillow_corpus()]
    got = N.normalise([grey(i) for i in imgs])
    for (name, img), out in zip(_pillow_corpus(), got):
        assert np.array_equal(out, ref.to_mnist(img)), name


def _encode(img: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **options)
    return buf.getvalue()


def _file_corpus() -> list[tuple[str, bytes]]:
    rng = np.random.default_rng(3)
    files = []
    for i, (h, w) in enumerate(_sizes()):
        d = _stroke_digit(rng, h, w, dark_on_light=bool(i % 2), noise=6 * (i % 3))
        img = Image.fromarray(d)
        files.append((f"{i}.png", _encode(img, "PNG")))
        files.append((f"{i}rgb.png", _encode(img.convert("RGB"), "PNG")))
        files.append((f"{i}.bmp", _encode(img, "BMP")))
        files.append((f"{i}.tif", _encode(img, "TIFF")))
        files.append((f"{i}.gif", _encode(img, "GIF")))
        files.append((f"{i}.webp", _encode(img, "WEBP", lossless=True)))
        files.append((f"{i}.pgm", _encode(img, "PPM")))
        files.append((f"{i}la.png", _encode(img.convert("LA"), "PNG")))
        files.append((f"{i}p.png", _encode(img.convert("P"), "PNG")))
        files.append((f"{i}16.png", _encode(Image.fromarray(d.astype(np.uint16) * 257), "PNG")))
    return files


def test_decode_batch_equals_reference_decode_one_lossless_formats():
    files = _file_corpus()
    rng = np.random.default_rng(4)
    files = [files[i] for i in rng.permutation(len(files))]
    batch = decode_batch([(k, data, None) for k, data in files])
    assert batch.rejects == [] and batch.keys == [k for k, _ in files]
    for (key, data), out in zip(files, batch.images):
        assert np.array_equal(out, ref.decode_one(data)), key
        assert np.array_equal(out, decode_one(data)), key


def test_fit_runs_and_pixel_budget_do_not_change_results(monkeypatch):
    greys = _grey_corpus(seed=5)
    whole = N.normalise(greys)
    monkeypatch.setattr(N, "RUN", 3)
    monkeypatch.setattr(N, "FIT_PIXELS", 1)  # one image at a time
    monkeypatch.setattr(N, "STACK_PIXELS", 1)
    assert np.array_equal(N.normalise(greys), whole)


def test_normalise_empty_and_order():
    assert N.normalise([]).shape == (0, 28, 28)
    a = _stroke_digit(np.random.default_rng(0), 28, 28, dark_on_light=False)
    b = _stroke_digit(np.random.default_rng(1), 40, 30, dark_on_light=True)
    out = N.normalise([b, a, b])
    assert np.array_equal(out[1], a) and np.array_equal(out[0], out[2])
    assert out[0].any()


def test_decode_members_blocks_keep_order_and_results(monkeypatch):
    """Blocks of one image (each normalised as soon as it is decoded) give what
    one block gives, in order, rejects in place."""
    from digitbatch.sources import taskdecode
    from digitbatch.sources.members import Member

    files = _file_corpus()[:40]
    files.insert(3, ("bad.png", b"not an image"))
    files.insert(20, ("empty.png", b""))
    items = [Member(k, d, None) for k, d in files]
    whole = taskdecode.decode_members(items)
    monkeypatch.setattr(taskdecode, "PENDING_PIXELS", 1)  # a block every image
    blocks = []
    real = taskdecode.normalise_flagged
    monkeypatch.setattr(taskdecode, "normalise_flagged", lambda g: blocks.append(len(g)) or real(g))
    told: list[str] = []
    small = taskdecode.decode_members(items, busy=told.append)
    assert told == [k for k, _ in files]  # every member, in order
    assert blocks == [1] * (len(files) - 2)
    assert small.keys == whole.keys == [k for k, _ in files]
    np.testing.assert_array_equal(small.ok, whole.ok)
    np.testing.assert_array_equal(small.digits, whole.digits)
    assert small.rejects == whole.rejects
    assert [(j, r.key, read) for j, r, read in small.rejects] == [
        (3, "bad.png", False), (20, "empty.png", False)]
    for j, (key, data) in enumerate(files):
        if small.ok[j]:
            assert np.array_equal(small.digits[j], ref.decode_one(data)), key


def test_decode_members_refuses_references():
    from digitbatch.sources import taskdecode
    from digitbatch.sources.base import MemberRef

    with pytest.raises(ValueError, match="not references"):
        taskdecode.decode_members([MemberRef("a.png", 512, 10)])