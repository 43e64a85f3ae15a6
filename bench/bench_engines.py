"""Engines: ctr, docker and podman running ``true`` with hcsoci-runc against plain runc.

    .venv/bin/python -m bench.bench_engines [--rounds N] [--only ctr|docker|podman|state]

For each engine, interleaved in one run, medians:

* ``ctr run --rm --runc-binary hcsoci-runc busybox:latest ID true`` against
  ``ctr run --rm busybox:latest ID true`` (the shim's default runc);
* ``docker run --rm --network none --runtime hcsoci busybox true`` against
  ``docker run --rm --network none busybox true``;
* ``podman --runtime hcsoci-runc run --rm --network none busybox true`` against
  ``podman --runtime /usr/sbin/runc run ...``;
* ``hcsoci-runc state ID`` of a running container, against ``runc state ID``;
* in each of those runs, two floors, installed as hcsoci-runc is
  (``--runc-binary``, ``--add-runtime``, podman's ``--runtime`` wrapper):
  ``python-exec-runc``, a ``python -IS`` script that only execs runc
  (:func:`floor_runtime`): the interpreter's start, 3-4 times per container,
  that any runtime written in Python pays before its first line; and
  ``python-sqlite-runc`` (:func:`journal_floor_runtime`), which also records
  each ``create`` and ``delete`` in an SQLite database while runc works, as
  hcsoci-runc journals them in its store: the floor of a Python runtime that
  keeps a durable record of what it made;
* VM isolation (``--only vm``, fewer rounds: each container is a utility VM,
  restored from the template): ``docker run --rm --network none --runtime
  hcsoci-vm busybox true`` and ``hcsoci run --isolation vm --rm -- true``
  beside ``docker run --rm --network none busybox true`` (runc).

The daemons are the tests' (tests/fixtures_engines.py: a containerd and a
dockerd of our own, podman with storage of its own), started here and stopped
by pid at the end.  Each ``run`` calls the runtime 4 times under ctr and docker
(create, start, delete, delete --force) and 3 times under podman.  Must run as
root.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

from bench.timing import interleaved, report

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from fixtures_engines import (
    RUNTIME,
    RUNTIME_VM,
    containerd_daemon,
    docker_daemon,
    podman_engine,
)
from hcsoci.images.default import build_layer, write_archive

FLOOR = "python-exec-runc"
"""The floor's name, as a runtime of each engine."""

JOURNAL_FLOOR = "python-sqlite-runc"
"""The name of the floor that journals, as a runtime of each engine."""


def floor_runtime(directory: Path) -> str:
    """Install the floor into ``directory``: this interpreter, isolated (``-IS``: no site, no
    environment), exec'ing runc with the engine's arguments; its path."""
    runc = shutil.which("runc")
    if runc is None:
        raise RuntimeError("runc is not on PATH")
    path = directory / FLOOR
    path.write_text(
        f"#!{sys.executable} -IS\nimport os, sys\nos.execv({runc!r}, [{runc!r}, *sys.argv[1:]])\n"
    )
    path.chmod(0o755)
    return str(path)


def journal_floor_runtime(directory: Path) -> str:
    """Install the journalling floor into ``directory``: as :func:`floor_runtime`, but a
    ``create`` or ``delete`` spawns runc, writes one row to ``directory/journal.db`` (WAL,
    one ``BEGIN IMMEDIATE`` transaction, as hcsoci's store) while runc works, and exits
    with runc's status; its path."""
    runc = shutil.which("runc")
    if runc is None:
        raise RuntimeError("runc is not on PATH")
    journal = directory / "journal.db"
    path = directory / JOURNAL_FLOOR
    path.write_text(
        f"#!{sys.executable} -IS\n"
        "import os, sys\n"
        f"argv = [{runc!r}, *sys.argv[1:]]\n"
        'command = next((a for a in sys.argv[1:] if a in ("create", "delete")), "")\n'
        f"if not command:\n    os.execv({runc!r}, argv)\n"
        f"pid = os.posix_spawn({runc!r}, argv, os.environ)\n"
        "import sqlite3\n"
        f"db = sqlite3.connect({str(journal)!r}, timeout=60, isolation_level=None)\n"
        'db.execute("PRAGMA journal_mode=WAL")\n'
        'db.execute("PRAGMA synchronous=NORMAL")\n'
        'db.execute("BEGIN IMMEDIATE")\n'
        'db.execute("CREATE TABLE IF NOT EXISTS calls (command TEXT, argv TEXT)")\n'
        'db.execute("INSERT INTO calls VALUES (?, ?)", (command, " ".join(argv)))\n'
        'db.execute("COMMIT")\n'
        "sys.exit(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))\n"
    )
    path.chmod(0o755)
    return str(path)


