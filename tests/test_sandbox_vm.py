"""The one-call sandbox API with ``vm=``: containers inside one utility VM, reused."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import hcsoci
from hcsoci import images
from hcsoci.store import open_store
from hcsoci.uvm import UtilityVM


@pytest.fixture
def image_env(
    session_image_store: images.ImageStore,
    busybox_image: images.Image,
    monkeypatch: pytest.MonkeyPatch,
    uvm: UtilityVM,
) -> Iterator[None]:
    monkeypatch.setenv("HCSOCI_IMAGES", str(session_image_store.root))
    yield
    rows = open_store().query("SELECT id FROM containers WHERE host = ?", (uvm.id(),))
    assert rows == [], "a VM container's record was left behind"


pytestmark = pytest.mark.usefixtures("image_env")


def test_runs_reuse_one_vm(uvm: UtilityVM, tmp_path: Path) -> None:
    (tmp_path / "in.txt").write_text("shared\n")
    first = hcsoci.run(
        "busybox",
        ["sh", "-c", "cat /data/in.txt; uname -r; echo err >&2; exit 4"],
        vm=uvm,
        mounts=[f"{tmp_path}:/data:ro"],
        timeout=120,
    )
    assert (first.returncode, first.stderr) == (4, b"err\n")
    lines = first.stdout.decode().splitlines()
    assert lines[0] == "shared"
    assert lines[1] == hcsoci.command(uvm, "uname", "-r").output().decode().strip()
    second = hcsoci.run("busybox", ["cat"], vm=uvm, stdin=b"again", read_only=True)
    assert second.stdout == b"again"
    assert hcsoci.command(uvm, "echo", "up").output() == b"up\n"  # the VM still runs


def test_timeout_in_the_vm(uvm: UtilityVM) -> None:
    result = hcsoci.run("busybox", ["sleep", "600"], vm=uvm, timeout=3)
    assert result.timed_out and not result.oom_killed


def test_container_in_the_vm(uvm: UtilityVM) -> None:
    with hcsoci.container("busybox", vm=uvm, tmpfs=["/w"], read_only=True) as box:
        assert box.run(["sh", "-c", "echo 7 > /w/n; cat /w/n"]).stdout == b"7\n"
        assert box.run(["cat", "/w/n"]).stdout == b"7\n"


def test_memory_limit_in_the_vm(uvm: UtilityVM) -> None:
    hog = "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo survived"
    killed = hcsoci.run("busybox", ["sh", "-c", hog], vm=uvm, memory="32m", timeout=120)
    assert killed.returncode == 137 and b"survived" not in killed.stdout
    assert killed.oom_killed and not killed.timed_out  # inferred in a VM: see RunResult
    fits = hcsoci.run("busybox", ["echo", "fits"], vm=uvm, memory="32m")
    assert (fits.stdout, fits.oom_killed) == (b"fits\n", False)
