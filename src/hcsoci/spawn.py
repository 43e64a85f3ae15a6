"""posix_spawn(3) with the file actions ``os.posix_spawn`` does not offer.

glibc's ``posix_spawn`` starts a process with ``clone(CLONE_VM|CLONE_VFORK)``
and reports a failed ``exec`` as an error number, which makes it the cheapest
correct way to start a process from a threaded program.  Python's
``os.posix_spawn`` lacks ``addchdir_np`` (a working directory) and
``addclosefrom_np`` (close every other descriptor), so this module binds the
C functions with ``ctypes`` (glibc >= 2.34).  ``ctypes`` releases the GIL
around each call, so threads start processes in parallel.
"""

from __future__ import annotations

import ctypes
import os
import signal
from collections.abc import Callable, Sequence
from typing import Any

from hcsoci.errors import HcsociError

__all__ = ["spawn"]

# <spawn.h> flags (glibc).
_SETSIGDEF = 0x04
_SETSIGMASK = 0x08
_SETSID = 0x80

# sizeof(posix_spawn_file_actions_t) is 80 and sizeof(posix_spawnattr_t) 336 on
# x86-64; sizeof(sigset_t) is 128.  Generous buffers cover every architecture.
_FILE_ACTIONS_SIZE = 512
_ATTR_SIZE = 1024
_SIGSET_SIZE = 256

_c_void_p = ctypes.c_void_p
_c_int = ctypes.c_int
_c_char_p = ctypes.c_char_p
_argv_t = ctypes.POINTER(_c_char_p)


