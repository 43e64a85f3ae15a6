"""Errors of the image store."""

from __future__ import annotations

from hcsoci.errors import InvalidArgumentError, NotFoundError

__all__ = ["ImageError", "ImageNotFoundError", "LayerLimitError", "UnsafeLayerError"]


class ImageError(InvalidArgumentError):
    """An image archive is malformed, inconsistent or unsupported."""


class UnsafeLayerError(ImageError):
    """A layer entry would escape its layer or create something a layer must not hold.

    ``entry`` is the tar entry's name, ``reason`` why it was refused.
    """

    def __init__(self, layer: str, entry: str, reason: str) -> None:
        self.layer = layer
        self.entry = entry
        self.reason = reason
        super().__init__(f"layer {layer}: refusing entry {entry!r}: {reason}")


class LayerLimitError(ImageError):
    """A layer is larger than the store allows (uncompressed bytes, or entries).

    ``layer`` names the layer, ``limit`` is the limit that was crossed and
    ``how`` says how to raise it.
    """

    def __init__(self, layer: str, what: str, limit: str, how: str) -> None:
        self.layer = layer
        self.limit = limit
        super().__init__(
            f"layer {layer}: more than {limit} {what} (the limit; raise it with {how})"
        )


class ImageNotFoundError(NotFoundError):
    """No image of that name is in the store."""
