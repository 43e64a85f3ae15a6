"""Every example in README.md and docs/ runs, exactly as written.

A fenced block is ```python (run by this interpreter), ```sh (run by ``sh -e``,
with ``hcsoci`` on PATH), ```text (output, a synopsis, a layout: not code) or a
configuration file (```toml, ```yaml, ```json).
A bare ``` is refused, so that no example escapes by having no language.  A
block preceded by ``<!-- not run by the docs test: WHY -->`` is not run: the
machine set-up (CI runs it) and a wrapper script to save as a file.  Each runs in a directory of its
own, in this session's state root, on the session's image store.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from hcsoci import images
from hcsoci.images.default import write_layout

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_FENCE = re.compile(r"^```(\S*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
_NOT_RUN = re.compile(r"<!-- not run by the docs test: (.+?) -->\s*$")


def _blocks() -> list[tuple[str, int, str, str, str]]:
    found = []
    for document in DOCUMENTS:
        text = document.read_text()
        for number, match in enumerate(_FENCE.finditer(text)):
            before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
            skipped = _NOT_RUN.search(before)
            name = f"{document.relative_to(ROOT)}#{number}"
            found.append(
                (name, number, match.group(1), match.group(2), skipped.group(1) if skipped else "")
            )
    return found


BLOCKS = _blocks()
RUN = [block for block in BLOCKS if block[2] in ("python", "sh") and not block[4]]


CONFIGURATION = ("toml", "yaml", "json")
"""Languages of configuration files shown for an engine: data, not code to run."""


def test_every_block_says_what_it_is() -> None:
    known = ("python", "sh", "text", *CONFIGURATION)
    bare = [name for name, _, language, _, _ in BLOCKS if language not in known]
    assert bare == [], f"blocks without python/sh/text (or a configuration format): {bare}"
    skipped = sorted(code.split()[0] for name, _, _, code, why in BLOCKS if why)
    assert skipped == ["#!/bin/sh", "./setup.sh"], skipped  # the set-up, a runtime wrapper


@pytest.fixture
def example_dir(
    tmp_path: Path, session_image_store: images.ImageStore, busybox_image: images.Image
) -> tuple[Path, dict[str, str]]:
    """A working directory with what the examples open (``app.tar``), and their environment."""
    layout = tmp_path / "layout"
    write_layout(layout)
    with tarfile.open(tmp_path / "app.tar", "w") as archive:
        for entry in sorted(layout.iterdir()):
            archive.add(entry, arcname=entry.name)
    env = {
        **os.environ,
        "HCSOCI_IMAGES": str(session_image_store.root),
        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
    }
    return tmp_path, env


@pytest.mark.parametrize(
    ("name", "number", "language", "code", "why"), RUN, ids=[b[0] for b in RUN]
)
def test_example_runs_as_written(
    name: str,
    number: int,
    language: str,
    code: str,
    why: str,
    example_dir: tuple[Path, dict[str, str]],
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    cwd, env = example_dir
    if "uvm" in code:
        request.getfixturevalue("uvm_assets")  # built (or brought up to date) first
    if name.startswith("docs/images.md"):
        env = {**env, "HCSOCI_IMAGES": str(tmp_path / "images")}  # it imports app:1
    command = [sys.executable, "-c", code] if language == "python" else ["sh", "-e", "-c", code]
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, f"{name} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    assert "Traceback" not in done.stderr, done.stderr
