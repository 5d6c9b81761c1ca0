"""``digitbatch subset``: the review loop's command (the report writes review.csv; a person
labels it; ``subset`` makes a store of those rows for ``train --extra``)."""

from __future__ import annotations

import json

import click


@click.command()
@click.argument("store", type=click.Path())
@click.option("--labels", required=True, type=click.Path(),
              help="key,label CSV: a report's review.csv with its label column filled in.")
@click.option("--out", required=True, type=click.Path(), help="Store to create (STORE2.zarr).")
@click.option("--chunk-size", type=int, default=None, help="Images per chunk (default STORE's).")
@click.option("--overwrite", is_flag=True,
              help="Replace an existing store once the new one is complete.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def subset(store, labels, out, chunk_size, overwrite, as_json):
    """Write the rows of STORE that the labels file gives a digit 0-9, with that label,
    into a new store: add it to training with `digitbatch train ... --extra OUT`.

    Rows whose label cell is empty are left out; a label that is not a digit
    fails the command (nothing is written). An archive scored directly:
    `digitbatch ingest ARCHIVE --labels review.csv --only-labelled --out OUT`.
    """
    from .subset import subset as run

    r = run(store, labels=labels, out=out, overwrite=overwrite, chunk_size=chunk_size)
    if as_json:
        click.echo(json.dumps(r.to_dict(), indent=2))
        return
    click.echo(f"wrote {r.n_images:,} labelled rows of {r.store} ({r.n_relabelled:,} relabelled) "
               f"-> {r.path}")
    if r.labels_unmatched:
        click.echo(f"{r.labels_unmatched:,} labelled keys of {r.labels_file} matched no row")
