"""``digitbatch promote``: the gate before a model goes live, and its rollback
(the library: :mod:`digitbatch.promotion`)."""

from __future__ import annotations

import json

import click

from .errors import PromotionRefusedError


@click.command()
@click.argument("candidate", required=False, type=click.Path())
@click.option("--models", required=True, type=click.Path(),
              help="Models folder: the promoted models, DIR/current (the live one) and "
                   "DIR/history.jsonl. Made if absent.")
@click.option("--gate", type=click.Path(), default=None,
              help="Labelled store both models are scored on (a model's own training store: "
                   "its test split only).")
@click.option("--tolerance", type=float, default=0.0, show_default=True,
              help="How far below the champion's accuracy the candidate may be (0.005: half a "
                   "point). With 0 only a significantly better candidate is promoted (a tie is "
                   "not a win).")
@click.option("--min-accuracy", type=float, default=None,
              help="An accuracy the candidate must reach on the gate (with or without a champion).")
@click.option("--alpha", type=float, default=0.05, show_default=True,
              help="Significance level of McNemar's test on the paired predictions.")
@click.option("--rollback", is_flag=True,
              help="Make the previous champion live again (no CANDIDATE, no --gate).")
@click.option("--json", "as_json", is_flag=True, help="Print the history record as JSON.")
def promote(candidate, models, gate, tolerance, min_accuracy, alpha, rollback, as_json):
    """Promote the model CANDIDATE into --models DIR if it beats the live one on --gate.

    Exit status 3 when the gate refuses it (both accuracies in the message);
    DIR/current then still names the champion. A scoring job given DIR/current
    (or DIR) resolves it once at its start and records that model's SHA-256.
    """
    from .promotion import describe, promote as run_promote, rollback as run_rollback

    if rollback:
        if candidate is not None or gate is not None:
            raise click.UsageError("--rollback takes only --models (no CANDIDATE, no --gate)")
        r = run_rollback(models=models)
    else:
        if candidate is None or gate is None:
            raise click.UsageError("give CANDIDATE and --gate STORE (or --rollback)")
        try:
            r = run_promote(candidate, models=models, gate=gate, tolerance=tolerance,
                            min_accuracy=min_accuracy, alpha=alpha)
        except PromotionRefusedError as exc:
            if as_json:
                click.echo(json.dumps(exc.record, indent=2))
            err = click.ClickException(f"{type(exc).__name__}: {exc}")
            err.exit_code = exc.exit_code
            raise err from exc
    if as_json:
        click.echo(json.dumps(r.to_dict(), indent=2))
        return
    for line in describe(r):
        click.echo(line)
