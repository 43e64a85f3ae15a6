"""``hcsoci run | create | start | exec | list | state | kill | delete | gc``.

Containers made by ``run`` (without ``--rm``) and ``create`` are *handed over*
to the user: their controller pid becomes 0, so ``gc`` leaves them alone and
``delete`` releases them.  ``run --rm`` keeps the command as controller, so a
``run`` killed halfway is collected by ``gc``.  The scratch folder of an image
container lives at ``<state root>/scratch/<id>`` and goes with ``delete``.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import logging
import os
import queue
import signal
import sys
import termios
import threading
import time
import tty
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

import click

from hcsoci import container_table, context, cow, oci, run_options
from hcsoci.cli.common import start_vm_visibly
from hcsoci.cli.monitor import record_exit_code, recorded_exit_code, start_monitored
from hcsoci.cli.run_flags import ParsedFlags, apply_flags, flag_options, parse_flags
from hcsoci.cmd import Cmd, ExitError
from hcsoci.container import Container, ContainerProcess, DetachedProcess, open_container
from hcsoci.create import CreateOptions, create_container
from hcsoci.errors import (
    AlreadyExistsError,
    HcsociError,
    InvalidArgumentError,
    NotExecutableError,
    NotFoundError,
    StateError,
)
from hcsoci.etcfiles import etc_file_mount
from hcsoci.gc import collect, release_container
from hcsoci.paths import (
    ID_PATTERN,
    check_id,
    child,
    make_private_dir,
    remove_tree,
    write_private_file,
)
from hcsoci.resources import Resources, release_resources
from hcsoci.store import open_store, state_root

if TYPE_CHECKING:
    from hcsoci.ports import PortMapping
    from hcsoci.uvm import UtilityVM
    from hcsoci.uvm.remote import RemoteContainer

__all__ = ["register"]

log = logging.getLogger(__name__)

HCSOCI_ERROR_STATUS = 125
"""docker's status for a failure of its own (not the container's)."""

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_SCRATCH_SWEEP_AGE = 60.0  # seconds: younger scratch folders may belong to a create in flight


def _scratch_dir(container_id: str) -> Path:
    """``<state root>/scratch/<id>``, for an id already checked by the option that took it."""
    return child(state_root() / "scratch", container_id, "container id")


def _remove_scratch(container_id: str) -> None:
    try:
        remove_tree(_scratch_dir(container_id))
    except (HcsociError, OSError) as err:
        log.warning("scratch folder of %s not removed: %s", container_id, err)


def _checked_id(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Click callback: an id option or argument must follow the id rule before anything runs."""
    if value is None:
        return None
    try:
        return check_id(value, _param_name(param))
    except InvalidArgumentError as err:
        raise click.BadParameter(str(err).split(": ", 1)[1], ctx, param) from None


def _param_name(param: click.Parameter) -> str:
    if isinstance(param, click.Option) and param.opts:
        return max(param.opts, key=len)
    return (param.human_readable_name or "ID").upper()


def _fail(err: Exception) -> click.ClickException:
    return click.ClickException(str(err))


@dataclass
class ContainerRequest:
    """What `run` and `create` were asked for on the command line."""

    args: tuple[str, ...]
    image: str | None
    rootfs: str | None
    env: tuple[str, ...]
    workdir: str | None
    container_id: str
    terminal: bool
    runtime: str
    endpoints: tuple[str, ...]
    networks: tuple[str, ...]
    isolation: str = "process"
    security_opts: tuple[str, ...] = ()
    volumes: tuple[str, ...] = ()
    mount_specs: tuple[str, ...] = ()
    tmpfs: tuple[str, ...] = ()
    publish: tuple[str, ...] = ()
    memory: str | None = None
    cpus: str | None = None
    pids_limit: str | None = None
    user: str | None = None
    read_only: bool = False
    env_files: tuple[str, ...] = ()
    entrypoint: str | None = None
    hostname: str | None = None
    init: bool = False
    cap_add: tuple[str, ...] = ()
    cap_drop: tuple[str, ...] = ()
    privileged: bool = False
    dns: tuple[str, ...] = ()
    ports: list[PortMapping] = field(default_factory=list, init=False)
    """The checked ``--publish`` values (set once the flags are parsed)."""
    made_scratch: bool = field(default=False, init=False)
    """Set once this request made its scratch folder (only then is it ours to remove)."""


