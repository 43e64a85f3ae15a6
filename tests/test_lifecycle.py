"""The container lifecycle every host shares, and cleanup that cannot be forgotten.

Operations in the wrong state raise a ``StateError`` that names the state and
change nothing; ``Container``, ``Resources`` and ``Cmd`` are context managers;
a handle dropped while it holds host resources warns with ``ResourceWarning``.
(The same rules run in the utility VM's containers: tests/test_uvm_containers.py.)
"""

from __future__ import annotations

import gc
import io
import warnings

import pytest

from fixtures_containers import Created, SpecFactory
from hcsoci import context, oci
from hcsoci.cmd import Cmd, ExitError, command
from hcsoci.container import Container
from hcsoci.create import CreateOptions, create_container
from hcsoci.errors import NotFoundError, StateError
from hcsoci.lifecycle import STATES
from hcsoci.local import LocalHost
from hcsoci.store import open_store

CTX = context.background()


def extra(args: list[str]) -> oci.Process:
    return oci.Process(args=args, cwd="/", env=["PATH=/bin"])


def test_each_state_refuses_what_it_must_and_names_itself(
    created: Created, container_spec: SpecFactory
) -> None:
    container, _ = created(container_spec(["sh", "-c", "read line"]))
    assert container.state_type() is STATES["created"]
    with pytest.raises(StateError, match=r"run a process in it \(state created\)"):
        container.create_process(CTX, extra(["true"]))
    with pytest.raises(StateError, match="not started"):
        container.terminate(CTX)
    with pytest.raises(StateError, match="not started"):
        container.wait()
    assert container.properties(CTX).state == "created"  # nothing changed

    init = Cmd(container, None)
    init.stdin = io.BytesIO(b"")  # EOF: `read` returns, the init exits 1
    init.start()
    with pytest.raises(StateError, match=r"has started already \(state (running|stopped)\)"):
        container.start(CTX)
    with pytest.raises(ExitError):
        init.wait()
    assert container.state_type() is STATES["stopped"]
    assert container.properties(CTX).exit_code == 1
    with pytest.raises(StateError, match=r"\(state stopped\)"):
        container.create_process(CTX, extra(["true"]))
    with pytest.raises(StateError, match="not running"):
        container.terminate(CTX)
    row = open_store().query("SELECT state FROM containers WHERE id = ?", (container.id(),))
    assert row[0]["state"] == "stopped"


def test_a_failed_launch_leaves_the_container_created(
    created: Created, container_spec: SpecFactory
) -> None:
    container, _ = created(container_spec(["/no/such/program"]))
    for _ in range(2):  # the same error each time: not "started already"
        with pytest.raises(NotFoundError, match="no/such/program"):
            container.start(CTX)
        assert container.state_type() is STATES["created"]


def test_with_container_kills_the_init_and_closes(
    created: Created, container_spec: SpecFactory
) -> None:
    container, _ = created(container_spec(["sleep", "600"]))
    with container as entered:
        assert entered is container
        container.start(CTX)
        assert container.properties(CTX).state == "running"
    assert container.state_type() is STATES["stopped"]
    assert container.properties(CTX).exit_code == 137


def test_with_resources_releases_them(container_spec: SpecFactory) -> None:
    container, resources = create_container(CTX, CreateOptions(spec=container_spec(["true"])))
    assert isinstance(container, Container)
    with container, resources:
        assert len(resources) > 0
        container.start(CTX)
        container.wait()
    assert len(resources) == 0
    assert open_store().query("SELECT 1 FROM containers WHERE id = ?", (container.id(),)) == []
    assert not container.bundle.exists()


def test_with_cmd_kills_and_waits() -> None:
    with command(LocalHost(), "sleep", "600") as cmd:
        cmd.start()
        process = cmd.process
        assert process is not None
    assert cmd.exit_state is not None and cmd.exit_state.exit_code == 137
    with command(LocalHost(), "true") as done:
        done.run()  # waited already: the exit does nothing more
    assert done.exit_state is not None and done.exit_state.exit_code == 0


def test_dropped_handles_warn_with_resource_warning(
    created: Created, container_spec: SpecFactory
) -> None:
    container, resources = create_container(CTX, CreateOptions(spec=container_spec(["true"])))
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            cmd = command(LocalHost(), "true")
            cmd.start()
            process = cmd.process
            del cmd
            gc.collect()
            assert process is not None
            process.wait()
            process.close()
            owner = resources.owner_id
            kinds_held = len(resources)
            del resources
            gc.collect()
        messages = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
        assert any(m.startswith("Cmd ") and "wait() releases it" in m for m in messages)
        assert any(f"resources of {owner} dropped unreleased" in m for m in messages), messages
        assert kinds_held > 0
    finally:
        # Release what the dropped object described, from the durable record.
        from hcsoci.gc import release_container

        container.close()
        release_container(CTX, container.id())
