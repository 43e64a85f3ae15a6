"""Layer extraction against GNU tar, interleaved in one run.

1. Extract: :func:`hcsoci.images.extract_layer` (safe walk, whiteout
   conversion, diff-id hashing) against ``tar -xf`` of the same layer into a
   fresh directory (GNU tar, no hashing, no checks), alternating call by call.
   Two layers: the busybox image layer (one 2 MB file and ~270 symlinks) and a
   synthetic layer of many small files in nested directories.
2. Import: ``ImageStore.import_image`` of a docker-save archive holding the
   synthetic layer (archive parsing, staging, rename, index) against
   ``tar -xf`` of the archive followed by ``tar -xf`` of its layer.

Prints the medians and their ratios.  Run: ``python -m bench.bench_images``
(``--rounds N``, ``--files N``).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import io
import json
import shutil
import statistics
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from hcsoci import images
from hcsoci.images.default import build_layer


def _time(function: Callable[[], object]) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def _synthetic_layer(files: int) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for index in range(files):
            if index % 50 == 0:
                info = tarfile.TarInfo(f"d{index // 50}")
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
            data = hashlib.sha256(str(index).encode()).digest() * (1 + index % 128)
            info = tarfile.TarInfo(f"d{index // 50}/f{index}")
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
        for index in range(0, files, 10):
            info = tarfile.TarInfo(f"d{index // 50}/.wh.gone{index}")
            tar.addfile(info)
    return buffer.getvalue()


def _docker_save(path: Path, layer: bytes) -> None:
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    config = json.dumps({"rootfs": {"type": "layers", "diff_ids": [diff_id]}}).encode()
    manifest = json.dumps(
        [{"Config": "c.json", "RepoTags": ["bench:1"], "Layers": ["l/layer.tar"]}]
    )
    with tarfile.open(path, "w") as tar:
        for name, data in (
            ("c.json", config),
            ("l/layer.tar", layer),
            ("manifest.json", manifest.encode()),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _fresh(work: Path, name: str) -> Path:
    target = work / name
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir()
    return target


def _ratio_line(label: str, ours: list[float], baseline: list[float], base_name: str) -> None:
    mine, theirs = statistics.median(ours), statistics.median(baseline)
    print(
        f"{label:<34} hcsoci {mine * 1000:8.1f} ms   {base_name} {theirs * 1000:8.1f} ms   "
        f"ratio {mine / theirs:5.2f}x"
    )


def _extract_ours(blob: Path, target: Path) -> None:
    with open(blob, "rb") as stream:
        images.extract_layer(stream, target)


def _extract_tar(blob: Path, target: Path) -> None:
    subprocess.run(["tar", "-C", str(target), "-xf", str(blob)], check=True)


def _untar_archive_then_layer(archive: Path, work: Path) -> None:
    unpacked = _fresh(work, "tar-archive")
    _extract_tar(archive, unpacked)
    _extract_tar(unpacked / "l" / "layer.tar", _fresh(work, "tar-layer"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--files", type=int, default=5000)
    options = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-images-"))
    try:
        layers = {
            "busybox layer": build_layer(),
            "synthetic layer": _synthetic_layer(options.files),
        }
        for label, layer in layers.items():
            blob = work / "layer.tar"
            blob.write_bytes(layer)
            ours: list[float] = []
            baseline: list[float] = []
            for _ in range(options.rounds):
                ours.append(_time(functools.partial(_extract_ours, blob, _fresh(work, "ours"))))
                baseline.append(_time(functools.partial(_extract_tar, blob, _fresh(work, "tar"))))
            _ratio_line(f"extract {label} ({len(layer) >> 10} KiB)", ours, baseline, "tar -xf")
        archive = work / "bench.tar"
        _docker_save(archive, layers["synthetic layer"])
        ours, baseline = [], []
        for _ in range(options.rounds):
            store = images.ImageStore(_fresh(work, "store"))
            ours.append(_time(functools.partial(store.import_image, archive)))
            baseline.append(_time(functools.partial(_untar_archive_then_layer, archive, work)))
        _ratio_line("import docker-save archive", ours, baseline, "tar x2")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
