"""VM templates: a guest booted to agent-ready once, saved, and restored instead of booted.

The Firecracker-snapshot / Kata-template idea on QEMU.  A template is the
QEMU migration stream of a paused guest (its memory and device state) taken
at agent-ready with no device in use and the bridge disconnected; restoring
it (``-incoming fd:N -S``) gives a VM whose agent answers in a fraction of a
second instead of a boot's many seconds.  A restore needs the exact device
set of the saved machine, so the template is keyed by everything that shapes
it (:class:`TemplateIdentity`): the boot assets, the QEMU binary and
firmware, the accelerator and the device-bearing part of the command line
(memory, CPUs, devices, kernel arguments).

Templates live in ``$HCSOCI_ASSETS/<asset key>/templates/<name>/`` (0700): ``template.json``
(the identity, the state file's size and CRC-32) and ``state-<crc>.bin``
(0600), both readable by root alone.  A template whose identity no longer
matches (assets rebuilt, QEMU upgraded) is deleted and rebuilt, never
restored; a state file whose size or checksum is wrong is refused the same way.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import itertools
import json
import logging
import os
import re
import shutil
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hcsoci.errors import HcsociError
from hcsoci.paths import make_private_dir, remove_tree, write_private_file
from hcsoci.uvm.accel import QEMU_BINARY, qemu_version
from hcsoci.uvm.assets import BootAssets
from hcsoci.uvm.options import TEMPLATE_MODES

__all__ = [
    "TEMPLATE_FORMAT",
    "TEMPLATE_MODES",
    "Template",
    "TemplateError",
    "TemplateIdentity",
    "StateChecksum",
    "discard_template",
    "find_template",
    "qemu_signature",
    "save_template",
    "templates_dir",
]

log = logging.getLogger(__name__)

TEMPLATE_FORMAT = 1
"""Bumped when what a template holds, or how it is restored, changes."""


SAVE_TIMEOUT = 120.0
"""Seconds the migration of a template to its file may take."""

_CHUNK = 4 << 20
_STATE_NAME = re.compile(r"state-[0-9a-f]{8}\.bin")

# Files besides the QEMU binary whose content ends up in the saved machine
# (firmware and option ROMs are migrated as RAM blocks of their own size).
_FIRMWARE = (
    "/usr/share/qemu/bios-256k.bin",
    "/usr/share/qemu/linuxboot_dma.bin",
    "/usr/share/qemu/kvmvapic.bin",
)

# Command-line options that shape the saved machine; the others name host
# paths (sockets, pid file, console log, Plan9 slot folders) that a restore
# may change freely.
_MACHINE_OPTIONS = ("-machine", "-accel", "-cpu", "-m", "-smp", "-device", "-serial", "-append")


class TemplateError(HcsociError):
    """A template cannot be used: stale, damaged, or its restore failed."""


@functools.cache
def qemu_signature() -> str:
    """What identifies the QEMU build: its version line and its binary's and firmware's stat."""
    parts = []
    binary = shutil.which(QEMU_BINARY)
    for path in (binary, *_FIRMWARE):
        if path is None:
            continue
        with contextlib.suppress(OSError):
            real = os.path.realpath(path)
            info = os.stat(real)
            parts.append(f"{real}:{info.st_size}:{info.st_mtime_ns}")
    return qemu_version() + " " + hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class TemplateIdentity:
    """Everything a template must share with the VM restored from it."""

    format: int
    assets_key: str
    qemu: str
    accel: str
    memory_mb: int
    cpu_count: int
    machine: str
    """SHA-256 of the device-bearing options of the QEMU command line."""

    @classmethod
    def of(
        cls, assets: BootAssets, accel: str, memory_mb: int, cpu_count: int, command: list[str]
    ) -> TemplateIdentity:
        """The identity of a VM with this QEMU ``command`` line."""
        shaping = [
            f"{option} {value}"
            for option, value in itertools.pairwise(command)
            if option in _MACHINE_OPTIONS
        ]
        machine = hashlib.sha256("\n".join(shaping).encode()).hexdigest()
        return cls(
            TEMPLATE_FORMAT, assets.key, qemu_signature(), accel, memory_mb, cpu_count, machine
        )

    @property
    def name(self) -> str:
        """The template's folder name: what a VM asks for (options), not what built it."""
        return f"{self.accel}-m{self.memory_mb}-c{self.cpu_count}-{self.machine[:12]}"

    def differences(self, recorded: dict[str, Any]) -> list[str]:
        """``field: recorded -> now`` for each field ``recorded`` has differently."""
        now = asdict(self)
        return [
            f"{k}: {recorded.get(k)!r} -> {v!r}" for k, v in now.items() if recorded.get(k) != v
        ]


@dataclass(frozen=True)
class Template:
    """A saved template: its folder, state file, size and CRC-32."""

    directory: Path
    state: Path
    size: int
    crc32: int


def templates_dir(assets: BootAssets) -> Path:
    """Where templates live: ``templates/`` in the asset build they were made from.

    Not the state root: that is a tmpfs (``/run``) where a template would cost
    its size in memory and be lost at every reboot.  In the asset build, so
    that builds used side by side (one asset cache, two checkouts) keep a
    template each, and a build pruned as stale takes its templates with it.
    """
    return assets.directory / "templates"


