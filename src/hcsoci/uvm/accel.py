"""Choosing the accelerator: KVM when it really boots a guest here, else TCG.

On some hosts ``/dev/kvm`` exists and accepts ioctls, yet a stock kernel hangs
under it (nested virtualisation inside another VM, for example).  So ``auto``
boots the boot assets' trivial init under KVM with a short deadline and falls
back to TCG; the verdict is cached in the asset directory per host kernel and
QEMU version.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from hcsoci.errors import HcsociError, InvalidArgumentError
from hcsoci.paths import write_private_file
from hcsoci.uvm.assets import TRIVIAL_INIT_MARKER, BootAssets, assets_dir

__all__ = [
    "QEMU_BINARY",
    "probe_kvm",
    "qemu_version",
    "resolve_accel",
    "trivial_boot_command",
    "vcpu_count",
]

log = logging.getLogger(__name__)

QEMU_BINARY = "qemu-system-x86_64"
KVM_PROBE_DEADLINE = 10.0


def trivial_boot_command(assets: BootAssets, accel: str, console: str) -> list[str]:
    """QEMU arguments that boot the assets to the trivial init, which powers off."""
    return [
        QEMU_BINARY,
        *machine_args(accel),
        "-m",
        "512",
        "-display",
        "none",
        "-nodefaults",
        "-no-user-config",
        "-no-reboot",
        "-serial",
        f"file:{console}",
        "-kernel",
        str(assets.kernel),
        "-initrd",
        str(assets.initramfs),
        "-append",
        f"console=ttyS0 quiet panic=-1 rdinit={assets.trivial_init}",
    ]


def machine_args(accel: str) -> list[str]:
    """The machine and accelerator arguments shared by every boot."""
    # RDRAND lets the TCG guest's kernel seed its random pool at boot: with the
    # default CPU the agent's first read of /dev/urandom waited about a second.
    # ("max" has it too, but its AVX paths make glibc's memcpy slow under TCG.)
    return [
        "-machine",
        "pc,usb=off,vmport=off",
        "-accel",
        accel,
        "-cpu",
        "host" if accel == "kvm" else "qemu64,+rdrand",
    ]


def vcpu_count(requested: int, accel: str) -> int:
    """The vCPUs a VM gets: ``requested``, or for 0 two under KVM and one under TCG.

    Under TCG (QEMU 7.2 and 10.0 alike) a two-vCPU guest now and then stops for
    good: one vCPU spins with interrupts off (in its timer interrupt, on a
    spinlock the other holds) or sits idle and is never woken, and the agent
    stops answering.  A hot-plug loop beside a busy guest hit it within minutes
    with two vCPUs and never in 1,500 rounds with one (docs/uvm.md).
    """
    if requested:
        return requested
    return 2 if accel == "kvm" else 1


def _verdict_path(assets: BootAssets) -> Path:
    return assets.directory.parent / "accel-verdict.json"


def _binary_stat() -> str:
    """``path:size:mtime_ns`` of the QEMU binary ('' when it is not found)."""
    binary = shutil.which(QEMU_BINARY)
    if binary is None:
        return ""
    try:
        real = os.path.realpath(binary)
        info = os.stat(real)
    except OSError:
        return ""
    return f"{real}:{info.st_size}:{info.st_mtime_ns}"


@functools.cache
def qemu_version() -> str:
    """The first line of QEMU's ``--version``.

    Asked of each QEMU binary once: the line is kept in the asset cache
    (``qemu-version.json``) with the binary's path, size and mtime, so that a
    VM start spends no process on it while that binary stays the same.
    """
    stat = _binary_stat()
    cache = assets_dir() / "qemu-version.json"
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        saved = json.loads(cache.read_text())
        if stat and saved["binary"] == stat:
            return str(saved["version"])
    output = subprocess.run([QEMU_BINARY, "--version"], capture_output=True, text=True).stdout
    line = output.splitlines()[0] if output else "?"
    if stat and line != "?" and cache.parent.is_dir():
        partial = cache.with_name(f".qemu-version-{os.getpid()}.json")
        try:
            write_private_file(partial, json.dumps({"binary": stat, "version": line}).encode())
            partial.replace(cache)
        except (OSError, HcsociError):
            partial.unlink(missing_ok=True)  # asked again next time
    return line


@functools.cache
def _host_signature() -> str:
    return f"{os.uname().release} {qemu_version()}"


def probe_kvm(assets: BootAssets, deadline: float = KVM_PROBE_DEADLINE) -> bool:
    """Whether the trivial init boots under KVM within ``deadline`` seconds."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    with tempfile.TemporaryDirectory(prefix="hcsoci-kvm-probe-") as scratch:
        console = os.path.join(scratch, "console.log")
        process = subprocess.Popen(
            trivial_boot_command(assets, "kvm", console),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        start = time.monotonic()
        try:
            process.wait(deadline)
        except subprocess.TimeoutExpired:
            pass
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        with open(console, "rb") as log_file:
            booted = TRIVIAL_INIT_MARKER.encode() in log_file.read()
    log.info("KVM probe", extra={"works": booted, "seconds": time.monotonic() - start})
    return booted


def resolve_accel(requested: str, assets: BootAssets) -> str:
    """``kvm`` or ``tcg`` for a requested ``auto``/``kvm``/``tcg``."""
    if requested in ("kvm", "tcg"):
        if requested == "kvm" and not os.path.exists("/dev/kvm"):
            raise InvalidArgumentError("UVMOptions.accel: 'kvm' but /dev/kvm does not exist")
        return requested
    if requested != "auto":
        raise InvalidArgumentError(f"UVMOptions.accel: invalid value {requested!r}")
    path = _verdict_path(assets)
    signature = _host_signature()
    try:
        verdict = json.loads(path.read_text())
        if verdict.get("host") == signature and verdict.get("kernel") == assets.key:
            return "kvm" if verdict["kvm"] else "tcg"
    except (OSError, ValueError, KeyError):
        pass
    works = probe_kvm(assets)
    record = {"host": signature, "kernel": assets.key, "kvm": works}
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    write_private_file(tmp, json.dumps(record).encode())
    tmp.replace(path)
    return "kvm" if works else "tcg"
