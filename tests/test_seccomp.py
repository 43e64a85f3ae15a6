"""The default seccomp filter: its structure, profile files, and real runc containers under it."""

from __future__ import annotations

import errno
import io
import json
import platform
import shutil
import signal
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from fixtures_containers import CLI, Created, SpecFactory
from hcsoci import context, oci
from hcsoci.cmd import Cmd, ExitError, command
from hcsoci.container import Container
from hcsoci.errors import InvalidArgumentError

CTX = context.background()
PROBE_SOURCE = Path(__file__).with_name("seccomp_probe.c")
SYS_ADMIN = [*oci.DEFAULT_CAPABILITIES, "CAP_SYS_ADMIN"]

# What the probe's calls must give under the default filter (0: success).
REFUSED = [
    "keyctl",
    "add_key",
    "request_key",
    "bpf",
    "perf_event_open",
    "unshare_newuser",
    "clone_newuser",
    "mount",
    "umount2",
    "ptrace",
    "clock_settime",
    "settimeofday",
    "init_module",
    "finit_module",
    "userfaultfd",
    "personality_other",
    "socket_vsock",
]
ALLOWED = [
    "getpid",
    "personality_query",
    "fork",
    "pthread_create",
    "socket_inet",
    "clock_gettime",
]
# Calls whose arguments the kernel refuses with an error other than EPERM
# before any permission check: without a filter, EPERM cannot come back.
KERNEL_REFUSES_OTHERWISE = ["keyctl", "mount", "ptrace", "clock_settime", "clone3"]


# -- the profile's structure ------------------------------------------------------------


def all_names(seccomp: oci.LinuxSeccomp) -> set[str]:
    return {name for rule in seccomp.syscalls or () for name in rule.names}


def plain_names(seccomp: oci.LinuxSeccomp, action: str = "SCMP_ACT_ALLOW") -> set[str]:
    return {
        name
        for rule in seccomp.syscalls or ()
        if rule.action == action and not rule.args
        for name in rule.names
    }


def test_default_profile_is_an_eperm_allow_list_for_the_native_architecture() -> None:
    seccomp = oci.default_seccomp(oci.DEFAULT_CAPABILITIES, machine="x86_64")
    assert seccomp.default_action == "SCMP_ACT_ERRNO"
    assert seccomp.default_errno_ret == errno.EPERM
    assert seccomp.architectures == ["SCMP_ARCH_X86_64"]
    assert oci.default_seccomp([], machine="aarch64").architectures == ["SCMP_ARCH_AARCH64"]
    assert oci.default_seccomp([], machine="riscv64").architectures is None  # runtime's native
    compat = oci.default_seccomp([], compat_abis=True, machine="x86_64")
    assert compat.architectures == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    arm = oci.default_seccomp([], compat_abis=True, machine="aarch64")
    assert arm.architectures == ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]
    for profile in (seccomp, compat, arm):
        assert set(profile.architectures or ()) <= oci.SECCOMP_ARCHITECTURES
    # the architecture-specific rules follow the machine
    assert "arch_prctl" in plain_names(seccomp)
    assert "arch_prctl" not in plain_names(arm) and "set_tls" in plain_names(arm)


def test_no_name_twice_and_every_rule_well_formed() -> None:
    for caps in (oci.DEFAULT_CAPABILITIES, SYS_ADMIN, sorted(oci.KNOWN_CAPABILITIES)):
        seccomp = oci.default_seccomp(caps, machine="x86_64")
        for rule in seccomp.syscalls or ():
            assert rule.names and len(rule.names) == len(set(rule.names)), rule
            assert rule.action in oci.SECCOMP_ACTIONS
            assert all(arg.op in oci.SECCOMP_OPERATORS for arg in rule.args or ())
        # one argument-less rule per (action, errno): names merged, each once
        plain = Counter(
            (rule.action, rule.errno_ret) for rule in seccomp.syscalls or () if not rule.args
        )
        assert max(plain.values()) == 1, plain
        # a name allowed outright has no conditional allow rule left
        unconditional = plain_names(seccomp)
        for rule in seccomp.syscalls or ():
            if rule.args and rule.action == "SCMP_ACT_ALLOW":
                assert not unconditional.intersection(rule.names), rule
        spec = oci.default_spec(["true"])
        assert spec.linux is not None
        spec.linux.seccomp = seccomp
        oci.validate_spec(spec)


