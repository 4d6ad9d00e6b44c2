"""The node's mounts: records of running daemons, the kernel's mount table, and unmounting.

Records live in the runtime dir: `$DSFS_RUNTIME_DIR`, else `$XDG_RUNTIME_DIR/dsfs`, else
`/tmp/dsfs-$UID` (systemd units set `DSFS_RUNTIME_DIR=/run/dsfs`). One JSON file per mount under
`mounts/`, named after the mountpoint, written by the daemon once it serves and removed when it
exits; the daemon's log sits under `logs/` with the same name. A record whose process is gone (the
pid is dead or now belongs to another process: the record keeps the process start time) is stale.

The kernel's mount table (/proc/self/mountinfo) is the truth about what is mounted: a dsfs mount
has the type `fuse.dsfs`. A FUSE mount whose daemon died stays in the table, and every access to
it fails with ENOTCONN ("Transport endpoint is not connected") until it is lazily unmounted.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass

from dsfs import settings
from dsfs.errors import Conflict, FuseUnavailable, UsageError

FUSE_DEVICE = "/dev/fuse"
FSTYPE = "fuse.dsfs"
FUSE_PACKAGES = "Debian/Ubuntu: apt-get install fuse3 libfuse3-dev pkg-config; then pip install 'dsfs[fuse]'"


def canonical(mountpoint: str) -> str:
    """An absolute path with its folders' symlinks resolved, without touching the last component
    (a dead mount there fails every stat)."""
    path = os.path.abspath(os.path.expanduser(mountpoint))
    return os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path)) if path != "/" else path


def _key(mountpoint: str) -> str:
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", mountpoint.strip("/"))[-60:] or "root"
    return f"{readable}-{hashlib.blake2s(mountpoint.encode(), digest_size=4).hexdigest()}"


def _folder(kind: str) -> str:
    path = os.path.join(settings.runtime_dir(), kind)
    os.makedirs(path, mode=0o700, exist_ok=True)
    return path


def record_path(mountpoint: str) -> str:
    return os.path.join(_folder("mounts"), _key(mountpoint) + ".json")


def log_path(mountpoint: str) -> str:
    return os.path.join(_folder("logs"), _key(mountpoint) + ".log")


# -- records -------------------------------------------------------------------------------------

def write_record(record: dict) -> None:
    path = record_path(record["mountpoint"])
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
    with os.fdopen(fd, "w") as f:
        json.dump(record, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


def read_record(mountpoint: str) -> dict | None:
    try:
        with open(record_path(mountpoint)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def remove_record(mountpoint: str, pid: int | None = None) -> None:
    """Remove the record of a mount (only if it still names `pid`, when given)."""
    if pid is not None:
        record = read_record(mountpoint)
        if record is not None and record.get("pid") != pid:
            return
    try:
        os.unlink(record_path(mountpoint))
    except FileNotFoundError:
        pass


def all_records() -> list[dict]:
    out = []
    folder = _folder("mounts")
    for name in sorted(os.listdir(folder)):
        if name.endswith(".json") and not name.startswith("."):
            try:
                with open(os.path.join(folder, name)) as f:
                    out.append(json.load(f))
            except (OSError, ValueError):
                os.unlink(os.path.join(folder, name))  # a torn record names nothing usable
    return out


def process_start(pid: int) -> str | None:
    """The start time of a running process (field 22 of /proc/PID/stat); None if there is no such
    process or it has exited (a zombie: in a container, PID 1 may never reap an orphan)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in ("Z", "X") else fields[19]


def is_alive(record: dict) -> bool:
    start = process_start(record.get("pid", 0))
    return start is not None and start == record.get("started_ticks")


# -- the kernel's mount table --------------------------------------------------------------------

@dataclass
class MountEntry:
    mountpoint: str
    fstype: str
    source: str
    device: str  # major:minor


def _unescape(text: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)


