"""Reading image archives: ``docker save`` tarballs and OCI image layouts (directory or tar).

:func:`open_archive` yields the images an archive holds as :class:`SourceImage`
records: their names, config bytes and layer blobs, with every path and digest
taken from the archive checked before it is used.
"""

from __future__ import annotations

import functools
import hashlib
import os
import posixpath
import re
import stat
import tarfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import msgspec

from hcsoci.errors import NotFoundError
from hcsoci.images.errors import ImageError
from hcsoci.images.platform import Platform, host_platform, matches_host

__all__ = ["MAX_SYMLINKS", "SourceImage", "SourceLayer", "open_archive"]

_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_MANIFEST_TYPES = (
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
_INDEX_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)
_REF_NAME = "org.opencontainers.image.ref.name"
_FULL_NAME = "io.containerd.image.name"
_MAX_JSON = 64 << 20


@dataclass
class SourceLayer:
    """One layer blob inside an archive."""

    diff_id: str
    """The ``sha256:`` digest of the uncompressed layer, from the image config."""
    digest: str
    """The blob's own digest when the archive names it (OCI), else ''."""
    size: int
    """The blob's size in bytes, as stored."""
    open: Callable[[], AbstractContextManager[IO[bytes]]]


@dataclass
class SourceImage:
    """One image of an archive."""

    names: list[str]
    config: bytes
    config_digest: str
    layers: list[SourceLayer] = field(default_factory=list)


MAX_SYMLINKS = 16
"""How many links (symbolic or hard) one name in an archive may go through."""


class _Files:
    """Named files of an archive: a directory or a tar file.

    A name may lead through symlinks (``docker save`` links shared layers), at
    most :data:`MAX_SYMLINKS` of them, and never out of the archive: a loop, a
    longer chain, or a link out (an absolute target, too many ``..``) is an
    :class:`ImageError` naming the entry.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._where = f"image archive {str(path)!r}"
        self._tar: tarfile.TarFile | None = None
        self._members: dict[str, tarfile.TarInfo] = {}
        if not path.is_dir():
            try:
                self._tar = tarfile.open(path, mode="r:*")  # noqa: SIM115 (closed by close())
            except tarfile.TarError as err:
                raise ImageError(f"{self._where}: not a tar file: {err}") from err
            for member in self._tar.getmembers():
                self._members[_normalise(member.name)] = member

    def close(self) -> None:
        if self._tar is not None:
            self._tar.close()

    def exists(self, name: str) -> bool:
        """Whether the archive has an entry ``name`` (it may still be a broken link)."""
        name = _checked_name(self.path, name)
        if self._tar is None:
            try:
                return not stat.S_ISDIR(os.lstat(self.path / name).st_mode)
            except (FileNotFoundError, NotADirectoryError):
                return False
        member = self._members.get(name)
        return member is not None and (member.isreg() or member.islnk() or member.issym())

    def _too_many_links(self, name: str) -> ImageError:
        return ImageError(
            f"{self._where}: {name!r}: symlink loop or chain longer than {MAX_SYMLINKS}"
        )

    def _leads_out(self, name: str, link: str, target: str) -> ImageError:
        return ImageError(
            f"{self._where}: {name!r}: the link {link!r} -> {target!r} leads outside the archive"
        )

    def _member(self, name: str) -> tarfile.TarInfo:
        """The regular-file member ``name`` leads to, following links."""
        current = name
        for _ in range(MAX_SYMLINKS + 1):
            member = self._members.get(current)
            if member is None:
                via = f" (via {current!r})" if current != name else ""
                raise ImageError(f"{self._where}: {name!r} is missing{via}")
            if member.isreg():
                return member
            if not (member.issym() or member.islnk()):
                raise ImageError(f"{self._where}: {name!r} is not a file")
            if member.issym():
                joined = posixpath.join(posixpath.dirname(current), member.linkname)
            else:
                joined = member.linkname  # hard links name the archive's root
            target = posixpath.normpath(joined)
            if member.linkname.startswith("/") or target == ".." or target.startswith("../"):
                raise self._leads_out(name, current, member.linkname)
            current = _normalise(target)
        raise self._too_many_links(name)

    def _file(self, name: str) -> Path:
        """The path of the regular file ``name`` leads to in the archive directory.

        Symlinks are followed one name at a time, staying inside the directory.
        """
        roots = {os.path.realpath(self.path), os.path.abspath(self.path)}
        resolved: list[str] = []
        pending = name.split("/")
        links = 0
        last_link = ("", "")  # the name had no '..': climbing out is always a link's doing
        while pending:
            part = pending.pop(0)
            if part in ("", "."):
                continue
            if part == "..":
                if not resolved:
                    raise self._leads_out(name, *last_link)
                resolved.pop()
                continue
            path = self.path.joinpath(*resolved, part)
            try:
                mode = os.lstat(path).st_mode
            except (FileNotFoundError, NotADirectoryError):
                raise ImageError(f"{self._where}: {name!r} is missing") from None
            if not stat.S_ISLNK(mode):
                resolved.append(part)
                continue
            links += 1
            if links > MAX_SYMLINKS:
                raise self._too_many_links(name)
            target = os.readlink(path)
            link = "/".join([*resolved, part])
            last_link = (link, target)
            if target.startswith("/"):
                # An absolute link may only lead back into the archive directory
                # (by its real path or the one given); its '..' steps are taken
                # from there, and may not climb out either.
                inside = next(
                    (target[len(top) :] for top in roots if (target + "/").startswith(top + "/")),
                    None,
                )
                if inside is None:
                    raise self._leads_out(name, link, target)
                resolved = []
                pending = inside.split("/") + pending
            else:
                pending = target.split("/") + pending
        return self.path.joinpath(*resolved)

    def size(self, name: str) -> int:
        name = _checked_name(self.path, name)
        if self._tar is None:
            return self._file(name).stat().st_size
        return self._member(name).size

    @contextmanager
    def open(self, name: str) -> Iterator[IO[bytes]]:
        name = _checked_name(self.path, name)
        if self._tar is None:
            path = self._file(name)
            try:
                # O_NOFOLLOW: the name was resolved; a link swapped in since is refused.
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except FileNotFoundError:
                raise ImageError(f"{self._where}: {name!r} is missing") from None
            except OSError as err:
                raise ImageError(f"{self._where}: {name!r}: {err.strerror}") from None
            with os.fdopen(fd, "rb") as file:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise ImageError(f"{self._where}: {name!r} is not a file")
                yield file
            return
        extracted = self._tar.extractfile(self._member(name))
        if extracted is None:
            raise ImageError(f"{self._where}: {name!r} is not a file")
        with extracted:
            yield extracted

    def read(self, name: str) -> bytes:
        if self.size(name) > _MAX_JSON:
            raise ImageError(f"{self._where}: {name!r} is too large")
        with self.open(name) as file:
            return file.read()


def _normalise(name: str) -> str:
    return "/".join(part for part in name.split("/") if part not in ("", "."))


def _checked_name(archive: Path, name: str) -> str:
    """A file name the archive's own metadata gave us, refused if it points outside."""
    if name.startswith("/") or ".." in name.split("/"):
        raise ImageError(f"image archive {str(archive)!r}: refusing file name {name!r}")
    return _normalise(name)


