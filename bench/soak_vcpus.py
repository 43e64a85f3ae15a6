"""The soak that shows why a TCG utility VM gets one vCPU (docs/uvm.md, "One vCPU under TCG").

``python -m bench.soak_vcpus [--cpus N] [--rounds N] [--limit SECONDS]`` starts a
VM with ``N`` vCPUs (default: the default, 0), keeps a process in the guest
ping-ponging a byte between two processes (one per vCPU where there are two),
and hot-plugs and unplugs a Plan9 share ``--rounds`` times.  A round that takes
longer than ``--limit`` is a hung guest: the soak reports the round, the
guest's vCPU registers and local APIC (over QMP) and the console's RCU lines,
then stops.  Not in ``python -m bench``: it runs for minutes.
"""

from __future__ import annotations

import argparse
import re
import secrets
import tempfile
import threading
import time
from pathlib import Path

from hcsoci import command, context
from hcsoci.uvm import UtilityVM, UVMOptions, create
from hcsoci.uvm.accel import vcpu_count

PING_PONG = """
import os
r1, w1 = os.pipe(); r2, w2 = os.pipe()
if os.fork() == 0:
    try: os.sched_setaffinity(0, {1})
    except OSError: pass
    while os.read(r1, 1): os.write(w2, b"x")
    os._exit(0)
os.sched_setaffinity(0, {0})
for _ in range(20000):
    os.write(w1, b"x"); os.read(r2, 1)
"""


def _keep_guest_busy(vm: UtilityVM, python: str, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            command(vm, python, "-I", "-S", "-c", PING_PONG).run()
        except Exception:  # the bridge closing at the end of the soak
            return


def _plug_round(
    vm: UtilityVM, shared: str, done: threading.Event, failures: list[Exception]
) -> None:
    ctx = context.background()
    try:
        share = vm.add_plan9(ctx, shared, "/run/soak", read_only=True)
        vm.remove_plan9(ctx, share)
    except Exception as err:
        failures.append(err)
    done.set()


def _hung_report(vm: UtilityVM) -> str:
    lines = []
    for _ in range(5):
        registers = vm.qmp("human-monitor-command", {"command-line": "info registers -a"})
        lines += re.findall(r"CPU#\d|RIP=\S+ RFL=\S+", str(registers))
    for cpu in range(vcpu_count(vm.options.cpu_count, vm.accel)):
        apic = str(vm.qmp("human-monitor-command", {"command-line": f"info lapic {cpu}"}))
        lines += [f"CPU {cpu} " + line for line in apic.splitlines() if line[:3] in ("ISR", "IRR")]
    console = Path(vm.console_log).read_text(errors="replace").splitlines()
    lines += [line for line in console if "rcu" in line or "lockup" in line][:8]
    return "\n  ".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpus", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=1500)
    parser.add_argument("--limit", type=float, default=15.0)
    args = parser.parse_args()
    ctx = context.background()
    options = UVMOptions(
        id="soak-" + secrets.token_hex(4),
        owner="bench",
        cpu_count=args.cpus,
        template="never",
        heartbeat_misses=1000,
        request_timeout=3600.0,
    )
    vm = create(ctx, options)
    stop = threading.Event()
    try:
        vm.start(ctx)
        cpus = vcpu_count(options.cpu_count, vm.accel)
        python = vm.assets.python
        threading.Thread(target=_keep_guest_busy, args=(vm, python, stop), daemon=True).start()
        worst = 0.0
        with tempfile.TemporaryDirectory() as shared:
            for number in range(args.rounds):
                started = time.monotonic()
                done = threading.Event()
                failures: list[Exception] = []
                plug = threading.Thread(
                    target=_plug_round, args=(vm, shared, done, failures), daemon=True
                )
                plug.start()
                if not done.wait(args.limit):
                    print(f"{cpus} vCPU(s): hung in round {number}:\n  {_hung_report(vm)}")
                    return 1
                if failures:
                    print(f"{cpus} vCPU(s): round {number} failed: {failures[0]}")
                    return 1
                worst = max(worst, time.monotonic() - started)
        print(f"{cpus} vCPU(s): {args.rounds} rounds, worst round {worst:.2f} s")
        return 0
    finally:
        stop.set()
        vm.close()


if __name__ == "__main__":
    raise SystemExit(main())
