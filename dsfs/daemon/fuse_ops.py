"""The pyfuse3 `Operations` of a mount: a thin translation to `View`, which decides (STYLE 1).

- Blocking work (LMDB, chunk files, the store) runs in trio worker threads behind two
  CapacityLimiters, one for metadata and one for reads, so a listing is never queued behind reads
  waiting on the store.
- The tree is immutable: entries and attributes are cached by the kernel for hours, negative
  lookups too, and files open with `keep_cache` (the page cache survives close/reopen).
- Errors become an errno in `_errno_of`, the one place: a typed dsfs error carries its errno; a
  typed failure other than "not found" is logged once per inode, anything else is a bug: EIO to
  the caller, logged once with its traceback and the path, and the mount keeps serving (pyfuse3
  would otherwise end its main loop on an exception that is not a FUSEError).
- Every mutating call answers EROFS (the mount is also `ro`, so the kernel usually answers first).

Files read in inode order (`find | xargs cat`, a loader going through a listing) have the next small
files' bytes put in the kernel's page cache ahead of the reader (`PagePusher`, FUSE's notify_store),
from the node's cache only: their reads are then answered by the kernel, and each such file costs this
one-threaded loop two requests (OPEN, RELEASE) instead of three. Which files, and when, is the
policy's (`dsfs.node.prefetch.PagePush`, tuned by the view's config); here are only the mechanics.

Directory offsets: 0 is the start, 1 follows '.', 2 follows '..', and 2 + n follows the view's
n-th child; the view's listing positions are stable, so an interrupted listing resumes exactly.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import queue
import stat
import threading

import pyfuse3
import trio

from dsfs.errors import DsfsError, PathNotFound
from dsfs.node.prefetch import PagePush
from dsfs.node.view import OpenFile, View

log = logging.getLogger(__name__)

TIMEOUT = 24 * 3600.0  # entry/attr cache timeout (s): the tree never changes while mounted
BLKSIZE = 1 << 20  # st_blksize: the buffer size of cat, cp, stdio and Python; 1 MiB = a FUSE request
DIR_BATCH = 256  # directory entries fetched per worker-thread call
XATTR_DIGEST = b"user.dsfs.blake3"
MAX_LOGGED = 10_000


def mount_options(allow_other: bool = False) -> set[str]:
    """FUSE mount options: read-only, no setuid or devices; `allow_other` implies the kernel
    checks permissions (`default_permissions`), otherwise every user could read every file."""
    options = {"ro", "nosuid", "nodev", "noatime", "fsname=dsfs", "subtype=dsfs"}
    if allow_other:
        options |= {"allow_other", "default_permissions"}
    return options


def _errno_of(exc: BaseException) -> int:
    """The errno a failed request answers with: the only place errors are translated."""
    if isinstance(exc, pyfuse3.FUSEError):
        return exc.errno
    if isinstance(exc, DsfsError):
        return exc.errno
    return errno.EIO


class PagePusher:
    """Puts the bytes of the files its policy names in the kernel's page cache, from a thread of its
    own: only what the node's cache already holds (nothing is fetched for it), so a file it skips is
    read the usual way."""

    def __init__(self, view: View):
        self.view = view
        self.policy = PagePush(view.config)
        self.pushed = 0
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.thread: threading.Thread | None = None
        self.stopping = False

    def take(self, ino: int) -> bool:
        """Were this file's bytes pushed (and not yet opened since)? Then its read is not expected."""
        return self.policy.take(ino)

    def opened(self, ino: int) -> None:
        """A file was opened (on the event loop's thread: only bookkeeping here)."""
        batch = self.policy.opened(ino, not self.stopping and self.view.reading_in_order())
        if batch is None:
            return
        if self.thread is None:
            self.thread = threading.Thread(target=self._run, name="dsfs-push", daemon=True)
            self.thread.start()
        self.queue.put(batch)

    def _run(self) -> None:
        while (batch := self.queue.get()) is not None:
            for ino in range(*batch):
                if self.stopping:
                    return
                try:
                    data = self.view.cached_file(ino, self.policy.file_bytes)
                    if data is not None:
                        pyfuse3.notify_store(ino, 0, data)
                        self.pushed += 1
                        self.policy.pushed(ino)
                except OSError:
                    pass  # e.g. ENOENT: the kernel has not looked the file up; it is read as usual
                except Exception:  # noqa: BLE001 - pushing is a shortcut: a read reports failures
                    log.debug("page cache push of inode %d failed", ino, exc_info=True)

    def stop(self) -> None:
        """Stop pushing; call it while the FUSE loop still answers (a push may be waiting for a page
        that a read in flight holds) and before the session closes. Idempotent."""
        self.stopping = True
        thread, self.thread = self.thread, None
        if thread is not None:
            self.queue.put(None)
            thread.join(timeout=10)
            log.info("page cache push: %d files put in the kernel's page cache ahead of readers", self.pushed)