def mount_table() -> dict[str, MountEntry]:
    """Mountpoint -> the topmost mount there, from /proc/self/mountinfo."""
    table = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields, rest = left.split(), right.split()
            if len(fields) < 5 or len(rest) < 2:
                continue
            point = _unescape(fields[4])
            table[point] = MountEntry(point, rest[0], _unescape(rest[1]), fields[2])
    return table


def mounted(mountpoint: str) -> MountEntry | None:
    return mount_table().get(mountpoint)


def is_dead(mountpoint: str) -> bool:
    """True for a FUSE mount whose daemon is gone. Opening the root folder asks the daemon (a stat
    may be answered from the kernel's attribute cache); a dead mount answers ENOTCONN, or
    ECONNABORTED for a request that was queued when the connection went."""
    try:
        fd = os.open(mountpoint, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        return exc.errno in (errno.ENOTCONN, errno.ECONNABORTED)
    os.close(fd)
    return False


def kernel_unmount(mountpoint: str, lazy: bool = False) -> None:
    """fusermount3 -u (-z: lazy, detaches even when busy); umount when fusermount3 is missing."""
    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    if tool:
        cmd = [tool, "-u"] + (["-z"] if lazy else []) + [mountpoint]
    else:
        cmd = ["umount"] + (["-l"] if lazy else []) + [mountpoint]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 and mounted(mountpoint) is not None:
        reason = (proc.stderr.strip().splitlines() or ["failed"])[-1]
        if "busy" in reason.lower():
            raise Conflict(f"{mountpoint} is busy (files or folders are open there); close them, "
                           f"or unmount with --force (lazy: detached now, released when closed)")
        raise UsageError(f"cannot unmount {mountpoint}: {reason}")


# -- checks before mounting ----------------------------------------------------------------------

def check_fuse() -> None:
    """Raise FuseUnavailable saying what to install when FUSE cannot work here."""
    if not os.path.exists(FUSE_DEVICE):
        raise FuseUnavailable(f"FUSE is not available: {FUSE_DEVICE} is missing (install fuse3 and load the "
                              f"module: modprobe fuse; in a container pass --device /dev/fuse --cap-add "
                              f"SYS_ADMIN). {FUSE_PACKAGES}")
    try:
        import pyfuse3  # noqa: F401
    except ImportError as exc:
        raise FuseUnavailable(f"FUSE is not available: the Python package pyfuse3 cannot be imported "
                              f"({exc}). {FUSE_PACKAGES}") from None
    if os.geteuid() != 0 and not (shutil.which("fusermount3") or shutil.which("fusermount")):
        raise FuseUnavailable(f"FUSE is not available: fusermount3 is not on PATH. {FUSE_PACKAGES}")


def prepare_mountpoint(mountpoint: str) -> str:
    """Check that a folder can be mounted on; clear a dead dsfs mount left there by a killed
    daemon. Returns the canonical path."""
    path = canonical(mountpoint)
    entry = mounted(path)
    if entry is not None:
        record = read_record(path)
        if record is not None and is_alive(record):
            raise Conflict(f"{path} is already a mount: dataset {record.get('ref')} (pid {record['pid']}); "
                           f"`dsfs unmount {path}` first")
        if entry.fstype.startswith("fuse") and is_dead(path):
            kernel_unmount(path, lazy=True)  # a killed daemon's mount: nobody can use it
            remove_record(path)
        else:
            raise Conflict(f"{path} is already a mount ({entry.fstype} from {entry.source}); unmount it first")
    if not os.path.lexists(path):
        raise UsageError(f"mountpoint {path} does not exist; create it first (mkdir -p {path})")
    if not os.path.isdir(path):
        raise UsageError(f"mountpoint {path} is not a directory")
    try:
        if os.listdir(path):
            raise UsageError(f"mountpoint {path} is not empty; mount on an empty folder")
    except PermissionError:
        raise UsageError(f"mountpoint {path} is not readable by this user") from None
    return path
