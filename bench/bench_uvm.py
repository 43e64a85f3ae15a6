"""The utility VM against its baselines, interleaved in one run.

1. Boot: QEMU start to a guest agent that answers (``create`` + ``start``)
   against the *same* QEMU command line, kernel and initramfs booting to the
   trivial init (``rdinit=/trivial-init``, which prints a marker) under the
   same accelerator.  The two alternate round by round.
2. Exec: ``command(vm, "true").run()`` against ``command(LocalHost(), "true")``.
3. Stdout throughput: ``dd`` writes N MiB to stdout; a Cmd relays it into a
   sink, through the bridge from the VM against from a host process.
4. Container exec: ``command(container, "true").run()`` in a container inside
   the VM (busybox image, layers over SCSI) against in a host container (runc
   on this machine), alternating in blocks.
5. Templates, interleaved round by round: the trivial-init boot, a cold boot
   to agent ready (``template="never"``), a restore to agent ready
   (``template="require"``), and ``hcsoci run --isolation vm --rm -- true``
   end to end with and without a template (``--vm-template``), beside its
   floors: the interpreter's start with the CLI imported, and the first
   ``runc run`` of ``true`` in a freshly restored guest (and, when the host
   has crun, the first ``crun run`` of it there).

Prints medians and ratios.  Run: ``python -m bench.bench_uvm`` (``--boots N``,
``--execs N``, ``--mib N``, ``--accel auto|kvm|tcg``, ``--gzip``: build and
boot a compressed initramfs, best in an ``$HCSOCI_ASSETS`` of its own; ``--only boot`` runs
just the first, ``--only containers`` just the fourth, ``--only templates``
just the fifth).
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hcsoci import CreateOptions, LocalHost, command, context, create_container, images, oci
from hcsoci import release_resources as release
from hcsoci.uvm import UtilityVM, UVMOptions, build_assets, create, ensure_template
from hcsoci.uvm.accel import resolve_accel
from hcsoci.uvm.assets import TRIVIAL_INIT_MARKER


class _Sink:
    """A writer that only counts."""

    def __init__(self) -> None:
        self.bytes = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self.bytes += len(data)
        return len(data)


def trivial_boot_seconds(accel: str) -> float:
    """Seconds from QEMU start to the trivial init's marker on the console."""
    ctx = context.background()
    vm = create(ctx, UVMOptions(owner="bench", accel=accel))
    try:
        command_line = vm.qemu_command(accel)
        index = command_line.index("-append") + 1
        command_line[index] += f" rdinit={vm.assets.trivial_init}"
        console = Path(vm.console_log)
        console.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # start() makes it
        start = time.perf_counter()
        qemu = subprocess.Popen(command_line, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            while True:
                if console.exists() and TRIVIAL_INIT_MARKER.encode() in console.read_bytes():
                    return time.perf_counter() - start
                if qemu.poll() is not None:
                    raise RuntimeError(f"trivial boot exited with {qemu.returncode}")
                time.sleep(0.005)
        finally:
            qemu.kill()
            qemu.wait()
    finally:
        vm.close()


def agent_boot_seconds(accel: str, template: str = "never") -> float:
    """Seconds of ``start`` to an answering guest agent: a cold boot, or (``require``) a restore."""
    ctx = context.background()
    vm = create(ctx, UVMOptions(owner="bench", accel=accel, template=template))
    try:
        start = time.perf_counter()
        vm.start(ctx)
        elapsed = time.perf_counter() - start
        assert vm.restored == (template == "require")
        return elapsed
    finally:
        vm.close()


def cli_run_seconds(template: str) -> float:
    """Seconds of ``hcsoci run --isolation vm --rm -- true`` end to end (a fresh interpreter)."""
    start = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "hcsoci.cli.main",
            "run",
            "--isolation",
            "vm",
            "--rm",
            f"--vm-template={template}",
            "--",
            "true",
        ],
        check=True,
        stdin=subprocess.DEVNULL,
    )
    return time.perf_counter() - start


def _crun_folder() -> Path:
    """A host folder holding crun and the shared libraries it needs (``ldd``)."""
    crun = shutil.which("crun")
    assert crun is not None
    folder = Path(tempfile.mkdtemp(prefix="hcsoci-bench-crun-"))
    (folder / "lib").mkdir()
    shutil.copy(crun, folder / "crun")
    ldd = subprocess.run(["ldd", crun], capture_output=True, text=True, check=True).stdout
    for line in ldd.splitlines():
        parts = line.split()
        if "=>" in parts and len(parts) > parts.index("=>") + 1:
            shutil.copy(parts[parts.index("=>") + 1], folder / "lib")
    return folder


