"""OCI hooks that hcsoci-runc runs itself, on the host, for a container in a utility VM.

With process isolation runc runs the spec's hooks.  A VM container has no
host process of its own but its stand-in, so hcsoci-runc runs them around
the VM, as Kata Containers does, each with the container's state JSON on
its stdin (runc's fields; ``pid`` = the stand-in, the pid in
``--pid-file``):

* ``prestart``, ``createRuntime``, ``createContainer``: by ``create``, once
  the container is created in the VM and its stand-in runs, in that order,
  status ``creating``.  The first failure fails ``create`` (one line, exit
  status 1, everything made released, then ``poststop`` run, as runc).
  ``createContainer`` would run in the container's namespaces, which are in
  the guest: it runs on the host, as in Kata;
* ``startContainer``: the guest's runc runs it, in the container, before
  the user's process (its path is in the container's file system);
* ``poststart``: by ``start`` once the guest init runs, status ``running``;
* ``poststop``: by ``delete`` once the container is released, status
  ``stopped``, no pid.

A failing ``poststart`` or ``poststop`` hook is a warning (in ``--log``,
else on stderr) and the others still run: the runtime spec's rule.

Each hook runs as runc runs it: ``path`` executed with ``args`` as its argv
(``[path]`` when empty), ``env`` as its whole environment (the runtime's own
when absent), SIGKILLed after ``timeout`` seconds, its stdout and stderr
captured for the error.
"""

from __future__ import annotations

import os
import signal
import subprocess

from hcsoci.runtime_cli.commands import CommandError

TYPE_CHECKING = False  # typing costs milliseconds at every engine call
if TYPE_CHECKING:
    from typing import Any

__all__ = [
    "CREATE_HOOKS",
    "HOST_HOOKS",
    "HookError",
    "hook_state",
    "host_hooks",
    "run_hooks",
]

CREATE_HOOKS = ("prestart", "createRuntime", "createContainer")
"""The hooks ``create`` runs, in order."""
HOST_HOOKS = (*CREATE_HOOKS, "poststart", "poststop")
"""The hooks hcsoci-runc runs on the host (``startContainer`` is the guest's)."""
STATE_VERSION = "1.0.2-dev"
"""The state's ``ociVersion``, runc's."""
OUTPUT_LIMIT = 2048
"""Bytes of a failed hook's stdout and of its stderr kept for the error."""


class HookError(CommandError):
    """A hook failed; the message is one line naming the hook (runc's words)."""


def host_hooks(hooks: object) -> dict[str, list[dict[str, Any]]]:
    """The host's hooks of a (validated) spec's ``hooks`` section, by kind; empty kinds left out."""
    if not isinstance(hooks, dict):
        return {}
    return {kind: list(hooks[kind]) for kind in HOST_HOOKS if hooks.get(kind)}


def hook_state(
    container_id: str, status: str, pid: int, bundle: str, annotations: object
) -> dict[str, Any]:
    """The OCI state a hook gets, as runc writes it (no ``pid`` once stopped)."""
    state: dict[str, Any] = {"ociVersion": STATE_VERSION, "id": container_id, "status": status}
    if pid > 0:
        state["pid"] = pid
    state["bundle"] = bundle
    if annotations:
        state["annotations"] = annotations
    return state


def _output(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    data = os.read(fd, OUTPUT_LIMIT)
    return data.decode(errors="replace").strip()


def _environment(env: list[str] | None) -> dict[str, str] | None:
    if env is None:
        return None
    found: dict[str, str] = {}
    for entry in env:
        name, _, value = entry.partition("=")
        found[name] = value  # the last of a name wins, as Go's os/exec
    return found


def _run_one(hook: dict[str, Any], state: bytes) -> str:
    """Run one hook; '' when it succeeded, else what went wrong (runc's words)."""
    path = str(hook["path"])
    timeout = hook.get("timeout")
    stdin = os.memfd_create("hook-state", os.MFD_CLOEXEC)
    stdout = os.memfd_create("hook-stdout", os.MFD_CLOEXEC)
    stderr = os.memfd_create("hook-stderr", os.MFD_CLOEXEC)
    try:
        os.write(stdin, state)
        os.lseek(stdin, 0, os.SEEK_SET)
        try:
            child = subprocess.Popen(
                list(hook.get("args") or [path]),
                executable=path,
                env=_environment(hook.get("env")),
                stdin=stdin,
                stdout=stdout,
                stderr=stderr,
                close_fds=True,
            )
        except OSError as err:
            return f"fork/exec {path}: {(err.strerror or str(err)).lower()}"
        seconds = float(timeout) if timeout else None
        try:
            code = child.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
            return f"hook ran past specified timeout of {seconds:.1f}s"
        if code == 0:
            return ""
        how = f"signal: {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
        return f"{how}, stdout: {_output(stdout)}, stderr: {_output(stderr)}"
    finally:
        for fd in (stdin, stdout, stderr):
            os.close(fd)


def run_hooks(
    kind: str, hooks: dict[str, list[dict[str, Any]]], state: dict[str, Any], *, all: bool = False
) -> list[str]:
    """Run the ``kind`` hooks of ``hooks`` in order with ``state`` on their stdin.

    Raises :class:`HookError` at the first failure, unless ``all``: then
    every hook runs and the failures are returned (one line each).
    """
    listed = hooks.get(kind) or []
    if not listed:
        return []
    import json

    data = json.dumps(state, separators=(",", ":")).encode()
    failures: list[str] = []
    for index, hook in enumerate(listed):
        problem = _run_one(hook, data)
        if not problem:
            continue
        message = " ".join(
            f"error running {kind} hook #{index} ({hook['path']}): {problem}".split()
        )
        if not all:
            raise HookError(message)
        failures.append(message)
    return failures
