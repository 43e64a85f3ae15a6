"""Entry point of the ``hcsoci`` command: one click group, one module per command family."""

from __future__ import annotations

import importlib
import logging

import click

# Which module defines each top-level command.  Each module has
# `register(group: click.Group) -> None`; it is imported only when one of its
# commands runs (or `--help` lists them all), so that `hcsoci list` does not pay
# for pyroute2 or rich.  Add a command here when a module registers a new one.
COMMANDS: dict[str, str] = {
    **dict.fromkeys(
        ("run", "create", "start", "exec", "ps", "list", "state", "kill", "delete", "gc"),
        "hcsoci.cli.containers",
    ),
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


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Log debug records to stderr.")
def cli(debug: bool) -> None:
    """hcsoci: OCI containers on this machine or inside a utility VM."""
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )


def main() -> None:
    """Run the command line."""
    cli(prog_name="hcsoci")


if __name__ == "__main__":
    main()