class _Libc:
    """The few libc functions used, with their prototypes."""

    posix_spawn: Callable[..., int]
    posix_spawn_file_actions_init: Callable[..., int]
    posix_spawn_file_actions_destroy: Callable[..., int]
    posix_spawn_file_actions_adddup2: Callable[..., int]
    posix_spawn_file_actions_addopen: Callable[..., int]
    posix_spawn_file_actions_addchdir_np: Callable[..., int]
    posix_spawn_file_actions_addclosefrom_np: Callable[..., int]
    posix_spawnattr_init: Callable[..., int]
    posix_spawnattr_destroy: Callable[..., int]
    posix_spawnattr_setflags: Callable[..., int]
    posix_spawnattr_setsigdefault: Callable[..., int]
    posix_spawnattr_setsigmask: Callable[..., int]
    sigemptyset: Callable[..., int]
    sigaddset: Callable[..., int]

    def __init__(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        prototypes: dict[str, list[Any]] = {
            "posix_spawn": [
                ctypes.POINTER(_c_int),
                _c_char_p,
                _c_void_p,
                _c_void_p,
                _argv_t,
                _argv_t,
            ],
            "posix_spawn_file_actions_init": [_c_void_p],
            "posix_spawn_file_actions_destroy": [_c_void_p],
            "posix_spawn_file_actions_adddup2": [_c_void_p, _c_int, _c_int],
            "posix_spawn_file_actions_addopen": [
                _c_void_p,
                _c_int,
                _c_char_p,
                _c_int,
                ctypes.c_uint,
            ],
            "posix_spawn_file_actions_addchdir_np": [_c_void_p, _c_char_p],
            "posix_spawn_file_actions_addclosefrom_np": [_c_void_p, _c_int],
            "posix_spawnattr_init": [_c_void_p],
            "posix_spawnattr_destroy": [_c_void_p],
            "posix_spawnattr_setflags": [_c_void_p, ctypes.c_short],
            "posix_spawnattr_setsigdefault": [_c_void_p, _c_void_p],
            "posix_spawnattr_setsigmask": [_c_void_p, _c_void_p],
            "sigemptyset": [_c_void_p],
            "sigaddset": [_c_void_p, _c_int],
        }
        for name, argtypes in prototypes.items():
            try:
                function = getattr(libc, name)
            except AttributeError:
                raise HcsociError(f"starting processes needs {name}() (glibc >= 2.34)") from None
            function.argtypes = argtypes
            function.restype = _c_int
            setattr(self, name, function)
        # The child gets an empty signal mask, and default actions for what
        # Python ignores (SIGPIPE, SIGXFSZ), as subprocess's restore_signals does.
        # posix_spawn only reads the attributes: one set serves every thread.
        self.empty_sigset = ctypes.create_string_buffer(_SIGSET_SIZE)
        _check(self.sigemptyset(self.empty_sigset))
        self.default_sigset = ctypes.create_string_buffer(_SIGSET_SIZE)
        _check(self.sigemptyset(self.default_sigset))
        for sig in (signal.SIGPIPE, signal.SIGXFSZ):
            _check(self.sigaddset(self.default_sigset, sig))
        self.attr = self._attributes(_SETSIGDEF | _SETSIGMASK)
        self.session_attr = self._attributes(_SETSIGDEF | _SETSIGMASK | _SETSID)

    def _attributes(self, flags: int) -> ctypes.Array[ctypes.c_char]:
        attr = ctypes.create_string_buffer(_ATTR_SIZE)
        _check(self.posix_spawnattr_init(attr))
        _check(self.posix_spawnattr_setflags(attr, flags))
        _check(self.posix_spawnattr_setsigdefault(attr, self.default_sigset))
        _check(self.posix_spawnattr_setsigmask(attr, self.empty_sigset))
        return attr  # never destroyed: it lives as long as the module


_libc: _Libc | None = None


def _lib() -> _Libc:
    global _libc
    if _libc is None:
        _libc = _Libc()
    return _libc


def _check(result: int) -> None:
    if result != 0:
        raise OSError(result, os.strerror(result))


def spawn(
    path: str,
    argv: Sequence[str],
    env: dict[str, str],
    *,
    stdio: tuple[int | None, int | None, int | None] = (None, None, None),
    cwd: str | None = None,
    terminal: str | None = None,
) -> int:
    """Start ``path`` with ``argv`` and exactly ``env``; return its pid.

    ``stdio`` are descriptors (3 or above) to become the child's 0, 1 and 2;
    None gives ``/dev/null``.  ``terminal``, a pseudo-terminal's path, makes
    the child a session leader with that terminal as its controlling terminal
    and its 0, 1 and 2 (``stdio`` is ignored then).  Every other descriptor is
    closed in the child.  Raises OSError with the errno of whatever failed
    (a ``chdir`` and an ``exec`` failure look alike: ENOENT).
    """
    lib = _lib()
    cacheable = terminal is None and stdio == (None, None, None)
    actions = _shared_actions.get(cwd) if cacheable else None
    owned = actions is None
    if actions is None:
        actions = _file_actions(lib, stdio, cwd, terminal)
    try:
        c_argv = (_c_char_p * (len(argv) + 1))(*map(os.fsencode, argv), None)
        c_env = (_c_char_p * (len(env) + 1))(
            *(os.fsencode(f"{key}={value}") for key, value in env.items()), None
        )
        attr = lib.attr if terminal is None else lib.session_attr
        pid = _c_int()
        _check(lib.posix_spawn(ctypes.byref(pid), os.fsencode(path), actions, attr, c_argv, c_env))
        return pid.value
    finally:
        if owned:
            # Keep the file actions of a plain start (all /dev/null, a working
            # directory) for the next one: posix_spawn only reads them.
            kept = len(_shared_actions) < _SHARED_LIMIT and cacheable
            if not kept or _shared_actions.setdefault(cwd, actions) is not actions:
                lib.posix_spawn_file_actions_destroy(actions)


_SHARED_LIMIT = 16
_shared_actions: dict[str | None, ctypes.Array[ctypes.c_char]] = {}


def _file_actions(
    lib: _Libc,
    stdio: tuple[int | None, int | None, int | None],
    cwd: str | None,
    terminal: str | None,
) -> ctypes.Array[ctypes.c_char]:
    actions = ctypes.create_string_buffer(_FILE_ACTIONS_SIZE)
    _check(lib.posix_spawn_file_actions_init(actions))
    try:
        if terminal is not None:
            # A session leader without a terminal that opens one (no O_NOCTTY)
            # gets it as its controlling terminal.
            _check(
                lib.posix_spawn_file_actions_addopen(
                    actions, 0, os.fsencode(terminal), os.O_RDWR, 0
                )
            )
            _check(lib.posix_spawn_file_actions_adddup2(actions, 0, 1))
            _check(lib.posix_spawn_file_actions_adddup2(actions, 0, 2))
        else:
            null_fd = -1
            for target, source in enumerate(stdio):
                if source is not None:
                    _check(lib.posix_spawn_file_actions_adddup2(actions, source, target))
                elif null_fd < 0:
                    _check(
                        lib.posix_spawn_file_actions_addopen(
                            actions, target, b"/dev/null", os.O_RDWR, 0
                        )
                    )
                    null_fd = target
                else:
                    _check(lib.posix_spawn_file_actions_adddup2(actions, null_fd, target))
        if cwd is not None:
            _check(lib.posix_spawn_file_actions_addchdir_np(actions, os.fsencode(cwd)))
        _check(lib.posix_spawn_file_actions_addclosefrom_np(actions, 3))
    except BaseException:
        lib.posix_spawn_file_actions_destroy(actions)
        raise
    return actions