def _json(files: _Files, name: str, data: bytes | None = None) -> Any:
    try:
        return msgspec.json.decode(files.read(name) if data is None else data)
    except msgspec.DecodeError as err:
        raise ImageError(f"image archive {str(files.path)!r}: {name}: {err}") from None


def _field(document: Any, key: str, kind: type, where: str) -> Any:
    value = document.get(key) if isinstance(document, dict) else None
    if not isinstance(value, kind):
        raise ImageError(f"{where}: field {key!r} must be a {kind.__name__} (got {value!r})")
    return value


def _diff_ids(config: bytes, where: str) -> list[str]:
    try:
        document = msgspec.json.decode(config)
    except msgspec.DecodeError as err:
        raise ImageError(f"{where}: image config is not JSON: {err}") from None
    rootfs = _field(document, "rootfs", dict, where)
    if rootfs.get("type") != "layers":
        raise ImageError(f"{where}: rootfs.type must be 'layers' (got {rootfs.get('type')!r})")
    diff_ids = _field(rootfs, "diff_ids", list, f"{where}: rootfs")
    for index, diff_id in enumerate(diff_ids):
        if not isinstance(diff_id, str) or not _DIGEST.match(diff_id):
            raise ImageError(
                f"{where}: rootfs.diff_ids[{index}] is not a sha256 digest: {diff_id!r}"
            )
    return [str(diff_id) for diff_id in diff_ids]


def _digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@contextmanager
def open_archive(path: str | Path) -> Iterator[list[SourceImage]]:
    """The images in a ``docker save`` tarball or an OCI image layout (directory or tar)."""
    archive = Path(path)
    if not archive.exists():
        raise NotFoundError(f"image archive {str(archive)!r} does not exist")
    files = _Files(archive)
    try:
        if files.exists("manifest.json"):
            yield _docker_images(files)
        elif files.exists("index.json"):
            yield _oci_images(files)
        else:
            raise ImageError(
                f"image archive {str(archive)!r}: neither a docker save archive (manifest.json) "
                "nor an OCI image layout (index.json)"
            )
    finally:
        files.close()


