"""Image fixtures shared by the test suite: a private image store with the busybox image.

``busybox_image`` is session-scoped: the default image is built once (from this
machine's busybox-static, ~0.1 s) into a store under a temporary directory that
is removed at the end of the session, so no test touches /var/lib/hcsoci.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from hcsoci import images


@pytest.fixture(scope="session")
def session_image_store() -> Iterator[images.ImageStore]:
    """A private image store for the session (``$HCSOCI_IMAGES`` is left alone)."""
    root = Path(tempfile.mkdtemp(prefix="hcsoci-images-"))
    try:
        yield images.ImageStore(root / "store")
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def busybox_image(session_image_store: images.ImageStore) -> images.Image:
    """The default ``busybox`` image, in :func:`session_image_store`."""
    return images.ensure_default_image(session_image_store)


@pytest.fixture
def image_store(tmp_path: Path) -> images.ImageStore:
    """An empty image store of the test's own."""
    return images.ImageStore(tmp_path / "images")
