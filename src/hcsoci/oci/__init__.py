"""The OCI runtime-spec model: typed structs with snake_case attributes, camelCase JSON."""

from hcsoci.oci.process import Box, LinuxCapabilities, POSIXRlimit, Process, User

__all__ = ["Box", "LinuxCapabilities", "POSIXRlimit", "Process", "User"]
