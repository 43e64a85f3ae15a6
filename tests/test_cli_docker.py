"""The command line a docker user expects: every run/create flag and the lifecycle commands,
through the real ``hcsoci`` process (a pty where a terminal matters)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from fixtures_hns import HnsLab
from hcsoci import images
from hcsoci.hns import firewall
from hcsoci.store import state_root

CLI = Callable[..., "subprocess.CompletedProcess[str]"]


def _scratch_entries() -> list[str]:
    scratch = state_root() / "scratch"
    return sorted(os.listdir(scratch)) if scratch.is_dir() else []


def _cap_bits(status: str, field: str) -> int:
    line = next(line for line in status.splitlines() if line.startswith(f"{field}:"))
    return int(line.split()[1], 16)


CAP_KILL, CAP_NET_ADMIN, CAP_SYS_ADMIN = 5, 12, 21


def test_the_image_is_the_first_argument(hcsoci: CLI) -> None:
    assert hcsoci("run", "--rm", "busybox", "echo", "hi").stdout == "hi\n"
    # options after the image belong to the command, as with docker
    assert hcsoci("run", "--rm", "busybox", "sh", "-c", "echo $0", "x").stdout == "x\n"
    assert hcsoci("run", "--rm", "busybox:latest", "--", "echo", "dd").stdout == "dd\n"
    # the older forms keep working
    assert hcsoci("run", "--rm", "--", "echo", "old").stdout == "old\n"
    assert hcsoci("run", "--rm", "--image", "busybox", "--", "echo", "named").stdout == "named\n"


def test_exit_codes_are_dockers(hcsoci: CLI) -> None:
    assert hcsoci("run", "--rm", "busybox", "sh", "-c", "exit 4", check=False).returncode == 4
    missing = hcsoci("run", "--rm", "busybox", "no-such-command", check=False)
    assert missing.returncode == 127 and "no-such-command" in missing.stderr
    not_executable = hcsoci("run", "--rm", "busybox", "/etc/passwd", check=False)
    assert not_executable.returncode == 126
    unknown = hcsoci("run", "--rm", "no-such-image", "true", check=False)
    assert unknown.returncode == 125 and unknown.stderr.count("\n") == 1
    assert "no-such-image" in unknown.stderr
    usage = hcsoci("run", "--no-such-flag", "busybox", "true", check=False)
    assert usage.returncode == 125
    assert hcsoci("list", "--no-such-flag", check=False).returncode == 2  # not run: click's


def test_version(hcsoci: CLI) -> None:
    out = hcsoci("--version").stdout
    assert out.startswith("hcsoci version ") and out.split()[-1][0].isdigit()


def test_volumes_mounts_tmpfs_and_a_read_only_root(hcsoci: CLI, tmp_path: Path) -> None:
    (tmp_path / "in").write_text("host file\n")
    out = tmp_path / "out"
    out.mkdir()
    script = (
        "cat /data/in; echo w > /data/x 2>/dev/null || echo data-ro; echo back > /out/f; "
        "echo t > /t/f && echo tmp-rw; df -k /sized | tail -1 | awk '{print $2}'; "
        "cat /ro/in; touch /root-file 2>/dev/null || echo root-ro; echo s > /s/f && cat /s/f"
    )
    result = hcsoci(
        "run", "--rm", "--read-only",
        "-v", f"{tmp_path}:/data:ro",
        "--volume", f"{out}:/out",
        "--mount", f"type=bind,source={tmp_path},target=/ro,readonly",
        "--mount", "type=tmpfs,target=/sized,tmpfs-size=1m",
        "--tmpfs", "/t", "--tmpfs", "/s:size=64k,mode=1777",
        "busybox", "sh", "-c", script,
    )  # fmt: skip
    assert result.stdout.split("\n") == [
        "host file", "data-ro", "tmp-rw", "1024", "host file", "root-ro", "s", "",
    ]  # fmt: skip
    assert (out / "f").read_text() == "back\n"


def test_limits(hcsoci: CLI) -> None:
    files = ["/sys/fs/cgroup/memory/memory.limit_in_bytes",
             "/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "/sys/fs/cgroup/pids/pids.max"]  # fmt: skip
    result = hcsoci("run", "--rm", "-m", "32m", "--cpus", "0.5", "--pids-limit", "9",
                    "busybox", "cat", *files)  # fmt: skip
    assert result.stdout.split() == [str(32 << 20), "50000", "9"]


def test_user_hostname_env_and_env_file(hcsoci: CLI, tmp_path: Path) -> None:
    env_file = tmp_path / "env"
    env_file.write_text("# a comment\n\nFROM_FILE=1\nPASSED_ON\nNOT_SET_ANYWHERE\n")
    script = (
        'echo "$(id -u):$(id -g) $(hostname) $FROM_FILE $PASSED_ON $DIRECT '
        '${NOT_SET_ANYWHERE-unset}"'
    )
    result = hcsoci(
        "run", "--rm", "-u", "nobody", "--hostname", "box1", "--env-file", str(env_file),
        "-e", "DIRECT", "busybox", "sh", "-c", script,
        env={"PASSED_ON": "p", "DIRECT": "d"},
    )  # fmt: skip
    assert result.stdout == "65534:65534 box1 1 p d unset\n"
    numeric = hcsoci("run", "--rm", "--user", "1234:99", "busybox", "id", "-u")
    assert numeric.stdout == "1234\n"


def test_entrypoint(hcsoci: CLI) -> None:
    assert hcsoci("run", "--rm", "--entrypoint", "echo", "busybox", "a", "b").stdout == "a b\n"
    assert hcsoci("run", "--rm", "--entrypoint", "", "busybox", "echo", "c").stdout == "c\n"
    missing = hcsoci("run", "--rm", "--entrypoint", "/nope", "busybox", check=False)
    assert missing.returncode == 127


def test_capabilities_and_privileged(hcsoci: CLI) -> None:
    status = ("busybox", "cat", "/proc/self/status")
    default = hcsoci("run", "--rm", *status).stdout
    added = hcsoci("run", "--rm", "--cap-add", "NET_ADMIN", "--cap-drop", "CAP_KILL", *status)
    assert _cap_bits(default, "CapBnd") & (1 << CAP_KILL)
    assert not _cap_bits(default, "CapBnd") & (1 << CAP_NET_ADMIN)
    assert _cap_bits(added.stdout, "CapEff") & (1 << CAP_NET_ADMIN)
    assert not _cap_bits(added.stdout, "CapEff") & (1 << CAP_KILL)
    # with CAP_NET_ADMIN the container may change its own (empty) network namespace
    link = hcsoci("run", "--rm", "--cap-add", "net_admin", "busybox", "ip", "link", "set",
                  "lo", "down", check=False)  # fmt: skip
    assert link.returncode == 0, link.stderr
    privileged = hcsoci("run", "--rm", "--privileged", *status).stdout
    assert _cap_bits(privileged, "CapEff") & (1 << CAP_SYS_ADMIN)
    assert "Seccomp:\t0" in privileged
    assert "Seccomp:\t2" in default


def test_dns(hcsoci: CLI) -> None:
    result = hcsoci("run", "--rm", "--dns", "192.0.2.53", "busybox", "cat", "/etc/resolv.conf")
    assert result.stdout == "nameserver 192.0.2.53\n"


def test_detach_logs_wait_ps_and_state(hcsoci: CLI) -> None:
    name = "cli-detached"
    script = "echo one; echo two >&2; read -t 2 x < /dev/zero; sleep 1; echo three; exit 3"
    assert hcsoci("run", "-d", "--name", name, "busybox", "sh", "-c", script).stdout == f"{name}\n"
    try:
        running = hcsoci("ps").stdout
        assert name in running and "Up " in running
        followed = hcsoci("logs", "-f", name).stdout  # returns once the init exited
        # runc copies stdout and stderr into the log in two goroutines: the two
        # lines written at once may land either way round, as with docker's logs.
        words = followed.split()
        assert sorted(words[:2]) == ["one", "two"] and words[2:] == ["three"]
        assert hcsoci("wait", name).stdout == "3\n"
        assert name not in hcsoci("ps").stdout
        listed = hcsoci("ps", "-a").stdout
        assert any(name in line and "Exited (3)" in line for line in listed.splitlines())
        rows = json.loads(hcsoci("ps", "-a", "--json").stdout)
        assert [row["exit_code"] for row in rows if row["id"] == name] == [3]
        assert json.loads(hcsoci("state", name).stdout)["exit_code"] == 3
        assert hcsoci("logs", name).stdout.split() == words  # the same log, read again
    finally:
        hcsoci("delete", "-f", name, check=False)


def test_a_foreground_run_keeps_its_exit_code(hcsoci: CLI) -> None:
    name = "cli-foreground"
    assert (
        hcsoci("run", "--name", name, "busybox", "sh", "-c", "exit 6", check=False).returncode == 6
    )
    try:
        assert json.loads(hcsoci("state", name).stdout)["exit_code"] == 6
        assert hcsoci("wait", name).stdout == "6\n"
    finally:
        hcsoci("delete", name)


def test_stop_sends_term_then_kill_and_init_forwards_it(hcsoci: CLI) -> None:
    hcsoci("run", "-d", "--name", "cli-stop-plain", "busybox", "sleep", "600")
    hcsoci("run", "-d", "--init", "--name", "cli-stop-init", "busybox", "sleep", "600")
    try:
        # sleep as pid 1 never sees SIGTERM: the SIGKILL after -t ends it (137)
        assert hcsoci("stop", "-t", "1", "cli-stop-plain").stdout == "cli-stop-plain\n"
        assert hcsoci("wait", "cli-stop-plain").stdout == "137\n"
        # under --init, tini passes SIGTERM on to sleep, which dies of it (143)
        assert hcsoci("stop", "-t", "60", "cli-stop-init").stdout == "cli-stop-init\n"
        assert hcsoci("wait", "cli-stop-init").stdout == "143\n"
        # a stopped container: stop is a no-op, as docker's
        assert hcsoci("stop", "cli-stop-init").returncode == 0
    finally:
        hcsoci("delete", "-f", "cli-stop-plain", check=False)
        hcsoci("delete", "-f", "cli-stop-init", check=False)


def test_create_then_start_runs_under_the_monitor(hcsoci: CLI) -> None:
    name = "cli-created"
    assert hcsoci("create", "--name", name, "busybox", "sh", "-c", "echo made; exit 2").stdout == (
        f"{name}\n"
    )
    try:
        assert any(
            "Created" in line for line in hcsoci("ps", "-a").stdout.splitlines() if name in line
        )
        hcsoci("start", name)
        assert hcsoci("wait", name).stdout == "2\n"
        assert hcsoci("logs", name).stdout == "made\n"
    finally:
        hcsoci("delete", name)


def test_a_terminal_through_a_pty(hcsoci: CLI, session_image_store: images.ImageStore) -> None:
    # `script` gives the command a real terminal; -it is then a real tty in the container
    env = {**os.environ, "HCSOCI_IMAGES": str(session_image_store.root)}
    command = f"{sys.executable} -m hcsoci.cli.main run --rm -it busybox sh -c 'tty; exit 5'"
    done = subprocess.run(
        ["script", "-qec", command, "/dev/null"],
        env=env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert done.returncode == 5
    assert "/dev/pts/" in done.stdout


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_a_published_port_is_reached_on_loopback(lab: HnsLab, hcsoci: CLI) -> None:
    network = lab.network("nat")
    port = _free_port()
    name = f"cli-web-{lab.token}"
    hcsoci("run", "-d", "--name", name, "--network", network.name, "-p", f"127.0.0.1:{port}:80",
           "--hostname", "web1", "busybox", "httpd", "-f", "-p", "80", "-h", "/etc")  # fmt: skip
    try:
        body = b""
        for _ in range(50):  # httpd binds a moment after the init started
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{port}/hostname", timeout=5).read()
                break
            except OSError:
                subprocess.run(["sleep", "0.1"], check=True)
        assert body == b"web1\n"  # /etc/hostname, served from inside the container
        # the same host port again: refused, and nothing of the second container is left
        again = hcsoci("run", "--rm", "--network", network.name, "-p", f"127.0.0.1:{port}:80",
                       "busybox", "true", check=False)  # fmt: skip
        assert again.returncode == 125
        assert again.stderr == (
            f"hcsoci: --publish: '127.0.0.1:{port}:80': host port {port}/tcp is already published\n"
        )
    finally:
        hcsoci("stop", "-t", "0", name, check=False)
        hcsoci("delete", "-f", name, check=False)
    table = firewall.table_name(network.bridge)
    gone = subprocess.run(["nft", "get", "element", "ip", table, "tcp_addr",
                           f"{{ 127.0.0.1 . {port} }}"], capture_output=True)  # fmt: skip
    assert gone.returncode != 0  # the forward went with the container
    endpoints = json.loads(hcsoci("endpoint", "list", "--json").stdout)
    assert [e for e in endpoints if e["virtual_network_name"] == network.name] == []


def test_a_host_port_in_use_is_refused(lab: HnsLab, hcsoci: CLI) -> None:
    network = lab.network("nat")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        result = hcsoci("run", "--rm", "--network", network.name, "-p", f"127.0.0.1:{port}:80",
                        "busybox", "true", check=False)  # fmt: skip
    assert result.returncode == 125
    assert result.stderr == (
        f"hcsoci: --publish: '127.0.0.1:{port}:80': host port {port}/tcp is already in use\n"
    )
    endpoints = json.loads(hcsoci("endpoint", "list", "--json").stdout)
    assert [e for e in endpoints if e["virtual_network_name"] == network.name] == []


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["-v", "/nonexistent-src:/x"], "--volume: '/nonexistent-src:/x': the source"),
        (["-v", "relative:/x"], "--volume: 'relative:/x'"),
        (["-v", "/tmp:/x:rx"], "--volume: '/tmp:/x:rx'"),
        (["--mount", "type=volume,target=/x"], "--mount: 'type=volume,target=/x'"),
        (["--mount", "type=bind,target=/x"], "--mount: 'type=bind,target=/x' needs source="),
        (["--tmpfs", "rel"], "--tmpfs: 'rel'"),
        (["--memory", "1x"], "--memory: '1x' is not a size"),
        (["--cpus", "-1"], "--cpus: '-1' must be a positive"),
        (["--cpus", "1000"], "--cpus: '1000' is more than"),
        (["--pids-limit", "zero"], "--pids-limit: 'zero'"),
        (["-u", "no-such-user"], "--user: user 'no-such-user'"),
        (["--env-file", "/nonexistent-env"], "--env-file: '/nonexistent-env' does not exist"),
        (["-e", "=x"], "--env: '=x'"),
        (["--cap-add", "CAP_NOPE"], "--cap-add: 'CAP_NOPE' is not a capability"),
        (["--dns", "not-an-ip"], "--dns: 'not-an-ip' is not an IP address"),
        (["-p", "80"], "--publish: '80' is not"),
        (["-p", "8080:80"], "--publish: '8080:80' needs --network"),
        (["--hostname", "a/b"], "--hostname: 'a/b'"),
        (["--name", "bad/id"], "--name"),
    ],
)
def test_a_bad_flag_is_one_line_exit_125_and_leaves_nothing(
    hcsoci: CLI, flags: list[str], message: str
) -> None:
    before = _scratch_entries()
    result = hcsoci("run", "--rm", *flags, "busybox", "true", check=False)
    assert result.returncode == 125, result.stderr
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    created = hcsoci("create", *flags, "busybox", "true", check=False)
    assert created.returncode == 125 and message in created.stderr
    assert _scratch_entries() == before
    assert hcsoci("ps", "-a", "-q").stdout == ""


def test_detach_refuses_what_it_cannot_do(hcsoci: CLI) -> None:
    for flags in (["-i"], ["-t"], ["--rm"]):
        result = hcsoci("run", "-d", *flags, "busybox", "true", check=False)
        assert result.returncode == 125 and "-d: not with" in result.stderr
    assert hcsoci("ps", "-a", "-q").stdout == ""


def test_lifecycle_commands_name_an_unknown_container(hcsoci: CLI) -> None:
    for command in (["logs"], ["wait"], ["stop"], ["ps"]):
        result = hcsoci(*command, "no-such-container", check=False)
        assert result.returncode == 1 and "no-such-container" in result.stderr, command
