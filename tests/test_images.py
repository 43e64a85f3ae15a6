"""Image import, the layer store, whiteouts in overlay form, the default image, spec_for_image."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import stat
import subprocess
import tarfile
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from hcsoci import images, oci
from hcsoci.cli.main import cli
from hcsoci.errors import InvalidArgumentError, NotFoundError

# -- building archives -------------------------------------------------------


@dataclass
class Entry:
    """One tar entry of a test layer."""

    name: str
    kind: bytes = tarfile.REGTYPE
    data: bytes = b""
    mode: int = 0o644
    link: str = ""
    major: int = 0
    minor: int = 0
    uid: int = 0
    gid: int = 0


def layer_tar(*entries: Entry) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in entries:
            info = tarfile.TarInfo(entry.name)
            info.type = entry.kind
            info.mode = entry.mode
            info.uid, info.gid = entry.uid, entry.gid
            info.mtime = 1_600_000_000
            info.linkname = entry.link
            info.devmajor, info.devminor = entry.major, entry.minor
            if entry.kind == tarfile.REGTYPE:
                info.size = len(entry.data)
                tar.addfile(info, io.BytesIO(entry.data))
            else:
                tar.addfile(info)
    return buffer.getvalue()


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def image_config(layers: list[bytes], **config: Any) -> bytes:
    return json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "created": "2024-01-02T03:04:05Z",
            "config": config,
            "rootfs": {"type": "layers", "diff_ids": [sha256(layer) for layer in layers]},
        }
    ).encode()


def write_docker_save(path: Path, tags: list[str], layers: list[bytes], **config: Any) -> None:
    """A ``docker save`` tarball: manifest.json, <config>.json, <id>/layer.tar."""
    config_bytes = image_config(layers, **config)
    config_name = sha256(config_bytes).removeprefix("sha256:") + ".json"
    members: dict[str, bytes] = {config_name: config_bytes}
    layer_names = []
    for layer in layers:
        name = f"{sha256(layer).removeprefix('sha256:')}/layer.tar"
        members[name] = layer
        layer_names.append(name)
    manifest = [{"Config": config_name, "RepoTags": tags, "Layers": layer_names}]
    members["manifest.json"] = json.dumps(manifest).encode()
    members["repositories"] = b"{}"
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def write_oci_layout(
    layout: Path,
    layers: list[bytes],
    ref_name: str = "",
    *,
    gzip_layers: bool = True,
    nested_index: bool = False,
    **config: Any,
) -> None:
    """An OCI image layout directory, optionally with an image index for several platforms."""
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def blob(data: bytes, media_type: str) -> dict[str, Any]:
        (blobs / sha256(data).removeprefix("sha256:")).write_bytes(data)
        return {"mediaType": media_type, "digest": sha256(data), "size": len(data)}

    layer_type = "application/vnd.oci.image.layer.v1.tar" + ("+gzip" if gzip_layers else "")
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": blob(image_config(layers, **config), "application/vnd.oci.image.config.v1+json"),
        "layers": [
            blob(gzip.compress(layer, mtime=0) if gzip_layers else layer, layer_type)
            for layer in layers
        ],
    }
    top = blob(json.dumps(manifest).encode(), "application/vnd.oci.image.manifest.v1+json")
    if nested_index:
        arm = dict(top, platform={"os": "linux", "architecture": "arm64"})
        amd = dict(top, platform={"os": "linux", "architecture": "amd64"})
        index = {"schemaVersion": 2, "manifests": [arm, amd]}
        top = blob(json.dumps(index).encode(), "application/vnd.oci.image.index.v1+json")
    if ref_name:
        top["annotations"] = {"org.opencontainers.image.ref.name": ref_name}
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [top]}))


def tar_directory(source: Path, target: Path) -> None:
    with tarfile.open(target, "w") as tar:
        for path in sorted(source.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(source)), recursive=False)


def store_is_empty(store: images.ImageStore) -> bool:
    layers = list((store.root / "layers").glob("*/*"))
    staging = list((store.root / "tmp").glob("*"))
    return not store.list_images() and not layers and not staging


# A three-layer image exercising whiteouts, an opaque directory, links and owners.
BASE = layer_tar(
    Entry("etc/", tarfile.DIRTYPE, mode=0o755),
    Entry(
        "etc/passwd", data=b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n"
    ),
    Entry("etc/group", data=b"root:x:0:\napp:x:1000:\nwheel:x:10:app\n"),
    Entry("keep.txt", data=b"kept from base\n"),
    Entry("gone.txt", data=b"deleted in layer 2\n"),
    Entry("data/", tarfile.DIRTYPE, mode=0o750, uid=1000, gid=1000),
    Entry("data/old-1", data=b"old\n"),
    Entry("data/old-2", data=b"old\n"),
    Entry("tmp/", tarfile.DIRTYPE, mode=0o1777),
    Entry("bin/tool", data=b"#!/bin/sh\n", mode=0o4755),
)
MIDDLE = layer_tar(
    Entry(".wh.gone.txt"),
    Entry("data/", tarfile.DIRTYPE, mode=0o750, uid=1000, gid=1000),
    Entry("data/.wh..wh..opq"),
    Entry("data/new", data=b"only this survives\n", uid=1000, gid=1000),
    Entry("keep.txt", data=b"kept, changed in layer 2\n"),
)
TOP = layer_tar(
    Entry("keep.txt", data=b"first top version\n"),
    Entry("links/", tarfile.DIRTYPE, mode=0o755),
    Entry("links/hard", tarfile.LNKTYPE, link="keep.txt"),
    Entry("keep.txt", data=b"top version\n"),  # replaces it: links/hard keeps the old inode
    Entry("links/hard-top", tarfile.LNKTYPE, link="keep.txt"),
    Entry("links/abs", tarfile.SYMTYPE, link="/etc/passwd"),
    Entry("links/fifo", tarfile.FIFOTYPE),
)
LAYERS = [BASE, MIDDLE, TOP]


@contextmanager
def overlay(lower: list[str], tmp_path: Path) -> Iterator[Path]:
    """A real overlay mount of ``lower`` (top-most first) with a scratch upper dir."""
    token = uuid.uuid4().hex[:8]
    upper, work, merged = (tmp_path / f"{part}-{token}" for part in ("upper", "work", "merged"))
    for directory in (upper, work, merged):
        directory.mkdir()
    options = f"lowerdir={':'.join(lower)},upperdir={upper},workdir={work}"
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", options, str(merged)], check=True)
    try:
        yield merged
    finally:
        subprocess.run(["umount", str(merged)], check=True)


# -- imports -------------------------------------------------------------------


def check_layers(store: images.ImageStore, image: images.Image) -> None:
    base, middle, top = (store.layer_dir(diff_id) for diff_id in image.layers)
    assert image.layer_folders == [str(top), str(middle), str(base)]
    assert (base / "gone.txt").read_bytes() == b"deleted in layer 2\n"
    whiteout = os.lstat(middle / "gone.txt")
    assert stat.S_ISCHR(whiteout.st_mode) and whiteout.st_rdev == os.makedev(0, 0)
    assert not (middle / ".wh.gone.txt").exists()
    assert os.getxattr(middle / "data", "trusted.overlay.opaque") == b"y"
    assert not (middle / "data" / ".wh..wh..opq").exists()
    assert os.stat(base / "bin" / "tool").st_mode & 0o7777 == 0o4755
    assert os.stat(base / "tmp").st_mode & 0o7777 == 0o1777
    assert (os.stat(base / "data").st_uid, os.stat(base / "data").st_gid) == (1000, 1000)
    # The hard link made before keep.txt was replaced keeps the old inode.
    assert os.stat(top / "links" / "hard").st_nlink == 1
    assert os.stat(top / "links" / "hard-top").st_ino == os.stat(top / "keep.txt").st_ino
    assert os.readlink(top / "links" / "abs") == "/etc/passwd"
    assert stat.S_ISFIFO(os.lstat(top / "links" / "fifo").st_mode)
    assert os.stat(top).st_mode & 0o777 == 0o755


def check_merged_view(image: images.Image, tmp_path: Path) -> None:
    with overlay(image.layer_folders, tmp_path) as merged:
        assert not (merged / "gone.txt").exists()
        assert sorted(os.listdir(merged / "data")) == ["new"]
        assert (merged / "keep.txt").read_text() == "top version\n"
        assert (merged / "etc" / "passwd").read_text().startswith("root:")
        assert (merged / "links" / "hard").read_text() == "first top version\n"
        (merged / "data" / "written").write_text("goes to the upper dir")
    for folder in image.layer_folders:
        assert not Path(folder, "data", "written").exists()


def test_docker_save_tarball_imports_in_overlay_form(
    image_store: images.ImageStore, tmp_path: Path
) -> None:
    archive = tmp_path / "app.tar"
    write_docker_save(
        archive, ["example/app:1.0", "example/app:latest"], LAYERS, Cmd=["run"], Env=["A=1"]
    )
    imported = image_store.import_image(archive)
    assert [image.name for image in imported] == ["example/app:1.0", "example/app:latest"]
    image = image_store.get("example/app")
    assert image.id == imported[0].id
    assert image.layers == [sha256(layer) for layer in LAYERS]
    assert image.config.cmd == ["run"] and image.config.env == ["A=1"]
    assert image.size == sum(len(layer) for layer in LAYERS)
    check_layers(image_store, image)
    check_merged_view(image, tmp_path)


@pytest.mark.parametrize("form", ["directory", "tar"])
def test_oci_layout_imports_and_shares_layers(
    form: str, image_store: images.ImageStore, tmp_path: Path
) -> None:
    layout = tmp_path / "layout"
    write_oci_layout(layout, LAYERS, "example/oci:2", nested_index=True, Entrypoint=["/bin/tool"])
    source: Path = layout
    if form == "tar":
        source = tmp_path / "layout.tar"
        tar_directory(layout, source)
    (image,) = image_store.import_image(source)
    assert image.name == "example/oci:2"
    assert image.config.entrypoint == ["/bin/tool"]
    check_layers(image_store, image)
    check_merged_view(image, tmp_path)
    # The same layers under another name and format: stored once.
    other = tmp_path / "docker.tar"
    write_docker_save(other, ["example/other:1"], LAYERS[:2])
    image_store.import_image(other)
    assert len(list((image_store.root / "layers" / "sha256").iterdir())) == 3


def test_name_is_required_when_the_archive_has_none(
    image_store: images.ImageStore, tmp_path: Path
) -> None:
    write_oci_layout(tmp_path / "layout", [BASE], gzip_layers=False)
    with pytest.raises(images.ImageError, match="names no image"):
        image_store.import_image(tmp_path / "layout")
    assert store_is_empty(image_store)
    (image,) = image_store.import_image(tmp_path / "layout", name="named")
    assert image.name == "named:latest"
    with pytest.raises(images.ImageError, match="'Bad Name!'"):
        image_store.import_image(tmp_path / "layout", name="Bad Name!")


def test_missing_archive_is_not_found(image_store: images.ImageStore, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.tar"):
        image_store.import_image(tmp_path / "nope.tar")
    with pytest.raises(images.ImageNotFoundError, match="'ghost:latest'"):
        image_store.get("ghost")
    with pytest.raises(NotFoundError):
        image_store.remove("ghost")


def test_corrupt_blob_is_refused_and_nothing_is_kept(
    image_store: images.ImageStore, tmp_path: Path
) -> None:
    layout = tmp_path / "layout"
    write_oci_layout(layout, LAYERS, "example/corrupt:1")
    layer_digest = json.loads(
        (layout / "blobs" / "sha256" / _manifest_digest(layout)).read_bytes()
    )["layers"][2]["digest"]
    blob = layout / "blobs" / "sha256" / layer_digest.removeprefix("sha256:")
    blob.write_bytes(gzip.compress(layer_tar(Entry("other", data=b"x")), mtime=0))
    with pytest.raises(images.ImageError, match="content has diff id"):
        image_store.import_image(layout)
    assert store_is_empty(image_store)


def _manifest_digest(layout: Path) -> str:
    index = json.loads((layout / "index.json").read_text())
    digest: str = index["manifests"][0]["digest"]
    return digest.removeprefix("sha256:")


def test_layer_count_must_match_the_config(image_store: images.ImageStore, tmp_path: Path) -> None:
    archive = tmp_path / "bad.tar"
    write_docker_save(archive, ["bad:1"], LAYERS)
    with tarfile.open(archive) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar if m.isreg()}  # type: ignore[union-attr]
    manifest = json.loads(members["manifest.json"])
    manifest[0]["Layers"] = manifest[0]["Layers"][:2]
    manifest[0]["Config"] = "../../etc/passwd"
    members["manifest.json"] = json.dumps(manifest).encode()
    with tarfile.open(archive, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with pytest.raises(images.ImageError, match=r"refusing file name '\.\./\.\./etc/passwd'"):
        image_store.import_image(archive)
    assert store_is_empty(image_store)


# -- hostile layers ------------------------------------------------------------

HOSTILE = {
    "dotdot": ([Entry("../escaped", data=b"x")], "../escaped", "'..' component"),
    "dotdot-inside": ([Entry("a/../../escaped", data=b"x")], "a/../../escaped", "'..'"),
    "absolute": ([Entry("/etc/evil", data=b"x")], "/etc/evil", "absolute name"),
    "symlink-then-write": (
        [Entry("link", tarfile.SYMTYPE, link="{outside}"), Entry("link/planted", data=b"x")],
        "link/planted",
        "symlink 'link'",
    ),
    "relative-symlink-then-write": (
        [
            Entry("d/", tarfile.DIRTYPE, mode=0o755),
            Entry("d/up", tarfile.SYMTYPE, link="../../../../../../{outside}"),
            Entry("d/up/planted", data=b"x"),
        ],
        "d/up/planted",
        "symlink 'd/up'",
    ),
    "char-device": (
        [Entry("dev/null", tarfile.CHRTYPE, major=1, minor=3)],
        "dev/null",
        "character device 1:3",
    ),
    "block-device": (
        [Entry("dev/sda", tarfile.BLKTYPE, major=8, minor=0)],
        "dev/sda",
        "block device 8:0",
    ),
    "hardlink-absolute": (
        [Entry("passwd", tarfile.LNKTYPE, link="{outside}/secret")],
        "passwd",
        "absolute link target",
    ),
    "hardlink-dotdot": (
        [Entry("passwd", tarfile.LNKTYPE, link="../../secret")],
        "passwd",
        "'..' component",
    ),
    "hardlink-through-symlink": (
        [
            Entry("out", tarfile.SYMTYPE, link="{outside}"),
            Entry("h", tarfile.LNKTYPE, link="out/secret"),
        ],
        "h",
        "symlink 'out'",
    ),
}


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory outside every layer, with a file a hostile layer would like to reach."""
    directory = tmp_path / "outside"
    directory.mkdir()
    (directory / "secret").write_text("secret")
    return directory


