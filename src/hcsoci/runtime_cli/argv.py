"""runc's command line: global flags before the command, then the command's flags.

runc parses with urfave/cli v1, and so does this module: ``--flag value``,
``--flag=value``, ``-flag`` (one dash works for long names too), flags before
the positional arguments, ``--`` ending them.  Only the flags hcsoci-runc acts
on are interpreted; the others are validated here and handed to runc as they
came.
"""

from __future__ import annotations

__all__ = [
    "COMMAND_FLAGS",
    "GLOBAL_FLAGS",
    "CommandLine",
    "UsageError",
    "parse_command",
    "parse_global",
]


class UsageError(Exception):
    """The command line is not one runc would accept; the message is one line."""


# name -> takes a value; aliases map to their long name.
GLOBAL_FLAGS: dict[str, bool] = {
    "root": True,
    "log": True,
    "log-format": True,
    "debug": False,
    "systemd-cgroup": False,
    "criu": True,
    "rootless": True,
    "isolation": True,
    "help": False,
    "version": False,
}
_GLOBAL_ALIASES = {"h": "help", "v": "version"}

_CREATE = {
    "bundle": True,
    "console-socket": True,
    "pid-file": True,
    "no-pivot": False,
    "no-new-keyring": False,
    "preserve-fds": True,
}
COMMAND_FLAGS: dict[str, dict[str, bool]] = {
    "create": _CREATE,
    "run": {**_CREATE, "detach": False, "keep": False, "no-subreaper": False},
    "start": {},
    "exec": {
        "console-socket": True,
        "cwd": True,
        "env": True,
        "tty": False,
        "user": True,
        "additional-gids": True,
        "process": True,
        "detach": False,
        "pid-file": True,
        "process-label": True,
        "apparmor": True,
        "no-new-privs": False,
        "cap": True,
        "preserve-fds": True,
        "cgroup": True,
        "ignore-paused": False,
    },
    "kill": {"all": False},
    "delete": {"force": False},
    "state": {},
    "list": {"format": True, "quiet": False},
    "ps": {"format": True},
    "pause": {},
    "resume": {},
    "update": {
        "resources": True,
        "blkio-weight": True,
        "cpu-period": True,
        "cpu-quota": True,
        "cpu-share": True,
        "cpu-rt-period": True,
        "cpu-rt-runtime": True,
        "cpuset-cpus": True,
        "cpuset-mems": True,
        "kernel-memory": True,
        "kernel-memory-tcp": True,
        "memory": True,
        "memory-reservation": True,
        "memory-swap": True,
        "pids-limit": True,
        "l3-cache-schema": True,
        "mem-bw-schema": True,
    },
    "events": {"interval": True, "stats": False},
    "features": {},
    "spec": {"bundle": True, "rootless": False},
}
_COMMAND_ALIASES: dict[str, dict[str, str]] = {
    "create": {"b": "bundle"},
    "run": {"b": "bundle", "d": "detach"},
    "exec": {
        "e": "env",
        "t": "tty",
        "u": "user",
        "g": "additional-gids",
        "p": "process",
        "d": "detach",
        "c": "cap",
    },
    "kill": {"a": "all"},
    "delete": {"f": "force"},
    "list": {"f": "format", "q": "quiet"},
    "ps": {"f": "format"},
    "update": {"r": "resources"},
    "spec": {"b": "bundle"},
}
for _name in COMMAND_FLAGS:
    COMMAND_FLAGS[_name]["help"] = False
    _COMMAND_ALIASES.setdefault(_name, {})["h"] = "help"

_TRUE = ("", "true", "1", "t", "yes")


class CommandLine:
    """Parsed flags (long name -> values, in order) and the positional arguments."""

    __slots__ = ("args", "flags", "raw")

    def __init__(self, flags: dict[str, list[str]], args: list[str], raw: list[str]) -> None:
        self.flags = flags
        self.args = args
        self.raw = raw
        """The tokens as given, for runc."""

    def value(self, name: str, default: str = "") -> str:
        """The last value of a value flag, or ``default``."""
        values = self.flags.get(name)
        return values[-1] if values else default

    def values(self, name: str) -> list[str]:
        """Every value of a repeatable flag (``--env``)."""
        return self.flags.get(name, [])

    def is_set(self, name: str) -> bool:
        """Whether a boolean flag is on (``--force``, ``--force=true``)."""
        values = self.flags.get(name)
        return values is not None and values[-1].lower() in _TRUE


def _parse(
    argv: list[str], table: dict[str, bool], aliases: dict[str, str], stop_at_positional: bool
) -> tuple[dict[str, list[str]], int]:
    """Parse flags from ``argv``; returns them and the index of the first positional."""
    flags: dict[str, list[str]] = {}
    index = 0
    while index < len(argv):
        token = argv[index]
        if token == "--":
            return flags, index + 1
        if not token.startswith("-") or token == "-":
            if stop_at_positional:
                return flags, index
            index += 1
            continue
        name, has_value, value = token.lstrip("-").partition("=")
        name = aliases.get(name, name)
        if name not in table:
            raise UsageError(f"flag provided but not defined: {token.split('=', 1)[0]}")
        if table[name] and not has_value:
            index += 1
            if index >= len(argv):
                raise UsageError(f"flag needs an argument: {token}")
            value = argv[index]
        flags.setdefault(name, []).append(value)
        index += 1
    return flags, index


def parse_global(argv: list[str]) -> tuple[CommandLine, str, list[str]]:
    """The global flags, the command's name ('' when none) and the command's own tokens."""
    flags, index = _parse(argv, GLOBAL_FLAGS, _GLOBAL_ALIASES, stop_at_positional=True)
    command = argv[index] if index < len(argv) else ""
    return CommandLine(flags, [], argv[:index]), command, argv[index + 1 :]


def parse_command(command: str, argv: list[str]) -> CommandLine:
    """The flags and positional arguments of ``command`` (a key of :data:`COMMAND_FLAGS`)."""
    flags, index = _parse(
        argv, COMMAND_FLAGS[command], _COMMAND_ALIASES.get(command, {}), stop_at_positional=True
    )
    return CommandLine(flags, argv[index:], argv)
