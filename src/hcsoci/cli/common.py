"""What the command families share: how a command fails, and removing several objects."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

import click

from hcsoci.errors import HcsociError


def fail(err: Exception) -> NoReturn:
    """Print ``hcsoci: <err>`` on stderr and exit with status 1."""
    click.echo(f"hcsoci: {err}", err=True)
    sys.exit(1)


def remove_each(refs: Sequence[str], remove: Callable[[str], object], echo: bool = True) -> None:
    """``remove`` every ref; a failure is reported and the rest still go; exit 1 if any failed.

    With ``echo`` each removed ref is printed, as ``docker rm`` does.
    """
    failed = False
    for ref in refs:
        try:
            remove(ref)
        except HcsociError as err:
            click.echo(f"hcsoci: {err}", err=True)
            failed = True
        else:
            if echo:
                click.echo(ref)
    if failed:
        sys.exit(1)
