"""The ``digitbatch history`` command: parse, call :func:`digitbatch.history.history`, print."""

from __future__ import annotations

import json

import click

from .history import DEFAULT_MIN_HISTORY, DEFAULT_THRESHOLD, DEFAULT_WINDOW


@click.command("history")
@click.argument("runs", nargs=-1, required=True, type=click.Path())
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Folder for the trend plots, history.html and history.json (created; its "
                   "history files replaced).")
@click.option("--window", type=int, default=DEFAULT_WINDOW, show_default=True,
              help="Outliers: compare each run with at most this many runs before it.")
@click.option("--min-history", type=int, default=DEFAULT_MIN_HISTORY, show_default=True,
              help="Outliers: judge a run only with at least this many runs before it.")
@click.option("--threshold", type=float, default=DEFAULT_THRESHOLD, show_default=True,
              help="Outliers: robust z (|x - median| / (1.4826 MAD), with a floor) above this.")
@click.option("--json", "as_json", is_flag=True, help="Print the history as JSON.")
def history(runs, out, window, min_history, threshold, as_json):
    """One row per scoring run of RUNS (run summaries NAME.run.json, scoring outputs
    PRED.zarr, or folders of them), oldest first; runs whose images/s, accuracy, reject
    rate or drift PSI are outliers against the runs before them are flagged with '!'."""
    from .history import history as run_history, table_lines

    r = run_history(runs, out=out, window=window, min_history=min_history,
                    threshold=threshold).to_dict()
    if as_json:
        click.echo(json.dumps(r, indent=2))
        return
    for line in table_lines(r):
        click.echo(line)
