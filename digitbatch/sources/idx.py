"""IDX source: a directory holding the MNIST IDX files, gzip'd or raw.

The IDX format (LeCun et al.): a big-endian header ``0x00 0x00 dtype ndim``
then ``ndim`` uint32 dimensions, then the payload. MNIST uses dtype 0x08
(uint8): images have magic 2051 and dims (n, 28, 28), labels magic 2049
and dims (n,).
"""

from __future__ import annotations

import gzip
import logging
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import IdxFormatError, SourceNotFoundError
from ..digits import IMAGE_SHAPE, LABEL_DTYPE

log = logging.getLogger(__name__)

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049
# (split, images stem, labels stem); stems also match the "train-images.idx3-ubyte" spelling
PARTS = (
    ("train", "train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    ("test", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
)
MAX_IDX_BYTES = 2**33  # 8 GiB: refuse absurd headers before allocating


@dataclass(frozen=True)
class IdxData:
    images: np.ndarray  # (n, 28, 28) uint8
    labels: np.ndarray  # (n,) int8
    keys: list[str]
    splits: dict[str, tuple[int, int]]
    description: dict


def _find(directory: Path, stem: str) -> Path | None:
    alt = stem.replace("-idx", ".idx")
    for name in (stem, stem + ".gz", alt, alt + ".gz"):
        p = directory / name
        if p.is_file():
            return p
    return None


def is_idx_dir(path: Path) -> bool:
    """True when ``path`` is a directory holding at least one IDX image/label pair."""
    return path.is_dir() and any(
        _find(path, img) is not None and _find(path, lab) is not None for _, img, lab in PARTS
    )


_READ_BLOCK = 2**20


def _read_bytes(path: Path, *, magic: int | None = None,
                dims: tuple[int, ...] | None = None) -> bytearray:
    """The (decompressed) bytes of an IDX file, never much more than its header claims.

    With ``magic`` and ``dims`` the header is checked first and at most one
    byte more than the header's payload is read, so a gzip bomb (a tiny
    ``.gz`` holding gigabytes) costs no more memory than an honest file of
    the size its header claims: the surplus shows as "padded" in
    :func:`parse_idx`.
    """
    try:
        with open(path, "rb") as raw:
            if raw.read(2) == b"\x1f\x8b":
                raw.seek(0)
                with gzip.GzipFile(fileobj=raw, mode="rb") as fh:
                    return _read_bounded(fh, path, magic, dims)
            raw.seek(0)
            return _read_bounded(raw, path, magic, dims)
    except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as exc:
        raise IdxFormatError(
            f"{path}: cannot decompress ({exc}); the file is truncated or corrupt: download it again"
        ) from exc


def _read_bounded(fh, path: Path, magic: int | None, dims: tuple[int, ...] | None) -> bytearray:
    if magic is None or dims is None:
        limit = MAX_IDX_BYTES + 64
    else:
        head = fh.read(4 + 4 * (1 + len(dims)))
        shape = _header_shape(bytes(head), name=str(path), magic=magic, dims=dims)
        limit = len(head) + int(np.prod(shape, dtype=np.int64)) + 1
    buf = bytearray() if magic is None or dims is None else bytearray(head)
    while len(buf) < limit:
        chunk = fh.read(min(_READ_BLOCK, limit - len(buf)))
        if not chunk:
            break
        buf += chunk
    return buf


def _header_shape(data: bytes, *, name: str, magic: int, dims: tuple[int, ...]) -> tuple[int, ...]:
    """The shape an IDX header declares, after checking its magic, dims and size."""
    ndim = 1 + len(dims)
    header_len = 4 + 4 * ndim
    if len(data) < 4:
        raise IdxFormatError(f"{name}: {len(data)} bytes is too short for an IDX header")
    got_magic = int.from_bytes(data[:4], "big")
    if got_magic != magic:
        raise IdxFormatError(
            f"{name}: magic number {got_magic} (0x{got_magic:08x}), expected {magic}: "
            f"is this the right IDX file?"
        )
    if len(data) < header_len:
        raise IdxFormatError(f"{name}: truncated header ({len(data)} bytes)")
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    if shape[1:] != dims:
        raise IdxFormatError(f"{name}: dimensions {shape}, expected (n, {', '.join(map(str, dims))})"
                             if dims else f"{name}: dimensions {shape}, expected (n,)")
    expected = int(np.prod(shape, dtype=np.int64))
    if expected > MAX_IDX_BYTES:
        raise IdxFormatError(f"{name}: header claims {expected} bytes of data, refusing")
    return shape


def parse_idx(data: bytes | bytearray, *, name: str, magic: int, dims: tuple[int, ...]) -> np.ndarray:
    """Validate an IDX payload and return it as a uint8 array.

    ``dims`` gives the expected trailing dimensions after the count
    (``(28, 28)`` for images, ``()`` for labels).
    """
    header_len = 4 + 4 * (1 + len(dims))
    shape = _header_shape(bytes(data[:header_len]), name=name, magic=magic, dims=dims)
    expected = int(np.prod(shape, dtype=np.int64))
    payload = len(data) - header_len
    if payload != expected:
        raise IdxFormatError(
            f"{name}: header says {shape[0]} records ({expected} bytes) but the file holds "
            f"{'at least ' if payload > expected else ''}{payload} bytes: the file is truncated "
            f"or padded"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header_len).reshape(shape)


def load_idx(directory: str | Path) -> IdxData:
    """Read the train and/or test IDX pairs of ``directory`` (train rows first)."""
    d = Path(directory)
    if not d.exists():
        raise SourceNotFoundError(f"IDX directory {d} does not exist")
    images, labels, keys, splits, files = [], [], [], {}, []
    start = 0
    for split, img_stem, lab_stem in PARTS:
        ip, lp = _find(d, img_stem), _find(d, lab_stem)
        if ip is None and lp is None:
            continue
        if ip is None or lp is None:
            missing = img_stem if ip is None else lab_stem
            raise IdxFormatError(f"{d}: {missing}[.gz] is missing: images and labels come in pairs")
        x = parse_idx(_read_bytes(ip, magic=IMAGES_MAGIC, dims=IMAGE_SHAPE), name=str(ip),
                      magic=IMAGES_MAGIC, dims=IMAGE_SHAPE)
        y = parse_idx(_read_bytes(lp, magic=LABELS_MAGIC, dims=()), name=str(lp),
                      magic=LABELS_MAGIC, dims=())
        if x.shape[0] != y.shape[0]:
            raise IdxFormatError(
                f"{d}: {ip.name} holds {x.shape[0]} images but {lp.name} holds {y.shape[0]} labels"
            )
        if y.size and y.max() > 9:
            bad = int(np.flatnonzero(y > 9)[0])
            raise IdxFormatError(f"{lp}: label {int(y[bad])} at record {bad} is not a digit 0-9")
        n = x.shape[0]
        images.append(x)
        labels.append(y.astype(LABEL_DTYPE))
        keys.extend(f"idx:{split}:{i}" for i in range(n))
        splits[split] = (start, start + n)
        files.append(ip.name)
        files.append(lp.name)
        start += n
    if not images:
        raise IdxFormatError(
            f"{d} holds no IDX files: expected train-images-idx3-ubyte[.gz] and "
            f"train-labels-idx1-ubyte[.gz] (and/or the t10k pair)"
        )
    log.info("read %d IDX images from %s", start, d)
    return IdxData(
        images=np.concatenate(images) if len(images) > 1 else images[0],
        labels=np.concatenate(labels) if len(labels) > 1 else labels[0],
        keys=keys,
        splits=splits,
        description={"kind": "idx", "path": str(d.resolve()), "files": files},
    )