def hostile_layer(entries: list[Entry], outside: Path) -> bytes:
    return layer_tar(
        *(
            Entry(**{**e.__dict__, "link": e.link.replace("{outside}", str(outside))})
            for e in entries
        )
    )


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_layer_is_refused_naming_the_entry(
    case: str, outside: Path, tmp_path: Path
) -> None:
    entries, entry_name, reason = HOSTILE[case]
    dest = tmp_path / "layer"
    dest.mkdir()
    with pytest.raises(images.UnsafeLayerError) as raised:
        images.extract_layer(io.BytesIO(hostile_layer(entries, outside)), dest, layer="L")
    assert raised.value.entry == entry_name
    assert f"refusing entry {entry_name!r}" in str(raised.value)
    assert reason in str(raised.value)
    assert isinstance(raised.value, InvalidArgumentError)
    assert sorted(os.listdir(outside)) == ["secret"]
    assert (outside / "secret").read_text() == "secret"
    assert os.stat(outside / "secret").st_nlink == 1
    assert not (tmp_path / "escaped").exists()


@pytest.mark.parametrize("case", ["symlink-then-write", "char-device", "hardlink-absolute"])
def test_hostile_image_leaves_nothing_in_the_store(
    case: str, outside: Path, image_store: images.ImageStore, tmp_path: Path
) -> None:
    entries, _, _ = HOSTILE[case]
    archive = tmp_path / "hostile.tar"
    # A good base layer first: it is extracted, then removed again with the rest.
    write_docker_save(archive, ["hostile:1"], [BASE, hostile_layer(entries, outside)])
    with pytest.raises(images.UnsafeLayerError):
        image_store.import_image(archive)
    assert store_is_empty(image_store)
    assert sorted(os.listdir(outside)) == ["secret"]


