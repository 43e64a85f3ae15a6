"""The platform an image is built for, against the one this machine runs.

OCI names platforms ``os/architecture[/variant]`` with Go's names (``amd64``,
``arm64``...); :func:`host_platform` translates :func:`platform.machine` into
them.  :func:`check_platform` refuses an image built for another OS or
architecture.  An image that names neither (older ``docker save`` archives) is
accepted.  The variant is compared only for 32-bit ``arm``, where ``v6`` and
``v7`` binaries differ; elsewhere it is informational.
"""

from __future__ import annotations

import functools
import platform
from typing import NamedTuple

from hcsoci.images.errors import ImageError

__all__ = ["Platform", "check_platform", "host_platform", "matches_host", "oci_architecture"]

# platform.machine() (the kernel's name) or an alias some tools write -> (OCI architecture, variant)
_ARCHITECTURES: dict[str, tuple[str, str]] = {
    "x86_64": ("amd64", ""),
    "amd64": ("amd64", ""),
    "aarch64": ("arm64", ""),
    "arm64": ("arm64", ""),
    "armv8l": ("arm", "v8"),
    "armv7l": ("arm", "v7"),
    "armv6l": ("arm", "v6"),
    "i386": ("386", ""),
    "i486": ("386", ""),
    "i586": ("386", ""),
    "i686": ("386", ""),
    "ppc64le": ("ppc64le", ""),
    "ppc64": ("ppc64", ""),
    "s390x": ("s390x", ""),
    "riscv64": ("riscv64", ""),
    "mips64": ("mips64", ""),
    "loongarch64": ("loong64", ""),
}


class Platform(NamedTuple):
    """An OCI platform: ``os``, ``architecture`` and (optional) ``variant``."""

    os: str
    architecture: str
    variant: str = ""

    def __str__(self) -> str:
        parts = [self.os or "?", self.architecture or "?"]
        return "/".join([*parts, self.variant] if self.variant else parts)


def oci_architecture(machine: str) -> tuple[str, str]:
    """The OCI ``(architecture, variant)`` for a kernel machine name or an OCI one."""
    known = _ARCHITECTURES.get(machine.lower())
    return known if known is not None else (machine.lower(), "")


@functools.cache
def host_platform() -> Platform:
    """The platform this machine runs (Linux, and its CPU's OCI architecture)."""
    architecture, variant = oci_architecture(platform.machine())
    return Platform(platform.system().lower(), architecture, variant)


def matches_host(os: str, architecture: str, variant: str = "") -> bool:
    """Whether an image for ``os/architecture/variant`` runs here (empty fields match)."""
    host = host_platform()
    if os and os.lower() != host.os:
        return False
    if not architecture:
        return True
    arch, implied = oci_architecture(architecture)
    if arch != host.architecture:
        return False
    wanted = variant.lower() or implied
    return arch != "arm" or not wanted or not host.variant or wanted <= host.variant


def check_platform(image: str, os: str, architecture: str, variant: str = "") -> None:
    """Refuse image ``image`` when its config's ``os``/``architecture`` is not this machine's.

    An empty ``os`` or ``architecture`` is accepted (the config does not say).
    """
    if not matches_host(os, architecture, variant):
        built = Platform(os, architecture, variant)
        raise ImageError(f"image {image!r}: built for {built}, this machine runs {host_platform()}")
