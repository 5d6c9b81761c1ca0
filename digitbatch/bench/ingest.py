"""``digitbatch bench ingest``: IDX -> Zarr and a PNG tar -> Zarr, against Pillow.

The baseline is what a person would write: one process, ``tarfile`` stream,
``Image.open(...).convert("L")`` and ``np.asarray`` per member, ``np.stack``.
digitbatch is timed on a LocalCluster already running (a scheduled job on a
cluster) and, separately, including the cluster start.
"""

from __future__ import annotations

import io
import logging
import shutil
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from . import HEADER, find_mnist, measure, scratch

log = logging.getLogger(__name__)


def write_png_tar(images: np.ndarray, labels: np.ndarray, path: Path) -> None:
    """A plain tar of 28x28 L-mode PNGs named ``<label>/<row>.png``."""
    from PIL import Image

    tmp = path.with_suffix(".partial")
    with tarfile.open(tmp, "w") as tar:
        for i, (img, lab) in enumerate(zip(images, labels)):
            buf = io.BytesIO()
            Image.fromarray(img, mode="L").save(buf, format="PNG")
            info = tarfile.TarInfo(f"{int(lab)}/{i:06d}.png")
            info.size = buf.tell()
            buf.seek(0)
            tar.addfile(info, buf)
    tmp.rename(path)


def pillow_baseline(path: Path) -> np.ndarray:
    """The single-process loop digitbatch is compared with."""
    from PIL import Image

    out = []
    with tarfile.open(path, "r|*") as tar:
        for m in tar:
            if not m.isfile():
                continue
            data = tar.extractfile(m).read()
            out.append(np.asarray(Image.open(io.BytesIO(data)).convert("L")))
    return np.stack(out)


def run(*, mnist_dir=None, workdir=None, n_png: int = 70_000) -> Iterator[str]:
    from .. import cluster
    from ..ingestion import ingest
    from ..sources.idx import load_idx

    mnist = find_mnist(mnist_dir)
    with scratch(workdir) as work:
        yield f"MNIST from {mnist}; scratch in {work}"
        yield HEADER
        idx_store = work / "idx.zarr"
        shutil.rmtree(idx_store, ignore_errors=True)
        with measure("IDX -> Zarr (digitbatch ingest)", 70_000) as m_idx:
            r = ingest(mnist, idx_store)
            m_idx.n = r.n_images
        yield m_idx.row()

        tar_path = work / f"mnist-{n_png}.tar"
        if not tar_path.exists():
            data = load_idx(mnist)
            yield f"(writing {n_png:,} PNGs to {tar_path.name} ...)"
            write_png_tar(data.images[:n_png], data.labels[:n_png], tar_path)
        with measure("PNG tar: single-process Pillow loop", n_png) as base:
            ref = pillow_baseline(tar_path)
        yield base.row()

        out = work / "png.zarr"
        shutil.rmtree(out, ignore_errors=True)
        with measure("PNG tar -> Zarr, incl. LocalCluster start", n_png) as cold:
            ingest(tar_path, out, scheduler="local")
        yield cold.row(base)

        with cluster.client("local") as c:
            address = c.scheduler.address
            for i in range(2):
                shutil.rmtree(out, ignore_errors=True)
                with measure(f"PNG tar -> Zarr, running 2-worker cluster #{i + 1}", n_png) as warm:
                    ingest(tar_path, out, scheduler=address)
                yield warm.row(base)
        from ..layout import open_store

        got = open_store(out).images[:]
        same = np.array_equal(got, ref)
        yield f"digitbatch images identical to the Pillow loop's: {same}"
