"""Seccomp: the default profile every container gets, and profile files.

:func:`default_seccomp` is an allow-list with docker's semantics: the syscalls
ordinary programs use are allowed; what lets a process leave its container or
touch the whole machine (new namespaces, mounts, keyrings, eBPF, perf, kernel
modules, the clock, reboot, ptrace...) fails with ``EPERM`` unless the
container holds the capability that the kernel would check anyway, exactly as
docker resolves its profile's ``includes.caps`` when it creates a container.

:func:`load_seccomp_profile` reads a profile file, either the OCI
``linux.seccomp`` object or docker's profile format (``names``, ``includes``/
``excludes`` by capability, architecture and kernel, ``archMap``), and resolves
it the same way.

The profile depends on the capability set: a caller changing a spec's
capabilities recomputes it (:func:`hcsoci.oci.with_capabilities` does both).
"""

from __future__ import annotations

import errno
import os
import platform
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import msgspec

from hcsoci.errors import InvalidArgumentError
from hcsoci.oci.base import SpecStruct, UInt32
from hcsoci.oci.spec import LinuxSeccomp, LinuxSeccompArg, LinuxSyscall
from hcsoci.oci.validation import (
    KNOWN_CAPABILITIES,
    SECCOMP_ACTIONS,
    SECCOMP_ARCHITECTURES,
    SECCOMP_OPERATORS,
)

__all__ = [
    "CLONE_NAMESPACE_FLAGS",
    "SeccompProfileError",
    "default_seccomp",
    "load_seccomp_profile",
]

CLONE_NAMESPACE_FLAGS = (
    0x00020000  # CLONE_NEWNS
    | 0x02000000  # CLONE_NEWCGROUP
    | 0x04000000  # CLONE_NEWUTS
    | 0x08000000  # CLONE_NEWIPC
    | 0x10000000  # CLONE_NEWUSER
    | 0x20000000  # CLONE_NEWPID
    | 0x40000000  # CLONE_NEWNET
)
"""The ``clone(2)`` flags that make new namespaces: refused without ``CAP_SYS_ADMIN``."""

_ALLOW = "SCMP_ACT_ALLOW"
_ERRNO = "SCMP_ACT_ERRNO"
_AF_VSOCK = 40


class SeccompProfileError(InvalidArgumentError):
    """A seccomp profile file is unreadable or malformed.

    ``file`` is the file's path, ``field`` the JSON path of the offending field
    (``$.syscalls[3].action``), ``"$"`` for the whole document.
    """

    def __init__(self, file: str, field: str, problem: str) -> None:
        self.file = file
        self.field = field
        self.problem = problem
        super().__init__(f"seccomp profile {file}: {field}: {problem}")


# -- the profile model (docker's format, a superset of the OCI object) --------


class _Filter(SpecStruct):
    """When a rule applies: every listed capability held, one of the arches, kernel >= minKernel."""

    caps: list[str] | None = None
    arches: list[str] | None = None
    min_kernel: str = ""


class _Rule(SpecStruct, kw_only=True):
    """One ``syscalls`` entry of a profile."""

    names: list[str] | None = None
    name: str = ""  # the older docker profiles' one name per entry
    action: str
    errno_ret: UInt32 | None = None
    args: list[LinuxSeccompArg] | None = None
    comment: str = ""
    includes: _Filter | None = None
    excludes: _Filter | None = None


class _ArchMap(SpecStruct, kw_only=True):
    architecture: str
    sub_architectures: list[str] | None = None


class _Profile(SpecStruct, kw_only=True):
    default_action: str
    default_errno_ret: UInt32 | None = None
    architectures: list[str] | None = None
    arch_map: list[_ArchMap] | None = None
    flags: list[str] | None = None
    listener_path: str = ""
    listener_metadata: str = ""
    syscalls: list[_Rule] | None = None


