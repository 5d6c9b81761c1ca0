"""The options of the commands a scheduler runs (``--progress-interval``, ``--metrics-file``;
``--fail-on``, ``--psi-warn``, ``--psi-alarm``) and the exit statuses they end with.

:func:`observed` adds the first two to ``ingest``, ``train``, ``score`` and ``run``,
:func:`monitor_options` the drift ones to ``score`` and ``run``.
``observed`` keeps the interval for the CLI's progress display and writes the metrics
file (:mod:`digitbatch.metricsfile`) when the command ends, whatever the
outcome, with the exit status the CLI is about to exit with.
"""

from __future__ import annotations

import functools
import logging
import time

import click

from . import metricsfile as mf
from .errors import DigitbatchError
from .logs import log_context
from .progressbar import DEFAULT_INTERVAL

log = logging.getLogger(__name__)

# the main group's --help epilog; the README's "Exit status" table says the same
EXIT_STATUS = """\b
Exit status (every command):
  0    success
  1    a failure (a named error, printed on one line; a failed job step)
  2    bad usage: an unknown option, a bad value, an invalid job spec
  3    a quality alarm: drift in alarm with --fail-on drift-alarm (after every
       output is written); promote refused the candidate (the champion stays)
  130  interrupted (Ctrl-C);  143: terminated (SIGTERM)"""


def observed(command: str):
    """Add ``--progress-interval`` and ``--metrics-file`` to ``command``.

    The command returns its result; the metrics file (:mod:`digitbatch.metricsfile`)
    is written from it, or from the failure, whatever the outcome (``run``:
    by :func:`digitbatch.jobs.run_job`, once the spec is loaded).
    """
    def deco(f):
        @functools.wraps(f)
        def wrapper(*args, progress_interval, metrics_file, **kwargs):
            obj = click.get_current_context().find_root().obj
            obj["progress_interval"] = progress_interval
            if metrics_file is not None:
                try:
                    metrics_file = mf.check_path(metrics_file)
                except DigitbatchError as exc:
                    raise click.BadParameter(str(exc), param_hint="'--metrics-file'") from exc
            if command == "run":
                kwargs["metrics_file"] = metrics_file
            else:  # (a job names each step itself)
                click.get_current_context().with_resource(log_context(step=command))
            if metrics_file is None:
                return f(*args, **kwargs)
            started, failure, result = time.time(), None, None
            try:
                result = f(*args, **kwargs)
                return result
            except BaseException as exc:
                failure = exc
                raise
            finally:
                if not obj.get("metrics_by_job"):  # (run: a spec that did not load)
                    figures = mf.command_figures(
                        command, result if result is not None else getattr(failure, "result", None),
                        job=kwargs.get("job"), path=metrics_file,
                        status=mf.exit_status(failure), started=started, ended=time.time())
                    _write_metrics(metrics_file, figures, failure)

        wrapper.__doc__ = (f.__doc__ or "").rstrip() + (
            "\n\n    Exit status: 0 success, 1 a failure, 2 bad usage (`digitbatch --help` "
            "lists them all).")
        wrapper = click.option(
            "--metrics-file", type=click.Path(dir_okay=False), default=None,
            help="Write the run's figures here at its end, success or failure: Prometheus "
                 "text for node_exporter's textfile collector (NAME.prom).")(wrapper)
        return click.option(
            "--progress-interval", type=click.FloatRange(min=0, min_open=True),
            default=DEFAULT_INTERVAL, show_default=True, envvar="DIGITBATCH_PROGRESS_INTERVAL",
            help="Seconds between progress lines in the log when stderr is not a terminal "
                 "(scheduled runs). Env: DIGITBATCH_PROGRESS_INTERVAL.")(wrapper)
    return deco


def _write_metrics(path, figures, failure) -> None:
    """Write the metrics file; a failure to write it fails a run that succeeded."""
    try:
        mf.write(path, figures)
    except DigitbatchError:
        if failure is None:
            raise
        log.exception("the metrics file %s was not written", path)


_MONITOR_OPTIONS = (
    click.option("--fail-on", type=click.Choice(["never", "drift-alarm"]), default=None,
                 help="drift-alarm: exit with status 3, after every output is written, when "
                      "the drift of a scored output is in alarm (default never; a job spec's "
                      "[monitor] fail_on)."),
    click.option("--psi-warn", type=click.FloatRange(min=0, min_open=True), default=None,
                 help="PSI from which a drift signal is 'warn' (default 0.1)."),
    click.option("--psi-alarm", type=click.FloatRange(min=0, min_open=True), default=None,
                 help="PSI from which a drift signal is 'alarm' (default 0.25)."),
)


def monitor_options(f):
    """Add ``--fail-on``, ``--psi-warn`` and ``--psi-alarm`` (:mod:`digitbatch.drift`)."""
    for option in reversed(_MONITOR_OPTIONS):
        f = option(f)
    return f
