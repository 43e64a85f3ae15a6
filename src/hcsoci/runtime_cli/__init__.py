"""``hcsoci-runc``: an OCI runtime with runc's command line, over hcsoci (hcsshim's runhcs).

containerd (``containerd-shim-runc-v2``), docker and podman drive their OCI
runtime through runc's command line (recorded in the project's
``interop/CLI-SURFACE.md``); naming ``hcsoci-runc`` as that runtime puts their
containers in hcsoci's state store, where ``hcsoci list``, ``hcsoci delete``
and ``hcsoci gc`` see them.

Process isolation delegates the container operations to the real ``runc``,
whose state lives under hcsoci's state root (``--root R`` is hcsoci's root,
runc's own is ``R/runc``), in runc's detached create/start model: ``create``
leaves runc's init waiting, its pid in ``--pid-file``, for the engine's shim
to reap as subreaper.  The modules:

* :mod:`~hcsoci.runtime_cli.argv` -- runc's flags, global and per command;
* :mod:`~hcsoci.runtime_cli.report` -- one-line errors on stderr and in ``--log``;
* :mod:`~hcsoci.runtime_cli.runc` -- the real runc: found, exec'd or spawned;
* :mod:`~hcsoci.runtime_cli.records` -- the container's rows in the state store;
* :mod:`~hcsoci.runtime_cli.commands` -- each command;
* :mod:`~hcsoci.runtime_cli.main` -- the entry point.

Every call an engine makes starts a new process, so nothing here imports more
than the standard library's basics, the state store and the id rules: no
click, rich, msgspec or pyroute2 on the engines' path.
"""
