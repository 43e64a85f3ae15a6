"""Benchmark hcsoci.hns against the same steps done with ``ip`` commands.

1. Endpoint cycle: create + add to a namespace + remove + delete, through
   ``hcsoci.hns`` (netlink, state store) versus ``ip`` commands producing the
   same kernel state after each step.  ``hcsoci.hns`` creates an endpoint's
   veth pair when it is first added, with the peer born inside the namespace;
   the ``ip`` baseline does the same (``ip link add ... master BR up type veth
   peer name eth0 address MAC netns NS``), then address, up, ``lo`` up,
   default route; moves it out renamed back; deletes it.  A second ``ip``
   column is the textbook sequence (pair made at create and moved in), which
   costs the kernel one more namespace move.  A raw-netlink column (the same
   kernel steps as hcsoci, one pyroute2 connection per namespace, no state)
   is the kernel's own floor.  Rounds are interleaved; medians are printed,
   and how many RCU-barrier waits each cycle implies.
2. Throughput between two namespaces wired by hcsoci (endpoints on a network:
   the data path a container gets) versus two namespaces wired by hand with
   ``ip`` (bridge + veth pairs), a TCP stream between Python processes on
   addresses inside those namespaces only.  Rounds are interleaved.
3. Throughput between two real containers (``hcsoci.create_container`` on the
   default busybox image, runc, one hns endpoint each) versus two namespaces
   wired by hand with ``ip`` (bridge + veth pairs) running the same busybox
   binary through ``nsenter --net``.  The receiver is ``nc -l`` (its stdin a
   FIFO opened read-write, so it never sees EOF there and never half-closes
   early), the sender ``dd if=/dev/zero | nc``, timed inside the sender by
   ``adjtimex`` (microseconds) before and after the pipeline.  Both sides run
   the very same script text; rounds alternate which side goes first.

Run: ``.venv/bin/python -m bench.bench_hns [--rounds N] [--megabytes M]
[--container-rounds N] [--container-megabytes M] [--only cycle|stream|containers]``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

from pyroute2 import IPRoute

from hcsoci import (
    CreateOptions,
    Resources,
    context,
    create_container,
    hns,
    images,
    oci,
    release_resources,
)
from hcsoci.cmd import Cmd, command
from hcsoci.container import Container
from hcsoci.errors import HcsociError
from hcsoci.hns import netlink

SUBNET = "10.201.250.0/24"
HAND_SUBNET = "10.201.251"


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def timed(action: Callable[..., object], *args: object) -> float:
    start = time.perf_counter()
    action(*args)
    return time.perf_counter() - start


# --- 1. endpoint cycle ---


def hns_cycle(network: hns.Network, namespace: str) -> None:
    endpoint = hns.create_endpoint(network.id)
    hns.add_namespace_endpoint(namespace, endpoint.id)
    hns.remove_namespace_endpoint(namespace, endpoint.id)
    hns.delete_endpoint(endpoint.id)


def ip_cycle(bridge: str, netns_name: str, gateway: str, n: int) -> None:
    """The hcsoci steps with ``ip``: nothing at create, the pair born into the namespace."""
    host, peer, mac = f"bh{n % 100000}", f"bp{n % 100000}", "02:00:00:aa:bb:cc"
    # create: a record in hcsoci; nothing for ip to do.
    # add:
    ip("link", "add", host, "master", bridge, "up", "type", "veth",
       "peer", "name", "eth0", "address", mac, "netns", netns_name)  # fmt: skip
    ip("-n", netns_name, "addr", "add", "10.201.250.200/24", "dev", "eth0")
    ip("-n", netns_name, "link", "set", "eth0", "up")
    ip("-n", netns_name, "link", "set", "lo", "up")
    ip("-n", netns_name, "route", "add", "default", "via", gateway)
    # remove (the move drops the address and takes the link down):
    ip("-n", netns_name, "link", "set", "eth0", "netns", str(os.getpid()), "name", peer)
    # delete:
    ip("link", "del", host)


def ip_textbook_cycle(bridge: str, netns_name: str, gateway: str, n: int) -> None:
    """The usual ``ip`` recipe: the pair made on the bridge at create, then moved in."""
    host, peer, mac = f"bt{n % 100000}", f"bq{n % 100000}", "02:00:00:aa:bb:cd"
    ip("link", "add", host, "master", bridge, "up", "type", "veth",
       "peer", "name", peer, "address", mac)  # fmt: skip
    ip("link", "set", peer, "netns", netns_name, "name", "eth0")
    ip("-n", netns_name, "addr", "add", "10.201.250.201/24", "dev", "eth0")
    ip("-n", netns_name, "link", "set", "eth0", "up")
    ip("-n", netns_name, "link", "set", "lo", "up")
    ip("-n", netns_name, "route", "add", "default", "via", gateway)
    ip("-n", netns_name, "link", "set", "eth0", "netns", str(os.getpid()), "name", peer)
    ip("link", "del", host)


def raw_cycle(bridge: str, netns_path: str, gateway: str, n: int) -> None:
    """hcsoci's kernel steps with one pyroute2 connection per namespace and no state."""
    host, peer = f"bh{n % 100000}", f"bp{n % 100000}"
    fd = os.open(netns_path, os.O_RDONLY)
    try:
        with IPRoute() as ipr:
            ipr.link(
                "add",
                ifname=host,
                kind="veth",
                master=ipr.link_lookup(ifname=bridge)[0],
                state="up",
                peer={"ifname": "eth0", "address": "02:00:00:aa:bb:ce", "net_ns_fd": fd},
            )
    finally:
        os.close(fd)
    own = os.open("/proc/self/ns/net", os.O_RDONLY)
    try:
        with netlink.netns_route(netns_path) as ns:
            index = ns.link_lookup(ifname="eth0")[0]
            ns.addr("add", index=index, address="10.201.250.202", prefixlen=24)
            ns.link("set", index=index, state="up")
            ns.link("set", index=netlink.LOOPBACK_INDEX, state="up")
            ns.route("add", dst="0.0.0.0/0", gateway=gateway)
            ns.link("set", index=index, net_ns_fd=own, ifname=peer)
    finally:
        os.close(own)
    with IPRoute() as ipr:
        ipr.link("del", ifname=host)


