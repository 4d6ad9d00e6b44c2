"""The mount daemon: one process serving one mount until it is unmounted or signalled.

    serve(spec) -> exit code

Order: open the cache (after any fork: LMDB must not cross one), build or reuse the view, mount
(`pyfuse3.init`), then inside trio run the FUSE loop and, once a stat of the mountpoint answers,
raise the kernel's readahead, write the mount record, report ready (to the `dsfs mount` that
started it, over a pipe; or to systemd, READY=1), and start `--prefetch` if asked.

Ending: SIGTERM/SIGINT/SIGHUP end the FUSE loop; an external unmount (`dsfs unmount`, fusermount3
-u) ends it too. Either way the mount is removed (`pyfuse3.close(unmount=True)` unmounts lazily
as root, through fusermount3 otherwise), the record deleted, and the exit code is 0. A failure
before serving is reported as one line (exit code of the typed error) and leaves no mount.

Threads: trio runs the FUSE loop; View calls run in trio worker threads (see dsfs.daemon.fuse_ops); the
prefetch runs in a plain daemon thread that checks a stop event between batches.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import threading
import time
from dataclasses import asdict, dataclass, field

from dsfs.errors import DsfsError, FuseUnavailable, MountFailed
from dsfs.model import utc_now

from . import mounts
from .notify import notify

log = logging.getLogger(__name__)


@dataclass
class MountSpec:
    """Everything the daemon needs; `dsfs mount` resolves the dataset before starting it."""

    dataset_id: str
    ref: str
    store: str  # the store URL or `datastore:NAME` (a URL may hold credentials: never logged or recorded)
    store_display: str
    mountpoint: str
    allow_other: bool = False
    cache_dir: str | None = None
    cache_size: str | None = None
    read_ahead: int = 4096  # KiB; 0 leaves the kernel's default
    prefetch: bool = False
    include: list[str] = field(default_factory=list)
    log_level: str = "info"
    log_file: str | None = None  # None: stderr (foreground)
    temporary: bool = False  # the mountpoint was made for this mount (`dsfs env`): removed at unmount

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> MountSpec:
        return cls(**json.loads(text))


class Status:
    """How the daemon tells whoever started it that it serves or why it could not."""

    def __init__(self, fd: int | None = None):
        self.fd = fd

    def send(self, message: dict) -> None:
        if self.fd is None:
            return
        try:
            os.write(self.fd, (json.dumps(message) + "\n").encode())
            os.close(self.fd)
        except OSError:
            pass  # the starter is gone: nobody to tell
        self.fd = None


def setup_logging(spec: MountSpec) -> None:
    """Log to stderr (the log file when detached, journald under systemd): the `dsfs` loggers at
    spec.log_level, other libraries at INFO and above (their debug is the SDKs' wire traffic)."""
    level = getattr(logging, spec.log_level.upper(), logging.INFO)
    handler = logging.StreamHandler()
    fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s" if spec.log_file else "%(levelname)s %(name)s: %(message)s"
    handler.setFormatter(logging.Formatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(level, logging.INFO))
    tree = logging.getLogger("dsfs")
    tree.handlers[:] = []  # `dsfs -v mount --foreground`: the daemon's handler above writes to the same stderr
    tree.setLevel(level)
    fuse_log = logging.getLogger("pyfuse3")
    fuse_log.setLevel(max(level, logging.INFO))
    fuse_log.filters[:] = [_abandoned_reply_filter(debug=level <= logging.DEBUG)]


def _abandoned_reply_filter(debug: bool):
    """pyfuse3 logs an ERROR when a reply finds its request gone (libfuse's fuse_reply_* answers
    ENOENT: the kernel no longer waits, because the caller was interrupted or the file system is
    being unmounted while a release was queued). Nothing is lost and nobody can act on it: it is
    kept as a DEBUG record under -v, and dropped otherwise."""

    def demote(record: logging.LogRecord) -> bool:
        if "fuse_reply_* failed with No such file or directory" not in record.getMessage():
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return debug

    return demote


class _Stop(Exception):
    """A signal arrived before the FUSE loop (which has its own receiver) was running."""


def _stop_early(signum, frame):
    raise _Stop(signal.Signals(signum).name)


def tune_malloc() -> bool:
    """Keep freed chunk buffers for reuse. A mount allocates and frees ~1 MiB buffers at GB/s (chunks
    read from the cache, replies that join two chunks); glibc's defaults hand such blocks back to the
    kernel (mmap, heap trimming) and every reuse faults its pages in again, one fault per 4 KiB: that
    was most of the daemon's CPU time on sequential reads. Blocks up to 32 MiB now come from the heap,
    and up to 256 MiB of free heap is kept. glibc only; elsewhere nothing changes."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(mallopt(m_mmap_threshold, 32 << 20) and mallopt(m_trim_threshold, 256 << 20))


def serve(spec: MountSpec, status: Status | None = None) -> int:
    status = status or Status()
    tune_malloc()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _stop_early)
    view = None
    mounted = False
    ops = None
    try:
        try:
            import pyfuse3

            from dsfs.daemon import fuse_ops
        except ImportError as exc:
            raise FuseUnavailable(f"FUSE is not available: {exc}. {mounts.FUSE_PACKAGES}") from None
        from dsfs.catalog import open_store
        from dsfs.node.cache import Cache
        from dsfs.node.view import View

        started = time.monotonic()
        store = open_store(spec.store)
        cache = Cache(spec.cache_dir, spec.cache_size)
        view = View(store, cache, spec.dataset_id)
        meta = view.index.meta
        assert meta is not None, "View makes the view current (ensure_view)"
        log.info("view of %s (%s) ready in %.2f s: %d files, %d folders", spec.ref, spec.dataset_id,
                 time.monotonic() - started, meta["files"], meta["dirs"])
        ops = fuse_ops.Operations(view)
        try:
            pyfuse3.init(ops, spec.mountpoint, fuse_ops.mount_options(spec.allow_other))
        except RuntimeError as exc:
            raise MountFailed(f"mounting {spec.mountpoint} failed ({exc}); "
                              f"libfuse's reason is in {spec.log_file or 'the lines above'}", 11) from None
        mounted = True
        import trio

        trio.run(_run, spec, status, view, ops)
        return 0
    except _Stop as exc:
        log.info("stopped by %s before serving", exc)
        status.send({"ok": False, "error": f"mount daemon stopped by {exc} before serving", "code": 1})
        return 0
    except DsfsError as exc:
        log.error("%s", exc)
        status.send({"ok": False, "error": str(exc), "code": exc.exit_code})
        return exc.exit_code
    except BaseException as exc:
        log.exception("mount daemon failed")
        status.send({"ok": False, "error": f"mount daemon failed: {type(exc).__name__}: {exc}", "code": 1})
        return 1
    finally:
        if ops is not None:
            ops.pusher.stop()
        if mounted:
            import pyfuse3

            pyfuse3.close(unmount=True)
            log.info("unmounted %s", spec.mountpoint)
        mounts.remove_record(spec.mountpoint, os.getpid())
        if view is not None:
            view.close()


async def _run(spec: MountSpec, status: Status, view, ops) -> None:
    import pyfuse3
    import trio

    stop = threading.Event()
    try:
        async with trio.open_nursery() as nursery:
            async def fuse_loop():
                await pyfuse3.main()
                nursery.cancel_scope.cancel()  # unmounted from outside: stop the other tasks

            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
                nursery.start_soon(fuse_loop)
                await trio.to_thread.run_sync(os.stat, spec.mountpoint)  # served by the loop above
                _ready(spec, status, view, stop)
                async for signum in signals:
                    log.info("%s: unmounting %s", signal.Signals(signum).name, spec.mountpoint)
                    notify("STOPPING=1")
                    # while the loop still answers: a push may wait for a page that a read in
                    # flight holds, and must not outlive the session
                    await trio.to_thread.run_sync(ops.pusher.stop)
                    pyfuse3.terminate()
                    break
    finally:
        stop.set()


def _ready(spec: MountSpec, status: Status, view, stop: threading.Event) -> None:
    set_read_ahead(spec.mountpoint, spec.read_ahead)
    mounts.write_record({
        "mountpoint": spec.mountpoint, "dataset_id": spec.dataset_id, "ref": spec.ref,
        "store": spec.store_display, "pid": os.getpid(), "started_ticks": mounts.process_start(os.getpid()),
        "started": utc_now(), "log": spec.log_file,
        "cache_dir": view.cache.root, "allow_other": spec.allow_other, "prefetch": spec.prefetch,
        "temporary": spec.temporary, "cache_budget": view.cache.budget,
    })
    log.info("serving %s (%s) at %s", spec.ref, spec.dataset_id, spec.mountpoint)
    status.send({"ok": True, "pid": os.getpid()})
    notify("READY=1", f"STATUS=serving {spec.ref} at {spec.mountpoint}")
    if spec.prefetch:
        threading.Thread(target=_prefetch, args=(view, spec.include or None, stop), name="dsfs-prefetch",
                         daemon=True).start()


def _prefetch(view, include, stop: threading.Event) -> None:
    started = time.monotonic()
    try:
        counts = view.warm(include, stop)
    except DsfsError as exc:
        log.error("prefetch stopped: %s", exc)
        return
    except Exception:
        log.exception("prefetch failed")
        return
    log.info("prefetch %s: %d files, %d chunks (%d bytes) fetched in %.1f s%s",
             "stopped" if stop.is_set() else "done", counts["files"], counts["chunks"], counts["bytes"],
             time.monotonic() - started, f", {counts['failed']} corrupt chunks skipped" if counts["failed"] else "")


def set_read_ahead(mountpoint: str, kib: int) -> bool:
    """Raise the mount's readahead (pyfuse3 leaves the kernel's 128 KiB; DESIGN 6 has the effect).
    The bdi of a FUSE mount is named by its anonymous device number. Needs root: otherwise logged."""
    if not kib:
        return False
    dev = os.stat(mountpoint).st_dev
    path = f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb"
    try:
        with open(path, "w") as f:
            f.write(str(int(kib)))
    except OSError as exc:
        log.info("readahead left at the kernel default: cannot write %s (%s)", path, exc.strerror)
        return False
    log.debug("readahead %d KiB (%s)", kib, path)
    return True