def _handler(fn):
    """Run a request handler; turn any exception into its errno (logging what deserves it)."""

    @functools.wraps(fn)
    async def wrapper(self, *args):
        try:
            return await fn(self, *args)
        except pyfuse3.FUSEError:
            raise
        except Exception as exc:
            self._report(exc, fn.__name__, args)
            raise pyfuse3.FUSEError(_errno_of(exc)) from None

    return wrapper


async def _read_only(self, *args):
    raise pyfuse3.FUSEError(errno.EROFS)


class _Dir:
    """An open folder: its inode and a window of entries fetched ahead."""

    __slots__ = ("ino", "start", "entries")

    def __init__(self, ino: int):
        self.ino = ino
        self.start = 0
        self.entries: list = []  # [(next offset, name bytes, Inode)] from offset `start`


class Operations(pyfuse3.Operations):
    supports_dot_lookup = True
    enable_writeback_cache = False

    def __init__(self, view: View, workers: int = 16):
        super().__init__()
        self.view = view
        self.uid, self.gid = os.getuid(), os.getgid()
        self.meta_limiter = trio.CapacityLimiter(workers)
        self.data_limiter = trio.CapacityLimiter(workers)
        self.files: dict[int, OpenFile] = {}
        self.dirs: dict[int, _Dir] = {}
        self.next_fh = 1
        self.logged: set = set()
        self.pusher = PagePusher(view)

    # -- plumbing ------------------------------------------------------------------------------

    async def _meta(self, fn, *args):
        return await trio.to_thread.run_sync(fn, *args, limiter=self.meta_limiter)

    def _new_fh(self) -> int:
        fh = self.next_fh
        self.next_fh += 1
        return fh

    def _report(self, exc: Exception, op: str, args) -> None:
        """Log a failed request once per (inode, kind of failure); "not found" is not a failure."""
        if isinstance(exc, PathNotFound):
            return
        ino = self._ino_of(op, args)
        key = (ino, type(exc))
        if key in self.logged:
            return
        if len(self.logged) < MAX_LOGGED:
            self.logged.add(key)
        where = self._where(ino)
        if isinstance(exc, DsfsError):
            log.error("%s %s: %s (answered %s)", op, where, exc, errno.errorcode.get(exc.errno, exc.errno))
        else:
            log.error("%s %s: unexpected %s, answered EIO; the mount keeps serving", op, where,
                      type(exc).__name__, exc_info=exc)

    def _ino_of(self, op: str, args) -> int | None:
        if not args:
            return None
        if op in ("read", "release"):
            handle = self.files.get(args[0])
            return handle.node.ino if handle else None
        if op in ("readdir", "releasedir"):
            folder = self.dirs.get(args[0])
            return folder.ino if folder else None
        return args[0] if isinstance(args[0], int) else None

    def _where(self, ino: int | None) -> str:
        if ino is None:
            return "(no inode)"
        try:
            return "/" + self.view.path(ino)
        except Exception:  # noqa: BLE001 - a message must not fail
            return f"inode {ino}"

    def attrs(self, node) -> pyfuse3.EntryAttributes:
        entry = pyfuse3.EntryAttributes()
        entry.st_ino = node.ino
        entry.generation = 0
        entry.entry_timeout = TIMEOUT
        entry.attr_timeout = TIMEOUT
        entry.st_mode = (stat.S_IFDIR if node.is_dir else stat.S_IFREG) | node.mode
        entry.st_nlink = node.nlink
        entry.st_uid = self.uid
        entry.st_gid = self.gid
        entry.st_rdev = 0
        entry.st_size = node.size
        entry.st_blksize = BLKSIZE
        entry.st_blocks = (node.size + 511) // 512
        entry.st_atime_ns = entry.st_mtime_ns = entry.st_ctime_ns = node.mtime_ns
        return entry

    # -- metadata ------------------------------------------------------------------------------

    @_handler
    async def lookup(self, parent_inode, name, ctx=None):
        if name == b".":
            return self.attrs(await self._meta(self.view.getattr, parent_inode))
        if name == b"..":
            return self.attrs(await self._meta(self._parent_node, parent_inode))
        try:  # on the loop's thread, as open's: the view index is read from LMDB's map (a hop cost more)
            node = self.view.lookup(parent_inode, name.decode("utf-8"))
        except (PathNotFound, UnicodeDecodeError):
            missing = pyfuse3.EntryAttributes()  # st_ino 0: the kernel caches the negative entry
            missing.entry_timeout = TIMEOUT
            return missing
        return self.attrs(node)

    def _parent_node(self, ino: int):
        return self.view.getattr(self.view.parent(ino))

    @_handler
    async def getattr(self, inode, ctx=None):
        return self.attrs(await self._meta(self.view.getattr, inode))

    @_handler
    async def access(self, inode, mode, ctx=None):
        if mode & os.W_OK:
            raise pyfuse3.FUSEError(errno.EROFS)
        node = await self._meta(self.view.getattr, inode)
        return not (mode & os.X_OK) or node.is_dir or bool(node.mode & 0o111)

    @_handler
    async def opendir(self, inode, ctx=None):
        node = await self._meta(self.view.getattr, inode)
        if not node.is_dir:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        fh = self._new_fh()
        self.dirs[fh] = _Dir(inode)
        return fh

    @_handler
    async def readdir(self, fh, start_id, token):
        folder = self.dirs[fh]
        if not folder.start <= start_id < folder.start + len(folder.entries):
            folder.entries = await self._meta(self._entries, folder.ino, start_id)
            folder.start = start_id
        for next_id, name, node in folder.entries[start_id - folder.start:]:
            if not pyfuse3.readdir_reply(token, name, self.attrs(node), next_id):
                return

    def _entries(self, ino: int, start: int) -> list:
        """Up to DIR_BATCH (next offset, name, Inode) from offset `start` (see the module doc)."""
        out = []
        if start < 1:
            out.append((1, b".", self.view.getattr(ino)))
        if start < 2:
            out.append((2, b"..", self._parent_node(ino)))
        for pos, name, node in self.view.readdir(ino, max(0, start - 2)):
            if len(out) >= DIR_BATCH:
                break
            out.append((pos + 2, name.encode(), node))
        return out

    @_handler
    async def releasedir(self, fh):
        self.dirs.pop(fh, None)

    @_handler
    async def statfs(self, ctx=None):
        meta = self.view.index.meta
        st = pyfuse3.StatvfsData()
        st.f_bsize = st.f_frsize = 4096
        st.f_blocks = (meta["bytes"] + 4095) // 4096
        st.f_bfree = st.f_bavail = 0
        st.f_files = meta["files"] + meta["dirs"]
        st.f_ffree = st.f_favail = 0
        st.f_namemax = 255
        return st

    @_handler
    async def getxattr(self, inode, name, ctx=None):
        if name == XATTR_DIGEST:
            node = await self._meta(self.view.getattr, inode)
            if not node.is_dir:
                return node.digest.hex().encode()
        raise pyfuse3.FUSEError(errno.ENODATA)

    @_handler
    async def listxattr(self, inode, ctx=None):
        return []  # the digest attribute is readable but not listed: `cp -a` would copy it

    # -- data ----------------------------------------------------------------------------------

    @_handler
    async def open(self, inode, flags, ctx=None):
        if flags & os.O_ACCMODE != os.O_RDONLY or flags & (os.O_TRUNC | os.O_APPEND):
            raise pyfuse3.FUSEError(errno.EROFS)
        # on the trio thread (the view index lookup is in LMDB's map; nothing is loaded: the first
        # read loads what it needs), but for an external file, whose check asks its server
        pushed = self.pusher.take(inode)
        handle = self.view.open(inode, wait=False, in_page_cache=pushed)
        if handle is None:
            handle = await self._meta(functools.partial(self.view.open, inode, in_page_cache=pushed))
        fh = self._new_fh()
        self.files[fh] = handle
        self.pusher.opened(inode)
        return pyfuse3.FileInfo(fh=fh, keep_cache=True, direct_io=False)

    @_handler
    async def read(self, fh, off, size):
        handle = self.files[fh]
        data = self.view.read(handle, off, size, wait=False)  # chunks in memory: no thread hop
        if data is None:
            data = await trio.to_thread.run_sync(self.view.read, handle, off, size, limiter=self.data_limiter)
        return data

    @_handler
    async def release(self, fh):
        handle = self.files.pop(fh, None)
        if handle is not None:
            self.view.release(handle)

    # flush, fsync and fsyncdir are left to the base class: its ENOSYS tells the kernel never to send
    # them again (it then answers success itself), which saves a round trip on every close().

    async def forget(self, inode_list):
        pass  # inodes live as long as the view: nothing to free

    # -- writes: the tree is immutable ---------------------------------------------------------

    setattr = mknod = mkdir = unlink = rmdir = symlink = rename = link = _read_only
    write = create = setxattr = removexattr = _read_only