def checked(argv: list[str]) -> Callable[[], None]:
    """A contender: run ``argv`` (a fresh container name each time) and insist on success."""

    def run() -> None:
        command = [part.replace("{id}", f"b{uuid.uuid4().hex[:10]}") for part in argv]
        result = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"{command}: {result.stderr.decode()[-500:]}")

    return run


def bench_ctr(
    stack: contextlib.ExitStack, archive: Path, floors: dict[str, str], rounds: int
) -> None:
    socket, _ = stack.enter_context(containerd_daemon("bench-containerd"))
    ctr = ["ctr", "--address", str(socket), "--namespace", f"bench-{uuid.uuid4().hex[:6]}"]
    subprocess.run([*ctr, "images", "import", str(archive)], capture_output=True, check=True)
    # Every runtime's state in a directory of the benchmark's (not /run/containerd/runc).
    roots = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-ctr-", dir="/run")))
    run = [*ctr, "run", "--rm"]
    image = ["busybox:latest", "{id}", "true"]
    samples = interleaved(
        rounds,
        {
            "ctr run --rm (runc)": checked([*run, "--runc-root", f"{roots}/runc", *image]),
            "ctr run --rm (hcsoci-runc)": checked(
                [*run, "--runc-binary", RUNTIME, "--runc-root", f"{roots}/hcsoci", *image]
            ),
            **{
                f"ctr run --rm ({name})": checked(
                    [*run, "--runc-binary", floor, "--runc-root", f"{roots}/{name}", *image]
                )
                for name, floor in floors.items()
            },
        },
    )
    report("ctr run --rm busybox true", samples, "ctr run --rm (runc)")


def bench_docker(
    stack: contextlib.ExitStack, archive: Path, floors: dict[str, str], rounds: int
) -> None:
    socket, _ = stack.enter_context(containerd_daemon("bench-containerd-docker"))
    docker = stack.enter_context(docker_daemon(socket, "bench-dockerd", floors))
    docker.check("load", "--input", str(archive))
    run = [*docker.client, "run", "--rm", "--network", "none"]
    samples = interleaved(
        rounds,
        {
            "docker run --rm (runc)": checked([*run, "busybox", "true"]),
            "docker run --rm (hcsoci-runc)": checked(
                [*run, "--runtime", "hcsoci", "busybox", "true"]
            ),
            **{
                f"docker run --rm ({name})": checked([*run, "--runtime", name, "busybox", "true"])
                for name in floors
            },
        },
    )
    report("docker run --rm --network none busybox true", samples, "docker run --rm (runc)")


def bench_podman(
    stack: contextlib.ExitStack, archive: Path, floors: dict[str, str], rounds: int
) -> None:
    root = Path(
        stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-hcsoci-", dir="/run"))
    )
    podman = stack.enter_context(podman_engine("bench-podman", root))
    podman.check("load", "--input", str(archive))
    # The engine's client names the runtime through the tests' wrapper (--root ROOT);
    # the baseline replaces it with runc itself, each floor with a wrapper of that floor.
    client = podman.client
    base = client[: client.index("--runtime")]
    wrappers = {}
    for name, floor in floors.items():
        wrapper = Path(floor).with_name(f"podman-{name}")
        wrapper.write_text(f'#!/bin/sh\nexec {floor} --root {root}/{name} "$@"\n')
        wrapper.chmod(0o700)
        wrappers[name] = wrapper
    args = ["run", "--rm", "--network", "none", "busybox", "true"]
    samples = interleaved(
        rounds,
        {
            "podman run --rm (runc)": checked([*base, "--runtime", "/usr/sbin/runc", *args]),
            "podman run --rm (hcsoci-runc)": checked([*client, *args]),
            **{
                f"podman run --rm ({name})": checked([*base, "--runtime", str(wrapper), *args])
                for name, wrapper in wrappers.items()
            },
        },
    )
    report("podman run --rm --network none busybox true", samples, "podman run --rm (runc)")