def _rule(
    *groups: Iterable[str],
    action: str = _ALLOW,
    errno_ret: int | None = None,
    args: Sequence[LinuxSeccompArg] = (),
    caps: Sequence[str] = (),
    not_caps: Sequence[str] = (),
    arches: Sequence[str] = (),
) -> _Rule:
    return _Rule(
        names=[name for group in groups for name in group],
        action=action,
        errno_ret=errno_ret,
        args=list(args) or None,
        includes=_Filter(caps=list(caps) or None, arches=list(arches) or None),
        excludes=_Filter(caps=list(not_caps) or None),
    )


# -- the default profile, by purpose -------------------------------------------
# Names a libseccomp does not know (newer syscalls, other architectures' names)
# are skipped by runc and crun; each is resolved for every listed architecture.


def _words(text: str) -> list[str]:
    return text.split()


_FILES = _words(
    # paths, directories, links, metadata
    """
    access faccessat faccessat2 chdir fchdir getcwd umask
    chmod fchmod fchmodat fchmodat2 chown chown32 fchown fchown32 fchownat lchown lchown32
    creat open openat openat2 close close_range name_to_handle_at
    link linkat symlink symlinkat unlink unlinkat rename renameat renameat2
    mkdir mkdirat rmdir mknod mknodat readlink readlinkat
    stat stat64 lstat lstat64 fstat fstat64 fstatat64 newfstatat statx
    statfs statfs64 fstatfs fstatfs64 getdents getdents64
    utime utimes utimensat utimensat_time64 futimesat
    getxattr lgetxattr fgetxattr getxattrat setxattr lsetxattr fsetxattr setxattrat
    listxattr llistxattr flistxattr listxattrat
    removexattr lremovexattr fremovexattr removexattrat
    """
    # descriptors and data
    """
    dup dup2 dup3 fcntl fcntl64 flock ioctl read write readv writev
    pread64 pwrite64 preadv pwritev preadv2 pwritev2 lseek _llseek
    sendfile sendfile64 splice tee vmsplice copy_file_range cachestat
    truncate truncate64 ftruncate ftruncate64 fallocate fadvise64 fadvise64_64
    readahead sync syncfs fsync fdatasync sync_file_range
    """
    # asynchronous IO (io_uring is left out, as docker and containerd now do)
    """
    io_setup io_destroy io_submit io_cancel io_getevents io_pgetevents io_pgetevents_time64
    """
)
_EVENTS = _words(
    """
    pipe pipe2 poll ppoll ppoll_time64 select _newselect pselect6 pselect6_time64
    epoll_create epoll_create1 epoll_ctl epoll_ctl_old epoll_wait epoll_wait_old
    epoll_pwait epoll_pwait2 eventfd eventfd2 signalfd signalfd4
    inotify_init inotify_init1 inotify_add_watch inotify_rm_watch fanotify_mark
    """
)
_MEMORY = _words(
    """
    brk mmap mmap2 munmap mremap mprotect madvise mincore msync remap_file_pages
    mlock mlock2 mlockall munlock munlockall membarrier memfd_create memfd_secret
    pkey_alloc pkey_free pkey_mprotect map_shadow_stack mseal process_mrelease
    """
)
_PROCESSES = _words(
    # life and death (clone and clone3 have rules of their own below)
    """
    execve execveat exit exit_group fork vfork wait4 waitid waitpid
    getpid getppid gettid getpgid setpgid getpgrp getsid setsid
    pidfd_open pidfd_send_signal restart_syscall
    """
    # threads
    """
    set_tid_address set_robust_list get_robust_list rseq futex futex_time64 futex_waitv
    futex_wake futex_wait futex_requeue set_thread_area get_thread_area
    """
    # limits, scheduling, self-restriction
    """
    prctl capget capset seccomp landlock_create_ruleset landlock_add_rule landlock_restrict_self
    getrlimit setrlimit ugetrlimit prlimit64 getrusage times sysinfo uname
    getpriority setpriority ioprio_get ioprio_set getcpu sched_yield
    sched_getaffinity sched_setaffinity sched_getattr sched_setattr
    sched_getparam sched_setparam sched_getscheduler sched_setscheduler
    sched_get_priority_max sched_get_priority_min sched_rr_get_interval
    sched_rr_get_interval_time64
    """
)
# Each with its 16-bit-uid twin, "<name>32", on 32-bit x86 and arm.
_CREDENTIALS = [
    f"{name}{suffix}"
    for name in _words(
        """
        getuid geteuid getgid getegid getresuid getresgid getgroups setuid setgid
        setreuid setregid setresuid setresgid setfsuid setfsgid setgroups
        """
    )
    for suffix in ("", "32")
]
_SIGNALS = _words(
    """
    kill tkill tgkill rt_sigaction rt_sigprocmask rt_sigreturn rt_sigsuspend rt_sigpending
    rt_sigtimedwait rt_sigtimedwait_time64 rt_sigqueueinfo rt_tgsigqueueinfo sigaltstack
    sigaction signal sigprocmask sigreturn sigsuspend sigpending
    """
)
_TIME = _words(
    # reading the clocks, sleeping, timers (setting the clock needs CAP_SYS_TIME)
    """
    time gettimeofday clock_gettime clock_gettime64 clock_getres clock_getres_time64
    clock_nanosleep clock_nanosleep_time64 nanosleep alarm pause getitimer setitimer
    timer_create timer_delete timer_settime timer_settime64 timer_gettime timer_gettime64
    timer_getoverrun timerfd_create timerfd_settime timerfd_settime64 timerfd_gettime
    timerfd_gettime64
    """
)
_NETWORK = _words(
    # socket itself has a rule below (every family but AF_VSOCK)
    """
    socketpair socketcall bind connect listen accept accept4 shutdown
    getsockname getpeername getsockopt setsockopt send sendto sendmsg sendmmsg
    recv recvfrom recvmsg recvmmsg recvmmsg_time64
    """
)
_IPC = _words(
    """
    ipc msgget msgsnd msgrcv msgctl semget semop semtimedop semtimedop_time64 semctl
    shmget shmat shmdt shmctl mq_open mq_unlink mq_notify mq_getsetattr
    mq_timedsend mq_timedsend_time64 mq_timedreceive mq_timedreceive_time64
    """
)
_X86 = ["arch_prctl", "modify_ldt"]
_ARM = _words("arm_fadvise64_64 arm_sync_file_range sync_file_range2 breakpoint cacheflush set_tls")

