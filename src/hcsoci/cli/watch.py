"""``hcsoci logs | wait | stop | ps``: following the containers that run in the background."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from hcsoci import container_table, context
from hcsoci.cli.monitor import recorded_exit_code, wait_recorded
from hcsoci.container import Container, open_container
from hcsoci.errors import HcsociError
from hcsoci.images.spec import IMAGE_ANNOTATION
from hcsoci.paths import check_id
from hcsoci.store import open_store

if TYPE_CHECKING:
    from hcsoci.uvm.remote import RemoteContainer

__all__ = ["register"]

_FOLLOW_INTERVAL = 0.1  # seconds between looks at a followed log


def _checked(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return check_id(value, "ID")
    except HcsociError as err:
        raise click.BadParameter(str(err).split(": ", 1)[1], ctx, param) from None


def _open(container_id: str) -> Container | RemoteContainer:
    try:
        return open_container(container_id)
    except HcsociError as err:
        raise click.ClickException(str(err)) from err


def _open_host(container_id: str, command: str) -> Container:
    container = _open(container_id)
    if not isinstance(container, Container):
        container.close()
        raise click.ClickException(
            f"{command}: container {container_id} is in a utility VM: its output stays in the guest"
        )
    return container


def _wait_remote(container: RemoteContainer, timeout: float | None = None) -> int | None:
    """A VM container's exit code once it stopped (its controller keeps it); None at timeout."""
    ctx = context.background()
    deadline = None if timeout is None else time.monotonic() + timeout
    if deadline is None:
        container.wait()
    else:
        while container.properties(ctx).state == "running":
            if time.monotonic() > deadline:
                return None
            time.sleep(_FOLLOW_INTERVAL)
    code = container.properties(ctx).exit_code
    return -1 if code is None else code


def _wait_any(container: Container | RemoteContainer, timeout: float | None = None) -> int | None:
    if isinstance(container, Container):
        return wait_recorded(container, timeout)
    return _wait_remote(container, timeout)


def _state_of(container: Container | RemoteContainer) -> str:
    if isinstance(container, Container):
        return container.state_type().name
    return container.properties(context.background()).state


@click.command()
@click.option("-f", "--follow", is_flag=True, help="Keep printing output until the init exits.")
@click.argument("container_id", callback=_checked)
def logs(follow: bool, container_id: str) -> None:
    """Print the output of a container started by `start` or `run -d` (stdout and stderr)."""
    container = _open_host(container_id, "logs")
    out = sys.stdout.buffer
    try:
        with open(container.log_path, "rb") as log:
            while True:
                chunk = log.read(1 << 16)
                if chunk:
                    out.write(chunk)
                    continue
                if not follow:
                    break
                out.flush()
                running = container.state_type().name in ("running", "starting")
                if not running:
                    rest = log.read()
                    out.write(rest)
                    break
                time.sleep(_FOLLOW_INTERVAL)
    except FileNotFoundError:
        return  # never started in the background: no output kept
    finally:
        out.flush()
        container.close()


@click.command(name="wait")
@click.argument("container_ids", nargs=-1, required=True)
def wait_(container_ids: tuple[str, ...]) -> None:
    """Wait for each container's init to exit; print its exit code."""
    for container_id in container_ids:
        container = _open(check_id(container_id, "ID"))
        try:
            if _state_of(container) == "created":
                raise click.ClickException(f"container {container_id}: not started")
            code = _wait_any(container)
        finally:
            container.close()
        click.echo(str(code))