def bench_state(stack: contextlib.ExitStack, floor: str, rounds: int) -> None:
    root = Path(
        stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-hcsoci-", dir="/run"))
    )
    bundle = root / "bundle"
    (bundle / "rootfs").mkdir(parents=True)
    layer = root / "layer.tar"
    layer.write_bytes(build_layer())
    subprocess.run(["tar", "-xf", str(layer), "-C", str(bundle / "rootfs")], check=True)
    subprocess.run(["runc", "spec", "--bundle", str(bundle)], check=True)
    config = json.loads((bundle / "config.json").read_text())
    config["process"].update({"terminal": False, "args": ["sleep", "600"]})
    (bundle / "config.json").write_text(json.dumps(config))
    hcsoci = [RUNTIME, "--root", str(root / "hcsoci")]
    runc = ["runc", "--root", str(root / "runc")]
    for command, name in ((hcsoci, "hcsoci-s1"), (runc, "runc-s1")):
        with open("/dev/null", "wb") as null:
            subprocess.run(
                [*command, "run", "--detach", "--bundle", str(bundle), name],
                stdin=subprocess.DEVNULL, stdout=null, stderr=null, check=True,
            )  # fmt: skip
        stack.callback(subprocess.run, [*command, "delete", "--force", name], check=False)
    samples = interleaved(
        rounds * 3,
        {
            "runc state": checked([*runc, "state", "runc-s1"]),
            "hcsoci-runc state": checked([*hcsoci, "state", "hcsoci-s1"]),
            f"{FLOOR} state": checked([floor, "--root", str(root / "runc"), "state", "runc-s1"]),
        },
    )
    report("state of a running container", samples, "runc state")


def bench_vm(stack: contextlib.ExitStack, archive: Path, rounds: int) -> None:
    socket, _ = stack.enter_context(containerd_daemon("bench-containerd-vm"))
    docker = stack.enter_context(docker_daemon(socket, "bench-dockerd-vm"))
    docker.check("load", "--input", str(archive))
    root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-vm-", dir="/run")))
    hcsoci = ["env", f"HCSOCI_ROOT={root}", str(Path(RUNTIME_VM).parent / "hcsoci")]
    run = [*docker.client, "run", "--rm", "--network", "none"]
    samples = interleaved(
        max(3, rounds // 3),
        {
            "docker run --rm (runc)": checked([*run, "busybox", "true"]),
            "docker run --rm (hcsoci-runc-vm)": checked(
                [*run, "--runtime", "hcsoci-vm", "busybox", "true"]
            ),
            "hcsoci run --isolation vm --rm": checked(
                [*hcsoci, "run", "--isolation", "vm", "--rm", "--", "true"]
            ),
        },
    )
    title = "VM isolation: docker run --rm --network none busybox true, hcsoci run --isolation vm"
    report(title, samples, "docker run --rm (runc)")
    report(title, samples, "hcsoci run --isolation vm --rm")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--only", choices=["ctr", "docker", "podman", "state", "vm"])
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-image-") as directory:
        archive = Path(directory) / "busybox.tar"
        write_archive(archive)
        floor = floor_runtime(Path(directory))
        floors = {FLOOR: floor, JOURNAL_FLOOR: journal_floor_runtime(Path(directory))}
        for part in ("ctr", "docker", "podman", "state", "vm"):
            if options.only not in (None, part):
                continue
            with contextlib.ExitStack() as stack:
                if part == "ctr":
                    bench_ctr(stack, archive, floors, options.rounds)
                elif part == "docker":
                    bench_docker(stack, archive, floors, options.rounds)
                elif part == "podman":
                    bench_podman(stack, archive, floors, options.rounds)
                elif part == "vm":
                    bench_vm(stack, archive, options.rounds)
                else:
                    bench_state(stack, floor, options.rounds)


if __name__ == "__main__":
    main()
