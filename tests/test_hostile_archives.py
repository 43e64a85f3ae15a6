"""Archives and layers made by an attacker: link loops, bombs, sparse files, deep trees,
foreign platforms and hostile names.  Each must be refused (or imported) quickly,
with a one-line error naming what was wrong, and leave the store as it was."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from hcsoci import images
from hcsoci.errors import HcsociError, InvalidArgumentError
from hcsoci.paths import remove_tree
from hcsoci.uvm.layer_images import layer_image

HCSOCI = str(Path(sys.executable).with_name("hcsoci"))
MTIME = 1_600_000_000


# -- building archives -------------------------------------------------------------


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layer(*files: tuple[str, bytes]) -> bytes:
    """A plain layer tar of regular files."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), MTIME, 0o644
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


GOOD = layer(("hello.txt", b"hello\n"))


def config(diff_ids: list[str], **fields: Any) -> bytes:
    document: dict[str, Any] = {"os": "linux", "architecture": images.host_platform().architecture}
    document.update(fields)
    document = {key: value for key, value in document.items() if value is not None}
    document["rootfs"] = {"type": "layers", "diff_ids": diff_ids}
    document["config"] = {"Cmd": ["sh"]}
    return json.dumps(document).encode()


def add(tar: tarfile.TarFile, name: str, data: bytes = b"", link: str = "") -> None:
    """One member: a regular file, or a symlink to ``link``."""
    info = tarfile.TarInfo(name)
    if link:
        info.type, info.linkname = tarfile.SYMTYPE, link
        tar.addfile(info)
    else:
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


def docker_save(
    path: Path,
    layers: list[bytes],
    *,
    tag: str = "hostile:1",
    manifest: list[dict[str, Any]] | None = None,
    links: dict[str, str] | None = None,
    diff_ids: list[str] | None = None,
    **config_fields: Any,
) -> None:
    """A ``docker save`` tarball of ``layers`` (blobs as given: plain or gzip).

    ``links`` adds symlink members (name -> target); a link named like a real
    member replaces it, which is how the loops below are made.  ``diff_ids``
    overrides the config's (for blobs whose uncompressed digest is known).
    """
    links = links or {}
    config_bytes = config(diff_ids or [sha256(blob) for blob in layers], **config_fields)
    members = {"config.json": config_bytes}
    names = []
    for index, blob in enumerate(layers):
        names.append(f"layer{index}/layer.tar")
        members[names[-1]] = blob
    entry = {"Config": "config.json", "RepoTags": [tag], "Layers": names}
    members["manifest.json"] = json.dumps(manifest or [entry]).encode()
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            if name not in links:
                add(tar, name, data)
        for name, target in links.items():
            add(tar, name, link=target)


def oci_layout(
    layout: Path, layers: list[bytes], *, ref: str = "hostile:1", **fields: Any
) -> dict[str, str]:
    """An OCI layout directory; returns the blob file name of each layer and of the config."""
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    written: dict[str, str] = {}

    def blob(data: bytes, media_type: str, what: str) -> dict[str, Any]:
        name = sha256(data).removeprefix("sha256:")
        (blobs / name).write_bytes(data)
        written[what] = name
        return {"mediaType": media_type, "digest": sha256(data), "size": len(data)}

    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": blob(
            config([sha256(data) for data in layers], **fields),
            "application/vnd.oci.image.config.v1+json",
            "config",
        ),
        "layers": [
            blob(data, "application/vnd.oci.image.layer.v1.tar", f"layer{index}")
            for index, data in enumerate(layers)
        ],
    }
    top = blob(json.dumps(manifest).encode(), "application/vnd.oci.image.manifest.v1+json", "m")
    top["annotations"] = {"org.opencontainers.image.ref.name": ref}
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [top]}))
    return written


def tar_of(directory: Path, target: Path) -> None:
    """``directory`` as a tar, symlinks kept as symlinks."""
    with tarfile.open(target, "w") as tar:
        for path in sorted(directory.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(directory)), recursive=False)


