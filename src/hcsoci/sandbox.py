"""The one-call sandbox API: ``hcsoci.run(image, args)`` and ``with hcsoci.container(...)``.

>>> import hcsoci
>>> result = hcsoci.run("busybox", ["echo", "hi"])
>>> result.returncode, result.stdout
(0, b'hi\\n')

Both make a container from an image name (from the local image store; the
default ``busybox`` is built on first use) or from a root file system
directory, with docker's defaults: no network (a network namespace holding
only ``lo``) unless ``network=`` names an hns network, runc's minimal
capability set, the default seccomp filter, ``no_new_privileges``.  They
release everything they made -- runtime container, mounts, scratch folder,
endpoints, records -- before they return, whatever happened; a controller
killed halfway leaves a durable record that ``hcsoci gc`` reclaims.

``vm=`` takes a started :class:`~hcsoci.uvm.UtilityVM`: the container runs
inside it (the LCOW flow), and the VM is left running for the next call.
"""

from __future__ import annotations

import contextlib
import io
import os
import threading
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any

from hcsoci import context, cow, oci
from hcsoci.cmd import ClosedPipeError, Cmd, ExitError, ExitState
from hcsoci.context import Context
from hcsoci.create import CreateOptions, create_container
from hcsoci.errors import HcsociError, InvalidArgumentError, NotFoundError
from hcsoci.lifecycle import ContainerLifecycle
from hcsoci.oom_cgroup import LimitCgroup, OomCounter, runtime_cgroups_path
from hcsoci.paths import child, make_private_dir, remove_tree
from hcsoci.resources import Resource, Resources, release_resources
from hcsoci.run_options import (
    apply_limits,
    mount_requests,
    parse_cpus,
    parse_memory,
    parse_pids,
    pass_through,
    rootfs_user,
)
from hcsoci.store import open_store, state_root

if TYPE_CHECKING:
    from hcsoci.uvm import UtilityVM

__all__ = ["RunResult", "Sandbox", "ScratchFolder", "container", "run"]

SIGKILL_STATUS = 137
_COPY_AFTER_EXIT = 10.0  # seconds the output relays may run on once the process is gone
_KEEP_ALIVE = ["sleep", "2147483647"]
Stdin = bytes | str | IO[bytes] | None


@dataclass(frozen=True)
class RunResult:
    """How a sandboxed command ended (the shape of ``subprocess.CompletedProcess``).

    ``returncode`` is the exit code, ``128 + N`` when signal N ended it.
    ``timed_out``: the ``timeout`` passed and the command was killed for it.
    ``oom_killed``: the out-of-memory killer killed a process of the container
    for its ``memory`` limit (on this machine, the limit cgroup's counter; in
    a utility VM, inferred: a SIGKILL under a ``memory`` limit that no timeout
    or call of ours sent).
    """

    args: tuple[str, ...]
    returncode: int
    stdout: bytes
    stderr: bytes
    timed_out: bool = False
    oom_killed: bool = False

    def check_returncode(self) -> None:
        """Raise :class:`~hcsoci.ExitError` when ``returncode`` is not 0."""
        if self.returncode != 0:
            raise ExitError(ExitState(True, self.returncode))


class ScratchFolder(Resource, kw_only=True):
    """A sandbox's scratch folder (upper and work directories of its overlay root)."""

    kind = "sandbox-scratch"
    path: str

    def release(self, ctx: Context, vm: UtilityVM | None) -> None:
        if os.path.lexists(self.path):
            remove_tree(self.path)


@dataclass
class _Request:
    spec: oci.Spec
    container_id: str
    memory: int | None
    network: str | None
    vm: UtilityVM | None
    runtime: str


def _is_rootfs(image_or_rootfs: str | os.PathLike[str]) -> bool:
    if isinstance(image_or_rootfs, os.PathLike):
        return True
    return image_or_rootfs.startswith(("/", "./", "../")) or image_or_rootfs in (".", "..")