CYCLES: dict[str, str] = {
    "hns": "hcsoci.hns",
    "ip": "ip, same steps",
    "textbook": "ip, textbook",
    "raw": "raw netlink",
}
BARRIERS = {"hns": 2, "ip": 2, "textbook": 3, "raw": 2}
"""RCU-barrier waits per cycle: each namespace move and each veth deletion waits for one."""


def bench_cycle(rounds: int) -> None:
    network = hns.create_network(f"bench-{secrets.token_hex(3)}", SUBNET)
    namespace = hns.create_namespace()
    plain_ns = f"bench{secrets.token_hex(3)}"
    ip("netns", "add", plain_ns)
    times: dict[str, list[float]] = {key: [] for key in CYCLES}
    cpu: dict[str, list[float]] = {key: [] for key in CYCLES}
    try:
        path = f"/var/run/netns/{plain_ns}"
        cycles: dict[str, Callable[[int], object]] = {
            "hns": lambda n: hns_cycle(network, namespace),
            "ip": lambda n: ip_cycle(network.bridge, plain_ns, network.gateway, n),
            "textbook": lambda n: ip_textbook_cycle(network.bridge, plain_ns, network.gateway, n),
            "raw": lambda n: raw_cycle(network.bridge, path, network.gateway, n),
        }
        for n in range(rounds):
            for key, cycle in cycles.items():
                before = _cpu_seconds()
                times[key].append(timed(cycle, n))
                cpu[key].append(_cpu_seconds() - before)
    finally:
        subprocess.run(["ip", "netns", "del", plain_ns], check=False)
        hns.remove_namespace(namespace)
        hns.delete_network(network.id)
    med = {k: statistics.median(v) * 1000 for k, v in times.items()}
    med_cpu = {k: statistics.median(v) * 1000 for k, v in cpu.items()}
    print(f"endpoint create+attach+detach+delete, {rounds} interleaved rounds (median ms):")
    print(f"  {'':16s} {'wall':>8s} {'cpu':>8s}  barriers")
    for key, label in CYCLES.items():
        print(f"  {label:16s} {med[key]:8.2f} {med_cpu[key]:8.2f}  {BARRIERS[key]}")
    print(f"  ratio ip (same steps) / hns  {med['ip'] / med['hns']:6.2f}x")
    print(f"  ratio ip (textbook)   / hns  {med['textbook'] / med['hns']:6.2f}x")
    print(f"  ratio hns / raw netlink      {med['hns'] / med['raw']:6.2f}x (target <= 1.10x)")
    overhead_hns = med["hns"] - med["raw"]
    overhead_ip = med["ip"] - med["raw"]
    print(f"  above the kernel floor (raw): hns {overhead_hns:+.2f} ms, ip {overhead_ip:+.2f} ms")


