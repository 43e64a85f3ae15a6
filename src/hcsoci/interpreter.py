"""The command that starts one of hcsoci's own modules as a process of its own.

hcsoci starts Python helpers -- the VM controller (:mod:`hcsoci.uvm.service`),
the stand-in of an engine's VM process (:mod:`hcsoci.runtime_cli.standin`) --
in the interpreter it runs in.  An interpreter started isolated (``-I``, as
the ``hcsoci-runc`` launcher an engine runs as root is) starts them isolated
too: the caller's ``PYTHONPATH``, ``PYTHONSTARTUP`` and user site directory
choose nothing those root processes import or run either.
"""

from __future__ import annotations

import sys

__all__ = ["module_command"]


def module_command(module: str, *args: str) -> list[str]:
    """``python -m module args...`` for this interpreter, as isolated as this process is."""
    isolation = ["-I"] if sys.flags.isolated else []
    return [sys.executable, *isolation, "-m", module, *args]
