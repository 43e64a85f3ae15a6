"""``hcsoci uvm ...``: build the boot assets, create, list, remove and exec in utility VMs."""

from __future__ import annotations

import sys
import time

import click
from rich.console import Console
from rich.table import Table

from hcsoci import context
from hcsoci.cli.common import fail, remove_each, start_vm_visibly
from hcsoci.cmd import ExitError, command
from hcsoci.errors import HcsociError
from hcsoci.uvm import (
    UVMOptions,
    build_assets,
    create,
    ensure_template,
    hand_over_vm,
    list_vms,
    open_vm,
    remove_vm,
)
from hcsoci.uvm.accel import resolve_accel
from hcsoci.uvm.options import TEMPLATE_MODES


@click.group("uvm")
def uvm_group() -> None:
    """Utility VMs: QEMU guests that isolate containers."""


@uvm_group.command("build-assets")
@click.option("--gzip", "compress", is_flag=True, help="Gzip the initramfs (slower boot).")
@click.option("--no-probe", is_flag=True, help="Do not probe whether KVM boots here.")
@click.option("--no-template", is_flag=True, help="Do not boot and save the default VM template.")
def build_assets_command(compress: bool, no_probe: bool, no_template: bool) -> None:
    """Build (or reuse) the guest kernel + initramfs and the default VM template."""
    try:
        assets = build_assets(compress=compress)
        click.echo(f"boot assets: {assets.directory}")
        if not no_probe:
            click.echo(f"accelerator for 'auto': {resolve_accel('auto', assets)}")
        if not no_template:
            click.echo(f"template: {ensure_template(context.background())}")
    except HcsociError as err:
        fail(err)


@uvm_group.command("create")
@click.option("--id", "uvm_id", default="", help="VM id (default: generated).")
@click.option("--memory", "memory_mb", default=1024, show_default=True, help="Memory, MiB.")
@click.option(
    "--cpus",
    "cpu_count",
    type=click.IntRange(0, 64),
    default=0,
    show_default=True,
    help="Virtual CPUs (0: 2 under KVM, 1 under TCG).",
)
@click.option(
    "--accel", type=click.Choice(["auto", "kvm", "tcg"]), default="auto", show_default=True
)
@click.option("--boot-timeout", default=120.0, show_default=True, help="Seconds.")
@click.option(
    "--template",
    type=click.Choice(TEMPLATE_MODES),
    default="auto",
    show_default=True,
    help="Restore from the template (auto: when one exists), never, or require it.",
)
def create_command(
    uvm_id: str, memory_mb: int, cpu_count: int, accel: str, boot_timeout: float, template: str
) -> None:
    """Start (restore or boot) a VM that keeps running after this command; print its id."""
    ctx = context.background()
    options = UVMOptions(
        id=uvm_id,
        owner="hcsoci-cli",
        memory_mb=memory_mb,
        cpu_count=cpu_count,
        accel=accel,
        boot_timeout=boot_timeout,
        template=template,
    )
    try:
        vm = create(ctx, options)
        start_vm_visibly(ctx, vm)
        hand_over_vm(vm.id())
        vm.detach()
    except HcsociError as err:
        fail(err)
    click.echo(vm.id())


@uvm_group.command("list")
def list_command() -> None:
    """List the recorded VMs."""
    table = Table("ID", "STATE", "PID", "ACCEL", "AGE", "CONSOLE", box=None)
    for record in list_vms():
        state = record["state"] if record["alive"] else "dead"
        age = f"{time.time() - float(record['created_at']):.0f}s"
        table.add_row(
            record["id"],
            state,
            str(record["pid"]),
            record["accel"],
            age,
            f"{record['state_dir']}/logs/console.log",
        )
    Console().print(table)


@uvm_group.command("rm")
@click.argument("uvm_ids", nargs=-1, required=True)
def rm_command(uvm_ids: tuple[str, ...]) -> None:
    """Kill VMs and release their host state."""
    remove_each(uvm_ids, remove_vm, echo=False)


@uvm_group.command("exec", context_settings={"ignore_unknown_options": True})
@click.argument("uvm_id")
@click.argument("args", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_command(uvm_id: str, args: tuple[str, ...]) -> None:
    """Run a command in a VM's own OS with this terminal's stdio: exec ID -- CMD..."""
    ctx = context.background()
    try:
        vm = open_vm(ctx, uvm_id)
    except HcsociError as err:
        fail(err)
    code = 0
    try:
        cmd = command(vm, args[0], *args[1:])
        cmd.stdin = None if sys.stdin.isatty() else sys.stdin.buffer
        cmd.stdout = sys.stdout.buffer
        cmd.stderr = sys.stderr.buffer
        cmd.run()
    except ExitError as err:
        code = err.exit_code
    except HcsociError as err:
        click.echo(f"hcsoci: {err}", err=True)
        code = 1
    finally:
        vm.detach()
    sys.exit(code)


def register(group: click.Group) -> None:
    """Add ``uvm`` to the ``hcsoci`` command."""
    group.add_command(uvm_group)
