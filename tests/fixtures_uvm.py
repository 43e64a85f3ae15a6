"""Utility VM fixtures: boot assets, one shared VM per test module, leak checks.

``uvm`` boots one VM per test module (booting costs seconds under TCG) and
terminates it at the end of the module, then checks that no QEMU process,
state directory, record or host mount of it is left.  ``make_uvm`` is for
tests that need a VM of their own (crash tests, templates); it has the same
checks, and ``make_uvm(start=False, ...)`` leaves the start to the test.
Both start with ``UVMOptions.template`` from ``$HCSOCI_TEST_UVM_TEMPLATE``
(default ``auto``: restored from the template once the first VM saved it).
"""

from __future__ import annotations

import os
import secrets
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hcsoci import context
from hcsoci.mounts import mounts_under
from hcsoci.store import open_store
from hcsoci.uvm import BootAssets, UtilityVM, UVMOptions, build_assets, create

MakeUVM = Callable[..., UtilityVM]


@pytest.fixture(scope="session")
def uvm_assets() -> BootAssets:
    """The boot assets (built once per machine, then reused from the cache)."""
    return build_assets()


def qemu_processes(uvm_id: str) -> list[int]:
    """Pids of QEMU processes running the VM ``uvm_id``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        is_qemu = bool(cmdline) and cmdline[0].endswith(b"qemu-system-x86_64")
        if is_qemu and f"hcsoci-{uvm_id},".encode() in b" ".join(cmdline):
            found.append(int(entry))
    return found


def assert_vm_gone(vm: UtilityVM) -> None:
    """Nothing of ``vm`` is left on the host."""
    assert qemu_processes(vm.id()) == [], f"qemu of {vm.id()} still running"
    assert not vm.state_dir.exists(), f"{vm.state_dir} left behind"
    assert mounts_under(vm.state_dir) == []
    rows = open_store().query("SELECT id FROM vms WHERE id = ?", (vm.id(),))
    assert rows == [], f"vms row of {vm.id()} left behind"


def _made(**overrides: Any) -> UtilityVM:
    # The VM test modules run on restored VMs (once a template exists);
    # HCSOCI_TEST_UVM_TEMPLATE=never runs them on booted ones.
    overrides.setdefault("template", os.environ.get("HCSOCI_TEST_UVM_TEMPLATE", "auto"))
    options = UVMOptions(id="t-" + secrets.token_hex(4), owner="pytest", **overrides)
    return create(context.background(), options)


@pytest.fixture(scope="module")
def uvm(uvm_assets: BootAssets) -> Iterator[UtilityVM]:
    """One running VM shared by the tests of a module (3 SCSI targets, 4 Plan9 slots)."""
    vm = _made(scsi_luns=3, plan9_slots=4, request_timeout=60.0)
    try:
        vm.start(context.background())
        yield vm
    finally:
        vm.close()
        assert_vm_gone(vm)


@pytest.fixture
def make_uvm(uvm_assets: BootAssets) -> Iterator[MakeUVM]:
    """``make_uvm(start=True, **UVMOptions fields)``: a VM of the test's own, closed at teardown.

    With ``start=False`` it is only made: the test starts it (and may expect that to fail).
    """
    made: list[UtilityVM] = []

    def make(start: bool = True, **overrides: Any) -> UtilityVM:
        vm = _made(**overrides)
        made.append(vm)
        if start:
            vm.start(context.background())
        return vm

    try:
        yield make
    finally:
        for vm in made:
            vm.close()
        for vm in made:
            assert_vm_gone(vm)


@pytest.fixture
def ext4_image(tmp_path: Path) -> Callable[[dict[str, bytes]], Path]:
    """``ext4_image(files)``: a small ext4 image file holding ``files`` (name -> content)."""
    count = 0

    def make(files: dict[str, bytes]) -> Path:
        nonlocal count
        count += 1
        source = tmp_path / f"image{count}-src"
        source.mkdir()
        for name, content in files.items():
            (source / name).write_bytes(content)
        image = tmp_path / f"image{count}.ext4"
        subprocess.run(
            ["mke2fs", "-q", "-F", "-t", "ext4", "-d", str(source), str(image), "8M"],
            check=True,
        )
        return image

    return make


@pytest.fixture(scope="module")
def layer_cache() -> Iterator[Path]:
    """A private layer-image cache for the module (``$HCSOCI_LAYER_CACHE``)."""
    path = Path(tempfile.mkdtemp(prefix="hcsoci-layer-cache-"))
    try:
        with pytest.MonkeyPatch.context() as env:
            env.setenv("HCSOCI_LAYER_CACHE", str(path))
            yield path
    finally:
        for image in path.iterdir():
            image.unlink()
        path.rmdir()
