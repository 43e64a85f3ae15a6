"""Read-only layers on vPMEM devices (``UVMOptions(layer_device="vpmem")``), mounted with DAX.

One VM for the module, with two vPMEM slots.  virtio-pmem devices cannot be
unplugged, so a released layer's device is parked (unmounted, kept) and
mounted again by the next container on the same layer; a layer that finds
every slot taken goes over SCSI.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fixtures_uvm import assert_vm_gone
from hcsoci import CreateOptions, command, context, create_container, oci, release_resources
from hcsoci.errors import InvalidArgumentError, NotFoundError
from hcsoci.resources import Resources
from hcsoci.uvm import BootAssets, UtilityVM, UVMOptions, create
from hcsoci.uvm.container import VMContainer
from hcsoci.uvm.layer_images import layer_image
from hcsoci.uvm.scsi import VMSCSIDisk
from hcsoci.uvm.vpmem import VMVPMemDevice

SpecFactory = Callable[..., oci.Spec]
CTX = context.background()


@pytest.fixture(scope="module")
def vm(uvm_assets: BootAssets, layer_cache: Path) -> Iterator[UtilityVM]:
    options = UVMOptions(
        id="tp-" + os.urandom(4).hex(), owner="pytest", layer_device="vpmem", vpmem_slots=2
    )
    machine = create(CTX, options)
    machine.start(CTX)
    try:
        yield machine
    finally:
        machine.close()
        assert_vm_gone(machine)


def guest_mounts(vm: UtilityVM) -> dict[str, str]:
    """Mount point -> options, in the guest."""
    lines = command(vm, "cat", "/proc/self/mounts").output().decode().splitlines()
    return {line.split()[1]: line.split()[3] for line in lines}


def run(vm: UtilityVM, spec: oci.Spec) -> tuple[VMContainer, Resources]:
    container, resources = create_container(CTX, CreateOptions(spec=spec, hosting_system=vm))
    assert isinstance(container, VMContainer)
    return container, resources


def test_a_layer_on_vpmem_is_mounted_with_dax_and_shared(
    vm: UtilityVM, container_spec: SpecFactory
) -> None:
    first, first_resources = run(vm, container_spec(["sleep", "300"]))
    second, second_resources = run(vm, container_spec(["sleep", "300"]))
    try:
        assert len(first_resources.find(VMVPMemDevice)) == 1
        [scratch] = first_resources.find(VMSCSIDisk)  # only the scratch goes over SCSI
        assert scratch.host_path.endswith("/sandbox.img")
        [device] = vm.vpmem.devices()
        assert device.ref_count == 2 and device.dax
        assert "dax=always" in guest_mounts(vm)[device.uvm_path]
        first.start(CTX)
        assert command(first, "cat", "/etc/passwd").output().startswith(b"root:")
        # read-only all the way down: the guest cannot write the layer
        probe = f"touch {device.uvm_path}/x 2>/dev/null; echo $?"
        assert command(vm, "sh", "-c", probe).output() == b"1\n"
    finally:
        for container, resources in ((first, first_resources), (second, second_resources)):
            container.close()
            release_resources(CTX, resources, vm, True)
    [parked] = vm.vpmem.devices()
    assert parked.ref_count == 0 and parked.uvm_path == ""
    assert not [m for m in guest_mounts(vm) if m.startswith("/run/gcs")]
    # the next container on that layer mounts the parked device again: no new slot
    again, again_resources = run(vm, container_spec(["true"]))
    try:
        assert [d.index for d in vm.vpmem.devices()] == [parked.index]
        assert vm.vpmem.devices()[0].ref_count == 1
    finally:
        again.close()
        release_resources(CTX, again_resources, vm, True)


def test_a_layer_that_finds_the_slots_taken_goes_over_scsi(
    vm: UtilityVM, container_spec: SpecFactory, tmp_path: Path
) -> None:
    spec = container_spec(["sleep", "300"])
    assert spec.windows is not None and spec.windows.layer_folders is not None
    extra_layers = []
    for name in ("one", "two"):
        layer = tmp_path / f"layer-{name}"
        (layer / "extra").mkdir(parents=True)
        (layer / "extra" / name).write_text(f"{name}\n")
        extra_layers.append(str(layer))
    spec.windows.layer_folders = [*extra_layers, *spec.windows.layer_folders]
    container, resources = run(vm, spec)  # three layers, two slots (one parked already)
    try:
        assert len(vm.vpmem.devices()) == 2
        assert len(resources.find(VMSCSIDisk)) == 2  # a layer and the scratch
        assert len(resources.find(VMVPMemDevice)) == 2
        container.start(CTX)
        assert command(container, "cat", "/extra/one", "/extra/two").output() == b"one\ntwo\n"
    finally:
        container.close()
        release_resources(CTX, resources, vm, True)
    assert vm.scsi.attachments() == []
    assert all(device.ref_count == 0 for device in vm.vpmem.devices())


def test_bad_vpmem_input(vm: UtilityVM, busybox_image: object, tmp_path: Path) -> None:
    odd = tmp_path / "odd.ext4"
    odd.write_bytes(b"\0" * 4096)
    with pytest.raises(InvalidArgumentError, match="not a multiple of 2 MiB"):
        vm.add_vpmem(CTX, str(odd), "/run/odd")
    with pytest.raises(NotFoundError, match="is not an image file"):
        vm.add_vpmem(CTX, str(tmp_path / "missing.ext4"), "/run/missing")
    with pytest.raises(InvalidArgumentError, match=r"UVMOptions\.layer_device"):
        UVMOptions(layer_device="floppy").validated()


def test_layer_images_are_vpmem_ready(busybox_image: object, tmp_path: Path) -> None:
    from hcsoci import images

    assert isinstance(busybox_image, images.Image)
    layer = tmp_path / "layer"
    shutil.copytree(busybox_image.layer_folders[0], layer, symlinks=True)
    image = layer_image(str(layer), tmp_path / "cache")
    assert image.stat().st_size % (2 << 20) == 0
    assert image.stat().st_mode & 0o777 == 0o600
