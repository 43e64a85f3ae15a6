"""The one rule that turns a process's ``user`` string into (uid, gid, groups).

Used on the host (:func:`hcsoci.local.resolve_user`) and, shipped beside the
agent, in the utility VM's guest, so ``command(host, ...)`` with a ``user``
means the same on every host.  Standard library only (the guest has nothing
else).  The rule is runc's:

* ``""``: the caller's own identity (``None``);
* ``NAME`` or ``UID``, optionally ``:GROUP`` or ``:GID``;
* a name must exist in the passwd database; a numeric uid need not, and then
  its gid is 0; a known user's gid is its passwd gid;
* supplementary groups are the group database's for a known user, else none
  at all.
"""

from __future__ import annotations

import grp
import os
import pwd

__all__ = ["MAX_ID", "UnknownUserError", "UserSyntaxError", "resolve_user"]

MAX_ID = 2**32 - 2
"""The largest uid or gid: ``(uid_t)-1`` means "unchanged" to the kernel."""


class UserSyntaxError(ValueError):
    """The user string is not ``name|uid[:group|gid]``, or an id is out of range."""


class UnknownUserError(LookupError):
    """A user or group name that the databases do not know."""


def resolve_user(user: str) -> tuple[int, int, list[int]] | None:
    """``user`` as (uid, gid, supplementary groups); None for ``""``."""
    if not user:
        return None
    name, sep, group = user.partition(":")
    if not name or (sep and not group):
        raise UserSyntaxError(f"user {user!r}: expected a name or uid[:gid]")
    entry: pwd.struct_passwd | None
    if name.isdigit():
        uid = int(name)
        if uid > MAX_ID:
            raise UserSyntaxError(f"user {user!r}: uid {uid} out of range")
        try:
            entry = pwd.getpwuid(uid)
        except KeyError:
            entry = None
    else:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise UnknownUserError(f"user {user!r}: no user named {name!r}") from None
        uid = entry.pw_uid
    if group.isdigit():
        gid = int(group)
        if gid > MAX_ID:
            raise UserSyntaxError(f"user {user!r}: gid {gid} out of range")
    elif group:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise UnknownUserError(f"user {user!r}: no group named {group!r}") from None
    else:
        gid = entry.pw_gid if entry is not None else 0
    groups = os.getgrouplist(entry.pw_name, gid) if entry is not None else []
    return uid, gid, groups