def _docker_images(files: _Files) -> list[SourceImage]:
    where = f"image archive {str(files.path)!r}: manifest.json"
    manifest = _json(files, "manifest.json")
    if not isinstance(manifest, list) or not manifest:
        raise ImageError(f"{where}: must be a non-empty list of images")
    images = []
    for index, entry in enumerate(manifest):
        at = f"{where}[{index}]"
        config_name = _field(entry, "Config", str, at)
        config = files.read(config_name)
        layer_names = _field(entry, "Layers", list, at)
        tags = entry.get("RepoTags") or []
        diff_ids = _diff_ids(config, f"{at}: {config_name}")
        if len(diff_ids) != len(layer_names):
            raise ImageError(
                f"{at}: {len(layer_names)} layers but the config lists {len(diff_ids)} diff_ids"
            )
        image = SourceImage(
            names=[tag for tag in tags if isinstance(tag, str)],
            config=config,
            config_digest=_digest_of(config),
        )
        for diff_id, layer_name in zip(diff_ids, layer_names, strict=True):
            if not isinstance(layer_name, str):
                raise ImageError(f"{at}: Layers entries must be file names (got {layer_name!r})")
            image.layers.append(
                SourceLayer(
                    diff_id=diff_id,
                    digest="",
                    size=files.size(layer_name),
                    open=functools.partial(files.open, layer_name),
                )
            )
        images.append(image)
    return images


def _blob(files: _Files, descriptor: Any, where: str) -> tuple[str, str]:
    """The checked digest and blob path of an OCI descriptor."""
    digest = _field(descriptor, "digest", str, where)
    if not _DIGEST.match(digest):
        raise ImageError(f"{where}: digest must be sha256:<64 hex digits> (got {digest!r})")
    return digest, "blobs/sha256/" + digest.removeprefix("sha256:")


def _verified_blob(files: _Files, descriptor: Any, where: str) -> bytes:
    digest, name = _blob(files, descriptor, where)
    data = files.read(name)
    if _digest_of(data) != digest:
        raise ImageError(f"{where}: blob {name!r} does not match its digest {digest}")
    return data


def _oci_images(files: _Files) -> list[SourceImage]:
    where = f"image archive {str(files.path)!r}: index.json"
    index = _json(files, "index.json")
    images: list[SourceImage] = []
    for position, descriptor in enumerate(_field(index, "manifests", list, where)):
        at = f"{where}: manifests[{position}]"
        annotations = (
            descriptor.get("annotations") if isinstance(descriptor, dict) else None
        ) or {}
        name = annotations.get(_FULL_NAME) or annotations.get(_REF_NAME) or ""
        manifest = _resolve_manifest(files, descriptor, at)
        images.append(_oci_image(files, manifest, at, [name] if name else []))
    if not images:
        raise ImageError(f"{where}: lists no manifests")
    return images


def _resolve_manifest(files: _Files, descriptor: Any, where: str) -> Any:
    """The image manifest a descriptor names, choosing this machine's platform from an index."""
    media_type = descriptor.get("mediaType", "") if isinstance(descriptor, dict) else ""
    document = _json(files, "", _verified_blob(files, descriptor, where))
    if media_type in _INDEX_TYPES or (not media_type and "manifests" in document):
        offered = []
        for position, entry in enumerate(_field(document, "manifests", list, where)):
            platform = (entry.get("platform") if isinstance(entry, dict) else None) or {}
            values = [str(platform.get(key) or "") for key in ("os", "architecture", "variant")]
            if matches_host(*values):
                return _resolve_manifest(files, entry, f"{where}: manifests[{position}]")
            offered.append(str(Platform(*values)))
        raise ImageError(
            f"{where}: the image index has no {host_platform()} manifest "
            f"(it has {', '.join(offered) or 'none'})"
        )
    if media_type and media_type not in _MANIFEST_TYPES:
        raise ImageError(f"{where}: unsupported media type {media_type!r}")
    return document


def _oci_image(files: _Files, manifest: Any, where: str, names: list[str]) -> SourceImage:
    config_descriptor = _field(manifest, "config", dict, where)
    config_digest, _ = _blob(files, config_descriptor, f"{where}: config")
    config = _verified_blob(files, config_descriptor, f"{where}: config")
    layers = _field(manifest, "layers", list, where)
    diff_ids = _diff_ids(config, f"{where}: config")
    if len(diff_ids) != len(layers):
        raise ImageError(
            f"{where}: {len(layers)} layers but the config lists {len(diff_ids)} diff_ids"
        )
    image = SourceImage(names=names, config=config, config_digest=config_digest)
    for position, (diff_id, descriptor) in enumerate(zip(diff_ids, layers, strict=True)):
        digest, name = _blob(files, descriptor, f"{where}: layers[{position}]")
        image.layers.append(
            SourceLayer(
                diff_id=diff_id,
                digest=digest,
                size=files.size(name),
                open=functools.partial(files.open, name),
            )
        )
    return image