def _cpu_seconds() -> float:
    """CPU time of this process and its waited-for children (the ip processes)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


# --- 2. throughput ---

RECEIVER = """
import socket, sys, time
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind((sys.argv[1], 5001)); server.listen(1)
print("ready", flush=True)
conn, _ = server.accept()
total, start, buf = 0, None, bytearray(1 << 20)
while True:
    n = conn.recv_into(buf)
    if start is None: start = time.perf_counter()
    if not n: break
    total += n
print(total / (time.perf_counter() - start) / 1e6, flush=True)
"""

SENDER = """
import socket, sys
data = b"x" * (1 << 20)
sock = socket.create_connection((sys.argv[1], 5001))
for _ in range(int(sys.argv[2])): sock.sendall(data)
sock.close()
"""


def stream(server_ns: str, client_ns: str, address: str, megabytes: int) -> float:
    receiver = subprocess.Popen(
        ["nsenter", f"--net={server_ns}", sys.executable, "-c", RECEIVER, address],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert receiver.stdout is not None
        assert receiver.stdout.readline().strip() == "ready"
        subprocess.run(
            ["nsenter", f"--net={client_ns}", sys.executable, "-c", SENDER, address,
             str(megabytes)],
            check=True,
        )  # fmt: skip
        return float(receiver.stdout.readline())
    finally:
        receiver.kill()
        receiver.wait()


def bench_throughput(rounds: int, megabytes: int) -> None:
    token = secrets.token_hex(2)
    network = hns.create_network(f"bench-tp-{token}", SUBNET)
    server_ep, client_ep = hns.create_endpoint(network.id), hns.create_endpoint(network.id)
    server_ns, client_ns = hns.create_namespace(), hns.create_namespace()
    hns.add_namespace_endpoint(server_ns, server_ep.id)
    hns.add_namespace_endpoint(client_ns, client_ep.id)
    bridge, hand = f"bhb{token}", [f"bha{token}", f"bhc{token}"]
    try:
        ip("link", "add", bridge, "type", "bridge")
        ip("link", "set", bridge, "up")
        for n, name in enumerate(hand, start=2):
            ip("netns", "add", name)
            ip("link", "add", f"{name}h", "type", "veth", "peer", "name", "eth0", "netns", name)
            ip("link", "set", f"{name}h", "master", bridge, "up")
            ip("-n", name, "addr", "add", f"{HAND_SUBNET}.{n}/24", "dev", "eth0")
            ip("-n", name, "link", "set", "eth0", "up")
            ip("-n", name, "link", "set", "lo", "up")
        results: dict[str, list[float]] = {"hns": [], "hand": []}
        for _ in range(rounds):
            results["hns"].append(
                stream(hns.namespace_path(server_ns), hns.namespace_path(client_ns),
                       server_ep.ip_address, megabytes)
            )  # fmt: skip
            results["hand"].append(
                stream(f"/var/run/netns/{hand[0]}", f"/var/run/netns/{hand[1]}",
                       f"{HAND_SUBNET}.2", megabytes)
            )  # fmt: skip
    finally:
        for name in hand:
            subprocess.run(["ip", "netns", "del", name], check=False)
        subprocess.run(["ip", "link", "del", bridge], check=False, capture_output=True)
        hns.remove_namespace(server_ns)
        hns.remove_namespace(client_ns)
        hns.delete_endpoint(server_ep.id)
        hns.delete_endpoint(client_ep.id)
        hns.delete_network(network.id)
    med = {k: statistics.median(v) for k, v in results.items()}
    print(
        f"TCP stream namespace to namespace, {megabytes} MB x {rounds} interleaved (median MB/s):"
    )
    print(f"  hcsoci endpoints {med['hns']:9.0f}")
    print(f"  wired by hand    {med['hand']:9.0f}")
    print(f"  ratio hns / hand {med['hns'] / med['hand']:9.2f}x")


# --- 3. throughput container to container ---

CONTAINER_SUBNET = "10.232.1.0/24"
CONTAINER_HAND_SUBNET = "10.232.2"
PORT = 5001
BUSYBOX = images.default.BUSYBOX
"""The busybox binary: the default image's ``/bin/busybox`` is a copy of it."""

RECEIVE = (
    "mkdir -p {dir} && rm -f {dir}/hold && busybox mkfifo {dir}/hold && "
    "exec busybox nc -l -p {port} <>{dir}/hold >/dev/null"
)
"""``nc -l``: stdin a FIFO nobody writes (no early half-close), stdout discarded."""

