"""The ``hcsoci`` entry point: every command reachable, modules imported on first use."""

from __future__ import annotations

import importlib
import subprocess
import sys

import click
from click.testing import CliRunner

from hcsoci.cli.main import COMMANDS, cli


def test_the_command_map_matches_what_the_modules_register() -> None:
    registered: dict[str, str] = {}
    for module in sorted(set(COMMANDS.values())):
        group = click.Group()
        importlib.import_module(module).register(group)
        registered.update(dict.fromkeys(group.commands, module))
    assert registered == COMMANDS


def test_an_unknown_command_is_refused_by_name() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "hcsoci.cli.main", "frobnicate"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "No such command 'frobnicate'" in result.stderr


def test_container_commands_do_not_load_networking_or_the_vm() -> None:
    probe = (
        "import sys\n"
        "from hcsoci.cli.main import cli\n"
        "cli(['list', '--json'], standalone_mode=False)\n"
        "print(sorted(m for m in ('pyroute2', 'hcsoci.hns', 'hcsoci.uvm') if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert result.stdout.splitlines()[-1] == "[]"


def test_help_lists_every_command() -> None:
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    listed = {line.split()[0] for line in result.output.split("Commands:")[1].splitlines() if line}
    assert listed == set(COMMANDS)
