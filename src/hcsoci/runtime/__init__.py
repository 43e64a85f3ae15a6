"""The OCI runtime driver: ``runc`` (or ``crun``) through its command line."""

from hcsoci.runtime.runc import (
    DEFAULT_RUNTIME,
    OCIRuntimeError,
    Runtime,
    RuntimeState,
    runtime_name,
)

__all__ = ["DEFAULT_RUNTIME", "OCIRuntimeError", "Runtime", "RuntimeState", "runtime_name"]
