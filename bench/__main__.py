"""Run every benchmark in turn: ``python -m bench [NAME...]``.

Each benchmark measures hcsoci against its named baseline in the same run and
prints ratios; see the README for the figures.  Names: cmd, container, hns,
images, layers, sandbox, uvm, bridge, engines (default: all).
"""

from __future__ import annotations

import subprocess
import sys

BENCHMARKS = [
    "bridge", "cmd", "container", "engines", "hns", "images", "layers", "sandbox", "uvm",
]  # fmt: skip


def main() -> int:
    """Run the named benchmarks (default: all), each in its own interpreter."""
    names = sys.argv[1:] or BENCHMARKS
    status = 0
    for name in names:
        if name not in BENCHMARKS:
            print(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}", file=sys.stderr)
            return 2
        print(f"== bench.bench_{name}", flush=True)
        status |= subprocess.run([sys.executable, "-m", f"bench.bench_{name}"]).returncode
    return status


if __name__ == "__main__":
    sys.exit(main())
