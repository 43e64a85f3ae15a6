"""Errors of the image store."""

from __future__ import annotations

from hcsoci.errors import InvalidArgumentError, NotFoundError

__all__ = ["ImageError", "ImageNotFoundError", "UnsafeLayerError"]


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


class ImageNotFoundError(NotFoundError):
    """No image of that name is in the store."""
