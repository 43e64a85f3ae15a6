"""The utility VM: a QEMU guest with this package's agent, driven over QMP.

Lifecycle (hcsshim's ``uvm`` package): :func:`create` validates the options,
finds the boot assets and records the VM in the state store; ``start``
launches QEMU (in its own session, so a VM made by ``hcsoci uvm create``
outlives that command), connects QMP and waits for the guest agent;
``terminate`` asks QEMU to quit, then kills it; ``close`` terminates and
releases everything on the host.  A VM is a ``ProcessHost``: ``command(vm,
...)`` runs a process in the guest's own OS.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import select
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hcsoci.context import Canceled, Context, background, with_cancel
from hcsoci.controller import (
    controller_alive,
    controller_identity,
    process_alive,
    process_start_time,
)
from hcsoci.cow import ProcessParameters
from hcsoci.errors import (
    AlreadyExistsError,
    HcsociError,
    InvalidArgumentError,
    NotFoundError,
    StateError,
)
from hcsoci.gcs.connection import GuestConnection, GuestProcess
from hcsoci.mounts import MS_NODEV, MS_NOEXEC, MS_NOSUID, is_mounted, mount, mounts_under, unmount
from hcsoci.paths import child, make_private_dir, remove_tree
from hcsoci.resources import forget_vm_records
from hcsoci.store import Store, open_store, state_root
from hcsoci.uvm.accel import QEMU_BINARY, machine_args, resolve_accel, vcpu_count
from hcsoci.uvm.assets import GUEST_AGENT, BootAssets, load_assets
from hcsoci.uvm.devices import forget_vm_devices
from hcsoci.uvm.network import GuestNetworks, VMNic, delete_vm_taps
from hcsoci.uvm.options import UVMOptions
from hcsoci.uvm.plan9 import Plan9Share, Plan9Slots
from hcsoci.uvm.qmp import QMPCommandError, QMPSession
from hcsoci.uvm.scsi import SCSIAttachment, SCSIController
from hcsoci.uvm.template import (
    StateChecksum,
    Template,
    TemplateError,
    TemplateIdentity,
    discard_template,
    find_template,
    save_template,
    templates_dir,
)
from hcsoci.uvm.vpmem import VPMemDevice, VPMemDevices, memory_argument

__all__ = [
    "UVMStartError",
    "UtilityVM",
    "VMRecord",
    "create",
    "ensure_template",
    "list_vms",
    "open_vm",
    "reap_dead_vms",
    "remove_vm",
]

log = logging.getLogger(__name__)

GCS_PORT_ID = "gcsport"

QEMU_SANDBOX = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
"""QEMU's seccomp filter (``-sandbox``): no obsolete system calls, no set*uid,
no fork/exec, no scheduler or CPU-affinity changes.  Hot-plug (9p, SCSI,
virtio-net on a tap the host made) works under all of it."""


class UVMStartError(HcsociError):
    """The VM did not boot to a working guest agent; the message ends with its console."""


UNPLUG_TIMEOUT_DEAD_GUEST = 5.0
"""Seconds an unplug waits for a guest whose bridge is dead before giving up quietly."""

QEMU_EXIT_GRACE = 5.0
"""Seconds a failed QMP command waits to learn whether QEMU died under it (then: gone)."""

LOG_DIR_LIMIT = 8 << 20
"""Bytes of QEMU's and the guest console's logs kept per VM (the first ones; see ``start``)."""


class VMRecord(dict[str, Any]):
    """A row of the ``vms`` table."""


def _vm_dir(uvm_id: str) -> Path:
    return child(state_root() / "uvm", uvm_id, "VM id")


class UtilityVM:
    """A QEMU utility VM with a guest agent (``hcsoci.cow.ProcessHost``)."""

    def __init__(self, options: UVMOptions, assets: BootAssets, state_dir: Path, store: Store):
        self.options = options
        self.assets = assets
        self.state_dir = state_dir
        self._store = store
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._pid = 0
        self._pid_start = 0
        self._qmp: QMPSession | None = None
        self._gcs: GuestConnection | None = None
        self._watcher: threading.Thread | None = None
        self._exited = threading.Event()
        self._deleted: dict[str, threading.Event] = {}
        self._deleted_lock = threading.Lock()
        self._terminated = False
        self._control_fd: int | None = None
        self.accel = ""
        self.restored = False
        """Whether ``start`` restored the VM from a template (False: it booted)."""
        self.on_progress: Callable[[str], None] | None = None
        """Called by ``start`` with what it does next: ``"restoring"`` or ``"booting"``."""
        self.plan9 = Plan9Slots(self, state_dir / "plan9", options.plan9_slots)
        self.scsi = SCSIController(self, options.scsi_luns)
        self.vpmem = VPMemDevices(self, self._vpmem_slots())
        self.networks = GuestNetworks(self)
        self.log_dir = state_dir / "logs"
        """A small tmpfs of its own for QEMU's and the guest console's logs (see ``start``)."""
        self.console_log = options.console_log or str(self.log_dir / "console.log")

    # -- identity -----------------------------------------------------------

    def id(self) -> str:
        """The VM's id."""
        return self.options.id

    def os(self) -> str:
        """The guest's operating system."""
        return "linux"

    def is_oci(self) -> bool:
        """False: the VM's own processes take :class:`ProcessParameters`."""
        return False

    def pid(self) -> int:
        """The QEMU process id (0 before start)."""
        return self._pid

    @property
    def boot_id(self) -> str:
        """The guest kernel's boot id, as its agent reported it."""
        return self._gcs.boot_id if self._gcs is not None else ""

    @property
    def gcs(self) -> GuestConnection:
        """The bridge to the guest agent (raises before start)."""
        if self._gcs is None:
            raise HcsociError(f"VM {self.id()} is not started")
        return self._gcs

    def is_running(self) -> bool:
        """Whether QEMU is running and the bridge to the agent works."""
        return not self._exited.is_set() and self._gcs is not None and self._gcs.broken is None

    # -- lifecycle ----------------------------------------------------------

    def qemu_command(self, accel: str) -> list[str]:
        """The QEMU command line of this VM."""
        d = self.state_dir
        append = " ".join(
            part
            for part in (
                "console=ttyS0 quiet panic=-1",
                f"hcsoci.python={self.assets.python}",
                f"hcsoci.agent={GUEST_AGENT}",
                self.options.kernel_args,
            )
            if part
        )
        return [
            QEMU_BINARY,
            "-name",
            f"hcsoci-{self.id()},debug-threads=on",
            *machine_args(accel),
            "-m",
            memory_argument(self.options.memory_mb, self._vpmem_slots()),
            "-smp",
            str(vcpu_count(self.options.cpu_count, accel)),
            "-display",
            "none",
            "-nodefaults",
            "-no-user-config",
            "-no-reboot",
            "-sandbox",
            QEMU_SANDBOX,
            "-pidfile",
            str(d / "qemu.pid"),
            "-chardev",
            f"socket,id=qmp,path={d / 'qmp.sock'},server=on,wait=off",
            "-mon",
            "chardev=qmp,mode=control",
            "-chardev",
            f"file,id=console,path={self.console_log}",
            "-serial",
            "chardev:console",
            "-kernel",
            str(self.assets.kernel),
            "-initrd",
            str(self.assets.initramfs),
            "-append",
            append,
            "-device",
            "virtio-serial-pci,id=vser0,max_ports=2",
            "-chardev",
            f"socket,id=gcs,path={d / 'gcs.sock'},server=on,wait=off",
            "-device",
            f"virtserialport,bus=vser0.0,chardev=gcs,name=hcsoci.gcs,id={GCS_PORT_ID}",
            *SCSIController.qemu_args(),
            *self.plan9.prepare(),
        ]

    def _vpmem_slots(self) -> int:
        return self.options.vpmem_slots if self.options.layer_device == "vpmem" else 0

    def start(self, ctx: Context) -> None:
        """Bring the VM up and wait (``boot_timeout``) until its guest agent answers.

        It is restored from a template when ``UVMOptions.template`` allows and a
        matching one exists (:mod:`hcsoci.uvm.template`), and booted otherwise;
        a template that cannot be restored is discarded (one log line) and the
        VM boots.  On failure the VM is terminated and its host resources released.
        """
        ctx.check()
        if self._process is not None or self._terminated:
            raise HcsociError(f"VM {self.id()}: start called twice")
        self._take_control()
        deadline = time.monotonic() + self.options.boot_timeout
        try:
            self.accel = resolve_accel(self.options.accel, self.assets)
            self._mount_log_dir()
            mode = self.options.template
            identity = TemplateIdentity.of(
                self.assets,
                self.accel,
                self.options.memory_mb,
                vcpu_count(self.options.cpu_count, self.accel),
                self.qemu_command(self.accel),
            )
            folder = templates_dir(self.assets)
            template = find_template(identity, folder) if mode != "never" else None
            if template is None and mode == "require":
                raise UVMStartError(
                    f"no usable template {identity.name} in {folder} "
                    "(UVMOptions.template='require'): run `hcsoci uvm build-assets` "
                    "or start one VM with template='auto'"
                )
            if template is not None:
                self._progress("restoring")
                try:
                    self._restore(ctx, template, deadline)
                except (HcsociError, OSError) as err:
                    if ctx.err() is not None or isinstance(err, InvalidArgumentError):
                        raise
                    self._abandon_restore()
                    discard_template(template.directory, f"restore failed: {_one_line(err)}")
                    if mode == "require":
                        raise UVMStartError(f"restoring template {identity.name}: {err}") from err
                    template = None
            if template is None:
                self._progress("booting")
                self._launch(self.qemu_command(self.accel))
                self._connect_qmp(deadline)
                self._connect_agent(ctx, deadline, template=mode == "auto")
                if mode == "auto":
                    self._save_as_template(ctx, identity, folder, deadline)
        except BaseException as err:
            detail = self._failure_detail()
            self.close()
            if isinstance(err, HcsociError | OSError) and not isinstance(err, InvalidArgumentError):
                raise UVMStartError(f"VM {self.id()} failed to start: {err}{detail}") from err
            raise
        log.info(
            "utility VM started",
            extra={"vm": self.id(), "accel": self.accel, "restored": self.restored},
        )

    def _progress(self, what: str) -> None:
        if self.on_progress is not None:
            self.on_progress(what)

    def _launch(self, command: list[str], pass_fds: tuple[int, ...] = ()) -> None:
        """Start QEMU with ``command`` (its log in the log tmpfs) and watch it."""
        log_fd = os.open(
            self.log_dir / "qemu.log",
            os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC,
            0o600,
        )
        with open(log_fd, "wb") as qemu_log:
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=qemu_log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                pass_fds=pass_fds,
                umask=0o177,  # its sockets, pid file and console log: 0600
            )
        self._pid = self._process.pid
        self._pid_start = process_start_time(self._pid) or 0
        self._store.execute(
            "UPDATE vms SET pid = ?, pid_start = ?, state = 'running', accel = ? WHERE id = ?",
            (self._pid, self._pid_start, self.accel, self.id()),
        )
        self._watcher = threading.Thread(
            target=self._watch_qemu, name=f"uvm-{self.id()}-watch", daemon=True
        )
        self._watcher.start()

    def _restore(self, ctx: Context, template: Template, deadline: float) -> None:
        """Start QEMU on ``template``'s state, check it, resume it, make the guest its own."""
        deadline = min(deadline, time.monotonic() + self.options.restore_timeout)
        fd = os.open(template.state, os.O_RDONLY | os.O_CLOEXEC)
        try:
            command = [*self.qemu_command(self.accel), "-incoming", f"fd:{fd}", "-S"]
            self._launch(command, pass_fds=(fd,))
        finally:
            os.close(fd)
        checksum = StateChecksum(template)
        try:
            self._connect_qmp(deadline)
            while True:
                status = self._qmp_execute("query-status", {}).get("status")
                if status != "inmigrate":
                    break
                if time.monotonic() > deadline:
                    raise TemplateError("QEMU did not finish loading the template in time")
                time.sleep(0.005)
            if status != "paused":
                raise TemplateError(f"QEMU is {status!r} after loading the template, not paused")
        except (HcsociError, OSError) as err:
            checksum.verify()  # a damaged file says so first
            if self._exited.wait(QEMU_EXIT_GRACE):
                raise TemplateError(f"QEMU refused the template: {self._qemu_log_tail()}") from err
            raise
        # The guest has not run a single instruction yet: refuse damaged memory now.
        checksum.verify()
        self._qmp_execute("cont", {})
        self._connect_agent(ctx, deadline, clone=self._clone_identity())
        self.restored = True

    def _clone_identity(self) -> dict[str, Any]:
        """What makes a guest that shares its memory with others its own (``negotiate``)."""
        return {"entropy": os.urandom(64).hex(), "time_ns": time.time_ns(), "id": self.id()}

    def _save_as_template(
        self, ctx: Context, identity: TemplateIdentity, folder: Path, deadline: float
    ) -> None:
        """Save this freshly booted guest as the template, then make it its own.

        The bridge is dropped first, so the template's agent waits for a host to
        connect (every restore reconnects); the VM then runs on as if it had
        been restored itself, so it shares nothing unseeded with its clones.
        A template that cannot be saved is logged and the VM runs on.
        """
        self.gcs.close()
        self._gcs = None
        try:
            self._wait_console(AGENT_PARKED_MARKER, deadline)
            self._qmp_execute("stop", {})
            try:
                assert self._qmp is not None
                save_template(identity, folder, self._qmp_execute, self._qmp.pass_fd)
            finally:
                self._qmp_execute("cont", {})
        except (HcsociError, OSError) as err:
            if self._exited.is_set():
                raise
            log.warning("utility VM template not saved: %s", _one_line(err))
        self._connect_agent(ctx, deadline, clone=self._clone_identity())

    def _wait_console(self, marker: str, deadline: float) -> None:
        """Wait until the guest console's tail shows ``marker``."""
        while marker not in _read_tail(self.console_log):
            if self._exited.is_set():
                raise UVMStartError(f"QEMU exited with status {self._process_status()}")
            if time.monotonic() > deadline:
                raise TemplateError(f"the guest console never showed {marker!r}")
            time.sleep(0.01)

    def _abandon_restore(self) -> None:
        """Kill the QEMU of a failed restore and forget it, so the VM can boot instead."""
        if self._gcs is not None:
            self._gcs.close()
            self._gcs = None
        if self._qmp is not None:
            self._qmp.close()
            self._qmp = None
        if self._process is not None and self._process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self._process.kill()
        if self._watcher is not None:
            self._watcher.join(30.0)
        self._process, self._watcher, self._pid, self._pid_start = None, None, 0, 0
        self._exited.clear()
        for name in ("qmp.sock", "gcs.sock", "qemu.pid"):
            with contextlib.suppress(FileNotFoundError):
                (self.state_dir / name).unlink()
        with contextlib.suppress(OSError):
            os.truncate(self.console_log, 0)

    def _qemu_log_tail(self) -> str:
        with contextlib.suppress(OSError):
            text = (self.log_dir / "qemu.log").read_text(errors="replace").strip()
            if text:
                return _one_line(text.splitlines()[-1])
        return f"QEMU exited with status {self._process_status()}"

    def _connect_qmp(self, deadline: float) -> None:
        qmp_path = self.state_dir / "qmp.sock"
        while not qmp_path.exists():
            if self._exited.is_set():
                raise UVMStartError(f"QEMU exited with status {self._process_status()}")
            if time.monotonic() > deadline:
                raise UVMStartError("QEMU did not create its monitor socket")
            time.sleep(0.01)
        while True:
            session = QMPSession(self.id())
            session.on_event(self._on_qmp_event)
            try:
                session.connect(str(qmp_path), timeout=max(0.1, deadline - time.monotonic()))
                break
            except QMPCommandError as err:
                session.close()
                # The socket file exists from bind(); QEMU may not listen() yet.
                if "refused" not in str(err) or self._exited.is_set():
                    raise
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self._qmp = session

    def _connect(self, ctx: Context, deadline: float) -> None:
        self._connect_qmp(deadline)
        self._connect_agent(ctx, deadline)

    def _connect_agent(
        self,
        ctx: Context,
        deadline: float,
        *,
        template: bool = False,
        clone: dict[str, Any] | None = None,
    ) -> None:
        # Fail fast, not at the deadline, when the agent died while booting.
        boot_ctx, give_up = with_cancel(ctx)
        connected = threading.Event()
        watcher = threading.Thread(
            target=self._watch_boot, args=(give_up, connected), name=f"uvm-{self.id()}-boot"
        )
        watcher.start()
        try:
            self._gcs = GuestConnection.connect(
                str(self.state_dir / "gcs.sock"),
                boot_ctx,
                timeout=max(0.1, deadline - time.monotonic()),
                name=self.id(),
                template=template,
                clone=clone,
            )
            self._gcs.start_heartbeat(
                self.options.heartbeat_interval,
                self.options.heartbeat_misses,
                self._failure_detail,
            )
        except Canceled as err:
            if ctx.err() is not None:
                raise
            raise UVMStartError("the guest agent exited while the VM booted") from err
        finally:
            connected.set()
            watcher.join()

    def _mount_log_dir(self) -> None:
        """Give the logs a tmpfs of ``LOG_DIR_LIMIT`` bytes: a guest cannot fill the host.

        The guest writes its serial console as fast as it likes; once the tmpfs
        is full QEMU drops what does not fit (after a few retries per byte) and
        the guest runs on.  Whatever unmounts the state folder unmounts this.
        """
        self.log_dir.mkdir(mode=0o700, exist_ok=True)
        if not is_mounted(self.log_dir):
            mount(
                "tmpfs",
                self.log_dir,
                "tmpfs",
                MS_NOSUID | MS_NODEV | MS_NOEXEC,
                f"size={LOG_DIR_LIMIT},mode=0700",
            )

    def _watch_boot(self, give_up: Callable[[], None], connected: threading.Event) -> None:
        """Until ``connected``, cancel the boot when QEMU or the guest agent has exited."""
        while not connected.wait(0.1):
            if self._exited.is_set() or AGENT_EXITED_MARKER in _read_tail(self.console_log):
                give_up()
                return

    def _failure_detail(self) -> str:
        parts = []
        for path, label in ((self.log_dir / "qemu.log", "QEMU"), (self.console_log, "console")):
            with contextlib.suppress(OSError):
                text = Path(path).read_text(errors="replace").strip()
                if text:
                    parts.append(f"\n--- {label} ({path}), last lines ---\n" + _tail(text, 15))
        return "".join(parts)

    def _process_status(self) -> int | None:
        return self._process.poll() if self._process is not None else None

    def _watch_qemu(self) -> None:
        if self._process is not None:
            self._process.wait()
        else:
            _wait_pid(self._pid, self._pid_start)
        self._exited.set()
        if self._gcs is not None:
            status = self._process_status()
            how = f" (exit status {status})" if status is not None else ""
            self._gcs.fail(f"VM {self.id()} stopped: its QEMU exited{how}")
        with self._deleted_lock:
            for event in self._deleted.values():
                event.set()

    def _on_qmp_event(self, name: str, data: dict[str, Any]) -> None:
        if name == "DEVICE_DELETED":
            device = str(data.get("device", ""))
            with self._deleted_lock:
                event = self._deleted.setdefault(device, threading.Event())
            event.set()
        elif (
            name == "VSERPORT_CHANGE"
            and data.get("id") == GCS_PORT_ID
            and not data.get("open")
            and self._gcs is not None
        ):
            self._gcs.fail(f"the guest agent of VM {self.id()} closed its port (crashed?)")

    def pause(self, ctx: Context) -> None:
        """Freeze the guest's CPUs (QMP ``stop``): the guest runs nothing until :meth:`resume`.

        While it is paused its agent answers nothing: after the heartbeat's
        silence bound the bridge is declared dead.
        """
        ctx.check()
        self._qmp_execute("stop", {})

    def resume(self, ctx: Context) -> None:
        """Let a paused guest run again (QMP ``cont``)."""
        ctx.check()
        self._qmp_execute("cont", {})

    def wait(self) -> None:
        """Block until QEMU has exited."""
        self._exited.wait()

    def terminate(self, ctx: Context) -> None:
        """Stop the VM now: QMP ``quit``, then SIGKILL if QEMU lingers.  Always works."""
        self._terminated = True
        if self._gcs is not None:
            self._gcs.close()
        if self._qmp is not None and not self._exited.is_set():
            with contextlib.suppress(QMPCommandError):
                self._qmp.execute("quit", timeout=5.0)
        if self._qmp is not None:
            self._qmp.close()
        if self._pid and not self._exited.wait(5.0) and process_alive(self._pid, self._pid_start):
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._pid, signal.SIGKILL)
        if self._watcher is not None:
            self._watcher.join(30.0)
        elif self._pid:
            _wait_pid(self._pid, self._pid_start)
        self._exited.set()
        self._give_up_control()

    def close(self) -> None:
        """Terminate the VM and release its host resources and its state record."""
        self.terminate(background())
        self.networks.clear()
        self.plan9.unbind_all()
        self.scsi.clear()
        self.vpmem.clear()
        _remove_state(self.id(), self.state_dir, self._store)

    def detach(self) -> None:
        """Drop this handle's connections but leave the VM running (for other processes)."""
        self._terminated = True
        if self._gcs is not None:
            self._gcs.close()
        if self._qmp is not None:
            self._qmp.close()
        self._give_up_control()

    def _take_control(self) -> None:
        """Become the one handle that drives this VM, or fail at once.

        QEMU serves one QMP client and the agent one bridge connection at a
        time, so a second handle would only hang.  An advisory lock on a file
        in the VM's state directory says which handle drives it; it goes with
        ``detach``, ``terminate`` or this process.
        """
        fd = os.open(self.state_dir / "control.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise StateError(
                f"utility VM {self.id()} is driven by another handle (process {holder}): "
                "it must detach (or exit) first"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._control_fd = fd

    def _give_up_control(self) -> None:
        fd, self._control_fd = self._control_fd, None
        if fd is not None:
            os.close(fd)

    # -- processes ----------------------------------------------------------

    def create_process(self, ctx: Context, config: Any) -> GuestProcess:
        """Start a process in the guest's own OS; ``config`` is :class:`ProcessParameters`."""
        if not isinstance(config, ProcessParameters):
            raise InvalidArgumentError(
                f"UtilityVM.create_process: config is {type(config).__name__}, "
                "not ProcessParameters"
            )
        return self.gcs.create_process(ctx, config)

    def gcs_request(self, ctx: Context, op: str, args: dict[str, Any]) -> dict[str, Any]:
        """Send one request to the guest agent (bounded by ``request_timeout``)."""
        return self.gcs.request(ctx, op, args, timeout=self.options.request_timeout)

    # -- devices ------------------------------------------------------------

    def _qmp_execute(self, command: str, arguments: dict[str, Any]) -> Any:
        if self._qmp is None or self._exited.is_set():
            raise HcsociError(f"VM {self.id()} is not running")
        return self._qmp.execute(command, arguments)

    # -- the device surface: what plan9.py, scsi.py and network.py plug through --

    @property
    def store(self) -> Store:
        """The state store the VM and its device registry are recorded in."""
        return self._store

    def qmp(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        """Run one QMP command on the VM's monitor and return its result."""
        return self._qmp_execute(command, arguments or {})

    def device_add(self, arguments: dict[str, Any]) -> None:
        """QMP ``device_add``; a later :meth:`device_del` of the same id waits for its unplug."""
        with self._deleted_lock:
            self._deleted.pop(str(arguments["id"]), None)
        self._qmp_execute("device_add", arguments)

    def device_del(self, device: str, timeout: float = 30.0) -> bool:
        """Unplug ``device``; whether it is gone (False: a dead guest could not let it go)."""
        if self._qmp is None or self._exited.is_set():
            return True
        # A guest whose bridge is dead (frozen, or its agent crashed) may never
        # ack the unplug: wait a little, then leave the device to the VM's end.
        guest_dead = self._gcs is not None and self._gcs.broken is not None
        if guest_dead:
            timeout = min(timeout, UNPLUG_TIMEOUT_DEAD_GUEST)
        with self._deleted_lock:
            event = self._deleted.setdefault(device, threading.Event())
        try:
            self._qmp.execute("device_del", {"id": device})
        except QMPCommandError as err:
            if "not found" in str(err) or self._exited.wait(QEMU_EXIT_GRACE):
                return True  # gone, or QEMU died under the command: the device with it
            raise
        if event.wait(timeout) or self._exited.is_set():
            return True
        if guest_dead:
            log.warning(
                "device left plugged in a dead guest",
                extra={"vm": self.id(), "device": device, "seconds": timeout},
            )
            return False
        raise HcsociError(f"VM {self.id()}: device {device} was not unplugged in {timeout} s")

    def blockdev_del(self, node: str) -> None:
        """QMP ``blockdev-del``; a node that is gone, or a QEMU that died, is fine."""
        if self._qmp is None or self._exited.is_set():
            return
        try:
            self._qmp.execute("blockdev-del", {"node-name": node})
        except QMPCommandError as err:
            gone = "not found" in str(err) or "Failed to find" in str(err)
            if not gone and not self._exited.wait(QEMU_EXIT_GRACE):
                raise

    def add_plan9(
        self,
        ctx: Context,
        host_path: str,
        uvm_path: str,
        read_only: bool = True,
        restrict: bool = False,
        allowed_names: list[str] | tuple[str, ...] = (),
    ) -> Plan9Share:
        """Share a host directory at ``uvm_path`` in the guest.

        With ``restrict`` only ``allowed_names`` (files of ``host_path``) are visible.
        """
        return self.plan9.add(ctx, host_path, uvm_path, read_only, restrict, allowed_names)

    def remove_plan9(self, ctx: Context, share: Plan9Share) -> None:
        """Unmount and unplug a share (NotFoundError for one this VM does not have)."""
        self.plan9.remove(ctx, share)

    def find_plan9(self, name: str) -> Plan9Share | None:
        """The share whose tag is ``name``."""
        return self.plan9.find(name)

    def add_scsi(
        self, ctx: Context, host_path: str, uvm_path: str, read_only: bool = False
    ) -> SCSIAttachment:
        """Attach a disk image over SCSI and mount it at ``uvm_path`` (ref-counted)."""
        return self.scsi.add(ctx, host_path, uvm_path, read_only)

    def remove_scsi(self, ctx: Context, host_path: str) -> None:
        """Drop one reference to an attached disk; the last one detaches it."""
        self.scsi.remove(ctx, host_path)

    def find_scsi(self, host_path: str) -> SCSIAttachment | None:
        """The attachment of ``host_path``, if any."""
        return self.scsi.find(host_path)

    def add_vpmem(self, ctx: Context, host_path: str, uvm_path: str) -> VPMemDevice:
        """Map an ext4 image read-only as a vPMEM device and mount it at ``uvm_path``."""
        return self.vpmem.add(ctx, host_path, uvm_path)

    def remove_vpmem(self, ctx: Context, host_path: str) -> None:
        """Drop one reference to a vPMEM-mounted image; the last one unmounts it."""
        self.vpmem.remove(ctx, host_path)

    def add_net_ns(self, ctx: Context, ns_id: str) -> None:
        """Create a network namespace in the guest (named like the HNS namespace)."""
        self.networks.add_namespace(ctx, ns_id)

    def add_endpoints_to_ns(self, ctx: Context, ns_id: str, endpoints: list[Any]) -> None:
        """Give namespace ``ns_id`` a NIC for each ``hns.Endpoint`` (tap on its bridge)."""
        self.networks.add_endpoints(ctx, ns_id, endpoints)

    def remove_net_ns(self, ctx: Context, ns_id: str) -> None:
        """Unplug the namespace's NICs and delete it in the guest."""
        self.networks.remove_namespace(ctx, ns_id)

    def net_namespaces(self) -> dict[str, list[VMNic]]:
        """Guest namespace id -> its NICs."""
        return self.networks.namespaces()

    def __enter__(self) -> UtilityVM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<UtilityVM {self.id()} pid={self._pid} accel={self.accel or '?'}>"


def _one_line(err: object) -> str:
    """An error's message on one line (QEMU's and the console's tails cut off)."""
    text = str(err).split("\n--- ", 1)[0]
    return " ".join(text.split())


def _tail(text: str, lines: int) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _wait_pid(pid: int, start_time: int) -> None:
    """Wait for a process that is not our child (a VM opened by id)."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        if process_start_time(pid) == start_time:
            select.select([pidfd], [], [])
    finally:
        os.close(pidfd)


def _remove_state(uvm_id: str, state_dir: Path, store: Store) -> None:
    delete_vm_taps(uvm_id)
    for point in sorted(mounts_under(state_dir), reverse=True):
        unmount(point)
    try:
        remove_tree(state_dir)
    except (HcsociError, OSError) as err:
        log.warning("state folder of VM %s not removed: %s", uvm_id, err)
    forget_vm_devices(store, uvm_id)
    forget_vm_records(store, uvm_id)
    store.execute("DELETE FROM vms WHERE id = ?", (uvm_id,))


def create(ctx: Context, options: UVMOptions) -> UtilityVM:
    """Make a utility VM (not started yet; call ``start``).

    Raises NotFoundError, saying how to build them, when the boot assets are missing.
    """
    ctx.check()
    opts = options.validated()
    assets = load_assets(Path(opts.assets_dir) if opts.assets_dir else None)
    store = open_store()
    state_dir = _vm_dir(opts.id)
    with store.transaction() as conn:
        if conn.execute("SELECT 1 FROM vms WHERE id = ?", (opts.id,)).fetchone():
            raise AlreadyExistsError(f"UVMOptions.id: a VM {opts.id!r} exists already")
        # Rows of an earlier VM of this id whose state removal was cut short.
        conn.execute("DELETE FROM vm_devices WHERE vm_id = ?", (opts.id,))
        controller_pid, controller_start = controller_identity()
        conn.execute(
            "INSERT INTO vms (id, owner, state, state_dir, options, created_at, "
            "controller_pid, controller_start) VALUES (?, ?, 'created', ?, ?, ?, ?, ?)",
            (
                opts.id,
                opts.owner,
                str(state_dir),
                json.dumps(vars(opts)),
                time.time(),
                controller_pid,
                controller_start,
            ),
        )
    try:
        make_private_dir(state_dir)
    except BaseException:
        store.execute("DELETE FROM vms WHERE id = ?", (opts.id,))
        raise
    return UtilityVM(opts, assets, state_dir, store)


def ensure_template(ctx: Context, options: UVMOptions | None = None) -> Path:
    """Make sure a template for ``options`` exists (boot a VM and save it if not); its folder.

    For ``hcsoci uvm build-assets``: the first ``start`` with these options is
    then a restore.  A stale or damaged template is replaced.
    """
    ctx.check()
    opts = UVMOptions(**vars(options)) if options is not None else UVMOptions()
    opts.template = "auto"
    opts.owner = opts.owner or "hcsoci-template"
    vm = create(ctx, opts)
    try:
        accel = resolve_accel(vm.options.accel, vm.assets)
        command = vm.qemu_command(accel)
        identity = TemplateIdentity.of(
            vm.assets, accel, vm.options.memory_mb, vcpu_count(vm.options.cpu_count, accel), command
        )
        folder = templates_dir(vm.assets)
        if find_template(identity, folder) is None:
            vm.start(ctx)
            if find_template(identity, folder) is None:
                raise UVMStartError(f"template {identity.name} was not saved (see the log)")
        return folder / identity.name
    finally:
        vm.close()


def list_vms(store: Store | None = None) -> list[VMRecord]:
    """Every recorded VM, with ``alive`` telling whether its QEMU still runs."""
    store = store or open_store()
    records = []
    for row in store.query("SELECT * FROM vms ORDER BY created_at"):
        record = VMRecord(dict(row))
        record["alive"] = process_alive(int(row["pid"]), int(row["pid_start"]))
        records.append(record)
    return records


def open_vm(ctx: Context, uvm_id: str, timeout: float = 30.0) -> UtilityVM:
    """Attach to a running VM by id (another process started it).

    The handle knows the devices other handles added (the device registry,
    :mod:`hcsoci.uvm.devices`).  One handle drives a VM at a time: while
    another is attached (not detached, its process alive) this raises
    :class:`~hcsoci.errors.StateError` at once.
    """
    store = open_store()
    rows = store.query("SELECT * FROM vms WHERE id = ?", (uvm_id,))
    if not rows:
        raise NotFoundError(f"no utility VM with id {uvm_id!r}")
    row = rows[0]
    if not process_alive(int(row["pid"]), int(row["pid_start"])):
        raise NotFoundError(f"utility VM {uvm_id!r} is not running (remove it with `uvm rm`)")
    known = UVMOptions.__dataclass_fields__
    # Options of a VM recorded by an older version may name fields since removed.
    options = UVMOptions(**{k: v for k, v in json.loads(row["options"]).items() if k in known})
    assets = load_assets(Path(options.assets_dir) if options.assets_dir else None)
    vm = UtilityVM(options, assets, Path(row["state_dir"]), store)
    vm._pid, vm._pid_start, vm.accel = int(row["pid"]), int(row["pid_start"]), row["accel"]
    vm._take_control()
    try:
        vm.plan9.load()
        vm.scsi.load()
        vm.vpmem.load()
        vm.networks.load()
        vm._watcher = threading.Thread(
            target=vm._watch_qemu, name=f"uvm-{uvm_id}-watch", daemon=True
        )
        vm._watcher.start()
        vm._connect(ctx, time.monotonic() + timeout)
    except BaseException:
        vm.detach()
        raise
    return vm


def remove_vm(uvm_id: str, store: Store | None = None) -> None:
    """Kill a VM's QEMU (if running) and release its host state; for ``uvm rm`` and gc."""
    store = store or open_store()
    rows = store.query("SELECT * FROM vms WHERE id = ?", (uvm_id,))
    if not rows:
        raise NotFoundError(f"no utility VM with id {uvm_id!r}")
    row = rows[0]
    pid, start_time = int(row["pid"]), int(row["pid_start"])
    if process_alive(pid, start_time):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        _wait_pid(pid, start_time)
    _remove_state(uvm_id, Path(row["state_dir"]), store)


def hand_over_vm(uvm_id: str, store: Store | None = None) -> None:
    """Give the VM to the user: it outlives this process and gc leaves it running."""
    (store or open_store()).execute(
        "UPDATE vms SET controller_pid = 0, controller_start = 0 WHERE id = ?", (uvm_id,)
    )


def reap_dead_vms(store: Store | None = None) -> list[str]:
    """Release every VM whose QEMU is gone or whose controller died; their ids.

    For gc: a controller killed halfway leaves the record, mounts and taps of a
    VM that died with it (or was killed), or a QEMU still running with nobody
    to drive it (QEMU runs in its own session).  A VM handed over to the user
    (``hcsoci uvm create``: :func:`hand_over_vm`) is kept while QEMU runs; one
    handed over before it ever started has nobody who could start it.
    """
    store = store or open_store()
    reaped = []
    for record in list_vms(store):
        started = record["state"] == "running" or int(record["pid"]) > 0
        handed_over = int(record["controller_pid"]) == 0
        if (started and not record["alive"]) or (not started and handed_over):
            _remove_state(record["id"], Path(record["state_dir"]), store)
            reaped.append(str(record["id"]))
        elif not controller_alive(int(record["controller_pid"]), int(record["controller_start"])):
            with contextlib.suppress(NotFoundError):  # someone else reaped it meanwhile
                remove_vm(str(record["id"]), store)
                reaped.append(str(record["id"]))
    return reaped


AGENT_PARKED_MARKER = "hcsoci-gcs: host disconnected"
"""What the agent writes to the console once it has seen the host's end of the bridge close."""

AGENT_EXITED_MARKER = "hcsoci-stage2: guest agent exited"
"""What the guest's PID 1 writes to the console when the agent process ends."""


def _read_tail(path: str, size: int = 4096) -> str:
    """The last ``size`` bytes of a text file ('' when it cannot be read)."""
    try:
        with open(path, "rb") as file:
            file.seek(0, os.SEEK_END)
            file.seek(max(0, file.tell() - size))
            return file.read().decode(errors="replace")
    except OSError:
        return ""
