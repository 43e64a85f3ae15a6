"""The `hcsoci` container commands, run as a user runs them: a real process per command."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Callable

from fixtures_hns import free_subnet


def test_run_passes_output_and_exit_status(
    hcsoci: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    result = hcsoci("run", "--rm", "-e", "WHO=you", "-w", "/tmp", "--", "sh", "-c",
                    'echo "hi $WHO in $(pwd)"; exit 7', check=False)  # fmt: skip
    assert (result.returncode, result.stdout) == (7, "hi you in /tmp\n")


def test_create_start_exec_list_delete(
    hcsoci: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    name = f"cli-{uuid.uuid4().hex[:8]}"
    assert hcsoci("create", "--name", name, "--", "sleep", "600").stdout == f"{name}\n"
    try:
        states = {c["id"]: c["state"] for c in json.loads(hcsoci("list", "--json").stdout)}
        assert states[name] == "created"
        hcsoci("start", name)
        assert hcsoci("exec", name, "--", "cat", "/etc/hostname").returncode == 0
        failed = hcsoci("exec", name, "--", "sh", "-c", "exit 4", check=False)
        assert failed.returncode == 4
        assert "sleep 600" in hcsoci("ps", name).stdout
        assert json.loads(hcsoci("state", name).stdout)["state"] == "running"
    finally:
        hcsoci("delete", "-f", name)
    assert name not in hcsoci("list", "--json").stdout
    unknown = hcsoci("exec", name, "--", "true", check=False)
    assert unknown.returncode != 0 and name in unknown.stderr


def test_run_on_a_network_gets_an_address_and_leaves_no_endpoint(
    hcsoci: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    network = f"cli{uuid.uuid4().hex[:6]}"
    hcsoci("network", "create", network, "--subnet", free_subnet())
    try:
        result = hcsoci("run", "--rm", "--network", network, "--", "ip", "-4", "-o", "addr",
                        "show", "eth0")  # fmt: skip
        assert " inet " in result.stdout
        endpoints = json.loads(hcsoci("endpoint", "list", "--json").stdout)
        assert [e for e in endpoints if e["virtual_network_name"] == network] == []
        unknown = hcsoci("run", "--rm", "--network", f"{network}-nope", "--", "true", check=False)
        assert unknown.returncode == 125  # docker run: an error of its own
        assert f"--network: network '{network}-nope' not found" in unknown.stderr
    finally:
        hcsoci("network", "rm", network)