class _Zeros(io.RawIOBase):
    """``size`` zero bytes, produced on demand (never held in memory)."""

    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        count = min(len(buffer), self.left)
        buffer[:count] = bytes(count)
        self.left -= count
        return count


class _HashingWriter:
    """Hashes what is written, and passes it on."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.hash = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        return int(self.inner.write(data))


def gzip_bomb(path: Path, size: int) -> str:
    """A gzip layer at ``path`` holding one file of ``size`` zero bytes; returns its diff id."""
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1) as gz:
        writer = _HashingWriter(gz)
        with tarfile.open(fileobj=writer, mode="w|") as tar:  # type: ignore[call-overload]
            info = tarfile.TarInfo("zeros")
            info.size = size
            tar.addfile(info, io.BufferedReader(_Zeros(size)))
    return "sha256:" + writer.hash.hexdigest()


def deep_layer(depth: int) -> bytes:
    """A layer of ``depth`` nested directories ``d/d/d...`` (each with its own mtime) and a leaf."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        name = ""
        for level in range(depth):
            name += "d/"
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, MTIME + level
            tar.addfile(info)
        leaf = tarfile.TarInfo(name + "leaf")
        leaf.size, leaf.mtime = 5, MTIME
        tar.addfile(leaf, io.BytesIO(b"deep\n"))
    return buffer.getvalue()


# -- the store, and what every refusal must leave --------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Iterator[images.ImageStore]:
    """An empty store of the test's own.  Afterwards everything the test made in
    ``tmp_path`` (the store, archives of up to 30 MB, sparse files) is removed,
    with remove_tree: a deep tree would break pytest's own clean-up."""
    yield images.ImageStore(tmp_path / "images")
    for made in tmp_path.iterdir():
        remove_tree(made)


def assert_store_intact(store: images.ImageStore, tmp_path: Path) -> None:
    """Nothing of a refused import is left, and the store still imports."""
    staging = store.root / "tmp"
    assert not staging.exists() or not os.listdir(staging)
    assert not list((store.root / "layers").glob("*/*"))
    assert store.list_images() == []
    good = tmp_path / "good.tar"
    docker_save(good, [GOOD], tag="good:1")
    (image,) = store.import_image(good)
    assert (Path(image.layer_folders[0]) / "hello.txt").read_bytes() == b"hello\n"
    store.remove("good:1")
    assert not list((store.root / "layers").glob("*/*"))


