"""The dsfs daemon: one process per mount, started detached by `dsfs mount` or run in the
foreground under systemd (import name `dsfs.daemon`).

    handle = mount("vision/cats@1.2.0", "/data/cats", cache_size="50G")
    ...
    handle.unmount()            # or unmount("/data/cats"); handles are context managers too
    list_mounts()               # live mounts of this user; stale records are cleaned on the way

`mount` checks what it can in the caller (FUSE present, mountpoint usable, dataset found, store
reachable), then starts `python -m dsfs.daemon` in a new session. That process forks once more and
exits, so the daemon is re-parented to init and never lingers as a zombie of a long-lived caller
(the Python API). The daemon reads its spec from stdin (the store URL may hold credentials: never in
argv) and reports on a pipe, once: ready with its pid, or the one-line error that stopped it.
`mount` returns only once the mountpoint answers; on failure it raises that error and leaves no
process and no mount behind.

A detached daemon logs to a file per mountpoint (`dsfs mounts` shows it); a mount that starts with
that file over `LOG_KEEP` bytes moves it to `<log>.1` first (replacing an older one), so a node that
mounts the same path for months keeps two files, not one that grows for ever. Within one mount the
log is bounded too: failures are logged once per file (dsfs.daemon.fuse_ops).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

from dsfs.errors import InvalidState, MountFailed, UsageError
from dsfs.model import utc_now

from . import mounts
from .service import MountSpec

START_TIMEOUT = 600.0  # s: building the view of a very large version on first mount takes a while
STOP_TIMEOUT = 10.0
LOG_KEEP = 8 << 20


@dataclass
class MountHandle:
    mountpoint: str
    pid: int
    dataset_id: str
    ref: str
    log: str | None

    def unmount(self, force: bool = False) -> None:
        unmount(self.mountpoint, force=force)

    def __enter__(self) -> MountHandle:
        return self

    def __exit__(self, *exc) -> None:
        self.unmount(force=True)


def resolve_spec(dataset: str, mountpoint: str, store=None, *, allow_other: bool = False,
                 cache_dir: str | None = None, cache_size: str | int | None = None, read_ahead: int = 4096,
                 prefetch: bool = False, include=None, log_level: str = "info",
                 log_file: str | None = None, temporary: bool = False) -> MountSpec:
    """Check FUSE and the mountpoint, resolve the dataset to a final version: a MountSpec."""
    from dsfs import catalog  # not at import: `dsfs --help` must not load the store

    mounts.check_fuse()
    path = mounts.prepare_mountpoint(mountpoint)
    opened = catalog.open_store(store)
    info = catalog.resolve(opened, dataset)
    if not info.is_final:
        raise InvalidState(f"dataset {info.id} ({info.ref}) is a draft; only final versions can be mounted")
    if cache_dir is not None:
        cache_dir = os.path.abspath(cache_dir)
    # store.ref: `datastore:NAME` when the store came from a datastore, so the daemon reopens it
    # with that datastore's options (endpoint, credentials); a bare URL would lose them
    return MountSpec(dataset_id=info.id, ref=info.ref, store=opened.ref, store_display=opened.display_url,
                     mountpoint=path, allow_other=allow_other, cache_dir=cache_dir,
                     cache_size=None if cache_size is None else str(cache_size), read_ahead=int(read_ahead),
                     prefetch=prefetch, include=list(include or []), log_level=log_level, log_file=log_file,
                     temporary=temporary)


def mount(dataset: str, mountpoint: str, store=None, timeout: float = START_TIMEOUT, **options) -> MountHandle:
    """Mount a final version read-only at `mountpoint` in a detached daemon; returns once it serves.
    Options: allow_other, cache_dir, cache_size, read_ahead (KiB), prefetch, include, log_level,
    temporary (the mountpoint folder was made for this mount: unmount removes it)."""
    spec = resolve_spec(dataset, mountpoint, store, **options)
    spec.log_file = mounts.log_path(spec.mountpoint)
    return start(spec, timeout)


def _rotate(log_file: str) -> None:
    try:
        if os.path.getsize(log_file) > LOG_KEEP:
            os.replace(log_file, log_file + ".1")
    except FileNotFoundError:
        pass


def start(spec: MountSpec, timeout: float = START_TIMEOUT) -> MountHandle:
    """Start the daemon for a resolved spec and wait until it serves (see the module doc)."""
    log_file = spec.log_file
    assert log_file is not None, "a detached daemon logs to a file (mount() names it)"
    read_fd, write_fd = os.pipe()
    env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}  # systemd's socket is not ours
    _rotate(log_file)
    with open(log_file, "ab") as log:
        log.write(f"--- {utc_now()} mount {spec.ref} at {spec.mountpoint}\n".encode())
        log.flush()
        proc = subprocess.Popen([sys.executable, "-m", "dsfs.daemon", str(write_fd)], stdin=subprocess.PIPE,
                                stdout=log, stderr=log, pass_fds=(write_fd,), start_new_session=True,
                                cwd="/", env=env)
    os.close(write_fd)
    assert proc.stdin is not None, "started with stdin=PIPE"
    try:
        proc.stdin.write(spec.to_json().encode())
        proc.stdin.close()
        message, timed_out = _wait_status(read_fd, timeout)
    except BaseException:
        _abandon(spec, None)
        raise
    finally:
        os.close(read_fd)
        proc.wait()  # the intermediate process exits as soon as it has forked the daemon
    if message is None:
        _abandon(spec, None)
        what = f"did not serve within {timeout:.0f} s" if timed_out else "exited"
        raise MountFailed(f"mount daemon for {spec.mountpoint} {what}: {_last_line(spec.log_file)} "
                          f"(log: {spec.log_file})")
    if not message.get("ok"):
        _abandon(spec, message.get("pid"))
        raise MountFailed(message.get("error", "mount daemon failed"), message.get("code", 1))
    return MountHandle(spec.mountpoint, message["pid"], spec.dataset_id, spec.ref, spec.log_file)


def _wait_status(fd: int, timeout: float) -> tuple[dict | None, bool]:
    """(the daemon's one JSON line or None, whether the time ran out)."""
    deadline = time.monotonic() + timeout
    data = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None, True
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        data += chunk
    try:
        return json.loads(data.decode().splitlines()[0]), False
    except (ValueError, IndexError):
        return None, False


def _abandon(spec: MountSpec, pid: int | None) -> None:
    """After a failed start: no daemon, no mount, no record may remain."""
    record = mounts.read_record(spec.mountpoint)
    pid = pid or (record or {}).get("pid")
    if pid:
        _kill(pid)
    if mounts.mounted(spec.mountpoint) is not None:
        mounts.kernel_unmount(spec.mountpoint, lazy=True)
    mounts.remove_record(spec.mountpoint)


def _kill(pid: int) -> None:
    for sig, wait in ((signal.SIGTERM, STOP_TIMEOUT), (signal.SIGKILL, 2.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        if _wait_gone(pid, wait):
            return


def _wait_gone(pid: int, timeout: float) -> bool:
    start = mounts.process_start(pid)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if start is None or mounts.process_start(pid) != start:
            return True
        time.sleep(0.02)
    return False


def _last_line(path: str | None) -> str:
    if path is None:
        return "no log"
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - 4096))
            text = f.read().decode(errors="replace")
            lines = [line for line in text.splitlines() if line.strip() and not line.startswith("---")]
        return lines[-1].strip() if lines else "no output"
    except OSError:
        return "no log"


def unmount(mountpoint: str, force: bool = False, timeout: float = STOP_TIMEOUT) -> str:
    """Unmount a dsfs mount and wait for its daemon to exit; clears a dead mount (killed daemon).
    force: lazy unmount (detached even while files are open there) and kill a daemon that hangs.
    Returns a one-line description of what was done."""
    path = mounts.canonical(mountpoint)
    entry = mounts.mounted(path)
    record = mounts.read_record(path)
    live = record if record is not None and mounts.is_alive(record) else None  # its daemon runs
    if entry is None:
        if record is None:
            raise UsageError(f"{path} is not mounted")
        if live is not None:
            _kill(live["pid"])
        mounts.remove_record(path)
        return f"{path} was not mounted; removed its stale record"
    if entry.fstype != mounts.FSTYPE:
        raise UsageError(f"{path} is not a dsfs mount ({entry.fstype} from {entry.source})")
    dead = live is None and mounts.is_dead(path)
    mounts.kernel_unmount(path, lazy=force or dead)
    mounts.remove_record(path)
    if record and record.get("temporary"):  # made by `dsfs env` for this mount: nothing else is there
        with contextlib.suppress(OSError):
            os.rmdir(path)
    what = f"unmounted {record.get('ref') if record else entry.source} from {path}"
    if dead:
        return what + " (its daemon had died)"
    if live is not None and not _wait_gone(live["pid"], timeout if not force else 2.0):
        if not force:
            raise MountFailed(f"{path} is unmounted but its daemon (pid {live['pid']}) did not exit; "
                              f"see {live.get('log')}", 1)
        return what + (f" lazily: files still open there keep being served; the daemon (pid {live['pid']}) "
                       f"exits when they are closed")
    return what


def list_mounts(clean: bool = True) -> tuple[list[dict], list[dict]]:
    """(live mounts, stale records). A stale record (its daemon is gone) is removed, and the dead
    mount its daemon left behind is lazily unmounted, when `clean`."""
    live, stale = [], []
    table = mounts.mount_table()
    for record in mounts.all_records():
        entry = table.get(record["mountpoint"])
        if mounts.is_alive(record) and entry is not None and entry.fstype == mounts.FSTYPE:
            live.append(record)
            continue
        stale.append(record)
        if clean:
            if entry is not None and entry.fstype == mounts.FSTYPE and mounts.is_dead(record["mountpoint"]):
                mounts.kernel_unmount(record["mountpoint"], lazy=True)
            mounts.remove_record(record["mountpoint"], record.get("pid"))
    return live, stale


def with_cache_use(records: list[dict]) -> list[dict]:
    """Live mount records (`list_mounts`) with what `dsfs mounts` and the web UI show beside them:
    `cache_bytes` (the chunks its cache holds, read once per cache folder), `cache_budget` (the
    daemon's own --cache-size as it recorded it; for a daemon from before, this node's default), and
    `dataset`/`version` split from its ref."""
    from dsfs.node.cache import Cache

    caches: dict[str | None, tuple[int, int]] = {}
    for record in records:
        root = record.get("cache_dir")
        if root not in caches:
            cache = Cache(root)
            caches[root] = (cache.used_bytes(), cache.budget)
        used, budget = caches[root]
        record["cache_bytes"], record["cache_budget"] = used, record.get("cache_budget") or budget
        project_name, _, record["version"] = record.get("ref", "").rpartition("@")
        record["dataset"] = project_name
    return records
