"""``hcsoci images ...``: import, list, remove and build the default image."""

from __future__ import annotations

import datetime
from pathlib import Path

import click
import msgspec
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from hcsoci import images
from hcsoci.cli.common import fail, remove_each
from hcsoci.errors import HcsociError


def _store(
    root: str | None, max_layer_bytes: int | None = None, max_layer_entries: int | None = None
) -> images.ImageStore:
    return images.ImageStore(
        root, max_layer_bytes=max_layer_bytes, max_layer_entries=max_layer_entries
    )


class _Size(click.ParamType[int, object]):
    """A size in bytes: ``8G``, ``512M``, ``64K`` or a plain number (1024-based units)."""

    name = "size"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> int:
        if isinstance(value, int):
            return value
        try:
            return images.parse_size(str(value))
        except HcsociError as err:
            self.fail(str(err), param, ctx)


def _short(image_id: str) -> str:
    return image_id.removeprefix("sha256:")[:12]


def _size(size: int) -> str:
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{size} B"


_root_option = click.option(
    "--root",
    envvar="HCSOCI_IMAGES",
    default=None,
    help="Image store root (default $HCSOCI_IMAGES or /var/lib/hcsoci/images).",
)


@click.group("images")
def images_group() -> None:
    """Images: import docker save / OCI layout archives, list, remove."""


@images_group.command("import")
@click.argument("archive", type=click.Path(path_type=Path))
@click.option(
    "--name", default=None, help="Name (repo:tag) for the image; overrides the archive's."
)
@click.option(
    "--max-layer-size",
    type=_Size(),
    default=None,
    metavar="SIZE",
    help="Refuse a layer larger than SIZE uncompressed (8G, 512M, bytes; "
    "default $HCSOCI_MAX_LAYER_BYTES, else 8G).",
)
@click.option(
    "--max-layer-entries",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="Refuse a layer of more than N entries (default $HCSOCI_MAX_LAYER_ENTRIES, else 1000000).",
)
@_root_option
def import_command(
    archive: Path,
    name: str | None,
    max_layer_size: int | None,
    max_layer_entries: int | None,
    root: str | None,
) -> None:
    """Import ARCHIVE: a docker save tarball or an OCI image layout (directory or tar)."""
    console = Console(stderr=True)
    with Progress(
        TextColumn("importing [bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,  # no bar (nor its blank lines) in a log or a pipe
    ) as progress:
        task = progress.add_task(archive.name, total=None)

        def report(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        try:
            store = _store(root, max_layer_size, max_layer_entries)
            imported = store.import_image(archive, name, report)
        except HcsociError as err:
            progress.stop()
            fail(err)
    for image in imported:
        click.echo(f"{image.name} {image.id}")


@images_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@_root_option
def list_command(as_json: bool, root: str | None) -> None:
    """List the images in the store."""
    try:
        found = _store(root).list_images()
    except HcsociError as err:
        fail(err)
    if as_json:
        click.echo(msgspec.json.format(msgspec.json.encode(found)).decode())
        return
    table = Table(box=None, header_style="bold")
    for column in ("NAME", "IMAGE ID", "LAYERS", "SIZE", "CREATED"):
        table.add_column(column)
    for image in found:
        table.add_row(
            image.name, _short(image.id), str(len(image.layers)), _size(image.size), image.created
        )
    Console().print(table)


@images_group.command("rm")
@click.argument("names", nargs=-1, required=True)
@_root_option
def rm_command(names: tuple[str, ...], root: str | None) -> None:
    """Remove images NAMES (and layers no other image uses)."""
    remove_each(names, _store(root).remove)


@images_group.command("build-default")
@_root_option
def build_default_command(root: str | None) -> None:
    """(Re)build the default busybox image from this machine's busybox-static."""
    started = datetime.datetime.now()
    try:
        image = images.build_default_image(_store(root))
    except HcsociError as err:
        fail(err)
    elapsed = (datetime.datetime.now() - started).total_seconds()
    click.echo(f"{image.name} {image.id} ({elapsed:.2f}s)")


def register(group: click.Group) -> None:
    """Add ``hcsoci images`` to the command line."""
    group.add_command(images_group)
