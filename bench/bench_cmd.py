"""Cmd on LocalHost against its baselines, interleaved in one run.

1. Start-to-exit: ``command(LocalHost(), "/bin/true").run()`` against
   ``subprocess.run(["/bin/true"])`` (the two alternate call by call).
2. Relay throughput: ``dd`` writes 512 MiB to its stdout; through a Cmd whose
   stdout is a file against the same child whose stdout *is* that file.  The
   "Cmd" leg gives the Cmd the file as it is, so it is handed over to the child
   (no relay); the "Cmd relayed" leg opens it non-blocking, which a Cmd never
   hands over, so it goes through a pipe and the relay into the file.  Two
   floors run alongside: a bare loop that relays the same pipe with
   ``os.readv``/``os.write`` (what Cmd's relay does, without Cmd) and one with
   ``os.splice``; they show what any relay through a pipe can reach on this
   machine.  Done for a writer of 1 MiB blocks
   and for one of 4 KiB blocks (what stdio-buffered programs write), into a
   tmpfs file and into ``/dev/null``.

Prints the medians and their ratios.  Run: ``python -m bench.bench_cmd``
(``--runs N``, ``--rounds N``, ``--mib N`` to change the sizes).
"""

from __future__ import annotations

import argparse
import fcntl
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable

from hcsoci import LocalHost, command


def _time(function: Callable[[], object]) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def bench_start_to_exit(runs: int) -> tuple[float, float]:
    """Median seconds per run: (Cmd, subprocess.run)."""
    host = LocalHost()

    def with_cmd() -> None:
        command(host, "/bin/true").run()

    def with_subprocess() -> None:
        subprocess.run(["/bin/true"], check=True)

    for _ in range(20):  # warm up both paths
        with_cmd()
        with_subprocess()
    cmd_times: list[float] = []
    subprocess_times: list[float] = []
    for i in range(runs):
        pair = [(with_cmd, cmd_times), (with_subprocess, subprocess_times)]
        for function, samples in pair if i % 2 == 0 else reversed(pair):
            samples.append(_time(function))
    return statistics.median(cmd_times), statistics.median(subprocess_times)


RELAY_LEGS = ("Cmd", "Cmd relayed", "direct", "bare readv/write", "bare splice")


def bench_relay(
    rounds: int, mib: int, block: int, directory: str, to_null: bool = False
) -> dict[str, float]:
    """Median seconds to get ``mib`` MiB written in ``block``-byte writes, per leg.

    Into a file in ``directory``, or into ``/dev/null`` when ``to_null``.
    """
    host = LocalHost()
    writer = ["dd", "if=/dev/zero", f"bs={block}", f"count={(mib << 20) // block}", "status=none"]
    with tempfile.TemporaryDirectory(prefix="hcsoci-bench-", dir=directory) as tmp:
        path = os.devnull if to_null else os.path.join(tmp, "out")

        def through_cmd(relayed: bool) -> None:
            with open(path, "wb") as sink:
                if relayed:  # a regular file ignores O_NONBLOCK; a Cmd relays it
                    os.set_blocking(sink.fileno(), False)
                cmd = command(host, *writer)
                cmd.stdout = sink
                cmd.run()

        def direct() -> None:
            with open(path, "wb") as sink:
                subprocess.run(writer, stdout=sink, check=True)

        def bare_loop(splice: bool) -> None:
            read_end, write_end = os.pipe()
            fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, 1 << 20)  # as LocalHost's pipes
            with open(path, "wb") as sink:
                child = subprocess.Popen(writer, stdout=write_end)
                os.close(write_end)
                out = sink.fileno()
                buffer = memoryview(bytearray(1 << 20))
                if splice:
                    while os.splice(read_end, out, 1 << 20):
                        pass
                else:
                    while n := os.readv(read_end, [buffer]):
                        os.write(out, buffer[:n])
                os.close(read_end)
                if child.wait() != 0:
                    raise RuntimeError(f"{writer}: exit {child.returncode}")

        legs: dict[str, Callable[[], None]] = {
            "Cmd": lambda: through_cmd(relayed=False),
            "Cmd relayed": lambda: through_cmd(relayed=True),
            "direct": direct,
            "bare readv/write": lambda: bare_loop(splice=False),
            "bare splice": lambda: bare_loop(splice=True),
        }
        samples: dict[str, list[float]] = {name: [] for name in legs}
        order = list(legs)
        for round_number in range(rounds + 1):  # round 0 warms up
            for name in order if round_number % 2 == 0 else reversed(order):
                elapsed = _time(legs[name])
                if not to_null:
                    _check_size(path, mib)
                if round_number:
                    samples[name].append(elapsed)
    return {name: statistics.median(times) for name, times in samples.items()}


def _check_size(path: str, mib: int) -> None:
    size = os.path.getsize(path)
    if size != mib << 20:
        raise RuntimeError(f"{path}: {size} bytes, expected {mib << 20}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2000, help="start-to-exit runs of each")
    parser.add_argument("--rounds", type=int, default=9, help="relay rounds of each")
    parser.add_argument("--mib", type=int, default=512, help="MiB the child writes")
    parser.add_argument(
        "--dir",
        default="/dev/shm",
        help="where the output file goes (default: tmpfs, so disk writeback adds no noise)",
    )
    options = parser.parse_args()

    cmd_run, subprocess_run = bench_start_to_exit(options.runs)
    print(
        f"start-to-exit  Cmd.run {cmd_run * 1e6:8.1f} us"
        f"   subprocess.run {subprocess_run * 1e6:8.1f} us"
        f"   ratio {cmd_run / subprocess_run:.3f}x (target <= 1.10x)"
    )
    mib = options.mib
    for to_null in (False, True):
        for block in (1 << 20, 4 << 10):
            medians = bench_relay(options.rounds, mib, block, options.dir, to_null)
            direct = medians["direct"]
            legs = "   ".join(f"{name} {mib / medians[name]:5.0f}" for name in RELAY_LEGS)
            into = "/dev/null" if to_null else "a file"
            print(
                f"{mib} MiB into {into} in {block >> 10:4d} KiB writes (MiB/s)   {legs}\n"
                f"    Cmd / direct {direct / medians['Cmd']:.3f}x (target >= 0.95x)"
                f"   Cmd relayed / bare readv/write "
                f"{medians['bare readv/write'] / medians['Cmd relayed']:.3f}x (target >= 0.95x)"
                f"   Cmd relayed / direct {direct / medians['Cmd relayed']:.3f}x"
                f"   best bare loop / direct "
                f"{direct / min(medians['bare readv/write'], medians['bare splice']):.3f}x"
            )


if __name__ == "__main__":
    main()