def find_template(identity: TemplateIdentity, directory: Path) -> Template | None:
    """The template for ``identity``, or None; a stale or damaged one is deleted (logged)."""
    folder = directory / identity.name
    try:
        meta = json.loads((folder / "template.json").read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        discard_template(folder, f"its template.json is unreadable ({err})")
        return None
    recorded = meta.get("identity")
    if not isinstance(recorded, dict):
        discard_template(folder, "its template.json has no identity")
        return None
    changed = identity.differences(recorded)
    if changed:
        discard_template(folder, "stale (" + "; ".join(changed) + ")")
        return None
    try:
        if not _STATE_NAME.fullmatch(str(meta["state"])):
            raise ValueError(f"state file name {meta['state']!r}")
        template = Template(
            folder, folder / str(meta["state"]), int(meta["size"]), int(meta["crc32"])
        )
        size = template.state.stat().st_size
    except (OSError, KeyError, ValueError, TypeError) as err:
        discard_template(folder, f"its state file is missing or unreadable ({err})")
        return None
    if size != template.size:
        discard_template(folder, f"its state file is {size} bytes, {template.size} were saved")
        return None
    return template


def discard_template(folder: Path, reason: str) -> None:
    """Delete a template that cannot be used, saying why on one log line."""
    log.warning("utility VM template %s discarded, it will be rebuilt: %s", folder.name, reason)
    with _locked(folder.parent, blocking=True), contextlib.suppress(OSError, HcsociError):
        remove_tree(folder)


class StateChecksum:
    """The CRC-32 of a template's state file, computed on a thread while QEMU loads it."""

    def __init__(self, template: Template) -> None:
        self.template = template
        self._value: int | None = None
        self._error: OSError | None = None
        self._thread = threading.Thread(target=self._run, name="template-checksum", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._value = file_crc32(self.template.state)
        except OSError as err:
            self._error = err

    def verify(self) -> None:
        """Wait for the checksum; raise :class:`TemplateError` when it is not the saved one."""
        self._thread.join()
        if self._error is not None:
            raise TemplateError(f"cannot read the template's state file: {self._error}")
        if self._value != self.template.crc32:
            raise TemplateError(
                f"the template's state file is damaged (CRC-32 {self._value:08x}, "
                f"saved {self.template.crc32:08x})"
            )


def file_crc32(path: Path) -> int:
    """CRC-32 of a file (accidental damage; the file is root's alone, so not tampering)."""
    crc = 0
    with open(path, "rb", buffering=0) as file:
        while chunk := file.read(_CHUNK):
            crc = zlib.crc32(chunk, crc)
    return crc


@contextlib.contextmanager
def _locked(directory: Path, *, blocking: bool) -> Iterator[bool]:
    """Hold ``directory/.lock`` (one template writer at a time); yields whether it was taken."""
    make_private_dir(directory)
    fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def save_template(
    identity: TemplateIdentity,
    directory: Path,
    qmp: Callable[[str, dict[str, Any]], Any],
    pass_fd: Callable[[int, str], None],
) -> Template | None:
    """Migrate a *paused* VM to a new template for ``identity``; None if another process is at it.

    ``qmp`` runs a QMP command on the VM, ``pass_fd(fd, name)`` hands QEMU a
    descriptor (``getfd``).  Templates of other assets or another QEMU are
    deleted on the way.  The VM stays paused (the caller resumes it).
    """
    with _locked(directory, blocking=False) as mine:
        if not mine:
            return None
        _prune_stale(directory, identity)
        folder = make_private_dir(directory / identity.name)
        partial = folder / f".state-{os.getpid()}.partial"
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            try:
                pass_fd(fd, "hcsoci-template")
            finally:
                os.close(fd)
            qmp("migrate-set-parameters", {"max-bandwidth": 1 << 40})
            qmp("migrate", {"uri": "fd:hcsoci-template"})
            deadline = time.monotonic() + SAVE_TIMEOUT
            while True:
                status = qmp("query-migrate", {})
                state = status.get("status")
                if state == "completed":
                    break
                if state in ("failed", "cancelled") or time.monotonic() > deadline:
                    reason = status.get("error-desc", state or "timed out")
                    raise TemplateError(f"saving the template failed: {reason}")
                time.sleep(0.01)
            crc = file_crc32(partial)
            state_file = folder / f"state-{crc:08x}.bin"
            partial.replace(state_file)
            size = state_file.stat().st_size
            meta = {
                "identity": asdict(identity),
                "state": state_file.name,
                "size": size,
                "crc32": crc,
                "saved_at": time.time(),
            }
            meta_tmp = folder / f".template-{os.getpid()}.json"
            write_private_file(meta_tmp, json.dumps(meta, indent=1).encode())
            meta_tmp.replace(folder / "template.json")
            for old in folder.glob("state-*.bin"):
                if old != state_file:
                    old.unlink(missing_ok=True)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
    log.info("utility VM template saved", extra={"template": str(folder), "bytes": size})
    return Template(folder, state_file, size, crc)


def _prune_stale(directory: Path, identity: TemplateIdentity) -> None:
    """Delete templates of another QEMU or format, or other assets (no VM can use them now)."""
    for meta_path in directory.glob("*/template.json"):
        try:
            recorded = json.loads(meta_path.read_text()).get("identity", {})
            current = all(
                recorded.get(k) == getattr(identity, k) for k in ("format", "assets_key", "qemu")
            )
        except (OSError, ValueError, AttributeError):
            current = False
        if not current:
            log.info("stale utility VM template deleted", extra={"template": meta_path.parent.name})
            with contextlib.suppress(OSError, HcsociError):
                remove_tree(meta_path.parent)