def _build_spec(request: ContainerRequest, flags: ParsedFlags) -> oci.Spec:
    spec = _spec_for_request(request, flags)
    if request.terminal and spec.process is not None:
        spec.process.console_size = _terminal_size()  # the size of the terminal we relay
    spec = apply_flags(spec, request, flags)
    for option in request.security_opts:
        _apply_security_option(spec, option)
    if flags.dns:
        _bind_resolv_conf(spec, request, flags.dns)
    return spec


def _bind_resolv_conf(spec: oci.Spec, request: ContainerRequest, servers: list[str]) -> None:
    """``--dns``: the container's own resolv.conf, kept in its scratch folder."""
    scratch = _scratch_dir(request.container_id)
    if not request.made_scratch:
        _make_scratch(request)
    path = scratch / "resolv.conf"
    write_private_file(path, run_options.resolv_conf(servers), mode=0o644)
    spec.mounts = [*(spec.mounts or []), etc_file_mount("resolv.conf", str(path))]


def _apply_security_option(spec: oci.Spec, option: str) -> None:
    """``--security-opt`` as docker reads it: ``seccomp=unconfined|FILE``, ``no-new-privileges``.

    docker's older ``seccomp:unconfined`` spelling is accepted too.
    """
    key, _, value = option.partition("=" if "=" in option else ":")
    if key == "seccomp" and value:
        assert spec.linux is not None and spec.process is not None
        if value == "unconfined":
            spec.linux.seccomp = None
            return
        bounding = spec.process.capabilities.bounding if spec.process.capabilities else []
        try:
            spec.linux.seccomp = oci.load_seccomp_profile(value, bounding or [])
        except InvalidArgumentError as err:
            raise InvalidArgumentError(f"--security-opt: {err}") from None
        return
    if key == "no-new-privileges" and value in ("", "true", "false"):
        assert spec.process is not None
        spec.process.no_new_privileges = value != "false"
        return
    raise InvalidArgumentError(
        f"--security-opt: {option!r} is not supported "
        "(seccomp=unconfined, seccomp=FILE, no-new-privileges[=true|false])"
    )


def _spec_for_request(request: ContainerRequest, flags: ParsedFlags) -> oci.Spec:
    args, image, rootfs, env = request.args, request.image, request.rootfs, flags.env
    workdir, terminal = request.workdir, request.terminal
    if rootfs is not None:
        if image is not None:
            raise InvalidArgumentError("--image and --rootfs: give one, not both")
        if not args and not request.entrypoint:
            raise InvalidArgumentError("CMD: a --rootfs container needs a command")
        spec = oci.default_spec(list(args) or [str(request.entrypoint)], terminal=terminal)
        spec.root = oci.Root(path=os.path.abspath(rootfs), readonly=False)
        assert spec.process is not None
        spec.process.env = [f"PATH={DEFAULT_PATH}", *env, *(["TERM=xterm"] if terminal else [])]
        if workdir:
            spec.process.cwd = workdir
        if request.user:
            spec.process.user = run_options.rootfs_user(Path(rootfs), request.user, "--user")
        return spec
    from hcsoci import images  # the image store is only needed here

    store = images.ImageStore()
    found = images.ensure_default_image(store) if image is None else store.get(image)
    try:
        spec = images.spec_for_image(
            found, list(args) or None, env, workdir, request.user, terminal=terminal
        )
    except NotFoundError as err:
        if request.user is None:
            raise
        raise NotFoundError(f"--user: {err}") from None
    assert spec.windows is not None and spec.windows.layer_folders is not None
    spec.windows.layer_folders = [*spec.windows.layer_folders, str(_make_scratch(request))]
    return spec


def _make_scratch(request: ContainerRequest) -> Path:
    """A new scratch folder for the container; never one another container already has."""
    scratch = _scratch_dir(request.container_id)
    make_private_dir(scratch.parent)
    try:
        scratch.mkdir(mode=0o700)
    except FileExistsError:
        raise AlreadyExistsError(
            f"--name: container {request.container_id!r} already exists"
        ) from None
    request.made_scratch = True
    return scratch