def test_gzip_and_plain_layers_have_the_same_diff_id(tmp_path: Path) -> None:
    results = []
    for name, blob in (("plain", BASE), ("gzip", gzip.compress(BASE))):
        dest = tmp_path / name
        dest.mkdir()
        diff_id, digest, size = images.extract_layer(io.BytesIO(blob), dest)
        results.append(diff_id)
        assert digest == sha256(blob) and size == len(BASE)
    assert results == [sha256(BASE)] * 2


def test_garbage_is_not_a_layer(tmp_path: Path) -> None:
    with pytest.raises(images.ImageError, match="not a valid tar archive"):
        images.extract_layer(io.BytesIO(b"\x1f\x8b not really gzip" * 40), tmp_path)


# -- removal -----------------------------------------------------------------


def test_remove_keeps_shared_layers_and_refuses_mounted_ones(
    image_store: images.ImageStore, tmp_path: Path
) -> None:
    write_docker_save(tmp_path / "a.tar", ["a:1"], LAYERS)
    write_docker_save(tmp_path / "b.tar", ["b:1"], LAYERS[:1])
    (image_a,) = image_store.import_image(tmp_path / "a.tar")
    image_store.import_image(tmp_path / "b.tar")
    with overlay(image_a.layer_folders, tmp_path) as merged:
        with pytest.raises(images.ImageError, match=f"in use by the overlay mounted at '{merged}'"):
            image_store.remove("a:1")
        assert image_store.get("a:1") == image_a
    image_store.remove("a:1")
    assert [image.name for image in image_store.list_images()] == ["b:1"]
    assert [p.name for p in (image_store.root / "layers" / "sha256").iterdir()] == [
        sha256(BASE).removeprefix("sha256:")
    ]
    image_store.remove("b:1")
    assert store_is_empty(image_store)