def guest_runc_seconds(accel: str, runtime: str = "runc") -> float:
    """Seconds of the first ``runc run`` of ``true`` in a freshly restored guest.

    The floor of any VM container's run under TCG: a new QEMU process starts
    with an empty translation cache, so runc's code is translated again in
    every clone.  The bundle (busybox as ``/true``, the default spec) is made
    in the guest first, untimed; the timed part is one ``runc run``.
    ``runtime="crun"``: the same with the host's crun (a C runtime, 0.5 MB
    against runc's 8.7 MB of Go; copied into the guest over Plan9, untimed),
    the floor a guest on crun would have.
    """
    ctx = context.background()
    vm = create(ctx, UVMOptions(owner="bench", accel=accel, template="require"))
    crun = _crun_folder() if runtime == "crun" else None
    try:
        vm.start(ctx)
        copy = ""
        if crun is not None:
            vm.add_plan9(ctx, str(crun), "/run/bench-crun", read_only=True)
            copy = "cp -r /run/bench-crun /tmp/crun && "
        spec = oci.default_spec(["/true"])
        assert spec.root is not None
        spec.root.path = "/tmp/floor/rootfs"
        prepare = command(
            vm,
            "sh",
            "-c",
            copy + "mkdir -p /tmp/floor/rootfs/proc /tmp/floor/rootfs/dev /tmp/floor/rootfs/sys && "
            "cp /.hcsoci/busybox /tmp/floor/rootfs/true && cat > /tmp/floor/config.json",
        )
        prepare.stdin = io.BytesIO(oci.encode_spec(spec))
        prepare.run()
        binary = ["/usr/sbin/runc"]
        if crun is not None:
            binary = ["env", "LD_LIBRARY_PATH=/tmp/crun/lib", "/tmp/crun/crun"]
        runc = [*binary, "--root", "/run/floor", "run", "-b", "/tmp/floor", "floor"]
        start = time.perf_counter()
        command(vm, *runc).run()
        return time.perf_counter() - start
    finally:
        vm.close()
        if crun is not None:
            shutil.rmtree(crun)


def python_start_seconds() -> float:
    """Seconds for the interpreter to start and import hcsoci's CLI: the floor of any run."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import hcsoci.cli.main"], check=True)
    return time.perf_counter() - start


def _runs(values: list[float]) -> str:
    return ", ".join(f"{x:.2f}" for x in values)


def template_comparison(accel: str, boots: int) -> None:
    """Cold boot, restore and trivial boot to ready; ``hcsoci run`` with and without a template."""
    ensure_template(context.background(), UVMOptions(owner="bench", accel=accel))
    trivial, cold, restore, run_tpl, run_cold, py, runc, crun = [], [], [], [], [], [], [], []
    for _ in range(boots):
        trivial.append(trivial_boot_seconds(accel))
        cold.append(agent_boot_seconds(accel, "never"))
        restore.append(agent_boot_seconds(accel, "require"))
        run_tpl.append(cli_run_seconds("require"))
        run_cold.append(cli_run_seconds("never"))
        py.append(python_start_seconds())
        runc.append(guest_runc_seconds(accel))
        if shutil.which("crun"):
            crun.append(guest_runc_seconds(accel, "crun"))
    t, c, r = statistics.median(trivial), statistics.median(cold), statistics.median(restore)
    rt, rc, p = statistics.median(run_tpl), statistics.median(run_cold), statistics.median(py)
    print(f"boot to trivial init        {t:7.2f} s  (runs {_runs(trivial)})")
    print(f"cold boot to agent ready    {c:7.2f} s  (runs {_runs(cold)})")
    print(f"restore to agent ready      {r:7.2f} s  (runs {_runs(restore)})")
    print(f"  ratio restore/cold boot   {r / c:7.3f}x")
    print(f"  ratio restore/trivial     {r / t:7.3f}x")
    print(f"run --isolation vm, template    {rt:7.2f} s  (runs {_runs(run_tpl)})")
    print(f"run --isolation vm, no template {rc:7.2f} s  (runs {_runs(run_cold)})")
    print(f"  ratio template/no template    {rt / rc:7.3f}x")
    g = statistics.median(runc)
    print(f"  floor: python -c 'import hcsoci.cli.main'   {p:5.2f} s")
    print(f"  floor: first runc run of true, restored guest {g:5.2f} s  (runs {_runs(runc)})")
    print(f"  floor: restore + runc + interpreter          {r + g + p:5.2f} s")
    if crun:
        k = statistics.median(crun)
        print(f"  floor: first crun run of true, restored guest {k:5.2f} s  (runs {_runs(crun)})")
        print(f"  floor: restore + crun + interpreter          {r + k + p:5.2f} s")


def exec_seconds(host: object, runs: int) -> list[float]:
    """Per-run seconds of ``command(host, "true").run()``."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        command(host, "true").run()  # type: ignore[arg-type]
        times.append(time.perf_counter() - start)
    return times


def throughput_mib_s(host: object, mib: int) -> float:
    """MiB/s of ``dd`` stdout relayed by a Cmd into a counting sink."""
    cmd = command(host, "dd", "if=/dev/zero", "bs=1M", f"count={mib}", "status=none")  # type: ignore[arg-type]
    sink = _Sink()
    cmd.stdout = sink
    start = time.perf_counter()
    cmd.run()
    elapsed = time.perf_counter() - start
    assert sink.bytes == mib * 1024 * 1024, sink.bytes
    return mib / elapsed


