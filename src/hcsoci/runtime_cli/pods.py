"""Pods: the sandbox annotations the CRI engines write, read as runhcs reads them.

A Kubernetes pod is a *sandbox* container (the pause container) and the
pod's containers, each created by its own ``create``; the engine says which
is which in annotations (hcsshim's runhcs ``parseSandboxAnnotations``):

* containerd's CRI: ``io.kubernetes.cri.container-type`` = ``sandbox`` |
  ``container``, ``io.kubernetes.cri.sandbox-id``;
* cri-o: ``io.kubernetes.cri-o.ContainerType``, ``io.kubernetes.cri-o.SandboxID``;
* dockershim: ``io.kubernetes.docker.type`` = ``podsandbox`` | ``container``,
  ``io.kubernetes.sandbox.id``.

With VM isolation the sandbox gets a utility VM of its own and the pod's
containers are created in it (:mod:`hcsoci.runtime_cli.vm`); the isolation
of a pod's container follows its sandbox's unless a flag or the program name
chose it.  With process isolation nothing here applies: the engine's spec
names the sandbox's namespaces by path and runc joins them.

The annotations are the engine's, so hostile input: every id is checked
(:func:`hcsoci.ids.check_id`) before any path is made of it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from hcsoci.ids import check_id
from hcsoci.runtime_cli.annotations import POD_SCHEMES
from hcsoci.runtime_cli.commands import VM_DIRECTORY, CommandError

__all__ = [
    "SHARED_NAMESPACES",
    "Pod",
    "isolation_for_pod",
    "joined_namespaces",
    "pod_of",
]

_ROLES = {"sandbox": "sandbox", "podsandbox": "sandbox", "container": "container"}

SHARED_NAMESPACES = ("network", "ipc", "uts", "pid")
"""The namespaces a pod's container may share with its sandbox in the guest."""


@dataclass(frozen=True)
class Pod:
    """A container's place in a pod: ``role`` ``sandbox`` or ``container``, and the
    sandbox's id (the annotation ``annotation`` gave it: named in every error)."""

    role: str
    sandbox: str
    annotation: str

    def describe(self) -> dict[str, Any]:
        """What the record keeps of it (``container.json``)."""
        return {"role": self.role, "sandbox": self.sandbox}


def pod_of(container_id: str, annotations: object) -> Pod | None:
    """The pod role the spec's annotations give the container ``container_id``; None: none.

    A sandbox's id must be its own (as runhcs); a container must name its
    sandbox.  A role other than ``sandbox``/``container`` is refused.
    """
    if not isinstance(annotations, dict):
        return None
    for type_key, id_key in POD_SCHEMES:
        kind = annotations.get(type_key)
        if kind is None or kind == "":
            continue
        role = _ROLES.get(kind) if isinstance(kind, str) else None
        if role is None:
            raise CommandError(
                f"annotation {type_key}: {kind!r} is not a pod role (use sandbox or container)"
            )
        sandbox = annotations.get(id_key)
        if role == "sandbox":
            if sandbox in (None, ""):
                return Pod("sandbox", container_id, id_key)
            check_id(sandbox, f"annotation {id_key}")
            if sandbox != container_id:
                raise CommandError(
                    f"annotation {id_key}: {sandbox!r} is not the sandbox's own id "
                    f"{container_id!r} (a sandbox's id must match its container id)"
                )
            return Pod("sandbox", container_id, id_key)
        if sandbox in (None, ""):
            raise CommandError(
                f"annotation {id_key}: missing (annotation {type_key} is container: "
                "a pod's container names its sandbox)"
            )
        check_id(sandbox, f"annotation {id_key}")
        if sandbox == container_id:
            raise CommandError(f"annotation {id_key}: {sandbox!r} is the container itself")
        return Pod("container", str(sandbox), id_key)
    return None


def joined_namespaces(config: dict[str, Any]) -> list[str]:
    """The namespaces a pod's container shares with its sandbox in the guest.

    ``network`` always (the pod's network is the sandbox's); ``ipc``, ``uts``
    and ``pid`` when the engine's spec joins them (gives them a ``path``, the
    sandbox's on the host), as containerd's CRI does for a pod's shared ones.
    """
    joined = ["network"]
    linux = config.get("linux")
    for namespace in (linux.get("namespaces") or []) if isinstance(linux, dict) else []:
        if not isinstance(namespace, dict) or not namespace.get("path"):
            continue
        kind = namespace.get("type")
        if kind in SHARED_NAMESPACES and kind not in joined:
            joined.append(str(kind))
    return joined


def isolation_for_pod(root: str, wanted: str, bundle: str, data: bytes, chosen: str) -> str:
    """The isolation of container ``wanted`` given its pod: a container follows its sandbox.

    ``chosen`` is what the flag, the program name or ``io.hcsoci.isolation``
    decided ('' for nothing).  A container of a sandbox that is a VM
    container under ``root`` goes to its VM; naming process isolation for it
    is refused in one line.
    """
    try:
        config = json.loads(data)
    except ValueError as err:
        raise CommandError(f"bundle {bundle!r}: config.json is not valid JSON: {err}") from None
    annotations = config.get("annotations") if isinstance(config, dict) else None
    pod = pod_of(wanted, annotations)
    if pod is None or pod.role != "container":
        return chosen
    in_vm = os.path.isdir(os.path.join(root, VM_DIRECTORY, pod.sandbox))
    if in_vm and chosen == "process":
        raise CommandError(
            f"annotation {pod.annotation}: sandbox {pod.sandbox!r} is in a utility VM: "
            "its pod's containers cannot be process-isolated"
        )
    return "vm" if in_vm else chosen
