"""The README's "Command reference", generated from the CLI's own help text.

``python -m digitbatch.docs`` prints the section; ``python -m digitbatch.docs
--write`` replaces it (everything from its heading to the end of the file) in
README.md. ``tests/test_docs.py`` fails when the README and the CLI disagree.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import click

HEADING = "## Command reference"
README = Path(__file__).resolve().parents[1] / "README.md"
REGENERATE = "python -m digitbatch.docs --write"
# A fixed width, so the text does not depend on the terminal that generates it.
WIDTH = 80


def _walk(cmd: click.Command, ctx: click.Context):
    yield cmd, ctx
    if isinstance(cmd, click.Group):
        for name in cmd.list_commands(ctx):
            sub = cmd.get_command(ctx, name)
            if sub is None or sub.hidden:
                continue
            yield from _walk(sub, click.Context(sub, info_name=name, parent=ctx,
                                                terminal_width=WIDTH, max_content_width=WIDTH))


def command_reference() -> str:
    """The "Command reference" section: every command's ``--help``, in fenced blocks."""
    from .cli import main

    root = click.Context(main, info_name="digitbatch", terminal_width=WIDTH,
                         max_content_width=WIDTH)
    parts = [HEADING, "",
             f"Generated from the commands' `--help` by `{REGENERATE}`; do not edit by hand.", ""]
    for cmd, ctx in _walk(main, root):
        text = "\n".join(line.rstrip() for line in cmd.get_help(ctx).splitlines())
        parts += [f"### `{ctx.command_path}`", "", "```text", text, "```", ""]
    return "\n".join(parts)


def split_readme(text: str) -> tuple[str, str | None]:
    """README text before the section, and the section (None when it is missing)."""
    at = text.find("\n" + HEADING + "\n")
    if at < 0:
        return text, None
    return text[: at + 1], text[at + 1:]


def write_readme(path: str | Path = README) -> bool:
    """Replace (or append) the section in ``path``; return whether the file changed."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    head, _ = split_readme(text)
    new = head.rstrip("\n") + "\n\n" + command_reference()
    if new == text:
        return False
    path.write_text(new, encoding="utf-8")
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m digitbatch.docs", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true",
                        help="rewrite the section in README.md instead of printing it")
    parser.add_argument("--readme", default=str(README), help="README to rewrite (with --write)")
    args = parser.parse_args(argv)
    if args.write:
        changed = write_readme(args.readme)
        sys.stderr.write(f"{args.readme}: {'updated' if changed else 'already current'}\n")
    else:
        sys.stdout.write(command_reference())
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