# -- the default image and specs -----------------------------------------------


def test_default_image_is_reproducible_busybox(busybox_image: images.Image, tmp_path: Path) -> None:
    rebuilt = images.build_default_image(images.ImageStore(tmp_path / "other"))
    assert (rebuilt.id, rebuilt.layers) == (busybox_image.id, busybox_image.layers)
    assert busybox_image.name == images.DEFAULT_IMAGE == "busybox:latest"
    (layer,) = (Path(folder) for folder in busybox_image.layer_folders)
    assert os.access(layer / "bin" / "busybox", os.X_OK)
    assert os.readlink(layer / "bin" / "sh") == "busybox"
    assert os.readlink(layer / "usr" / "bin" / "env") == "../../bin/busybox"
    assert "nobody:x:65534:65534" in (layer / "etc" / "passwd").read_text()
    assert "root:x:0:" in (layer / "etc" / "group").read_text()
    assert os.stat(layer / "tmp").st_mode & 0o7777 == 0o1777
    for directory in ("dev", "proc", "sys", "root"):
        assert (layer / directory).is_dir()


def test_spec_for_image_applies_the_image_config(
    image_store: images.ImageStore, tmp_path: Path
) -> None:
    archive = tmp_path / "app.tar"
    write_docker_save(
        archive,
        ["app:1"],
        LAYERS,
        Entrypoint=["/bin/tool", "--flag"],
        Cmd=["default-arg"],
        Env=["PATH=/app/bin", "MODE=prod"],
        WorkingDir="/data",
        User="app",
    )
    (image,) = image_store.import_image(archive)
    spec = images.spec_for_image(image)
    assert spec.process is not None
    assert spec.process.args == ["/bin/tool", "--flag", "default-arg"]
    assert spec.process.env == ["PATH=/app/bin", "MODE=prod"]
    assert spec.process.cwd == "/data"
    assert spec.process.user == oci.User(uid=1000, gid=1000, additional_gids=[10])
    assert spec.windows == oci.Windows(layer_folders=image.layer_folders)
    assert spec.root == oci.Root(path="rootfs", readonly=False)
    assert oci.decode_spec(oci.encode_spec(spec)) == spec

    spec = images.spec_for_image(
        image, ["other"], env=["MODE=dev", "X=1"], cwd="/tmp", user="0:wheel", terminal=True
    )
    assert spec.process is not None
    assert spec.process.args == ["/bin/tool", "--flag", "other"]
    assert spec.process.env == ["PATH=/app/bin", "MODE=dev", "X=1", "TERM=xterm"]
    assert spec.process.cwd == "/tmp"
    assert spec.process.user == oci.User(uid=0, gid=10)
    assert spec.process.terminal is True
    assert images.spec_for_image(image, user="4242").process.user == oci.User(uid=4242, gid=0)  # type: ignore[union-attr]


