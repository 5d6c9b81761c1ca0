"""``digitbatch bench archive``: ingest and direct scoring of image archives against the decode ceiling.

In one run, on two plain tars built from MNIST (kept in a cache folder
under the system's temporary directory, never in the repository), each at
two sizes:

- PNG: 28x28 grey PNGs, as MNIST is usually shipped as images (70k, 210k);
- JPEG: 112x112 dark-on-white scans, MNIST digits scaled 4x (20k, 60k);

it measures

- the decode ceiling: the members read into memory first, then two
  processes doing Pillow ``open``, ``convert("L")``, ``load()`` and nothing
  else (what a user would write with the cores this machine has); once
  before the cases, and again before each repeat of each case, whose
  ratios are to the fastest of its own (a long bench slows down as it
  goes on a shared machine, and a ceiling measured at its start made the
  later cases look worse);
- where one member's time goes, in one process: listing the tar, packing
  the task's entries, reading the member, decoding, normalising (the
  compiled fit loaded), predicting (sgd) and writing the prediction;
- ``ingest`` and ``score ARCHIVE`` (``sgd`` and ``sgd-kernel``), each a
  whole run on a fresh LocalCluster in a process of its own: the marginal
  rate between the two sizes (start-up cancels), its ratio to the ceiling,
  the peak RSS of the whole process tree, the fixed cost (the intercept of
  the two runs) and the time to the first committed chunk;
- beside each rate, the CPU it costs: the whole machine's busy CPU time
  (every process, every core; :func:`~digitbatch.bench.machine_busy`) per
  image, for the ceiling and for each case's marginal image, and their
  ratio. Wall time on a shared machine moves with what its neighbours do;
  the CPU an image costs moves much less, so the two ratios side by side
  tell a slow minute from a slow change;
- the in-memory scoring rate of each model (2 threads, no I/O);
- the accuracy of the JPEG archive decoded as digitbatch does, at full
  size and at 1/2 scale in the DCT (what reducing the decode would cost).
"""

from __future__ import annotations

import io
import logging
import multiprocessing
import os
import shutil
import signal
import tarfile
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import PeakRSS, find_mnist, machine_busy

log = logging.getLogger(__name__)

SCAN_SIDE = 112
JPEG_QUALITY = 90
CASES = ("ingest", "score sgd", "score sgd-kernel")


def cache_dir() -> Path:
    """Where the benchmark archives and models are kept between runs."""
    return Path(os.environ.get("DIGITBATCH_BENCH_CACHE")
                or Path(tempfile.gettempdir()) / "digitbatch-bench-archive")


# --- the archives ------------------------------------------------------------