def container_exec_comparison(vm: UtilityVM, execs: int, rounds: int) -> None:
    """Median exec latency in a VM container against a host container; prints the ratio."""
    ctx = context.background()
    work = Path(tempfile.mkdtemp(prefix="hcsoci-bench-"))
    old_cache = os.environ.get("HCSOCI_LAYER_CACHE")
    os.environ["HCSOCI_LAYER_CACHE"] = str(work / "layer-cache")
    image = images.ensure_default_image(images.ImageStore(work / "images"))
    made = []
    try:
        for index, hosting in enumerate((vm, None)):
            spec = images.spec_for_image(image, ["sleep", "3600"])
            scratch = work / f"scratch{index}"
            scratch.mkdir()
            assert spec.windows is not None and spec.windows.layer_folders is not None
            spec.windows.layer_folders = [*spec.windows.layer_folders, str(scratch)]
            container, resources = create_container(
                ctx, CreateOptions(spec=spec, owner="bench", hosting_system=hosting)
            )
            made.append((container, resources))
            container.start(ctx)
        (vm_container, _), (host_container, _) = made
        vm_exec, host_exec = [], []
        for _ in range(rounds):
            vm_exec += exec_seconds(vm_container, execs)
            host_exec += exec_seconds(host_container, execs)
        ve, he = statistics.median(vm_exec), statistics.median(host_exec)
        print(f"exec in VM container   {ve * 1000:7.1f} ms")
        print(f"exec in host container {he * 1000:7.1f} ms")
        print(f"  ratio VM/host        {ve / he:7.1f}x")
    finally:
        for (container, resources), hosting in zip(made, (vm, None), strict=False):
            container.terminate(ctx)
            container.wait()
            container.close()
            release(ctx, resources, hosting, True)
        if old_cache is None:
            os.environ.pop("HCSOCI_LAYER_CACHE", None)
        else:
            os.environ["HCSOCI_LAYER_CACHE"] = old_cache
        shutil.rmtree(work)


def main() -> None:
    """Run the three comparisons and print medians and ratios."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--boots", type=int, default=3)
    parser.add_argument("--execs", type=int, default=20)
    parser.add_argument("--mib", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--accel", default="auto")
    parser.add_argument("--only", choices=["boot", "containers", "templates"], default=None)
    parser.add_argument("--gzip", action="store_true", help="boot a gzip-compressed initramfs")
    args = parser.parse_args()
    accel = resolve_accel(args.accel, build_assets(compress=args.gzip))
    print(f"accelerator: {accel}")
    if args.only == "templates":
        template_comparison(accel, args.boots)
        return
    if args.only == "containers":
        ctx = context.background()
        with create(ctx, UVMOptions(owner="bench", accel=accel)) as only_vm:
            only_vm.start(ctx)
            container_exec_comparison(only_vm, args.execs, args.rounds)
        return

    trivial, agent = [], []
    for _ in range(args.boots):
        trivial.append(trivial_boot_seconds(accel))
        agent.append(agent_boot_seconds(accel))
    t, a = statistics.median(trivial), statistics.median(agent)
    print(f"boot to trivial init   {t:7.2f} s  (runs {', '.join(f'{x:.2f}' for x in trivial)})")
    print(f"boot to agent ready    {a:7.2f} s  (runs {', '.join(f'{x:.2f}' for x in agent)})")
    print(f"  ratio agent/trivial  {a / t:7.2f}x")
    if args.only == "boot":
        return
    template_comparison(accel, args.boots)

    ctx = context.background()
    vm: UtilityVM = create(ctx, UVMOptions(owner="bench", accel=accel))
    try:
        vm.start(ctx)
        local = LocalHost()
        vm_exec, host_exec, vm_mib, host_mib = [], [], [], []
        for _ in range(args.rounds):
            vm_exec += exec_seconds(vm, args.execs)
            host_exec += exec_seconds(local, args.execs)
            vm_mib.append(throughput_mib_s(vm, args.mib))
            host_mib.append(throughput_mib_s(local, args.mib))
        ve, he = statistics.median(vm_exec), statistics.median(host_exec)
        print(f"exec in VM             {ve * 1000:7.1f} ms")
        print(f"exec on host           {he * 1000:7.1f} ms")
        print(f"  ratio VM/host        {ve / he:7.1f}x")
        vt, ht = statistics.median(vm_mib), statistics.median(host_mib)
        runs = ", ".join(f"{x:.0f}" for x in vm_mib)
        print(f"stdout from VM         {vt:7.0f} MiB/s  (runs {runs})")
        print(f"stdout from host       {ht:7.0f} MiB/s")
        print(f"  ratio VM/host        {vt / ht:7.2f}x")
        container_exec_comparison(vm, args.execs, args.rounds)
    finally:
        vm.close()


if __name__ == "__main__":
    main()
