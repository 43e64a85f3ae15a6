"""The content-addressed image store.

Layout under the store root (``$HCSOCI_IMAGES``, default ``/var/lib/hcsoci/images``;
persistent, unlike the state root)::

    index.json               images by name (name:tag) and the layers they use
    layers/sha256/<hex>/     one extracted layer per diff id, in overlayfs form
    tmp/                     staging: a layer is extracted here, then renamed in
    lock                     flock'ed while the store is changed

Each layer is extracted once, into a directory named by its diff id; images
that share a layer share the directory.  An import either records its images
completely or leaves nothing behind: layers are extracted into ``tmp/`` and
renamed into place, the index is replaced atomically at the end, and on any
failure the layers this import added are removed again.  Layer directories the
index does not name (a controller killed mid-import) are removed by the next
import.  Readers need no lock: they read the index, which is always whole.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import msgspec

from hcsoci.errors import HcsociError
from hcsoci.images.archive import extract_layer
from hcsoci.images.errors import ImageError, ImageNotFoundError
from hcsoci.images.limits import LayerLimits, check_limit
from hcsoci.images.platform import check_platform
from hcsoci.images.sources import SourceImage, SourceLayer, open_archive
from hcsoci.mounts import unescape_mountinfo
from hcsoci.paths import make_private_dir, remove_tree

__all__ = [
    "DEFAULT_IMAGES_ROOT",
    "Image",
    "ImageConfig",
    "ImageStore",
    "ImportProgress",
    "images_root",
    "normalize_name",
]

log = logging.getLogger(__name__)

DEFAULT_IMAGES_ROOT = "/var/lib/hcsoci/images"

ImportProgress = Callable[[int, int], None]
"""Called as ``progress(bytes_done, bytes_total)`` while an import reads layer blobs."""

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:@-]{0,254}$")


def images_root() -> Path:
    """The image store root: ``$HCSOCI_IMAGES``, or ``/var/lib/hcsoci/images``."""
    return Path(os.environ.get("HCSOCI_IMAGES") or DEFAULT_IMAGES_ROOT)


def normalize_name(name: str) -> str:
    """``name`` as the store records it: with a tag (``busybox`` -> ``busybox:latest``)."""
    if not _NAME.match(name) or ".." in name or "//" in name:
        raise ImageError(f"image name {name!r} is not valid (letters, digits, '._/:@-')")
    last = name.rsplit("/", 1)[-1]
    if ":" not in last and "@" not in last:
        name += ":latest"
    return name


class ImageConfig(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What an image's config says about running it (OCI image-spec ``config``)."""

    env: list[str] = msgspec.field(default_factory=list)
    entrypoint: list[str] = msgspec.field(default_factory=list)
    cmd: list[str] = msgspec.field(default_factory=list)
    working_dir: str = ""
    user: str = ""
    labels: dict[str, str] = msgspec.field(default_factory=dict)
    stop_signal: str = ""


class Image(msgspec.Struct, kw_only=True):
    """An image in the store."""

    name: str
    """``name:tag``."""
    id: str
    """The ``sha256:`` digest of the image config."""
    layers: list[str]
    """Layer diff ids, bottom-most first (the config's ``rootfs.diff_ids`` order)."""
    layer_folders: list[str]
    """The extracted layer directories, top-most first (``layern..layer1``, as
    ``spec.windows.layer_folders`` wants them, before the scratch folder)."""
    config: ImageConfig
    size: int
    """Uncompressed bytes of all layers."""
    os: str = ""
    architecture: str = ""
    variant: str = ""
    created: str = ""


class _ConfigSection(msgspec.Struct, rename="pascal"):
    env: list[str] | None = None
    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    working_dir: str | None = None
    user: str | None = None
    labels: dict[str, str] | None = None
    stop_signal: str | None = None


class _ConfigFile(msgspec.Struct):
    architecture: str = ""
    os: str = ""
    variant: str = ""
    created: str = ""
    config: _ConfigSection | None = None


