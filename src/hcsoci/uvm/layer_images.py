"""Layer images: a read-only layer directory as a cached ext4 image, for a SCSI disk.

A utility VM gets its container's read-only layers as disks (hcsshim's LCOW
VHDs): each layer directory is built once into an ext4 image with
``mke2fs -d`` and kept in ``$HCSOCI_LAYER_CACHE`` (default
``/var/lib/hcsoci/layer-images``, readable by root alone), keyed by the
layer's path and modification time; containers sharing a layer share its disk.
Images have 4 KiB blocks and a size in whole 2 MiB, so that the same image
can also be a vPMEM device mounted with DAX (:mod:`hcsoci.uvm.vpmem`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import threading
from pathlib import Path

from hcsoci.errors import HcsociError
from hcsoci.paths import make_private_dir
from hcsoci.uvm.vpmem import VPMEM_ALIGNMENT

__all__ = ["layer_cache_dir", "layer_image"]

_FORMAT = "ext4-4k-2m"  # in the cache key: images of another format are rebuilt


def layer_cache_dir() -> Path:
    """Where layer ext4 images are cached (``$HCSOCI_LAYER_CACHE``)."""
    return Path(os.environ.get("HCSOCI_LAYER_CACHE") or "/var/lib/hcsoci/layer-images")


def _tree_size(directory: Path) -> tuple[int, int]:
    """Bytes (each entry rounded up to 4 KiB) and entries below ``directory``.

    An explicit stack, not ``os.walk`` (which recurses once per level in
    Python 3.11): a layer may be thousands of directories deep.  Symlinks are
    counted, never followed; unreadable directories are skipped, as ``os.walk`` does.
    """
    size = entries = 0
    pending = [os.fspath(directory)]
    while pending:
        try:
            scan = os.scandir(pending.pop())
        except OSError:
            continue
        with scan:
            for entry in scan:
                entries += 1
                with contextlib.suppress(OSError):
                    size += (entry.stat(follow_symlinks=False).st_size + 4095) // 4096 * 4096
                    if entry.is_dir(follow_symlinks=False):
                        pending.append(entry.path)
    return size, entries


def layer_image(layer: str, cache: Path | None = None) -> Path:
    """The ext4 image of the layer directory ``layer`` (built once, then cached)."""
    source = Path(layer).resolve()
    stamp = source.stat().st_mtime_ns
    key = hashlib.sha256(f"{source}\0{stamp}\0{_FORMAT}".encode()).hexdigest()[:32]
    cache = cache or layer_cache_dir()
    image = cache / f"{key}.ext4"
    if image.exists():
        return image
    make_private_dir(cache)
    size, entries = _tree_size(source)
    kib = (size * 13 // 10 + entries * 4096) // 1024 + 16 * 1024
    kib = -(-kib // (VPMEM_ALIGNMENT >> 10)) * (VPMEM_ALIGNMENT >> 10)
    partial = cache / f".{key}.{os.getpid()}.{threading.get_ident()}.tmp"
    try:
        mkfs = ["mke2fs", "-q", "-F", "-t", "ext4", "-b", "4096", "-d", str(source)]
        done = subprocess.run([*mkfs, str(partial), f"{kib}k"], capture_output=True, text=True)
        if done.returncode != 0:
            raise HcsociError(f"mke2fs of layer {layer!r} failed: {done.stderr.strip()}")
        os.chmod(partial, 0o600)
        os.replace(partial, image)
    finally:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
    return image
