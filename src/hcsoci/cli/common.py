"""What the command families share: how a command fails, removing several objects, and
saying what a long wait is for."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NoReturn

import click

from hcsoci.errors import HcsociError

if TYPE_CHECKING:
    from hcsoci.context import Context
    from hcsoci.uvm import UtilityVM


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


def start_vm_visibly(ctx: Context, vm: UtilityVM) -> None:
    """``vm.start(ctx)``, saying on a terminal (stderr) what it waits for; quiet otherwise.

    Under TCG a boot takes seconds: a person at a terminal should see that the
    command is booting a VM, not hung.
    """
    if not sys.stderr.isatty():
        vm.start(ctx)
        return
    started = time.monotonic()
    vm.on_progress = lambda what: click.echo(
        f"\rhcsoci: {what} utility VM {vm.id()} ...", err=True, nl=False
    )
    try:
        vm.start(ctx)
    except BaseException:
        click.echo(" failed", err=True)
        raise
    finally:
        vm.on_progress = None
    how = "restored from its template" if vm.restored else "booted"
    click.echo(
        f"\rhcsoci: utility VM {vm.id()} ready ({vm.accel}, {how}, guest agent answered after "
        f"{time.monotonic() - started:.1f} s)",
        err=True,
    )