def _variants(images: np.ndarray, labels: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images: MNIST in order, then shifted copies (so no two members are equal)."""
    from .data import shift_images

    reps = -(-n // len(images))
    rng = np.random.default_rng(0)
    parts = [images] + [shift_images(images, rng) for _ in range(reps - 1)]
    return np.concatenate(parts)[:n], np.tile(labels, reps)[:n]


def png_member(img: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img, mode="L").save(buf, "PNG")
    return buf.getvalue()


def jpeg_member(img: np.ndarray) -> bytes:
    """A 112x112 dark-on-white scan of an MNIST digit, as a grey JPEG."""
    from PIL import Image

    scan = Image.fromarray(255 - img, mode="L").resize((SCAN_SIDE, SCAN_SIDE),
                                                       Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    scan.save(buf, "JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def build_tar(path: Path, images: np.ndarray, labels: np.ndarray, kind: str) -> None:
    """A plain tar of ``<label>/<row>.png|jpg`` members (written once, then reused)."""
    encode, ext = (png_member, "png") if kind == "png" else (jpeg_member, "jpg")
    tmp = path.with_suffix(".partial")
    with tarfile.open(tmp, "w") as tar:
        for i, (img, lab) in enumerate(zip(images, labels)):
            data = encode(img)
            info = tarfile.TarInfo(f"{int(lab)}/{i:06d}.{ext}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    tmp.rename(path)


def read_members(path: Path) -> list[bytes]:
    with tarfile.open(path, "r:") as tar:
        return [tar.extractfile(m).read() for m in tar if m.isfile()]


# --- the ceiling ---------------------------------------------------------------

_CEILING_MEMBERS: list[bytes] = []


def _pillow_decode(bounds: tuple[int, int]) -> int:
    from PIL import Image

    for data in _CEILING_MEMBERS[bounds[0]:bounds[1]]:
        img = Image.open(io.BytesIO(data)).convert("L")
        img.load()
    return bounds[1] - bounds[0]


def pillow_ceiling(members: list[bytes], procs: int = 2) -> tuple[float, float]:
    """Seconds two forked processes take to Pillow-decode ``members`` (in
    memory), and the machine's busy CPU seconds meanwhile."""
    global _CEILING_MEMBERS
    _CEILING_MEMBERS = members
    try:
        ctx = multiprocessing.get_context("fork")
        step = -(-len(members) // procs)
        # (the pool's processes are forked from a CLI whose SIGTERM handler
        # raises, and the pool ends them with SIGTERM: they get the default)
        with ctx.Pool(procs, initializer=signal.signal,
                      initargs=(signal.SIGTERM, signal.SIG_DFL)) as pool:
            pool.map(_pillow_decode, [(0, 1)] * procs)  # started and warm
            t0, c0 = time.perf_counter(), machine_busy()
            pool.map(_pillow_decode, [(a, min(a + step, len(members)))
                                      for a in range(0, len(members), step)], chunksize=1)
            return time.perf_counter() - t0, machine_busy() - c0
    finally:
        _CEILING_MEMBERS = []


# --- where a member's time goes ---------------------------------------------------


def member_profile(path: Path, model_path: Path, limit: int = 20_000) -> dict[str, float]:
    """CPU microseconds per member, one process: list (and fingerprint) the
    tar, pack and unpack the task entries, read, decode, normalise (the
    compiled fit loaded first, as a warm worker has it), predict and write
    (an archive output's staging slots), by chunks of 10,000 as scoring does.
    Read is reading and judging the members alone, normalise is normalising
    them alone, and decode is what a worker's one pass over the three
    (:func:`~digitbatch.sources.taskdecode.decode_entries`, the kernels
    loaded) spends beyond those two."""
    import shutil

    from ..determinism import deterministic_scores
    from ..modelio import load_model
    from ..scoring.output import OutputSpec, create_output, create_staging, write_slots
    from ..scoring.record import chunk_counts
    from ..sources import fitjit, jpegvouch, pngvouch
    from ..sources.decoders import decode_grey
    from ..sources.listing import list_archive, pack, read_entries, unpack
    from ..sources.normalise import normalise_flagged
    from ..sources.taskdecode import decode_entries

    if fitjit.available():
        fitjit.load()
        jpegvouch.load()
        pngvouch.load()
    model = load_model(model_path).model
    clock = time.process_time
    spent = dict.fromkeys(("list", "pack", "read", "decode", "normalise", "predict", "write"), 0.0)
    t = clock()
    listing = list_archive(path, "tar", limit=16 * 2**20)
    spent["list"] = clock() - t
    entries = listing.entries[:limit]
    n, step = len(entries), 10_000
    out = Path(tempfile.mkdtemp(prefix="profile-", dir=path.parent)) / "out.zarr"
    out.mkdir()
    try:
        create_output(out, OutputSpec(n=n, chunk_size=step, n_classes=model.n_classes,
                                      proba=False, model_sha256="-", slot_size=step,
                                      input_checksum=listing.fingerprint), arrays=False)
        create_staging(out, n=n, chunk_size=step, n_classes=model.n_classes, proba=False)
        for i, a in enumerate(range(0, n, step)):
            t0 = clock()
            part = unpack(pack(entries[a:a + step]))
            t1 = clock()
            for _ in read_entries(str(path), "tar", part, limit=16 * 2**20):
                pass  # (streamed, as a worker reads: one member held at a time)
            t2 = clock()
            greys = [decode_grey(m.data)
                     for m in read_entries(str(path), "tar", part, limit=16 * 2**20)]
            t3 = clock()
            normalise_flagged(greys)
            t4 = clock()
            # what a worker runs: read, decode and normalise in one pass (plain JPEGs
            # stacked); its decode is what the read and the normalise above leave
            got = decode_entries(str(path), "tar", part, limit=16 * 2**20)
            t5 = clock()
            pred, margin, _ = deterministic_scores(model, got.digits[got.ok], proba=False)
            t6 = clock()
            labels = np.array([got.folder[j] for j in np.flatnonzero(got.ok)], np.int8)
            pred = np.asarray(pred).astype(np.int8)
            write_slots(str(out), i, a, valid=np.ones(len(labels), bool), labels=labels,
                        pred=pred, margin=margin, proba=None,
                        keys=np.array(got.keys, dtype=object)[got.ok],
                        counts=chunk_counts(labels, pred, model.n_classes, rejects=[]))
            t7 = clock()
            read, norm = t2 - t1, t4 - t3
            for k, dt in zip(("pack", "read", "decode", "normalise", "predict", "write"),
                             (t1 - t0, read, (t5 - t4) - read - norm, norm, t6 - t5, t7 - t6)):
                spent[k] += dt
    finally:
        shutil.rmtree(out.parent, ignore_errors=True)
    spent["list"] *= n / len(listing.entries)
    return {k: v * 1e6 / n for k, v in spent.items()}


# --- one whole run in a process of its own -------------------------------------------


def _run_case(case: str, archive: str, out: str, model: str | None, conn) -> None:
    """In a spawned process: one ingest or score run; sends (seconds, first chunk, n)."""
    from ..layout import DEFAULT_CHUNK_SIZE

    first: list[float] = []
    done = [0]
    t0 = time.perf_counter()

    def ingest_progress(n, total=None):
        done[0] += n
        if not first and done[0] >= DEFAULT_CHUNK_SIZE:  # the writer has a chunk
            first.append(time.perf_counter() - t0)

    def score_progress(n, total=None):
        if n and not first:  # called as each chunk is committed
            first.append(time.perf_counter() - t0)

    if case == "ingest":
        from ..ingestion import ingest

        r = ingest(archive, out, progress=ingest_progress)
        n = r.n_images
    else:
        from ..scoring.api import score

        r = score(archive, model=model, out=out, progress=score_progress)
        n = r.metrics["n_images"]
    seconds = time.perf_counter() - t0
    conn.send((seconds, first[0] if first else seconds, n,
               None if case == "ingest" else r.metrics.get("accuracy")))
    conn.close()


@dataclass
class Run:
    n: int
    seconds: float
    first_chunk: float
    peak_rss: int
    accuracy: float | None
    cpu: float = float("nan")  # the machine's busy CPU seconds during the run


def best_of(runs: list[Run]) -> Run:
    """The fastest of repeated runs (its time and first chunk), with the highest
    peak RSS and the least CPU."""
    fast = min(runs, key=lambda r: r.seconds)
    return Run(fast.n, fast.seconds, min(r.first_chunk for r in runs),
               max(r.peak_rss for r in runs), fast.accuracy, min(r.cpu for r in runs))


def run_case(case: str, archive: Path, out: Path, model: Path | None) -> Run:
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    shutil.rmtree(out, ignore_errors=True)
    proc = ctx.Process(target=_run_case, args=(case, str(archive), str(out),
                                               str(model) if model else None, child))
    c0 = machine_busy()
    with PeakRSS(include_self=False) as rss:
        proc.start()
        child.close()
        try:
            seconds, first, n, acc = parent.recv()
        except EOFError:
            proc.join()
            raise RuntimeError(f"bench case {case} on {archive} died (exit {proc.exitcode})")
        proc.join()
    cpu = machine_busy() - c0
    shutil.rmtree(out, ignore_errors=True)
    return Run(n, seconds, first, rss.peak, acc, cpu)


# --- models ---------------------------------------------------------------------------


def _models(cache: Path, mnist: Path) -> dict[str, Path]:
    from ..ingestion import ingest
    from ..training import train

    store = cache / "mnist.zarr"
    if not store.exists():
        ingest(mnist, store)
    out = {}
    for name in ("sgd", "sgd-kernel"):
        path = cache / f"model-{name}"
        if not path.exists():
            train(store, path, model=name)
        out[name] = path
    return out


def model_rate(model_path: Path, images: np.ndarray, repeats: int = 3) -> float:
    """Images/s of the model's own scoring on in-memory images, 2 threads.

    Each thread scores its half a block of ``SCORE_ROWS`` at a time, as
    scoring does (and as anyone scoring in memory would: the kernel
    models' work arrays for a whole half do not fit a cache).
    """
    from ..determinism import deterministic_scores
    from ..modelio import load_model
    from ..scoring.chunks import SCORE_ROWS

    model = load_model(model_path).model
    halves = [images[: len(images) // 2], images[len(images) // 2:]]

    def score(part: np.ndarray) -> None:
        for a in range(0, len(part), SCORE_ROWS):
            deterministic_scores(model, part[a:a + SCORE_ROWS], proba=False)

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda p: deterministic_scores(model, p[:256], proba=False), halves))
        t0 = time.perf_counter()
        for _ in range(repeats):
            list(pool.map(score, halves))
        return repeats * len(images) / (time.perf_counter() - t0)


def jpeg_accuracy(model_path: Path, members: list[bytes], labels: np.ndarray
                  ) -> dict[str, float]:
    """Accuracy of ``model`` on the JPEG members decoded as digitbatch does,
    at full size, and at 1/2 scale in the DCT."""
    from ..determinism import deterministic_scores
    from ..modelio import load_model
    from ..sources.decoders import decode_grey
    from ..sources.normalise import normalise

    model = load_model(model_path).model
    accs = {}
    for name, reduction in (("as digitbatch decodes", None), ("full size", 1), ("1/2 scale", 2)):
        images = normalise([decode_grey(m, reduction=reduction) for m in members])
        pred = deterministic_scores(model, images, proba=False)[0]
        accs[name] = float(np.mean(np.asarray(pred) == labels))
    return accs


# --- the run ----------------------------------------------------------------------------


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} cores"


def run(*, mnist_dir=None, workdir=None, png_sizes=(70_000, 210_000),
        jpeg_sizes=(20_000, 60_000), cases=CASES, repeat: int = 1) -> Iterator[str]:
    """The benchmark's lines (see the module docstring); each whole run is
    made ``repeat`` times and the fastest kept."""
    from ..sources.idx import load_idx

    mnist = find_mnist(mnist_dir)
    cache = Path(workdir) if workdir else cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    runs = Path(tempfile.mkdtemp(prefix="runs-", dir=cache))
    try:
        yield f"MNIST from {mnist}; archives and models cached in {cache}; {_load()}"
        data = load_idx(mnist)
        models = _models(cache, mnist)
        for kind, sizes in (("png", png_sizes), ("jpeg", jpeg_sizes)):
            if sizes:
                yield from _archive_rows(kind, sizes, data, models, cache, runs, cases, repeat)
        yield f"done; {_load()}"
    finally:
        shutil.rmtree(runs, ignore_errors=True)


def _archive_rows(kind, sizes, data, models, cache, runs, cases, repeat) -> Iterator[str]:
    small, big = sizes
    images, labels = _variants(data.images, data.labels, big)
    paths = {}
    for n in (small, big):
        paths[n] = cache / f"{kind}-{n}.tar"
        if not paths[n].exists():
            yield f"(writing {n:,} {kind.upper()} members to {paths[n]} ...)"
            build_tar(paths[n], images[:n], labels[:n], kind)
    what = ("28x28 grey PNG" if kind == "png"
            else f"{SCAN_SIDE}x{SCAN_SIDE} dark-on-white JPEG scans (q{JPEG_QUALITY})")
    yield ""
    yield f"== {what}, plain tar: {small:,} and {big:,} members =="
    members = read_members(paths[small])
    seconds, cpu = (min(x) for x in zip(*(pillow_ceiling(members) for _ in range(repeat))))
    ceiling = len(members) / seconds
    ceiling_cpu = cpu / len(members)  # the machine's CPU seconds per image
    yield (f"decode ceiling (members in memory, 2 processes of Pillow open/convert/load): "
           f"{ceiling:,.0f} img/s, {ceiling_cpu * 1e6:.1f} us of CPU per image  [{_load()}]")
    prof = member_profile(paths[small], models["sgd"])
    total = sum(prof.values())
    yield ("one member, one process (CPU us): " + ", ".join(
        f"{k} {v:.1f} ({v / total:.0%})" for k, v in prof.items()) + f"; total {total:.1f}")
    from ..scoring.chunks import SCORE_ROWS

    rates = {name: model_rate(path, data.images[:20_000]) for name, path in models.items()}
    yield (f"models' in-memory scoring, 2 threads, blocks of {SCORE_ROWS:,}: "
           + ", ".join(f"{k} {v:,.0f} img/s" for k, v in rates.items()))
    if kind == "jpeg":
        lab = labels[:small]
        for name, path in models.items():
            acc = jpeg_accuracy(path, members, lab)
            full = acc["full size"]
            yield (f"accuracy {name}: " + ", ".join(
                f"{k} {v:.4f} ({(v - full) * 100:+.2f} points)" for k, v in acc.items()))
    yield (f"{'case':22s} {'n small':>8s} {'s':>6s} {'n big':>8s} {'s':>6s} {'marginal':>12s} "
           f"{'x ceiling':>9s} {'fixed s':>7s} {'1st chunk':>11s} {'peak RSS':>10s} {'acc':>7s} "
           f"{'CPU us/img':>10s} {'x ceiling':>9s} {'ceiling':>8s}")
    for case in cases:
        model = models.get(case.split()[-1]) if case.startswith("score") else None
        both: dict[int, list[Run]] = {small: [], big: []}
        again: list[tuple[float, float]] = []
        for _ in range(repeat):  # (interleaved: a slow minute slows both sizes and the ceiling)
            again.append(pillow_ceiling(members))
            for n in (small, big):
                both[n].append(run_case(case, paths[n], runs / "out", model))
        r_small, r_big = best_of(both[small]), best_of(both[big])
        # the ratios are to the ceiling measured among this case's own runs
        c_seconds, c_cpu = (min(x) for x in zip(*again))
        ceiling, ceiling_cpu = len(members) / c_seconds, c_cpu / len(members)
        marginal = (r_big.n - r_small.n) / (r_big.seconds - r_small.seconds)
        cpu = (r_big.cpu - r_small.cpu) / (r_big.n - r_small.n)  # marginal, machine-wide
        fixed = r_small.seconds - r_small.n / marginal
        peak = max(r_small.peak_rss, r_big.peak_rss)
        limit = min(ceiling, rates[case.split()[-1]]) if case.startswith("score") else ceiling
        note = (f" ({marginal / limit:.2f}x the smaller of ceiling and model)"
                if case == "score sgd-kernel" else "")
        yield (f"{case:22s} {r_small.n:>8,d} {r_small.seconds:6.2f} {r_big.n:>8,d} "
               f"{r_big.seconds:6.2f} {marginal:>8,.0f}/s {marginal / ceiling:8.2f}x "
               f"{fixed:7.2f} {r_small.first_chunk:5.2f}/{r_big.first_chunk:4.2f}s "
               f"{r_small.peak_rss / 2**20:5.0f}/{r_big.peak_rss / 2**20:4.0f}M "
               f"{'' if r_big.accuracy is None else f'{r_big.accuracy:.4f}':>7s} "
               f"{cpu * 1e6:10.1f} {ceiling_cpu / cpu:8.2f}x {ceiling:>8,.0f}{note}"
               f"  [peak {peak / 2**20:.0f} MiB; {_load()}]")