# personality(2): only the plain Linux domains (and asking): PER_LINUX,
# PER_LINUX32, UNAME26 with each, and 0xffffffff (query).
_SAFE_PERSONALITIES = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)

# What each capability opens, where the kernel checks that capability itself.
_BY_CAPABILITY: dict[str, list[str]] = {
    "CAP_SYS_ADMIN": _words(
        # namespaces: clone and clone3 with any flag, unshare, setns
        "clone clone3 unshare setns"
        # mounts, old and new API
        " mount umount umount2 pivot_root fsopen fsconfig fsmount fspick move_mount"
        " open_tree open_tree_attr mount_setattr"
        # and the rest the kernel keys on CAP_SYS_ADMIN
        " quotactl quotactl_fd lookup_dcookie fanotify_init sethostname setdomainname"
        " bpf perf_event_open syslog"
    ),
    "CAP_SYS_PTRACE": _words(
        "ptrace process_vm_readv process_vm_writev kcmp pidfd_getfd process_madvise"
    ),
    "CAP_SYS_MODULE": _words("init_module finit_module delete_module"),
    "CAP_SYS_TIME": _words(
        "settimeofday stime clock_settime clock_settime64 adjtimex clock_adjtime clock_adjtime64"
    ),
    "CAP_SYS_BOOT": ["reboot"],
    "CAP_SYS_RAWIO": ["iopl", "ioperm"],
    "CAP_SYS_PACCT": ["acct"],
    "CAP_SYS_NICE": _words("get_mempolicy mbind set_mempolicy set_mempolicy_home_node"),
    "CAP_SYS_CHROOT": ["chroot"],
    "CAP_SYS_TTY_CONFIG": ["vhangup"],
    "CAP_SYSLOG": ["syslog"],
    "CAP_BPF": ["bpf"],
    "CAP_PERFMON": ["perf_event_open"],
    "CAP_DAC_READ_SEARCH": ["open_by_handle_at"],
}

