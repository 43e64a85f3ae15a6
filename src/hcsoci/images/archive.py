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
"""

from __future__ import annotations

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
from typing import IO

from hcsoci.images.errors import ImageError, UnsafeLayerError

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


class _HashingReader:
    """A read-only stream that hashes (and counts) what passes through it."""

    def __init__(
        self,
        inner: IO[bytes] | gzip.GzipFile,
        prefix: bytes = b"",
        on_read: Callable[[int], None] | None = None,
    ) -> None:
        self._inner = inner
        self._prefix = prefix
        self._on_read = on_read
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
) -> tuple[str, str, int]:
    """Extract the layer tarball ``blob`` (plain or gzip) into the empty directory ``dest``.

    Returns ``(diff_id, blob_digest, size)``: the ``sha256:`` digests of the
    uncompressed tar and of ``blob`` as read, and the uncompressed size.
    ``layer`` names the layer in error messages; ``on_read`` is told how many
    bytes of ``blob`` each read consumed (for progress bars).  On error ``dest``
    is left half-written: the caller extracts into a staging directory.
    """
    name = layer or str(dest)
    magic = blob.read(4)
    raw = _HashingReader(blob, magic, on_read)
    if magic.startswith(_GZIP_MAGIC):
        tar_stream = _HashingReader(gzip.GzipFile(fileobj=raw, mode="rb"))
    elif magic == _ZSTD_MAGIC:
        raise ImageError(f"layer {name}: zstd-compressed layers are not supported (use gzip)")
    else:
        tar_stream = raw
    try:
        with tarfile.open(fileobj=tar_stream, mode="r|") as tar:  # type: ignore[call-overload]
            _Extractor(tar, dest, name).run()
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


class _Extractor:
    """One pass over a layer's entries, in order (later entries replace earlier ones)."""

    def __init__(self, tar: tarfile.TarFile, dest: Path, layer: str) -> None:
        self.tar = tar
        self.dest = dest
        self.layer = layer
        self.dir_times: list[tuple[Path, int]] = []

    def run(self) -> None:
        for member in self.tar:
            self._extract(member)
        # Directory times last: creating their children changed them.
        for path, mtime in reversed(self.dir_times):
            os.utime(path, (mtime, mtime), follow_symlinks=False)

    def refuse(self, member: tarfile.TarInfo, reason: str) -> UnsafeLayerError:
        return UnsafeLayerError(self.layer, member.name, reason)

    def _parts(self, member: tarfile.TarInfo, name: str, what: str = "name") -> list[str]:
        if name.startswith("/"):
            raise self.refuse(member, f"absolute {what} {name!r}")
        parts = [part for part in name.split("/") if part not in ("", ".")]
        if ".." in parts:
            raise self.refuse(member, f"{what} {name!r} has a '..' component")
        return parts

    def _walk(self, member: tarfile.TarInfo, parts: list[str], *, create: bool) -> Path:
        """The directory ``parts`` inside the layer, refusing any symlink on the way."""
        current = self.dest
        for index, part in enumerate(parts):
            current = current / part
            try:
                mode = os.lstat(current).st_mode
            except FileNotFoundError:
                if not create:
                    raise self.refuse(member, f"{'/'.join(parts)!r} does not exist") from None
                os.mkdir(current, 0o755)
                continue
            relative = "/".join(parts[: index + 1])
            if stat.S_ISLNK(mode):
                raise self.refuse(member, f"its path runs through the symlink {relative!r}")
            if not stat.S_ISDIR(mode):
                raise self.refuse(member, f"{relative!r} is not a directory")
        return current

    def _clear(self, target: Path, keep_directory: bool) -> None:
        try:
            mode = os.lstat(target).st_mode
        except FileNotFoundError:
            return
        if stat.S_ISDIR(mode):
            if not keep_directory:
                shutil.rmtree(target)
        else:
            os.unlink(target)

    def _extract(self, member: tarfile.TarInfo) -> None:
        parts = self._parts(member, member.name)
        if not parts:
            return  # the layer's root entry ("./")
        parent = self._walk(member, parts[:-1], create=True)
        base = parts[-1]
        if base.startswith(WHITEOUT_PREFIX):
            self._whiteout(member, parent, base)
            return
        target = parent / base
        self._clear(target, keep_directory=member.isdir())
        if member.isdir():
            if not target.exists():
                os.mkdir(target, 0o700)
            self.dir_times.append((target, int(member.mtime)))
        elif member.isreg():
            self._write_file(member, target)
        elif member.issym():
            os.symlink(member.linkname, target)
        elif member.islnk():
            os.link(self._link_source(member), target, follow_symlinks=False)
            return  # a hard link shares the target's owner, mode and times
        elif member.ischr() and member.devmajor == 0 and member.devminor == 0:
            os.mknod(target, stat.S_IFCHR, os.makedev(0, 0))  # already an overlay whiteout
        elif member.isdev() and not member.isfifo():
            kind = "character" if member.ischr() else "block"
            raise self.refuse(
                member,
                f"{kind} device {member.devmajor}:{member.devminor} is not allowed in a layer",
            )
        elif member.isfifo():
            os.mkfifo(target)
        else:
            raise self.refuse(member, f"unsupported tar entry type {member.type!r}")
        self._set_attributes(member, target)

    def _link_source(self, member: tarfile.TarInfo) -> Path:
        """The earlier entry of this layer a hard link names."""
        parts = self._parts(member, member.linkname, "link target")
        if not parts:
            raise self.refuse(member, "hard link to the layer's root")
        source = self._walk(member, parts[:-1], create=False) / parts[-1]
        try:
            mode = os.lstat(source).st_mode
        except FileNotFoundError:
            raise self.refuse(
                member, f"link target {member.linkname!r} is not an earlier entry of this layer"
            ) from None
        if stat.S_ISDIR(mode):
            raise self.refuse(member, f"hard link to the directory {member.linkname!r}")
        return source

    def _write_file(self, member: tarfile.TarInfo, target: Path) -> None:
        source = self.tar.extractfile(member)
        assert source is not None  # regular files always have data
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as out:
            shutil.copyfileobj(source, out, _CHUNK)

    def _set_attributes(self, member: tarfile.TarInfo, target: Path) -> None:
        os.lchown(target, member.uid, member.gid)
        if not member.issym():
            os.chmod(target, member.mode & 0o7777)  # after chown, which clears set-id bits
            for key in _KEPT_XATTRS:
                value = member.pax_headers.get("SCHILY.xattr." + key)
                if value is not None:
                    os.setxattr(target, key, value.encode("utf-8", "surrogateescape"))
        if not member.isdir():
            os.utime(target, (member.mtime, member.mtime), follow_symlinks=False)

    def _whiteout(self, member: tarfile.TarInfo, parent: Path, base: str) -> None:
        if base == OPAQUE_MARKER:
            os.setxattr(parent, OVERLAY_OPAQUE_XATTR, b"y")
            return
        if base.startswith(WHITEOUT_PREFIX + WHITEOUT_PREFIX):
            log.debug("skipping aufs metadata entry", extra={"entry": member.name})
            return
        hidden = base[len(WHITEOUT_PREFIX) :]
        if hidden in ("", ".", ".."):
            raise self.refuse(member, f"whiteout of {hidden!r}")
        target = parent / hidden
        self._clear(target, keep_directory=False)
        os.mknod(target, stat.S_IFCHR, os.makedev(0, 0))
        os.lchown(target, member.uid, member.gid)
