"""The README's command reference is the CLI's help text, exactly."""

from __future__ import annotations

import click

from digitbatch.cli import main
from digitbatch.docs import HEADING, README, REGENERATE, command_reference, split_readme, write_readme


def _paths(cmd: click.Command, prefix: str):
    yield prefix
    if isinstance(cmd, click.Group):
        for name, sub in sorted(cmd.commands.items()):
            if not sub.hidden:
                yield from _paths(sub, f"{prefix} {name}")


def test_readme_command_reference_is_current():
    _, section = split_readme(README.read_text(encoding="utf-8"))
    assert section is not None, f"README.md has no '{HEADING}' section: run `{REGENERATE}`"
    assert section == command_reference(), (
        f"README.md's '{HEADING}' differs from the CLI's --help text (a command or option "
        f"changed): run `{REGENERATE}` and commit README.md")


def test_every_command_is_documented():
    ref = command_reference()
    for path in _paths(main, "digitbatch"):
        assert f"### `{path}`\n" in ref, path
        assert f"Usage: {path} " in ref, path


def test_reference_does_not_depend_on_the_terminal(monkeypatch):
    first = command_reference()
    monkeypatch.setenv("COLUMNS", "200")
    assert command_reference() == first


def test_write_replaces_only_the_section(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# x\n\nIntro.\n")
    assert write_readme(readme) is True  # appended
    text = readme.read_text()
    assert text.startswith("# x\n\nIntro.\n\n" + HEADING)
    readme.write_text(text.replace("Usage: digitbatch ", "Usage: old ", 1))
    assert write_readme(readme) is True  # replaced
    assert readme.read_text() == text
    assert write_readme(readme) is False  # idempotent