def test_dangerous_syscalls_are_left_out_and_capabilities_open_theirs() -> None:
    default = oci.default_seccomp(oci.DEFAULT_CAPABILITIES, machine="x86_64")
    allowed = plain_names(default)
    never = {"keyctl", "add_key", "request_key", "kexec_load", "kexec_file_load", "swapon"}
    never |= {"swapoff", "userfaultfd", "io_uring_setup", "open_by_handle_at", "lookup_dcookie"}
    by_capability = {
        "CAP_SYS_ADMIN": {"unshare", "setns", "mount", "umount2", "pivot_root", "bpf", "clone3"},
        "CAP_SYS_PTRACE": {"ptrace", "process_vm_readv", "process_vm_writev"},
        "CAP_SYS_MODULE": {"init_module", "finit_module", "delete_module"},
        "CAP_SYS_TIME": {"settimeofday", "clock_settime", "clock_adjtime", "adjtimex", "stime"},
        "CAP_SYS_BOOT": {"reboot"},
        "CAP_SYS_RAWIO": {"iopl", "ioperm"},
        "CAP_SYS_PACCT": {"acct"},
        "CAP_SYS_NICE": {"mbind", "set_mempolicy"},
        "CAP_SYSLOG": {"syslog"},
        "CAP_BPF": {"bpf"},
        "CAP_PERFMON": {"perf_event_open"},
        "CAP_DAC_READ_SEARCH": {"open_by_handle_at"},
    }
    assert not allowed & never
    for capability, names in by_capability.items():
        assert not allowed & names, capability
        opened = plain_names(oci.default_seccomp([capability], machine="x86_64"))
        assert names <= opened, capability
    everything = plain_names(oci.default_seccomp(sorted(oci.KNOWN_CAPABILITIES), machine="x86_64"))
    assert not everything & (never - {"open_by_handle_at", "lookup_dcookie"})
    for name in ("read", "write", "openat", "execve", "futex", "mmap", "wait4", "getpid"):
        assert name in allowed


def test_clone_namespace_flags_and_clone3_depend_on_cap_sys_admin() -> None:
    default = oci.default_seccomp(oci.DEFAULT_CAPABILITIES, machine="x86_64")
    rules = {tuple(rule.names): rule for rule in default.syscalls or ()}
    clone = rules[("clone",)]
    assert clone.action == "SCMP_ACT_ALLOW" and clone.args is not None
    [arg] = clone.args
    assert (arg.index, arg.op, arg.value_two) == (0, "SCMP_CMP_MASKED_EQ", 0)
    assert arg.value == oci.CLONE_NAMESPACE_FLAGS == 0x7E020000
    clone3 = rules[("clone3",)]
    assert (clone3.action, clone3.errno_ret) == ("SCMP_ACT_ERRNO", errno.ENOSYS)
    admin = oci.default_seccomp(SYS_ADMIN, machine="x86_64")
    assert {"clone", "clone3"} <= plain_names(admin)
    assert all(rule.errno_ret != errno.ENOSYS for rule in admin.syscalls or ())


def test_personality_only_for_the_linux_domains() -> None:
    default = oci.default_seccomp([], machine="x86_64")
    values = sorted(
        arg.value
        for rule in default.syscalls or ()
        if rule.names == ["personality"]
        for arg in rule.args or ()
    )
    assert values == [0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF]
    assert "personality" not in plain_names(default)


def test_unknown_capability_is_refused() -> None:
    with pytest.raises(InvalidArgumentError, match=r"capabilities\[1\]: .*'SYS_ADMIN'"):
        oci.default_seccomp(["CAP_KILL", "SYS_ADMIN"])
    with pytest.raises(InvalidArgumentError, match="not a string"):
        oci.default_seccomp("CAP_KILL")