# Never allowed, whatever the capabilities: keyctl, add_key, request_key,
# kexec_load, kexec_file_load, swapon, swapoff, userfaultfd, uselib, vm86,
# _sysctl, nfsservctl, io_uring_*, ... (anything not listed above).


def _default_profile(compat_abis: bool) -> _Profile:
    rules = [
        _rule(_FILES, _EVENTS, _MEMORY, _PROCESSES, _CREDENTIALS, _SIGNALS, _TIME, _NETWORK, _IPC),
        _rule(_X86, arches=["amd64", "386"]),
        _rule(_ARM, arches=["arm64", "arm"]),
        _rule(["socket"], args=[LinuxSeccompArg(index=0, value=_AF_VSOCK, op="SCMP_CMP_NE")]),
        *(
            _rule(["personality"], args=[LinuxSeccompArg(index=0, value=value, op="SCMP_CMP_EQ")])
            for value in _SAFE_PERSONALITIES
        ),
        # clone without a namespace flag; clone3's flags are behind a pointer that
        # seccomp cannot read: ENOSYS makes glibc fall back to clone.
        _rule(
            ["clone"],
            args=[LinuxSeccompArg(index=0, value=CLONE_NAMESPACE_FLAGS, op="SCMP_CMP_MASKED_EQ")],
            not_caps=["CAP_SYS_ADMIN"],
        ),
        _rule(["clone3"], action=_ERRNO, errno_ret=errno.ENOSYS, not_caps=["CAP_SYS_ADMIN"]),
        *(_rule(names, caps=[cap]) for cap, names in _BY_CAPABILITY.items()),
    ]
    return _Profile(
        default_action=_ERRNO,
        default_errno_ret=errno.EPERM,
        arch_map=[
            _ArchMap(
                architecture="SCMP_ARCH_X86_64",
                sub_architectures=["SCMP_ARCH_X86", "SCMP_ARCH_X32"] if compat_abis else None,
            ),
            _ArchMap(
                architecture="SCMP_ARCH_AARCH64",
                sub_architectures=["SCMP_ARCH_ARM"] if compat_abis else None,
            ),
            _ArchMap(architecture="SCMP_ARCH_X86"),
            _ArchMap(architecture="SCMP_ARCH_ARM"),
        ],
        syscalls=rules,
    )


# Each compat ABI is the whole list again for libseccomp to compile on every
# container start: x86_64 with x86 and x32 costs runc several times x86_64 alone.
_DEFAULT_PROFILE = _default_profile(compat_abis=False)
_COMPAT_PROFILE = _default_profile(compat_abis=True)


# -- resolution -----------------------------------------------------------------

# platform.machine() -> (the libseccomp architecture, the names a profile's
# includes/excludes.arches may use for it: Go's GOARCH, as docker compares, and
# the kernel's).
_MACHINES: dict[str, tuple[str, frozenset[str]]] = {
    "x86_64": ("SCMP_ARCH_X86_64", frozenset({"amd64", "x86_64"})),
    "amd64": ("SCMP_ARCH_X86_64", frozenset({"amd64", "x86_64"})),
    "i386": ("SCMP_ARCH_X86", frozenset({"386", "x86", "i386"})),
    "i686": ("SCMP_ARCH_X86", frozenset({"386", "x86", "i386"})),
    "aarch64": ("SCMP_ARCH_AARCH64", frozenset({"arm64", "aarch64"})),
    "arm64": ("SCMP_ARCH_AARCH64", frozenset({"arm64", "aarch64"})),
    "armv7l": ("SCMP_ARCH_ARM", frozenset({"arm"})),
    "armv8l": ("SCMP_ARCH_ARM", frozenset({"arm"})),
}


