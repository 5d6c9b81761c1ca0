"""The ``digitbatch`` command line: parse, call one library function, print."""

from __future__ import annotations

import functools
import json
import signal
import sys
import threading

import click

from . import cli_common, cli_review, logs, summaries
from . import cli_promote
from .bench import commands as bench_commands
from . import cli_history
from .cli_observe import EXIT_STATUS, monitor_options, observed
from .errors import DigitbatchError, RunTerminated
from .progressbar import DEFAULT_INTERVAL
from .version import __version__

class _Group(click.Group):
    """Turns library errors into clean one-line failures (exit code 1), SIGTERM into a
    clean stop (exit code 143) and Ctrl-C into exit code 130."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except DigitbatchError as exc:
            err = click.ClickException(f"{type(exc).__name__}: {exc}")
            err.exit_code = getattr(exc, "exit_code", 1)  # (DriftAlarmError: 3)
            raise err from exc
        except RunTerminated as exc:
            click.echo(f"Terminated: {exc or 'SIGTERM'}; what was committed stays "
                       f"(rerun with --resume to continue)", err=True)
            ctx.exit(RunTerminated.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(130)
        except OSError as exc:  # (a file-system fault no library function named)
            raise cli_common.stray_os_error(exc) from exc


def _terminate(signum, frame) -> None:
    raise RunTerminated(f"signal {signal.Signals(signum).name}")


_PEM = click.Path(exists=True, dir_okay=False)
_CLUSTER_OPTIONS = (
    click.option(
        "--scheduler", default=None, metavar="ADDRESS",
        help="Dask scheduler: 'local' (default: a LocalCluster on 127.0.0.1), "
             "'synchronous', or an address such as tcp://host:8786 or tls://host:8786. "
             "Env: DIGITBATCH_SCHEDULER, then Dask's scheduler-address config."),
    click.option("--tls-ca-file", type=_PEM, default=None,
                 help="CA certificate (PEM) of a tls:// cluster (default: Dask's TLS config)."),
    click.option("--tls-cert", type=_PEM, default=None,
                 help="This client's certificate (PEM) for a tls:// cluster."),
    click.option("--tls-key", type=_PEM, default=None,
                 help="The certificate's private key (PEM), unless it is in --tls-cert."),
)


def cluster_options(f=None, *, check: bool = True):
    """Add ``--scheduler`` and ``--tls-*``; the command receives one ``scheduler`` value.

    ``scheduler`` is the address (or None) without TLS options, else a
    :class:`digitbatch.cluster.ClusterSpec`; the library takes either. With
    ``check``, TLS options are checked before the command does any work
    (``run`` checks them once merged with its spec's ``[cluster]``).
    """
    if f is None:
        return functools.partial(cluster_options, check=check)

    @functools.wraps(f)
    def wrapper(*args, scheduler=None, tls_ca_file=None, tls_cert=None, tls_key=None, **kwargs):
        from .cluster import ClusterSpec, from_options, resolve_scheduler

        spec = from_options(scheduler, tls_ca_file=tls_ca_file, tls_cert=tls_cert, tls_key=tls_key)
        if check and isinstance(spec, ClusterSpec):
            resolve_scheduler(spec)  # e.g. TLS files but no tls:// scheduler
            spec.security()
        return f(*args, scheduler=spec, **kwargs)

    for option in reversed(_CLUSTER_OPTIONS):
        wrapper = option(wrapper)
    return wrapper


@click.group(cls=_Group, epilog=EXIT_STATUS)
@click.version_option(__version__, prog_name="digitbatch")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True,
              help="Only warnings and errors on stderr, and no progress bar (scheduled runs).")
@click.option("--log-file", type=click.Path(dir_okay=False), default=None,
              help="Also write the log (INFO and up, even with --quiet) to this file.")
@click.option("--log-format", type=click.Choice(logs.FORMATS), default="text",
              show_default=True, envvar="DIGITBATCH_LOG_FORMAT",
              help="json: one JSON object per line (time, level, logger, message, run_id, "
                   "step, input, images, rate ...). Env: DIGITBATCH_LOG_FORMAT.")
@click.pass_context
def main(ctx: click.Context, verbose: int, quiet: bool, log_file: str | None,
         log_format: str) -> None:
    """Handwritten-digit recognition at archive scale: ingest, train, score."""
    logs.setup(verbose=verbose, quiet=quiet, log_file=log_file, fmt=log_format)
    ctx.with_resource(logs.log_context(run_id=logs.new_run_id()))
    ctx.obj = {"quiet": quiet, "log_format": log_format, "verbose": verbose, "log_file": log_file}
    if threading.current_thread() is threading.main_thread():
        # Kubernetes, SLURM and docker stop send SIGTERM before SIGKILL: unwind
        # (release the lock, keep what was committed, write the run summary)
        signal.signal(signal.SIGTERM, _terminate)


def _echo(result: dict, lines, as_json: bool = False) -> None:
    """Print a result: as JSON, or as the lines its summaries formatter makes."""
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    for line in lines(result):
        click.echo(line)


def _progress(label: str, unit: str = "images"):
    """Progress: a bar on a terminal (not with --quiet or JSON logs), else log lines."""
    from .progressbar import Progress

    obj = click.get_current_context().find_root().obj or {}
    tty = sys.stderr.isatty() and not obj.get("quiet") and obj.get("log_format") != "json"
    return Progress(label, mode="bar" if tty else "log", unit=unit,
                    interval=obj.get("progress_interval", DEFAULT_INTERVAL))


@main.command()
@click.argument("source")
@click.option("--out", required=True, type=click.Path(), help="Store to create (STORE.zarr).")
@click.option("--kind", type=click.Choice(["idx", "openml", "sample", "images"]), default=None,
              help="Force a reader instead of detecting it from the content.")
@click.option("--labels", type=click.Path(), default=None,
              help="CSV with columns key,label that labels images by key.")
@click.option("--only-labelled", is_flag=True,
              help="Keep only the images --labels gives a label (a reviewed review.csv).")
@click.option("--chunk-size", type=int, default=None, help="Images per chunk (default 32768).")
@click.option("--codec", type=click.Choice(["lz4", "none"]), default="lz4", show_default=True,
              help="Image chunks LZ4-compressed, or raw: about 5x the disk, scored as they lie.")
@click.option("--overwrite", is_flag=True, help="Replace an existing store once the new one is complete.")
@click.option("--max-rejects", type=int, default=None,
              help="Fail when more inputs than this are rejected (default 10).")
@click.option("--data-home", type=click.Path(), default=None,
              help="Download cache for the openml source.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@cluster_options
@observed("ingest")
def ingest(source, out, kind, labels, only_labelled, chunk_size, codec, overwrite, max_rejects,
           data_home, as_json, scheduler):
    """Read SOURCE into a chunked Zarr store.

    SOURCE is an IDX directory, an image directory, a .tar/.tar.gz/.zip of
    images, or a named source: 'sample' (5,000 embedded digits) or 'openml'
    (fetch_openml('mnist_784')).
    """
    from .ingestion import DEFAULT_MAX_REJECTS, ingest as run
    from .layout import DEFAULT_CHUNK_SIZE

    with _progress("ingest") as progress:
        r = run(source, out, kind=kind, labels=labels,
                chunk_size=chunk_size or DEFAULT_CHUNK_SIZE, overwrite=overwrite,
                max_rejects=DEFAULT_MAX_REJECTS if max_rejects is None else max_rejects,
                data_home=data_home, scheduler=scheduler, progress=progress, codec=codec,
                only_labelled=only_labelled)
    _echo(r.to_dict(), summaries.ingest_lines, as_json)
    return r


@main.command()
@click.argument("store", type=click.Path())
@click.option("--out", required=True, type=click.Path(), help="Model directory to create.")
@click.option("--model", "name", default="sgd", show_default=True,
              help="Catalogue model: sgd, sgd-kernel, sgd-patches, detect-0 ... detect-9 "
                   "(see `digitbatch models`).")
@click.option("--features", type=click.Choice(["pixels", "deskew", "kernel", "patches"]),
              default=None,
              help="Feature step for sgd and detect-DIGIT (default pixels).")
@click.option("--seed", default=42, show_default=True, type=int, help="Shuffle and model seed.")
@click.option("--cv", type=int, default=None, help="Also cross-validate with K folds on the cluster.")
@click.option("--search", is_flag=True, help="Grid-search hyperparameters by CV first.")
@click.option("--incremental", is_flag=True,
              help="Fit sgd by partial_fit over store chunks (stores larger than memory).")
@click.option("--epochs", type=int, default=5, show_default=True,
              help="Passes over the store with --incremental.")
@click.option("--overwrite", is_flag=True, help="Replace an existing model directory.")
@click.option("--extra", multiple=True, type=click.Path(), metavar="STORE2",
              help="Add this store's labelled rows to the training rows (e.g. `subset` of a "
                   "review.csv). Repeatable.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@cluster_options
@observed("train")
def train(store, out, name, features, seed, cv, search, incremental, epochs, overwrite, extra,
          as_json, scheduler):
    """Fit a catalogue model on STORE's train rows and test it on its test rows."""
    from .training import train as run

    cli_common.only_with("epochs", "incremental", incremental)
    with _progress("train", "chunks" if incremental else "fits") as progress:
        r = run(store, out, model=name, features=features, seed=seed, cv=cv, search=search,
                incremental=incremental, epochs=epochs, scheduler=scheduler,
                overwrite=overwrite, progress=progress, extra=list(extra))
    _echo(r.to_dict(), summaries.train_lines, as_json)
    return r


@main.command()
@click.argument("store", type=click.Path())
@click.option("--model", required=True, type=click.Path(), help="Model directory.")
@click.option("--out", required=True, type=click.Path(), help="Prediction group to create.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run into OUT.")
@click.option("--proba", is_flag=True, help="Also write class probabilities.")
@click.option("--break-lock", is_flag=True, help="Remove the lock of a run that died.")
@click.option("--labels", type=click.Path(),
              help="CSV key,label giving (or replacing) the labels of an archive INPUT.")
@click.option("--task-timeout", type=click.FloatRange(min=0), default=None,
              help="On a Dask cluster, seconds a chunk may run before it is stopped (its "
                   "worker restarted; given, a LocalCluster has processes). Default 1800; 0: none.")
@click.option("--lock-ttl", type=click.FloatRange(min=1), default=None,
              help="Seconds of this run's lease on OUT (renewed every quarter of it); a lock "
                   "not renewed for this long is taken over by the next run (default 120).")
@click.option("--ledger", type=click.Path(), default=None,
              help="With {input} in OUT: the ledger of inputs scored (default _ledger.jsonl "
                   "beside the outputs).")
@click.option("--max-inputs", type=click.IntRange(min=1), default=None,
              help="With {input} in OUT: score at most this many new inputs this run.")
@click.option("--rescore-changed", is_flag=True,
              help="With {input} in OUT: score an input that changed since it was scored "
                   "again, into a new output (default: name it and leave it).")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
@monitor_options
@cluster_options
@observed("score")
def score(store, model, out, resume, proba, break_lock, labels, task_timeout, lock_ttl, ledger,
          max_inputs, rescore_changed, as_json, fail_on, psi_warn, psi_alarm, scheduler):
    """Predict every image of STORE (a store, or an image archive or folder) with MODEL
    into OUT, with metrics.json. Paths may be s3:// (fsspec) URLs.

    With {input} in OUT, STORE is a glob ('incoming/*.tar') and only the inputs the
    ledger does not hold yet are scored, each into OUT with {input} replaced by its
    name: a nightly run over a folder or bucket that archives keep landing in.
    """
    from .drift import raise_on_alarm
    from .scoring.api import score as run
    from .scoring.output import open_metrics

    extra = {} if task_timeout is None else {"task_timeout": task_timeout}
    if lock_ttl is not None:
        extra["lock_ttl"] = lock_ttl
    extra.update({k: v for k, v in (("psi_warn", psi_warn), ("psi_alarm", psi_alarm))
                  if v is not None})
    if "{input}" in out:
        from .errors import InputsFailedError
        from .incremental import score_inputs

        with _progress("score") as progress:
            r = score_inputs(store, model=model, out=out, ledger_path=ledger,
                             max_inputs=max_inputs, rescore_changed=rescore_changed,
                             scheduler=scheduler, proba=proba, break_lock=break_lock,
                             labels=labels, progress=progress, **extra)
        _echo(r.to_dict(), summaries.inputs_lines, as_json)
        if r.failed:
            err = InputsFailedError(f"{len(r.failed)} inputs failed (recorded in {r.ledger}; "
                                    f"tried again next run): "
                                    + "; ".join(f"{f['input']}: {f['error']['type']}"
                                                for f in r.failed))
            err.result = r  # (for the metrics file: the inputs scored and failed)
            raise err
        raise_on_alarm([(s["out"], open_metrics(s["out"])) for s in r.scored], fail_on,
                       result=r)
        return r
    with _progress("score") as progress:
        r = run(store, model=model, out=out, scheduler=scheduler, resume=resume, proba=proba,
                break_lock=break_lock, labels=labels, progress=progress, **extra)
    _echo(r.metrics, functools.partial(summaries.score_lines,
                                       already_complete=r.already_complete), as_json)
    raise_on_alarm([(r.out, r.metrics)], fail_on, result=r)  # (exit status 3, all written)
    return r


@main.command()
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("--model", required=True, type=click.Path(), help="Model directory.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per file.")
def predict(images, model, as_json):
    """Predict the digit of each IMAGE file (normalised as ingest does)."""
    from .modelio import load_model
    from .predict import describe, predict_files

    loaded = load_model(model)
    results = predict_files(list(images), model=loaded)
    if as_json:
        click.echo(json.dumps([r.to_dict() for r in results], indent=2))
    else:
        digit = loaded.model.binary_digit
        for r in results:
            click.echo(describe(r, binary_digit=digit))
    if any(r.error for r in results):
        sys.exit(1)


@main.command()
@click.argument("store", type=click.Path())
@click.option("--index", type=int, default=None,
              help="Row to draw (36001 is the walk-through's 2); with --grid the first row "
                   "considered (default 0).")
@click.option("--out", default=None, type=click.Path(),
              help="PNG to write (default digit.png, or digits.png with --grid).")
@click.option("--grid", is_flag=True, help="Draw a page of digits instead of one.")
@click.option("--label", type=click.IntRange(-1, 9), default=None,
              help="With --grid: only rows with this label (-1: unlabelled rows).")
@click.option("--count", type=int, default=100, show_default=True,
              help="With --grid: digits on the page (at most 400).")
def show(store, index, out, grid, label, count):
    """Draw one digit of STORE as the walk-through does, or a page of them.

    `--grid --label 3 --count 100` shows the first 100 rows labelled 3;
    `--grid --index I` the 100 rows from row I on.
    """
    from .plots import show_digit, show_grid

    if grid:
        r = show_grid(store, index=index or 0, label=label, count=count,
                      out=out or "digits.png")
        click.echo(f"{r['rows']} rows ({r['first']}..{r['last']}) -> {r['out']}")
        return
    if label is not None:
        raise click.BadParameter("only with --grid (--grid --label 3: a page of 3s)",
                                 param_hint="'--label'")
    if index is None:
        raise click.BadParameter("required without --grid", param_hint="'--index'")
    r = show_digit(store, index=index, out=out or "digit.png")
    label = "unknown" if r["label"] is None else r["label"]
    click.echo(f"row {r['index']} ({r['key']}), label {label} -> {r['out']}")


@main.command()
@click.argument("pred", type=click.Path())
@click.option("--out", required=True, type=click.Path(),
              help="Directory for the PNGs and report.html (created; its report files replaced).")
@click.option("--store", type=click.Path(), default=None,
              help="The run's input (store, or archive scored directly), for the galleries' "
                   "images, when it moved (default: the path in metrics.json).")
@click.option("--top", type=int, default=36, show_default=True,
              help="Digits in each gallery (at most 400).")
@click.option("--review", type=int, default=200, show_default=True,
              help="Rows in review.csv / review.html, the most doubtful first (0: none).")
def report(pred, out, store, top, review):
    """Figures and a self-contained report.html of the scoring output PRED, and
    review.csv / review.html: the rows a person should label."""
    from .report import write_report

    r = write_report(pred, out=out, store=store, top_k=top, review=review)
    if r.confusion_text:
        click.echo(r.confusion_text)
    click.echo(f"wrote {len(r.files)} files ({r.n_wrong:,} mistakes) -> {r.html}")


@main.command()
@click.argument("pred", type=click.Path())
@click.option("--out", required=True, type=click.Path(),
              help="FILE.parquet or FILE.csv to write: the suffix chooses the format.")
@click.option("--proba", is_flag=True,
              help="Also the columns proba_0 .. proba_K-1 (PRED must have been scored with --proba).")
@click.option("--store", type=click.Path(), default=None,
              help="The store a store input's labels come from, when it moved (default: the "
                   "path in metrics.json; its checksum must match).")
@click.option("--no-labels", is_flag=True, help="Leave the label column out; the input is not read.")
@click.option("--overwrite", is_flag=True, help="Replace FILE (once the new one is complete).")
def export(pred, out, proba, store, no_labels, overwrite):
    """Write the finished scoring output PRED as a table for pandas, DuckDB or a
    warehouse: columns key, pred, margin, label; the run id, model SHA-256 and
    input checksum as Parquet metadata, or in FILE.csv.json beside a CSV.

    Exit status: 0 written; 1 a failure (an unfinished PRED, FILE exists, the
    labels' store missing: nothing is written); 2 bad usage.
    """
    from .export import export_predictions

    r = export_predictions(pred, out=out, proba=proba, store=store, labels=not no_labels,
                           overwrite=overwrite)
    click.echo(summaries.export_lines(r.to_dict())[0])


@main.command()
def models():
    """List the model catalogue."""
    from .models import CATALOGUE

    for spec in CATALOGUE.values():
        click.echo(f"{spec.name:13s} {spec.summary}")


@main.command()
@click.option("--workdir", default="demo-output", show_default=True, type=click.Path(),
              help="Where the demo's store, model and predictions go (replaced).")
@cluster_options
def demo(workdir, scheduler):
    """The main job end to end on the embedded sample: ingest, train, score."""
    from .demo import run_demo

    r = run_demo(workdir, scheduler=scheduler)
    ing, tr, sc = r["ingest"], r["train"], r["score"]
    click.echo(f"1. ingest: {ing.n_images} sample images -> {ing.path}")
    click.echo("2. train:")
    _echo(tr.to_dict(), summaries.train_lines)
    click.echo(f"3. score: every row, train and test -> {sc.out}")
    _echo(sc.metrics, summaries.score_lines)


@main.command("run")
@click.argument("job", type=click.Path())
@click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
              help="Replace or add one key of the spec, e.g. --set train.cv=3 (VALUE is read "
                   "as TOML, else as a string). Repeatable.")
