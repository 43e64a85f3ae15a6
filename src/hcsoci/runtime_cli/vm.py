"""VM isolation in hcsoci-runc: the engine's container in a utility VM, through its controller.

``create`` starts a VM controller (:func:`hcsoci.uvm.remote.start_controller`,
a new VM: a template makes that fast), creates the container in it from the
engine's spec (the bundle's root file system as a Plan9 share), and leaves a
**stand-in** (:mod:`hcsoci.runtime_cli.standin`) on the host whose pid goes
to ``--pid-file``: the engine's shim waits on it, signals it and takes its
exit status.  The stand-in holds the engine's stdio, or the slave of a host
pty whose master went over ``--console-socket``, and starts the guest init
when ``start`` connects to its start socket.

What hcsoci-runc keeps per VM container, under ``<root>/hcsoci-runc-vm/<id>/``
(0700): ``container.json`` (0600: the VM, its controller's socket, the
stand-in's pid and start time, the bundle) and, until started, ``start.sock``.
The marker (:mod:`hcsoci.runtime_cli.markers`) is made first and removed last,
as for process isolation; the store's row is the controller's (owner
``hcsoci-runc``, host = the VM).  ``delete`` releases the container through
the controller, which ends (closing the VM) with its last container.

Pods (:mod:`hcsoci.runtime_cli.pods`): a sandbox gets a new VM, as any
container; a pod's container is created in its sandbox's VM, through the
sandbox's controller, sharing the sandbox init's network namespace (and its
ipc, uts and pid ones when the engine's spec joins them).  As runhcs (and
kata): the VM is the sandbox's, so deleting the sandbox ends the VM, killing
any container of the pod still in it; deleting a pod's container leaves the
VM to its sandbox.  ``pause``, ``resume`` and ``update`` are the guest's
``runc`` on the container's cgroup in the guest, through the controller.

The spec's hooks (:mod:`~hcsoci.runtime_cli.hooks`) run on the host around
the VM, as in Kata: ``create`` runs ``prestart``, ``createRuntime`` and
``createContainer`` once the stand-in runs (in the network namespace the
spec gives the container, so a hook handed its pid finds that one),
``start`` runs ``poststart``, ``delete`` runs ``poststop``; the guest's runc
runs ``startContainer`` in the container.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import tty
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hcsoci.controller import process_alive, process_start_time
from hcsoci.interpreter import module_command
from hcsoci.paths import make_private_dir
from hcsoci.runtime_cli import hooks, markers, pods
from hcsoci.runtime_cli.argv import CommandLine
from hcsoci.runtime_cli.commands import CommandError, Invocation, check_parent, container_id
from hcsoci.runtime_cli.report import report_warning

__all__ = [
    "DIRECTORY",
    "OWNER",
    "create",
    "guest_spec",
    "handles",
    "is_vm_container",
    "list_all",
    "list_states",
    "run_vm_command",
]

DIRECTORY = "hcsoci-runc-vm"
"""The directory under the state root holding each VM container's files."""

OWNER = "hcsoci-runc"
RECORD = "container.json"
START_SOCKET = "start.sock"
PAUSED = "paused"
"""In a VM container's directory while its processes are frozen (``pause`` until ``resume``)."""
START_TIMEOUT = 120.0
"""Seconds ``start`` (and ``exec --detach``) wait for the guest process to be running."""


def _directory(root: str, wanted: str) -> Path:
    return Path(root) / DIRECTORY / wanted


def is_vm_container(root: str, wanted: str) -> bool:
    """Whether the (checked) id is a VM container of hcsoci-runc under ``root``."""
    return os.path.isdir(os.path.join(root, DIRECTORY, wanted))


def _read_record(root: str, wanted: str) -> dict[str, Any]:
    try:
        data = json.loads((_directory(root, wanted) / RECORD).read_bytes())
    except FileNotFoundError:
        raise CommandError(f"container {wanted} is being created or deleted") from None
    except (OSError, ValueError) as err:
        raise CommandError(f"container {wanted}: its record is unreadable: {err}") from None
    if not isinstance(data, dict):
        raise CommandError(f"container {wanted}: its record is unreadable")
    return data


