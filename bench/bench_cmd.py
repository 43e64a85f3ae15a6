"""Cmd on LocalHost against its baselines, interleaved in one run.

1. Start-to-exit: ``command(LocalHost(), "/bin/true").run()`` against
   ``subprocess.run(["/bin/true"])`` (the two alternate call by call).
2. Relay throughput: a child writes 512 MiB to its stdout; through a Cmd whose
   stdout is a file (a pipe, then ``os.splice`` into the file) against the same
   child whose stdout *is* that file.

Prints the medians and their ratios.  Run: ``python -m bench.bench_cmd``
(``--runs N``, ``--rounds N``, ``--mib N`` to change the sizes).
"""

from __future__ import annotations

import argparse
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


def bench_relay(rounds: int, mib: int, directory: str) -> tuple[float, float]:
    """Median seconds to get ``mib`` MiB into a file: (relayed by Cmd, written directly)."""
    host = LocalHost()
    writer = ["dd", "if=/dev/zero", "bs=1M", f"count={mib}", "status=none"]
    with tempfile.TemporaryDirectory(prefix="hcsoci-bench-", dir=directory) as tmp:
        path = os.path.join(tmp, "out")

        def relayed() -> None:
            with open(path, "wb") as sink:
                cmd = command(host, *writer)
                cmd.stdout = sink
                cmd.run()
            _check_size(path, mib)

        def direct() -> None:
            with open(path, "wb") as sink:
                subprocess.run(writer, stdout=sink, check=True)
            _check_size(path, mib)

        relayed()
        direct()
        relayed_times: list[float] = []
        direct_times: list[float] = []
        for i in range(rounds):
            pair = [(relayed, relayed_times), (direct, direct_times)]
            for function, samples in pair if i % 2 == 0 else reversed(pair):
                samples.append(_time(function))
    return statistics.median(relayed_times), statistics.median(direct_times)


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
    relayed, direct = bench_relay(options.rounds, options.mib, options.dir)
    mib = options.mib
    print(
        f"relay {mib} MiB  via Cmd {mib / relayed:8.0f} MiB/s   direct {mib / direct:8.0f} MiB/s"
        f"   throughput ratio {direct / relayed:.3f}x (target >= 0.80x)"
    )


if __name__ == "__main__":
    main()
