"""Container fixtures: specs on the busybox image, and a host leak check.

``container_spec(args)`` gives a spec running ``args`` on the session's busybox
image with a fresh scratch folder.  ``created`` tracks every container a test
makes and releases it at teardown even when the test failed.  ``no_leaks``
snapshots what a container can leave on the host (mounts under the state root,
loop devices over the test's files, runtime containers, state rows) before the
test and checks the same snapshot after it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hcsoci import context, images, oci
from hcsoci.container import Container
from hcsoci.create import CreateOptions, create_container
from hcsoci.mounts import loop_devices_backed_by
from hcsoci.resources import Resources, release_resources
from hcsoci.store import open_store, state_root

SpecFactory = Callable[..., oci.Spec]


@pytest.fixture
def scratch_root(tmp_path: Path) -> Path:
    """Where a test's scratch folders and disk images live."""
    path = tmp_path / "scratch"
    path.mkdir()
    return path


@pytest.fixture
def container_spec(busybox_image: images.Image, scratch_root: Path) -> SpecFactory:
    """``container_spec(args, **spec_for_image kwargs)``: a spec on busybox with its own scratch."""

    def make(args: list[str], **kwargs: Any) -> oci.Spec:
        spec = images.spec_for_image(busybox_image, args, **kwargs)
        scratch = tempfile.mkdtemp(prefix="scratch-", dir=scratch_root)
        assert spec.windows is not None and spec.windows.layer_folders is not None
        spec.windows.layer_folders = [*spec.windows.layer_folders, scratch]
        return spec

    return make


@dataclass
class Created:
    """Creates containers for a test and releases whatever is left at teardown."""

    made: list[tuple[Container, Resources]]

    def __call__(self, spec: oci.Spec, **options: Any) -> tuple[Container, Resources]:
        container, resources = create_container(
            context.background(), CreateOptions(spec=spec, **options)
        )
        assert isinstance(container, Container)  # these tests place on this machine
        self.made.append((container, resources))
        return container, resources


@pytest.fixture
def created(no_leaks: Callable[[], HostSnapshot]) -> Iterator[Created]:
    """``created(spec, **CreateOptions fields)``; everything is released at teardown.

    Depends on :func:`no_leaks`, so the leak check runs after this release.
    """
    tracker = Created([])
    try:
        yield tracker
    finally:
        for container, resources in reversed(tracker.made):
            container.close()
            release_resources(context.background(), resources, None, True)


@dataclass(frozen=True)
class HostSnapshot:
    """What containers can leave behind on the host."""

    mounts: tuple[str, ...]
    loop_devices: tuple[str, ...]
    runtime_containers: tuple[str, ...]
    container_rows: tuple[str, ...]
    resource_rows: tuple[str, ...]


def host_snapshot(*watched_dirs: Path) -> HostSnapshot:
    """Mounts under the state root or ``watched_dirs``, loop devices over files there, etc."""
    roots = [str(state_root()), *(str(d) for d in watched_dirs)]
    with open("/proc/self/mountinfo", encoding="utf-8") as mountinfo:
        mounts = [
            line.split()[4]
            for line in mountinfo
            if any(line.split()[4].startswith(root) for root in roots)
        ]
    loops: list[str] = []
    for directory in watched_dirs:
        for dirpath, _, files in os.walk(directory):
            for name in files:
                loops += loop_devices_backed_by(Path(dirpath) / name)
    runtime_dir = state_root() / "runc"
    runtime = sorted(os.listdir(runtime_dir)) if runtime_dir.is_dir() else []
    store = open_store()
    rows = [row["id"] for row in store.query("SELECT id FROM containers WHERE host = ''")]
    resources = [
        f"{row['owner_id']}:{row['kind']}"
        for row in store.query("SELECT owner_id, kind FROM resources")
        if row["owner_id"] in rows or row["kind"] in _CONTAINER_KINDS
    ]
    return HostSnapshot(
        tuple(sorted(mounts)), tuple(sorted(loops)), tuple(runtime), tuple(sorted(rows)),
        tuple(sorted(resources)),
    )  # fmt: skip


_CONTAINER_KINDS = (
    "container-record",
    "bundle-dir",
    "layer-mount",
    "runtime-container",
    "host-mount",
    "loop-device",
    "automanaged-file",
    "sandbox-scratch",
    "limit-cgroup",
)


@pytest.fixture
def no_leaks(scratch_root: Path) -> Iterator[Callable[[], HostSnapshot]]:
    """Fails the test if it leaves a mount, loop device, runtime container or state row.

    Yields a function returning the current snapshot, for checks mid-test.
    """
    before = host_snapshot(scratch_root)
    yield lambda: host_snapshot(scratch_root)
    after = host_snapshot(scratch_root)
    assert after == before, f"leaked: before={before} after={after}"


CLI = Callable[..., "subprocess.CompletedProcess[str]"]


@pytest.fixture
def hcsoci(
    busybox_image: images.Image,
    session_image_store: images.ImageStore,
    no_leaks: Callable[[], HostSnapshot],
) -> Iterator[CLI]:
    """Run `hcsoci ARGS...` (a real process) on the session's image store; ``check`` by default.

    ``hcsoci gc`` runs at teardown, then nothing may be left (``no_leaks``).
    """
    env = {**os.environ, "HCSOCI_IMAGES": str(session_image_store.root)}

    def run(*args: str, check: bool = True, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "hcsoci.cli.main", *args]
        kwargs.setdefault("timeout", 60)
        environment = {**env, **kwargs.pop("env", {})}
        result = subprocess.run(command, env=environment, capture_output=True, text=True, **kwargs)
        if check and result.returncode != 0:
            raise AssertionError(f"{args}: exit {result.returncode}: {result.stderr}")
        return result

    yield run
    run("gc", check=False)
