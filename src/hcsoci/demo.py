"""The main job: the public API end to end, printing what happened.

``python -m hcsoci.demo`` first runs commands through ``Cmd`` on this machine:
captures output, feeds stdin, reports an exit code, kills a command whose
context timed out, runs one on a terminal (and resizes it), and relays a few
MiB into a file, descriptor to descriptor.  Then it does the same through a
real runc container created from an OCI spec on the default busybox image, and
releases every resource the container held.  It exits non-zero if anything did
not behave as expected.
"""

from __future__ import annotations

import io
import os
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from hcsoci import (
    CreateOptions,
    ExitError,
    LocalHost,
    command,
    command_context,
    context,
    create_container,
    images,
    oci,
    release_resources,
)
from hcsoci.cow import Container

__all__ = ["main"]


def _output_capture(host: LocalHost) -> str:
    output = command(host, "uname", "-sr").output()
    return f"uname -sr printed {output!r}"


def _stdin(host: LocalHost) -> str:
    cmd = command(host, "tr", "a-z", "A-Z")
    cmd.stdin = io.BytesIO(b"hello from stdin\n")
    output = cmd.output()
    assert output == b"HELLO FROM STDIN\n", output
    return f"tr a-z A-Z turned b'hello from stdin\\n' into {output!r}"


def _exit_code(host: LocalHost) -> str:
    try:
        command(host, "sh", "-c", "exit 64").run()
    except ExitError as err:
        assert err.exit_code == 64
        return f"sh -c 'exit 64' raised ExitError: {err}"
    raise AssertionError("exit 64 did not raise ExitError")


def _timeout_kill(host: LocalHost) -> str:
    ctx, cancel = context.with_timeout(context.background(), 0.5)
    cmd = command_context(ctx, host, "sleep", "60")
    start = time.monotonic()
    try:
        cmd.run()
    except ExitError as err:
        elapsed = time.monotonic() - start
        assert err.exit_code == 137 and ctx.err() is not None
        return (
            f"sleep 60 with a 0.5 s context: killed after {elapsed:.2f} s, "
            f"exit code {err.exit_code} (128 + SIGKILL), context: {ctx.err()}"
        )
    finally:
        cancel()
    raise AssertionError("the context did not kill sleep")


def _terminal(host: LocalHost) -> str:
    cmd = command(host, "sh", "-c", "tty; stty size")
    assert cmd.spec is not None
    cmd.spec.terminal = True
    cmd.spec.console_size = oci.Box(height=24, width=80)
    lines = cmd.output().decode().split("\r\n")
    assert lines[1] == "24 80", lines
    return f"on a terminal: tty is {lines[0]}, stty size says {lines[1]!r}"


def _resize(host: LocalHost) -> str:
    script = "trap 'stty size; exit 0' WINCH; echo ready; while :; do sleep 0.05; done"
    cmd = command(host, "sh", "-c", script)
    assert cmd.spec is not None
    cmd.spec.terminal = True
    read_end, write_end = os.pipe()
    with io.FileIO(read_end, "rb") as output, io.FileIO(write_end, "wb") as sink:
        cmd.stdout = sink
        cmd.start()
        assert cmd.process is not None
        assert output.read(7) == b"ready\r\n"
        cmd.process.resize_console(context.background(), 132, 50)
        cmd.wait()
        sink.close()
        size = output.read().decode().strip()
    assert size == "50 132", size
    return f"resized the terminal to 132x50: the process got SIGWINCH and saw {size!r}"


def _file_relay(host: LocalHost) -> str:
    mib = 64
    with tempfile.TemporaryFile(prefix="hcsoci-demo-") as sink:
        cmd = command(host, "head", "-c", f"{mib}M", "/dev/zero")
        cmd.stdout = sink
        start = time.monotonic()
        cmd.run()
        elapsed = time.monotonic() - start
        size = os.fstat(sink.fileno()).st_size
    assert size == mib << 20, size
    return f"{mib} MiB of stdout relayed into a file in {elapsed:.2f} s"


DEMOS: list[tuple[str, Callable[[LocalHost], str]]] = [
    ("output", _output_capture),
    ("stdin", _stdin),
    ("exit code", _exit_code),
    ("timeout", _timeout_kill),
    ("terminal", _terminal),
    ("resize", _resize),
    ("file relay", _file_relay),
]


def _in_container(container: Container) -> str:
    output = command(container, "sh", "-c", "echo $(hostname) pid $$; id -un").output()
    return f"exec in the container printed {output!r}"


def _container_exit_code(container: Container) -> str:
    try:
        command(container, "sh", "-c", "exit 3").run()
    except ExitError as err:
        assert err.exit_code == 3
        return f"sh -c 'exit 3' in the container raised ExitError: {err}"
    raise AssertionError("exit 3 did not raise ExitError")


def _container_kill(container: Container) -> str:
    ctx, cancel = context.with_timeout(context.background(), 0.5)
    try:
        command_context(ctx, container, "sleep", "60").run()
    except ExitError as err:
        assert err.exit_code == 137
        return f"sleep 60 in the container with a 0.5 s context: exit code {err.exit_code}"
    finally:
        cancel()
    raise AssertionError("the context did not kill sleep in the container")


def _container_properties(container: Container) -> str:
    props = container.properties(context.background())
    return (
        f"properties: state {props.state}, init pid {props.init_pid}, "
        f"{len(props.processes)} process(es), memory {props.memory_usage_bytes} bytes"
    )


CONTAINER_DEMOS: list[tuple[str, Callable[[Container], str]]] = [
    ("exec", _in_container),
    ("exit code", _container_exit_code),
    ("context", _container_kill),
    ("properties", _container_properties),
]


def _run_all(subject: Any, demos: list[tuple[str, Callable[[Any], str]]]) -> int:
    failures = 0
    for name, demo in demos:
        try:
            print(f"  ok    {name:10s} {demo(subject)}")
        except Exception as err:
            failures += 1
            print(f"  FAIL  {name:10s} {type(err).__name__}: {err}")
    return failures


def _container_section() -> int:
    ctx = context.background()
    image = images.ensure_default_image()
    print(f"hcsoci demo: a runc container from the {image.name} image (built locally)")
    with tempfile.TemporaryDirectory(prefix="hcsoci-demo-scratch-") as scratch:
        spec = images.spec_for_image(image, ["sleep", "3600"])
        assert spec.windows is not None and spec.windows.layer_folders is not None
        spec.windows.layer_folders.append(scratch)  # layern..layer1, then scratch
        container, resources = create_container(ctx, CreateOptions(spec=spec, owner="demo"))
        try:
            container.start(ctx)
            failures = _run_all(container, CONTAINER_DEMOS)
            container.terminate(ctx)
            container.wait()
        finally:
            container.close()
            held = len(resources)
            release_resources(ctx, resources, None, True)
        print(f"  ok    release    released {held} resource(s) in reverse order")
    return failures


def main() -> int:
    """Run every demo; print one line each; return the process exit status."""
    host = LocalHost()
    print(f"hcsoci demo: commands through Cmd on LocalHost (os={host.os()!r})")
    failures = _run_all(host, DEMOS)
    try:
        failures += _container_section()
    except Exception as err:
        failures += 1
        print(f"  FAIL  container  {type(err).__name__}: {err}")
    print("all demos behaved as expected" if not failures else f"{failures} demo(s) failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