def _env_entries(env: Mapping[str, str] | Sequence[str] | None) -> list[str]:
    if env is None:
        return []
    if isinstance(env, Mapping):
        entries = []
        for name, value in env.items():
            if not name or "=" in name:
                raise InvalidArgumentError(f"env: {name!r} is not a variable name")
            entries.append(f"{name}={value}")
        return entries
    if isinstance(env, str):
        raise InvalidArgumentError(f"env: {env!r}: give a mapping or a list of NAME=VALUE")
    found = []
    for index, entry in enumerate(env):
        passed = pass_through(entry, f"env[{index}]")
        if passed is not None:
            found.append(passed)
    return found


def _base_spec(
    image_or_rootfs: str | os.PathLike[str],
    args: Sequence[str] | None,
    env: list[str],
    user: str | None,
    cwd: str | None,
    read_only: bool,
) -> tuple[oci.Spec, bool]:
    """The spec for the image or root; and whether it needs a scratch folder."""
    if _is_rootfs(image_or_rootfs):
        rootfs = Path(os.path.abspath(image_or_rootfs))
        if not rootfs.is_dir():
            raise NotFoundError(f"image_or_rootfs: {str(image_or_rootfs)!r} is not a directory")
        if not args:
            raise InvalidArgumentError("args: a root file system needs a command")
        spec = oci.default_spec(list(args))
        spec.root = oci.Root(path=str(rootfs), readonly=read_only)
        assert spec.process is not None
        spec.process.env = [*(spec.process.env or []), *env]
        if user:
            spec.process.user = rootfs_user(rootfs, user)
        if cwd:
            spec.process.cwd = cwd
        return spec, False
    from hcsoci import images

    store = images.ImageStore()
    name = str(image_or_rootfs)
    found = (
        images.ensure_default_image(store)
        if images.normalize_name(name) == images.DEFAULT_IMAGE
        else store.get(name)
    )
    spec = images.spec_for_image(found, list(args) if args else None, env, cwd, user)
    assert spec.root is not None
    spec.root.readonly = read_only
    return spec, True


def _cwd_checked(cwd: str | None) -> str | None:
    if cwd is not None and not cwd.startswith("/"):
        raise InvalidArgumentError(f"cwd: {cwd!r} is not an absolute path")
    return cwd


def _prepare(
    image_or_rootfs: str | os.PathLike[str],
    args: Sequence[str] | None,
    *,
    memory: int | str | None,
    cpus: float | str | None,
    pids: int | str | None,
    read_only: bool,
    tmpfs: Sequence[str] | Mapping[str, str],
    mounts: Sequence[Any],
    env: Mapping[str, str] | Sequence[str] | None,
    user: str | None,
    cwd: str | None,
    network: str | None,
    vm: UtilityVM | None,
    hostname: str | None,
    runtime: str,
) -> tuple[_Request, bool]:
    if isinstance(args, str):
        raise InvalidArgumentError(f"args: {args!r}: give a list, e.g. ['sh', '-c', ...]")
    memory_bytes = None if memory is None else parse_memory(memory, "memory")
    cpu_count = None if cpus is None else parse_cpus(cpus, "cpus")
    pid_limit = None if pids is None else parse_pids(pids, "pids")
    extra_mounts = mount_requests(mounts, tmpfs)
    spec, needs_scratch = _base_spec(
        image_or_rootfs, args, _env_entries(env), user, _cwd_checked(cwd), read_only
    )
    if hostname is not None:
        spec.hostname = hostname
    spec.mounts = [*(spec.mounts or []), *extra_mounts]
    # On this machine the memory limit goes on a parent cgroup of ours (see
    # hcsoci.oom_cgroup), so that an OOM kill stays countable; in a VM it is the spec's.
    apply_limits(
        spec, memory=memory_bytes if vm is not None else None, cpus=cpu_count, pids=pid_limit
    )
    request = _Request(spec, str(uuid.uuid4()), memory_bytes, network, vm, runtime)
    return request, needs_scratch


