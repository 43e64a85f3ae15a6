"""Kill -9 of a controller, then ``hcsoci gc``: nothing may be left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Protocol

import pytest

from fixtures_containers import HostSnapshot, SpecFactory
from fixtures_hns import HnsLab
from hcsoci import context, hns, oci
from hcsoci.controller import controller_alive, process_start_time
from hcsoci.gc import collect

# The controller: creates a container from the spec file, reports, then blocks.
# With HCSOCI_TEST_PAUSE_AT=mounted it blocks inside create_container instead.
CONTROLLER = textwrap.dedent(
    """
    import os, sys, threading
    from hcsoci import context, oci, CreateOptions, create_container
    spec = oci.decode_spec(open(sys.argv[1], "rb").read())
    options = CreateOptions(spec=spec, networks=sys.argv[2:])
    container, resources = create_container(context.background(), options)
    container.start(context.background())
    os.write(int(os.environ["HCSOCI_TEST_PAUSE_FD"]), b"started\\n")
    threading.Event().wait()
    """
)


class Controller(Protocol):
    def __call__(self, spec: oci.Spec, pause_at: str, networks: Sequence[str] = ()) -> str: ...


@pytest.fixture
def controller(tmp_path: Path) -> Iterator[Controller]:
    """``controller(spec, pause_at, networks)``: run a controller until it reports, then SIGKILL."""
    children: list[subprocess.Popen[bytes]] = []

    def run(spec: oci.Spec, pause_at: str, networks: Sequence[str] = ()) -> str:
        spec_file = tmp_path / f"spec-{len(children)}.json"
        spec_file.write_bytes(oci.encode_spec(spec))
        read_end, write_end = os.pipe()
        env = {**os.environ, "HCSOCI_TEST_PAUSE_FD": str(write_end)}
        if pause_at:
            env["HCSOCI_TEST_PAUSE_AT"] = pause_at
        child = subprocess.Popen(
            [sys.executable, "-c", CONTROLLER, str(spec_file), *networks],
            env=env,
            pass_fds=(write_end,),
        )
        children.append(child)
        os.close(write_end)
        with os.fdopen(read_end, "rb") as reports:
            reached = reports.readline().decode().strip()
        child.send_signal(signal.SIGKILL)
        child.wait()
        return reached

    try:
        yield run
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()


def hcsoci_gc() -> str:
    result = subprocess.run(
        [sys.executable, "-m", "hcsoci.cli.main", "gc"], capture_output=True, text=True, check=True
    )
    return result.stdout


def test_kill_mid_create_then_gc_leaves_nothing(
    controller: Controller,
    container_spec: SpecFactory,
    scratch_root: Path,
    tmp_path: Path,
    no_leaks: Callable[[], HostSnapshot],
) -> None:
    content = tmp_path / "disk-content"
    content.mkdir()
    disk = scratch_root / "disk.img"
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(content), str(disk), "4M"], check=True)
    spec = container_spec(["true"])
    spec.mounts = [
        *(spec.mounts or []),
        oci.Mount(destination="/disk", type="automanage-virtual-disk", source=str(disk)),
    ]
    before = no_leaks()
    assert controller(spec, "mounted") == "mounted"
    left = no_leaks()
    assert len(left.mounts) == len(before.mounts) + 2  # the overlay and the disk
    assert len(left.loop_devices) == 1
    assert len(left.container_rows) == len(before.container_rows) + 1
    assert left.container_rows[0] in hcsoci_gc()
    assert not disk.exists()  # automanaged: deleted on release


def test_kill_of_a_running_containers_controller_then_gc(
    controller: Controller,
    container_spec: SpecFactory,
    no_leaks: Callable[[], HostSnapshot],
) -> None:
    before = no_leaks()
    assert controller(container_spec(["sleep", "600"]), "") == "started"
    left = no_leaks()
    assert len(left.runtime_containers) == len(before.runtime_containers) + 1
    hcsoci_gc()
    assert no_leaks() == before
    # A second gc finds nothing to do.
    assert collect(context.background()) == []


def test_kill_of_a_controller_whose_container_has_its_own_endpoint_then_gc(
    controller: Controller,
    container_spec: SpecFactory,
    lab: HnsLab,
    no_leaks: Callable[[], HostSnapshot],
) -> None:
    network = lab.network()
    before = no_leaks()
    assert controller(container_spec(["sleep", "600"]), "", [network.name]) == "started"
    [endpoint] = hns.list_endpoints(network.id)
    assert endpoint.namespace  # attached to the container's namespace
    hcsoci_gc()
    assert hns.list_endpoints(network.id) == []
    assert no_leaks() == before


def test_controller_identity_guards_pid_reuse() -> None:
    me = os.getpid()
    start = process_start_time(me)
    assert start is not None
    assert controller_alive(me, start)
    assert not controller_alive(me, start + 1)  # same pid, another process
    assert controller_alive(0, 0)  # handed over to the user: never garbage


def test_a_controller_that_exited_but_is_not_reaped_is_not_alive() -> None:
    """A zombie (under an engine's subreaper shim that has not reaped it yet) runs no more."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        start = process_start_time(child.pid)
        assert start is not None and controller_alive(child.pid, start)
        os.kill(child.pid, signal.SIGKILL)
        os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # exited, still unreaped
        assert process_start_time(child.pid) is None
        assert not controller_alive(child.pid, start)
    finally:
        child.kill()
        child.wait()


def test_every_resource_kind_is_registered_in_a_fresh_process() -> None:
    """hcsoci.resource_kinds lists every module that defines a kind: none is found only by luck."""
    import ast
    import subprocess
    import sys
    from pathlib import Path

    import hcsoci

    defined = set()
    for path in Path(hcsoci.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                for item in node.body:
                    if (
                        isinstance(item, ast.Assign)
                        and any(isinstance(t, ast.Name) and t.id == "kind" for t in item.targets)
                        and isinstance(item.value, ast.Constant)
                        and item.value.value
                    ):
                        defined.add(item.value.value)
    probe = (
        "from hcsoci import resource_kinds, resources; "
        "print(' '.join(sorted(resources.resource_kinds())))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert set(done.stdout.split()) == defined
