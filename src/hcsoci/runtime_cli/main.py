"""The ``hcsoci-runc`` entry point: runc's global flags, the command, runc's exit status.

``--root R`` is hcsoci's state root for this call (default ``$HCSOCI_ROOT`` or
``/run/hcsoci``): the store is ``R/state.db``, runc's own root ``R/runc``.
Isolation is ``--isolation``, else the name the program was called by
(``hcsoci-runc-vm``), else the bundle's ``io.hcsoci.isolation`` annotation,
else process.  Errors are one line (``--debug`` adds the traceback) and exit
1, as runc's.
"""

from __future__ import annotations

import os
import sys

from hcsoci.runtime_cli.argv import UsageError, parse_command, parse_global
from hcsoci.runtime_cli.report import LogTarget, report_error

__all__ = ["exit_at_once", "main"]

PROGRAM = "hcsoci-runc"
SPEC_VERSION = "1.0.2-dev"

_USAGE = f"""usage: {PROGRAM} [global options] COMMAND [command options] [arguments...]

An OCI runtime with runc's command line, over hcsoci.

Commands: create, start, run, exec, kill, delete, state, list, ps, pause, resume,
update, events, features, spec.

Global options: --root DIR (hcsoci state root), --log FILE, --log-format text|json,
--debug, --systemd-cgroup, --isolation process|vm, --version, --help.
"""


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        ours = version("hcsoci")
    except PackageNotFoundError:
        ours = "unknown"
    return f"{PROGRAM} version {ours}\ncommit: hcsoci-{ours}\nspec: {SPEC_VERSION}\n"


def _runc_globals(flags: dict[str, list[str]], runc_root: str) -> list[str]:
    args = ["--root", runc_root]
    for name in ("log", "log-format", "criu", "rootless"):
        if name in flags:
            args.append(f"--{name}={flags[name][-1]}")
    for name in ("debug", "systemd-cgroup"):
        values = flags.get(name)
        if values and values[-1].lower() in ("", "true", "1", "t", "yes"):
            args.append(f"--{name}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run one runtime command; returns the exit status (the console script exits with it)."""
    args = sys.argv[1:] if argv is None else argv
    program = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else PROGRAM
    target = LogTarget()
    debug = False
    try:
        options, command, rest = parse_global(args)
        target = LogTarget(options.value("log"), options.value("log-format", "text"))
        debug = options.is_set("debug")
        if target.format not in ("text", "json"):
            raise UsageError(f"invalid log-format: {target.format}")
        if options.is_set("version"):
            sys.stdout.write(_version())
            return 0
        if options.is_set("help") or not command:
            sys.stdout.write(_USAGE)
            return 0 if options.is_set("help") else 1
        return _run(options.flags, options.value("isolation"), program, command, rest, target)
    except SystemExit:
        raise
    except KeyboardInterrupt:
        return 130
    except BaseException as err:
        if debug:
            import traceback

            traceback.print_exc()
        report_error(_message(err), target)
        return 1


def exit_at_once(code: int) -> None:
    """Exit with ``code``, leaving out the interpreter's teardown.

    Freeing every module and object at exit costs each engine call a few
    milliseconds after its work is done, and the engine waits for them.  What
    must end does first: the ``atexit`` handlers run (the store closes its
    connections there) and stdout and stderr are flushed.
    """
    import atexit

    # No public call runs the handlers; ordering a handler of our own to run last instead
    # would silently skip any handler registered before it (a module imported earlier).
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:  # noqa: SIM105 (contextlib would cost every call its import)
            stream.flush()
        except (OSError, ValueError):
            pass  # a reader that went away (or a closed stream) hears nothing more
    os._exit(code)


def _run(
    flags: dict[str, list[str]],
    isolation: str,
    program: str,
    command: str,
    rest: list[str],
    target: LogTarget,
) -> int:
    from hcsoci.runtime_cli.commands import COMMANDS, Invocation, run_command
    from hcsoci.runtime_cli.runc import RuncCommand, find_runc

    if command not in COMMANDS:
        raise UsageError(f"no such command: {command}")
    if isolation and isolation not in ("process", "vm"):
        raise UsageError(f"--isolation: {isolation!r} is not an isolation (use process or vm)")
    if not isolation and program.endswith("-vm"):
        isolation = "vm"
    root = os.path.abspath(flags["root"][-1]) if "root" in flags else _default_root()
    line = parse_command(command, rest)
    if line.is_set("help"):
        sys.stdout.write(_USAGE)
        return 0
    runc = RuncCommand(find_runc(), _runc_globals(flags, os.path.join(root, "runc")))
    return run_command(Invocation(root, runc, isolation, target), command, line)


def _default_root() -> str:
    """hcsoci's state root (as :func:`hcsoci.store.state_root`, without importing the store)."""
    return os.environ.get("HCSOCI_ROOT") or "/run/hcsoci"


def _message(err: BaseException) -> str:
    if isinstance(err, OSError) and err.strerror and err.filename is not None:
        return f"{err.filename}: {err.strerror}"
    return str(err) or type(err).__name__
