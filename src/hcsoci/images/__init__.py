"""Images: a content-addressed layer store fed by ``docker save`` tarballs and OCI layouts.

>>> store = ImageStore()                      # $HCSOCI_IMAGES or /var/lib/hcsoci/images
>>> image = ensure_default_image(store)       # busybox, built from busybox-static
>>> spec = spec_for_image(image, ["echo", "hi"])
>>> spec.windows.layer_folders == image.layer_folders   # the caller appends a scratch dir
True

Module-level functions use the default store.
"""

from __future__ import annotations

from pathlib import Path

from hcsoci.images.archive import extract_layer
from hcsoci.images.default import DEFAULT_IMAGE, build_default_image, ensure_default_image
from hcsoci.images.errors import (
    ImageError,
    ImageNotFoundError,
    LayerLimitError,
    UnsafeLayerError,
)
from hcsoci.images.limits import LayerLimits, parse_size
from hcsoci.images.platform import Platform, check_platform, host_platform
from hcsoci.images.spec import resolve_user, spec_for_image
from hcsoci.images.store import (
    DEFAULT_IMAGES_ROOT,
    Image,
    ImageConfig,
    ImageStore,
    ImportProgress,
    images_root,
    normalize_name,
)

__all__ = [
    "DEFAULT_IMAGE",
    "DEFAULT_IMAGES_ROOT",
    "Image",
    "ImageConfig",
    "ImageError",
    "ImageNotFoundError",
    "ImageStore",
    "ImportProgress",
    "LayerLimitError",
    "LayerLimits",
    "Platform",
    "UnsafeLayerError",
    "build_default_image",
    "check_platform",
    "ensure_default_image",
    "extract_layer",
    "get_image",
    "host_platform",
    "images_root",
    "import_image",
    "list_images",
    "normalize_name",
    "parse_size",
    "remove_image",
    "resolve_user",
    "spec_for_image",
]


def import_image(
    path: str | Path, name: str | None = None, progress: ImportProgress | None = None
) -> list[Image]:
    """Import an image archive into the default store (see :meth:`ImageStore.import_image`)."""
    return ImageStore().import_image(path, name, progress)


def get_image(name: str) -> Image:
    """The image ``name`` from the default store."""
    return ImageStore().get(name)


def list_images() -> list[Image]:
    """Every image of the default store."""
    return ImageStore().list_images()


def remove_image(name: str) -> None:
    """Remove ``name`` (and layers nothing else uses) from the default store."""
    ImageStore().remove(name)
