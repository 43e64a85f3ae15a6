"""Read-only layers in a utility VM: vPMEM (DAX) against SCSI, interleaved in one run.

One VM with ``layer_device="vpmem"``.  For a layer image of N MiB of files
(``--mib``, in 1 MiB files plus a few thousand small ones), each round:

1. attach + mount: ``add_vpmem`` of the image against ``add_scsi`` of a copy
   of it (QEMU cannot unplug a vPMEM device, so each round uses a fresh copy
   for both, and the VM gets as many slots as rounds);
2. read: ``tar -cf - DIR | wc -c`` of the whole mounted tree in the guest,
   after dropping the guest's caches, on each device;
3. the lifecycle of a ``true`` container on the busybox image (create, start,
   wait, release) in that VM against the same in a second VM with
   ``layer_device="scsi"``, both up at once, alternating (a released layer's
   vPMEM device is parked and mounted again, a SCSI disk is plugged again).

Prints medians and the ratios SCSI / vPMEM (above 1: vPMEM is faster).
Run: ``python -m bench.bench_layers [--rounds N] [--mib N]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from hcsoci import CreateOptions, command, context, create_container, images, release_resources
from hcsoci.uvm import UtilityVM, UVMOptions, create
from hcsoci.uvm.layer_images import layer_image


def make_layer(directory: Path, mib: int) -> None:
    """``mib`` 1 MiB files and 2000 small ones under ``directory``."""
    big = directory / "big"
    small = directory / "small"
    big.mkdir(parents=True)
    small.mkdir()
    block = os.urandom(1 << 20)
    for index in range(mib):
        (big / f"{index}.bin").write_bytes(block)
    for index in range(2000):
        (small / f"{index}.txt").write_text(f"file {index}\n" * 8)


def container_lifecycles(vpmem_vm: UtilityVM, rounds: int) -> dict[str, list[float]]:
    """Seconds per ``true`` container in ``vpmem_vm`` and in a SCSI VM made here."""
    ctx = context.background()
    image = images.ensure_default_image()
    times: dict[str, list[float]] = {"vpmem": [], "scsi": []}
    with create(ctx, UVMOptions(owner="bench", layer_device="scsi")) as scsi_vm:
        scsi_vm.start(ctx)
        machines = {"vpmem": vpmem_vm, "scsi": scsi_vm}
        for round_number in range(rounds + 1):  # round 0 warms up (layer image, modules)
            for name, vm in machines.items():
                spec = images.spec_for_image(image, ["true"])
                assert spec.windows is not None and spec.windows.layer_folders is not None
                with tempfile.TemporaryDirectory(dir="/var/tmp") as scratch:
                    spec.windows.layer_folders.append(scratch)
                    started = time.perf_counter()
                    container, resources = create_container(
                        ctx, CreateOptions(spec=spec, hosting_system=vm)
                    )
                    try:
                        container.start(ctx)
                        container.wait()
                    finally:
                        container.close()
                    release_resources(ctx, resources, vm, True)
                    if round_number:
                        times[name].append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--mib", type=int, default=64)
    parser.add_argument("--containers", type=int, default=10)
    args = parser.parse_args()
    ctx = context.background()
    work = Path(tempfile.mkdtemp(prefix="hcsoci-bench-layers-", dir="/var/tmp"))
    os.environ["HCSOCI_LAYER_CACHE"] = str(work / "cache")
    try:
        make_layer(work / "layer", args.mib)
        image = layer_image(str(work / "layer"))
        options = UVMOptions(owner="bench", layer_device="vpmem", vpmem_slots=args.rounds + 1)
        times: dict[str, list[float]] = {
            "attach vpmem": [], "attach scsi": [], "read vpmem": [], "read scsi": [],
        }  # fmt: skip
        dax = []
        with create(ctx, options) as vm:
            vm.start(ctx)
            for round_number in range(args.rounds):
                legs = ["vpmem", "scsi"] if round_number % 2 == 0 else ["scsi", "vpmem"]
                for leg in legs:
                    copy = work / f"{leg}-{round_number}.ext4"
                    shutil.copyfile(image, copy)
                    target = f"/run/bench-{leg}-{round_number}"
                    started = time.perf_counter()
                    if leg == "vpmem":
                        dax.append(vm.add_vpmem(ctx, str(copy), target).dax)
                    else:
                        vm.add_scsi(ctx, str(copy), target, True)
                    times[f"attach {leg}"].append(time.perf_counter() - started)
                    command(vm, "sh", "-c", "sync; echo 3 > /proc/sys/vm/drop_caches").run()
                    started = time.perf_counter()
                    count = command(vm, "sh", "-c", f"tar -cf - -C {target} . | wc -c").output()
                    times[f"read {leg}"].append(time.perf_counter() - started)
                    assert int(count) > args.mib << 20, count
            lifecycles = container_lifecycles(vm, args.containers)
        medians = {name: statistics.median(values) for name, values in times.items()}
        print(f"layer image of {image.stat().st_size >> 20} MiB, {args.rounds} rounds (median)")
        print(f"  vPMEM mounted with DAX: {all(dax)}")
        for name, value in medians.items():
            print(f"  {name:<14} {value * 1000:8.1f} ms")
        attach = medians["attach scsi"] / medians["attach vpmem"]
        read = medians["read scsi"] / medians["read vpmem"]
        print(f"  SCSI / vPMEM: attach + mount {attach:.2f}x, read {read:.2f}x (> 1: vPMEM faster)")
        lifecycle = {name: statistics.median(values) for name, values in lifecycles.items()}
        print(f"container lifecycle of `true` on busybox, {args.containers} alternating (median)")
        for name, value in lifecycle.items():
            print(f"  {name:<14} {value * 1000:8.1f} ms")
        print(f"  SCSI / vPMEM {lifecycle['scsi'] / lifecycle['vpmem']:.2f}x (> 1: vPMEM faster)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