SEND = (
    "set -o pipefail; busybox adjtimex && "
    "busybox dd if=/dev/zero bs=65536 count={blocks} 2>/dev/null | "
    "busybox nc {address} {port} && busybox adjtimex"
)
"""``dd | nc`` between two ``adjtimex`` readings (time.tv_sec / time.tv_usec)."""


def _adjtimex_seconds(output: str) -> list[float]:
    """The wall-clock readings of each ``adjtimex`` report in ``output``."""
    values = dict.fromkeys(("time.tv_sec", "time.tv_usec"), 0)
    readings: list[float] = []
    for line in output.splitlines():
        key, _, value = line.strip().partition(":")
        if key in values:
            values[key] = int(value)
            if key == "time.tv_usec":
                readings.append(values["time.tv_sec"] + values["time.tv_usec"] / 1e6)
    return readings


def _megabytes_per_second(output: str, blocks: int) -> float:
    readings = _adjtimex_seconds(output)
    if len(readings) != 2:
        raise RuntimeError(f"sender: expected two adjtimex reports, got {output!r}")
    return blocks * 65536 / (readings[1] - readings[0]) / 1e6


def _await_listening(pid: int, exited: Callable[[], bool]) -> None:
    """Wait until ``pid``'s network namespace has a socket listening on :data:`PORT`."""
    port = f":{PORT:04X}"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for table_name in ("tcp6", "tcp"):  # busybox nc -l binds [::] (dual stack)
            with (
                contextlib.suppress(FileNotFoundError, ProcessLookupError),
                open(f"/proc/{pid}/net/{table_name}", encoding="ascii") as table,
            ):
                for line in table.readlines()[1:]:
                    fields = line.split()
                    if fields[1].endswith(port) and fields[3] == "0A":
                        return
        if exited():
            raise RuntimeError(f"receiver {pid} exited before listening")
        time.sleep(0.005)
    raise RuntimeError(f"receiver {pid}: nothing listening on port {PORT} after 10 s")


class ContainerPair:
    """Two busybox containers, each with one endpoint on one hns network."""

    def __init__(self, workdir: str) -> None:
        self.ctx = context.background()
        self.workdir = workdir
        self.network: hns.Network | None = None
        self.endpoints: list[hns.Endpoint] = []
        self.made: list[tuple[Container, Resources]] = []

    def __enter__(self) -> ContainerPair:
        try:
            self._create()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _create(self) -> None:
        image = images.ensure_default_image()
        self.network = hns.create_network(f"bench-c2c-{secrets.token_hex(2)}", CONTAINER_SUBNET)
        for _ in range(2):
            endpoint = hns.create_endpoint(self.network.id)
            self.endpoints.append(endpoint)
            spec = images.spec_for_image(image, ["sleep", "3600"])
            assert spec.windows is not None and spec.windows.layer_folders is not None
            scratch = tempfile.mkdtemp(prefix="scratch-", dir=self.workdir)
            spec.windows.layer_folders = [*spec.windows.layer_folders, scratch]
            spec.windows.network = oci.WindowsNetwork(endpoint_list=[endpoint.id])
            container, resources = create_container(self.ctx, CreateOptions(spec=spec))
            assert isinstance(container, Container)
            self.made.append((container, resources))
            container.start(self.ctx)

    @property
    def server(self) -> Container:
        return self.made[0][0]

    @property
    def client(self) -> Container:
        return self.made[1][0]

    @property
    def server_address(self) -> str:
        return self.endpoints[0].ip_address

    def close(self) -> None:
        """Stop and release both containers, then the endpoints and the network."""
        try:
            while self.made:
                container, resources = self.made.pop()
                with contextlib.suppress(HcsociError):
                    container.terminate(self.ctx)
                    container.wait()
                container.close()
                release_resources(self.ctx, resources)
        finally:
            try:
                while self.endpoints:
                    hns.delete_endpoint(self.endpoints.pop().id)
            finally:
                if self.network is not None:
                    network, self.network = self.network, None
                    hns.delete_network(network.id)


def _exited(cmd: Cmd) -> bool:
    assert cmd.process is not None
    try:
        cmd.process.exit_code()
    except HcsociError:
        return False
    return True