def _write_private(path: Path, data: bytes) -> None:
    temporary = path.with_name(path.name + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(data)
    os.replace(temporary, path)


def _write_pid_file(path: str, pid: int) -> None:
    """As runc: the pid, written to a temporary file renamed into place."""
    if not path:
        return
    target = Path(os.path.abspath(path))
    temporary = target.with_name(f".{target.name}.hcsoci")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(str(pid))
    os.replace(temporary, target)


def guest_spec(bundle: str, config: dict[str, Any]) -> Any:
    """The engine's spec as it can apply in the guest (an ``oci.Spec``), validated whole.

    Dropped: host namespace paths (the guest has its own namespaces), the
    AppArmor profile and SELinux labels (the guest kernel has neither).  The
    VM's placement drops the hooks but ``startContainer`` (the host runs the
    others: :mod:`~hcsoci.runtime_cli.hooks`) and ``cgroupsPath``.
    ``root.path`` becomes absolute (a Plan9 share of that host directory).
    """
    from hcsoci import oci

    root = config.get("root")
    if not isinstance(root, dict) or not isinstance(root.get("path"), str) or not root["path"]:
        raise CommandError(f"bundle {bundle!r}: config.json has no root.path")
    root["path"] = os.path.normpath(os.path.join(bundle, root["path"]))
    if not os.path.isdir(root["path"]):
        raise CommandError(f"bundle {bundle!r}: root.path {root['path']!r} is not a directory")
    process = config.get("process")
    if isinstance(process, dict):
        process.pop("apparmorProfile", None)
        process.pop("selinuxLabel", None)
    linux = config.get("linux")
    if isinstance(linux, dict):
        linux.pop("mountLabel", None)
        for namespace in linux.get("namespaces") or []:
            if isinstance(namespace, dict):
                namespace.pop("path", None)
    try:
        return oci.decode_spec(config)
    except Exception as err:
        raise CommandError(f"bundle {bundle!r}: config.json: {err}") from None


def _standin_network(config: dict[str, Any]) -> tuple[str, str] | None:
    """The network namespace the spec gives the container, for its stand-in.

    ``None``: none (the host's, as runc's init would have); ``(field, '')``:
    a new one; ``(field, path)``: the one at ``path``, checked here to be a
    network namespace before anything is made (``field`` names the spec's
    entry).  A hook that configures ``/proc/PID/ns/net``
    (docker's ``libnetwork-setkey``) then works on the namespace the engine
    meant, as with runc, never on the host's.
    """
    from hcsoci.errors import NotFoundError
    from hcsoci.netns_calls import open_netns

    linux = config.get("linux")
    namespaces = linux.get("namespaces") if isinstance(linux, dict) else None
    for index, namespace in enumerate(namespaces if isinstance(namespaces, list) else []):
        if isinstance(namespace, dict) and namespace.get("type") == "network":
            path = namespace.get("path") or ""
            field = f"linux.namespaces[{index}]"
            if not path:
                return field, ""
            if not (isinstance(path, str) and os.path.isabs(path)):
                raise CommandError(f"{field}.path: {path!r} is not an absolute path")
            try:
                os.close(open_netns(path))
                return field, path
            except NotFoundError:
                exists = os.path.exists(path)
                what = "is not a network namespace" if exists else "does not exist"
                raise CommandError(f"{field}.path: {path!r} {what}") from None
    return None


def _controller_env(invocation: Invocation) -> None:
    """The controller (and the store) use this call's state root."""
    os.environ["HCSOCI_ROOT"] = invocation.root


def _open_pty() -> tuple[int, int]:
    """A host pty (master, slave), the slave raw: the guest's own terminal does the work."""
    master, slave = os.openpty()
    tty.setraw(slave)
    os.set_inheritable(slave, False)
    return master, slave


def _console_stdio(tty_wanted: bool, console: str, fds: list[int]) -> tuple[int, int, int]:
    """The process's stdio: a new pty whose master goes over ``console``, or ours (0, 1, 2).

    The pty's ends are appended to ``fds`` (the caller closes them).
    """
    if not tty_wanted:
        return (0, 1, 2)
    master, slave = _open_pty()
    fds += [master, slave]
    _send_console(console, master)
    return (slave, slave, slave)


def _send_console(path: str, master: int) -> None:
    """Send the pty master over ``--console-socket``, as runc does (its name, SCM_RIGHTS)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(10.0)
        sock.connect(path)
        socket.send_fds(sock, [os.ttyname(master).encode() or b"/dev/ptmx"], [master])
    except OSError as err:
        raise CommandError(
            f"console socket {path!r}: {err.strerror or err} (nobody accepts the terminal)"
        ) from None
    finally:
        sock.close()


def _spawn_standin(
    config: dict[str, Any],
    stdio: tuple[int, int, int],
    keep: list[int],
    network: tuple[str, str] | None = None,
) -> int:
    """Start a stand-in (its own session, reaped by the engine's subreaper once we exit).

    ``network`` (:func:`_standin_network`): the network namespace it is in
    before it runs, so a hook handed its pid finds that one.
    """
    from hcsoci.netns_calls import enter_netns, unshare_netns

    command = module_command("hcsoci.runtime_cli.standin", json.dumps(config))
    enter: Callable[[], None] | None = None
    fd = -1
    if network is not None and not network[1]:
        enter = unshare_netns
    elif network is not None:
        try:
            fd = os.open(network[1], os.O_RDONLY | os.O_CLOEXEC)
        except OSError as err:
            raise CommandError(f"{network[0]}.path: {network[1]!r}: {err.strerror}") from None
        enter = functools.partial(enter_netns, fd)
    try:
        child = subprocess.Popen(
            command,
            stdin=stdio[0],
            stdout=stdio[1],
            stderr=stdio[2],
            pass_fds=tuple(keep),
            start_new_session=True,
            close_fds=True,
            preexec_fn=enter,
        )
    except subprocess.SubprocessError:
        assert network is not None  # only the namespace step raises that
        raise CommandError(f"{network[0]}: cannot enter the stand-in's network namespace") from None
    finally:
        if fd >= 0:
            os.close(fd)
    child.returncode = 0  # never waited for here: the engine's shim reaps it
    return child.pid


def _read_ready(fd: int, timeout: float) -> str:
    import select

    deadline = time.monotonic() + timeout
    data = b""
    while b"\n" not in data:
        left = deadline - time.monotonic()
        if left <= 0:
            return "error the guest process did not start in time"
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    return data.decode(errors="replace").strip() or "error the stand-in exited without a word"


def _create(invocation: Invocation, line: CommandLine, wanted: str, bundle: str) -> int:
    from hcsoci.uvm.channel import bind_socket
    from hcsoci.uvm.options import UVMOptions
    from hcsoci.uvm.remote import start_controller

    pid_file = line.value("pid-file")
    console = line.value("console-socket")
    check_parent(pid_file, "pid file")
    with open(os.path.join(bundle, "config.json"), "rb") as file:
        try:
            config = json.loads(file.read())
        except ValueError as err:
            raise CommandError(f"bundle {bundle!r}: config.json is not valid JSON: {err}") from None
    if not isinstance(config, dict):
        raise CommandError(f"bundle {bundle!r}: config.json is not a JSON object")
    pod = pods.pod_of(wanted, config.get("annotations"))
    joined = pods.joined_namespaces(config) if pod is not None else []  # before paths go
    network = _standin_network(config)
    spec = guest_spec(bundle, config)
    host_hooks = hooks.host_hooks(config.get("hooks"))  # validated with the spec
    tty = bool(spec.process is not None and spec.process.terminal)
    if tty and not console:
        raise CommandError("cannot allocate tty if runc will detach without setting console socket")
    if console and not tty:
        raise CommandError("cannot use console socket if runc will not detach or allocate tty")
    if invocation.held_by_runc(wanted) or is_vm_container(invocation.root, wanted):
        raise CommandError(f"container with id exists: {wanted}")
    _controller_env(invocation)
    sandbox = None
    if pod is not None and pod.role == "container":
        sandbox = _sandbox_controller(invocation.root, pod)  # before anything is made
    if not markers.make(invocation.root, wanted):
        raise CommandError(f"container with id exists: {wanted}")
    directory = _directory(invocation.root, wanted)
    annotations = config.get("annotations") or {}
    client = None
    started = 0  # the controller this create started (its VM ends with the create's failure)
    created = False
    standin = 0
    fds: list[int] = []
    try:
        make_private_dir(directory.parent)
        directory.mkdir(mode=0o700)
        stdio = _console_stdio(tty, console, fds)
        request: dict[str, Any] | None = None
        if sandbox is not None and pod is not None:
            client, controller = sandbox
            request = {"role": "container", "sandbox": pod.sandbox, "join": joined}
        else:
            client = start_controller(UVMOptions())
            controller = started = int(client.call("hello")["pid"])
            request = {"role": "sandbox"} if pod is not None else None
        client.create(wanted, spec, owner=OWNER, pod=request)
        created = True
        listener = bind_socket(directory / START_SOCKET, backlog=4)
        fds.append(listener.detach())
        standin = _spawn_standin(
            {
                "vm": client.vm_id,
                "socket": str(client.socket_path),
                "id": wanted,
                "process": None,
                "tty": tty,
                "listen_fd": fds[-1],
                "start_socket": str(directory / START_SOCKET),
            },
            stdio,
            [fds[-1]],
            network,
        )
        state = hooks.hook_state(wanted, "creating", standin, bundle, annotations)
        for kind in hooks.CREATE_HOOKS:
            hooks.run_hooks(kind, host_hooks, state)
        record = {
            "vm": client.vm_id,
            "socket": str(client.socket_path),
            "controller": controller,
            "pid": standin,
            "start": process_start_time(standin) or 0,
            "bundle": bundle,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S.000000000Z", time.gmtime()),
            "annotations": annotations,
            "pod": pod.describe() if pod is not None else None,
            "hooks": host_hooks,
        }
        _write_private(directory / RECORD, json.dumps(record).encode())
        _write_pid_file(pid_file, standin)
    except BaseException:
        if standin:
            with contextlib.suppress(OSError):
                os.kill(standin, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(standin, 0)  # ours: its pid never reached the engine
        if client is not None:
            with contextlib.suppress(Exception):
                client.call("delete", id=wanted, force=True)
        if started:
            _wait_for_controller_end(started)
        shutil.rmtree(directory, ignore_errors=True)
        markers.remove(invocation.root, wanted)
        if created:  # as runc: a container made and then failed is deleted, poststop run
            with contextlib.suppress(Exception):  # the create's own error is the one to say
                _poststop(invocation, wanted, bundle, annotations, host_hooks)
        raise
    finally:
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
    return 0


def _warn_hooks(
    invocation: Invocation, kind: str, record_hooks: object, state: dict[str, Any]
) -> None:
    """Run the ``kind`` hooks; each failure is a warning (the spec's rule for these)."""
    if isinstance(record_hooks, dict):
        for failure in hooks.run_hooks(kind, record_hooks, state, all=True):
            report_warning(failure, invocation.log)


def _poststop(
    invocation: Invocation, wanted: str, bundle: str, annotations: object, record_hooks: object
) -> None:
    state = hooks.hook_state(wanted, "stopped", 0, bundle, annotations)
    _warn_hooks(invocation, "poststop", record_hooks, state)


def _sandbox_controller(root: str, pod: pods.Pod) -> tuple[Any, int]:
    """The client of the controller serving ``pod``'s sandbox, and its pid.

    A one-line error naming the annotation and its value when there is no
    such sandbox under ``root``, it is not a sandbox, or its VM is gone.
    """
    from hcsoci.errors import HcsociError

    named = f"annotation {pod.annotation}: {pod.sandbox!r}"
    if not is_vm_container(root, pod.sandbox):
        raise CommandError(f"{named}: no such sandbox in a utility VM (under {root})")
    try:
        record = _read_record(root, pod.sandbox)
    except CommandError as err:
        raise CommandError(f"{named}: {err}") from None
    role = (record.get("pod") or {}).get("role") if isinstance(record.get("pod"), dict) else None
    if role != "sandbox":
        raise CommandError(f"{named}: that container is not a pod's sandbox")
    client = _client(record)
    try:
        controller = int(client.call("hello")["pid"])
    except HcsociError as err:
        raise CommandError(f"{named}: the sandbox's utility VM is gone: {err}") from None
    if controller != int(record.get("controller", 0)):
        raise CommandError(f"{named}: the sandbox's utility VM is gone (another controller serves)")
    return client, controller


def _exited(pid: int, start: int) -> bool:
    """Whether the stand-in (pid, start time) is gone or a zombie (exited, not yet reaped)."""
    if not process_alive(pid, start):
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except (OSError, IndexError):
        return True


def _status(root: str, wanted: str, record: dict[str, Any]) -> str:
    if _exited(int(record.get("pid", 0)), int(record.get("start", 0))):
        return "stopped"
    if (_directory(root, wanted) / START_SOCKET).exists():
        return "created"
    if (_directory(root, wanted) / PAUSED).exists():
        return "paused"
    return "running"


def _client(record: dict[str, Any]) -> Any:
    from hcsoci.uvm.remote import ControllerClient

    return ControllerClient(str(record["vm"]), Path(str(record["socket"])))


def _start(invocation: Invocation, line: CommandLine) -> int:
    wanted = container_id(line, "start")
    record = _read_record(invocation.root, wanted)
    status = _status(invocation.root, wanted, record)
    if status != "created":
        raise CommandError(f"cannot start a container that has {status}")
    from hcsoci.uvm.channel import connect_socket

    try:
        sock = connect_socket(_directory(invocation.root, wanted) / START_SOCKET, 10.0)
    except OSError as err:
        raise CommandError(f"container {wanted}: its stand-in does not answer: {err}") from None
    try:
        sock.sendall(b"start\n")
        sock.settimeout(START_TIMEOUT)
        answer = b""
        while b"\n" not in answer:
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
    except OSError as err:
        raise CommandError(f"container {wanted}: its stand-in does not answer: {err}") from None
    finally:
        sock.close()
    text = answer.decode(errors="replace").strip()
    if text != "ok":
        raise CommandError(text.removeprefix("error ") or f"container {wanted}: start failed")
    pid, bundle = int(record.get("pid", 0)), str(record.get("bundle", ""))
    state = hooks.hook_state(wanted, "running", pid, bundle, record.get("annotations"))
    _warn_hooks(invocation, "poststart", record.get("hooks"), state)
    return 0


def _state(invocation: Invocation, line: CommandLine) -> int:
    wanted = container_id(line, "state")
    record = _read_record(invocation.root, wanted)
    sys.stdout.write(json.dumps(_state_of(invocation.root, wanted, record), indent=2) + "\n")
    return 0


def _state_of(root: str, wanted: str, record: dict[str, Any]) -> dict[str, Any]:
    status = _status(root, wanted, record)
    bundle = str(record.get("bundle", ""))
    return {
        "ociVersion": "1.0.2-dev",
        "id": wanted,
        "pid": int(record.get("pid", 0)) if status != "stopped" else 0,
        "status": status,
        "bundle": bundle,
        "rootfs": os.path.join(bundle, "rootfs"),
        "created": record.get("created", ""),
        "annotations": record.get("annotations") or {},
        "owner": "",
    }


def _signal_number(text: str) -> int:
    if text.isdigit():
        number = int(text)
    else:
        name = text.upper()
        name = name if name.startswith("SIG") else "SIG" + name
        number = int(getattr(signal.Signals, name, 0)) if name in signal.Signals.__members__ else 0
    if not 1 <= number <= 64:
        raise CommandError(f"unknown signal {text!r}")
    return number


def _kill(invocation: Invocation, line: CommandLine) -> int:
    wanted = container_id(line, "kill")
    number = _signal_number(line.args[1] if len(line.args) > 1 else "SIGTERM")
    record = _read_record(invocation.root, wanted)
    status = _status(invocation.root, wanted, record)
    if status == "stopped":
        raise CommandError("container not running")
    if status == "created":
        # Nothing runs in the guest yet: the stand-in takes the signal (and ends).
        os.kill(int(record["pid"]), number)
        return 0
    from hcsoci.errors import HcsociError

    try:
        _client(record).call("kill", id=wanted, signal=number, all=line.is_set("all"))
    except HcsociError as err:
        raise CommandError(str(err)) from None
    return 0


def _delete(invocation: Invocation, line: CommandLine) -> int:
    wanted = container_id(line, "delete")
    force = line.is_set("force")
    directory = _directory(invocation.root, wanted)
    try:
        record = _read_record(invocation.root, wanted)
    except CommandError:
        record = {}
    status = _status(invocation.root, wanted, record) if record else "stopped"
    if status != "stopped" and not force:
        raise CommandError(f"cannot delete container {wanted} that is not stopped: {status}")
    if status != "stopped":
        with contextlib.suppress(OSError):
            os.kill(int(record["pid"]), signal.SIGKILL)
    _controller_env(invocation)
    from hcsoci.errors import NotFoundError
    from hcsoci.uvm.remote import ControllerError

    failure = ""
    if record:
        try:
            _client(record).call("delete", id=wanted, force=True)
        except NotFoundError:
            pass
        except ControllerError:
            failure = _release_without_controller(wanted)
        except Exception as err:
            failure = str(err)
    if failure:
        raise CommandError(f"container {wanted}: {failure}")
    if record and not _in_pod_of_other(record):
        _wait_for_controller_end(int(record.get("controller", 0)))
    shutil.rmtree(directory, ignore_errors=True)
    markers.remove(invocation.root, wanted)
    if record:
        bundle = str(record.get("bundle", ""))
        _poststop(invocation, wanted, bundle, record.get("annotations"), record.get("hooks"))
    return 0


def _in_pod_of_other(record: dict[str, Any]) -> bool:
    """Whether the container is a pod's container (not its sandbox): its VM outlives it."""
    pod = record.get("pod")
    return isinstance(pod, dict) and pod.get("role") == "container"


CONTROLLER_END_TIMEOUT = 30.0
"""Seconds ``delete`` waits for the controller to close the VM its last container left."""


def _wait_for_controller_end(pid: int) -> None:
    """Each container has a VM of its own: once deleted, its controller ends, closing the VM.

    ``delete`` returns when the controller process ``pid`` is gone, so
    nothing of the VM (QEMU, its state) outlives the call.
    """
    start = process_start_time(pid) if pid > 0 else None
    deadline = time.monotonic() + CONTROLLER_END_TIMEOUT
    # A zombie has ended (an engine's shim, a subreaper, adopts and reaps the controller).
    while start is not None and not _exited(pid, start) and time.monotonic() < deadline:
        time.sleep(0.05)


def _release_without_controller(wanted: str) -> str:
    """The controller died: release what it left as ``hcsoci gc`` would; '' when done."""
    from hcsoci.context import background
    from hcsoci.errors import NotFoundError
    from hcsoci.gc import release_container

    try:
        release_container(background(), wanted)
    except NotFoundError:
        return ""  # released already (`hcsoci gc`)
    except Exception as err:
        return f"{err} (`hcsoci gc` releases it later)"
    return ""


def _process_spec(line: CommandLine, record: dict[str, Any]) -> dict[str, Any]:
    path = line.value("process")
    if path:
        try:
            with open(path, "rb") as file:
                process = json.loads(file.read())
        except FileNotFoundError:
            raise CommandError(f"process file {path!r} does not exist") from None
        except (OSError, ValueError) as err:
            raise CommandError(f"process file {path!r}: {err}") from None
        if not isinstance(process, dict):
            raise CommandError(f"process file {path!r}: not a JSON object")
    else:
        if len(line.args) < 2:
            raise CommandError("exec: no command given (use --process or arguments)")
        process = {"args": line.args[1:], "cwd": "/", "env": ["PATH=/usr/bin:/bin"]}
        user = line.value("user")
        if user:
            uid, _, gid = user.partition(":")
            if not uid.isdigit() or (gid and not gid.isdigit()):
                raise CommandError(f"--user {user!r}: give UID[:GID]")
            process["user"] = {"uid": int(uid), "gid": int(gid or 0)}
    if line.is_set("tty"):
        process["terminal"] = True
    if line.value("cwd"):
        process["cwd"] = line.value("cwd")
    if line.values("env"):
        process["env"] = [*(process.get("env") or []), *line.values("env")]
    process.pop("apparmorProfile", None)
    process.pop("selinuxLabel", None)
    from hcsoci import oci

    try:
        oci.decode_spec({"ociVersion": "1.0.2", "process": process})
    except Exception as err:
        raise CommandError(f"exec: the process is not valid: {err}") from None
    if not process.get("args"):
        raise CommandError("exec: the process has no args")
    return process


def _exec(invocation: Invocation, line: CommandLine) -> int:
    wanted = container_id(line, "exec")
    check_parent(line.value("pid-file"), "pid file")
    record = _read_record(invocation.root, wanted)
    if _status(invocation.root, wanted, record) != "running":
        raise CommandError("cannot exec in a stopped or not yet started container")
    process = _process_spec(line, record)
    tty = bool(process.get("terminal"))
    console = line.value("console-socket")
    detach = line.is_set("detach")
    if tty and detach and not console:
        raise CommandError("cannot allocate tty if runc will detach without setting console socket")
    if console and not tty:
        raise CommandError("cannot use console socket if runc will not detach or allocate tty")
    config = {
        "vm": record["vm"],
        "socket": record["socket"],
        "id": wanted,
        "process": process,
        "tty": tty,
    }
    if not detach and not console:
        # In the foreground, this process becomes the stand-in: our stdio, our exit status.
        _write_pid_file(line.value("pid-file"), os.getpid())
        sys.stdout.flush()
        command = module_command("hcsoci.runtime_cli.standin", json.dumps(config))
        os.execv(command[0], command)
    fds: list[int] = []
    try:
        stdio = _console_stdio(tty, console, fds)
        ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
        fds += [ready_r, ready_w]
        config["ready_fd"] = ready_w
        standin = _spawn_standin(config, stdio, [ready_w])
        os.close(ready_w)
        fds.remove(ready_w)
        answer = _read_ready(ready_r, START_TIMEOUT)
        if answer != "ok":
            with contextlib.suppress(OSError):
                os.kill(standin, signal.SIGKILL)
            raise CommandError(answer.removeprefix("error "))
        _write_pid_file(line.value("pid-file"), standin)
    finally:
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
    if not detach:
        # A foreground exec with a console: wait for the stand-in (our child).
        _, status = os.waitpid(standin, 0)
        code = os.waitstatus_to_exitcode(status)
        return 128 - code if code < 0 else code
    return 0


def _ps(invocation: Invocation, line: CommandLine) -> int:
    wanted = container_id(line, "ps")
    record = _read_record(invocation.root, wanted)
    running = _status(invocation.root, wanted, record) in ("running", "paused")
    if line.value("format") == "json":
        # Host pids, as engines expect: the stand-in is the container's one host process.
        sys.stdout.write(json.dumps([int(record["pid"])] if running else []) + "\n")
        return 0
    sys.stdout.write("PID   CMD (in the utility VM)\n")
    if running:
        for found in _client(record).call("processes", id=wanted)["processes"]:
            sys.stdout.write(f"{int(found['pid']):<5} {found['command']}\n")
    return 0


def _running_record(invocation: Invocation, line: CommandLine, command: str) -> tuple[str, Any]:
    wanted = container_id(line, command)
    record = _read_record(invocation.root, wanted)
    status = _status(invocation.root, wanted, record)
    if status not in ("running", "paused"):
        raise CommandError(f"container {wanted} is not running: {status}")
    return wanted, record


def _call(record: dict[str, Any], op: str, **args: Any) -> None:
    from hcsoci.errors import HcsociError

    try:
        _client(record).call(op, **args)
    except HcsociError as err:
        raise CommandError(str(err)) from None


def _pause(invocation: Invocation, line: CommandLine) -> int:
    """Freeze the container's processes in the guest (its cgroup), as ``runc pause``."""
    wanted, record = _running_record(invocation, line, "pause")
    _call(record, "pause", id=wanted)
    _write_private(_directory(invocation.root, wanted) / PAUSED, b"")
    return 0


def _resume(invocation: Invocation, line: CommandLine) -> int:
    """Thaw them, as ``runc resume``."""
    wanted, record = _running_record(invocation, line, "resume")
    _call(record, "resume", id=wanted)
    with contextlib.suppress(FileNotFoundError):
        (_directory(invocation.root, wanted) / PAUSED).unlink()
    return 0


def _update(invocation: Invocation, line: CommandLine) -> int:
    """``runc update`` in the guest: runc's limit flags as given, ``-r FILE|-`` as JSON."""
    wanted, record = _running_record(invocation, line, "update")
    if len(line.args) > 1:
        raise CommandError(f"update: one container id, not {line.args!r}")
    flags = [
        f"--{name}={value}"
        for name, values in line.flags.items()
        if name not in ("resources", "help")
        for value in values
    ]
    resources = None
    source = line.value("resources")
    if source:
        try:
            if source == "-":
                text = sys.stdin.buffer.read()
            else:
                with open(source, "rb") as file:
                    text = file.read()
            resources = json.loads(text)
        except OSError as err:
            raise CommandError(f"--resources {source!r}: {err.strerror or err}") from None
        except ValueError as err:
            raise CommandError(f"--resources {source!r}: not valid JSON: {err}") from None
        if not isinstance(resources, dict):
            raise CommandError(f"--resources {source!r}: not a JSON object")
    if not flags and resources is None:
        raise CommandError("update: give --resources or a limit flag (--memory, --cpu-quota...)")
    _call(record, "update", id=wanted, flags=flags, resources=resources)
    return 0


def _unsupported(command: str) -> Callable[[Invocation, CommandLine], int]:
    def refuse(invocation: Invocation, line: CommandLine) -> int:
        container_id(line, command)
        raise CommandError(f"{command}: not supported for containers in a utility VM")

    return refuse


_COMMANDS: dict[str, Callable[[Invocation, CommandLine], int]] = {
    "start": _start,
    "state": _state,
    "kill": _kill,
    "delete": _delete,
    "exec": _exec,
    "ps": _ps,
    "pause": _pause,
    "resume": _resume,
    "update": _update,
    "events": _unsupported("events"),
    "run": _unsupported("run"),
}


def handles(command: str) -> bool:
    """Whether ``command`` on a VM container is carried out here."""
    return command in _COMMANDS


def run_vm_command(invocation: Invocation, command: str, line: CommandLine) -> int:
    """Carry out ``command`` on a VM container (``create``: make one)."""
    return _COMMANDS[command](invocation, line)


def create(invocation: Invocation, line: CommandLine, wanted: str, bundle: str) -> int:
    """``create`` with VM isolation (see the module)."""
    return _create(invocation, line, wanted, bundle)


def list_states(root: str) -> list[dict[str, Any]]:
    """The state of every VM container under ``root`` (for ``list``)."""
    found = []
    base = Path(root) / DIRECTORY
    for entry in sorted(os.listdir(base)) if base.is_dir() else []:
        with contextlib.suppress(CommandError):
            found.append(_state_of(root, entry, _read_record(root, entry)))
    return found


def list_all(invocation: Invocation, line: CommandLine) -> int:
    """``list``: runc's containers and the VM containers, in runc's formats."""
    states: list[dict[str, Any]] = []
    if os.path.isdir(invocation.runc_root):
        found = subprocess.run(
            invocation.runc.argv("list", ["--format", "json"]),
            stdout=subprocess.PIPE,
            check=False,
        )
        with contextlib.suppress(ValueError):
            states = json.loads(found.stdout or b"null") or []
    states += list_states(invocation.root)
    if line.is_set("quiet"):
        sys.stdout.write("".join(f"{state['id']}\n" for state in states))
    elif line.value("format") == "json":
        sys.stdout.write(json.dumps(states) + "\n")
    else:
        sys.stdout.write("ID\tPID\tSTATUS\tBUNDLE\tCREATED\tOWNER\n")
        for state in states:
            sys.stdout.write(
                f"{state['id']}\t{state.get('pid', 0)}\t{state.get('status', '')}\t"
                f"{state.get('bundle', '')}\t{state.get('created', '')}\t{state.get('owner', '')}\n"
            )
    return 0
