"""The ``hcsoci-runc`` an engine starts: this interpreter, isolated (``-IS``), and nothing else.

pip's console script starts the interpreter with its ``site`` processing
(every ``.pth`` file of the environment) and lets ``PYTHONPATH`` and the other
``PYTHON*`` variables of the engine's environment choose what a root process
imports.  ``make runtime`` replaces the environment's ``hcsoci-runc`` and
``hcsoci-runc-vm`` scripts with the launcher written here: ``python -IS``
(no site, no environment, no user directory), with the package's directory
and the environment's site-packages named once, at install time::

    .venv/bin/python -m hcsoci.runtime_cli.launcher .venv/bin/hcsoci-runc .venv/bin/hcsoci-runc-vm

Reinstalling the package with pip brings its own scripts back; they work the
same, a little slower.
"""

from __future__ import annotations

import os
import sys
import sysconfig

__all__ = ["launcher_text", "write_launcher"]


def launcher_text() -> str:
    """The launcher for this interpreter and this installation of the package."""
    import hcsoci

    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(hcsoci.__file__)))
    paths = [package_parent]
    for name in ("purelib", "platlib"):
        directory = sysconfig.get_paths()[name]
        if directory not in paths:
            paths.append(directory)
    return (
        f"#!{sys.executable} -IS\n"
        "# hcsoci-runc, written by `make runtime` (hcsoci.runtime_cli.launcher).\n"
        "import sys\n"
        f"sys.path.extend({paths!r})\n"
        "from hcsoci.runtime_cli.main import exit_at_once, main\n"
        "exit_at_once(main())\n"
    )


def write_launcher(path: str) -> None:
    """Write the launcher to ``path`` (0755), replacing what is there in one rename."""
    staging = f"{path}.new-{os.getpid()}"
    fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o755)
    try:
        with os.fdopen(fd, "w") as file:
            os.fchmod(fd, 0o755)
            file.write(launcher_text())
        os.replace(staging, path)
    except BaseException:
        os.unlink(staging)
        raise


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: python -m hcsoci.runtime_cli.launcher PATH...")
    for target in sys.argv[1:]:
        write_launcher(target)
