"""Safe extraction of one layer tarball into a directory, in overlayfs form.

A layer is a tar stream (plain or gzip).  :func:`extract_layer` writes it into
an empty directory and returns its diff id (the sha256 of the uncompressed tar).

Whiteouts become what overlayfs reads in a lower layer:

* ``dir/.wh.NAME`` becomes a character device 0/0 at ``dir/NAME``;
* ``dir/.wh..wh..opq`` becomes the xattr ``trusted.overlay.opaque=y`` on ``dir``.

Entries that would escape the layer are refused (:class:`UnsafeLayerError`):
absolute names, ``..`` components, any entry whose path runs through a
symlink (so a link to ``/etc`` cannot be written through), hard links to
anything outside the layer, and device nodes other than 0/0 whiteouts.
Symlinks themselves may point anywhere, absolute targets included: they are
resolved inside the container's root at run time, never while extracting.
Extended attributes from the tar are dropped except ``security.capability``
(a layer must not plant ``trusted.overlay.*`` attributes of its own).

A layer larger than its :class:`~hcsoci.images.limits.LayerLimits` (bytes of
uncompressed tar, or entries) is refused with :class:`LayerLimitError` as soon
as the limit is crossed.  Sparse files (GNU tar ``--sparse``) are written with
their holes, so they take on disk only the data the tar holds.  Depth does not
matter: every file is made relative to an open directory, by its own name, so
no path longer than one name is used and nothing recurses.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import logging
import os
import shutil
import stat
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, cast

from hcsoci.images.errors import ImageError, LayerLimitError, UnsafeLayerError
from hcsoci.images.limits import (
    MAX_LAYER_BYTES_ENV,
    MAX_LAYER_ENTRIES_ENV,
    LayerLimits,
    format_size,
)
from hcsoci.paths import remove_tree

__all__ = [
    "OPAQUE_MARKER",
    "OVERLAY_OPAQUE_XATTR",
    "WHITEOUT_PREFIX",
    "extract_layer",
]

log = logging.getLogger(__name__)

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
OVERLAY_OPAQUE_XATTR = "trusted.overlay.opaque"
_KEPT_XATTRS = ("security.capability",)
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_CHUNK = 1 << 20
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_BYTES_HOW = f"--max-layer-size, ${MAX_LAYER_BYTES_ENV} or ImageStore(max_layer_bytes=)"
_ENTRIES_HOW = f"--max-layer-entries, ${MAX_LAYER_ENTRIES_ENV} or ImageStore(max_layer_entries=)"


class _HashingReader:
    """A read-only stream that hashes (and counts) what passes through it.

    With ``max_size`` it raises :class:`LayerLimitError` for ``layer`` as soon
    as more than ``max_size`` bytes have passed.
    """

    def __init__(
        self,
        inner: IO[bytes] | gzip.GzipFile,
        prefix: bytes = b"",
        on_read: Callable[[int], None] | None = None,
        *,
        max_size: int | None = None,
        layer: str = "",
    ) -> None:
        self._inner = inner
        self._prefix = prefix
        self._on_read = on_read
        self._max_size = max_size
        self._layer = layer
        self.hash = hashlib.sha256()
        self.size = 0

    def read(self, size: int = -1, /) -> bytes:
        if self._prefix:
            data = self._prefix if size < 0 else self._prefix[:size]
            self._prefix = self._prefix[len(data) :]
            if size < 0 or len(data) < size:
                data += self._inner.read(-1 if size < 0 else size - len(data))
        else:
            data = self._inner.read(size)
        self.hash.update(data)
        self.size += len(data)
        if self._max_size is not None and self.size > self._max_size:
            raise LayerLimitError(
                self._layer, "uncompressed", format_size(self._max_size), _BYTES_HOW
            )
        if self._on_read is not None and data:
            self._on_read(len(data))
        return data

    def seek(self, offset: int, /) -> int:
        """Layers are read once, front to back (``GzipFile`` only seeks to rewind)."""
        raise io.UnsupportedOperation("a layer stream cannot seek")

    def drain(self) -> None:
        while self.read(_CHUNK):
            pass


def extract_layer(
    blob: IO[bytes],
    dest: Path,
    *,
    layer: str = "",
    on_read: Callable[[int], None] | None = None,
    limits: LayerLimits | None = None,
) -> tuple[str, str, int]:
    """Extract the layer tarball ``blob`` (plain or gzip) into the empty directory ``dest``.

    Returns ``(diff_id, blob_digest, size)``: the ``sha256:`` digests of the
    uncompressed tar and of ``blob`` as read, and the uncompressed size.
    ``layer`` names the layer in error messages; ``on_read`` is told how many
    bytes of ``blob`` each read consumed (for progress bars).  ``limits``
    (default: :class:`LayerLimits`' defaults, not the environment) bounds the
    uncompressed size and the number of entries.  On error ``dest`` is left
    half-written: the caller extracts into a staging directory.
    """
    name = layer or str(dest)
    limits = limits if limits is not None else LayerLimits()
    magic = blob.read(4)
    if magic.startswith(_GZIP_MAGIC):
        raw = _HashingReader(blob, magic, on_read)
        tar_stream = _HashingReader(
            gzip.GzipFile(fileobj=raw, mode="rb"), max_size=limits.max_bytes, layer=name
        )
    elif magic == _ZSTD_MAGIC:
        raise ImageError(f"layer {name}: zstd-compressed layers are not supported (use gzip)")
    else:
        raw = tar_stream = _HashingReader(
            blob, magic, on_read, max_size=limits.max_bytes, layer=name
        )
    try:
        with tarfile.open(fileobj=tar_stream, mode="r|") as tar:  # type: ignore[call-overload]
            _Extractor(tar, dest, name, limits.max_entries).run()
        tar_stream.drain()  # the diff id covers the end-of-archive padding too
        if tar_stream is not raw:
            raw.drain()
    except (tarfile.TarError, EOFError, gzip.BadGzipFile, OSError) as err:
        if isinstance(err, UnsafeLayerError):
            raise
        raise ImageError(f"layer {name}: not a valid tar archive: {err}") from err
    return (
        "sha256:" + tar_stream.hash.hexdigest(),
        "sha256:" + raw.hash.hexdigest(),
        tar_stream.size,
    )


def _in_directory(fd: int, name: str) -> str:
    """A short path naming ``name`` in the open directory ``fd``, for calls without ``dir_fd``."""
    return f"/proc/self/fd/{fd}/{name}"


class _Cursor:
    """An open directory of the layer, moved from one entry's directory to the next.

    Entries come mostly in tree order, so the next entry's directory is usually
    this one or a close relative: moving there opens a few directories whatever
    the depth, and every call names one file relative to the open directory, so
    a tree deeper than ``PATH_MAX`` extracts as well as a flat one.  It climbs
    through ``..``, checking it arrives at the directory it came from.

    A cursor that creates (``create=True``) remembers which of the directories
    it is in were changed, and when it leaves one that the layer gave a time
    (``times``, by device and inode), sets that time again.
    """

    def __init__(self, root: Path, times: dict[tuple[int, int], int] | None = None) -> None:
        self._root = root
        self._times = times
        self.fd = -1
        self._reset()

    def _reset(self) -> None:
        self.close()
        self.fd = os.open(self._root, _DIR_FLAGS)
        top = os.fstat(self.fd)
        self.path = ""  # "/".join of the names below the root
        self._depth = 0
        self._frames: list[tuple[tuple[int, int], bool]] = [((top.st_dev, top.st_ino), False)]

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def reset(self) -> None:
        """Back to the layer's root, after a directory this cursor may be in was removed.

        Only for a cursor that looks up (no ``times``): it does not climb (the
        way up may be gone), so it restores no directory time.
        """
        self._reset()

    def finish(self) -> None:
        """Climb back to the root, restoring the times of the directories changed on the way."""
        while self._depth:
            self._up()
        self.close()

    def changed(self) -> None:
        """The current directory was changed (an entry created or removed in it)."""
        self._frames[-1] = (self._frames[-1][0], True)

    def _up(self) -> None:
        identity, dirty = self._frames.pop()
        if dirty and self._times is not None and identity in self._times:
            mtime = self._times[identity]
            os.utime(self.fd, (mtime, mtime))
        up = os.open("..", _DIR_FLAGS, dir_fd=self.fd)
        arrived = os.fstat(up)
        if (arrived.st_dev, arrived.st_ino) != self._frames[-1][0]:
            os.close(up)
            raise ImageError(f"layer directory {str(self._root)!r} changed while it was extracted")
        os.close(self.fd)
        self.fd = up
        self._depth -= 1
        self.path = self.path.rpartition("/")[0] if self._depth else ""

    def go(self, parts: list[str], *, create: bool, refuse: Callable[[str], Exception]) -> int:
        """The open directory ``parts`` (names below the root), refusing symlinks on the way.

        With ``create`` missing directories are made (mode 0755); without, a
        missing one is refused.  ``refuse(reason)`` makes the error to raise.
        """
        target = "/".join(parts)
        while self._depth and not (target == self.path or target.startswith(self.path + "/")):
            self._up()
        for index in range(self._depth, len(parts)):
            part = parts[index]
            try:
                mode = os.lstat(part, dir_fd=self.fd).st_mode
            except FileNotFoundError:
                if not create:
                    raise refuse(f"{target!r} does not exist") from None
                os.mkdir(part, 0o755, dir_fd=self.fd)
                self.changed()
                mode = stat.S_IFDIR
                if self._times is not None:
                    made = os.lstat(part, dir_fd=self.fd)
                    self._times.pop((made.st_dev, made.st_ino), None)  # a new inode: no time
            relative = "/".join(parts[: index + 1])
            if stat.S_ISLNK(mode):
                raise refuse(f"its path runs through the symlink {relative!r}")
            if not stat.S_ISDIR(mode):
                raise refuse(f"{relative!r} is not a directory")
            fd = os.open(part, _DIR_FLAGS, dir_fd=self.fd)
            os.close(self.fd)
            self.fd = fd
            opened = os.fstat(fd)
            self._frames.append(((opened.st_dev, opened.st_ino), False))
            self._depth += 1
            self.path = relative
        if create:
            self.changed()
        return self.fd


class _Extractor:
    """One pass over a layer's entries, in order (later entries replace earlier ones)."""

    def __init__(self, tar: tarfile.TarFile, dest: Path, layer: str, max_entries: int) -> None:
        self.tar = tar
        self.dest = dest
        self.layer = layer
        self.max_entries = max_entries
        # Directory times, set when an entry names the directory and again each
        # time the cursor leaves it after changing it (creating children does).
        self.times: dict[tuple[int, int], int] = {}
        self.cursor = _Cursor(dest, self.times)
        self.links = _Cursor(dest)  # where hard links' sources are looked up

    def run(self) -> None:
        entries = 0
        try:
            while (member := self.tar.next()) is not None:
                # TarFile keeps every member it read (its undocumented ``members``
                # list): a million entries would hold gigabytes; this pass needs none.
                kept = getattr(self.tar, "members", None)
                if isinstance(kept, list):
                    kept.clear()
                entries += 1
                if entries > self.max_entries:
                    raise LayerLimitError(
                        self.layer, "entries", f"{self.max_entries:,}", _ENTRIES_HOW
                    )
                self._extract(member)
            self.cursor.finish()
        finally:
            self.cursor.close()
            self.links.close()

    def refuse(self, member: tarfile.TarInfo, reason: str) -> UnsafeLayerError:
        return UnsafeLayerError(self.layer, member.name, reason)

    def _parts(self, member: tarfile.TarInfo, name: str, what: str = "name") -> list[str]:
        if name.startswith("/"):
            raise self.refuse(member, f"absolute {what} {name!r}")
        parts = name.rstrip("/").split("/")
        if "" in parts or "." in parts:  # (tested first: a deep name has thousands of parts)
            parts = [part for part in parts if part not in ("", ".")]
        if ".." in parts:
            raise self.refuse(member, f"{what} {name!r} has a '..' component")
        return parts

    def _clear(self, fd: int, name: str, keep_directory: bool) -> None:
        """Remove ``name`` in the directory ``fd`` (a directory only without ``keep_directory``)."""
        try:
            mode = os.lstat(name, dir_fd=fd).st_mode
        except FileNotFoundError:
            return
        if stat.S_ISDIR(mode):
            if not keep_directory:
                remove_tree(_in_directory(fd, name))
                self.links.reset()  # it may have been inside
        else:
            os.unlink(name, dir_fd=fd)

    def _extract(self, member: tarfile.TarInfo) -> None:
        parts = self._parts(member, member.name)
        if not parts:
            return  # the layer's root entry ("./")
        fd = self.cursor.go(
            parts[:-1], create=True, refuse=lambda reason: self.refuse(member, reason)
        )
        base = parts[-1]
        if base.startswith(WHITEOUT_PREFIX):
            self._whiteout(member, fd, base)
            return
        self._clear(fd, base, keep_directory=member.isdir())
        if member.isdir():
            with contextlib.suppress(FileExistsError):  # then this entry sets its attributes
                os.mkdir(base, 0o700, dir_fd=fd)
        elif member.isreg():
            self._write_file(member, fd, base)
        elif member.issym():
            os.symlink(member.linkname, base, dir_fd=fd)
        elif member.islnk():
            source_fd, source = self._link_source(member)
            os.link(source, base, src_dir_fd=source_fd, dst_dir_fd=fd, follow_symlinks=False)
            return  # a hard link shares the target's owner, mode and times
        elif member.ischr() and member.devmajor == 0 and member.devminor == 0:
            os.mknod(base, stat.S_IFCHR, os.makedev(0, 0), dir_fd=fd)  # already a whiteout
        elif member.isdev() and not member.isfifo():
            kind = "character" if member.ischr() else "block"
            raise self.refuse(
                member,
                f"{kind} device {member.devmajor}:{member.devminor} is not allowed in a layer",
            )
        elif member.isfifo():
            os.mkfifo(base, dir_fd=fd)
        else:
            raise self.refuse(member, f"unsupported tar entry type {member.type!r}")
        self._set_attributes(member, fd, base)

    def _link_source(self, member: tarfile.TarInfo) -> tuple[int, str]:
        """The earlier entry of this layer a hard link names: its directory and name."""
        parts = self._parts(member, member.linkname, "link target")
        if not parts:
            raise self.refuse(member, "hard link to the layer's root")
        fd = self.links.go(
            parts[:-1], create=False, refuse=lambda reason: self.refuse(member, reason)
        )
        try:
            mode = os.lstat(parts[-1], dir_fd=fd).st_mode
        except FileNotFoundError:
            raise self.refuse(
                member, f"link target {member.linkname!r} is not an earlier entry of this layer"
            ) from None
        if stat.S_ISDIR(mode):
            raise self.refuse(member, f"hard link to the directory {member.linkname!r}")
        return fd, parts[-1]

    def _write_file(self, member: tarfile.TarInfo, fd: int, name: str) -> None:
        source = self.tar.extractfile(member)
        assert source is not None  # regular files always have data
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        with source, os.fdopen(os.open(name, flags, 0o600, dir_fd=fd), "wb") as out:
            if member.sparse is None:
                shutil.copyfileobj(source, out, _CHUNK)
            else:
                self._write_sparse(member, source, out)

    def _write_sparse(self, member: tarfile.TarInfo, source: IO[bytes], out: IO[bytes]) -> None:
        """Write only the data regions of a sparse member, leaving the holes as holes."""
        # The unbuffered reader under tarfile's file object: it seeks without
        # asking the stream (which cannot seek back, and need not: regions come
        # in order, so each seek moves forward through the tar).
        data = source.raw if isinstance(source, io.BufferedReader) else source
        end = 0
        # tarfile's stubs call it bytes; it is the list of (offset, size) data regions.
        for offset, size in cast("list[tuple[int, int]]", member.sparse or []):
            if size == 0:
                continue  # GNU tar pads the map with empty regions
            if offset < end or offset + size > member.size:
                raise self.refuse(
                    member,
                    f"sparse region ({offset}, {size}) is out of order or beyond "
                    f"the file's size {member.size}",
                )
            data.seek(offset)
            out.seek(offset)
            remaining = size
            while remaining:
                chunk = data.read(min(_CHUNK, remaining))
                if not chunk:
                    raise ImageError(f"layer {self.layer}: {member.name!r}: unexpected end of data")
                out.write(chunk)
                remaining -= len(chunk)
            end = offset + size
        out.truncate(member.size)

    def _set_attributes(self, member: tarfile.TarInfo, fd: int, name: str) -> None:
        os.chown(name, member.uid, member.gid, dir_fd=fd, follow_symlinks=False)
        if not member.issym():
            # After chown, which clears set-id bits; never a symlink here (just made).
            os.chmod(name, member.mode & 0o7777, dir_fd=fd)
            for key in _KEPT_XATTRS:
                value = member.pax_headers.get("SCHILY.xattr." + key)
                if value is not None:
                    os.setxattr(
                        _in_directory(fd, name),
                        key,
                        value.encode("utf-8", "surrogateescape"),
                        follow_symlinks=False,
                    )
        os.utime(name, (member.mtime, member.mtime), dir_fd=fd, follow_symlinks=False)
        if member.isdir():
            made = os.lstat(name, dir_fd=fd)
            self.times[(made.st_dev, made.st_ino)] = int(member.mtime)

    def _whiteout(self, member: tarfile.TarInfo, fd: int, base: str) -> None:
        if base == OPAQUE_MARKER:
            os.setxattr(fd, OVERLAY_OPAQUE_XATTR, b"y")
            return
        if base.startswith(WHITEOUT_PREFIX + WHITEOUT_PREFIX):
            log.debug("skipping aufs metadata entry", extra={"entry": member.name})
            return
        hidden = base[len(WHITEOUT_PREFIX) :]
        if hidden in ("", ".", ".."):
            raise self.refuse(member, f"whiteout of {hidden!r}")
        self._clear(fd, hidden, keep_directory=False)
        os.mknod(hidden, stat.S_IFCHR, os.makedev(0, 0), dir_fd=fd)
        os.chown(hidden, member.uid, member.gid, dir_fd=fd, follow_symlinks=False)