def test_default_spec_carries_the_filter_and_round_trips() -> None:
    spec = oci.default_spec(["true"])
    assert spec.linux is not None and spec.process is not None
    assert spec.process.capabilities is not None
    assert spec.linux.seccomp == oci.default_seccomp(spec.process.capabilities.bounding or [])
    encoded = oci.encode_spec(spec)
    assert json.loads(encoded)["linux"]["seccomp"]["defaultErrnoRet"] == errno.EPERM
    assert oci.decode_spec(encoded) == spec
    oci.validate_spec(spec)


def test_validate_spec_refuses_an_unknown_architecture() -> None:
    spec = oci.default_spec(["true"])
    assert spec.linux is not None and spec.linux.seccomp is not None
    spec.linux.seccomp.architectures = ["SCMP_ARCH_X86_64", "SCMP_ARCH_PDP11"]
    with pytest.raises(oci.SpecError, match=r"architectures\[1\]: .*'SCMP_ARCH_PDP11'"):
        oci.validate_spec(spec)


def test_with_capabilities_recomputes_only_the_default_filter() -> None:
    spec = oci.default_spec(["true"])
    admin = oci.with_capabilities(spec, SYS_ADMIN)
    assert admin.process is not None and admin.process.capabilities is not None
    assert admin.process.capabilities.bounding == SYS_ADMIN
    assert admin.process.capabilities.effective == SYS_ADMIN
    assert admin.linux is not None and spec.linux is not None
    assert admin.linux.seccomp == oci.default_seccomp(SYS_ADMIN)
    assert spec.linux.seccomp == oci.default_seccomp(oci.DEFAULT_CAPABILITIES)  # a copy
    back = oci.with_capabilities(admin, oci.DEFAULT_CAPABILITIES)
    assert back == spec
    compat = oci.default_spec(["true"])
    assert compat.linux is not None
    compat.linux.seccomp = oci.default_seccomp(oci.DEFAULT_CAPABILITIES, compat_abis=True)
    compat_admin = oci.with_capabilities(compat, SYS_ADMIN)
    assert compat_admin.linux is not None
    assert compat_admin.linux.seccomp == oci.default_seccomp(SYS_ADMIN, compat_abis=True)
    unconfined = oci.default_spec(["true"])
    assert unconfined.linux is not None
    unconfined.linux.seccomp = None
    unconfined_admin = oci.with_capabilities(unconfined, SYS_ADMIN)
    assert unconfined_admin.linux is not None and unconfined_admin.linux.seccomp is None
    custom = oci.default_spec(["true"])
    assert custom.linux is not None
    custom.linux.seccomp = oci.LinuxSeccomp(default_action="SCMP_ACT_ALLOW")
    custom_admin = oci.with_capabilities(custom, SYS_ADMIN)
    assert custom_admin.linux is not None
    assert custom_admin.linux.seccomp == oci.LinuxSeccomp(default_action="SCMP_ACT_ALLOW")
    with pytest.raises(InvalidArgumentError, match="'CAP_NOPE'"):
        oci.with_capabilities(spec, ["CAP_NOPE"])


# -- profile files ----------------------------------------------------------------------