@click.command()
@click.option(
    "-t",
    "--time",
    "grace",
    default=10.0,
    show_default=True,
    type=float,
    help="Seconds between SIGTERM and SIGKILL.",
)
@click.argument("container_ids", nargs=-1, required=True)
def stop(grace: float, container_ids: tuple[str, ...]) -> None:
    """SIGTERM to each container's init, SIGKILL after --time seconds; print its id."""  # fmt: skip
    if grace < 0:
        raise click.BadParameter(f"{grace!r} is negative", param_hint="'-t' / '--time'")
    ctx = context.background()
    for container_id in container_ids:
        container = _open(check_id(container_id, "ID"))
        try:
            if _state_of(container) == "running":
                with contextlib.suppress(HcsociError):  # it exited meanwhile
                    container.shutdown(ctx)
                if _wait_any(container, grace) is None:
                    with contextlib.suppress(HcsociError):
                        container.terminate(ctx)
                    _wait_any(container)
        finally:
            container.close()
        click.echo(container_id)


def _status(state: str, code: int | None, created: float) -> str:
    if state == "stopped":
        return f"Exited ({code})" if code is not None and code >= 0 else "Exited"
    if state == "running":
        return f"Up {_age(created)}"
    return state.capitalize()


def _age(since: float) -> str:
    seconds = max(0, int(time.time() - since))
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            count = seconds // size
            return f"{count} {unit}{'s' if count > 1 else ''}"
    return f"{seconds} second{'s' if seconds != 1 else ''}"


def _row_of(row: container_table.ContainerRow) -> dict[str, Any]:
    item: dict[str, Any] = {"id": row.id, "image": "", "command": "", "state": row.state}
    with contextlib.suppress(HcsociError, OSError):
        container = open_container(row.id)
        try:
            item["state"] = _state_of(container)
            spec = container.spec
            item["image"] = (spec.annotations or {}).get(IMAGE_ANNOTATION, "")
            item["command"] = " ".join(spec.process.args or []) if spec.process else ""
            if item["state"] != "stopped":
                item["exit_code"] = None
            elif isinstance(container, Container):
                item["exit_code"] = recorded_exit_code(container)
            else:
                item["exit_code"] = container.properties(context.background()).exit_code
        finally:
            container.close()
    item.setdefault("exit_code", None)
    item["created"] = row.created_at
    item["status"] = _status(item["state"], item["exit_code"], row.created_at)
    return item


def _processes(container_id: str) -> None:
    container = _open(container_id)
    try:
        if not isinstance(container, Container):
            from hcsoci.cli import vm_containers

            vm_containers.print_processes(container)
            return
        props = container.properties(context.background())
    finally:
        container.close()
    click.echo(f"{'PID':>8}  COMMAND")
    for pid in props.processes:
        with contextlib.suppress(OSError):
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").strip()
            click.echo(f"{pid:>8}  {command.decode(errors='replace')}")


@click.command()
@click.option("-a", "--all", "show_all", is_flag=True, help="Stopped and created ones too.")
@click.option("-q", "--quiet", is_flag=True, help="Print the ids only.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.argument("container_id", required=False, callback=_checked)
def ps(show_all: bool, quiet: bool, as_json: bool, container_id: str | None) -> None:
    """List running containers (-a: all, with exit codes); `ps ID`: the processes in one."""
    if container_id is not None:
        _processes(container_id)
        return
    rows = [_row_of(row) for row in container_table.list_rows(open_store(), host="")]
    shown = [item for item in rows if show_all or item["state"] == "running"]
    if as_json:
        click.echo(json.dumps(shown, indent=2))
    elif quiet:
        for item in shown:
            click.echo(item["id"])
    else:
        width = max([len(item["id"]) for item in shown] + [12])
        click.echo(f"{'CONTAINER ID':<{width}}  {'IMAGE':<16}  {'COMMAND':<24}  STATUS")
        for item in shown:
            command = (
                item["command"] if len(item["command"]) <= 24 else item["command"][:21] + "..."
            )
            click.echo(
                f"{item['id']:<{width}}  {item['image']:<16}  {command:<24}  {item['status']}"
            )


def register(group: click.Group) -> None:
    """Add ``logs``, ``wait``, ``stop`` and ``ps`` to the ``hcsoci`` group."""
    for command in (logs, wait_, stop, ps):
        group.add_command(command)
