"""What every command of the CLI shares beyond its own options: ``-q``/``-v``
after the command name, and the last guard that turns a stray file-system
``OSError`` into a one-line named error (:mod:`digitbatch.fserrors`)."""

from __future__ import annotations

import functools

import click

from . import fserrors, logs

QUIET = click.Option(["-q", "--quiet"], is_flag=True,
                     help="As `digitbatch -q`: only warnings and errors, no progress bar.")
VERBOSE = click.Option(["-v", "--verbose"], count=True, help="As `digitbatch -v`: more log output.")


def add_log_options(group: click.Group) -> None:
    """Give every command of ``group`` (and of its subgroups) ``-q`` and ``-v`` as well,
    so that they work after the command name too (``digitbatch train ... -q``)."""
    for cmd in group.commands.values():
        if isinstance(cmd, click.Group):
            add_log_options(cmd)
            continue
        names = {p.name for p in cmd.params}
        if names & {"quiet", "verbose"}:
            continue
        cmd.params += [QUIET, VERBOSE]
        cmd.callback = _relogging(cmd.callback)


def _relogging(callback):
    @functools.wraps(callback)
    def wrapper(*args, quiet=False, verbose=0, **kwargs):
        if quiet or verbose:
            obj = click.get_current_context().find_root().obj
            if obj is not None:
                obj["quiet"] = obj.get("quiet") or quiet
                obj["verbose"] = obj.get("verbose", 0) + verbose
                logs.setup(verbose=obj["verbose"], quiet=obj["quiet"],
                           log_file=obj.get("log_file"), fmt=obj.get("log_format", "text"))
        return callback(*args, **kwargs)
    return wrapper


def stray_os_error(exc: OSError) -> click.ClickException:
    """A one-line failure for an ``OSError`` no command named (a file-system fault
    as :func:`digitbatch.fserrors.describe` says it; any other, as it is)."""
    if fserrors.is_fs_error(exc):
        err = fserrors.describe(exc)
        return click.ClickException(f"{type(err).__name__}: {err}")
    return click.ClickException(f"{type(exc).__name__}: {exc}")


def only_with(option: str, needed: str, given: bool) -> None:
    """Refuse ``--OPTION`` given on the command line without ``--NEEDED`` (exit 2)."""
    source = click.get_current_context().get_parameter_source(option)
    if not given and source not in (None, click.core.ParameterSource.DEFAULT):
        raise click.BadParameter(f"only with --{needed}", param_hint=f"'--{option}'")
