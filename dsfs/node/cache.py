"""The node cache: chunk bytes in files, indexed by one LMDB environment shared by every process.

Layout under `$DSFS_CACHE_DIR` (default `$XDG_CACHE_HOME/dsfs`):

    index.lmdb/          LMDB: chunk records, LRU order, view indexes (see dsfs.lineage.viewindex)
    chunks/<ab>/<hex>    one file per chunk, named by its blake3 digest
    changesets/<id>      change-sets of versions seen, verified against their version record
    tables/<id>          file tables of versions closed here, for authoring children (dsfs.lineage.filetable)
    files/, copies/      the digest-addressed file store and cached copies of `get`, with what each
    links                was when written and the `get --link` symlinks into them (see dsfs.node.copies)

A chunk file is written to a temp name and renamed, and only then recorded in LMDB, so a record
always names a complete file while the machine stays up (a killed process included). Chunk files are
not fsynced: every chunk is verified against its digest when it is fetched (before it is stored)
and again when it is served, and one that fails (a file torn by a power loss, a bad disk) is
dropped (file and record) and fetched again by the caller. An fsync per chunk cost 0.7-1.6 ms and
dominated cold reads of small files through a mount (docs/mount.md). LMDB runs with its default,
durable settings; several processes (mounts, downloads) open the same environment, and
`reader_check()` clears readers left by killed processes.

A full disk (or quota): every write to the cache raises DiskFull naming the cache folder (exit 9),
never a traceback or a signal. LMDB's lock file is given its blocks before LMDB first maps it
(`_reserve_lock_file`: a new cache on a full disk was killed by SIGBUS), a failed LMDB commit leaves
the index as it was, and chunk files that could not be recorded are removed. A mount's read whose
chunks cannot be stored is served from memory; last uses that cannot be written are dropped.

Budget: `size` bytes (`--cache-size`, `$DSFS_CACHE_SIZE`, default half of what the cache and the
free space of its disk add up to). Going over the budget (high watermark) evicts least recently used
chunks down to 90% of it (low watermark). Chunks pinned by this process (open files of a mount) are
never evicted, nor are chunks used in the last minute by any process.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import struct
import threading
import time
import weakref

import blake3
import lmdb

from dsfs import settings
from dsfs.errors import DiskFull, UsageError
from dsfs.fsutil import NO_SPACE
from dsfs.lineage import viewindex

LOW_WATERMARK = 0.9
TOUCH_INTERVAL_NS = 60 * 10**9  # a chunk's last use is recorded at most once a minute...
TOUCH_BATCH = 1024  # ...and recorded uses are written together, one write txn per batch or per
TOUCH_FLUSH_NS = 5 * 10**9  # 5 s: a durable write txn per read (1 ms, serialized) would cap reads
RECENT_NS = 60 * 10**9
TEMP_AGE_S = 3600  # a temp file this old in tmp/ was left by a killed process (writes take milliseconds)
CACHE_FORMAT = b"2"  # 2: view records keyed by a view number (dsfs.lineage.viewindex)

_CHUNK = struct.Struct(">QQ")  # stored size, last use (ns)
MAX_READERS = 1024
LOCK_FILE_BYTES = 128 + 64 * MAX_READERS  # LMDB's lock file: a header, then a cache line per reader slot


def parse_size(text: str | int | None) -> int | None:
    """'10G', '512MiB', '1.5T', '1000' -> bytes."""
    if text is None or isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*([0-9.]+)\s*([kmgtp]?)(i?b)?\s*", str(text), re.I)
    if not m:
        raise UsageError(f"invalid size {text!r}: use bytes or a suffix like 512M, 10G")
    factor = 1024 ** "bkmgtp".index((m.group(2) or "b").lower())
    return int(float(m.group(1)) * factor)


class Cache:
    """The chunk cache of one node. Thread-safe; share one instance per process."""

    def __init__(self, root: str | None = None, size: int | str | None = None):
        self.root = os.path.abspath(root or settings.cache_dir())
        with self.space_checked():
            for sub in ("chunks", "changesets", "tmp"):
                os.makedirs(os.path.join(self.root, sub), mode=0o700, exist_ok=True)
            self.env = _open_env(os.path.join(self.root, "index.lmdb"))
            self.db_chunks = self.env.open_db(b"chunks")
            self.db_lru = self.env.open_db(b"lru")
            self.db_meta = self.env.open_db(b"meta")
            self.view_dbs = {name: self.env.open_db(name.encode()) for name in viewindex.TABLES}
            with self.env.begin(db=self.db_meta) as txn:
                stored = txn.get(b"format")
            if stored != CACHE_FORMAT:
                with self.env.begin(write=True) as txn:
                    if txn.get(b"format", db=self.db_meta) != CACHE_FORMAT:
                        # views are derived data: a cache of another format rebuilds them (chunks stay)
                        for name in viewindex.TABLES:
                            txn.drop(self.env.open_db(name.encode(), txn=txn), delete=False)
                        txn.put(b"format", CACHE_FORMAT, db=self.db_meta)
        self._pins: dict[bytes, int] = {}
        self._pin_lock = threading.Lock()
        self._uses: dict[bytes, int] = {}  # last uses not yet written (see TOUCH_BATCH)
        self._uses_lock = threading.Lock()
        self._uses_flushed = time.monotonic_ns()
        size = parse_size(size if size is not None else settings.cache_size())
        self.budget = size if size is not None else self._default_budget()

    def _default_budget(self) -> int:
        free = shutil.disk_usage(self.root).free
        return (free + self.used_bytes()) // 2

    @contextlib.contextmanager
    def space_checked(self):
        """Around writes to the cache: a full disk or a used-up quota, met by a file write, by LMDB
        (whose failed commit leaves the index as it was) or by materializing into the file store of
        `get`, raises DiskFull naming the cache folder."""
        try:
            yield
        except OSError as exc:
            if exc.errno not in NO_SPACE:
                raise
            raise self._full() from None
        except lmdb.Error as exc:
            if not _lmdb_out_of_space(exc):
                raise
            raise self._full() from None
        except DiskFull:  # dsfs.node.materialize names the folder it writes; under the cache, the cache is the news
            raise self._full() from None

    def _full(self) -> DiskFull:
        return DiskFull(f"no space left on the device of the cache {self.root}; free some space there "
                        f"(`dsfs cache prune` frees what the cache holds) or use another --cache-dir, "
                        f"and run the same command again")

    # -- chunks --------------------------------------------------------------------------------

    def _chunk_path(self, digest: bytes) -> str:
        hexd = digest.hex()
        return os.path.join(self.root, "chunks", hexd[:2], hexd)

    def has_chunk(self, digest: bytes) -> bool:
        with self.env.begin(db=self.db_chunks) as txn:
            return txn.get(digest) is not None

    def get_chunk(self, digest: bytes, raw: int | None = None, in_ram_only: bool = False) -> bytes | None:
        """The verified bytes of a chunk, or None if absent or corrupt (a corrupt one is dropped).
        in_ram_only: read only what the page cache holds (RWF_NOWAIT: never waits for the disk, so
        an event loop may call it) and answer None, keeping the chunk, if any of it is not there."""
        with self.env.begin(db=self.db_chunks, buffers=True) as txn:
            record = txn.get(digest)
            if record is None:
                return None
            size, last_use = _CHUNK.unpack(record)
        try:
            fd = os.open(self._chunk_path(digest), os.O_RDONLY)
        except FileNotFoundError:
            data = None
        else:
            try:
                if in_ram_only:
                    data = _read_in_ram(fd, size)
                    if data is None:
                        return None
                else:
                    data = os.read(fd, size)  # the recorded size: one exact allocation (a hot path of mounts)
            finally:
                os.close(fd)
        if data is None or (raw is not None and len(data) != raw) or blake3.blake3(data).digest() != digest:
            self._drop(digest)
            return None
        now = time.time_ns()
        if now - last_use > TOUCH_INTERVAL_NS:
            self._note_use(digest, now, background=in_ram_only)
        return data

    def put_chunks(self, items) -> None:
        """Store (digest, bytes) chunks that the caller verified (dsfs.store.fetch: decode_chunk checks
        each against its digest; hashing them again here was 4% of a cold read's CPU): each file
        written, then all recorded in one LMDB transaction (a durable commit costs two fsyncs: one
        per chunk made a cold read of a range of small files pay them per file). A full disk raises
        DiskFull and leaves no file that is not recorded."""
        with self.env.begin(db=self.db_chunks) as txn:
            new = [(d, b) for d, b in items if txn.get(d) is None]
        if not new:
            return
        now = time.time_ns()
        try:
            with self.space_checked():
                for digest, data in new:
                    self._write_chunk(digest, data)
                with self.env.begin(write=True) as txn:
                    for digest, data in new:
                        if txn.get(digest, db=self.db_chunks) is None:
                            txn.put(digest, _CHUNK.pack(len(data), now), db=self.db_chunks)
                            txn.put(struct.pack(">Q", now) + digest, b"", db=self.db_lru)
                            self._add_used(txn, len(data))
        except DiskFull:
            with self.env.begin(db=self.db_chunks) as txn:
                unrecorded = [d for d, _ in new if txn.get(d) is None]
            for digest in unrecorded:
                _unlink(self._chunk_path(digest))
            raise
        if self.used_bytes() > self.budget:
            self.evict(int(self.budget * LOW_WATERMARK))

    def _write_chunk(self, digest: bytes, data) -> None:
        """Put a chunk file in place: a temp name of this process and thread (no random name to
        retry), then a rename, so no reader ever sees part of a file."""
        path = self._chunk_path(digest)
        tmp = os.path.join(self.root, "tmp", f"{digest.hex()}.{os.getpid()}.{threading.get_ident()}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
            finally:
                os.close(fd)
            try:
                os.rename(tmp, path)
            except FileNotFoundError:  # the first chunk of its folder
                os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
                os.rename(tmp, path)
        except BaseException:  # a full disk, say: no temp file left behind
            _unlink(tmp)
            raise

    def _note_use(self, digest: bytes, now: int, background: bool = False) -> None:
        """Record a use; write the batch when due, in a thread of its own when `background` (the
        caller is an event loop: a durable LMDB commit must not stall it)."""
        with self._uses_lock:
            self._uses[digest] = now
            if len(self._uses) < TOUCH_BATCH and time.monotonic_ns() - self._uses_flushed < TOUCH_FLUSH_NS:
                return
            uses, self._uses = self._uses, {}
            self._uses_flushed = time.monotonic_ns()
        if background:
            threading.Thread(target=self._write_uses, args=(uses,), name="dsfs-uses", daemon=True).start()
        else:
            self._write_uses(uses)

    def flush_uses(self) -> None:
        """Write the recorded last uses (uses not yet written are lost if the process dies: the LRU
        order is then slightly off, nothing else)."""
        with self._uses_lock:
            uses, self._uses = self._uses, {}
            self._uses_flushed = time.monotonic_ns()
        self._write_uses(uses)

    def _write_uses(self, uses: dict[bytes, int]) -> None:
        if not uses:
            return
        try:
            with self.env.begin(write=True) as txn:
                for digest, now in uses.items():
                    record = txn.get(digest, db=self.db_chunks)
                    if record is None:
                        continue
                    size, last_use = _CHUNK.unpack(record)
                    if last_use >= now:
                        continue
                    txn.delete(struct.pack(">Q", last_use) + digest, db=self.db_lru)
                    txn.put(struct.pack(">Q", now) + digest, b"", db=self.db_lru)
                    txn.put(digest, _CHUNK.pack(size, now), db=self.db_chunks)
        except lmdb.Error as exc:
            if not _lmdb_out_of_space(exc):
                raise
            # last uses only order evictions: on a full disk they are dropped, and the read goes on

    def _drop(self, digest: bytes) -> None:
        with self.space_checked(), self.env.begin(write=True) as txn:
            record = txn.get(digest, db=self.db_chunks)
            if record is not None:
                size, last_use = _CHUNK.unpack(record)
                txn.delete(digest, db=self.db_chunks)
                txn.delete(struct.pack(">Q", last_use) + digest, db=self.db_lru)
                self._add_used(txn, -size)
        _unlink(self._chunk_path(digest))

    # -- pins ----------------------------------------------------------------------------------

    def pin(self, digests) -> None:
        with self._pin_lock:
            for d in digests:
                self._pins[d] = self._pins.get(d, 0) + 1

    def unpin(self, digests) -> None:
        with self._pin_lock:
            for d in digests:
                left = self._pins.get(d, 0) - 1
                if left > 0:
                    self._pins[d] = left
                else:
                    self._pins.pop(d, None)

    # -- budget --------------------------------------------------------------------------------

    def _add_used(self, txn, delta: int) -> None:
        used = int(txn.get(b"used", b"0", db=self.db_meta)) + delta
        txn.put(b"used", str(max(used, 0)).encode(), db=self.db_meta)

    def used_bytes(self) -> int:
        with self.env.begin(db=self.db_meta) as txn:
            return int(txn.get(b"used", b"0"))

    def chunk_count(self) -> int:
        with self.env.begin() as txn:
            return txn.stat(self.db_chunks)["entries"]

    def evict(self, target: int, keep_recent: bool = True) -> int:
        """Drop least recently used chunks until at most `target` bytes remain. Returns bytes freed."""
        self.flush_uses()
        freed = 0
        now = time.time_ns()
        victims = []
        with self.space_checked(), self.env.begin(write=True) as txn:
            used = int(txn.get(b"used", b"0", db=self.db_meta))
            cursor = txn.cursor(db=self.db_lru)
            for key, _ in cursor:
                if used - freed <= target:
                    break
                last_use, digest = struct.unpack(">Q", key[:8])[0], bytes(key[8:])
                if keep_recent and now - last_use < RECENT_NS:
                    break  # LRU order: everything after this is recent too
                with self._pin_lock:
                    if digest in self._pins:
                        continue
                record = txn.get(digest, db=self.db_chunks)
                size = _CHUNK.unpack(record)[0] if record else 0
                txn.delete(digest, db=self.db_chunks)
                cursor.delete()
                freed += size
                victims.append(digest)
            self._add_used(txn, -freed)
        for digest in victims:  # after commit: a record never names a missing file
            _unlink(self._chunk_path(digest))
        return freed

    def sweep_temp(self) -> int:
        """Remove temp files left by killed processes (a chunk or change-set being written; locks
        stay): any older than TEMP_AGE_S, which no live write takes. Returns bytes freed."""
        freed = 0
        cutoff = time.time() - TEMP_AGE_S
        with os.scandir(os.path.join(self.root, "tmp")) as it:
            for entry in it:
                if entry.name.endswith(".lock") or not entry.is_file(follow_symlinks=False):
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue  # a live write renamed its temp file into place since the listing
                if st.st_mtime < cutoff:
                    _unlink(entry.path)
                    freed += st.st_size
        return freed

    def clear(self) -> int:
        """Drop every chunk, view, file table and change-set copy: all the cache derived from stores
        (not what is pinned by this process). Returns bytes freed."""
        freed = self.evict(0, keep_recent=False) + self.sweep_temp()
        viewindex.drop_all_views(self)
        for derived in ("tables", "changesets"):  # put_changeset makes its folder again
            shutil.rmtree(os.path.join(self.root, derived), ignore_errors=True)
        return freed

    def stats(self) -> dict:
        """What the cache holds. `bytes` is the chunks' and the copies' bytes together (`prune --to`
        counts both); the budget that reads trim the cache to automatically counts chunks only."""
        from dsfs.node.copies import usage

        chunk_bytes, copies = self.used_bytes(), usage(self)
        return {"dir": self.root, "chunks": self.chunk_count(), "chunk_bytes": chunk_bytes, "copies": copies.copies,
                "copy_bytes": copies.bytes, "bytes": chunk_bytes + copies.bytes, "budget": self.budget,
                "views": len(viewindex.list_views(self))}

    # -- change-sets ---------------------------------------------------------------------------

    def changeset_path(self, dataset_id: str) -> str:
        return os.path.join(self.root, "changesets", dataset_id)

    def put_changeset(self, dataset_id: str, data: bytes) -> str:
        """Keep a change-set read from a store. Written to a temp name and renamed, not fsynced:
        open_changeset checks every use against the digest, so one a power cut tore is fetched again
        (a first build of a 10,000-version lineage would otherwise wait for 10,000 fsyncs)."""
        path = self.changeset_path(dataset_id)
        tmp = os.path.join(self.root, "tmp", f"changeset-{dataset_id}.{os.getpid()}.{threading.get_ident()}")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
            try:
                os.replace(tmp, path)
            except FileNotFoundError:  # `cache clear` removed the folder
                os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
                os.replace(tmp, path)
        except BaseException:
            _unlink(tmp)
            raise
        return path

    def open_changeset(self, dataset_id: str, size: int | None, digest: str | None):
        """The node's copy of a change-set, open at its start, if it is the one a version record
        names (its size and blake3 digest, hashed from the open file: what is checked is what is
        read); None if there is none or it is damaged (the caller fetches it again)."""
        try:
            f = open(self.changeset_path(dataset_id), "rb")
        except FileNotFoundError:
            return None
        try:
            hasher = blake3.blake3()
            if os.fstat(f.fileno()).st_size == size:
                for block in iter(lambda: f.read(1 << 20), b""):
                    hasher.update(block)
                if hasher.hexdigest() == digest:
                    f.seek(0)
                    return f
        except BaseException:
            f.close()
            raise
        f.close()
        return None


# Held weakly: an environment maps 1 TiB of address space and a process can map about 126, so one
# is closed (unmapped) once no Cache, transaction or view holds it; a later Cache opens it again.
_ENVS: weakref.WeakValueDictionary[tuple[int, str], lmdb.Environment] = weakref.WeakValueDictionary()
_ENVS_LOCK = threading.Lock()


def _open_env(path: str) -> lmdb.Environment:
    """One LMDB environment per path and process (LMDB refuses a second open in one process, and an
    environment must not cross a fork: the key includes the pid)."""
    key = (os.getpid(), path)
    with _ENVS_LOCK:
        env = _ENVS.get(key)
        if env is None:
            _reserve_lock_file(path)
            env = lmdb.open(path, map_size=1 << 40, max_dbs=16, max_readers=MAX_READERS, subdir=True)
            env.reader_check()  # clear reader slots of killed processes
            _ENVS[key] = env
        return env


def _reserve_lock_file(path: str) -> None:
    """Give a new LMDB lock file its disk blocks before LMDB opens it. LMDB sizes the file with
    ftruncate (no blocks) and writes its reader table through a shared map: on a full disk, the first
    write to a page the file system cannot back kills the process with SIGBUS, no error returned. So
    the file is allocated under a temp name and linked into place, where a concurrent opener finds
    none or a whole one (allocating a file that is in use could race with LMDB's writes where the
    file system emulates fallocate). An existing lock file is left as it is; where the file system
    cannot allocate or link, LMDB creates the file as before."""
    lock = os.path.join(path, "lock.mdb")
    if os.path.exists(lock):
        return
    os.makedirs(path, exist_ok=True)
    tmp = f"{lock}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.posix_fallocate(fd, 0, LOCK_FILE_BYTES)
        os.link(tmp, lock)
    except FileExistsError:
        pass  # another process made it meanwhile
    except OSError as exc:
        if exc.errno in NO_SPACE:
            raise
    finally:
        os.close(fd)
        _unlink(tmp)


def _lmdb_out_of_space(exc: lmdb.Error) -> bool:
    """LMDB reports ENOSPC as DiskError; other errnos only in its message."""
    return isinstance(exc, lmdb.DiskError) or os.strerror(errno.EDQUOT) in str(exc)


def _read_in_ram(fd: int, size: int) -> bytes | None:
    """`size` bytes from the start of fd if the page cache holds them all, else None."""
    flag = getattr(os, "RWF_NOWAIT", None)
    if flag is None:
        return None
    buf = bytearray(size)
    try:
        got = os.preadv(fd, [buf], 0, flag)
    except OSError:  # EAGAIN: some of it is on disk only (or the flag is not supported here)
        return None
    return bytes(buf) if got == size else None


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