DOCKER_PROFILE = {
    "defaultAction": "SCMP_ACT_ERRNO",
    "defaultErrnoRet": 1,
    "archMap": [
        {
            "architecture": "SCMP_ARCH_X86_64",
            "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        },
        {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]},
    ],
    "syscalls": [
        {"names": ["read", "write", "exit_group"], "action": "SCMP_ACT_ALLOW"},
        {"name": "getpid", "action": "SCMP_ACT_ALLOW", "comment": "old one-name form"},
        {"names": ["write", "futex"], "action": "SCMP_ACT_ALLOW"},
        {"names": ["arch_prctl"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["amd64"]}},
        {"names": ["set_tls"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["arm64"]}},
        {"names": ["mount"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMIN"]}},
        {
            "names": ["clone"],
            "action": "SCMP_ACT_ALLOW",
            "args": [{"index": 0, "value": 2114060288, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}],
            "excludes": {"caps": ["CAP_SYS_ADMIN"]},
        },
        {"names": ["clone"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMIN"]}},
        {
            "names": ["clone3"],
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": 38,
            "excludes": {"caps": ["CAP_SYS_ADMIN"]},
        },
        {"names": ["ptrace"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "4.8"}},
        {"names": ["uselib"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "999.0"}},
        {"names": ["vhangup"], "action": "SCMP_ACT_ALLOW", "excludes": {"minKernel": "2.6"}},
    ],
}


def write(tmp_path: Path, name: str, content: object) -> Path:
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def test_load_docker_profile_resolves_caps_arches_and_kernel(tmp_path: Path) -> None:
    path = write(tmp_path, "docker.json", DOCKER_PROFILE)
    plain = oci.load_seccomp_profile(path, oci.DEFAULT_CAPABILITIES, machine="x86_64")
    assert plain.default_action == "SCMP_ACT_ERRNO" and plain.default_errno_ret == 1
    assert plain.architectures == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    assert plain_names(plain) == {
        "read",
        "write",
        "exit_group",
        "getpid",
        "futex",
        "arch_prctl",
        "ptrace",
    }
    assert all_names(plain) - plain_names(plain) == {"clone", "clone3"}
    assert plain_names(plain, "SCMP_ACT_ERRNO") == {"clone3"}
    admin = oci.load_seccomp_profile(str(path), SYS_ADMIN, machine="aarch64")
    assert admin.architectures == ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]
    assert {"mount", "clone", "set_tls"} <= plain_names(admin)
    assert "arch_prctl" not in all_names(admin) and "clone3" not in all_names(admin)
    assert [rule for rule in admin.syscalls or () if rule.args] == []
    for resolved in (plain, admin):
        spec = oci.default_spec(["true"])
        assert spec.linux is not None
        spec.linux.seccomp = resolved
        assert oci.decode_spec(oci.encode_spec(spec)) == spec  # validates too
    # capabilities default to the default spec's
    assert oci.load_seccomp_profile(path, machine="x86_64") == plain


def test_load_oci_profile(tmp_path: Path) -> None:
    default = oci.default_seccomp(oci.DEFAULT_CAPABILITIES)
    document = json.loads(oci.encode_spec(oci.default_spec(["true"])))["linux"]["seccomp"]
    path = write(tmp_path, "oci.json", document)
    assert oci.load_seccomp_profile(path, oci.DEFAULT_CAPABILITIES) == default
    small = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [{"names": ["keyctl"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}],
    }
    loaded = oci.load_seccomp_profile(write(tmp_path, "small.json", small), [])
    assert loaded == oci.LinuxSeccomp(
        default_action="SCMP_ACT_ALLOW",
        architectures=["SCMP_ARCH_X86_64"],
        syscalls=[oci.LinuxSyscall(names=["keyctl"], action="SCMP_ACT_ERRNO", errno_ret=1)],
    )


@pytest.mark.parametrize(
    ("content", "field", "problem"),
    [
        ("{", r"\$", "not valid JSON"),
        ("[]", r"\$", "expected `object`"),
        ({"syscalls": []}, r"\$", "missing required field `defaultAction`"),
        ({"defaultAction": "ALLOW"}, r"\$\.defaultAction", "unknown seccomp action.*'ALLOW'"),
        (
            {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"]}]},
            r"\$\.syscalls\[0\]",
            "missing required field `action`",
        ),
        (
            {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["a"], "action": "X"}]},
            r"\$\.syscalls\[0\]\.action",
            "unknown seccomp action.*'X'",
        ),
        (
            {
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [
                    {
                        "names": ["a"],
                        "action": "SCMP_ACT_ALLOW",
                        "args": [{"index": 0, "value": 1, "op": "=="}],
                    }
                ],
            },
            r"\$\.syscalls\[0\]\.args\[0\]\.op",
            "unknown seccomp operator.*'=='",
        ),
        (
            {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": [], "action": "X"}]},
            r"\$\.syscalls\[0\]\.names",
            "must list syscall names",
        ),
        (
            {
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [
                    {"names": ["a"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["NOPE"]}}
                ],
            },
            r"\$\.syscalls\[0\]\.includes\.caps\[0\]",
            "unknown capability.*'NOPE'",
        ),
        (
            {
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": ["a"], "action": "SCMP_ACT_ALLOW", "nmes": ["b"]}],
            },
            r"\$\.syscalls\[0\]",
            "unknown field `nmes`",
        ),
        (
            {"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["x86_64"]},
            r"\$\.architectures\[0\]",
            "unknown seccomp architecture.*'x86_64'",
        ),
        (
            {
                "defaultAction": "SCMP_ACT_ALLOW",
                "architectures": ["SCMP_ARCH_X86_64"],
                "archMap": [{"architecture": "SCMP_ARCH_X86_64"}],
            },
            r"\$",
            "architectures or archMap, not both",
        ),
        (
            {
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [
                    {"names": ["a"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "new"}}
                ],
            },
            r"\$\.syscalls\[0\]\.includes\.minKernel",
            "kernel version.*'new'",
        ),
    ],
)
def test_bad_profile_names_the_file_and_the_field(
    tmp_path: Path, content: object, field: str, problem: str
) -> None:
    path = write(tmp_path, "bad.json", content)
    with pytest.raises(oci.SeccompProfileError, match=rf"^seccomp profile {path}: {field}: .*"):
        oci.load_seccomp_profile(path, [])
    with pytest.raises(InvalidArgumentError, match=problem) as info:
        oci.load_seccomp_profile(path, [])
    assert "\n" not in str(info.value)


def test_missing_profile_file(tmp_path: Path) -> None:
    with pytest.raises(oci.SeccompProfileError, match=r"missing\.json: \$: cannot read"):
        oci.load_seccomp_profile(tmp_path / "missing.json", [])


# -- real containers ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def probe_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding the probe compiled static (it runs on busybox's rootfs)."""
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is not installed (Makefile DEB_PACKAGES lists gcc and libc6-dev)")
    directory = tmp_path_factory.mktemp("seccomp-probe")
    subprocess.run(
        [gcc, "-static", "-O1", "-pthread", "-o", str(directory / "probe"), str(PROBE_SOURCE)],
        check=True,
        capture_output=True,
    )
    return directory


def with_probe(spec: oci.Spec, probe_dir: Path) -> oci.Spec:
    spec.mounts = [
        *(spec.mounts or ()),
        oci.Mount(
            destination="/probe", type="bind", source=str(probe_dir), options=["rbind", "ro"]
        ),
    ]
    return spec


def init_output(created: Created, spec: oci.Spec) -> str:
    """Create a container from ``spec`` and return its init's stdout (it must exit 0)."""
    container, _ = created(spec)
    return Cmd(container, None).output().decode()


def probe_results(output: str) -> dict[str, int]:
    return {name: int(code) for name, code in (line.split() for line in output.splitlines())}


def started(created: Created, spec: oci.Spec) -> Container:
    container, _ = created(spec)
    container.start(CTX)
    return container


def test_init_and_exec_processes_run_under_the_filter(
    created: Created, container_spec: SpecFactory
) -> None:
    status = init_output(created, container_spec(["grep", "^Seccomp:", "/proc/self/status"]))
    assert status.split() == ["Seccomp:", "2"]
    container = started(created, container_spec(["sleep", "600"]))
    exec_status = command(container, "grep", "^Seccomp:", "/proc/self/status").output()
    assert exec_status.decode().split() == ["Seccomp:", "2"]


def test_unconfined_spec_has_no_filter(created: Created, container_spec: SpecFactory) -> None:
    spec = container_spec(["sh", "-c", "grep ^Seccomp: /proc/self/status; unshare -U true"])
    assert spec.linux is not None
    spec.linux.seccomp = None
    assert init_output(created, spec).split() == ["Seccomp:", "0"]  # and unshare -U worked


def test_busybox_unshare_is_refused(created: Created, container_spec: SpecFactory) -> None:
    container = started(created, container_spec(["sleep", "600"]))
    for flag in ("-U", "-r", "-m"):
        cmd = command(container, "unshare", flag, "true")
        cmd.stderr = io.BytesIO()
        with pytest.raises(ExitError) as info:
            cmd.run()
        assert info.value.exit_code == 1
        assert b"Operation not permitted" in cmd.stderr.getvalue(), flag


def test_probe_refused_calls_get_eperm_and_ordinary_ones_work(
    created: Created, container_spec: SpecFactory, probe_dir: Path
) -> None:
    results = probe_results(
        init_output(created, with_probe(container_spec(["/probe/probe"]), probe_dir))
    )
    assert set(results) == {*REFUSED, *ALLOWED, "clone3"}
    assert {name: results[name] for name in REFUSED} == dict.fromkeys(REFUSED, errno.EPERM)
    assert results["clone3"] == errno.ENOSYS
    assert {name: results[name] for name in ALLOWED} == dict.fromkeys(ALLOWED, 0)


def test_probe_without_a_filter_shows_the_filter_made_the_difference(
    created: Created, container_spec: SpecFactory, probe_dir: Path
) -> None:
    spec = with_probe(container_spec(["/probe/probe"]), probe_dir)
    assert spec.linux is not None
    spec.linux.seccomp = None
    results = probe_results(init_output(created, spec))
    for name in KERNEL_REFUSES_OTHERWISE:
        assert results[name] not in (0, errno.EPERM), (name, results[name])
    assert {name: results[name] for name in ALLOWED} == dict.fromkeys(ALLOWED, 0)


def test_cap_sys_admin_opens_unshare(
    created: Created, container_spec: SpecFactory, probe_dir: Path
) -> None:
    spec = with_probe(container_spec(["/probe/probe", "unshare-mount"]), probe_dir)
    assert probe_results(init_output(created, spec)) == {"unshare_newns": errno.EPERM}
    admin = oci.with_capabilities(spec, SYS_ADMIN)
    assert admin.linux is not None and admin.linux.seccomp == oci.default_seccomp(SYS_ADMIN)
    assert probe_results(init_output(created, admin)) == {"unshare_newns": 0}


def test_32_bit_abi_is_killed_unless_compat_abis(
    created: Created, container_spec: SpecFactory, probe_dir: Path
) -> None:
    if platform.machine() != "x86_64":
        pytest.skip("the 32-bit probe is x86_64 code")
    host = subprocess.run([str(probe_dir / "probe"), "i386-getpid"], capture_output=True)
    if host.stdout != b"i386_getpid 0\n":
        pytest.skip(f"this kernel runs no i386 syscalls: {host.stdout!r}")
    spec = with_probe(container_spec(["/probe/probe", "i386-getpid"]), probe_dir)
    with pytest.raises(ExitError) as info:
        init_output(created, spec)
    assert info.value.exit_code == 128 + signal.SIGSYS  # the bad-architecture action
    assert spec.linux is not None and spec.process is not None
    spec.linux.seccomp = oci.default_seccomp(oci.DEFAULT_CAPABILITIES, compat_abis=True)
    assert probe_results(init_output(created, spec)) == {"i386_getpid": 0}


def test_cli_security_opt_turns_the_filter_off_replaces_it_or_names_a_bad_value(
    hcsoci: CLI, tmp_path: Path
) -> None:
    status = ("--", "grep", "^Seccomp:", "/proc/self/status")
    assert hcsoci("run", "--rm", *status).stdout.split() == ["Seccomp:", "2"]
    off = hcsoci("run", "--rm", "--security-opt", "seccomp=unconfined", *status)
    assert off.stdout.split() == ["Seccomp:", "0"]
    old_spelling = hcsoci("run", "--rm", "--security-opt", "seccomp:unconfined", *status)
    assert old_spelling.stdout.split() == ["Seccomp:", "0"]
    profile = write(tmp_path, "deny-mkdir.json", {
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"}],
    })  # fmt: skip
    denied = hcsoci("run", "--rm", "--security-opt", f"seccomp={profile}", "--",
                    "mkdir", "/made", check=False)  # fmt: skip
    assert denied.returncode == 1 and "Operation not permitted" in denied.stderr
    for bad in ("seccomp=/nonexistent.json", "apparmor=unconfined"):
        result = hcsoci("run", "--rm", "--security-opt", bad, "--", "true", check=False)
        lines = result.stderr.splitlines()
        assert result.returncode == 125 and len(lines) == 1 and "--security-opt" in lines[0], bad