class Sandbox:
    """A started container made by :func:`container`, released by :meth:`close` (or ``with``).

    It is a ``cow.Container`` (so ``hcsoci.command(sandbox, "ls")`` works), and
    runs commands in one call with :meth:`run`.
    """

    def __init__(
        self,
        request: _Request,
        inner: cow.Container,
        resources: Resources,
        own: Resources,
        limit: OomCounter | None,
    ) -> None:
        self._request = request
        self._inner = inner
        self._resources = resources
        self._own = own
        self._limit = limit
        self._closed = False

    # --- cow.Container, delegated ---

    def id(self) -> str:
        """The container's id."""
        return self._inner.id()

    def os(self) -> str:
        """``linux``."""
        return self._inner.os()

    def is_oci(self) -> bool:
        """True: processes are given as ``oci.Process``."""
        return self._inner.is_oci()

    def create_process(self, ctx: Context, config: Any) -> cow.Process:
        """Start a process in the container (what :class:`~hcsoci.Cmd` calls)."""
        return self._inner.create_process(ctx, config)

    def start(self, ctx: Context) -> None:
        """Start the init (done already by :func:`container`)."""
        self._inner.start(ctx)

    def shutdown(self, ctx: Context) -> None:
        """SIGTERM to the init."""
        self._inner.shutdown(ctx)

    def terminate(self, ctx: Context) -> None:
        """SIGKILL to the init."""
        self._inner.terminate(ctx)

    def wait(self) -> None:
        """Wait for the init to exit."""
        self._inner.wait()

    def properties(self, ctx: Context) -> Any:
        """State, init pid, processes, memory and CPU (see ``Container.properties``)."""
        return self._inner.properties(ctx)

    # --- running commands ---

    @property
    def spec(self) -> oci.Spec:
        """The spec the container was made from (its init's process included)."""
        return self._request.spec

    def process_spec(
        self,
        args: Sequence[str],
        *,
        env: Mapping[str, str] | Sequence[str] | None = None,
        cwd: str | None = None,
    ) -> oci.Process:
        """An ``oci.Process`` for ``args`` with the init's user, environment, capabilities."""
        if isinstance(args, str) or not args:
            raise InvalidArgumentError(f"args: {args!r}: give a non-empty list")
        init = self._request.spec.process or oci.Process()
        return oci.Process(
            args=list(args),
            env=[*(init.env or []), *_env_entries(env)],
            cwd=_cwd_checked(cwd) or init.cwd or "/",
            user=init.user,
            capabilities=init.capabilities,
            no_new_privileges=init.no_new_privileges,
            rlimits=init.rlimits,
        )

    def exec(
        self,
        args: Sequence[str],
        *,
        env: Mapping[str, str] | Sequence[str] | None = None,
        cwd: str | None = None,
    ) -> Cmd:
        """A :class:`~hcsoci.Cmd` (not started) for ``args`` in this container."""
        return Cmd(self, self.process_spec(args, env=env, cwd=cwd))

    def run(
        self,
        args: Sequence[str],
        *,
        stdin: Stdin = None,
        timeout: float | None = None,
        env: Mapping[str, str] | Sequence[str] | None = None,
        cwd: str | None = None,
    ) -> RunResult:
        """Run ``args`` in the container, capture its output; never raises for its exit code."""
        return _run_cmd(self.exec(args, env=env, cwd=cwd), tuple(args), stdin, timeout, self)

    def oom_kills(self) -> int:
        """How many processes the OOM killer killed for the ``memory`` limit (host only)."""
        return self._limit.count() if self._limit is not None else 0

    def close(self) -> None:
        """Kill what still runs and release everything the container holds.  Idempotent."""
        if self._closed:
            return
        self._closed = True
        ctx = context.background()
        try:
            if isinstance(self._inner, ContainerLifecycle):
                with self._inner:  # kills a running init, waits for it, closes the handle
                    pass
            else:
                try:
                    self._inner.terminate(ctx)
                    self._inner.wait()
                except HcsociError:
                    pass  # it exited meanwhile
                finally:
                    self._inner.close()
        finally:
            try:
                release_resources(ctx, self._resources, self._request.vm, True)
            finally:
                if self._limit is not None:
                    self._limit.close()
                release_resources(ctx, self._own, self._request.vm, True)

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Sandbox {self.id()}{' closed' if self._closed else ''}>"