def test_spec_for_image_bad_input(busybox_image: images.Image) -> None:
    with pytest.raises(NotFoundError, match="user 'ghost'"):
        images.spec_for_image(busybox_image, user="ghost")
    with pytest.raises(NotFoundError, match="group 'nogroup'"):
        images.spec_for_image(busybox_image, user="root:nogroup")
    with pytest.raises(InvalidArgumentError, match="'BROKEN' is not NAME=VALUE"):
        images.spec_for_image(busybox_image, env=["BROKEN"])
    with pytest.raises(oci.SpecError, match=r"\$\.process\.cwd: .*'relative'"):
        images.spec_for_image(busybox_image, cwd="relative")
    empty = images.Image(
        name="empty:1",
        id="sha256:0",
        layers=[],
        layer_folders=[],
        config=images.ImageConfig(),
        size=0,
    )
    with pytest.raises(InvalidArgumentError, match="no Entrypoint or Cmd"):
        images.spec_for_image(empty)


def test_busybox_image_runs_in_runc_as_nobody(busybox_image: images.Image, tmp_path: Path) -> None:
    spec = images.spec_for_image(
        busybox_image,
        ["sh", "-c", "id -un; id -g; pwd; echo $GREETING; ls /data; touch /tmp/x && ls; exit 3"],
        env=["GREETING=hello"],
        cwd="/tmp",
        user="nobody",
    )
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    container_id = f"imgtest-{uuid.uuid4().hex[:10]}"
    state = tmp_path / "runc"
    with overlay(busybox_image.layer_folders, tmp_path) as merged:
        spec.root = oci.Root(path=str(merged))
        spec.windows = None
        (bundle / "config.json").write_bytes(oci.encode_spec(spec))
        try:
            result = subprocess.run(
                ["runc", "--root", str(state), "run", "--bundle", str(bundle), container_id],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=60,
                check=False,
            )
        finally:
            subprocess.run(
                ["runc", "--root", str(state), "delete", "--force", container_id],
                capture_output=True,
                check=False,
            )
    assert result.returncode == 3, result.stderr
    assert result.stdout.decode().splitlines() == ["nobody", "65534", "/tmp", "hello", "x"]
    assert result.stderr.decode() == "ls: /data: No such file or directory\n"