def _create(
    request: ContainerRequest, vm: UtilityVM | None = None
) -> tuple[cow.Container, Resources]:
    """Create the container; returns it and its resources.

    Endpoints made for ``--network`` are the container's own resources (see
    ``CreateOptions.networks``): its release, or gc, deletes them.
    """
    ctx = context.background()

    def make(options: CreateOptions) -> tuple[cow.Container, Resources]:
        container, resources = create_container(ctx, options)
        if request.ports:
            try:
                _publish(ctx, resources, request.networks[0], request.ports)
            except BaseException:
                container.close()
                release_resources(ctx, resources, vm, True)
                raise
        return container, resources

    return _creating(request, make, vm)


_Made = TypeVar("_Made")


def _creating(
    request: ContainerRequest, make: Callable[[CreateOptions], _Made], vm: UtilityVM | None = None
) -> _Made:
    """Build the spec and options of ``request`` and ``make`` the container from them."""
    container_id = request.container_id
    try:
        open_store()  # a damaged store is refused before anything is made
        flags = parse_flags(request)  # every flag checked before anything is made
        spec = _build_spec(request, flags)
        _list_endpoints(spec, request.endpoints)
        _check_networks(request.networks)
        options = CreateOptions(
            id=container_id,
            spec=spec,
            owner="hcsoci",
            runtime=request.runtime,
            hosting_system=vm,
            networks=request.networks,
        )
        if flags.ports and request.isolation == "vm":
            raise InvalidArgumentError("--publish: not with --isolation vm (not supported yet)")
        request.ports = flags.ports
        return make(options)
    except BaseException as err:
        if request.made_scratch:
            _remove_scratch(container_id)
        if isinstance(err, HcsociError):
            raise _fail(err) from err
        raise


def _publish(
    ctx: context.Context, resources: Resources, network: str, mappings: list[PortMapping]
) -> None:
    """``--publish``: forward the host ports to the container's endpoint on the first
    ``--network``."""
    from hcsoci import hns, ports
    from hcsoci.network import get_namespace_endpoints

    target = hns.get_network(network)
    endpoint = next(
        (
            e
            for e in get_namespace_endpoints(ctx, resources.net_ns)
            if e.virtual_network == target.id
        ),
        None,
    )
    if endpoint is None:
        raise NotFoundError(f"--publish: the container has no endpoint on network {network!r}")
    ports.publish(resources, target, endpoint, mappings)


def _list_endpoints(spec: oci.Spec, endpoints: tuple[str, ...]) -> None:
    """List the ``--endpoint`` ids in the spec, each checked to exist."""
    if not endpoints:
        return
    from hcsoci import hns

    if spec.windows is None:
        spec.windows = oci.Windows()
    if spec.windows.network is None:
        spec.windows.network = oci.WindowsNetwork()
    known = []
    for endpoint in endpoints:
        try:
            known.append(hns.get_endpoint_by_id(endpoint).id)
        except NotFoundError as err:
            raise NotFoundError(f"--endpoint: {err}") from None
    spec.windows.network.endpoint_list = [*(spec.windows.network.endpoint_list or []), *known]


def _check_networks(networks: tuple[str, ...]) -> None:
    """Name the option when a ``--network`` does not exist (create checks it too)."""
    if not networks:
        return
    from hcsoci import hns

    for network in networks:
        try:
            hns.get_network(network)
        except NotFoundError as err:
            raise NotFoundError(f"--network: {err}") from None


def _hand_over(container_id: str) -> None:
    container_table.hand_over(open_store(), container_id)


@contextlib.contextmanager
def _raw_terminal(enabled: bool) -> Iterator[None]:
    """Put our terminal in raw mode while a container terminal is attached."""
    if not enabled or not os.isatty(0):
        yield
        return
    saved = termios.tcgetattr(0)
    tty.setraw(0, termios.TCSADRAIN)  # what was typed ahead is kept for the process
    try:
        yield
    finally:
        with contextlib.suppress(termios.error):  # the terminal hung up
            termios.tcsetattr(0, termios.TCSADRAIN, saved)


def _terminal_size() -> oci.Box | None:
    with contextlib.suppress(OSError):
        size = os.get_terminal_size(sys.stdout.fileno())
        return oci.Box(height=size.lines, width=size.columns)
    return None


_PROXIED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
"""What a foreground ``run``/``exec`` forwards to its process, as ``docker run --sig-proxy``."""


