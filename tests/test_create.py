"""create_container: root file systems, mounts, bad input, release, and many cycles."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from fixtures_containers import Created, HostSnapshot, SpecFactory
from hcsoci import context, oci
from hcsoci.cmd import Cmd
from hcsoci.create import CreateOptions, create_container
from hcsoci.errors import AlreadyExistsError, InvalidArgumentError, NotFoundError
from hcsoci.resources import release_resources
from hcsoci.store import open_store

CTX = context.background()


def run_init(container: object) -> tuple[int, bytes]:
    from hcsoci.container import Container

    assert isinstance(container, Container)
    process = container.create_process(CTX, None)
    try:
        out = process.stdio()[1]
        assert out is not None
        output = out.read()
        process.wait()
        return process.exit_code(), output
    finally:
        process.close()


def make_ext4(path: Path, files: dict[str, bytes], tmp: Path) -> Path:
    content = tmp / f"{path.name}-content"
    content.mkdir()
    for name, data in files.items():
        (content / name).write_bytes(data)
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-d", str(content), str(path), "4M"],
        check=True,
        capture_output=True,
    )
    return path


def test_layers_overlay_with_whiteouts_and_the_layers_stay_untouched(
    created: Created, container_spec: SpecFactory, tmp_path: Path
) -> None:
    # A top layer over busybox: deletes /etc/hostname (whiteout), makes /data opaque.
    lower = tmp_path / "lower"
    (lower / "data").mkdir(parents=True)
    (lower / "data" / "old").write_text("old")
    (lower / "gone").write_text("gone")
    upper_layer = tmp_path / "upper-layer"
    (upper_layer / "data").mkdir(parents=True)
    (upper_layer / "data" / "new").write_text("new")
    os.setxattr(upper_layer / "data", "trusted.overlay.opaque", b"y")
    os.mknod(upper_layer / "gone", 0o600 | 0o020000, os.makedev(0, 0))  # whiteout: char 0/0

    spec = container_spec(
        ["sh", "-c", "ls /data; ls /gone 2>&1 || true; echo written > /data/new; echo x > /fresh"]
    )
    assert spec.windows is not None and spec.windows.layer_folders is not None
    *image_layers, scratch = spec.windows.layer_folders
    spec.windows.layer_folders = [str(upper_layer), str(lower), *image_layers, scratch]
    container, _ = created(spec)
    code, output = run_init(container)
    assert code == 0
    assert output.splitlines()[0] == b"new"
    assert b"No such file" in output
    # The writes landed in scratch; the read-only layers are as they were.
    assert (upper_layer / "data" / "new").read_text() == "new"
    assert (Path(scratch) / "upper" / "data" / "new").read_text() == "written\n"
    assert (Path(scratch) / "upper" / "fresh").read_text() == "x\n"
    assert (lower / "gone").read_text() == "gone"


def test_read_only_bind_mount(
    created: Created, container_spec: SpecFactory, tmp_path: Path
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "file").write_text("from the host")
    spec = container_spec(["sh", "-c", "cat /mnt/shared/file; echo; touch /mnt/shared/new"])
    spec.mounts = [
        *(spec.mounts or []),
        oci.Mount(destination="/mnt/shared", type="bind", source=str(shared), options=["ro"]),
    ]
    container, _ = created(spec)
    code, output = run_init(container)
    assert output == b"from the host\n"
    assert code != 0  # touch failed: read-only
    assert sorted(os.listdir(shared)) == ["file"]


@pytest.mark.parametrize("automanage", [False, True])
def test_virtual_disk_is_loop_mounted_and_released(
    created: Created,
    container_spec: SpecFactory,
    scratch_root: Path,
    tmp_path: Path,
    no_leaks: Callable[[], HostSnapshot],
    automanage: bool,
) -> None:
    image = make_ext4(scratch_root / "disk.img", {"hello": b"on the disk"}, tmp_path)
    spec = container_spec(["sh", "-c", "cat /disk/hello; echo; echo new > /disk/written"])
    kind = "automanage-virtual-disk" if automanage else "virtual-disk"
    spec.mounts = [
        *(spec.mounts or []),
        oci.Mount(destination="/disk", type=kind, source=str(image)),
    ]
    container, resources = created(spec)
    assert len(no_leaks().loop_devices) == 1
    code, output = run_init(container)
    assert (code, output) == (0, b"on the disk\n")
    release_resources(CTX, resources, None, True)
    assert no_leaks().loop_devices == ()
    assert image.exists() is not automanage


def test_read_only_virtual_disk(
    created: Created, container_spec: SpecFactory, scratch_root: Path, tmp_path: Path
) -> None:
    image = make_ext4(scratch_root / "ro.img", {"a": b"A"}, tmp_path)
    spec = container_spec(["sh", "-c", "cat /disk/a; touch /disk/b"])
    spec.mounts = [
        *(spec.mounts or []),
        oci.Mount(destination="/disk", type="virtual-disk", source=str(image), options=["ro"]),
    ]
    container, _ = created(spec)
    code, output = run_init(container)
    assert output.startswith(b"A") and code != 0


def test_root_path_without_layers(created: Created, busybox_image: object) -> None:
    from hcsoci import images

    assert isinstance(busybox_image, images.Image)
    spec = oci.default_spec(["sh", "-c", "echo from root.path; cat /etc/hostname"])
    spec.root = oci.Root(path=busybox_image.layer_folders[0], readonly=True)
    container, resources = created(spec, id="root-path-test", owner="tests")
    assert container.id() == "root-path-test"
    assert run_init(container) == (0, b"from root.path\nhcsoci\n")
    # The caller's own root is used as it is: its /etc/hostname is bound over, but
    # no mount point is made in it for the /etc files it does not have.
    assert not (Path(busybox_image.layer_folders[0]) / "etc" / "resolv.conf").exists()
    assert [item.kind for item in resources.items()] == [
        "container-record", "bundle-dir", "runtime-container",
    ]  # fmt: skip


def test_defaults_for_id_and_owner(created: Created, container_spec: SpecFactory) -> None:
    container, _ = created(container_spec(["true"]))
    assert len(container.id()) == 36  # a uuid
    row = open_store().query("SELECT owner, state FROM containers WHERE id = ?", (container.id(),))
    assert row[0]["owner"] and row[0]["state"] == "created"


def bad_input_cases(tmp_path: Path, spec: oci.Spec) -> list[tuple[str, oci.Spec, type, str]]:
    """(name, spec, error class, text the message must hold) for create failures."""
    assert spec.windows is not None and spec.windows.layer_folders is not None
    cases = []

    def variant(name: str, error: type, text: str) -> oci.Spec:
        copy = oci.decode_spec(oci.encode_spec(spec))
        cases.append((name, copy, error, text))
        return copy

    missing = variant("missing layer", NotFoundError, "spec.windows.layer_folders[0]")
    assert missing.windows is not None
    missing.windows.layer_folders = [str(tmp_path / "nope"), *spec.windows.layer_folders[-1:]]
    only_scratch = variant("no layer", InvalidArgumentError, "spec.windows.layer_folders")
    assert only_scratch.windows is not None
    only_scratch.windows.layer_folders = spec.windows.layer_folders[-1:]
    contradictory = variant("abs root + layers", InvalidArgumentError, "spec.root.path")
    contradictory.root = oci.Root(path=str(tmp_path))
    no_root = variant("no root", NotFoundError, "spec.root.path: '/no/such/root'")
    no_root.windows = None
    no_root.root = oci.Root(path="/no/such/root")
    relative = variant("relative root", InvalidArgumentError, "spec.root.path: 'rootfs'")
    relative.windows = None
    relative.root = oci.Root(path="rootfs")
    # Mount failures come after the overlay is mounted: it must be released.
    bind_missing = variant("bind source", NotFoundError, "spec.mounts[")
    bind_missing.mounts = [
        *(bind_missing.mounts or []),
        oci.Mount(destination="/x", type="bind", source=str(tmp_path / "absent")),
    ]
    bind_nosource = variant("bind no source", InvalidArgumentError, "mounts[0].source")
    bind_nosource.mounts = [oci.Mount(destination="/x", type="bind")]
    bad_type = variant("fs type", InvalidArgumentError, "type: 'nosuchfs'")
    bad_type.mounts = [oci.Mount(destination="/x", type="nosuchfs", source="none")]
    not_ext4 = tmp_path / "scratch" / "zeros.img"
    not_ext4.write_bytes(bytes(1 << 20))
    bad_disk = variant("not ext4", InvalidArgumentError, f"source: '{not_ext4}'")
    bad_disk.mounts = [oci.Mount(destination="/d", type="virtual-disk", source=str(not_ext4))]
    no_disk = variant("missing disk", NotFoundError, "spec.mounts[0].source")
    no_disk.mounts = [oci.Mount(destination="/d", type="virtual-disk", source="/no/disk.img")]
    no_process = variant("no process", InvalidArgumentError, "spec.process")
    no_process.process = None
    return cases


def test_bad_input_gives_clear_errors_and_leaks_nothing(
    container_spec: SpecFactory, tmp_path: Path, no_leaks: Callable[[], HostSnapshot]
) -> None:
    before = no_leaks()
    for name, spec, error, text in bad_input_cases(tmp_path, container_spec(["true"])):
        with pytest.raises(error) as info:
            create_container(CTX, CreateOptions(spec=spec))
        assert text in str(info.value), (name, str(info.value))
        assert len(info.value.resources) == 0, name  # type: ignore[attr-defined]
        assert no_leaks() == before, name
    with pytest.raises(InvalidArgumentError, match=r"CreateOptions\.spec"):
        create_container(CTX, CreateOptions())
    with pytest.raises(InvalidArgumentError, match=r"CreateOptions\.id: 'a/b'"):
        create_container(CTX, CreateOptions(id="a/b", spec=container_spec(["true"])))
    with pytest.raises(InvalidArgumentError, match="hosting_system"):
        create_container(CTX, CreateOptions(spec=container_spec(["true"]), hosting_system=object()))  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="runtime: 'nosuchc'"):
        create_container(CTX, CreateOptions(spec=container_spec(["true"]), runtime="nosuchc"))
    duplicated = container_spec(["true"])
    assert duplicated.linux is not None and duplicated.linux.namespaces is not None
    duplicated.linux.namespaces.append(oci.LinuxNamespace(type="pid"))
    with pytest.raises(oci.SpecError, match="pid"):  # contradictory: validated before anything
        create_container(CTX, CreateOptions(spec=duplicated))


def test_duplicate_id_is_refused_and_the_first_container_survives(
    created: Created, container_spec: SpecFactory
) -> None:
    first, _ = created(container_spec(["sh", "-c", "echo first"]), id="dup-test")
    with pytest.raises(AlreadyExistsError, match="dup-test"):
        create_container(CTX, CreateOptions(id="dup-test", spec=container_spec(["true"])))
    assert run_init(first) == (0, b"first\n")


def test_failure_keeps_resources_for_debugging_when_asked(
    container_spec: SpecFactory, tmp_path: Path, no_leaks: Callable[[], HostSnapshot]
) -> None:
    spec = container_spec(["true"])
    spec.mounts = [oci.Mount(destination="/x", type="bind", source=str(tmp_path / "absent"))]
    with pytest.raises(NotFoundError) as info:
        create_container(CTX, CreateOptions(spec=spec, do_not_release_resources_on_failure=True))
    resources = info.value.resources  # type: ignore[attr-defined]
    assert "layer-mount" in [item.kind for item in resources.items()]
    assert len(no_leaks().mounts) == 1  # the overlay is still there
    release_resources(CTX, resources, None, True)
    release_resources(CTX, resources, None, True)  # a second call is harmless


def test_fifty_cycles_leave_nothing(
    container_spec: SpecFactory, no_leaks: Callable[[], HostSnapshot]
) -> None:
    for cycle in range(50):
        container, resources = create_container(
            CTX, CreateOptions(spec=container_spec(["sh", "-c", f"echo {cycle}"]))
        )
        try:
            assert run_init(container) == (0, f"{cycle}\n".encode())
        finally:
            container.close()
            release_resources(CTX, resources, None, True)


def test_an_empty_root_path_is_filled_in_from_the_layers(
    created: Created, container_spec: SpecFactory
) -> None:
    """hcsshim's callers send ``root.path == ""`` with layer folders: the layers make the root."""
    spec = container_spec(["sh", "-c", "echo layered"])
    spec.root = oci.Root(path="", readonly=False)
    oci.validate_spec(spec)
    container, _ = created(spec)
    assert Cmd(container, None).output() == b"layered\n"
    alone = oci.default_spec(["true"])
    alone.root = oci.Root(path="")
    with pytest.raises(oci.SpecError, match=r"\$\.root\.path"):
        oci.validate_spec(alone)
