"""The log: its setup for the CLI (text or JSON lines), and the structured fields of a run.

Library modules log with :mod:`logging` and never print. Structured fields
travel two ways: a call site passes ``extra={"images": n, ...}``, and
:func:`log_context` adds fields (``run_id``, ``step``, ``input``) to every
record logged inside it, in this thread and the threads it starts with the
context copied (:func:`contextvars.copy_context`). :func:`setup` (the CLI's
``-v``, ``-q``, ``--log-file``, ``--log-format``) installs the handlers:

* ``text``: ``TIME LEVEL LOGGER: MESSAGE``, as before;
* ``json``: one JSON object per line: ``time`` (ISO 8601, UTC), ``level``,
  ``logger``, ``message``, every structured field, and ``exception`` (the
  traceback as a string) when there is one.

On a terminal the stderr handler clears the progress bar's line before it
writes a record and redraws the bar after it, so the two never share a line.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as _dt
import json
import logging
import sys
import uuid
from collections.abc import Iterator

from . import progressbar

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
NOISY = ("distributed", "tornado", "asyncio", "bokeh", "numba", "matplotlib")

_FORMAT = ["text"]  # the format setup() installed: what worker_environ() passes on
_FIELDS: contextvars.ContextVar[dict] = contextvars.ContextVar("digitbatch_log_fields",
                                                                default={})
# what every LogRecord has: anything else on a record is a structured field
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def new_run_id() -> str:
    """A fresh run id: 32 hex digits, as a scoring output's lock token."""
    return uuid.uuid4().hex


@contextlib.contextmanager
def log_context(**fields) -> Iterator[dict]:
    """Add ``fields`` to every record logged inside the block (None values are dropped)."""
    merged = {**_FIELDS.get(), **{k: v for k, v in fields.items() if v is not None}}
    token = _FIELDS.set(merged)
    try:
        yield merged
    finally:
        _FIELDS.reset(token)


def context_fields() -> dict:
    """The fields :func:`log_context` adds here and now."""
    return dict(_FIELDS.get())


def fields_of(record: logging.LogRecord) -> dict:
    """A record's structured fields: its ``extra=`` and its context's."""
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


class ContextFilter(logging.Filter):
    """Copies the :func:`log_context` fields onto each record (``extra=`` wins)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in _FIELDS.get().items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        doc = {"time": _dt.datetime.fromtimestamp(record.created, _dt.timezone.utc)
               .isoformat(timespec="milliseconds"),
               "level": record.levelname, "logger": record.name,
               "message": record.getMessage()}
        for key, value in fields_of(record).items():
            doc.setdefault(key, value)
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            doc["stack"] = self.formatStack(record.stack_info)
        return json.dumps(doc, default=str, ensure_ascii=False)


class BarAwareHandler(logging.StreamHandler):
    """A stream handler that moves a progress bar on its stream out of the way."""

    _bar_guarded = True  # (progressbar leaves it as it is)

    def emit(self, record: logging.LogRecord) -> None:
        with progressbar.cleared(self.stream):
            super().emit(record)


def worker_environ() -> dict:
    """Environment for the worker processes a LocalCluster starts (cluster.py).

    With JSON logs their records (Dask's own warnings, a task's) are JSON lines
    too: Dask reads ``DASK_LOGGING`` at import as a :func:`logging.config.dictConfig`.
    """
    if _FORMAT[0] != "json":
        return {}
    config = {"version": 1, "disable_existing_loggers": False,
              "formatters": {"json": {"()": f"{__name__}.JsonFormatter"}},
              "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "json",
                                      "stream": "ext://sys.stderr"}},
              "root": {"level": "WARNING", "handlers": ["stderr"]}}
    return {"DASK_LOGGING": repr(config)}


def _formatter(fmt: str) -> logging.Formatter:
    return JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT)


def setup(*, verbose: int = 0, quiet: bool = False, log_file: str | None = None,
          fmt: str = "text", stream=None) -> None:
    """Install the root handlers: stderr (and ``log_file``), in ``fmt``.

    ``quiet``: only warnings and errors on stderr; the file keeps INFO even
    then, so a scheduled run leaves a record. As :func:`logging.basicConfig`,
    no stderr handler is added when the root logger has handlers of someone
    else's (a program that embeds the CLI, pytest). Handlers an earlier call
    installed are replaced.
    """
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {FORMATS}, got {fmt!r}")
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    _FORMAT[0] = fmt
    root = logging.getLogger()
    for h in [h for h in root.handlers if getattr(h, "_digitbatch", False)]:
        root.removeHandler(h)
        h.close()
    handlers = []
    if not root.handlers:
        handlers.append(BarAwareHandler(stream or sys.stderr))
        handlers[-1].setLevel(level)
        root.setLevel(level)
    if log_file:
        handlers.append(logging.FileHandler(log_file))
        handlers[-1].setLevel(min(level, logging.INFO))
    for h in handlers:
        h._digitbatch = True
        h.setFormatter(_formatter(fmt))
        h.addFilter(ContextFilter())
        root.addHandler(h)
    logging.getLogger("digitbatch").setLevel(
        logging.INFO if log_file and level > logging.INFO else level)
    for noisy in NOISY:
        logging.getLogger(noisy).setLevel(logging.ERROR if quiet else logging.WARNING)
