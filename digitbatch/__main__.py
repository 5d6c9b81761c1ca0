"""``python -m digitbatch``: the command line (digitbatch.cli)."""

from .cli import main

main(prog_name="digitbatch")