class _ImageRecord(msgspec.Struct, kw_only=True):
    id: str
    layers: list[str]
    config: ImageConfig
    os: str = ""
    architecture: str = ""
    variant: str = ""
    created: str = ""
    imported_at: float = 0.0


class _LayerRecord(msgspec.Struct):
    size: int


class _Index(msgspec.Struct):
    images: dict[str, _ImageRecord] = msgspec.field(default_factory=dict)
    layers: dict[str, _LayerRecord] = msgspec.field(default_factory=dict)


def _image_config(config: bytes, where: str) -> tuple[ImageConfig, _ConfigFile]:
    try:
        document = msgspec.json.decode(config, type=_ConfigFile)
    except (msgspec.DecodeError, msgspec.ValidationError) as err:
        raise ImageError(f"{where}: image config: {err}") from None
    section = document.config or _ConfigSection()
    return (
        ImageConfig(
            env=section.env or [],
            entrypoint=section.entrypoint or [],
            cmd=section.cmd or [],
            working_dir=section.working_dir or "",
            user=section.user or "",
            labels=section.labels or {},
            stop_signal=section.stop_signal or "",
        ),
        document,
    )


def _discard(path: Path, why: str) -> None:
    """Remove the tree ``path`` as clean-up: a failure is logged (debug), never raised."""
    try:
        remove_tree(path)
    except (OSError, HcsociError) as err:
        log.debug("could not remove %s: %s", why, err, extra={"path": str(path)})


