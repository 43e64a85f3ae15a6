"""docker's ``run``/``create`` flags: their click options, their checks, their effect on a spec.

:func:`parse_flags` checks every flag before anything is made (a missing
volume source, ``--memory 1x``, ``--cpus -1``, an env file that is not there:
one line naming the flag and the value); :func:`apply_flags` puts them into the
spec built for the image or root.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import click

from hcsoci import oci
from hcsoci.errors import InvalidArgumentError
from hcsoci.run_options import (
    INIT_BINARY,
    MountRequest,
    add_init,
    adjust_capabilities,
    apply_limits,
    make_privileged,
    parse_cpus,
    parse_dns,
    parse_env_file,
    parse_memory,
    parse_mount,
    parse_pids,
    parse_tmpfs,
    parse_volume,
    pass_through,
)

if TYPE_CHECKING:
    from hcsoci.cli.containers import ContainerRequest
    from hcsoci.ports import PortMapping

__all__ = ["ParsedFlags", "apply_flags", "flag_options", "parse_flags"]


@dataclass
class ParsedFlags:
    """The checked values of the flags (what :func:`apply_flags` uses)."""

    env: list[str] = field(default_factory=list)
    mounts: list[MountRequest] = field(default_factory=list)
    memory: int | None = None
    cpus: float | None = None
    pids: int | None = None
    dns: list[str] = field(default_factory=list)
    ports: list[PortMapping] = field(default_factory=list)


def parse_flags(request: ContainerRequest) -> ParsedFlags:
    """Check every flag of ``request``; raises naming the flag and the value."""
    flags = ParsedFlags()
    for path in request.env_files:
        flags.env += parse_env_file(path, "--env-file")
    for entry in request.env:
        value = pass_through(entry, "--env")
        if value is not None:
            flags.env.append(value)
    flags.mounts = [parse_volume(value, "--volume") for value in request.volumes]
    flags.mounts += [parse_mount(value, "--mount") for value in request.mount_specs]
    flags.mounts += [parse_tmpfs(value, "--tmpfs") for value in request.tmpfs]
    if request.memory is not None:
        flags.memory = parse_memory(request.memory, "--memory")
    if request.cpus is not None:
        flags.cpus = parse_cpus(request.cpus, "--cpus")
    if request.pids_limit is not None:
        flags.pids = parse_pids(request.pids_limit, "--pids-limit")
    flags.dns = parse_dns(request.dns, "--dns")
    if request.publish:
        from hcsoci.ports import parse_publish

        flags.ports = [parse_publish(value) for value in request.publish]
        if not request.networks:
            raise InvalidArgumentError(
                f"--publish: {request.publish[0]!r} needs --network NAME (a nat network)"
            )
    # Names are checked now; the sets are computed on the spec.
    adjust_capabilities(oci.default_spec(["true"]), request.cap_add, request.cap_drop)
    return flags


def apply_flags(spec: oci.Spec, request: ContainerRequest, flags: ParsedFlags) -> oci.Spec:
    """``spec`` with the flags applied (a new object when the capabilities change)."""
    assert spec.process is not None
    if request.entrypoint is not None:
        argv = [*([request.entrypoint] if request.entrypoint else []), *request.args]
        if not argv:
            raise InvalidArgumentError("--entrypoint: '' and no CMD: nothing to run")
        spec.process.args = argv
    if request.hostname is not None:
        if not request.hostname or len(request.hostname) > 64 or "/" in request.hostname:
            raise InvalidArgumentError(f"--hostname: {request.hostname!r} is not a host name")
        spec.hostname = request.hostname
    if request.read_only:
        assert spec.root is not None
        spec.root.readonly = True
    spec.mounts = [*(spec.mounts or []), *(m.to_mount() for m in flags.mounts)]
    apply_limits(spec, memory=flags.memory, cpus=flags.cpus, pids=flags.pids)
    if request.privileged:
        spec = make_privileged(spec)
    spec = adjust_capabilities(spec, request.cap_add, request.cap_drop)
    if request.init:
        add_init(spec, INIT_BINARY)
    return spec


def flag_options() -> list[Callable[[Any], Any]]:
    """The click options of the flags (added to ``run`` and ``create``)."""
    return [
        click.option("-v", "--volume", "volumes", multiple=True, metavar="SRC:DST[:ro]",
                     help="Bind mount a host path."),
        click.option("--mount", "mount_specs", multiple=True,
                     metavar="type=bind|tmpfs,source=..,target=..[,readonly]",
                     help="A bind or tmpfs mount, docker's --mount syntax."),
        click.option("--tmpfs", multiple=True, metavar="DST[:OPTS]",
                     help="A tmpfs mount (size=64m,mode=1777,noexec,uid=N,gid=N)."),
        click.option("-p", "--publish", multiple=True, metavar="[IP:]HOSTPORT:PORT[/tcp]",
                     help="Forward a host port to the container (needs --network)."),
        click.option("-m", "--memory", metavar="SIZE", help="Memory limit (64m, 1g)."),
        click.option("--cpus", metavar="N", help="CPU limit (1.5)."),
        click.option("--pids-limit", metavar="N", help="Process count limit."),
        click.option("-u", "--user", metavar="NAME|UID[:GID]", help="User to run as."),
        click.option("--read-only", is_flag=True, help="Mount the root file system read-only."),
        click.option("--env-file", "env_files", multiple=True, metavar="FILE",
                     help="Read NAME=VALUE lines (NAME alone: passed through)."),
        click.option("--entrypoint", metavar="CMD",
                     help="Replace the image's entrypoint ('' removes it)."),
        click.option("--hostname", metavar="NAME", help="The container's host name."),
        click.option("--init", is_flag=True,
                     help="Run an init (tini) as pid 1: forwards signals, reaps zombies."),
        click.option("--cap-add", multiple=True, metavar="CAP", help="Add a capability (or ALL)."),
        click.option("--cap-drop", multiple=True, metavar="CAP",
                     help="Drop a capability (or ALL)."),
        click.option("--privileged", is_flag=True,
                     help="Every capability, no seccomp filter, no masked paths."),
        click.option("--dns", multiple=True, metavar="IP", help="A name server for resolv.conf."),
    ]  # fmt: skip
