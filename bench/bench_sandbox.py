"""The one-call API and the CLI against their baselines, interleaved in one run.

    .venv/bin/python -m bench.bench_sandbox [--rounds N]

1. ``hcsoci.run(rootfs, ["true"], read_only=True)`` against the container
   lifecycle of ``bench_container`` (create_container, start, wait, close,
   release_resources) of the same spec on the same root; and
   ``hcsoci.run("busybox", ["true"])`` (overlay root, scratch folder) beside it.
2. ``hcsoci run --rm busybox true`` from the shell, interpreter start included,
   against ``runc run`` of a bundle on the same image's root; beside it the
   floors a Python command cannot go below: ``python -c pass`` and
   ``python -I -S -c pass``, ``python -c 'import hcsoci.cli.main'`` (the CLI's
   start-up), the import of everything ``run`` needs (the CLI's import time) and
   of the three modules any Python implementation of this design needs
   (``msgspec`` for the spec, ``sqlite3`` for the state store, ``subprocess`` for
   runc: the floor), each also against ``runc run``.

The CLI runs with its byte code cached (``compileall`` first; a harness that
sets ``PYTHONDONTWRITEBYTECODE`` would make every run compile its sources).
Prints medians and ratios.  Must run as root.
"""

from __future__ import annotations

import argparse
import compileall
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

from bench.timing import interleaved, report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="hcsoci-bench-", dir="/run"))
    os.environ["HCSOCI_ROOT"] = str(work / "state")
    os.environ.setdefault("HCSOCI_IMAGES", str(work / "images"))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    import hcsoci
    from hcsoci import context, images, oci
    from hcsoci.create import CreateOptions, create_container
    from hcsoci.resources import release_resources

    compileall.compile_dir(str(Path(hcsoci.__file__).parent), quiet=1)
    ctx = context.background()
    try:
        image = images.ensure_default_image()
        rootfs = image.layer_folders[0]
        spec = oci.default_spec(["true"])
        spec.root = oci.Root(path=rootfs, readonly=True)
        bundle = work / "bundle"
        bundle.mkdir()
        (bundle / "config.json").write_bytes(oci.encode_spec(spec))
        runc_root = work / "raw-runc"

        def runc_run() -> None:
            subprocess.run(
                ["runc", "--root", str(runc_root), "run", "b" + uuid.uuid4().hex[:12]],
                cwd=bundle, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, check=True,
            )  # fmt: skip

        def lifecycle() -> None:
            container, resources = create_container(ctx, CreateOptions(spec=spec))
            container.start(ctx)
            container.wait()
            container.close()
            release_resources(ctx, resources, None, True)

        def one_call_rootfs() -> None:
            assert hcsoci.run(Path(rootfs), ["true"], read_only=True).returncode == 0

        def one_call_image() -> None:
            assert hcsoci.run("busybox", ["true"]).returncode == 0

        samples = interleaved(
            args.rounds,
            {
                "container lifecycle (bench_container)": lifecycle,
                "hcsoci.run(rootfs, ['true'], read_only=True)": one_call_rootfs,
                "hcsoci.run('busybox', ['true'])": one_call_image,
            },
        )
        report(
            "the one-call API, `true`", samples, "container lifecycle (bench_container)", width=44
        )

        python = sys.executable
        hcsoci_cli = str(Path(python).parent / "hcsoci")

        def command(*argv: str) -> Callable[[], None]:
            def run() -> None:
                subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, check=True)

            return run

        run_imports = "import hcsoci.cli.main, hcsoci.cli.containers, hcsoci.images"
        samples = interleaved(
            args.rounds,
            {
                "runc run (bundle on the image's root)": runc_run,
                "hcsoci run --rm busybox true": command(
                    hcsoci_cli, "run", "--rm", "busybox", "true"
                ),
                "python -c pass": command(python, "-c", "pass"),
                "python -I -S -c pass": command(python, "-I", "-S", "-c", "pass"),
                "start-up: python -c 'import hcsoci.cli.main'": command(
                    python, "-c", "import hcsoci.cli.main"
                ),
                "imports of run: hcsoci.cli.containers, images": command(python, "-c", run_imports),
                "floor: python -c 'import msgspec, sqlite3, subprocess'": command(
                    python, "-c", "import msgspec, sqlite3, subprocess"
                ),
            },
        )
        report(
            "the CLI from the shell, interpreter included",
            samples,
            "runc run (bundle on the image's root)",
        )
        cli = statistics.median(samples["hcsoci run --rm busybox true"])
        floor = statistics.median(samples["imports of run: hcsoci.cli.containers, images"])
        lifecycle_ms = statistics.median(samples["runc run (bundle on the image's root)"])
        print(
            f"\n  the CLI's own share: {(cli - floor) * 1000:.1f} ms after its imports "
            f"({floor * 1000:.1f} ms, interpreter start included); runc run alone "
            f"{lifecycle_ms * 1000:.1f} ms"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
