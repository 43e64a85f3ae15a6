"""Stdout through the guest bridge against the raw virtio-serial port, interleaved in one run.

One VM.  The bridge leg: ``dd if=/dev/zero bs=1M count=N`` in the guest's own
OS through a ``Cmd`` whose stdout counts bytes (the agent frames it onto the
bridge port, the host's reader unframes it, the relay hands it to the sink).
The raw leg: a ``virtserialport`` hot-plugged on a second virtio-serial
controller, with a unix-socket chardev of its own; ``dd`` in the
guest writes the same N MiB straight into that port and a host thread reads
the socket into one reused buffer: the transport with nothing of ours on it.
A third leg puts one pipe between ``dd`` and that port (``dd | cat >
PORT``): the least any relay of a process's stdout adds, since the agent
must read the process's output from a pipe to frame it.  Each leg's time
runs from the request to the last byte read.

Prints medians and the ratio bridge / raw (target >= 0.5x).
Run: ``python -m bench.bench_bridge [--rounds N] [--mib N]``.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path

from hcsoci import command, context
from hcsoci.uvm import UtilityVM, UVMOptions, create

PORT_NAME = "hcsoci.bench"


class _Counter:
    """A writer that only counts."""

    def __init__(self) -> None:
        self.bytes = 0

    def write(self, data: bytes | bytearray | memoryview, /) -> int:
        self.bytes += len(data)
        return len(data)


def bridge_seconds(vm: UtilityVM, mib: int) -> float:
    cmd = command(vm, "dd", "if=/dev/zero", "bs=1M", f"count={mib}")
    sink = _Counter()
    cmd.stdout = sink
    started = time.perf_counter()
    cmd.run()
    elapsed = time.perf_counter() - started
    assert sink.bytes == mib << 20, sink.bytes
    return elapsed


def raw_seconds(
    vm: UtilityVM, port: socket.socket, device: str, mib: int, through_pipe: bool = False
) -> float:
    total = mib << 20
    received = 0
    done = threading.Event()

    def read() -> None:
        nonlocal received
        buffer = memoryview(bytearray(1 << 20))
        while received < total:
            n = port.recv_into(buffer)
            if n == 0:
                break
            received += n
        done.set()

    reader = threading.Thread(target=read, daemon=True)
    started = time.perf_counter()
    reader.start()
    if through_pipe:  # what any relay of a process's stdout adds at the least: one pipe
        script = f"dd if=/dev/zero bs=1M count={mib} 2>/dev/null | cat > {device}"
        command(vm, "sh", "-c", script).run()
    else:
        command(vm, "dd", "if=/dev/zero", f"of={device}", "bs=1M", f"count={mib}").run()
    if not done.wait(120):
        raise RuntimeError(f"raw port: {received} of {total} bytes after 120 s")
    elapsed = time.perf_counter() - started
    assert received == total, received
    return elapsed


def plug_raw_port(vm: UtilityVM, directory: Path) -> tuple[socket.socket, str]:
    """A second virtserialport on a unix-socket chardev; (our end, the guest's device)."""
    path = directory / "bench.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    os.chmod(path, 0o600)
    server.listen(1)
    vm.qmp(
        "chardev-add",
        {
            "id": "benchport",
            "backend": {
                "type": "socket",
                "data": {
                    "addr": {"type": "unix", "data": {"path": str(path)}},
                    "server": False,
                },
            },
        },
    )
    connection, _ = server.accept()
    server.close()
    # The VM's own controller has no free port: a second controller of its own.
    vm.device_add({"driver": "virtio-serial-pci", "id": "benchser", "max_ports": 2})
    vm.device_add(
        {
            "driver": "virtserialport",
            "bus": "benchser.0",
            "nr": 1,
            "chardev": "benchport",
            "name": PORT_NAME,
            "id": "benchport0",
        }
    )
    find = (
        "for p in /sys/class/virtio-ports/*; do "
        f'[ "$(cat $p/name)" = {PORT_NAME} ] && echo /dev/${{p##*/}} && exit 0; done; exit 1'
    )
    deadline = time.monotonic() + 30
    while True:
        found = command(vm, "sh", "-c", find)
        try:
            device = found.output().decode().strip()
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    return connection, device


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--mib", type=int, default=256)
    args = parser.parse_args()
    ctx = context.background()
    times: dict[str, list[float]] = {"bridge": [], "raw port": [], "pipe + port": []}
    with (
        tempfile.TemporaryDirectory(prefix="hcsoci-bench-bridge-", dir="/run") as tmp,
        create(ctx, UVMOptions(owner="bench")) as vm,
    ):
        vm.start(ctx)
        port, device = plug_raw_port(vm, Path(tmp))
        try:
            for round_number in range(args.rounds + 1):  # round 0 warms up
                legs = list(times)
                for leg in legs if round_number % 2 else reversed(legs):
                    if leg == "bridge":
                        elapsed = bridge_seconds(vm, args.mib)
                    else:
                        piped = leg == "pipe + port"
                        elapsed = raw_seconds(vm, port, device, args.mib, piped)
                    if round_number:
                        times[leg].append(elapsed)
        finally:
            port.close()
    rates = {leg: args.mib / statistics.median(values) for leg, values in times.items()}
    print(f"{args.mib} MiB of guest stdout, {args.rounds} rounds (median MiB/s)")
    for leg, rate in rates.items():
        print(f"  {leg:<10} {rate:8.1f} MiB/s")
    print(f"  bridge / raw port {rates['bridge'] / rates['raw port']:.2f}x (target >= 0.5x)")
    floor = rates["pipe + port"] / rates["raw port"]
    print(f"  the floor, one pipe before the port / raw port {floor:.2f}x")
    print(f"  bridge / that floor {rates['bridge'] / rates['pipe + port']:.2f}x")


if __name__ == "__main__":
    main()