def _architectures(profile: _Profile, machine: str | None) -> list[str]:
    """A profile's ``architectures``, or its ``archMap`` entry for this machine (docker's rule)."""
    architectures = list(profile.architectures or ())
    native = _MACHINES.get(machine or platform.machine())
    for entry in profile.arch_map or ():
        if native is not None and entry.architecture == native[0]:
            architectures += [entry.architecture, *(entry.sub_architectures or ())]
    return architectures


def default_seccomp(
    capabilities: Sequence[str], *, compat_abis: bool = False, machine: str | None = None
) -> LinuxSeccomp:
    """The default seccomp filter for a container holding ``capabilities``.

    ``capabilities`` is the container's bounding set (``CAP_*`` names).  The
    filter refuses, with ``EPERM``, every syscall it does not list; it lists what
    ordinary programs use, ``clone`` without namespace flags (``clone3`` fails
    with ``ENOSYS``, so that glibc falls back to ``clone``), ``socket`` for every
    family but ``AF_VSOCK`` and ``personality`` for the Linux domains only.
    Each capability docker's profile keys on opens its syscalls: ``CAP_SYS_ADMIN``
    namespaces and mounts (plus bpf, perf_event_open, syslog, sethostname...),
    ``CAP_SYS_PTRACE`` ptrace and process_vm_*, ``CAP_SYS_MODULE`` module
    loading, ``CAP_SYS_TIME`` setting the clock, ``CAP_SYS_BOOT`` reboot,
    ``CAP_SYS_RAWIO`` iopl/ioperm, ``CAP_SYS_PACCT`` acct, ``CAP_SYS_NICE`` the
    NUMA memory policy, ``CAP_SYS_CHROOT`` chroot, ``CAP_SYSLOG`` syslog,
    ``CAP_BPF`` bpf, ``CAP_PERFMON`` perf_event_open, ``CAP_DAC_READ_SEARCH``
    open_by_handle_at.  keyctl, add_key, request_key, kexec, swapon/swapoff and
    userfaultfd are never allowed.

    ``machine`` (``platform.machine()`` by default) picks the architecture:
    ``SCMP_ARCH_X86_64`` on ``x86_64``, ``SCMP_ARCH_AARCH64`` on ``aarch64``
    (another machine: the runtime's native one).  The filter covers the native
    ABI only: a 32-bit (or x32) program is stopped at its first syscall by the
    filter's bad-architecture action.  ``compat_abis=True`` adds them, as
    docker's profile does: ``SCMP_ARCH_X86`` and ``SCMP_ARCH_X32`` on x86_64,
    ``SCMP_ARCH_ARM`` on aarch64, with the same rules (each doubles or triples
    what runc compiles at every container start).  Raises
    :class:`InvalidArgumentError` for a name that is not a capability.
    """
    caps = _checked_capabilities(capabilities)
    profile = _COMPAT_PROFILE if compat_abis else _DEFAULT_PROFILE
    return _resolve(profile, caps, machine, _kernel_version())


