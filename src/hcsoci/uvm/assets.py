"""Boot assets of the utility VM: a kernel and an initramfs, built once and cached.

The kernel is Debian's ``linux-image-amd64`` (it has 9p, virtio-serial,
virtio-scsi, virtio-net and overlayfs as modules).  The initramfs holds
``busybox-static``, the modules needed to build the guest root (inserted in
the dependency order read from ``modules.dep``), the init scripts, and the
*guest root* (``/seed``): a small, complete root file system of its own.  It
has busybox and its applets, the host's ``runc`` and ``ip`` with their shared
libraries (``ldd``), the Python interpreter with just the standard-library
files the guest agent imports, the agent itself (with its bytecode), the
device modules the agent inserts on first use, and a minimal ``/etc``.  The
guest boots from it alone: nothing of the host's file tree is shared with the
guest unless a caller adds it (Plan9 shares, SCSI disks).

Assets live in ``$HCSOCI_ASSETS`` (default ``/var/lib/hcsoci/uvm``) under a
directory named by a hash of every input (each file's path, size and mtime:
kernel, modules, busybox, runc, ip, the interpreter, every library and the
agent's sources), so they are rebuilt only when an input changes.
:func:`load_assets` refuses stale assets with a message that says how to
rebuild them.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from hcsoci.errors import HcsociError, NotFoundError
from hcsoci.paths import make_private_dir, remove_tree, write_private_file

__all__ = [
    "BUILDER_VERSION",
    "DEFAULT_ASSETS_DIR",
    "GUEST_BOOT_MODULES",
    "BootAssets",
    "assets_dir",
    "GUEST_AGENT",
    "GUEST_BINARIES",
    "build_assets",
    "find_kernel",
    "guest_binaries",
    "load_assets",
    "module_load_order",
]

log = logging.getLogger(__name__)

DEFAULT_ASSETS_DIR = "/var/lib/hcsoci/uvm"
BUILDER_VERSION = 11
"""Bump when the initramfs layout or the init scripts change."""

GUEST_BOOT_MODULES = ("virtio_pci", "virtio_console", "9pnet_virtio", "9p", "overlay")
"""Modules inserted by the initramfs at boot (the guest root's overlay, the bridge, Plan9)."""

GUEST_DEVICE_MODULES = ("virtio_scsi", "sd_mod", "crc32c_generic", "ext4", "virtio_net")
"""Modules the agent inserts on first use (from ``/.hcsoci/modules``), in order.

They are not loaded at boot (that would slow every boot down); the guest
has no ``/lib/modules`` indexes, so they are inserted by file name."""

GUEST_PMEM_MODULES = ("virtio_pmem", "nd_pmem")
"""Modules the agent inserts on a first vPMEM device (``/.hcsoci/modules/order-pmem``),
after :data:`GUEST_DEVICE_MODULES` (ext4)."""

GUEST_BINARIES = ("runc", "ip")
"""Host programs copied into the guest root with their shared libraries.

``runc`` runs the containers (linked with libseccomp: their seccomp filters
work); iproute2's ``ip`` makes network namespaces (busybox ``ip`` has no
``netns``).  Everything else the agent and the container flow run in the
guest (``mount``, ``umount``, ``insmod``, ``sh``, ``mkdir``...) is busybox."""

GUEST_AGENT_DIR = "/.hcsoci/gcs"
GUEST_AGENT = GUEST_AGENT_DIR + "/agent.py"
"""The guest agent's path in the guest root (``hcsoci.agent=`` on the kernel command line)."""

TRIVIAL_INIT_MARKER = "hcsoci-trivial-init-reached"

_STAGE1 = r"""#!/bin/busybox sh
# hcsoci utility VM, stage 1 (initramfs): load the boot modules, build the
# guest root (a tmpfs overlay over this initramfs's /seed, the guest's own
# root file system), then switch to it.
B=/bin/busybox
$B mount -t proc proc /proc
$B mount -t sysfs sysfs /sys
$B mount -t devtmpfs devtmpfs /dev
echo "hcsoci-init: userspace at $($B cut -d' ' -f1 /proc/uptime) s"
for m in $($B cat /modules.order); do
    $B insmod "/lib/modules/$m" || echo "hcsoci-init: insmod $m failed"
done
for arg in $($B cat /proc/cmdline); do
    case "$arg" in
        hcsoci.python=*) PY="${arg#*=}" ;;
        hcsoci.agent=*) AGENT="${arg#*=}" ;;
    esac
done
fail() { echo "hcsoci-init: $*"; $B poweroff -f; }
$B mkdir -p /mnt/rw /newroot
$B mount -t tmpfs -o mode=0755 tmpfs /mnt/rw
$B mkdir -p /mnt/rw/upper /mnt/rw/work
# The seed is the only lower layer: nothing is copied, writes go to the tmpfs.
$B mount -t overlay overlay \
    -o lowerdir=/seed,upperdir=/mnt/rw/upper,workdir=/mnt/rw/work /newroot \
    || fail "cannot mount the guest root overlay"
echo "hcsoci-init: guest root ready at $($B cut -d' ' -f1 /proc/uptime) s"
for d in proc sys dev; do $B mount --move "/$d" "/newroot/$d"; done
# switch_root without its cleanup: the initramfs must stay, it holds the seed.
cd /newroot
$B mount --move . /
exec $B chroot . /.hcsoci/busybox sh /.hcsoci/stage2 "$PY" "$AGENT"
"""

_STAGE2 = r"""# hcsoci utility VM, stage 2 (PID 1 in the guest root): private /run and
# /tmp, pseudo-terminals, cgroups, then the guest agent.  PID 1 outlives the
# agent so that an agent crash leaves a VM the host can still terminate.
B=/.hcsoci/busybox
PY="$1"
AGENT="$2"
DIR="${AGENT%/*}"
MODULE="${AGENT##*/}"
MODULE="${MODULE%.py}"
$B mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run
$B mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /tmp
$B mkdir -p /dev/pts /dev/shm
$B mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts /dev/pts
$B ln -sf pts/ptmx /dev/ptmx 2>/dev/null
$B mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /dev/shm
$B mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null
$B hostname -F /etc/hostname
echo "hcsoci-stage2: starting the agent at $($B cut -d' ' -f1 /proc/uptime) s"
# Imported, not run as a script, so that its bytecode (built with the assets) is used.
"$PY" -S -I -B -c "import sys; sys.path.insert(0, '$DIR'); import $MODULE; $MODULE.main()"
echo "hcsoci-stage2: guest agent exited with status $?"
while true; do $B sleep 3600; done
"""

_TRIVIAL_INIT = f"""#!/bin/busybox sh
# The benchmark baseline and the accelerator probe: reach userspace, power off.
echo {TRIVIAL_INIT_MARKER}
/bin/busybox poweroff -f
"""

GUEST_HOSTNAME = "hcsoci-uvm"

_GUEST_ETC = {
    "etc/hostname": f"{GUEST_HOSTNAME}\n",
    "etc/hosts": f"127.0.0.1\tlocalhost {GUEST_HOSTNAME}\n::1\tlocalhost\n",
    "etc/passwd": "root:x:0:0:root:/root:/bin/sh\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    "etc/group": "root:x:0:\nnogroup:x:65534:\n",
}
"""The guest's own ``/etc``: no shadow file, no host names, no host accounts."""


@dataclass(frozen=True)
class BootAssets:
    """A built kernel + initramfs pair and what it was built from."""

    directory: Path
    kernel: Path
    initramfs: Path
    kernel_release: str
    python: str
    """The interpreter the guest runs the agent with (a path in the guest)."""
    key: str

    @property
    def trivial_init(self) -> str:
        """The ``rdinit=`` path of the trivial init (benchmark baseline, KVM probe)."""
        return "/trivial-init"


def assets_dir() -> Path:
    """The asset cache directory: ``$HCSOCI_ASSETS`` or ``/var/lib/hcsoci/uvm``."""
    return Path(os.environ.get("HCSOCI_ASSETS") or DEFAULT_ASSETS_DIR)


def find_kernel() -> tuple[Path, str]:
    """The newest installed kernel that has the 9p modules: (vmlinuz path, release)."""
    candidates: list[tuple[Path, str]] = []
    for vmlinuz in Path("/boot").glob("vmlinuz-*"):
        release = vmlinuz.name.removeprefix("vmlinuz-")
        if Path(f"/lib/modules/{release}/kernel/fs/9p").is_dir():
            candidates.append((vmlinuz, release))
    if not candidates:
        raise NotFoundError(
            "no kernel with 9p modules under /boot and /lib/modules: install Debian's "
            "linux-image-amd64 (make install)"
        )
    return max(candidates, key=lambda c: _version_key(c[1]))


def _version_key(release: str) -> list[int]:
    return [int(part) for part in re.findall(r"\d+", release)]


def module_load_order(release: str, names: tuple[str, ...]) -> list[Path]:
    """The module files of ``names`` and their dependencies, dependencies first.

    Read from ``modules.dep``; each line lists a module's dependencies in the
    order modprobe would unload them, so they are inserted in reverse.
    """
    base = Path(f"/lib/modules/{release}")
    deps: dict[str, list[str]] = {}
    by_name: dict[str, str] = {}
    for line in (base / "modules.dep").read_text().splitlines():
        module, _, rest = line.partition(":")
        deps[module] = rest.split()
        by_name[_module_name(module)] = module
    order: list[str] = []

    def visit(module: str, trail: tuple[str, ...]) -> None:
        if module in order:
            return
        if module in trail:
            raise HcsociError(f"modules.dep: dependency cycle through {module}")
        for dep in reversed(deps.get(module, [])):
            visit(dep, (*trail, module))
        order.append(module)

    for name in names:
        found = by_name.get(name)
        if found is None:
            builtin = base / "modules.builtin"
            if builtin.exists() and any(
                _module_name(line) == name for line in builtin.read_text().splitlines()
            ):
                continue
            raise NotFoundError(f"kernel {release}: module {name!r} not found in modules.dep")
        visit(found, ())
    return [base / module for module in order]


def _module_name(path: str) -> str:
    name = path.rsplit("/", 1)[-1]
    for suffix in (".xz", ".zst", ".gz"):
        name = name.removesuffix(suffix)
    return name.removesuffix(".ko").replace("-", "_")


def _read_module(path: Path) -> bytes:
    data = path.read_bytes()
    if path.name.endswith(".xz"):
        import lzma

        return lzma.decompress(data)
    if path.name.endswith(".gz"):
        return gzip.decompress(data)
    if path.name.endswith(".zst"):
        raise HcsociError(f"{path}: zstd-compressed modules are not supported")
    return data


def agent_path() -> Path:
    """The guest agent's source on the host (built into the guest root at ``GUEST_AGENT``)."""
    return Path(__file__).resolve().parent.parent / "gcs" / "agent.py"


def _agent_sources() -> list[Path]:
    gcs = agent_path().parent
    names = ("agent.py", "protocol.py", "runclog.py", "terminal.py", "users.py")
    return [gcs / name for name in names]


def _bytecode(source: Path, scratch: Path) -> bytes:
    """The timestamp-validated bytecode of ``source`` (as the guest's interpreter checks it)."""
    import py_compile

    cfile = scratch / (source.stem + ".pyc")
    py_compile.compile(
        str(source),
        cfile=str(cfile),
        doraise=True,
        invalidation_mode=py_compile.PycInvalidationMode.TIMESTAMP,
    )
    return cfile.read_bytes()


def agent_python() -> str:
    """The host interpreter the guest runs the agent with."""
    for candidate in ("/usr/bin/python3", sys.executable):
        if candidate and os.access(candidate, os.X_OK):
            return os.path.realpath(candidate)
    raise NotFoundError("no python3 interpreter on this host")


def _shared_libraries(binary: str) -> list[str]:
    """Every shared library ``binary`` loads (``ldd``: transitive), its loader included."""
    listing = subprocess.run(["ldd", binary], capture_output=True, text=True).stdout
    if "not found" in listing:
        missing = [line.split()[0] for line in listing.splitlines() if "not found" in line]
        raise NotFoundError(f"{binary}: shared libraries not found: {', '.join(missing)}")
    return sorted(set(re.findall(r"(/\S+) \(0x", listing)))


def _seed_files(python: str) -> list[str]:
    """The interpreter, its shared libraries and the stdlib files the agent imports."""
    listing = subprocess.run(
        [python, "-S", "-I", str(agent_path()), "--list-imported-files"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    files = {python, *listing}
    # The agent's own modules go in separately (GUEST_AGENT_DIR, with their bytecode).
    gcs_dir = str(agent_path().parent)
    return sorted(f for f in files if not f.startswith(gcs_dir) and os.path.isfile(f))


_STANDARD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def guest_binaries() -> list[str]:
    """The host paths of :data:`GUEST_BINARIES`; NotFoundError naming a missing one."""
    found = []
    for name in GUEST_BINARIES:
        path = shutil.which(name, path=_STANDARD_PATH)
        if path is None:
            package = {"ip": "iproute2"}.get(name, name)
            raise NotFoundError(f"{name} not found: install Debian's {package} (make install)")
        found.append(os.path.normpath(path))
    return found


GUEST_PYTHON_PREFIX = "/.hcsoci/py"
"""Where the seeded interpreter lives in the guest (its host path appended)."""

_MERGED_USR = ("bin", "sbin", "lib", "lib64")
"""Top-level directories that are symbolic links into ``/usr`` in the guest (merged /usr)."""


def _guest_path(host_path: str) -> str:
    """Where a host file goes in the guest root, relative (``/lib/x`` -> ``usr/lib/x``)."""
    relative = os.path.normpath(host_path).lstrip("/")
    if relative.split("/", 1)[0] in _MERGED_USR:
        relative = "usr/" + relative
    return relative


def _is_shared_library(path: str) -> bool:
    return ".so" in os.path.basename(path) and "/python3" not in path


def _busybox_applets(busybox: Path) -> list[str]:
    """The guest paths of busybox's applets (``busybox --list-full``), merged /usr."""
    listing = subprocess.run(
        [str(busybox), "--list-full"], capture_output=True, text=True, check=True
    ).stdout.split()
    return sorted(
        {
            _guest_path(entry)
            for entry in listing
            if entry.split("/", 1)[0] in ("bin", "sbin", "usr")
        }
    )


def _inputs(
    kernel: Path, modules: list[Path], busybox: Path, files: list[str]
) -> list[tuple[str, int, int]]:
    paths = [str(kernel), str(busybox), *(str(m) for m in modules), *files]
    return [(p, os.stat(p).st_size, os.stat(p).st_mtime_ns) for p in dict.fromkeys(paths)]


def _key(inputs: list[tuple[str, int, int]], compress: bool) -> str:
    digest = hashlib.sha256(f"v{BUILDER_VERSION} gzip={compress}\n".encode())
    digest.update(_STAGE1.encode() + _STAGE2.encode() + _TRIVIAL_INIT.encode())
    digest.update(json.dumps(_GUEST_ETC, sort_keys=True).encode())
    for path, size, mtime in inputs:
        digest.update(f"{path}\0{size}\0{mtime}\n".encode())
    return digest.hexdigest()[:16]


def build_assets(directory: Path | None = None, *, compress: bool = False) -> BootAssets:
    """Build (or find already built) boot assets for the current inputs.

    ``compress`` gzips the initramfs (smaller, but slower to unpack under TCG).
    """
    directory = directory or assets_dir()
    kernel, release = find_kernel()
    modules = module_load_order(release, GUEST_BOOT_MODULES)
    device_modules = [
        m
        for m in module_load_order(release, GUEST_BOOT_MODULES + GUEST_DEVICE_MODULES)
        if m not in modules
    ]
    everything = GUEST_BOOT_MODULES + GUEST_DEVICE_MODULES + GUEST_PMEM_MODULES
    pmem_modules = [
        m
        for m in module_load_order(release, everything)
        if m not in modules and m not in device_modules
    ]
    busybox = Path(shutil.which("busybox") or "/bin/busybox")
    if not busybox.exists():
        raise NotFoundError("busybox not found: install busybox-static (make install)")
    python = agent_python()
    seed = _seed_files(python)
    binaries = guest_binaries()
    libraries = sorted({lib for binary in (python, *binaries) for lib in _shared_libraries(binary)})
    agent_sources = [str(p) for p in _agent_sources()]
    inputs = _inputs(
        kernel,
        modules + device_modules + pmem_modules,
        busybox,
        seed + binaries + libraries + agent_sources,
    )
    key = _key(inputs, compress)
    target = directory / key
    manifest_path = target / "manifest.json"
    if manifest_path.exists():
        log.debug("boot assets up to date", extra={"directory": str(target)})
        return _assets_from_manifest(target)

    make_private_dir(directory)
    staging = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=directory))
    try:
        shutil.copyfile(kernel, staging / "vmlinuz")
        os.chmod(staging / "vmlinuz", 0o600)
        archive = _CpioWriter()
        # The initramfs itself: stage 1 and the boot modules.
        for name in ("proc", "sys", "dev", "mnt", "lib", "lib/modules", "bin"):
            archive.directory(name)
        archive.file("bin/busybox", busybox.read_bytes(), 0o755)
        archive.file("init", _STAGE1.encode(), 0o755)
        archive.file("trivial-init", _TRIVIAL_INIT.encode(), 0o755)
        order = []
        for module in modules:
            name = _module_name(module.name) + ".ko"
            archive.file(f"lib/modules/{name}", _read_module(module), 0o644)
            order.append(name)
        archive.file("modules.order", ("\n".join(order) + "\n").encode(), 0o644)
        with tempfile.TemporaryDirectory(prefix="hcsoci-pyc-") as scratch:
            groups = {"order": device_modules, "order-pmem": pmem_modules}
            _add_guest_root(archive, busybox, groups, seed, binaries, libraries, Path(scratch))
        data = archive.finish()
        if compress:
            data = gzip.compress(data, compresslevel=6)
        write_private_file(staging / "initrd.img", data)
        manifest = {
            "builder_version": BUILDER_VERSION,
            "kernel_release": release,
            "python": GUEST_PYTHON_PREFIX + python,
            "compress": compress,
            "inputs": inputs,
            "key": key,
        }
        write_private_file(staging / "manifest.json", json.dumps(manifest, indent=1).encode())
        try:
            staging.rename(target)
        except OSError:
            if not manifest_path.exists():  # not a concurrent builder winning the race
                raise
    finally:
        with contextlib.suppress(OSError, HcsociError):
            remove_tree(staging)
    log.info("built boot assets", extra={"directory": str(target)})
    _prune_stale(directory, keep=target)
    return _assets_from_manifest(target)


def _add_guest_root(
    archive: _CpioWriter,
    busybox: Path,
    device_modules: dict[str, list[Path]],
    seed: list[str],
    binaries: list[str],
    libraries: list[str],
    scratch: Path,
) -> None:
    """Write the guest's root file system under ``seed/`` (merged /usr, as Debian)."""
    root = "seed"
    for name in (
        "usr/bin",
        "usr/sbin",
        "usr/lib",
        "usr/lib64",
        "etc",
        "proc",
        "sys",
        "dev",
        "run",
        "mnt",
        "var",
    ):
        archive.path_parents(f"{root}/{name}")
    archive.directory(f"{root}/tmp", 0o1777)
    archive.directory(f"{root}/root", 0o700)
    for name in _MERGED_USR:
        archive.symlink(f"{root}/{name}", f"usr/{name}")
    archive.file(f"{root}/usr/bin/busybox", busybox.read_bytes(), 0o755)
    shipped = {_guest_path(path) for path in binaries}
    for applet in _busybox_applets(busybox):
        if applet not in shipped and applet != "usr/bin/busybox":
            archive.path_parents(f"{root}/{os.path.dirname(applet)}")
            archive.symlink(f"{root}/{applet}", "/usr/bin/busybox")
    for path in binaries + libraries:
        guest = f"{root}/{_guest_path(path)}"
        archive.path_parents(os.path.dirname(guest))
        archive.file(guest, Path(path).read_bytes(), os.stat(path).st_mode & 0o7777)
    for name, content in _GUEST_ETC.items():
        archive.file(f"{root}/{name}", content.encode(), 0o644)
    # The project's own files: busybox for the init scripts, stage 2, the device
    # modules, the interpreter and the agent.
    archive.path_parents(f"{root}/.hcsoci/modules")
    archive.symlink(f"{root}/.hcsoci/busybox", "/usr/bin/busybox")
    archive.file(f"{root}/.hcsoci/stage2", _STAGE2.encode(), 0o644)
    for group, group_modules in device_modules.items():  # an order file per group
        order = []
        for module in group_modules:
            name = _module_name(module.name) + ".ko"
            archive.file(f"{root}/.hcsoci/modules/{name}", _read_module(module), 0o644)
            order.append(name)
        listing = ("\n".join(order) + "\n").encode()
        archive.file(f"{root}/.hcsoci/modules/{group}", listing, 0o644)
    for path in seed:
        # The interpreter and its stdlib files keep their mtimes (their cached
        # .pyc are validated against them) under a private prefix.
        seeded = f"{root}{GUEST_PYTHON_PREFIX}{path}"
        archive.path_parents(os.path.dirname(seeded))
        st = os.stat(path)
        archive.file(seeded, Path(path).read_bytes(), st.st_mode & 0o7777, int(st.st_mtime))
    agent_dir = f"{root}{GUEST_AGENT_DIR}"
    archive.path_parents(f"{agent_dir}/__pycache__")
    tag = sys.implementation.cache_tag
    for source in _agent_sources():
        st = source.stat()
        archive.file(f"{agent_dir}/{source.name}", source.read_bytes(), 0o644, int(st.st_mtime))
        archive.file(
            f"{agent_dir}/__pycache__/{source.stem}.{tag}.pyc",
            _bytecode(source, scratch),
            0o644,
            int(st.st_mtime),
        )


def _prune_stale(directory: Path, keep: Path) -> None:
    """Delete older builds whose inputs changed: :func:`load_assets` would refuse them."""
    for manifest_path in directory.glob("*/manifest.json"):
        build = manifest_path.parent
        if build == keep:
            continue
        try:
            manifest = json.loads(manifest_path.read_text())
            current = manifest.get("builder_version") == BUILDER_VERSION and all(
                _unchanged(*entry) for entry in manifest["inputs"]
            )
        except (OSError, ValueError, KeyError):
            current = False
        if not current:
            with contextlib.suppress(OSError, HcsociError):
                remove_tree(build)


def _assets_from_manifest(target: Path) -> BootAssets:
    manifest = json.loads((target / "manifest.json").read_text())
    return BootAssets(
        directory=target,
        kernel=target / "vmlinuz",
        initramfs=target / "initrd.img",
        kernel_release=manifest["kernel_release"],
        python=manifest["python"],
        key=manifest["key"],
    )


def load_assets(directory: Path | None = None) -> BootAssets:
    """The newest built assets whose inputs are all unchanged.

    Raises :class:`NotFoundError` saying how to build them when there are none.
    """
    directory = directory or assets_dir()
    candidates = sorted(
        directory.glob("*/manifest.json"), key=lambda p: p.stat().st_mtime, reverse=True
    )
    for manifest_path in candidates:
        try:
            manifest = json.loads(manifest_path.read_text())
            if manifest.get("builder_version") != BUILDER_VERSION:
                continue
            if all(_unchanged(*entry) for entry in manifest["inputs"]):
                assets = _assets_from_manifest(manifest_path.parent)
                if assets.kernel.exists() and assets.initramfs.exists():
                    return assets
        except (OSError, ValueError, KeyError):
            continue
    raise NotFoundError(
        f"no up-to-date utility VM kernel/initramfs in {directory}: "
        "run `hcsoci uvm build-assets` (or `make install`)"
    )


def _unchanged(path: str, size: int, mtime_ns: int) -> bool:
    try:
        st = os.stat(path)
    except OSError:
        return False
    return st.st_size == size and st.st_mtime_ns == mtime_ns


class _CpioWriter:
    """An in-memory cpio archive in the "newc" format the kernel unpacks."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._inode = 1
        self._dirs: set[str] = set()

    def _entry(self, name: str, mode: int, data: bytes, mtime: int = 0) -> None:
        encoded = name.encode() + b"\0"
        fields = (self._inode, mode, 0, 0, 1, mtime, len(data), 0, 0, 0, 0, len(encoded), 0)
        self._inode += 1
        header = b"070701" + b"".join(b"%08X" % field for field in fields)
        self._chunks.append(header + encoded + b"\0" * (-(len(header) + len(encoded)) % 4))
        self._chunks.append(data + b"\0" * (-len(data) % 4))

    def directory(self, name: str, mode: int = 0o755) -> None:
        if name not in self._dirs:
            self._dirs.add(name)
            self._entry(name, 0o040000 | mode, b"")

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, 0o120777, target.encode())

    def path_parents(self, name: str) -> None:
        parts = name.strip("/").split("/")
        for end in range(1, len(parts) + 1):
            self.directory("/".join(parts[:end]))

    def file(self, name: str, data: bytes, mode: int, mtime: int = 0) -> None:
        # Seeded .py files keep their mtime, or Python would find every cached
        # .pyc stale, recompile it and copy directories up into the overlay.
        self._entry(name, 0o100000 | mode, data, mtime)

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0, b"")
        return b"".join(self._chunks)