def _stdin_stream(stdin: Stdin) -> Any:
    if stdin is None:
        return None
    if isinstance(stdin, str):
        return io.BytesIO(stdin.encode())
    if isinstance(stdin, bytes | bytearray | memoryview):
        return io.BytesIO(bytes(stdin))
    return stdin


def _run_cmd(
    cmd: Cmd,
    args: tuple[str, ...],
    stdin: Stdin,
    timeout: float | None,
    sandbox: Sandbox | None,
    limit: OomCounter | None = None,
) -> RunResult:
    """Run ``cmd`` with captured output under ``timeout``; how it ended."""
    if timeout is not None and not timeout > 0:
        raise InvalidArgumentError(f"timeout: {timeout!r} must be a positive number of seconds")
    stdout, stderr = io.BytesIO(), io.BytesIO()
    cmd.stdin, cmd.stdout, cmd.stderr = _stdin_stream(stdin), stdout, stderr
    cmd.copy_after_exit_timeout = _COPY_AFTER_EXIT
    counter = limit if limit is not None else (sandbox._limit if sandbox is not None else None)
    oom_before = counter.count() if counter is not None else 0
    # The timeout kills the process rather than ending a context of the Cmd: the relays
    # then run to the end of what the process wrote, as subprocess.run keeps it.
    expired = threading.Event()
    cmd.start()
    timer = None
    if timeout is not None:
        process = cmd.process
        assert process is not None

        def expire() -> None:
            expired.set()
            with contextlib.suppress(HcsociError):  # it ended meanwhile
                process.kill(context.background())

        timer = threading.Timer(timeout, expire)
        timer.daemon = True
        timer.start()
    try:
        with contextlib.suppress(ExitError, ClosedPipeError):  # the code is the result's
            cmd.wait()
    finally:
        if timer is not None:
            timer.cancel()
            timer.join()
    code = cmd.exit_state.exit_code
    timed_out = expired.is_set() and code == SIGKILL_STATUS
    if counter is not None:
        oom = counter.count() > oom_before
    else:
        in_vm = sandbox._request.vm if sandbox is not None else None
        memory = sandbox._request.memory if sandbox is not None else None
        oom = in_vm is not None and memory is not None and code == SIGKILL_STATUS and not timed_out
    return RunResult(args, code, stdout.getvalue(), stderr.getvalue(), timed_out, oom)


def _create(request: _Request, needs_scratch: bool) -> Sandbox:
    """Create (not start) the container; what the sandbox holds."""
    ctx = context.background()
    store = open_store()
    own = Resources(request.container_id, store)
    limit: OomCounter | None = None
    try:
        if needs_scratch:
            scratch = child(state_root() / "scratch", request.container_id, "container id")
            make_private_dir(scratch.parent)
            own.add(ScratchFolder(path=str(scratch)))
            scratch.mkdir(mode=0o700)
            assert request.spec.windows is not None and request.spec.windows.layer_folders
            request.spec.windows.layer_folders.append(str(scratch))
        if request.memory is not None and request.vm is None:
            record = LimitCgroup(container_id=request.container_id)
            own.add(record)
            record.create(request.memory)
            limit = OomCounter(request.container_id)
            assert request.spec.linux is not None
            request.spec.linux.cgroups_path = runtime_cgroups_path(request.container_id)
        options = CreateOptions(
            id=request.container_id,
            owner="hcsoci.sandbox",
            spec=request.spec,
            hosting_system=request.vm,
            networks=[request.network] if request.network else [],
            runtime=request.runtime,
        )
        inner, resources = create_container(ctx, options)
    except BaseException:
        if limit is not None:
            limit.close()
        release_resources(ctx, own, request.vm, True)
        raise
    return Sandbox(request, inner, resources, own, limit)