# -- the CLI -------------------------------------------------------------------


def test_images_cli(tmp_path: Path) -> None:
    root = str(tmp_path / "cli-store")
    archive = tmp_path / "app.tar"
    write_docker_save(archive, ["cli/app:1"], LAYERS, Cmd=["run"])
    runner = CliRunner()
    result = runner.invoke(cli, ["images", "import", str(archive), "--root", root])
    assert result.exit_code == 0, result.output
    assert "cli/app:1 sha256:" in result.output
    result = runner.invoke(cli, ["images", "build-default", "--root", root])
    assert result.exit_code == 0, result.output
    result = runner.invoke(cli, ["images", "list", "--json", "--root", root])
    assert result.exit_code == 0, result.output
    listed = json.loads(result.output)
    assert [image["name"] for image in listed] == ["busybox:latest", "cli/app:1"]
    assert listed[1]["config"]["cmd"] == ["run"]
    result = runner.invoke(cli, ["images", "list", "--root", root])
    assert "cli/app:1" in result.output and "IMAGE ID" in result.output
    result = runner.invoke(cli, ["images", "rm", "cli/app:1", "--root", root])
    assert result.exit_code == 0, result.output
    result = runner.invoke(cli, ["images", "rm", "cli/app:1", "--root", root])
    assert result.exit_code == 1
    assert "'cli/app:1' is not in the image store" in result.output
    result = runner.invoke(cli, ["images", "import", str(tmp_path / "missing.tar"), "--root", root])
    assert result.exit_code == 1
    assert "missing.tar" in result.output


def test_leftovers_of_a_killed_import_are_removed_by_the_next(
    image_store: images.ImageStore, tmp_path: Path
) -> None:
    archive = tmp_path / "app.tar"
    write_docker_save(archive, ["app:1"], LAYERS)
    # What a controller killed mid-import leaves: a staging dir and a renamed but
    # unrecorded layer (here: a wrong one under BASE's name, which must not be trusted).
    staging = image_store.root / "tmp" / "layer-killed"
    staging.mkdir(parents=True)
    (staging / "half-written").write_text("x")
    orphan = image_store.layer_dir(sha256(BASE))
    orphan.mkdir(parents=True)
    (orphan / "not-from-the-archive").write_text("x")
    (image,) = image_store.import_image(archive)
    assert not staging.exists()
    assert not (orphan / "not-from-the-archive").exists()
    check_layers(image_store, image)


def test_concurrent_imports_of_one_archive(image_store: images.ImageStore, tmp_path: Path) -> None:
    archive = tmp_path / "app.tar"
    write_docker_save(archive, ["app:1"], LAYERS)
    results: list[str] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            (image,) = images.ImageStore(image_store.root).import_image(archive)
            results.append(image.id)
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len(set(results)) == 1 and len(results) == 3
    assert len(list((image_store.root / "layers" / "sha256").iterdir())) == 3
    check_layers(image_store, image_store.get("app:1"))
