"""The OCI runtime-spec model: typed structs with snake_case attributes, camelCase JSON.

>>> spec = default_spec(["echo", "hi"])
>>> decode_spec(encode_spec(spec)) == spec
True
"""

# Every submodule's public names, re-exported: its own __all__ is the one list.
from hcsoci.oci import codec, defaults, process, seccomp, spec, validation
from hcsoci.oci.codec import *  # noqa: F403
from hcsoci.oci.defaults import *  # noqa: F403
from hcsoci.oci.process import *  # noqa: F403
from hcsoci.oci.seccomp import *  # noqa: F403
from hcsoci.oci.spec import *  # noqa: F403
from hcsoci.oci.validation import *  # noqa: F403

__all__ = [
    *codec.__all__,
    *defaults.__all__,
    *process.__all__,
    *seccomp.__all__,
    *spec.__all__,
    *validation.__all__,
]