def container(
    image_or_rootfs: str | os.PathLike[str],
    args: Sequence[str] | None = None,
    *,
    memory: int | str | None = None,
    cpus: float | str | None = None,
    pids: int | str | None = None,
    read_only: bool = False,
    tmpfs: Sequence[str] | Mapping[str, str] = (),
    mounts: Sequence[Any] = (),
    env: Mapping[str, str] | Sequence[str] | None = None,
    user: str | None = None,
    cwd: str | None = None,
    network: str | None = None,
    vm: UtilityVM | None = None,
    hostname: str | None = None,
    runtime: str = "",
) -> Sandbox:
    """Create and start a container; use it with ``with`` (or call ``close()``).

    ``args`` is its init (default: ``sleep`` for ever, so that commands can be
    run in it with :meth:`Sandbox.run` / :meth:`Sandbox.exec`). The options
    are :func:`run`'s.
    """
    request, needs_scratch = _prepare(
        image_or_rootfs,
        list(args) if args else _KEEP_ALIVE,
        memory=memory, cpus=cpus, pids=pids, read_only=read_only, tmpfs=tmpfs,
        mounts=mounts, env=env, user=user, cwd=cwd, network=network, vm=vm,
        hostname=hostname, runtime=runtime,
    )  # fmt: skip
    sandbox = _create(request, needs_scratch)
    try:
        sandbox.start(context.background())
    except BaseException:
        sandbox.close()
        raise
    return sandbox


def run(
    image_or_rootfs: str | os.PathLike[str],
    args: Sequence[str] | None = None,
    *,
    timeout: float | None = None,
    memory: int | str | None = None,
    cpus: float | str | None = None,
    pids: int | str | None = None,
    read_only: bool = False,
    tmpfs: Sequence[str] | Mapping[str, str] = (),
    mounts: Sequence[Any] = (),
    env: Mapping[str, str] | Sequence[str] | None = None,
    user: str | None = None,
    cwd: str | None = None,
    network: str | None = None,
    vm: UtilityVM | None = None,
    stdin: Stdin = None,
    hostname: str | None = None,
    runtime: str = "",
) -> RunResult:
    """Run ``args`` in a new container, capture its output, release everything; how it ended.

    * ``image_or_rootfs``: an image name (``"busybox"``, ``"alpine:3.19"``) or a
      root file system directory (an absolute or ``./`` path, or a ``Path``).
    * ``args``: the command (default: the image's entrypoint and cmd).
    * ``timeout`` (seconds): the container is killed then; ``timed_out`` says so.
    * ``memory`` (bytes or ``"64m"``), ``cpus`` (``0.5``), ``pids``: limits;
      ``oom_killed`` says whether the memory limit killed something.
    * ``read_only``: a read-only root; ``tmpfs``: writable tmpfs mounts
      (``["/tmp"]`` or ``{"/tmp": "size=64m"}``); ``mounts``: bind mounts
      (``"SRC:DST[:ro]"`` strings or ``oci.Mount``).
    * ``env`` (mapping, or ``NAME=VALUE`` / ``NAME`` entries: ``NAME`` alone
      passes this process's value), ``user`` (``name``, ``uid[:gid]``), ``cwd``.
    * ``network``: an hns network name to attach to (default: none at all).
    * ``vm``: a started :class:`~hcsoci.uvm.UtilityVM` to run in (left running).
    * ``stdin``: bytes, str or a binary reader (default: none).

    A non-zero exit is not an error (look at ``returncode``); bad input and
    a container that cannot be made raise :class:`~hcsoci.HcsociError`.
    """
    request, needs_scratch = _prepare(
        image_or_rootfs, args,
        memory=memory, cpus=cpus, pids=pids, read_only=read_only, tmpfs=tmpfs,
        mounts=mounts, env=env, user=user, cwd=cwd, network=network, vm=vm,
        hostname=hostname, runtime=runtime,
    )  # fmt: skip
    if timeout is not None and not timeout > 0:
        raise InvalidArgumentError(f"timeout: {timeout!r} must be a positive number of seconds")
    sandbox = _create(request, needs_scratch)
    with sandbox:
        process = request.spec.process
        shown = tuple(process.args or ()) if process is not None else ()
        return _run_cmd(Cmd(sandbox, None), shown, stdin, timeout, sandbox)
