"""Trust, tried as an attacker and as a careless user would: names, files on disk, the store.

* A bad id never touches the file system: not the victim directory, not the
  state root, not another container's writable layer.
* Nothing hcsoci keeps on disk is readable by another local user, and a
  set-uid file made inside a container does not run as root for anyone.
* A missing, empty, damaged or replaced state database is refused with one
  line naming it, and nothing is created over it.
* Trees too deep for a recursive walk are removed; removal never follows a
  symlink out or crosses into a mount.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from fixtures_containers import CLI, Created, SpecFactory
from fixtures_hns import HnsLab, free_subnet
from hcsoci import context, hns, oci
from hcsoci.create import CreateOptions, create_container
from hcsoci.errors import InvalidArgumentError
from hcsoci.mounts import mount, unmount
from hcsoci.paths import UnsafePathError, check_id, make_private_dir, remove_tree
from hcsoci.store import Store, StoreError, state_root

CTX = context.background()
OTHER_USER = ("--reuid", "64123", "--regid", "64123", "--clear-groups")
"""An unprivileged local user made up for the test (no passwd entry needed)."""


def as_other_user(*argv: str) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` as :data:`OTHER_USER`, from a shell that already lost root's capabilities.

    ``setpriv`` itself still holds them while it makes its own ``execve`` (they
    are dropped by that exec), so the first path lookup must not be setpriv's.
    """
    return subprocess.run(
        ["setpriv", *OTHER_USER, "sh", "-c", 'exec "$@"', "sh", *argv],
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.fixture
def victim(tmp_path: Path) -> Iterator[Path]:
    """A directory of the user's that a hostile id aims at; it must survive every test."""
    path = Path(f"/tmp/hcsoci-victim-{secrets.token_hex(4)}")
    path.mkdir()
    (path / "precious").write_text("keep me")
    try:
        yield path
    finally:
        assert (path / "precious").read_text() == "keep me", "the victim was touched"
        shutil.rmtree(path)


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0, result
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("hcsoci: ") and "Traceback" not in result.stderr
    return lines[0]


# --- ids --------------------------------------------------------------------


def test_hostile_ids_touch_nothing(hcsoci: CLI, victim: Path) -> None:
    relative = os.path.relpath(victim, state_root() / "scratch")  # ../../../tmp/hcsoci-victim-x
    state_db = state_root() / "state.db"
    hcsoci("list")  # the store exists before the attempts
    attempts = [
        ("delete", relative),
        ("delete", str(victim)),
        ("delete", ""),
        ("delete", ".."),
        ("delete", "--", "-a"),
        ("run", "--rm", "--name", relative, "--", "true"),
        ("create", "--name", str(victim), "--", "true"),
        ("create", "--name", "..", "--", "true"),
        ("create", "--name", "-a", "--", "true"),
        ("run", "--rm", "--name", "x" * 300, "--", "true"),
        ("start", relative),
        ("exec", relative, "--", "true"),
        ("kill", relative),
        ("state", str(victim)),
    ]
    for args in attempts:
        line = one_error_line(hcsoci(*args, check=False))
        assert "is not a valid id" in line, (args, line)
        assert state_db.exists()
    scratch = state_root() / "scratch"
    assert not scratch.exists() or list(scratch.iterdir()) == []


def test_an_empty_or_taken_name_never_reaches_another_containers_layer(hcsoci: CLI) -> None:
    name = f"keep-{secrets.token_hex(3)}"
    hcsoci("create", "--name", name, "--", "sh", "-c", "echo data > /kept; sleep 600")
    try:
        hcsoci("start", name)
        upper = state_root() / "scratch" / name / "upper"
        hcsoci("exec", name, "--", "sh", "-c", "test -f /kept || sleep 1; test -f /kept")
        assert (upper / "kept").read_text() == "data\n"
        one_error_line(hcsoci("delete", "", check=False))
        taken = one_error_line(hcsoci("run", "--rm", "--name", name, "--", "true", check=False))
        assert "already exists" in taken
        assert (upper / "kept").read_text() == "data\n"
        assert name in hcsoci("list", "--json").stdout
    finally:
        hcsoci("delete", "-f", name)


def test_api_refuses_bad_ids_before_making_anything(container_spec: SpecFactory) -> None:
    for bad in ("..", "../x", "/tmp/x", "-a", "a" * 129, "a/b", ".hidden"):  # "": a new uuid
        with pytest.raises(InvalidArgumentError, match=r"CreateOptions\.id"):
            create_container(CTX, CreateOptions(id=bad, spec=container_spec(["true"])))
    assert not (state_root() / "containers" / "x").exists()
    for good in ("a", "A-1.b_2", "0" * 128):
        assert check_id(good, "id") == good


# --- removal ------------------------------------------------------------------


def make_deep_tree(top: Path, depth: int) -> None:
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            os.mkdir("d", dir_fd=fd)
            os.close(os.open("f", os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=fd))
            below = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = below
    finally:
        os.close(fd)


def test_remove_tree_is_depth_safe_and_follows_no_symlink(tmp_path: Path, victim: Path) -> None:
    top = tmp_path / "tree"
    top.mkdir()
    make_deep_tree(top, 5000)
    (top / "out").symlink_to(victim)  # removing must unlink the link, never empty the victim
    (top / "d" / "out").symlink_to(victim / "precious")
    remove_tree(top)
    assert not top.exists()
    remove_tree(top)  # gone already: fine


def test_remove_tree_refuses_to_cross_a_mount(tmp_path: Path) -> None:
    top = tmp_path / "tree"
    mounted = top / "a" / "mnt"
    mounted.mkdir(parents=True)
    mount("tmpfs", mounted, "tmpfs", 0, "size=1m")
    try:
        (mounted / "inside").write_text("x")
        with pytest.raises(UnsafePathError, match="another mount"):
            remove_tree(top)
        assert (mounted / "inside").read_text() == "x"
    finally:
        unmount(mounted)
    remove_tree(top)
    assert not top.exists()


def test_run_rm_removes_a_tree_deeper_than_python_recursion(hcsoci: CLI) -> None:
    deep = "i=0; while [ $i -lt 1100 ]; do mkdir d && cd d || exit 1; i=$((i+1)); done; echo made"
    result = hcsoci("run", "--rm", "--", "sh", "-c", deep, timeout=120)
    assert result.stdout == "made\n", result.stderr
    assert not list((state_root() / "scratch").iterdir())


# --- least privilege on disk ----------------------------------------------------


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_state_on_disk_is_root_only(hcsoci: CLI) -> None:
    name = f"priv-{secrets.token_hex(3)}"
    hcsoci("create", "--name", name, "-e", "SECRET=hunter2", "--", "sleep", "600")
    try:
        root = state_root()
        bundle = root / "containers" / name
        for directory in (
            root,
            root / "containers",
            bundle,
            root / "scratch" / name,
            root / "runc",
        ):
            assert mode(directory) == 0o700, directory
        for private in (bundle / "config.json", root / "state.db"):
            assert mode(private) == 0o600, private
        assert "hunter2" in (bundle / "config.json").read_text()
        for target in (bundle / "config.json", root / "state.db", bundle / "rootfs" / "bin"):
            denied = as_other_user("cat", str(target))
            assert denied.returncode != 0 and "Permission denied" in denied.stderr, target
    finally:
        hcsoci("delete", "-f", name)


def test_setuid_file_made_in_a_container_never_runs_as_root(
    created: Created, container_spec: SpecFactory
) -> None:
    spec = container_spec(["sleep", "600"])
    assert spec.process is not None
    spec.process.user = oci.User(uid=64123, gid=64123)  # the init is the other user's process
    container, _ = created(spec)
    container.start(CTX)
    # Root inside the container plants a set-uid-root copy of the host's `id`.
    planted = oci.Process(args=["sh", "-c", "mkdir -p /x && cat > /x/id && chmod 4755 /x/id"],
                          cwd="/", user=oci.User(uid=0, gid=0), env=["PATH=/bin"])  # fmt: skip
    from hcsoci.cmd import Cmd

    cmd = Cmd(container, planted)
    cmd.stdin = open("/usr/bin/id", "rb")  # noqa: SIM115 - closed below
    try:
        cmd.run()
    finally:
        cmd.stdin.close()
    mounts = Path("/proc/self/mounts").read_text()
    rootfs = str(container.bundle / "rootfs")
    options = next(line.split()[3] for line in mounts.splitlines() if line.split()[1] == rootfs)
    assert {"nosuid", "nodev"} <= set(options.split(","))
    # Through the bundle: the other user cannot even reach it.
    assert as_other_user(f"{rootfs}/x/id").returncode != 0
    # Through /proc/PID/root of the container's own process: reachable, but not set-uid.
    through_proc = as_other_user(f"/proc/{container.properties(CTX).init_pid}/root/x/id")
    assert through_proc.returncode == 0, through_proc.stderr
    assert "euid=0" not in through_proc.stdout and "uid=64123" in through_proc.stdout
    # The control: the same file on a file system without nosuid does run as root.
    reachable = Path(tempfile.mkdtemp(prefix="hcsoci-control-", dir="/tmp"))
    try:
        reachable.chmod(0o755)
        control = reachable / "id"
        shutil.copy("/usr/bin/id", control)
        control.chmod(0o4755)
        assert "euid=0" in as_other_user(str(control)).stdout
    finally:
        shutil.rmtree(reachable)


def test_private_dirs_are_made_private_and_a_shared_one_is_refused(tmp_path: Path) -> None:
    made = make_private_dir(tmp_path / "a" / "b" / "c")
    assert [mode(p) for p in (tmp_path / "a", tmp_path / "a" / "b", made)] == [0o700] * 3
    old = tmp_path / "old"
    old.mkdir(mode=0o711)
    old.chmod(0o711)
    make_private_dir(old)
    assert mode(old) == 0o700
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    with pytest.raises(UnsafePathError, match="writable by other users"):
        make_private_dir(shared)
    with pytest.raises(StoreError, match="writable by other users"):
        Store(shared)


# --- the state store defends itself ------------------------------------------------


@pytest.mark.parametrize("damage", ["empty", "garbage", "directory", "missing-with-bundles"])
def test_a_damaged_store_is_refused_not_replaced(tmp_path: Path, damage: str) -> None:
    root = tmp_path / "root"
    Store(root).close()
    db = root / "state.db"
    for suffix in ("-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    db.unlink()
    if damage == "empty":
        db.write_bytes(b"")
    elif damage == "garbage":
        db.write_bytes(b"not a database at all\n" * 100)
    elif damage == "directory":
        db.mkdir()
    else:
        (root / "containers" / "live").mkdir(parents=True)
    before = sorted(p.name for p in root.iterdir())
    with pytest.raises(StoreError, match=str(db)):
        Store(root)
    assert sorted(p.name for p in root.iterdir()) == before
    cli = subprocess.run(
        [sys.executable, "-m", "hcsoci.cli.main", "list"],
        env={**os.environ, "HCSOCI_ROOT": str(root)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    line = one_error_line(cli)
    assert str(db) in line and cli.returncode == 1
    assert sorted(p.name for p in root.iterdir()) == before


def test_a_store_corrupted_while_open_is_a_store_error(tmp_path: Path) -> None:
    root = tmp_path / "root"
    store = Store(root)
    store.close()
    with open(root / "state.db", "r+b") as db:  # keep the header, wreck the pages
        db.seek(100)
        db.write(os.urandom(8192))
    for suffix in ("-wal", "-shm"):
        Path(f"{root / 'state.db'}{suffix}").unlink(missing_ok=True)
    with pytest.raises(StoreError, match=r"state\.db"):
        Store(root).query("SELECT * FROM containers")


def test_gc_reclaims_every_kind_of_orphaned_record(hcsoci: CLI) -> None:
    """Records a VM container left with no container row (what `run --isolation vm` did)."""
    from hcsoci.store import open_store

    store = open_store()
    owner = f"vmc-{secrets.token_hex(3)}"
    for kind, data in [
        ("uvm-guest-container", {"vm_id": "uvm-gone", "container_id": owner}),
        ("uvm-guest-mount", {"vm_id": "uvm-gone", "target": f"/run/gcs/c/{owner}/rootfs"}),
        ("uvm-scsi", {"vm_id": "uvm-gone", "host_path": "/nonexistent.ext4"}),
    ]:
        store.execute(
            "INSERT INTO resources (owner_id, kind, data) VALUES (?, ?, ?)",
            (owner, kind, json.dumps(data)),
        )
    assert owner in hcsoci("gc").stdout
    assert store.query("SELECT * FROM resources WHERE owner_id = ?", (owner,)) == []


# --- /etc files --------------------------------------------------------------------


def test_a_container_gets_its_own_etc_files(
    lab: HnsLab, created: Created, container_spec: SpecFactory
) -> None:
    """(``lab`` first: its network is deleted after ``created`` released the container.)"""
    network = hns.create_network(
        f"{lab.network_prefix}dns", free_subnet(), "bridge", dns_servers=["192.0.2.53"]
    )
    lab.networks.append(network)
    script = "cat /etc/hostname; echo --; cat /etc/hosts; echo --; cat /etc/resolv.conf"
    spec = container_spec(["sh", "-c", script])
    spec.hostname = "web1"
    from hcsoci.cmd import Cmd

    container, resources = created(spec, networks=[network.id])
    cmd = Cmd(container, None)
    hostname, hosts, resolv = cmd.output().decode().split("--\n")
    endpoint = hns.get_endpoint_by_id(spec_endpoint(resources))
    assert hostname == "web1\n"
    assert "127.0.0.1\tlocalhost" in hosts and f"{endpoint.ip_address}\tweb1" in hosts
    assert resolv == "nameserver 192.0.2.53\n"
    # No network: no name servers at all, and never the host's.
    plain, _ = created(container_spec(["cat", "/etc/resolv.conf"]))
    assert "nameserver" not in Cmd(plain, None).output().decode()
    # A spec that binds its own resolv.conf keeps it.
    own = container_spec(["cat", "/etc/resolv.conf"])
    own.mounts = [*(own.mounts or []), oci.Mount(destination="/etc/resolv.conf", type="bind",
                  source="/etc/resolv.conf", options=["rbind", "ro"])]  # fmt: skip
    mine, _ = created(own)
    assert Cmd(mine, None).output() == Path("/etc/resolv.conf").read_bytes()


def spec_endpoint(resources: object) -> str:
    from hcsoci.network import CreatedEndpoint
    from hcsoci.resources import Resources

    assert isinstance(resources, Resources)
    return str(resources.find(CreatedEndpoint)[0].endpoint_id)


def test_the_cli_debug_flag_adds_the_traceback(hcsoci: CLI) -> None:
    plain = hcsoci("delete", "no-such-container", check=False)
    assert one_error_line(plain) == "hcsoci: container id: 'no-such-container' does not exist"
    debug = hcsoci("--debug", "delete", "no-such-container", check=False)
    assert "Traceback" in debug.stderr and debug.returncode == 1
