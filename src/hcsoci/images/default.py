"""The default image, ``busybox``, built on this machine from Debian's busybox-static.

One layer: ``/bin/busybox``, a symlink per applet (``busybox --list-full``),
``/etc/passwd`` (root, nobody), ``/etc/group``, ``/etc/hostname``, ``/etc/hosts``,
and the usual empty directories (``/tmp`` mode 1777, ``/root``, ``/dev``,
``/proc``, ``/sys``...).  The layer tar is built reproducibly (fixed times,
owners and order), written as an OCI image layout and imported through
:meth:`ImageStore.import_image` like any other image, so the same busybox
binary always gives the same diff id and image id.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import posixpath
import subprocess
import tarfile
import tempfile
from pathlib import Path

from hcsoci.errors import HcsociError, NotFoundError
from hcsoci.images.errors import ImageNotFoundError
from hcsoci.images.platform import host_platform
from hcsoci.images.store import Image, ImageStore
from hcsoci.paths import make_private_dir, remove_tree

__all__ = [
    "BUSYBOX",
    "DEFAULT_IMAGE",
    "build_default_image",
    "ensure_default_image",
    "write_archive",
]

log = logging.getLogger(__name__)

DEFAULT_IMAGE = "busybox:latest"
BUSYBOX = "/bin/busybox"
"""Where Debian's busybox-static installs the binary."""

_EPOCH = 1_700_000_000  # fixed mtime of every entry: reproducible layers
_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_DIRECTORIES = {
    "bin": 0o755,
    "dev": 0o755,
    "etc": 0o755,
    "home": 0o755,
    "proc": 0o555,
    "root": 0o700,
    "sbin": 0o755,
    "sys": 0o555,
    "tmp": 0o1777,
    "usr": 0o755,
    "usr/bin": 0o755,
    "usr/sbin": 0o755,
    "var": 0o755,
    "var/tmp": 0o1777,
}
_FILES = {
    "etc/passwd": (
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
    ),
    "etc/group": "root:x:0:\ntty:x:5:\nnobody:x:65534:\n",
    "etc/hostname": "busybox\n",
    "etc/hosts": "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
}
_APPLET_DIRS = ("bin", "sbin", "usr/bin", "usr/sbin")


def _applets(busybox: str) -> list[str]:
    listing = subprocess.run(
        [busybox, "--list-full"], capture_output=True, text=True, check=True
    ).stdout
    applets = set()
    for line in listing.split():
        if posixpath.dirname(line) in _APPLET_DIRS and line != "bin/busybox":
            applets.add(line)
    return sorted(applets)


def _entry(name: str, kind: bytes, mode: int, size: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.size = size
    info.mtime = _EPOCH
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def build_layer(busybox: str = BUSYBOX) -> bytes:
    """The busybox layer tar, byte for byte the same for the same busybox binary."""
    if not os.path.isfile(busybox):
        raise NotFoundError(
            f"busybox {busybox!r} does not exist: install the busybox-static package"
        )
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for directory, mode in sorted(_DIRECTORIES.items()):
            tar.addfile(_entry(directory + "/", tarfile.DIRTYPE, mode))
        with open(busybox, "rb") as binary:
            data = binary.read()
        tar.addfile(_entry("bin/busybox", tarfile.REGTYPE, 0o755, len(data)), io.BytesIO(data))
        for applet in _applets(busybox):
            link = _entry(applet, tarfile.SYMTYPE, 0o777)
            link.linkname = posixpath.relpath("bin/busybox", posixpath.dirname(applet))
            tar.addfile(link)
        for name, text in sorted(_FILES.items()):
            content = text.encode()
            tar.addfile(_entry(name, tarfile.REGTYPE, 0o644, len(content)), io.BytesIO(content))
    return buffer.getvalue()


def _write_blob(layout: Path, data: bytes) -> dict[str, object]:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def write_layout(layout: Path, busybox: str = BUSYBOX) -> None:
    """Write the busybox image as an OCI image layout in the empty directory ``layout``."""
    (layout / "blobs" / "sha256").mkdir(parents=True)
    layer = build_layer(busybox)
    config = {
        "architecture": host_platform().architecture,  # busybox-static is this machine's
        "os": "linux",
        "created": "2023-11-14T22:13:20Z",  # _EPOCH
        "config": {"Env": [_PATH], "Cmd": ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(layer).hexdigest()]},
        "history": [{"created": "2023-11-14T22:13:20Z", "created_by": f"hcsoci from {busybox}"}],
    }
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            **_write_blob(layout, json.dumps(config, sort_keys=True).encode()),
        },
        "layers": [
            {"mediaType": "application/vnd.oci.image.layer.v1.tar", **_write_blob(layout, layer)}
        ],
    }
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                **_write_blob(layout, json.dumps(manifest, sort_keys=True).encode()),
                "annotations": {"org.opencontainers.image.ref.name": DEFAULT_IMAGE},
            }
        ],
    }
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (layout / "index.json").write_text(json.dumps(index, sort_keys=True))


def write_archive(path: Path, busybox: str = BUSYBOX) -> None:
    """Write the busybox image as one tar for ``docker load``, ``podman load``, ``ctr import``.

    The tar is the OCI layout of :func:`write_layout` plus docker's
    ``manifest.json`` naming the same blobs (as ``docker save`` writes since
    docker 25), so engines that read only one of the two formats find theirs.
    """
    with tempfile.TemporaryDirectory(prefix="busybox-archive-") as scratch:
        layout = Path(scratch) / "image"
        write_layout(layout, busybox)
        index = json.loads((layout / "index.json").read_text())
        manifest_digest = index["manifests"][0]["digest"].split(":", 1)[1]
        manifest = json.loads((layout / "blobs" / "sha256" / manifest_digest).read_text())
        docker_manifest = [
            {
                "Config": "blobs/sha256/" + manifest["config"]["digest"].split(":", 1)[1],
                "RepoTags": [DEFAULT_IMAGE],
                "Layers": [
                    "blobs/sha256/" + layer["digest"].split(":", 1)[1]
                    for layer in manifest["layers"]
                ],
            }
        ]
        (layout / "manifest.json").write_text(json.dumps(docker_manifest))
        with tarfile.open(path, "w") as tar:
            for entry in sorted(layout.rglob("*")):
                tar.add(entry, arcname=str(entry.relative_to(layout)), recursive=False)


def build_default_image(store: ImageStore | None = None, busybox: str = BUSYBOX) -> Image:
    """Build the ``busybox`` image from ``busybox`` and import it into ``store``."""
    store = store if store is not None else ImageStore()
    make_private_dir(store.root)
    layout = Path(tempfile.mkdtemp(prefix="busybox-layout-", dir=store.root))
    try:
        write_layout(layout / "image", busybox)
        imported: list[Image] = store.import_image(layout / "image", name=DEFAULT_IMAGE)
        return imported[0]
    finally:
        try:
            remove_tree(layout)
        except (OSError, HcsociError) as err:
            log.debug("could not remove the busybox layout %s: %s", layout, err)


def ensure_default_image(store: ImageStore | None = None) -> Image:
    """The ``busybox`` image, built first when the store does not have it."""
    store = store if store is not None else ImageStore()
    try:
        return store.get(DEFAULT_IMAGE)
    except ImageNotFoundError:
        return build_default_image(store)
