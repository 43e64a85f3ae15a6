"""From an image to a runtime spec: the image config (Env, Entrypoint, Cmd,
WorkingDir, User) applied to :func:`hcsoci.oci.default_spec`, the way
``docker run`` applies it."""

from __future__ import annotations

import os
import posixpath
import stat
from collections.abc import Sequence
from pathlib import Path

from hcsoci.errors import InvalidArgumentError, NotFoundError
from hcsoci.images.platform import check_platform
from hcsoci.images.store import Image
from hcsoci.oci import Root, Spec, User, Windows, default_spec, validate_spec
from hcsoci.oci.defaults import DEFAULT_ENV

__all__ = ["IMAGE_ANNOTATION", "resolve_user", "spec_for_image"]

IMAGE_ANNOTATION = "org.opencontainers.image.ref.name"
"""The annotation recording the image a spec was made from."""

_DEFAULT_PATH = DEFAULT_ENV[0]


def spec_for_image(
    image: Image,
    args: Sequence[str] | None = None,
    env: Sequence[str] = (),
    cwd: str | None = None,
    user: str | None = None,
    *,
    terminal: bool = False,
    hostname: str | None = None,
) -> Spec:
    """A spec that runs ``image``: :func:`~hcsoci.oci.default_spec` plus the image config.

    * ``args`` replaces the image's ``Cmd``; the ``Entrypoint`` stays in front.
    * ``env`` entries (``NAME=VALUE``) override the image's ``Env``; ``PATH``
      gets the default when neither sets it, ``TERM=xterm`` is added with a terminal.
    * ``cwd`` overrides ``WorkingDir`` (default ``/``).
    * ``user`` overrides ``User``: ``name``, ``uid``, ``name:group`` or ``uid:gid``,
      names resolved through the image's ``/etc/passwd`` and ``/etc/group``.

    ``spec.windows.layer_folders`` lists the image's layers top-most first; the
    caller appends the scratch folder.  The root is writable (writes go to the
    scratch layer), unlike ``runc spec``'s read-only default.

    An image built for another OS or architecture is refused
    (:class:`~hcsoci.images.ImageError`).
    """
    check_platform(image.name, image.os, image.architecture, image.variant)
    argv = [*image.config.entrypoint, *(image.config.cmd if args is None else args)]
    if not argv:
        raise InvalidArgumentError(
            f"image {image.name!r} has no Entrypoint or Cmd: "
            f"args must name a program (got {args!r})"
        )
    spec = default_spec(argv, terminal=terminal)
    assert spec.process is not None
    spec.process.env = _merge_env(image.config.env, env, terminal)
    spec.process.cwd = cwd or image.config.working_dir or "/"
    spec.process.user = resolve_user(image, user if user is not None else image.config.user)
    spec.root = Root(path="rootfs", readonly=False)
    if hostname is not None:
        spec.hostname = hostname
    spec.annotations = {IMAGE_ANNOTATION: image.name}
    spec.windows = Windows(layer_folders=list(image.layer_folders))
    validate_spec(spec)
    return spec


def _merge_env(image_env: Sequence[str], overrides: Sequence[str], terminal: bool) -> list[str]:
    merged: dict[str, str] = {}
    for source, entries in (("image Env", image_env), ("env", overrides)):
        for entry in entries:
            name, equals, _ = entry.partition("=")
            if not name or not equals:
                raise InvalidArgumentError(f"{source}: {entry!r} is not NAME=VALUE")
            merged[name] = entry
    merged.setdefault("PATH", _DEFAULT_PATH)
    if terminal:
        merged.setdefault("TERM", "TERM=xterm")
    return list(merged.values())


def resolve_user(image: Image, user: str) -> User:
    """The uid, gid and supplementary groups ``user`` means inside ``image``.

    ``user`` is ``''`` (root), ``name``, ``uid``, ``name:group`` or ``uid:gid``.
    A numeric uid need not exist in ``/etc/passwd`` (its gid is then 0); a name must.
    """
    if not user:
        return User(uid=0, gid=0)
    who, _, group = user.partition(":")
    passwd = _image_table(image, "etc/passwd")
    entry = next(
        (row for row in passwd if row[0] == who or (who.isdigit() and row[2] == who)), None
    )
    if who.isdigit():
        uid = int(who)
        gid = int(entry[3]) if entry is not None and entry[3].isdigit() else 0
    elif entry is not None and entry[2].isdigit() and entry[3].isdigit():
        uid, gid = int(entry[2]), int(entry[3])
    else:
        raise NotFoundError(
            f"user {who!r} (from user {user!r}) is not in the /etc/passwd of {image.name!r}"
        )
    groups = _image_table(image, "etc/group")
    if group:
        if group.isdigit():
            gid = int(group)
        else:
            row = next((row for row in groups if row[0] == group and row[2].isdigit()), None)
            if row is None:
                raise NotFoundError(
                    f"group {group!r} (from user {user!r}) is not in the /etc/group "
                    f"of {image.name!r}"
                )
            gid = int(row[2])
    name = entry[0] if entry is not None else ""
    additional = sorted(
        {int(row[2]) for row in groups if name and row[2].isdigit() and name in row[3].split(",")}
        - {gid}
    )
    return User(uid=uid, gid=gid, additional_gids=additional or None)


def _image_table(image: Image, relative: str) -> list[list[str]]:
    """The colon-separated rows of a file as the merged image shows it (top layer wins)."""
    for folder in image.layer_folders:
        path = Path(folder, relative)
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            if _hidden_by_whiteout(Path(folder), relative):
                return []
            continue
        if stat.S_ISCHR(mode):  # a whiteout: deleted in this layer
            return []
        if not stat.S_ISREG(mode):
            return []
        rows = []
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            if line and not line.startswith("#"):
                rows.append([*line.split(":"), "", "", ""][:7])
        return rows
    return []


def _hidden_by_whiteout(folder: Path, relative: str) -> bool:
    """Whether ``folder`` hides the lower layers' ``relative``: an ancestor of it is
    a whiteout or an opaque directory in this layer."""
    parent = posixpath.dirname(relative)
    while parent:
        try:
            mode = os.lstat(folder / parent).st_mode
        except FileNotFoundError:
            parent = posixpath.dirname(parent)
            continue
        if stat.S_ISCHR(mode) or (stat.S_ISDIR(mode) and _opaque(folder / parent)):
            return True
        parent = posixpath.dirname(parent)
    return False


def _opaque(directory: Path) -> bool:
    try:
        return os.getxattr(directory, "trusted.overlay.opaque") == b"y"
    except OSError:
        return False
