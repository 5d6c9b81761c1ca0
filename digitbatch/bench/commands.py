"""``digitbatch bench ...``: the benchmark commands (each prints its figures beside a
baseline measured in the same run)."""

from __future__ import annotations

import click

from .archive import CASES as ARCHIVE_CASES


@click.group()
def bench():
    """Benchmarks: images/s and peak memory beside a baseline, in one run."""


@bench.command("ingest")
@click.option("--mnist-dir", default=None, type=click.Path(),
              help="MNIST IDX directory (default $DIGITBATCH_MNIST_DIR or ../shared/data/mnist).")
@click.option("--workdir", default=None, type=click.Path(), help="Scratch directory (default: a temp dir).")
@click.option("--n-png", default=70_000, show_default=True, type=int, help="Images in the PNG tar.")
def bench_ingest(mnist_dir, workdir, n_png):
    """IDX -> Zarr and PNG tar -> Zarr, beside a single-process Pillow loop."""
    from .ingest import run

    for line in run(mnist_dir=mnist_dir, workdir=workdir, n_png=n_png):
        click.echo(line)


@bench.command("train")
@click.option("--mnist-dir", default=None, type=click.Path(), help="MNIST IDX directory.")
@click.option("--workdir", default=None, type=click.Path(), help="Scratch directory (default: a temp dir).")
@click.option("--cv", default=3, show_default=True, type=int, help="CV folds per catalogue model (0: none).")
@click.option("--no-reference", is_flag=True, help="Skip the walk-through's own runs (110 s).")
@click.option("--incremental-n", default=4_000_000, show_default=True, type=int,
              help="Images in the --incremental store (0: skip).")
@click.option("--models", "model_list", default=None,
              help="Comma-separated NAME[:FEATURES] to run (default: the whole catalogue).")
@click.option("--no-cv-speedup", is_flag=True, help="Skip the 5-fold CV speed-up measurement.")
def bench_train(mnist_dir, workdir, cv, no_reference, incremental_n, model_list, no_cv_speedup):
    """The catalogue on full MNIST beside the walk-through; CV speed-up; --incremental memory."""
    from .train import run

    models = None
    if model_list:
        models = [(m.split(":")[0], (m.split(":") + [None])[1]) for m in model_list.split(",")]
    for line in run(mnist_dir=mnist_dir, workdir=workdir, cv=cv, reference=not no_reference,
                    incremental_n=incremental_n, models=models, cv_speedup=not no_cv_speedup):
        click.echo(line)


@bench.command("score")
@click.option("--mnist-dir", default=None, type=click.Path(), help="MNIST IDX directory.")
@click.option("--workdir", default=None, type=click.Path(), help="Scratch directory (default: a temp dir).")
@click.option("--n", "n", default=4_000_000, show_default=True, type=int, help="Images in the big store.")
@click.option("--n-small", default=1_000_000, show_default=True, type=int,
              help="Images in the small store (memory flat in N; also the ceiling's input).")
@click.option("--profile-cost", is_flag=True,
              help="Only what each chunk's drift profile costs a scoring task, on MNIST (quick).")
def bench_score(mnist_dir, workdir, n, n_small, profile_cost):
    """Scoring against the bare-kernel ceiling, naive numpy and dask-ml."""
    from .score import run

    if profile_cost:
        from .profilecost import run as run_profile

        for line in run_profile(mnist_dir=mnist_dir, workdir=workdir):
            click.echo(line)
        return

    for line in run(mnist_dir=mnist_dir, workdir=workdir, n=n, n_small=n_small,
                    n_naive=min(n_small, 1_000_000)):
        click.echo(line)


@bench.command("export")
@click.option("--mnist-dir", default=None, type=click.Path(), help="MNIST IDX directory.")
@click.option("--workdir", default=None, type=click.Path(),
              help="Where the store, model and scored output are made once and kept "
                   "(default: $TMPDIR/digitbatch-bench-export).")
@click.option("--n", "n", default=4_000_000, show_default=True, type=int, help="Rows of the output.")
def bench_export(mnist_dir, workdir, n):
    """export to Parquet and CSV: rows/s and peak RSS beside whole-column pyarrow writes."""
    from .export import run

    for line in run(mnist_dir=mnist_dir, workdir=workdir, n=n):
        click.echo(line)


@bench.command("archive")
@click.option("--mnist-dir", default=None, type=click.Path(), help="MNIST IDX directory.")
@click.option("--workdir", default=None, type=click.Path(),
              help="Where archives and models are kept between runs "
                   "(default $DIGITBATCH_BENCH_CACHE or a folder in the temp dir).")
@click.option("--png-sizes", default="70000,210000", show_default=True,
              help="Members of the small and big PNG tar.")
@click.option("--jpeg-sizes", default="20000,60000", show_default=True,
              help="Members of the small and big JPEG-scan tar.")
@click.option("--only", type=click.Choice(["png", "jpeg"]), default=None,
              help="Only the PNG or only the JPEG archives.")
@click.option("--case", "cases", multiple=True, type=click.Choice(list(ARCHIVE_CASES)),
              help="Only these cases (repeatable; default all).")
@click.option("--repeat", default=1, show_default=True, type=click.IntRange(1, 10),
              help="Whole runs per case and size; the fastest is kept (a noisy machine).")
def bench_archive(mnist_dir, workdir, png_sizes, jpeg_sizes, only, cases, repeat):
    """Ingest and score ARCHIVE on PNG and JPEG tars against the Pillow decode ceiling."""
    from .archive import run

    sizes = {k: _sizes(s, k) for k, s in (("png", png_sizes), ("jpeg", jpeg_sizes))}
    for line in run(mnist_dir=mnist_dir, workdir=workdir,
                    png_sizes=sizes["png"] if only != "jpeg" else None,
                    jpeg_sizes=sizes["jpeg"] if only != "png" else None,
                    cases=cases or ARCHIVE_CASES, repeat=repeat):
        click.echo(line)


def _sizes(text: str, kind: str) -> tuple[int, int]:
    try:
        small, big = (int(x) for x in text.split(","))
    except ValueError:
        raise click.BadParameter(f"{text!r}: give two member counts, small then big, "
                                 f"e.g. 70000,210000", param_hint=f"--{kind}-sizes") from None
    if not 0 < small < big:
        raise click.BadParameter(f"{text!r}: the small size must be above 0 and below the big one",
                                 param_hint=f"--{kind}-sizes")
    return small, big
