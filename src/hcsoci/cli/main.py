"""Entry point of the ``hcsoci`` command: one click group, one module per command family."""

from __future__ import annotations

import importlib
import logging
import sys
import traceback

import click

from hcsoci.errors import HcsociError

# Which module defines each top-level command.  Each module has
# `register(group: click.Group) -> None`; it is imported only when one of its
# commands runs (or `--help` lists them all), so that `hcsoci list` does not pay
# for pyroute2 or rich.  Add a command here when a module registers a new one.
COMMANDS: dict[str, str] = {
    **dict.fromkeys(
        ("run", "create", "start", "exec", "list", "state", "kill", "delete", "gc"),
        "hcsoci.cli.containers",
    ),
    **dict.fromkeys(("logs", "wait", "stop", "ps"), "hcsoci.cli.watch"),
    "network": "hcsoci.cli.network",
    "endpoint": "hcsoci.cli.network",
    "images": "hcsoci.cli.images",
    "uvm": "hcsoci.cli.uvm",
}


class _LazyGroup(click.Group):
    """A click group that imports a command's module on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module = COMMANDS.get(cmd_name)
        if module is None:
            return None
        registered = click.Group()
        importlib.import_module(module).register(registered)
        return registered.commands[cmd_name]


def _print_version(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    from importlib.metadata import PackageNotFoundError, version

    try:
        click.echo(f"hcsoci version {version('hcsoci')}")
    except PackageNotFoundError:
        click.echo("hcsoci version unknown (not installed)")
    ctx.exit()


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Log debug records and tracebacks to stderr.")
@click.option("--version", is_flag=True, expose_value=False, is_eager=True,
              callback=_print_version, help="Print the version and exit.")  # fmt: skip
def cli(debug: bool) -> None:
    """hcsoci: OCI containers on this machine or inside a utility VM."""
    # Without --debug the one-line error main() prints is the whole story; the
    # library's own error records would repeat it.
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.CRITICAL,
        format="%(levelname)s %(name)s: %(message)s",
    )


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


DOCKER_STATUS_COMMANDS = ("run", "create")
"""Commands whose own failures exit 125, as ``docker run`` does (a usage error included),
so that a script tells them from the container's status (126/127: a command that
cannot run / is not found)."""

HCSOCI_ERROR_STATUS = 125


def _command_name(args: list[str]) -> str:
    for arg in args:
        if arg == "--":
            return ""
        if not arg.startswith("-"):
            return arg
    return ""


def main(argv: list[str] | None = None) -> None:
    """Run the command line; every failure is one line on stderr and a non-zero status.

    ``--debug`` (before the command) adds the traceback.  Usage errors exit 2,
    hcsoci errors 1, an interrupt 130; for ``run`` and ``create`` both are 125.
    """
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args[: args.index("--")] if "--" in args else "--debug" in args
    status = HCSOCI_ERROR_STATUS if _command_name(args) in DOCKER_STATUS_COMMANDS else 0
    try:
        cli.main(args=args, prog_name="hcsoci", standalone_mode=False)
    except click.exceptions.Exit as done:
        sys.exit(done.exit_code)
    except click.UsageError as err:
        where = f" (see '{err.ctx.command_path} --help')" if err.ctx is not None else ""
        _print_error(f"{_one_line(err.format_message())}{where}", debug)
        sys.exit(status or err.exit_code)
    except click.ClickException as err:
        _print_error(_one_line(err.format_message()), debug)
        sys.exit(status or err.exit_code)
    except (click.Abort, KeyboardInterrupt):
        sys.exit(130)
    except HcsociError as err:
        _print_error(_one_line(str(err)) or type(err).__name__, debug)
        sys.exit(status or 1)
    except Exception as err:  # a bug: still one line, the traceback behind --debug
        detail = _one_line(str(err))
        _print_error(
            f"internal error: {type(err).__name__}{': ' + detail if detail else ''}"
            " (run with --debug for the traceback)",
            debug,
        )
        sys.exit(status or 1)


def _print_error(message: str, debug: bool) -> None:
    if debug:
        traceback.print_exc()
    click.echo(f"hcsoci: {message}", err=True)


if __name__ == "__main__":
    main()
