"""Mount and unmount a container's layers (hcsshim's ``layers`` package, on overlayfs).

A spec's ``windows.layer_folders`` lists ``layern, ..., layer1, scratch``: the
read-only image layers top-most first, then a writable scratch directory.  The
container's root file system is an overlay of the read-only layers
(``lowerdir``, in that order: overlayfs also wants the top-most first) with its
``upper`` and ``work`` directories inside scratch.  Overlayfs never writes a
lower directory, so the image layers stay untouched; everything the container
changes lands in ``scratch/upper``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from hcsoci.context import Context
from hcsoci.errors import InvalidArgumentError, NotFoundError
from hcsoci.mounts import MS_NODEV, MS_NOSUID, mount, unmount
from hcsoci.resources import Resource, Resources

if TYPE_CHECKING:
    from hcsoci.uvm import UtilityVM

__all__ = ["LayerMount", "mount_container_layers", "validate_layer_folders"]

log = logging.getLogger(__name__)

# Characters overlayfs's option parser gives a meaning to (and the kernel has no escape for).
_OVERLAY_SPECIAL = (",", ":", "\\")


class LayerMount(Resource, kw_only=True):
    """The container's overlay root file system, mounted at ``target``."""

    kind = "layer-mount"
    target: str

    def release(self, ctx: Context, vm: UtilityVM | None) -> None:
        unmount(self.target)
        with contextlib.suppress(OSError):  # not empty: left for the bundle's removal
            os.rmdir(self.target)


def validate_layer_folders(layer_folders: Sequence[str]) -> tuple[list[Path], Path]:
    """Check ``layer_folders`` and split it into (read-only layers top-most first, scratch).

    Errors name ``spec.windows.layer_folders[i]`` and its value.
    """
    field = "spec.windows.layer_folders"
    if len(layer_folders) < 2:
        raise InvalidArgumentError(
            f"{field}: {list(layer_folders)!r} needs at least one layer and a scratch folder"
        )
    paths: list[Path] = []
    for index, folder in enumerate(layer_folders):
        name = f"{field}[{index}]"
        if not folder or not os.path.isabs(folder):
            raise InvalidArgumentError(f"{name}: {folder!r} is not an absolute path")
        if any(char in folder for char in _OVERLAY_SPECIAL):
            raise InvalidArgumentError(
                f"{name}: {folder!r} contains one of {' '.join(_OVERLAY_SPECIAL)}, "
                "which overlayfs cannot take in a path"
            )
        path = Path(os.path.realpath(folder))
        if not path.exists():
            raise NotFoundError(f"{name}: {folder!r} does not exist")
        if not path.is_dir():
            raise InvalidArgumentError(f"{name}: {folder!r} is not a directory")
        paths.append(path)
    *layers, scratch = paths
    for index, layer in enumerate(layers):
        if scratch == layer or scratch.is_relative_to(layer):
            raise InvalidArgumentError(
                f"{field}[{len(layers)}]: scratch {layer_folders[-1]!r} lies inside read-only "
                f"layer {layer_folders[index]!r}; the container would write into the image"
            )
        if layer.is_relative_to(scratch):
            raise InvalidArgumentError(
                f"{field}[{index}]: read-only layer {layer_folders[index]!r} lies inside "
                f"scratch {layer_folders[-1]!r}"
            )
    if len(set(layers)) != len(layers):
        raise InvalidArgumentError(f"{field}: {list(layer_folders)!r} lists a layer twice")
    return layers, scratch


def mount_container_layers(
    resources: Resources, layer_folders: Sequence[str], target: Path
) -> Path:
    """Mount the overlay of ``layer_folders`` on ``target`` (created); record it first.

    Returns ``target``.  ``upper`` and ``work`` are made inside the scratch folder.
    """
    layers, scratch = validate_layer_folders(layer_folders)
    lowerdir = ":".join(str(layer) for layer in layers)
    upper, work = scratch / "upper", scratch / "work"
    data = f"lowerdir={lowerdir},upperdir={upper},workdir={work}"
    if len(data) >= resource.getpagesize():
        raise InvalidArgumentError(
            f"spec.windows.layer_folders: {len(layers)} layers make overlay options of "
            f"{len(data)} bytes, over the kernel's {resource.getpagesize()}-byte limit"
        )
    upper.mkdir(exist_ok=True)
    work.mkdir(exist_ok=True)
    resources.add(LayerMount(target=str(target)))
    target.mkdir(exist_ok=True)
    # nosuid, nodev: a set-id file or a device node made in the container (or shipped in
    # an image) must never work for anyone reaching it through this mount, on the host
    # or through /proc/PID/root; the container inherits the flags, like noNewPrivileges.
    mount("overlay", target, "overlay", MS_NOSUID | MS_NODEV, data)
    log.debug("layers mounted", extra={"target": str(target), "layers": len(layers)})
    return target
