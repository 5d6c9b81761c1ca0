"""The scoring stage: map a saved model over a store's chunks or an archive's members.

One file per responsibility (docs/architecture.md follows one chunk through them):

- :mod:`.api`: ``score()``, the one public entry: validate, plan, lock, run, reduce, finalize;
- :mod:`.plan`: the typed plan of a run (store chunks or archive slot chunks);
- :mod:`.tasks`: the chunk task type, the work the runner maps, batching;
- :mod:`.chunks`: the per-chunk worker functions (read, predict, write, commit);
- :mod:`.runner`: the Dask wiring (retries, time limits, failed chunks);
- :mod:`.output`: PRED.zarr (arrays, staging, commits, metrics.json, ``_SUCCESS``);
- :mod:`.lock`: the output's run lock;
- :mod:`.record`: chunk counts, their reduction, and the metrics.json record.
"""