def container_stream(pair: ContainerPair, blocks: int) -> float:
    receiver = command(
        pair.server, "/bin/busybox", "sh", "-c", RECEIVE.format(dir="/tmp/bench", port=PORT)
    )
    receiver.start()
    try:
        assert receiver.process is not None
        _await_listening(receiver.process.pid(), lambda: _exited(receiver))
        script = SEND.format(blocks=blocks, address=pair.server_address, port=PORT)
        output = command(pair.client, "/bin/busybox", "sh", "-c", script).output()
        receiver.wait()
    except BaseException:
        if receiver.process is not None:
            receiver.process.kill(context.background())
        with contextlib.suppress(HcsociError):
            receiver.wait()
        raise
    return _megabytes_per_second(output.decode(), blocks)


def hand_stream(server_ns: str, client_ns: str, address: str, hold_dir: str, blocks: int) -> float:
    receive = RECEIVE.format(dir=hold_dir, port=PORT)
    receiver = subprocess.Popen(["nsenter", f"--net={server_ns}", BUSYBOX, "sh", "-c", receive])
    try:
        _await_listening(receiver.pid, lambda: receiver.poll() is not None)
        script = SEND.format(blocks=blocks, address=address, port=PORT)
        sender = subprocess.run(
            ["nsenter", f"--net={client_ns}", BUSYBOX, "sh", "-c", script],
            check=True,
            capture_output=True,
            text=True,
        )
        if receiver.wait(timeout=30) != 0:
            raise RuntimeError(f"receiver exited with {receiver.returncode}")
    finally:
        if receiver.poll() is None:
            receiver.kill()
            receiver.wait()
    return _megabytes_per_second(sender.stdout, blocks)


def bench_container_throughput(rounds: int, megabytes: int, workdir: str) -> None:
    blocks = megabytes * 16  # 64 KiB blocks
    token = secrets.token_hex(2)
    bridge, hand = f"bcb{token}", [f"bcs{token}", f"bcc{token}"]
    hold_dir = tempfile.mkdtemp(prefix="hold-", dir=workdir)
    results: dict[str, list[float]] = {"containers": [], "hand": []}
    try:
        ip("link", "add", bridge, "type", "bridge")
        ip("link", "set", bridge, "up")
        for n, name in enumerate(hand, start=2):
            ip("netns", "add", name)
            ip("link", "add", f"{name}h", "type", "veth", "peer", "name", "eth0", "netns", name)
            ip("link", "set", f"{name}h", "master", bridge, "up")
            ip("-n", name, "addr", "add", f"{CONTAINER_HAND_SUBNET}.{n}/24", "dev", "eth0")
            ip("-n", name, "link", "set", "eth0", "up")
            ip("-n", name, "link", "set", "lo", "up")
        with ContainerPair(workdir) as pair:
            runs: dict[str, Callable[[], float]] = {
                "containers": lambda: container_stream(pair, blocks),
                "hand": lambda: hand_stream(
                    f"/var/run/netns/{hand[0]}",
                    f"/var/run/netns/{hand[1]}",
                    f"{CONTAINER_HAND_SUBNET}.2",
                    hold_dir,
                    blocks,
                ),
            }
            for n in range(rounds):
                order = ["containers", "hand"] if n % 2 == 0 else ["hand", "containers"]
                for key in order:
                    results[key].append(runs[key]())
    finally:
        for name in hand:
            subprocess.run(["ip", "netns", "del", name], check=False)
        subprocess.run(["ip", "link", "del", bridge], check=False, capture_output=True)
    med = {k: statistics.median(v) for k, v in results.items()}
    print(
        f"busybox nc stream container to container, {megabytes} MB x {rounds} "
        "alternating rounds (median MB/s):"
    )
    for key, label in (("containers", "runc containers"), ("hand", "wired by hand")):
        each = " ".join(f"{v:.0f}" for v in results[key])
        print(f"  {label:16s} {med[key]:9.0f}   ({each})")
    print(f"  ratio containers / hand {med['containers'] / med['hand']:6.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--stream-rounds", type=int, default=5)
    parser.add_argument("--megabytes", type=int, default=1024)
    parser.add_argument("--container-rounds", type=int, default=8)
    parser.add_argument("--container-megabytes", type=int, default=128)
    parser.add_argument("--only", choices=("cycle", "stream", "containers"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hcsoci-bench-", dir="/run") as root:
        os.environ.setdefault("HCSOCI_ROOT", root)
        if args.only in (None, "cycle"):
            bench_cycle(args.rounds)
        if args.only in (None, "stream"):
            bench_throughput(args.stream_rounds, args.megabytes)
        if args.only in (None, "containers"):
            bench_container_throughput(args.container_rounds, args.container_megabytes, root)


if __name__ == "__main__":
    main()