@click.option("--check", is_flag=True, help="Check the spec and print the plan; run nothing.")
@click.option("--break-lock", is_flag=True,
              help="The score step takes its output's lock even from a run that looks live.")
@click.option("--json", "as_json", is_flag=True, help="Print the run summary as JSON.")
@monitor_options
@cluster_options(check=False)
@observed("run")
def run_cmd(job, overrides, check, break_lock, as_json, fail_on, psi_warn, psi_alarm, scheduler,
            metrics_file):
    """Run the job spec JOB (TOML): its ingest, train, score and report steps.

    The whole spec is checked before anything runs: an invalid spec exits
    with code 2 and runs nothing; a failed step exits with code 1. The run
    summary (steps, durations, outcome, metrics paths, error) is written to
    the spec's [job] summary, by default WORKDIR/NAME.run.json. See jobs/.
    """
    from .errors import JobSpecError
    from .jobs import describe, load_job, run_job

    if break_lock:
        overrides = (*overrides, "score.break_lock=true")
    if metrics_file is not None:  # (as [job] metrics_file; run_job writes it)
        overrides = (*overrides, f"job.metrics_file={metrics_file}")
    for key, value in (("fail_on", fail_on), ("warn", psi_warn), ("alarm", psi_alarm)):
        if value is not None:  # (as [monitor])
            overrides = (*overrides, f"monitor.{key}={value}")
    try:
        spec = load_job(job, overrides)
    except JobSpecError as exc:
        err = click.ClickException(f"JobSpecError: {exc}")
        err.exit_code = 2
        raise err from exc
    click.get_current_context().find_root().obj["metrics_by_job"] = True  # (or none: --check)
    if check:
        for line in describe(spec):
            click.echo(line)
        click.echo(f"{job}: spec OK; the run summary would go to {spec.summary}"
                   + (f", the metrics file to {spec.metrics_file}" if spec.metrics_file else ""))
        return
    summary = run_job(spec, scheduler=scheduler, progress=_progress)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    for step in summary["steps"]:
        metrics = f"; metrics {step['metrics']}" if step.get("metrics") else ""
        click.echo(f"{step['name']}: {step['outcome']} in {step['seconds']:.2f} s{metrics}")
        for line in summaries.step_lines(step["name"], step.get("result") or {}):
            click.echo(f"  {line}")
    click.echo(f"job {summary['job']} succeeded in {summary['seconds']:.2f} s; "
               f"summary -> {spec.summary}")


main.add_command(bench_commands.bench)
main.add_command(cli_history.history)
main.add_command(cli_promote.promote)
main.add_command(cli_review.subset)
cli_common.add_log_options(main)  # (-q and -v after the command name too)


if __name__ == "__main__":  # pragma: no cover
    main()
