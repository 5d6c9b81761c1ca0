"""digitbatch's version, recorded in every store, model and output it writes."""

__version__ = "0.1.0"
