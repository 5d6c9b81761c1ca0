"""The ``.npy`` members of a model archive, checked before numpy allocates them.

numpy allocates an array from the shape its header declares before it reads
a byte of data, so a header claiming hundreds of GiB over a few bytes ends
in a bare ``MemoryError``. :func:`check_array_sizes` reads every header
alone and counts the bytes each member really holds, so
:func:`digitbatch.modelio.load_model` refuses such a file by name first.
"""

from __future__ import annotations

import math
import zipfile
from pathlib import Path

import numpy as np

from .errors import ModelError

# The most bytes the arrays of a model may declare in all (the kernel head,
# the largest of the catalogue, holds a few tens of MB): anything beyond is
# damage or an attack.
MAX_MODEL_BYTES = 1 << 30


def _npy_header(fh) -> tuple[tuple, np.dtype, int]:
    """(shape, dtype, header length) of the ``.npy`` stream ``fh``, read without
    allocating anything (``ValueError`` for a header numpy would not read)."""
    version = np.lib.format.read_magic(fh)
    if version == (1, 0):
        shape, _fortran, dtype = np.lib.format.read_array_header_1_0(fh)
    elif version == (2, 0):
        shape, _fortran, dtype = np.lib.format.read_array_header_2_0(fh)
    else:
        raise ValueError(f".npy format version {version[0]}.{version[1]} (digitbatch writes 1.0)")
    return tuple(int(d) for d in shape), dtype, fh.tell()


def check_array_sizes(p: Path, zf: zipfile.ZipFile, *,
                      max_bytes: int | None = None) -> dict[str, int]:
    """Check what each ``.npy`` member of ``zf`` (model ``p``'s) declares against
    what it holds. Every header is read alone; its dtype must be numbers, its
    size (shape x item size) at most :data:`MAX_MODEL_BYTES` in all (or
    ``max_bytes``), and the member must
    really hold that many bytes after its header: they are counted by
    streaming through it (a zip header's sizes can lie too), never by
    allocating. Returns the declared bytes of each member; a
    :class:`ModelError` naming the member and the sizes otherwise.
    """
    limit = MAX_MODEL_BYTES if max_bytes is None else max_bytes
    archive = Path(zf.filename).name if zf.filename else "the archive"
    total = 0
    sizes: dict[str, int] = {}
    for info in zf.infolist():
        name = info.filename.removesuffix(".npy")
        with zf.open(info) as fh:
            try:
                shape, dtype, header = _npy_header(fh)
            except Exception as exc:  # numpy's parser raises ValueError, EOFError, TokenError...
                raise ModelError(f"model {p}: array {name!r} of {archive} has a header numpy "
                                 f"cannot read ({exc}): retrain the model") from None
            if dtype.kind not in "biuf" or dtype.hasobject:
                raise ModelError(f"model {p}: {archive} is not a plain numpy archive: array "
                                 f"{name!r} is {dtype}, not numbers: retrain it")
            if any(d < 0 for d in shape):
                raise ModelError(f"model {p}: array {name!r} has shape {shape}: retrain it")
            declared = dtype.itemsize * math.prod(shape)
            total += declared
            if total > limit:
                raise ModelError(
                    f"model {p}: array {name!r} of {archive} declares shape {shape} "
                    f"({declared:,} bytes), beyond the {limit:,} bytes a digitbatch model may "
                    f"hold: the file is damaged or not a digitbatch model; retrain it")
            held = 0
            while held < declared:  # bounded blocks: nothing is allocated from the header
                block = fh.read(min(1 << 20, declared - held))
                if not block:
                    break
                held += len(block)
            if held < declared:
                raise ModelError(
                    f"model {p}: array {name!r} of {archive} declares shape {shape} "
                    f"({declared:,} bytes) but holds {held:,} bytes after its {header}-byte "
                    f"header: the file is damaged or was edited; retrain the model")
        sizes[name] = declared
    return sizes
