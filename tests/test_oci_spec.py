"""The runtime-spec model: decoding, validation, defaults, and runc accepting what we write."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hcsoci import oci
from hcsoci.errors import InvalidArgumentError

FULL_SPEC: dict[str, Any] = {
    "ociVersion": "1.2.0",
    "process": {
        "terminal": True,
        "consoleSize": {"height": 25, "width": 80},
        "user": {"uid": 1, "gid": 1, "umask": 18, "additionalGids": [5, 6], "username": "x"},
        "args": ["sh", "-c", "true"],
        "env": ["PATH=/bin", "TERM=xterm"],
        "cwd": "/work",
        "capabilities": {
            "bounding": ["CAP_KILL"],
            "effective": ["CAP_KILL"],
            "inheritable": ["CAP_KILL"],
            "permitted": ["CAP_KILL"],
            "ambient": ["CAP_KILL"],
        },
        "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 512}],
        "noNewPrivileges": True,
        "apparmorProfile": "unconfined",
        "oomScoreAdj": -100,
        "scheduler": {"policy": "SCHED_OTHER", "nice": 5},
        "selinuxLabel": "system_u:system_r:svirt_lxc_net_t:s0:c124,c675",
        "ioPriority": {"class": "IOPRIO_CLASS_BE", "priority": 4},
        "execCPUAffinity": {"initial": "0", "final": "0-1"},
    },
    "root": {"path": "rootfs", "readonly": True},
    "hostname": "box",
    "domainname": "example.internal",
    "mounts": [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {
            "destination": "/data",
            "type": "bind",
            "source": "/srv/data",
            "options": ["rbind", "ro"],
            "uidMappings": [{"containerID": 0, "hostID": 1000, "size": 1}],
            "gidMappings": [{"containerID": 0, "hostID": 1000, "size": 1}],
        },
    ],
    "hooks": {
        "prestart": [{"path": "/usr/bin/fix-mounts", "args": ["fix-mounts", "a"], "env": ["K=V"]}],
        "createRuntime": [{"path": "/usr/bin/setup-network"}],
        "createContainer": [{"path": "/usr/bin/a"}],
        "startContainer": [{"path": "/usr/bin/refresh-ldcache"}],
        "poststart": [{"path": "/usr/bin/notify-start", "timeout": 5}],
        "poststop": [{"path": "/usr/sbin/cleanup.sh", "args": ["cleanup.sh", "-f"]}],
    },
    "annotations": {"com.example.key1": "value1"},
    "linux": {
        "uidMappings": [{"containerID": 0, "hostID": 100000, "size": 65536}],
        "gidMappings": [{"containerID": 0, "hostID": 100000, "size": 65536}],
        "sysctl": {"net.ipv4.ip_forward": "1", "kernel.msgmax": "8192"},
        "resources": {
            "devices": [
                {"allow": False, "access": "rwm"},
                {"allow": True, "type": "c", "major": 10, "minor": 229, "access": "rw"},
            ],
            "memory": {
                "limit": 536870912,
                "reservation": 536870912,
                "swap": 536870912,
                "kernel": -1,
                "kernelTCP": -1,
                "swappiness": 0,
                "disableOOMKiller": False,
                "useHierarchy": True,
                "checkBeforeUpdate": True,
            },
            "cpu": {
                "shares": 1024,
                "quota": 1000000,
                "burst": 1000,
                "period": 500000,
                "realtimeRuntime": 950000,
                "realtimePeriod": 1000000,
                "cpus": "2-3",
                "mems": "0-7",
                "idle": 0,
            },
            "pids": {"limit": 32771},
            "blockIO": {
                "weight": 10,
                "leafWeight": 10,
                "weightDevice": [{"major": 8, "minor": 0, "weight": 500, "leafWeight": 300}],
                "throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 600}],
                "throttleWriteBpsDevice": [{"major": 8, "minor": 0, "rate": 700}],
                "throttleReadIOPSDevice": [{"major": 8, "minor": 0, "rate": 800}],
                "throttleWriteIOPSDevice": [{"major": 8, "minor": 0, "rate": 900}],
            },
            "hugepageLimits": [{"pageSize": "2MB", "limit": 209715200}],
            "network": {"classID": 1048577, "priorities": [{"name": "eth0", "priority": 500}]},
            "rdma": {"mlx5_1": {"hcaHandles": 3, "hcaObjects": 10000}},
            "unified": {"io.weight": "100"},
        },
        "cgroupsPath": "/myRuntime/myContainer",
        "namespaces": [
            {"type": "pid"},
            {"type": "network"},
            {"type": "ipc"},
            {"type": "uts"},
            {"type": "mount"},
            {"type": "user"},
            {"type": "cgroup"},
            {"type": "time"},
        ],
        "devices": [
            {"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229, "fileMode": 438},
            {"path": "/dev/sda", "type": "b", "major": 8, "minor": 0, "uid": 0, "gid": 0},
        ],
        "netDevices": {"eth1": {"name": "eth9"}},
        "seccomp": {
            "defaultAction": "SCMP_ACT_ALLOW",
            "defaultErrnoRet": 1,
            "architectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"],
            "flags": ["SECCOMP_FILTER_FLAG_LOG"],
            "listenerPath": "/run/seccomp-agent.socket",
            "listenerMetadata": "meta",
            "syscalls": [
                {
                    "names": ["getcwd", "chmod"],
                    "action": "SCMP_ACT_ERRNO",
                    "errnoRet": 1,
                    "args": [{"index": 0, "value": 1, "valueTwo": 2, "op": "SCMP_CMP_EQ"}],
                }
            ],
        },
        "rootfsPropagation": "slave",
        "maskedPaths": ["/proc/kcore"],
        "readonlyPaths": ["/proc/sys"],
        "mountLabel": "system_u:object_r:svirt_sandbox_file_t:s0:c715,c811",
        "intelRdt": {
            "closID": "guaranteed_group",
            "l3CacheSchema": "L3:0=7f0;1=1f",
            "memBwSchema": "MB:0=20;1=70",
            "enableCMT": True,
            "enableMBM": True,
        },
        "personality": {"domain": "LINUX", "flags": []},
        "timeOffsets": {"monotonic": {"secs": 1, "nanosecs": 2}},
        "memoryPolicy": {"mode": "MPOL_INTERLEAVE", "nodes": "0-1", "flags": []},
    },
    "windows": {
        "layerFolders": ["/var/lib/layers/2", "/var/lib/layers/1", "/run/scratch"],
        "network": {
            "endpointList": ["ep-1"],
            "allowUnqualifiedDNSQuery": True,
            "DNSSearchList": ["example.internal"],
            "networkSharedContainerName": "other",
            "networkNamespace": "ns-1",
        },
    },
    "vm": {"hypervisor": {"path": "/usr/bin/qemu"}, "kernel": {"path": "/boot/vmlinuz"}},
}


def test_full_spec_round_trips_key_for_key() -> None:
    spec = oci.decode_spec(json.dumps(FULL_SPEC))
    assert json.loads(oci.encode_spec(spec)) == FULL_SPEC
    assert spec.process is not None and spec.process.io_priority is not None
    assert spec.process.io_priority.class_ == "IOPRIO_CLASS_BE"
    assert spec.linux is not None and spec.linux.resources is not None
    assert spec.linux.resources.block_io is not None
    assert spec.linux.resources.block_io.throttle_read_iops_device == [
        oci.LinuxThrottleDevice(major=8, minor=0, rate=800)
    ]
    assert spec.windows is not None and spec.windows.network is not None
    assert spec.windows.network.endpoint_list == ["ep-1"]
    assert spec.windows.layer_folders == [
        "/var/lib/layers/2",
        "/var/lib/layers/1",
        "/run/scratch",
    ]


@pytest.mark.parametrize("form", ["bytes", "str", "dict"])
def test_decode_accepts_bytes_str_and_dict(form: str) -> None:
    data: bytes | str | dict[str, Any]
    if form == "bytes":
        data = json.dumps(FULL_SPEC).encode()
    elif form == "str":
        data = json.dumps(FULL_SPEC)
    else:
        data = copy.deepcopy(FULL_SPEC)
    assert oci.decode_spec(data) == oci.decode_spec(json.dumps(FULL_SPEC))


def test_minimal_spec_keeps_required_keys_when_encoded() -> None:
    spec = oci.Spec(oci_version="1.0.2", process=oci.Process(args=["true"]))
    assert json.loads(oci.encode_spec(spec)) == {
        "ociVersion": "1.0.2",
        "process": {"cwd": "/", "args": ["true"], "user": {"uid": 0, "gid": 0}},
    }


def _mutated(change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    document = copy.deepcopy(FULL_SPEC)
    change(document)
    return document


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(document: dict[str, Any]) -> None:
        *parents, last = path.split("/")
        target: Any = document
        for step in parents:
            target = target[int(step)] if step.isdigit() else target[step]
        target[int(last) if last.isdigit() else last] = value

    return change


def _delete(path: str) -> Callable[[dict[str, Any]], None]:
    def change(document: dict[str, Any]) -> None:
        *parents, last = path.split("/")
        target: Any = document
        for step in parents:
            target = target[int(step)] if step.isdigit() else target[step]
        del target[int(last) if last.isdigit() else last]

    return change


def _both(*changes: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    def change(document: dict[str, Any]) -> None:
        for each in changes:
            each(document)

    return change


BAD_SPECS = [
    # (change, JSON path in the message, value shown in the message)
    (_set("process/args/1", 7), "$.process.args[1]", "(value: 7)"),
    (_set("process/args", []), "$.process.args", "(value: [])"),
    (_set("process/args/0", ""), "$.process.args[0]", "(value: '')"),
    (_set("process/cwd", "work"), "$.process.cwd", "(value: 'work')"),
    (_set("process/env/1", "NOEQUALS"), "$.process.env[1]", "(value: 'NOEQUALS')"),
    (_set("process/user/uid", -5), "$.process.user.uid", "(value: -5)"),
    (_set("process/user/umask", 0o1777), "$.process.user.umask", "(value: 1023)"),
    (_set("process/terminal", "yes"), "$.process.terminal", "(value: 'yes')"),
    (_set("process/argz", ["x"]), "$.process.argz", "unknown field (value: ['x'])"),
    (_set("root/readOnly", True), "$.root.readOnly", "unknown field (value: True)"),
    (
        _set("process/capabilities/bounding/0", "CAP_FLY"),
        "$.process.capabilities.bounding[0]",
        "'CAP_FLY'",
    ),
    (_set("process/rlimits/0/type", "RLIMIT_BOGUS"), "$.process.rlimits[0].type", "'RLIMIT_BOGUS'"),
    (_set("process/rlimits/0/soft", 4096), "$.process.rlimits[0].soft", "(value: 4096)"),
    (_delete("ociVersion"), "$.ociVersion", "required field is missing"),
    (_set("ociVersion", "0.1"), "$.ociVersion", "(value: '0.1')"),
    # An empty root.path is only refused without layer folders (they make the root).
    (_both(_delete("windows"), _set("root/path", "")), "$.root.path", "(value: '')"),
    (_set("mounts/1/destination", "data"), "$.mounts[1].destination", "(value: 'data')"),
    (_set("mounts/1/destination", "/a/../b"), "$.mounts[1].destination", "'/a/../b'"),
    (_set("mounts/1/source", ""), "$.mounts[1].source", "(value: '')"),
    (_set("mounts/0/type", ""), "$.mounts[0].type", "(value: '')"),
    (_delete("mounts/0/destination"), "$.mounts[0].destination", "required field is missing"),
    (_set("hooks/prestart/0/path", "fix"), "$.hooks.prestart[0].path", "(value: 'fix')"),
    (_set("hooks/poststart/0/timeout", 0), "$.hooks.poststart[0].timeout", "(value: 0)"),
    (_set("annotations/com.example.key1", 5), "$.annotations['com.example.key1']", "(value: 5)"),
    (_set("linux/namespaces/2/type", "nett"), "$.linux.namespaces[2].type", "'nett'"),
    (_set("linux/namespaces/2/type", "pid"), "$.linux.namespaces[2].type", "listed twice"),
    (
        _set("linux/namespaces/0/path", "proc/1/ns/pid"),
        "$.linux.namespaces[0].path",
        "'proc/1/ns/pid'",
    ),
    (_set("linux/devices/0/type", "x"), "$.linux.devices[0].type", "(value: 'x')"),
    (
        _set("linux/resources/devices/1/access", "rwx"),
        "$.linux.resources.devices[1].access",
        "'rwx'",
    ),
    (_set("linux/resources/cpu/cpus", "two"), "$.linux.resources.cpu.cpus", "'two'"),
    (_set("linux/resources/memory/limit", "1G"), "$.linux.resources.memory.limit", "'1G'"),
    (_set("linux/rootfsPropagation", "sideways"), "$.linux.rootfsPropagation", "'sideways'"),
    (_set("linux/maskedPaths/0", "proc/kcore"), "$.linux.maskedPaths[0]", "'proc/kcore'"),
    (_set("linux/seccomp/defaultAction", "ALLOW"), "$.linux.seccomp.defaultAction", "'ALLOW'"),
    (
        _set("linux/seccomp/syscalls/0/args/0/op", "=="),
        "$.linux.seccomp.syscalls[0].args[0].op",
        "'=='",
    ),
    (_set("linux/personality/domain", "BSD"), "$.linux.personality.domain", "'BSD'"),
    (_set("windows/hyperv", {}), "$.windows.hyperv", "not supported in a Linux spec"),
    (_set("windows/layerFolders/0", "layers/2"), "$.windows.layerFolders[0]", "'layers/2'"),
    (_set("windows/layerFolders/1", "/var/lib/layers/2"), "$.windows.layerFolders[1]", "twice"),
    (_set("windows/network/endpointList", "ep-1"), "$.windows.network.endpointList", "'ep-1'"),
    (_set("proces", {}), "$.proces", "unknown field"),
]


@pytest.mark.parametrize(("change", "path", "shown"), BAD_SPECS)
def test_bad_spec_names_path_and_value(
    change: Callable[[dict[str, Any]], None], path: str, shown: str
) -> None:
    document = _mutated(change)
    with pytest.raises(oci.SpecError) as raised:
        oci.decode_spec(json.dumps(document))
    assert raised.value.path == path
    assert f"{path}:" in str(raised.value)
    assert shown in str(raised.value)
    assert isinstance(raised.value, InvalidArgumentError)
    assert isinstance(raised.value, ValueError)


CONTRADICTIONS = [
    # hostname without a UTS namespace
    (
        _set(
            "linux/namespaces",
            [{"type": "mount"}, {"type": "user"}, {"type": "network"}, {"type": "time"}],
        ),
        "$.hostname",
    ),
    # id mappings without a user namespace
    (_set("linux/namespaces", [{"type": "uts"}, {"type": "network"}]), "$.linux.uidMappings"),
    # a new user namespace without mappings
    (_delete("linux/uidMappings"), "$.linux.uidMappings"),
    # net.* sysctl without a network namespace
    (
        _set("linux/namespaces", [{"type": "uts"}, {"type": "user"}, {"type": "time"}]),
        "$.linux.sysctl['net.ipv4.ip_forward']",
    ),
    # time offsets without a time namespace
    (
        _set("linux/namespaces", [{"type": "uts"}, {"type": "user"}, {"type": "network"}]),
        "$.linux.timeOffsets",
    ),
]


@pytest.mark.parametrize(("change", "path"), CONTRADICTIONS)
def test_contradictory_spec_is_refused(change: Callable[[dict[str, Any]], None], path: str) -> None:
    with pytest.raises(oci.SpecError) as raised:
        oci.decode_spec(_mutated(change))
    assert raised.value.path == path


def test_malformed_json_is_a_spec_error() -> None:
    with pytest.raises(oci.SpecError, match="not valid JSON"):
        oci.decode_spec(b'{"ociVersion": "1.0.2",')
    with pytest.raises(oci.SpecError, match=r"\$: .*expected `object`, got `array`"):
        oci.decode_spec(b"[1, 2]")


def test_validate_spec_checks_structs_built_in_code() -> None:
    spec = oci.default_spec(["true"])
    assert spec.process is not None
    spec.process.cwd = "relative"
    with pytest.raises(oci.SpecError, match=r"\$\.process\.cwd: .*'relative'"):
        oci.validate_spec(spec)


def test_other_platform_sections_are_carried_opaquely() -> None:
    document = {"ociVersion": "1.0.2", "solaris": {"milestone": "svc:/x"}, "zos": {"a": [1]}}
    spec = oci.decode_spec(document)
    assert json.loads(oci.encode_spec(spec)) == document


def test_default_spec_returns_independent_objects() -> None:
    first = oci.default_spec()
    second = oci.default_spec()
    assert first == second
    assert first.process is not None and second.process is not None
    assert first.process.env is not None
    first.process.env.append("A=B")
    assert first != second


def _runc_spec(tmp_path: Path) -> dict[str, Any]:
    subprocess.run(["runc", "spec", "--bundle", str(tmp_path)], check=True)
    document: dict[str, Any] = json.loads((tmp_path / "config.json").read_text())
    return document


def test_runc_spec_output_decodes(tmp_path: Path) -> None:
    document = _runc_spec(tmp_path)
    spec = oci.decode_spec((tmp_path / "config.json").read_bytes())
    assert json.loads(oci.encode_spec(spec)) == document


def test_default_spec_mirrors_runc_spec(tmp_path: Path) -> None:
    runc = oci.decode_spec(_runc_spec(tmp_path))
    ours = oci.default_spec()
    assert runc.process is not None and ours.process is not None
    assert runc.linux is not None and ours.linux is not None
    assert ours.oci_version == runc.oci_version
    assert ours.process.args == runc.process.args == ["sh"]
    assert ours.process.env == runc.process.env
    assert ours.process.capabilities == runc.process.capabilities
    assert ours.process.rlimits == runc.process.rlimits
    assert ours.process.no_new_privileges is runc.process.no_new_privileges is True
    assert ours.process.user == runc.process.user
    assert ours.root == runc.root
    assert ours.mounts == runc.mounts
    assert ours.linux.namespaces == runc.linux.namespaces
    assert ours.linux.resources == runc.linux.resources
    assert ours.linux.readonly_paths == runc.linux.readonly_paths
    assert set(runc.linux.masked_paths or ()) <= set(ours.linux.masked_paths or ())
    # Documented differences: no terminal unless asked for, our hostname.
    assert ours.process.terminal is False and runc.process.terminal is True
    assert oci.default_spec(terminal=True).process == runc.process
    assert ours.hostname == "hcsoci"


@pytest.fixture
def busybox_bundle(tmp_path: Path) -> Iterator[tuple[Path, str, Path]]:
    """A bundle with a busybox rootfs, a runc state root, and a unique container id."""
    busybox = shutil.which("busybox") or "/bin/busybox"
    rootfs = tmp_path / "bundle" / "rootfs"
    for directory in ("bin", "proc", "dev", "sys", "tmp"):
        (rootfs / directory).mkdir(parents=True)
    shutil.copy2(busybox, rootfs / "bin" / "busybox")
    os.symlink("busybox", rootfs / "bin" / "sh")
    state = tmp_path / "runc-state"
    container_id = f"ocitest-{uuid.uuid4().hex[:10]}"
    try:
        yield tmp_path / "bundle", container_id, state
    finally:
        subprocess.run(
            ["runc", "--root", str(state), "delete", "--force", container_id],
            capture_output=True,
            check=False,
        )


def test_runc_runs_an_encoded_default_spec(busybox_bundle: tuple[Path, str, Path]) -> None:
    bundle, container_id, state = busybox_bundle
    spec = oci.default_spec(["/bin/busybox", "sh", "-c", "echo $GREETING from $(hostname); id -u"])
    assert spec.process is not None and spec.process.env is not None
    spec.process.env.append("GREETING=hello")
    (bundle / "config.json").write_bytes(oci.encode_spec(spec))
    result = subprocess.run(
        ["runc", "--root", str(state), "run", "--bundle", str(bundle), container_id],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().split() == ["hello", "from", "hcsoci", "0"]