class ImageStore:
    """The image store at ``root`` (default :func:`images_root`).

    ``max_layer_bytes`` and ``max_layer_entries`` bound each layer an import
    extracts (uncompressed tar bytes, tar entries); when not given they come
    from ``$HCSOCI_MAX_LAYER_BYTES`` / ``$HCSOCI_MAX_LAYER_ENTRIES``, read at
    each import, else the defaults (see :mod:`hcsoci.images.limits`).
    """

    def __init__(
        self,
        root: str | Path | None = None,
        *,
        max_layer_bytes: int | None = None,
        max_layer_entries: int | None = None,
    ) -> None:
        # Checked now; the environment is read only when importing.
        self.max_layer_bytes = (
            None if max_layer_bytes is None else check_limit(max_layer_bytes, "max_layer_bytes")
        )
        self.max_layer_entries = (
            None
            if max_layer_entries is None
            else check_limit(max_layer_entries, "max_layer_entries")
        )
        self.root = Path(root) if root is not None else images_root()
        self._index_path = self.root / "index.json"
        self._layers = self.root / "layers"
        self._staging = self.root / "tmp"

    # -- reading -----------------------------------------------------------

    def layer_dir(self, diff_id: str) -> Path:
        """The directory holding the extracted layer ``diff_id``."""
        algorithm, _, digest = diff_id.partition(":")
        return self._layers / algorithm / digest

    def list_images(self) -> list[Image]:
        """Every image, sorted by name."""
        index = self._read_index()
        return [self._image(name, index) for name in sorted(index.images)]

    def get(self, name: str) -> Image:
        """The image called ``name`` (``busybox`` means ``busybox:latest``)."""
        name = normalize_name(name)
        index = self._read_index()
        if name not in index.images:
            raise ImageNotFoundError(f"image {name!r} is not in the image store {str(self.root)!r}")
        return self._image(name, index)

    def _image(self, name: str, index: _Index) -> Image:
        record = index.images[name]
        return Image(
            name=name,
            id=record.id,
            layers=list(record.layers),
            layer_folders=[str(self.layer_dir(d)) for d in reversed(record.layers)],
            config=record.config,
            size=sum(index.layers[d].size for d in record.layers if d in index.layers),
            os=record.os,
            architecture=record.architecture,
            variant=record.variant,
            created=record.created,
        )

    def _read_index(self) -> _Index:
        try:
            data = self._index_path.read_bytes()
        except FileNotFoundError:
            return _Index()
        try:
            return msgspec.json.decode(data, type=_Index)
        except (msgspec.DecodeError, msgspec.ValidationError) as err:
            raise ImageError(
                f"image store index {str(self._index_path)!r} is corrupt: {err}"
            ) from None

    # -- changing ----------------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[None]:
        make_private_dir(self.root)
        fd = os.open(self.root / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _write_index(self, index: _Index) -> None:
        temporary = self._index_path.with_name(f"index.json.{os.getpid()}")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as file:
            os.fchmod(fd, 0o600)  # an older store's index may have been 0644
            file.write(msgspec.json.encode(index))
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, self._index_path)

    def layer_limits(self) -> LayerLimits:
        """The limits an import applies to each layer (keyword arguments, else environment)."""
        return LayerLimits.resolve(self.max_layer_bytes, self.max_layer_entries)

    def _remove_unreferenced(self, index: _Index) -> None:
        """Drop staging leftovers and layer directories the index does not name."""
        _discard(self._staging, "staging leftovers")
        known = {self.layer_dir(diff_id) for diff_id in index.layers}
        for algorithm in self._layers.glob("*"):
            for layer in algorithm.iterdir():
                if layer not in known:
                    log.info("removing unreferenced layer", extra={"layer": str(layer)})
                    _discard(layer, "an unreferenced layer")

    def import_image(
        self, path: str | Path, name: str | None = None, progress: ImportProgress | None = None
    ) -> list[Image]:
        """Import a ``docker save`` tarball or an OCI image layout (directory or tar).

        ``name`` (``repo:tag``) overrides the names the archive gives, and is
        required when it gives none.  Returns the imported images.  Layers
        already in the store are not read again.  On failure nothing of this
        import stays in the store.

        Refused before anything is extracted: an image built for another OS or
        architecture than this machine's.  Refused while extracting: a layer
        over the :meth:`layer_limits`.
        """
        limits = self.layer_limits()
        with open_archive(path) as sources:
            if name is not None and len(sources) != 1:
                raise ImageError(
                    f"image archive {str(path)!r} holds {len(sources)} images; "
                    "a name can only be given to one"
                )
            names = [self._names(source, name, path) for source in sources]
            for source, image_names in zip(sources, names, strict=True):
                _, document = _image_config(source.config, f"image archive {str(path)!r}")
                check_platform(image_names[0], document.os, document.architecture, document.variant)
            with self._locked():
                index = self._read_index()
                self._remove_unreferenced(index)
                added: list[str] = []
                try:
                    self._import(sources, names, index, added, progress, str(path), limits)
                    self._write_index(index)
                except BaseException:
                    for diff_id in added:
                        _discard(self.layer_dir(diff_id), "a layer of a failed import")
                    _discard(self._staging, "the staging directory of a failed import")
                    raise
                _discard(self._staging, "the staging directory")
            return [self._image(n, index) for image_names in names for n in image_names]

    @staticmethod
    def _names(source: SourceImage, name: str | None, path: str | Path) -> list[str]:
        if name is not None:
            return [normalize_name(name)]
        if not source.names:
            raise ImageError(f"image archive {str(path)!r} names no image; give it a name")
        return [normalize_name(n) for n in source.names]

    def _import(
        self,
        sources: list[SourceImage],
        names: list[list[str]],
        index: _Index,
        added: list[str],
        progress: ImportProgress | None,
        where: str,
        limits: LayerLimits,
    ) -> None:
        missing = {
            layer.diff_id: layer
            for source in sources
            for layer in source.layers
            if layer.diff_id not in index.layers
        }
        total = sum(layer.size for layer in missing.values())
        done = 0

        def advance(count: int) -> None:
            nonlocal done
            done += count
            if progress is not None:
                progress(done, total)

        if progress is not None:
            progress(0, total)
        for diff_id, layer in missing.items():
            added.append(diff_id)
            index.layers[diff_id] = _LayerRecord(size=self._extract(layer, advance, where, limits))
        for source, image_names in zip(sources, names, strict=True):
            config, document = _image_config(source.config, f"image archive {where!r}")
            record = _ImageRecord(
                id=source.config_digest,
                layers=[layer.diff_id for layer in source.layers],
                config=config,
                os=document.os,
                architecture=document.architecture,
                variant=document.variant,
                created=document.created,
                imported_at=time.time(),
            )
            for image_name in image_names:
                index.images[image_name] = record

    def _extract(
        self, layer: SourceLayer, advance: Callable[[int], None], where: str, limits: LayerLimits
    ) -> int:
        make_private_dir(self._staging)
        staging = Path(tempfile.mkdtemp(dir=self._staging, prefix="layer-"))
        os.chmod(staging, 0o755)  # becomes the layer's root directory
        try:
            with layer.open() as blob:
                diff_id, digest, size = extract_layer(
                    blob, staging, layer=layer.diff_id, on_read=advance, limits=limits
                )
            if diff_id != layer.diff_id:
                raise ImageError(
                    f"image archive {where!r}: layer {layer.diff_id}: content has diff id {diff_id}"
                )
            if layer.digest and digest != layer.digest:
                raise ImageError(
                    f"image archive {where!r}: layer blob {layer.digest}: "
                    f"content has digest {digest}"
                )
            target = self.layer_dir(layer.diff_id)
            make_private_dir(target.parent.parent)  # layers/
            make_private_dir(target.parent)  # layers/sha256/
            os.rename(staging, target)
            return size
        finally:
            _discard(staging, "a layer's staging directory")

    def remove(self, name: str) -> None:
        """Remove the image ``name`` and the layers no other image uses.

        Refuses while one of those layers is a lower layer of a mounted overlay
        (a container runs on it).
        """
        name = normalize_name(name)
        with self._locked():
            index = self._read_index()
            record = index.images.get(name)
            if record is None:
                raise ImageNotFoundError(
                    f"image {name!r} is not in the image store {str(self.root)!r}"
                )
            still_used = {d for other, r in index.images.items() if other != name for d in r.layers}
            unused = [d for d in record.layers if d not in still_used]
            mounted = _overlay_lower_dirs()
            for diff_id in unused:
                mountpoint = mounted.get(str(self.layer_dir(diff_id)))
                if mountpoint is not None:
                    raise ImageError(
                        f"image {name!r}: layer {diff_id} is in use by the overlay mounted "
                        f"at {mountpoint!r}"
                    )
            del index.images[name]
            for diff_id in unused:
                index.layers.pop(diff_id, None)
            self._write_index(index)
            # After the index: a crash here leaves unreferenced layers, never a dangling image.
            failed: list[str] = []
            for diff_id in unused:
                try:
                    remove_tree(self.layer_dir(diff_id))
                except (OSError, HcsociError) as err:
                    log.warning("could not remove layer %s: %s", diff_id, err)
                    failed.append(f"{str(self.layer_dir(diff_id))!r} ({err})")
            if failed:
                raise ImageError(
                    f"image {name!r} is removed, but not its layer directories "
                    f"{', '.join(failed)}; the next import retries"
                )


def _overlay_lower_dirs() -> dict[str, str]:
    """Every lower directory of a mounted overlay on this machine, with its mount point."""
    lower: dict[str, str] = {}
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as mountinfo:
        for line in mountinfo:
            before, _, after = line.partition(" - ")
            fields = after.split()
            if len(fields) < 3 or fields[0] != "overlay":
                continue
            mountpoint = unescape_mountinfo(before.split()[4])
            for option in fields[2].split(","):
                if option.startswith("lowerdir="):
                    for directory in re.split(r"(?<!\\):", option.removeprefix("lowerdir=")):
                        lower[unescape_mountinfo(directory).replace("\\:", ":")] = mountpoint
    return lower
