"""The one-call sandbox API on this machine: ``hcsoci.run`` and ``hcsoci.container``."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import hcsoci
from hcsoci import images
from hcsoci.errors import InvalidArgumentError, NotFoundError
from hcsoci.store import state_root

Snapshot = Callable[[], object]


def _limit_cgroups() -> list[str]:
    return sorted(
        str(path)
        for path in Path("/sys/fs/cgroup").glob("*/hcsoci/*")
        if path.is_dir() and path.name[:1].isalnum()
    )


@pytest.fixture
def sandbox_env(
    session_image_store: images.ImageStore,
    busybox_image: images.Image,
    no_leaks: Snapshot,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[None]:
    """The session's image store as the default one; nothing left afterwards."""
    monkeypatch.setenv("HCSOCI_IMAGES", str(session_image_store.root))
    cgroups_before = _limit_cgroups()
    scratch = state_root() / "scratch"
    scratch_before = sorted(os.listdir(scratch)) if scratch.is_dir() else []
    yield
    assert _limit_cgroups() == cgroups_before
    assert (sorted(os.listdir(scratch)) if scratch.is_dir() else []) == scratch_before


pytestmark = pytest.mark.usefixtures("sandbox_env")


def test_output_and_exit_code() -> None:
    result = hcsoci.run("busybox", ["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert (result.returncode, result.stdout, result.stderr) == (3, b"out\n", b"err\n")
    assert not result.timed_out and not result.oom_killed
    with pytest.raises(hcsoci.ExitError, match="exit code 3"):
        result.check_returncode()


def test_stdin_bytes_and_str() -> None:
    assert hcsoci.run("busybox", ["cat"], stdin=b"abc").stdout == b"abc"
    assert hcsoci.run("busybox", ["wc", "-c"], stdin="12345").stdout.strip() == b"5"


def test_image_cmd_is_the_default_args(busybox_image: images.Image) -> None:
    # busybox's Cmd is `sh`: with no stdin it reads EOF and exits 0.
    assert hcsoci.run("busybox").returncode == 0


def test_timeout_is_told_from_a_sigkill() -> None:
    timed = hcsoci.run("busybox", ["sh", "-c", "echo partial; exec sleep 60"], timeout=0.5)
    assert timed.timed_out and not timed.oom_killed
    assert timed.returncode == 137
    assert timed.stdout == b"partial\n"  # what it wrote before the kill is kept
    # A SIGKILL the container gives itself is neither a timeout nor an OOM kill.
    killed = hcsoci.run("busybox", ["sh", "-c", "sleep 60 & kill -9 $!; wait $!"], timeout=30)
    assert killed.returncode == 137
    assert not killed.timed_out and not killed.oom_killed


def test_oom_kill_is_told_from_a_timeout() -> None:
    hog = "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo survived"
    result = hcsoci.run("busybox", ["sh", "-c", hog], memory="16m", timeout=60)
    assert result.oom_killed and not result.timed_out
    assert b"survived" not in result.stdout
    fits = hcsoci.run("busybox", ["sh", "-c", "echo fits"], memory="16m")
    assert (fits.stdout, fits.oom_killed) == (b"fits\n", False)


def test_read_only_root_with_a_writable_tmpfs() -> None:
    script = "touch /x 2>/dev/null && echo root-writable; echo hi > /tmp/f && cat /tmp/f"
    result = hcsoci.run("busybox", ["sh", "-c", script], read_only=True, tmpfs=["/tmp"])
    assert result.stdout == b"hi\n"
    sized = hcsoci.run(
        "busybox", ["sh", "-c", "df -k /scratch | tail -1"], tmpfs={"/scratch": "size=1m"}
    )
    assert sized.stdout.split()[1] == b"1024"


def test_no_network_by_default() -> None:
    result = hcsoci.run("busybox", ["cat", "/proc/net/dev"])
    interfaces = [line.split(b":")[0].strip() for line in result.stdout.splitlines()[2:]]
    assert interfaces == [b"lo"]


def test_bind_mounts(tmp_path: Path) -> None:
    (tmp_path / "in.txt").write_text("from host\n")
    out = tmp_path / "out"
    out.mkdir()
    result = hcsoci.run(
        "busybox",
        ["sh", "-c", "cat /data/in.txt; echo back > /out/f; echo x > /data/y || echo refused"],
        mounts=[f"{tmp_path}:/data:ro", f"{out}:/out"],
    )
    assert result.stdout == b"from host\nrefused\n"
    assert (out / "f").read_text() == "back\n"


def test_user_env_cwd() -> None:
    result = hcsoci.run(
        "busybox",
        ["sh", "-c", 'echo "$(id -u):$(id -g) $A $HOME_PASSED $(pwd)"'],
        user="nobody",
        env={"A": "1"},
        cwd="/tmp",
    )
    assert result.stdout == b"65534:65534 1  /tmp\n"
    os.environ["HCSOCI_TEST_PASSED"] = "through"
    try:
        passed = hcsoci.run(
            "busybox", ["sh", "-c", "echo $HCSOCI_TEST_PASSED"], env=["HCSOCI_TEST_PASSED"]
        )
    finally:
        del os.environ["HCSOCI_TEST_PASSED"]
    assert passed.stdout == b"through\n"


def test_cpu_and_pid_limits() -> None:
    result = hcsoci.run(
        "busybox",
        ["cat", "/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "/sys/fs/cgroup/pids/pids.max"],
        cpus=0.5,
        pids=8,
    )
    assert result.stdout.split() == [b"50000", b"8"]
    bomb = hcsoci.run(
        "busybox",
        ["sh", "-c", "for i in 1 2 3 4 5 6 7 8 9 10; do sleep 5 & done"],
        pids=4,
        timeout=30,
    )
    assert b"can't fork" in bomb.stderr and bomb.returncode != 0


def test_a_root_file_system_directory(busybox_image: images.Image) -> None:
    rootfs = Path(busybox_image.layer_folders[0])
    result = hcsoci.run(rootfs, ["sh", "-c", "echo $(id -u nobody)"], read_only=True)
    assert result.stdout == b"65534\n"
    with pytest.raises(InvalidArgumentError, match="args"):
        hcsoci.run(rootfs)


def test_container_runs_several_processes(tmp_path: Path) -> None:
    with hcsoci.container("busybox", tmpfs=["/work"], read_only=True) as box:
        assert box.run(["sh", "-c", "echo 1 > /work/n"]).returncode == 0
        assert box.run(["cat", "/work/n"]).stdout == b"1\n"
        assert hcsoci.command(box, "echo", "via", "Cmd").output() == b"via Cmd\n"
        cmd = box.exec(["sh", "-c", "exit 5"])
        with pytest.raises(hcsoci.ExitError):
            cmd.run()
        slow = box.run(["sleep", "60"], timeout=0.5)
        assert slow.timed_out
        assert box.properties(hcsoci.context.background()).state == "running"
    with pytest.raises(hcsoci.HcsociError):
        box.run(["true"])  # released: the container is gone


def test_container_counts_oom_kills() -> None:
    with hcsoci.container("busybox", memory="16m") as box:
        hog = box.run(["sh", "-c", "x=$(head -c 200000000 /dev/zero | tr '\\0' a)"])
        assert hog.oom_killed and box.oom_kills() >= 1
        after = box.run(["true"])
        assert after.returncode == 0 and not after.oom_killed


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"memory": "1x"}, InvalidArgumentError, "memory: '1x' is not a size"),
        ({"memory": 1000}, InvalidArgumentError, "memory: 1000 is below"),
        ({"cpus": -1}, InvalidArgumentError, "cpus: -1 must be a positive"),
        ({"cpus": "many"}, InvalidArgumentError, "cpus: 'many' is not"),
        ({"pids": 0}, InvalidArgumentError, "pids: 0 must be"),
        ({"user": "nosuchuser"}, NotFoundError, "nosuchuser"),
        ({"mounts": ["/nonexistent-src:/x"]}, NotFoundError, "/nonexistent-src"),
        ({"mounts": ["relative:/x"]}, InvalidArgumentError, "absolute"),
        ({"tmpfs": ["tmp"]}, InvalidArgumentError, "tmpfs\\[0\\]"),
        ({"tmpfs": ["/tmp:evil=1"]}, InvalidArgumentError, "evil"),
        ({"cwd": "rel"}, InvalidArgumentError, "cwd: 'rel'"),
        ({"timeout": 0}, InvalidArgumentError, "timeout: 0"),
        ({"network": "no-such-network-x"}, NotFoundError, "no-such-network-x"),
    ],
)
def test_bad_input_names_the_option(
    options: dict[str, object], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        hcsoci.run("busybox", ["true"], **options)  # type: ignore[arg-type]


def test_an_unknown_image_is_not_found() -> None:
    with pytest.raises(NotFoundError, match="no-such-image"):
        hcsoci.run("no-such-image", ["true"])


def test_gc_reclaims_a_sandbox_whose_controller_was_killed(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    code = (
        "import hcsoci; "
        f"hcsoci.run('busybox', ['sh', '-c', 'touch /out/ready; sleep 300'], memory='32m', "
        f"mounts=['{tmp_path}:/out'])"
    )
    controller = subprocess.Popen([sys.executable, "-c", code], env=os.environ.copy())
    try:
        for _ in range(600):  # the container runs once the file is there
            if ready.exists() or controller.poll() is not None:
                break
            time.sleep(0.05)
        assert ready.exists(), "the sandbox never ran"
        assert _limit_cgroups(), "no limit cgroup while it runs"
    finally:
        controller.kill()
        controller.wait()
    done = subprocess.run(
        [sys.executable, "-m", "hcsoci.cli.main", "gc"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.split()) == 1  # the one container, released with all it held
    # the sandbox_env fixture then finds no cgroup, scratch folder, mount or record left