def load_seccomp_profile(
    path: str | os.PathLike[str],
    capabilities: Sequence[str] | None = None,
    *,
    machine: str | None = None,
) -> LinuxSeccomp:
    """Read a seccomp profile file and resolve it for a container holding ``capabilities``.

    The file holds either an OCI ``linux.seccomp`` object or a docker profile
    (``defaultAction``, ``syscalls`` entries with ``names`` or ``name``,
    ``action``, ``errnoRet``, ``args``, ``includes``/``excludes`` by ``caps``,
    ``arches`` and ``minKernel``; ``architectures`` or ``archMap``).  Rules are
    kept or dropped as docker does when it creates a container: ``includes.caps``
    all in ``capabilities``, no ``excludes.caps`` in them, ``includes.arches``
    naming this machine (Go's names: ``amd64``, ``arm64``...), the running
    kernel at least ``includes.minKernel``.

    ``capabilities`` is the bounding set; ``None`` means the default spec's.
    "Unconfined" is not a file: a caller wanting no filter sets
    ``spec.linux.seccomp = None``.  Raises :class:`SeccompProfileError` (an
    :class:`InvalidArgumentError`) naming the file and the field for an
    unreadable file, malformed JSON, an unknown key, or a bad action, operator,
    architecture, capability or kernel version; and ``InvalidArgumentError`` for
    a bad name in ``capabilities``.
    """
    if capabilities is None:
        from hcsoci.oci.defaults import DEFAULT_CAPABILITIES  # defaults imports this module

        capabilities = DEFAULT_CAPABILITIES
    caps = _checked_capabilities(capabilities)
    file = os.fspath(path)
    try:
        data = Path(file).read_bytes()
    except OSError as err:
        raise SeccompProfileError(file, "$", f"cannot read: {err.strerror}") from None
    try:
        profile = msgspec.json.decode(data, type=_Profile)
    except msgspec.ValidationError as err:
        problem, _, where = str(err).partition(" - at `")
        raise SeccompProfileError(file, where.rstrip("`") or "$", _lower(problem)) from None
    except msgspec.DecodeError as err:
        raise SeccompProfileError(file, "$", f"not valid JSON: {err}") from None
    _check_profile(file, profile)
    return _resolve(profile, caps, machine, _kernel_version())


def _lower(text: str) -> str:
    return text[:1].lower() + text[1:]


def _checked_capabilities(capabilities: Sequence[str]) -> frozenset[str]:
    if isinstance(capabilities, str):
        raise InvalidArgumentError(
            f"capabilities: must be a list of CAP_* names, not a string ({capabilities!r})"
        )
    for index, name in enumerate(capabilities):
        if name not in KNOWN_CAPABILITIES:
            raise InvalidArgumentError(f"capabilities[{index}]: unknown capability {name!r}")
    return frozenset(capabilities)


_KERNEL_VERSION = re.compile(r"^(\d+)\.(\d+)")


def _kernel_version() -> tuple[int, int]:
    match = _KERNEL_VERSION.match(os.uname().release)
    return (int(match[1]), int(match[2])) if match else (0, 0)


def _check_profile(file: str, profile: _Profile) -> None:
    """The checks msgspec's types cannot make, each naming the file and field."""

    def fail(field: str, problem: str, value: Any) -> None:
        raise SeccompProfileError(file, field, f"{problem} (value: {value!r})")

    if profile.default_action not in SECCOMP_ACTIONS:
        fail("$.defaultAction", "unknown seccomp action", profile.default_action)
    if profile.architectures and profile.arch_map:
        fail("$", "give architectures or archMap, not both", None)
    for index, arch in enumerate(profile.architectures or ()):
        if arch not in SECCOMP_ARCHITECTURES:
            fail(f"$.architectures[{index}]", "unknown seccomp architecture", arch)
    for index, entry in enumerate(profile.arch_map or ()):
        if entry.architecture not in SECCOMP_ARCHITECTURES:
            fail(
                f"$.archMap[{index}].architecture",
                "unknown seccomp architecture",
                entry.architecture,
            )
        for sub, arch in enumerate(entry.sub_architectures or ()):
            if arch not in SECCOMP_ARCHITECTURES:
                fail(
                    f"$.archMap[{index}].subArchitectures[{sub}]",
                    "unknown seccomp architecture",
                    arch,
                )
    for index, rule in enumerate(profile.syscalls or ()):
        at = f"$.syscalls[{index}]"
        if rule.name and rule.names:
            fail(at, "give name or names, not both", rule.name)
        names = rule.names or ([rule.name] if rule.name else [])
        if not names or not all(names):
            fail(f"{at}.names", "must list syscall names", rule.names)
        if rule.action not in SECCOMP_ACTIONS:
            fail(f"{at}.action", "unknown seccomp action", rule.action)
        for arg_index, arg in enumerate(rule.args or ()):
            if arg.op not in SECCOMP_OPERATORS:
                fail(f"{at}.args[{arg_index}].op", "unknown seccomp operator", arg.op)
            if arg.index > 5:
                fail(f"{at}.args[{arg_index}].index", "a syscall has arguments 0 to 5", arg.index)
        for key, where in (("includes", rule.includes), ("excludes", rule.excludes)):
            if where is None:
                continue
            for cap_index, cap in enumerate(where.caps or ()):
                if cap not in KNOWN_CAPABILITIES:
                    fail(f"{at}.{key}.caps[{cap_index}]", "unknown capability", cap)
            if where.min_kernel and not _KERNEL_VERSION.match(where.min_kernel):
                fail(
                    f"{at}.{key}.minKernel", "must be a kernel version like '4.8'", where.min_kernel
                )


