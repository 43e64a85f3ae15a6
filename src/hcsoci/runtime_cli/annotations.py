"""The spec annotations hcsoci-runc reads, and the byte test that spares a call parsing the spec.

``io.hcsoci.isolation`` chooses the isolation; the CRI engines' pod
annotations (see :mod:`hcsoci.runtime_cli.pods`) place a pod's container
beside its sandbox.  Parsing ``config.json`` costs an engine call the
imports of ``json`` and more, so a spec is parsed only when its bytes may
name one of these keys: when a key appears as it is, or when the spec uses a
``\\u`` escape anywhere (a key spelled with escapes is still that key).
Nothing but the standard library's builtins is imported here.
"""

from __future__ import annotations

__all__ = ["ISOLATION", "POD_SCHEMES", "may_name_isolation", "may_name_pod_role"]

ISOLATION = "io.hcsoci.isolation"
"""The bundle annotation that chooses the isolation (``process`` or ``vm``)."""

POD_SCHEMES = (
    ("io.kubernetes.cri.container-type", "io.kubernetes.cri.sandbox-id"),
    ("io.kubernetes.cri-o.ContainerType", "io.kubernetes.cri-o.SandboxID"),
    ("io.kubernetes.docker.type", "io.kubernetes.sandbox.id"),
)
"""(role key, sandbox id key) of containerd's CRI, cri-o, and dockershim, as runhcs reads them.

podman writes other ``io.kubernetes.cri-o.*`` annotations (``Created``,
``TTY``) on every container: they name no pod.
"""

_ESCAPE = b"\\u"


def may_name_isolation(config: bytes) -> bool:
    """Whether the spec's bytes may hold the isolation annotation (parse it to know)."""
    return ISOLATION.encode() in config or _ESCAPE in config


def may_name_pod_role(config: bytes) -> bool:
    """Whether the spec's bytes may hold a pod role annotation (parse it to know)."""
    return _ESCAPE in config or any(role.encode() in config for role, _ in POD_SCHEMES)