class _Interrupted(Exception):
    """A proxied signal came before there was a process to forward it to."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class _SignalProxy:
    """SIGINT, SIGTERM and SIGHUP to this command go to the container's process.

    Until :meth:`hold`, such a signal aborts the command (:class:`_Interrupted`
    in the main thread, so that what was made is released); from then on each
    one is queued, and from :meth:`attach` on a thread forwards each, once, to
    the process -- a second ^C is a second SIGINT, not a SIGKILL (the process
    may trap it).  The process's runtime runs in a process group of its own,
    so a signal to our group (a terminal's ^C) reaches the process only
    through here, exactly as a ``kill PID`` of this command does.  With
    ``resize`` set, SIGWINCH resizes the process's terminal to ours.

    A container's init is the init of its pid namespace, to which the kernel
    delivers no signal it has no handler for: a plain ``sleep`` would never
    see the SIGTERM.  For such a signal the proxy does what its default action
    would have done to any other process: it kills the init, and the command
    exits ``128 + N`` as if signal N had ended it (docker leaves the process
    running instead, unless ``--init``).
    """

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[int | None] = queue.SimpleQueue()
        self._emulated: int | None = None
        self._holding = False
        self._saved: dict[int, Any] = {}
        self._thread: threading.Thread | None = None

    def __enter__(self) -> _SignalProxy:
        for sig in _PROXIED:
            if sig != signal.SIGTERM and signal.getsignal(sig) == signal.SIG_IGN:
                continue  # nohup, or a shell's background job: it stays ignored
            self._saved[sig] = signal.signal(sig, self._on_signal)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)
        self._saved.clear()
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    def _on_signal(self, signum: int, frame: object) -> None:
        if not self._holding:
            raise _Interrupted(signum)
        self._queue.put(signum)  # SimpleQueue.put may be called from a signal handler

    def hold(self, resize: bool = False) -> None:
        """From now on queue the signals for the process (and SIGWINCH with ``resize``)."""
        self._holding = True
        if resize:
            self._saved.setdefault(signal.SIGWINCH, signal.signal(signal.SIGWINCH, self._on_signal))

    def attach(self, process: cow.Process) -> None:
        """Forward the queued signals, and those to come, to ``process``."""
        self._thread = threading.Thread(
            target=self._forward, args=(process,), name="hcsoci-signal-proxy", daemon=True
        )
        self._thread.start()

    def _forward(self, process: cow.Process) -> None:
        ctx = context.background()
        while (signum := self._queue.get()) is not None:
            try:
                if signum == signal.SIGWINCH:
                    size = _terminal_size()
                    if size is not None:
                        process.resize_console(ctx, size.width, size.height)
                    continue
                dropped = _dropped_by_namespace_init(process, signum)
                delivered = process.signal(ctx, signum)
                log.debug("forwarded %s: delivered %s", signal.Signals(signum).name, delivered)
                if delivered and dropped:
                    self._emulated = signum
                    process.kill(ctx)
            except HcsociError as err:  # exited and closed meanwhile
                log.debug("forwarding signal %d failed: %s", signum, err)

    def exit_status(self, code: int) -> int:
        """The command's status for a process that exited with ``code``."""
        if code == 128 + signal.SIGKILL and self._emulated is not None:
            return 128 + self._emulated  # killed for a signal the kernel dropped
        return code


def _dropped_by_namespace_init(process: cow.Process, signum: int) -> bool:
    """Whether ``signum`` to ``process`` would be dropped: it is the init of its own
    pid namespace (on this machine) and neither catches nor ignores the signal."""
    if not isinstance(process, ContainerProcess | DetachedProcess):
        return False  # in a utility VM: its pid is not one of this machine's
    try:
        status = Path(f"/proc/{process.pid()}/status").read_text()
    except OSError:
        return False
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    if fields.get("NSpid", "").split()[-1:] != ["1"]:
        return False
    bit = 1 << (signum - 1)
    handled = int(fields.get("SigCgt", "0"), 16) | int(fields.get("SigIgn", "0"), 16)
    return not handled & bit


def _start_failure(err: HcsociError, failure: int) -> int:
    """Report a process that could not start; the status a shell (and docker) gives it."""
    click.echo(f"hcsoci: {err}", err=True)
    if isinstance(err, NotFoundError):
        return 127
    if isinstance(err, NotExecutableError):
        return 126
    return failure


def _run_cmd(
    cmd: Cmd,
    interactive: bool,
    terminal: bool,
    proxy: _SignalProxy,
    failure: int = HCSOCI_ERROR_STATUS,
) -> int:
    """Run ``cmd`` on our stdio in the foreground; its exit status.

    ``failure`` is the status when hcsoci itself failed: 125 for ``run`` (docker's),
    1 for ``exec``; a command not found is 127, one that cannot run 126.

    The streams are our raw descriptors 0-2, never ``sys.stdin.buffer`` & co.: a
    process on this machine gets them as they are (see ``Cmd``), and a relay
    blocked reading our stdin holds no lock the interpreter's exit would wait on.
    """
    cmd.stdin = io.FileIO(0, "rb", closefd=False) if interactive else None
    cmd.stdout = io.FileIO(1, "wb", closefd=False)
    cmd.stderr = None if terminal else io.FileIO(2, "wb", closefd=False)
    sys.stdout.flush()
    proxy.hold(resize=terminal)
    with _raw_terminal(terminal and interactive):
        try:
            cmd.start()
        except HcsociError as err:
            return _start_failure(err, failure)
        assert cmd.process is not None
        proxy.attach(cmd.process)
        try:
            cmd.wait()
        except ExitError as err:
            return proxy.exit_status(err.exit_code)
        except HcsociError as err:  # the process ran; its stdio failed
            click.echo(f"hcsoci: {err}", err=True)
            return cmd.exit_state.exit_code if cmd.exit_state.exited else failure
    return 0


class ImageFirstCommand(click.Command):
    """``run``/``create`` parse as docker's: ``[OPTIONS] IMAGE [CMD...]``, options end at IMAGE.

    ``[OPTIONS] -- CMD...`` (every positional after ``--``) keeps the older form:
    the default image, or ``--image``/``--rootfs``, runs ``CMD``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("context_settings", {})["allow_interspersed_args"] = False
        super().__init__(*args, **kwargs)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta["hcsoci.after_dashdash"] = len(args) - args.index("--") - 1 if "--" in args else -1
        return super().parse_args(ctx, args)


def _image_first(shared: dict[str, Any]) -> tuple[str, ...]:
    """Take the image off the positionals (docker's form); the command that is left."""
    args = list(shared["args"])
    after_dashdash = click.get_current_context().meta.get("hcsoci.after_dashdash", -1)
    if shared["image"] is not None or shared["rootfs"] is not None or not args:
        return tuple(args)
    if after_dashdash == len(args):
        return tuple(args)  # `run [OPTIONS] -- CMD...`: the default image
    shared["image"] = args.pop(0)
    if args[:1] == ["--"]:
        args.pop(0)
    return tuple(args)


def _container_options(function: Callable[..., None]) -> Callable[..., None]:
    """The options `run` and `create` share, handed to ``function`` as one ContainerRequest."""

    @functools.wraps(function)
    def with_request(**kwargs: Any) -> None:
        shared = {f.name: kwargs.pop(f.name) for f in fields(ContainerRequest) if f.init}
        shared["container_id"] = shared["container_id"] or str(uuid.uuid4())
        shared["args"] = _image_first(shared)
        function(ContainerRequest(**shared), **kwargs)

    decorated: Any = with_request
    for option in reversed(
        [
            click.option("--image", help="Image to run (default: the busybox image)."),
            click.option("--rootfs", type=click.Path(exists=True, file_okay=False),
                         help="A root file system directory instead of an image."),
            click.option("-e", "--env", multiple=True,
                         help="NAME=VALUE for the process (NAME alone: this value passed on)."),
            click.option("-w", "--workdir", help="Working directory in the container."),
            click.option("--name", "container_id", callback=_checked_id,
                         help="Container id (default: a uuid)."),
            click.option("-t", "--tty", "terminal", is_flag=True, help="Allocate a terminal."),
            click.option("--runtime", default="", help="OCI runtime: runc (default) or crun."),
            click.option("--endpoint", "endpoints", multiple=True,
                         help="Attach this existing endpoint (id) to the container."),
            click.option("--network", "networks", multiple=True,
                         help="Attach a new endpoint on this network, deleted with the container."),
            click.option("--isolation", type=click.Choice(["process", "vm"]), default="process",
                         help="process: runc on this host; vm: in a utility VM made for this "
                         "command (implies --rm)."),
            click.option("--security-opt", "security_opts", multiple=True,
                         help="seccomp=unconfined | seccomp=FILE (OCI or docker profile) | "
                         "no-new-privileges[=false]."),
            *flag_options(),
            click.argument("args", nargs=-1, type=click.UNPROCESSED),
        ]
    ):  # fmt: skip
        decorated = option(decorated)
    return cast(Callable[..., None], decorated)


@click.command(cls=ImageFirstCommand)
@click.option("--rm", "remove", is_flag=True, help="Delete the container when it exits.")
@click.option("-i", "--interactive", is_flag=True, help="Relay stdin to the process.")
@click.option(
    "-d",
    "--detach",
    is_flag=True,
    help="Run in the background (output to `hcsoci logs`); print the id.",
)
@click.option(
    "--vm-template",
    type=click.Choice(["auto", "never", "require"]),
    default="auto",
    show_default=True,
    help="--isolation vm: restore the VM from its template (auto: when one exists), or boot it.",
)
@click.option(
    "--vm",
    "vm_id",
    callback=_checked_id,
    help="Run it in this running utility VM, through its controller (implies --isolation vm).",
)
@_container_options
def run(
    request: ContainerRequest,
    remove: bool,
    interactive: bool,
    detach: bool,
    vm_template: str,
    vm_id: str | None,
) -> None:
    """Create a container from IMAGE, run CMD with this terminal's stdio; exit with its status.

    ``hcsoci run [OPTIONS] IMAGE [CMD...]`` as docker (``hcsoci run [OPTIONS] --
    CMD...`` runs the default busybox image).

    SIGINT, SIGTERM and SIGHUP are forwarded to the container's init, each
    once; the command then waits for it, releases the container with ``--rm``,
    and exits with the init's status (``128 + N`` when signal N ended it).
    One that comes before the init runs ends the command (``128 + N``).
    """
    if detach:
        _run_detached(request, remove, interactive)
        return
    with _SignalProxy() as proxy:
        try:
            if vm_id:
                status = _run_in_served_vm(request, vm_id, remove, interactive, proxy)
            elif request.isolation == "vm":
                status = _run_in_vm(request, interactive, proxy, vm_template)
            else:
                status = _run_here(request, remove, interactive, proxy)
        except _Interrupted as stop:
            status = 128 + stop.signum
    sys.exit(status)


def _run_here(
    request: ContainerRequest, remove: bool, interactive: bool, proxy: _SignalProxy
) -> int:
    """``run`` of a process-isolated container; its init's status."""
    container, resources = _create(request)
    status: int | None = None
    try:
        if not remove:
            _hand_over(request.container_id)
            resources.hand_over()
        status = _run_cmd(Cmd(container, None), interactive, request.terminal, proxy)
        return status
    finally:
        if not remove and isinstance(container, Container):
            record_exit_code(container, container.init_exit_code())
        proxy.hold()  # from here on a signal must not cut the release short
        container.close()
        if remove:
            release_resources(context.background(), resources, None, True)
            _remove_scratch(request.container_id)


def _run_in_vm(
    request: ContainerRequest, interactive: bool, proxy: _SignalProxy, template: str = "auto"
) -> int:
    """``run --isolation vm``: a VM for this command, the container in it, then all released."""
    from hcsoci import uvm

    ctx = context.background()
    try:
        vm = uvm.create(ctx, uvm.UVMOptions(owner="hcsoci", template=template))
    except HcsociError as err:
        raise _fail(err) from err
    try:
        start_vm_visibly(ctx, vm)
        container, resources = _create(request, vm)
        try:
            return _run_cmd(Cmd(container, None), interactive, request.terminal, proxy)
        finally:
            proxy.hold()
            container.close()
            # The VM goes away with its shares: all=False, as the seed does.
            release_resources(ctx, resources, vm, False)
    except HcsociError as err:
        raise _fail(err) from err
    finally:
        proxy.hold()
        vm.close()
        _remove_scratch(request.container_id)


def _run_in_served_vm(
    request: ContainerRequest, vm_id: str, remove: bool, interactive: bool, proxy: _SignalProxy
) -> int:
    """``run --vm ID``: the container in a running VM, made and run through its controller."""
    from hcsoci.cli import vm_containers

    request.isolation = "vm"
    container = _creating(request, vm_containers.creator(vm_id))
    try:
        return _run_cmd(Cmd(container, None), interactive, request.terminal, proxy)
    finally:
        proxy.hold()  # from here on a signal must not cut the release short
        if remove:
            try:
                container.delete(force=True)
            except HcsociError as err:
                raise _fail(err) from err
            finally:
                _remove_scratch(request.container_id)


def _run_detached(request: ContainerRequest, remove: bool, interactive: bool) -> None:
    """``run -d``: create, start under a monitor of its own (see hcsoci.cli.monitor), print id."""
    if request.isolation != "process":
        raise click.UsageError("-d: --isolation vm runs in the foreground only")
    if interactive or request.terminal:
        raise click.UsageError("-d: not with -i or -t (the output goes to `hcsoci logs`)")
    if remove:
        raise click.UsageError("-d: not with --rm (use `hcsoci stop` and `hcsoci delete`)")
    container, resources = _create(request)
    _hand_over(request.container_id)
    resources.hand_over()
    container.close()
    try:
        start_monitored(request.container_id)
    except HcsociError as err:
        raise _fail(err) from err
    click.echo(request.container_id)


@click.command(cls=ImageFirstCommand)
@click.option(
    "--vm",
    "vm_id",
    callback=_checked_id,
    help="With --isolation vm: a running utility VM to put it in (default: a new one).",
)
@_container_options
def create(request: ContainerRequest, vm_id: str | None) -> None:
    """Create a container (not started); prints its id.

    ``--isolation vm`` puts it in a utility VM served by a controller process,
    which later commands reach; a new VM ends with its last container.
    """
    if request.terminal:
        raise click.UsageError("-t: a created container's init logs to a file; use `run -t`")
    if request.isolation == "vm" or vm_id:
        from hcsoci.cli import vm_containers

        _creating(request, vm_containers.creator(vm_id or "")).close()
        click.echo(request.container_id)
        return
    container, resources = _create(request)
    _hand_over(request.container_id)
    resources.hand_over()
    container.close()
    click.echo(request.container_id)


def _open(container_id: str) -> Container | RemoteContainer:
    try:
        return open_container(container_id)
    except HcsociError as err:
        raise _fail(err) from err


@click.command()
@click.argument("container_id", callback=_checked_id)
def start(container_id: str) -> None:
    """Start a created container's init (output to `hcsoci logs`), watched by a monitor
    that keeps its exit code (a container in a utility VM: by the VM's controller)."""
    container = _open(container_id)
    try:
        if not isinstance(container, Container):
            container.start(context.background())
            return
    except HcsociError as err:
        raise _fail(err) from err
    finally:
        container.close()
    try:
        start_monitored(container_id)
    except HcsociError as err:
        raise _fail(err) from err


@click.command(name="exec")
@click.option("-i", "--interactive", is_flag=True, help="Relay stdin to the process.")
@click.option("-t", "--tty", "terminal", is_flag=True, help="Allocate a terminal.")
@click.option("-e", "--env", multiple=True, help="NAME=VALUE added to the init's environment.")
@click.option("-w", "--workdir", help="Working directory (default: the init's).")
@click.argument("container_id", callback=_checked_id)
@click.argument("args", nargs=-1, required=True)
def exec_(
    interactive: bool,
    terminal: bool,
    env: tuple[str, ...],
    workdir: str | None,
    container_id: str,
    args: tuple[str, ...],
) -> None:
    """Run a command in a running container; exit with its status.

    SIGINT, SIGTERM and SIGHUP are forwarded to the process, as with ``run``.
    """
    container = _open(container_id)
    init = container.spec.process or oci.Process()
    process = oci.Process(
        args=list(args),
        env=[*(init.env or [f"PATH={DEFAULT_PATH}"]), *env],
        cwd=workdir or init.cwd,
        user=init.user,
        terminal=terminal,
        console_size=_terminal_size() if terminal else None,
        capabilities=init.capabilities,
        no_new_privileges=init.no_new_privileges,
    )
    with _SignalProxy() as proxy:
        try:
            status = _run_cmd(Cmd(container, process), interactive, terminal, proxy, failure=1)
        except _Interrupted as stop:
            status = 128 + stop.signum
        except HcsociError as err:
            raise _fail(err) from err
        finally:
            container.close()
    sys.exit(status)


@click.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_(as_json: bool) -> None:
    """List the containers in the state store."""
    found: list[dict[str, Any]] = []
    for row in container_table.list_rows(open_store()):
        state = row.state
        if state not in ("creating",):
            with contextlib.suppress(HcsociError):
                state = open_container(row.id).properties(context.background()).state
        found.append(
            {
                "id": row.id,
                "owner": row.owner,
                "state": state,
                "created": row.created_at,
                "controller_pid": row.controller_pid,
            }
        )
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("ID", "STATE", "OWNER", "CREATED")
    for item in found:
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(item["created"]))
        table.add_row(item["id"], item["state"], item["owner"], created)
    Console().print(table)


@click.command()
@click.argument("container_id", callback=_checked_id)
def state(container_id: str) -> None:
    """Print a container's properties as JSON (a stopped one's exit code included)."""
    container = _open(container_id)
    try:
        props = container.properties(context.background())
        if (
            props.exit_code is None
            and props.state == "stopped"
            and isinstance(container, Container)
        ):
            props.exit_code = recorded_exit_code(container)
    finally:
        container.close()
    click.echo(json.dumps(props.to_dict(), indent=2))


def _parse_signal(text: str) -> int:
    if text.isdigit():
        return int(text)
    name = text.upper()
    name = name if name.startswith("SIG") else f"SIG{name}"
    try:
        return int(signal.Signals[name])
    except KeyError:
        raise InvalidArgumentError(f"SIGNAL: {text!r} is not a signal") from None


@click.command()
@click.argument("container_id", callback=_checked_id)
@click.argument("sig", default="TERM")
def kill(container_id: str, sig: str) -> None:
    """Send a signal (default TERM) to a container's init."""
    container = _open(container_id)
    try:
        number = _parse_signal(sig)
        if container.properties(context.background()).state not in ("running", "paused"):
            raise StateError(f"container {container_id}: not running")
        if isinstance(container, Container):
            container.runtime.kill(container_id, number)
        else:
            container.signal(context.background(), number)
    except HcsociError as err:
        raise _fail(err) from err


@click.command()
@click.option("-f", "--force", is_flag=True, help="Kill the container if it runs.")
@click.argument("container_id", callback=_checked_id)
def delete(force: bool, container_id: str) -> None:
    """Release a container and everything it holds."""
    ctx = context.background()
    try:
        row = container_table.get(open_store(), container_id)
        if row is not None and not force:
            recorded = row.state
            if recorded == "creating":
                raise StateError(f"container {container_id} is being created; use delete -f")
            current = recorded
            if recorded == "running":
                with contextlib.suppress(HcsociError):
                    current = open_container(container_id).properties(ctx).state
            if current in ("running", "paused"):
                raise StateError(f"container {container_id} is {current}; use delete -f")
        release_container(ctx, container_id)
    except HcsociError as err:
        raise _fail(err) from err
    _remove_scratch(container_id)


@click.command()
def gc() -> None:
    """Release containers, namespaces, endpoints and VMs whose controller died; prints them."""
    from hcsoci import hns
    from hcsoci.uvm import reap_dead_vms

    try:
        for container_id in collect(context.background()):
            _remove_scratch(container_id)
            click.echo(container_id)
        for line in hns.gc(context.background()):
            click.echo(line)
        for vm_id in reap_dead_vms():
            click.echo(f"released utility VM {vm_id} (its QEMU or its controller was gone)")
    except HcsociError as err:
        raise _fail(err) from err
    scratch_root = state_root() / "scratch"
    if scratch_root.is_dir():
        known = {row.id for row in container_table.list_rows(open_store())}
        for entry in scratch_root.iterdir():
            if (
                entry.name not in known
                and ID_PATTERN.fullmatch(entry.name)
                and time.time() - entry.lstat().st_mtime > _SCRATCH_SWEEP_AGE
            ):
                _remove_scratch(entry.name)


def register(group: click.Group) -> None:
    """Add the container commands to the ``hcsoci`` group."""
    for command in (run, create, start, exec_, list_, state, kill, delete, gc):
        group.add_command(command)