def cli_import(store: images.ImageStore, archive: Path, *args: str) -> str:
    """``hcsoci images import`` in a subprocess; returns stderr, checked to be one clean line."""
    env = {**os.environ, "HCSOCI_IMAGES": str(store.root)}
    done = subprocess.run(
        [HCSOCI, "images", "import", str(archive), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert done.stderr.endswith("\n") and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("hcsoci: "), done.stderr
    return done.stderr


# -- links inside archives -----------------------------------------------------------


@pytest.mark.timeout(10)
def test_symlink_loop_in_a_docker_save_is_refused(store: images.ImageStore, tmp_path: Path) -> None:
    archive = tmp_path / "loop.tar"
    docker_save(archive, [GOOD], links={"manifest.json": "x", "x": "manifest.json"})
    with pytest.raises(images.ImageError) as raised:
        store.import_image(archive)
    assert str(raised.value) == (
        f"image archive {str(archive)!r}: 'manifest.json': symlink loop or chain longer than 16"
    )
    stderr = cli_import(store, archive)
    assert "'manifest.json': symlink loop or chain longer than 16" in stderr
    assert_store_intact(store, tmp_path)


@pytest.mark.timeout(10)
def test_symlink_loop_on_a_layer_is_refused(store: images.ImageStore, tmp_path: Path) -> None:
    archive = tmp_path / "loop.tar"
    links = {"layer0/layer.tar": "../layer1/layer.tar", "layer1/layer.tar": "../layer0/layer.tar"}
    docker_save(archive, [GOOD, GOOD], links=links)
    with pytest.raises(images.ImageError, match=r"'layer0/layer\.tar': symlink loop or chain"):
        store.import_image(archive)
    assert_store_intact(store, tmp_path)


@pytest.mark.timeout(10)
def test_hard_link_loop_is_refused(store: images.ImageStore, tmp_path: Path) -> None:
    archive = tmp_path / "hardloop.tar"
    docker_save(archive, [GOOD], links={"layer0/layer.tar": "unused"})
    with tarfile.open(archive, "a") as tar:  # a hard link to itself, after the symlink
        info = tarfile.TarInfo("layer0/layer.tar")
        info.type, info.linkname = tarfile.LNKTYPE, "layer0/layer.tar"
        tar.addfile(info)
    with pytest.raises(images.ImageError, match=r"'layer0/layer\.tar': symlink loop or chain"):
        store.import_image(archive)
    assert_store_intact(store, tmp_path)


@pytest.mark.timeout(10)
def test_link_chains_are_followed_up_to_16(store: images.ImageStore, tmp_path: Path) -> None:
    # docker save links shared layers, so chains are fine up to the bound.
    real = json.dumps(
        [{"Config": "config.json", "RepoTags": ["chain:1"], "Layers": ["layer0/layer.tar"]}]
    ).encode()
    for count, expect_ok in ((16, True), (17, False)):
        # manifest.json -> l1 -> ... -> l<count - 1> -> real.json: ``count`` links.
        links = {"manifest.json": "l1", **{f"l{n}": f"l{n + 1}" for n in range(1, count - 1)}}
        links[f"l{count - 1}"] = "real.json"
        archive = tmp_path / f"chain-{count}.tar"
        docker_save(archive, [GOOD], links=links)
        with tarfile.open(archive, "a") as tar:
            add(tar, "real.json", real)
        if expect_ok:
            (image,) = store.import_image(archive)
            assert image.name == "chain:1"
            store.remove("chain:1")
        else:
            with pytest.raises(images.ImageError) as raised:
                store.import_image(archive)
            assert "'manifest.json': symlink loop or chain longer than 16" in str(raised.value)
    assert_store_intact(store, tmp_path)


def test_links_out_of_a_tar_are_refused(store: images.ImageStore, tmp_path: Path) -> None:
    for target in ("/etc/passwd", "../../outside/layer.tar"):
        archive = tmp_path / "out.tar"
        docker_save(archive, [GOOD], links={"layer0/layer.tar": target})
        with pytest.raises(images.ImageError) as raised:
            store.import_image(archive)
        assert f"'layer0/layer.tar' -> {target!r} leads outside the archive" in str(raised.value)
    assert_store_intact(store, tmp_path)


def test_oci_layout_directory_links_stay_inside(store: images.ImageStore, tmp_path: Path) -> None:
    """A blob linked to a copy outside the layout is refused, even with the right content;
    links inside the layout (relative or absolute) are followed."""
    layout = tmp_path / "layout"
    blob_names = oci_layout(layout, [GOOD])
    blob = layout / "blobs" / "sha256" / blob_names["layer0"]
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "layer").write_bytes(GOOD)
    shared = layout / "shared"
    shared.mkdir()
    blob.rename(shared / "layer")
    for target in (str(outside / "layer"), "../../../outside/layer"):
        os.symlink(target, blob)
        with pytest.raises(images.ImageError) as raised:
            store.import_image(layout)
        assert f"-> {target!r} leads outside the archive" in str(raised.value)
        blob.unlink()
    for target in (str(shared / "layer"), "../../shared/layer"):
        os.symlink(target, blob)
        (image,) = store.import_image(layout)
        store.remove(image.name)
        blob.unlink()
    assert_store_intact(store, tmp_path)


@pytest.mark.timeout(10)
def test_oci_layout_loops_are_refused(store: images.ImageStore, tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    blob_names = oci_layout(layout, [GOOD])
    blob = layout / "blobs" / "sha256" / blob_names["layer0"]
    blob.unlink()
    os.symlink(blob.name, blob)  # a link to itself
    with pytest.raises(images.ImageError, match="symlink loop or chain longer than 16"):
        store.import_image(layout)
    # The same layout as a tar: the loop is a tar member now.
    archive = tmp_path / "layout.tar"
    tar_of(layout, archive)
    with pytest.raises(images.ImageError) as raised:
        store.import_image(archive)
    assert f"'blobs/sha256/{blob.name}': symlink loop or chain longer than 16" in str(raised.value)
    (layout / "index.json").unlink()
    os.symlink("index.json", layout / "index.json")
    with pytest.raises(images.ImageError, match=r"'index\.json': symlink loop"):
        store.import_image(layout)
    assert_store_intact(store, tmp_path)


@pytest.mark.parametrize(
    ("config_name", "layer_name"),
    [
        ("../outside.json", "layer0/layer.tar"),
        ("/etc/passwd", "layer0/layer.tar"),
        ("config.json", "../../etc/shadow"),
        ("config.json", "/etc/shadow"),
    ],
)
def test_hostile_names_in_manifest_json_are_refused(
    config_name: str, layer_name: str, store: images.ImageStore, tmp_path: Path
) -> None:
    archive = tmp_path / "names.tar"
    manifest = [{"Config": config_name, "RepoTags": ["names:1"], "Layers": [layer_name]}]
    docker_save(archive, [GOOD], manifest=manifest)
    hostile = config_name if config_name != "config.json" else layer_name
    with pytest.raises(images.ImageError) as raised:
        store.import_image(archive)
    assert str(raised.value) == f"image archive {str(archive)!r}: refusing file name {hostile!r}"
    assert_store_intact(store, tmp_path)


def test_hostile_digests_in_index_json_are_refused(
    store: images.ImageStore, tmp_path: Path
) -> None:
    layout = tmp_path / "layout"
    oci_layout(layout, [GOOD])
    index = json.loads((layout / "index.json").read_text())
    index["manifests"][0]["digest"] = "sha256:../../../../etc/passwd"
    (layout / "index.json").write_text(json.dumps(index))
    with pytest.raises(images.ImageError) as raised:
        store.import_image(layout)
    assert "digest must be sha256:<64 hex digits> (got 'sha256:../../../../etc/passwd')" in str(
        raised.value
    )
    assert_store_intact(store, tmp_path)


# -- size limits ---------------------------------------------------------------------


def test_gzip_bomb_stops_at_the_byte_limit(store: images.ImageStore, tmp_path: Path) -> None:
    blob_path = tmp_path / "bomb.gz"
    diff_id = gzip_bomb(blob_path, 160 << 20)
    blob = blob_path.read_bytes()
    assert len(blob) < (2 << 20)  # a small blob...

    class Counting(io.BytesIO):
        consumed = 0

        def read(self, size: int | None = -1) -> bytes:
            data = super().read(size)
            Counting.consumed += len(data)
            return data

    dest = tmp_path / "dest"
    dest.mkdir()
    limits = images.LayerLimits(max_bytes=64 << 20)
    with pytest.raises(images.LayerLimitError) as raised:
        images.extract_layer(Counting(blob), dest, layer=diff_id, limits=limits)
    assert str(raised.value) == (
        f"layer {diff_id}: more than 64 MiB uncompressed (the limit; raise it with "
        "--max-layer-size, $HCSOCI_MAX_LAYER_BYTES or ImageStore(max_layer_bytes=))"
    )
    # ...of which extraction read well under half before stopping, writing at most the limit.
    assert Counting.consumed < len(blob) * 0.6
    assert os.stat(dest / "zeros").st_size <= 64 << 20
    remove_tree(dest)

    archive = tmp_path / "bomb.tar"
    docker_save(archive, [blob], diff_ids=[diff_id])
    limited = images.ImageStore(store.root, max_layer_bytes=64 << 20)
    with pytest.raises(images.LayerLimitError, match="more than 64 MiB uncompressed"):
        limited.import_image(archive)
    assert_store_intact(store, tmp_path)
    stderr = cli_import(store, archive, "--max-layer-size", "64M")
    assert f"layer {diff_id}: more than 64 MiB uncompressed" in stderr
    assert "--max-layer-size" in stderr
    assert_store_intact(store, tmp_path)


def test_byte_limit_from_the_environment(
    store: images.ImageStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blob = gzip.compress(layer(("big", bytes(3 << 20))), compresslevel=1)
    archive = tmp_path / "big.tar"
    docker_save(archive, [blob], diff_ids=[sha256(layer(("big", bytes(3 << 20))))])
    monkeypatch.setenv("HCSOCI_MAX_LAYER_BYTES", "2M")
    with pytest.raises(images.LayerLimitError, match="more than 2 MiB uncompressed"):
        store.import_image(archive)
    assert_store_intact(store, tmp_path)
    # The keyword argument wins over the environment.
    (image,) = images.ImageStore(store.root, max_layer_bytes=4 << 20).import_image(archive)
    store.remove(image.name)
    monkeypatch.setenv("HCSOCI_MAX_LAYER_BYTES", "lots")
    with pytest.raises(InvalidArgumentError) as raised:
        store.import_image(archive)
    assert str(raised.value).startswith("HCSOCI_MAX_LAYER_BYTES: 'lots' is not a size")
    monkeypatch.setenv("HCSOCI_MAX_LAYER_BYTES", "8G")
    monkeypatch.setenv("HCSOCI_MAX_LAYER_ENTRIES", "-3")
    with pytest.raises(InvalidArgumentError, match="HCSOCI_MAX_LAYER_ENTRIES: '-3' is not a pos"):
        store.import_image(archive)
    monkeypatch.delenv("HCSOCI_MAX_LAYER_BYTES")
    monkeypatch.delenv("HCSOCI_MAX_LAYER_ENTRIES")
    assert_store_intact(store, tmp_path)


def test_too_many_entries(store: images.ImageStore, tmp_path: Path) -> None:
    hundred = layer(*((f"f{n:03d}", b"") for n in range(100)))
    many = layer(*((f"f{n:03d}", b"") for n in range(101)))
    archive = tmp_path / "many.tar"
    docker_save(archive, [many])
    limited = images.ImageStore(store.root, max_layer_entries=100)
    with pytest.raises(images.LayerLimitError) as raised:
        limited.import_image(archive)
    assert str(raised.value) == (
        f"layer {sha256(many)}: more than 100 entries (the limit; raise it with "
        "--max-layer-entries, $HCSOCI_MAX_LAYER_ENTRIES or ImageStore(max_layer_entries=))"
    )
    assert_store_intact(store, tmp_path)
    stderr = cli_import(store, archive, "--max-layer-entries", "100")
    assert "more than 100 entries" in stderr and "--max-layer-entries" in stderr
    assert_store_intact(store, tmp_path)
    exactly = tmp_path / "hundred.tar"
    docker_save(exactly, [hundred], tag="hundred:1")
    (image,) = limited.import_image(exactly)
    assert len(os.listdir(image.layer_folders[0])) == 100
    store.remove("hundred:1")


def test_bad_limit_values_are_refused(store: images.ImageStore, tmp_path: Path) -> None:
    archive = tmp_path / "good.tar"
    docker_save(archive, [GOOD])
    for option, value in (
        ("--max-layer-size", "12Q"),
        ("--max-layer-size", "0"),
        ("--max-layer-entries", "many"),
    ):
        done = subprocess.run(
            [HCSOCI, "images", "import", str(archive), option, value, "--root", str(store.root)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 2
        assert "Traceback" not in done.stderr
        (error,) = done.stderr.splitlines()  # one line, as every CLI error
        assert error.startswith("hcsoci: ") and f"Invalid value for {option!r}: {value!r}" in error
    for keyword in ("max_layer_bytes", "max_layer_entries"):
        with pytest.raises(InvalidArgumentError, match=f"{keyword}: must be a positive"):
            images.ImageStore(store.root, **{keyword: 0})
    assert images.parse_size("8G") == 8 << 30
    assert images.parse_size("512M") == 512 << 20
    assert images.parse_size("64KiB") == 64 << 10
    assert images.parse_size("1048576") == 1 << 20


# -- sparse files --------------------------------------------------------------------


@pytest.mark.parametrize("tar_format", ["gnu", "posix"])
def test_sparse_files_stay_sparse(
    tar_format: str, store: images.ImageStore, tmp_path: Path
) -> None:
    source = tmp_path / "source"
    source.mkdir()
    big = source / "big"
    subprocess.run(["truncate", "-s", "3G", str(big)], check=True)
    with open(big, "r+b") as file:
        file.seek(1_000_000)
        file.write(b"hello")
        file.seek((3 << 30) - 3)
        file.write(b"end")
    layer_tar = tmp_path / "layer.tar"
    subprocess.run(
        [
            "tar",
            "--sparse",
            f"--format={tar_format}",
            "-cf",
            str(layer_tar),
            "-C",
            str(source),
            "big",
        ],
        check=True,
    )
    big.unlink()
    blob = layer_tar.read_bytes()
    assert len(blob) < 64 << 10
    archive = tmp_path / "sparse.tar"
    docker_save(archive, [blob], tag="sparse:1")
    # The apparent 3 GiB does not count against a 1 MiB limit: only the data regions do.
    (image,) = images.ImageStore(store.root, max_layer_bytes=1 << 20).import_image(archive)
    extracted = Path(image.layer_folders[0]) / "big"
    status = os.stat(extracted)
    assert status.st_size == 3 << 30
    assert status.st_blocks * 512 < 1 << 20
    with open(extracted, "rb") as file:
        file.seek(1_000_000)
        assert file.read(5) == b"hello"
        file.seek((3 << 30) - 3)
        assert file.read() == b"end"
        file.seek(500_000)
        assert file.read(16) == bytes(16)
    store.remove("sparse:1")


# -- deep trees ----------------------------------------------------------------------


@pytest.mark.parametrize("depth", [1100, 5000])
def test_deep_trees_import_and_remove(depth: int, store: images.ImageStore, tmp_path: Path) -> None:
    archive = tmp_path / "deep.tar"
    docker_save(archive, [deep_layer(depth)], tag="deep:1")
    (image,) = store.import_image(archive)
    # Walk down by descriptors (the path is longer than PATH_MAX at 5,000).
    fd = os.open(image.layer_folders[0], os.O_RDONLY | os.O_DIRECTORY)
    try:
        for level in range(depth):
            assert os.stat("d", dir_fd=fd, follow_symlinks=False).st_mtime == MTIME + level
            below = os.open("d", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = below
        with open(os.open("leaf", os.O_RDONLY, dir_fd=fd), "rb") as leaf:
            assert leaf.read() == b"deep\n"
    finally:
        os.close(fd)
    store.remove("deep:1")
    assert not Path(image.layer_folders[0]).exists()
    assert_store_intact(store, tmp_path)


def test_deep_leftovers_are_removed_by_the_next_import(
    store: images.ImageStore, tmp_path: Path
) -> None:
    """What a killed import of deep layers leaves: a staging directory, an unreferenced layer."""
    archive = tmp_path / "deep.tar"
    blob = deep_layer(1100)
    docker_save(archive, [blob], tag="deep:1")
    (image,) = store.import_image(archive)
    unreferenced = Path(image.layer_folders[0])
    (store.root / "index.json").write_bytes(b'{"images": {}, "layers": {}}')
    leftover = store.root / "tmp" / "layer-killed"
    leftover.mkdir(parents=True)
    images.extract_layer(io.BytesIO(blob), leftover)
    good = tmp_path / "good.tar"
    docker_save(good, [GOOD], tag="good:1")
    store.import_image(good)
    assert not unreferenced.exists()
    assert not (store.root / "tmp").exists()
    store.remove("good:1")
    (image,) = store.import_image(archive)
    done = subprocess.run(
        [HCSOCI, "images", "rm", "deep:1", "--root", str(store.root)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert not Path(image.layer_folders[0]).exists()
    assert_store_intact(store, tmp_path)


def test_deep_layer_images_do_not_recurse(store: images.ImageStore, tmp_path: Path) -> None:
    """Sizing a deep layer for its ext4 image walks without recursion (mke2fs may still fail)."""
    archive = tmp_path / "deep.tar"
    docker_save(archive, [deep_layer(1100)], tag="deep:1")
    (image,) = store.import_image(archive)
    cache = tmp_path / "cache"
    try:
        with contextlib.suppress(HcsociError):  # mke2fs -d itself fails on some depths
            assert layer_image(image.layer_folders[0], cache).is_file()
    finally:
        remove_tree(cache)
        store.remove("deep:1")


# -- platforms -----------------------------------------------------------------------


def foreign_architecture() -> str:
    return "arm64" if images.host_platform().architecture != "arm64" else "amd64"


def test_an_image_for_another_architecture_is_refused(
    store: images.ImageStore, tmp_path: Path
) -> None:
    host = images.host_platform()
    foreign = foreign_architecture()
    archive = tmp_path / "foreign.tar"
    docker_save(archive, [GOOD], tag="foo:1", architecture=foreign)
    with pytest.raises(images.ImageError) as raised:
        store.import_image(archive)
    assert (
        str(raised.value) == f"image 'foo:1': built for linux/{foreign}, this machine runs {host}"
    )
    stderr = cli_import(store, archive)
    assert stderr == f"hcsoci: image 'foo:1': built for linux/{foreign}, this machine runs {host}\n"
    windows = tmp_path / "windows.tar"
    docker_save(windows, [GOOD], tag="win:1", os="windows", architecture=host.architecture)
    with pytest.raises(images.ImageError, match=f"built for windows/{host.architecture},"):
        store.import_image(windows)
    assert_store_intact(store, tmp_path)


def test_an_image_that_names_no_platform_is_accepted(
    store: images.ImageStore, tmp_path: Path
) -> None:
    archive = tmp_path / "old.tar"
    docker_save(archive, [GOOD], tag="old:1", os=None, architecture=None)
    (image,) = store.import_image(archive)
    assert (image.os, image.architecture) == ("", "")
    store.remove("old:1")


def test_an_index_without_this_platform_names_what_it_has(
    store: images.ImageStore, tmp_path: Path
) -> None:
    layout = tmp_path / "layout"
    oci_layout(layout, [GOOD])
    index = json.loads((layout / "index.json").read_text())
    foreign = foreign_architecture()
    index["manifests"][0]["platform"] = {"os": "linux", "architecture": foreign}
    blobs = layout / "blobs" / "sha256"
    nested = json.dumps({"schemaVersion": 2, "manifests": index["manifests"]}).encode()
    (blobs / sha256(nested).removeprefix("sha256:")).write_bytes(nested)
    top = {
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "digest": sha256(nested),
        "size": len(nested),
        "annotations": {"org.opencontainers.image.ref.name": "multi:1"},
    }
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [top]}))
    with pytest.raises(images.ImageError) as raised:
        store.import_image(layout)
    assert f"has no {images.host_platform()} manifest (it has linux/{foreign})" in str(raised.value)
    assert_store_intact(store, tmp_path)


def test_spec_for_image_refuses_a_foreign_image(busybox_image: images.Image) -> None:
    foreign = msgspec.structs.replace(busybox_image, architecture=foreign_architecture())
    with pytest.raises(images.ImageError, match="built for linux/"):
        images.spec_for_image(foreign, ["true"])
    assert images.spec_for_image(busybox_image, ["true"]).process is not None
