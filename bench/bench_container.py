"""Containers: hcsoci against raw runc (and crun) on the same bundle, interleaved in one run.

    .venv/bin/python -m bench.bench_container [--rounds N] [--sequential N] [--only PART]

1. lifecycle of a ``true`` container: create_container + start + wait + close +
   release_resources, against ``runc run`` of the same config.json;
2. ``Cmd`` exec of ``true`` in a running container, against ``runc exec``;
3. N sequential ``true`` containers (crun's README table): hcsoci, runc, crun;
4. the default seccomp filter: the lifecycle of 1. with ``default_spec``'s
   filter against the same spec with ``linux.seccomp = None`` (runc compiles
   the filter with libseccomp on every create), under runc and under crun;
5. output: 512 MiB from ``dd`` in a running container into a tmpfs file and
   into ``/dev/null`` through a ``Cmd`` (the descriptor is handed over; and,
   opened non-blocking, relayed) against ``runc exec`` given the same
   descriptor (runc in the foreground copies it through pipes of its own) and
   ``runc exec --detach`` (the process inherits the descriptor and writes it
   itself: the floor).

Prints medians and ratios.  crun refuses this machine's hybrid cgroup layout
(controllers on the cgroup v2 mount), so the benchmark runs in a private mount
namespace with ``/sys/fs/cgroup/unified`` unmounted: every contender then sees
the same plain cgroup v1 hierarchy.  Must run as root.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import ctypes
import os
import select
import shutil
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from bench.timing import interleaved, report

CLONE_NEWNS = 0x00020000
MS_REC = 0x4000
MS_PRIVATE = 0x40000


def private_mount_namespace_without_unified_cgroup() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNS) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS)")
    if libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) != 0:
        raise OSError(ctypes.get_errno(), "make / private")
    libc.umount2(b"/sys/fs/cgroup/unified", 0)  # absent is fine


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def bench_output(
    container: Any, runc: Path, runc_root: Path, work: Path, mib: int, rounds: int
) -> None:
    """``dd`` of ``mib`` MiB in ``container`` into a file and /dev/null: Cmd against runc exec."""
    from hcsoci import oci
    from hcsoci.cmd import command

    writer = ["dd", "if=/dev/zero", "bs=1M", f"count={mib}"]
    process = oci.Process(args=writer, env=["PATH=/bin"], cwd="/")
    process_file = work / "dd.json"
    process_file.write_bytes(msgspec.json.encode(process))
    for into in ("/dev/shm", os.devnull):
        path = os.path.join(into, f"hcsoci-bench-{os.getpid()}") if into != os.devnull else into

        def raw_exec(target: str = path) -> None:
            with open(target, "wb") as sink:
                subprocess.run(
                    [str(runc), "--root", str(runc_root), "exec", "--process",
                     str(process_file), container.id()],
                    stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.DEVNULL, check=True,
                )  # fmt: skip

        def detached_exec(target: str = path) -> None:
            """The container process itself writes the descriptor: ``runc exec --detach``."""
            pid_file = work / "dd.pid"
            with contextlib.suppress(FileNotFoundError):
                pid_file.unlink()
            with open(target, "wb") as sink:
                subprocess.run(
                    [str(runc), "--root", str(runc_root), "exec", "--detach", "--pid-file",
                     str(pid_file), "--process", str(process_file), container.id()],
                    stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.DEVNULL, check=True,
                )  # fmt: skip
            try:
                pidfd = os.pidfd_open(int(pid_file.read_text()))
            except ProcessLookupError:
                return  # done already
            try:
                select.select([pidfd], [], [])
            finally:
                os.close(pidfd)

        def through_cmd(relayed: bool, target: str = path) -> None:
            with open(target, "wb") as sink:
                if relayed:  # never handed over: a non-blocking descriptor goes through the relay
                    os.set_blocking(sink.fileno(), False)
                cmd = command(container, *writer)
                cmd.spec = process
                cmd.stdout = sink
                cmd.run()

        try:
            samples = interleaved(
                max(rounds, 3),
                {
                    "runc exec": raw_exec,
                    "runc exec --detach": detached_exec,
                    "Cmd": lambda: through_cmd(False),
                    "Cmd relayed": lambda: through_cmd(True),
                },
            )
        finally:
            if path != os.devnull:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
        name = "/dev/null" if path == os.devnull else "a tmpfs file"
        print(f"\n{mib} MiB from a container into {name} (MiB/s; Cmd target >= 0.95x)")
        base = median_ms(samples["runc exec"])
        own = median_ms(samples["runc exec --detach"])
        for leg, values in samples.items():
            ms = median_ms(values)
            print(
                f"  {leg:<28} {mib / (ms / 1000):8.0f} MiB/s   {base / ms:5.3f}x runc exec"
                f"   {own / ms:5.3f}x the process writing it itself"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--sequential", type=int, default=100)
    parser.add_argument(
        "--only",
        choices=["lifecycle", "exec", "sequential", "seccomp", "output"],
        help="run one part",
    )
    parser.add_argument("--mib", type=int, default=512, help="MiB the output part writes")
    args = parser.parse_args()
    all_parts = {"lifecycle", "exec", "sequential", "seccomp", "output"}
    parts = {args.only} if args.only else all_parts

    private_mount_namespace_without_unified_cgroup()
    work = Path(tempfile.mkdtemp(prefix="hcsoci-bench-", dir="/run"))
    os.environ["HCSOCI_ROOT"] = str(work / "state")
    os.environ.setdefault("HCSOCI_IMAGES", str(work / "images"))

    # Imported after HCSOCI_ROOT is set: the store opens under it.
    from hcsoci import context, images, oci
    from hcsoci.cmd import command
    from hcsoci.create import CreateOptions, create_container
    from hcsoci.resources import release_resources

    ctx = context.background()
    try:
        image = images.ensure_default_image()
        rootfs = image.layer_folders[0]
        spec = oci.default_spec(["true"])
        spec.root = oci.Root(path=rootfs, readonly=True)
        bundle = work / "bundle"
        bundle.mkdir()
        (bundle / "config.json").write_bytes(oci.encode_spec(spec))
        runc_root, crun_root = work / "raw-runc", work / "raw-crun"

        def raw(runtime: str, root: Path, in_bundle: Path = bundle) -> Callable[[], None]:
            def run() -> None:
                subprocess.run(
                    [runtime, "--root", str(root), "run", "b" + uuid.uuid4().hex[:12]],
                    cwd=in_bundle, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                    check=True,
                )  # fmt: skip

            return run

        def hcsoci_lifecycle(runtime: str = "", of: oci.Spec = spec) -> Callable[[], None]:
            def run() -> None:
                container, resources = create_container(
                    ctx, CreateOptions(spec=of, runtime=runtime)
                )
                container.start(ctx)
                container.wait()
                container.close()
                release_resources(ctx, resources, None, True)

            return run

        if "lifecycle" in parts:
            samples = interleaved(
                args.rounds,
                {"runc run": raw("runc", runc_root), "hcsoci lifecycle": hcsoci_lifecycle()},
            )
            report("lifecycle of a `true` container", samples, "runc run", width=28)

        if "seccomp" in parts:
            unconfined = msgspec.structs.replace(spec, linux=copy.deepcopy(spec.linux))
            assert unconfined.linux is not None and spec.linux is not None
            assert spec.linux.seccomp is not None, "default_spec sets a seccomp filter"
            unconfined.linux.seccomp = None
            # The floor: what the same filter costs raw runc on the same bundle.
            bare_bundle = work / "bundle-unconfined"
            bare_bundle.mkdir()
            (bare_bundle / "config.json").write_bytes(oci.encode_spec(unconfined))
            samples = interleaved(
                args.rounds,
                {
                    "runc run, seccomp=None": raw("runc", runc_root, bare_bundle),
                    "runc run, default seccomp": raw("runc", runc_root),
                    "seccomp=None": hcsoci_lifecycle(of=unconfined),
                    "default seccomp": hcsoci_lifecycle(of=spec),
                    "seccomp=None (crun)": hcsoci_lifecycle("crun", unconfined),
                    "default seccomp (crun)": hcsoci_lifecycle("crun", spec),
                },
            )
            raw_runc = {name: values for name, values in samples.items() if "runc run" in name}
            report(
                "raw runc: the filter's own cost (the floor)", raw_runc, "runc run, seccomp=None"
            )
            ours = {name: v for name, v in samples.items() if "runc run" not in name}
            report(
                "lifecycle of a `true` container: default seccomp filter",
                ours,
                "seccomp=None",
                width=28,
            )
            crun = {name: values for name, values in samples.items() if "crun" in name}
            report("the same under crun", crun, "seccomp=None (crun)", width=28)

        if parts & {"exec", "output"}:
            # exec in a running container
            sleeper = oci.default_spec(["sleep", "3600"])
            sleeper.root = oci.Root(path=rootfs, readonly=True)
            container, resources = create_container(ctx, CreateOptions(spec=sleeper))
            try:
                container.start(ctx)
                process_file = work / "process.json"
                process = oci.Process(args=["true"], env=["PATH=/bin"], cwd="/")
                process_file.write_bytes(msgspec.json.encode(process))
                runc = Path(shutil.which("runc") or "runc")
                exec_root = work / "state" / "runc"

                def raw_exec() -> None:
                    subprocess.run(
                        [str(runc), "--root", str(exec_root), "exec", "--process",
                         str(process_file), container.id()],
                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, check=True,
                    )  # fmt: skip

                def cmd_exec() -> None:
                    cmd = command(container, "true")
                    cmd.spec = process
                    cmd.run()

                if "exec" in parts:
                    samples = interleaved(
                        args.rounds, {"runc exec": raw_exec, "hcsoci Cmd exec": cmd_exec}
                    )
                    report("exec of `true` in a running container", samples, "runc exec", width=28)
                if "output" in parts:
                    bench_output(container, runc, exec_root, work, args.mib, args.rounds // 4)
            finally:
                container.terminate(ctx)
                container.wait()
                container.close()
                release_resources(ctx, resources, None, True)

        if "sequential" in parts:
            # N sequential containers, in blocks of 10 so load changes hit everyone alike
            blocks = max(1, args.sequential // 10)

            def block(run: Callable[[], None]) -> Callable[[], None]:
                def ten() -> None:
                    for _ in range(10):
                        run()

                return ten

            contenders = {
                "runc run": block(raw("runc", runc_root)),
                "crun run": block(raw("crun", crun_root)),
                "hcsoci (runc)": block(hcsoci_lifecycle()),
                "hcsoci (crun)": block(hcsoci_lifecycle("crun")),
            }
            totals = {name: 0.0 for name in contenders}
            for _ in range(blocks):
                for name, run in contenders.items():
                    started = time.perf_counter()
                    run()
                    totals[name] += time.perf_counter() - started
            print(f"\n{blocks * 10} sequential `true` containers (total seconds)")
            for name, total in totals.items():
                print(f"  {name:<28} {total:7.2f} s   {total / totals['runc run']:5.2f}x runc run")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
