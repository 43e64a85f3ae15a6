"""Entry point of the ``hcsoci`` command: one click group, one module per command family."""

from __future__ import annotations

import importlib
import logging

import click

# Each module defines `register(group: click.Group) -> None`.  Add a family here.
COMMAND_MODULES: list[str] = [
    "hcsoci.cli.containers",
    "hcsoci.cli.network",
    "hcsoci.cli.images",
    "hcsoci.cli.uvm",
]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Log debug records to stderr.")
def cli(debug: bool) -> None:
    """hcsoci: OCI containers on this machine or inside a utility VM."""
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )


for _module in COMMAND_MODULES:
    importlib.import_module(_module).register(cli)


def main() -> None:
    """Run the command line."""
    cli(prog_name="hcsoci")


if __name__ == "__main__":
    main()