def _applies(
    rule: _Rule, caps: frozenset[str], arches: frozenset[str], kernel: tuple[int, int]
) -> bool:
    """Docker's create-time resolution of one rule's includes and excludes."""
    excludes, includes = rule.excludes or _Filter(), rule.includes or _Filter()
    if excludes.arches and arches.intersection(excludes.arches):
        return False
    if excludes.caps and caps.intersection(excludes.caps):
        return False
    if excludes.min_kernel and kernel >= _parse_kernel(excludes.min_kernel):
        return False
    if includes.arches and not arches.intersection(includes.arches):
        return False
    if includes.caps and not caps.issuperset(includes.caps):
        return False
    return not includes.min_kernel or kernel >= _parse_kernel(includes.min_kernel)


def _parse_kernel(version: str) -> tuple[int, int]:
    match = _KERNEL_VERSION.match(version)
    assert match is not None  # _check_profile and the default profile say so
    return int(match[1]), int(match[2])


def _resolve(
    profile: _Profile, caps: frozenset[str], machine: str | None, kernel: tuple[int, int]
) -> LinuxSeccomp:
    """The OCI filter ``profile`` means for this container.

    Rules that apply with the same action, errno and no arguments are merged
    into one (each name once): fewer, larger rules are what runc compiles
    fastest.  A name allowed without conditions drops its conditional rules
    for that action (``clone`` with ``CAP_SYS_ADMIN``).
    """
    native = _MACHINES.get(machine or platform.machine())
    arch_names = native[1] if native is not None else frozenset()
    architectures = _architectures(profile, machine)
    plain: dict[tuple[str, int | None], dict[str, None]] = {}
    conditional: list[LinuxSyscall] = []
    for rule in profile.syscalls or ():
        if not _applies(rule, caps, arch_names, kernel):
            continue
        names = rule.names or [rule.name]
        if rule.args:
            conditional.append(
                LinuxSyscall(
                    names=list(names),
                    action=rule.action,
                    errno_ret=rule.errno_ret,
                    args=[msgspec.structs.replace(arg) for arg in rule.args],
                )
            )
        else:
            plain.setdefault((rule.action, rule.errno_ret), {}).update(dict.fromkeys(names))
    syscalls = [
        LinuxSyscall(names=list(names), action=action, errno_ret=errno_ret)
        for (action, errno_ret), names in plain.items()
    ]
    for rule_ in conditional:
        unconditional = plain.get((rule_.action, rule_.errno_ret), {})
        rule_.names = [name for name in rule_.names if name not in unconditional]
        if rule_.names:
            syscalls.append(rule_)
    return LinuxSeccomp(
        default_action=profile.default_action,
        default_errno_ret=profile.default_errno_ret,
        architectures=architectures or None,
        flags=list(profile.flags) if profile.flags else None,
        listener_path=profile.listener_path,
        listener_metadata=profile.listener_metadata,
        syscalls=syscalls or None,
    )
