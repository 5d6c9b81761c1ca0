"""digitbatch.sources.lanczos: Pillow's Lanczos resize, batched, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from digitbatch.sources import lanczos


def _pillow(img: np.ndarray, h: int, w: int) -> np.ndarray:
    return np.asarray(Image.fromarray(img).resize((w, h), Image.Resampling.LANCZOS,
                                                  reducing_gap=lanczos.REDUCING_GAP))


def _batch(imgs: list[np.ndarray], outs: list[tuple[int, int]]) -> np.ndarray:
    """resize_group over ``imgs`` padded into one frame with junk around them."""
    ch = max(i.shape[0] for i in imgs) + 2
    cw = max(i.shape[1] for i in imgs) + 3
    crops = np.full((len(imgs), ch, cw), 201.0)
    for k, img in enumerate(imgs):
        crops[k, :img.shape[0], :img.shape[1]] = img
    return lanczos.resize_group(crops, np.array([i.shape for i in imgs]), np.array(outs), (20, 20))


def resize_cases():
    """``(image, (out_h, out_w))``: each input side 1..119 to an output side
    1..20 that Pillow resamples itself (no box reduction first), on random,
    bilevel and flat images, both pass orders among them."""
    rng = np.random.default_rng(0)
    for h in range(1, 120):
        for oh in range(1, 21):
            w, ow = int(rng.integers(1, 120)), int(rng.integers(1, 21))
            if lanczos.needs_pillow(w, h, ow, oh):
                continue
            kind = (h + oh) % 3
            img = (rng.integers(0, 256, (h, w)) if kind == 0 else
                   np.where(rng.random((h, w)) < 0.7, 0, 255) if kind == 1 else
                   np.full((h, w), 255)).astype(np.uint8)
            yield img, (oh, ow)


def test_every_size_normalisation_uses_equals_pillow():
    """Each input side 1..119 to each output side 1..20 Pillow resamples
    itself, in both pass orders, on random, bilevel and flat images."""
    cases = list(resize_cases())
    imgs, outs = [img for img, _ in cases], [out for _, out in cases]
    got = np.concatenate([_batch(imgs[a:a + 64], outs[a:a + 64]) for a in range(0, len(imgs), 64)])
    for k, (img, (oh, ow)) in enumerate(zip(imgs, outs)):
        want = _pillow(img, oh, ow)
        assert np.array_equal(got[k, :oh, :ow], want), (img.shape, (oh, ow))
        assert not got[k, oh:].any() and not got[k, :, ow:].any()


def test_pass_order_rule_is_known_and_used():
    # height shrinking by more than twice the width's change: the order
    # decides the result; both orders occur in one batch
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (60, 24), dtype=np.uint8)  # 60 -> 20 and 24 -> 8: 40 > 2 * 16
    b = rng.integers(0, 256, (24, 60), dtype=np.uint8)  # horizontal first
    got = _batch([a, b], [(20, 8), (8, 20)])
    assert np.array_equal(got[0, :20, :8], _pillow(a, 20, 8))
    assert np.array_equal(got[1, :8, :20], _pillow(b, 8, 20))
    first = lanczos.vertical_first(np.array([60, 24]), np.array([24, 60]), np.array([20, 8]),
                                   np.array([8, 20]))
    assert first.tolist() == [lanczos.vertical_first_rule(), False]


@pytest.mark.parametrize("size,out,expected", [
    ((119, 20), (20, 4), False),  # 119 / 20 / 3 < 2
    ((120, 20), (20, 4), True),   # Pillow box-reduces by 2 first
    ((40, 400), (2, 20), True),
])
def test_needs_pillow(size, out, expected):
    (h, w), (oh, ow) = size, out
    assert lanczos.needs_pillow(w, h, ow, oh) is expected


def test_weights_are_cached_read_only_identity_when_sizes_match():
    m = lanczos.weights(7, 7)
    assert np.array_equal(m, np.eye(7) * 2**22)
    assert lanczos.weights(40, 20) is lanczos.weights(40, 20)
    with pytest.raises(ValueError):
        m[0, 0] = 1
