"""A guest agent that stops answering, then crashes: clear errors, never a hang.

The VM here is this module's own: the test breaks its agent on purpose.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from fixtures_uvm import MakeUVM, assert_vm_gone, qemu_processes
from hcsoci import ProcessParameters, command, context
from hcsoci.errors import NotFoundError
from hcsoci.gcs import BridgeClosedError, GuestTimeoutError
from hcsoci.store import open_store
from hcsoci.uvm import BootAssets, UVMOptions, UVMStartError, create, reap_dead_vms, remove_vm
from hcsoci.uvm.vm import hand_over_vm


def test_stopped_then_crashed_agent(make_uvm: MakeUVM) -> None:
    vm = make_uvm(request_timeout=3.0)
    ctx = context.background()
    agent = vm.gcs.agent_pid

    # Freeze the agent for a while: requests time out instead of hanging.  The
    # freezer is a guest process of its own (kept open, not waited for), and it
    # waits a moment so the agent's answer to its creation gets out first.
    freezer = vm.create_process(
        ctx,
        ProcessParameters(
            command_args=["sh", "-c", f"sleep 1; kill -STOP {agent}; sleep 12; kill -CONT {agent}"],
            environment={"PATH": "/bin"},
        ),
    )
    deadline = time.monotonic() + 60
    with pytest.raises(GuestTimeoutError, match="no answer"):
        while time.monotonic() < deadline:  # until the freezer has stopped it
            vm.gcs_request(ctx, "ping", {})
            time.sleep(0.2)
    deadline = time.monotonic() + 60
    while True:  # thawed: it answers again
        try:
            vm.gcs_request(ctx, "ping", {})
            break
        except GuestTimeoutError:
            assert time.monotonic() < deadline, "the agent never came back"

    # Kill it: waiters and new requests get BridgeClosedError.
    sleeper = vm.create_process(
        ctx, ProcessParameters(command_args=["sleep", "600"], environment={"PATH": "/bin"})
    )
    # The kill waits a moment, so the agent answers the killer's own creation first
    # (the guest's busybox sh starts at once: it would win the race).
    command(vm, "sh", "-c", f"sleep 1; kill -KILL {agent}").start()
    with pytest.raises(BridgeClosedError):
        sleeper.wait()
    with pytest.raises(BridgeClosedError):
        command(vm, "true").run()
    sleeper.close()
    freezer.close()

    # The VM can still be terminated, and leaves nothing behind.
    vm.close()
    assert_vm_gone(vm)


def test_killed_qemu_is_reaped(make_uvm: MakeUVM) -> None:
    vm = make_uvm()
    os.kill(vm.pid(), signal.SIGKILL)  # a real fault: QEMU dies under its controller
    vm.wait()
    with pytest.raises(BridgeClosedError):
        command(vm, "true").run()
    assert vm.id() in reap_dead_vms()
    assert_vm_gone(vm)
    vm.close()  # the handle still closes quietly


def test_a_vm_handed_over_before_it_started_is_reaped(uvm_assets: BootAssets) -> None:
    vm = create(context.background(), UVMOptions(owner="pytest"))
    hand_over_vm(vm.id())  # nobody can start it now: open_vm needs a running QEMU
    assert vm.id() in reap_dead_vms()
    assert not vm.state_dir.exists()
    assert vm.id() not in reap_dead_vms()


def test_agent_that_dies_while_booting_fails_the_start_at_once(uvm_assets: BootAssets) -> None:
    # A real fault: the guest is told to run an agent file its root does not have.
    options = UVMOptions(
        id="t-" + secrets.token_hex(4),
        owner="pytest",
        boot_timeout=300.0,
        kernel_args="hcsoci.agent=/gone/agent.py",
    )
    vm = create(context.background(), options)
    with pytest.raises(UVMStartError, match="agent exited while the VM booted") as info:
        vm.start(context.background())
    assert "hcsoci-stage2: guest agent exited" in str(info.value)  # the console's tail
    assert_vm_gone(vm)


_STALLED_HOST = textwrap.dedent(
    """
    import sys
    from hcsoci import command, context
    from hcsoci.uvm import UVMOptions, create

    ctx = context.background()
    options = UVMOptions(owner="pytest", heartbeat_interval=0.5, heartbeat_misses=4)
    with create(ctx, options) as vm:
        vm.start(ctx)
        guest = command(vm, "sleep", "8")
        guest.start()
        print("ready", vm.id(), flush=True)
        try:
            guest.wait()
            print("exited", guest.exit_state.exit_code, flush=True)
        except Exception as err:
            print("failed", type(err).__name__, err, flush=True)
    """
)


def test_a_host_process_that_stood_still_keeps_its_bridge(uvm_assets: BootAssets) -> None:
    """A host stall is not a dead guest: the guest had no ping to answer meanwhile.

    The process holding the bridge is stopped (SIGSTOP) for twice the
    heartbeat's silence bound while its guest runs on; once it runs again it
    must ping the guest, not declare it dead (it used to, at once).
    """
    child = subprocess.Popen(
        [sys.executable, "-c", _STALLED_HOST], stdout=subprocess.PIPE, text=True
    )
    vm_id = ""
    try:
        assert child.stdout is not None
        ready = child.stdout.readline().split()
        assert ready[:1] == ["ready"], ready
        vm_id = ready[1]
        time.sleep(0.5)
        child.send_signal(signal.SIGSTOP)
        time.sleep(4.0)  # the bound is 0.5 s * 4 misses
        child.send_signal(signal.SIGCONT)
        result = child.stdout.readline().strip()
        assert result == "exited 0", result
        assert child.wait(60) == 0
    finally:
        child.kill()
        child.wait()
        if vm_id:
            with contextlib.suppress(NotFoundError):  # gone already: the child closed it
                remove_vm(vm_id)
    assert qemu_processes(vm_id) == []
    assert open_store().query("SELECT id FROM vms WHERE id = ?", (vm_id,)) == []
