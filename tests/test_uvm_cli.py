"""``hcsoci uvm``: a VM created by one command serves the next ones, then goes away."""

from __future__ import annotations

import secrets
import subprocess
import sys
from collections.abc import Iterator

import pytest

from fixtures_uvm import qemu_processes
from hcsoci.store import open_store, state_root


def hcsoci(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "hcsoci.cli.main", *args],
        input=stdin,
        capture_output=True,
        timeout=300,
    )


@pytest.fixture
def cli_vm_id() -> Iterator[str]:
    """A VM id for the test; whatever the test left of that VM is removed."""
    uvm_id = "cli-" + secrets.token_hex(4)
    try:
        yield uvm_id
    finally:
        if open_store().query("SELECT 1 FROM vms WHERE id = ?", (uvm_id,)):
            hcsoci("uvm", "rm", uvm_id)
        assert qemu_processes(uvm_id) == []
        assert not (state_root() / "uvm" / uvm_id).exists()


def test_create_list_exec_rm(cli_vm_id: str) -> None:
    created = hcsoci("uvm", "create", "--id", cli_vm_id)
    assert created.returncode == 0, created.stderr.decode()
    assert created.stdout.decode().strip() == cli_vm_id
    assert b"booting" not in created.stderr  # not a terminal: quiet
    assert len(qemu_processes(cli_vm_id)) == 1  # it outlived the command

    listed = hcsoci("uvm", "list")
    assert cli_vm_id in listed.stdout.decode()

    echoed = hcsoci("uvm", "exec", cli_vm_id, "--", "sh", "-c", "cat; exit 7", stdin=b"piped")
    assert echoed.returncode == 7
    assert echoed.stdout == b"piped"

    removed = hcsoci("uvm", "rm", cli_vm_id)
    assert removed.returncode == 0, removed.stderr.decode()
    assert qemu_processes(cli_vm_id) == []
    assert hcsoci("uvm", "rm", cli_vm_id).returncode == 1  # unknown id: a clear error


def test_create_on_a_terminal_says_what_it_waits_for(cli_vm_id: str) -> None:
    """On a terminal the start is visible: restoring or booting, then when its agent answered."""
    import os
    import shlex
    import sys

    line = shlex.join([sys.executable, "-m", "hcsoci.cli.main", "uvm", "create", "--id", cli_vm_id])
    done = subprocess.run(
        ["script", "-qec", line, "/dev/null"], capture_output=True, timeout=300, env=os.environ
    )
    try:
        assert done.returncode == 0, done.stdout
        text = done.stdout.decode(errors="replace")
        # A restore when a template exists, a boot otherwise.
        said = (f"hcsoci: {what} utility VM {cli_vm_id} ..." for what in ("restoring", "booting"))
        assert any(phrase in text for phrase in said), text
        assert f"hcsoci: utility VM {cli_vm_id} ready (" in text and "answered after" in text
    finally:
        hcsoci("uvm", "rm", cli_vm_id)


def test_exec_in_unknown_vm_is_a_clear_error() -> None:
    result = hcsoci("uvm", "exec", "no-such-vm", "--", "true")
    assert result.returncode == 1
    assert b"no utility VM with id 'no-such-vm'" in result.stderr


CONTROLLER = """
import os, signal, sys
from hcsoci import context
from hcsoci.uvm import UVMOptions, create
vm = create(context.background(), UVMOptions(id=sys.argv[1], owner="doomed"))
vm.start(context.background())
os.kill(os.getpid(), signal.SIGKILL)  # the controller dies; QEMU (own session) runs on
"""


def test_gc_reaps_a_running_vm_whose_controller_was_killed(cli_vm_id: str) -> None:
    doomed = subprocess.run(
        [sys.executable, "-c", CONTROLLER, cli_vm_id], capture_output=True, timeout=300
    )
    assert doomed.returncode == -9, doomed.stderr.decode()
    assert qemu_processes(cli_vm_id), "QEMU should outlive its killed controller"
    collected = hcsoci("gc")
    assert collected.returncode == 0, collected.stderr.decode()
    assert cli_vm_id in collected.stdout.decode()
    assert qemu_processes(cli_vm_id) == []
    assert open_store().query("SELECT 1 FROM vms WHERE id = ?", (cli_vm_id,)) == []
