"""The node cache: chunk bytes in files (small chunks in LMDB), indexed by one LMDB environment shared by
every process.

Layout under `$DSFS_CACHE_DIR` (default `$XDG_CACHE_HOME/dsfs`):

    index.lmdb/          LMDB: chunk records, LRU order, small chunks' bytes (table `small`), block
                         hashes, view indexes (see dsfs.lineage.viewindex)
    chunks/<ab>/<hex>    one file per chunk bigger than SMALL (64 KiB), named by its blake3 digest
    changesets/<id>      change-sets of versions seen, verified against their version record
    tables/<id>          file tables of versions closed here, for authoring children (dsfs.lineage.filetable)
    files/, copies/      the digest-addressed file store and cached copies of `get`, with what each
    links                was when written and the `get --link` symlinks into them (see dsfs.node.copies)

A chunk file is written to a temp name and renamed, and only then recorded in LMDB, so a record
always names a complete file while the machine stays up (a killed process included). Records are
group-committed (`_commit_records`): the caller of `put_chunks` returns once its files are in place,
and a committer thread writes the records of every fetch that arrived meanwhile in one durable
transaction (a commit costs two fsyncs, 1-3 ms: one per fetched chunk capped a cold shuffled epoch
through a mount at ~350 files/s). Until then this process finds the chunks in `_PendingRecords`; another
process does not, and fetches them again. A process killed before the commit loses only records: the
chunks are fetched again, never served wrong (tests/test_resources.py kills one mid-commit).

A chunk of at most SMALL bytes gets no file: its bytes wait in memory with its record and are
committed with it, in the same transaction (creating a file cost 0.6-1.1 ms on the disk measured, an
LMDB put of 32 KiB 0.16 ms: a file per small chunk was a third of a cold shuffled epoch's time). It
is read from LMDB's map and verified against its digest like a file; a cache written before small
chunks moved keeps its small chunk files, which are still read, evicted and dropped as files. LMDB
reuses the pages of evicted small chunks for new ones; it does not give them back to the disk, so
`index.lmdb` stays as big as the most small chunks it ever held (at most the budget).

Chunk files are not fsynced: every chunk is verified against its digest when it is fetched (before it is stored)
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

Random reads (`read_blocks`) do not re-read and re-hash a whole chunk (~1.25 MiB) for a 4 KiB
read: the first one of a chunk reads and verifies it whole and records (`note_blocks`) the hashes of its
BLOCK-sized blocks (an outboard list, as Bao or mountpoint-s3's checksummed blocks do: here a flat
list, as Python's blake3 does not expose its tree's chaining values) in LMDB's `blocks` table;
later ones read and check only the blocks they touch. The list is made only from bytes verified
against the chunk's digest, and is sealed by a hash keyed with that digest, so a damaged list is
made again and a damaged block fails its check (the chunk is then dropped and fetched again).
The chunk reader (`ChunkReader.read_part`) keeps a chunk read whole in memory as well, so random
reads over a span that fits in its memory are served from there.

Budget: `size` bytes (`--cache-size`, `$DSFS_CACHE_SIZE`, default half of what the cache and the
free space of its disk add up to). Going over the budget (high watermark) evicts least recently used
chunks down to 90% of it (low watermark). Chunks pinned by this process (open files of a mount) are
never evicted, nor are chunks used in the last minute by any process.

Forks (a DataLoader's workers, a multiprocessing pool): LMDB forbids using an environment in a
process forked after it was opened, and py-lmdb refuses to open the same files again in a process
while one is open. So a forked child closes the environments it inherited, and every Cache made
before the fork opens the child's own on its first use (`Cache._forked`, `_Reopening`); the child
also gets its own locks, record committer and pending records (the parent commits its records before
the fork, so the child finds the chunks stored so far). Closing is safe only with no transaction
under way: py-lmdb's close aborts every transaction open in the environment, and aborting a read
transaction frees its slot in the reader table shared with the parent (LMDB 0.9 with MDB_NOTLS
writes pid 0 there), after which a writer may reuse pages a parent thread is still reading;
mdb_env_close itself clears only the slots of the child's own pid. So every transaction, and every
open and close of an environment, goes through `Environment.begin` and the fork gate (`_Gate`):
before a fork (os.register_at_fork) the gate holds new ones and waits for those of other threads to
end. None is then under way, so no thread of the parent holds a reader slot or LMDB's write mutex
across the fork, and the close in the child touches nothing of the parent's. A fork from inside a
transaction of the forking thread (or while another thread holds one past FORK_WAIT_S) leaves that
environment open and unused in the child, which then cannot use that cache folder (UsageError,
saying why); the parent is not affected.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import logging
import os
import re
import shutil
import struct
import sys
import threading
import time
import weakref
from typing import Any, cast

import blake3
import lmdb

from dsfs import settings
from dsfs.errors import DiskFull, UsageError
from dsfs.fsutil import NO_SPACE
from dsfs.lineage import viewindex

log = logging.getLogger(__name__)

LOW_WATERMARK = 0.9
TOUCH_INTERVAL_NS = 60 * 10**9  # a chunk's last use is recorded at most once a minute...
TOUCH_BATCH = 1024  # ...and recorded uses are written together, one write txn per batch or per
TOUCH_FLUSH_NS = 5 * 10**9  # 5 s: a durable write txn per read (1 ms, serialized) would cap reads
RECENT_NS = 60 * 10**9
COMMITTER_IDLE_S = 2.0  # the committer thread (one per process) ends after this long with nothing to record
TEMP_AGE_S = 3600  # a temp file this old in tmp/ was left by a killed process (writes take milliseconds)
CACHE_FORMAT = b"2"  # 2: view records keyed by a view number (dsfs.lineage.viewindex)

_CHUNK = struct.Struct(">QQ")  # stored size, last use (ns)
BLOCK = 64 << 10  # random reads check blocks of this size: a 4 KiB read costs a 64 KiB read and hash (~30 us)
SMALL = BLOCK  # a chunk of at most this many bytes is kept in LMDB's `small` table, not in a file of its own
_SEAL = 16  # bytes of the keyed hash that seals a chunk's list of block hashes
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

    env: Environment  # (in a forked child, a _Reopening until its first use: see _forked)
    view_dbs: dict[str, Any]

    def __init__(self, root: str | None = None, size: int | str | None = None):
        self.root = os.path.abspath(root or settings.cache_dir())
        with self.space_checked():
            for sub in ("chunks", "changesets", "tmp"):
                os.makedirs(os.path.join(self.root, sub), mode=0o700, exist_ok=True)
            self._attach(_open_env(os.path.join(self.root, "index.lmdb")))
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
        self._new_locks()
        _LIVE.add(self)
        size = parse_size(size if size is not None else settings.cache_size())
        self.budget = size if size is not None else self._default_budget()

    def _attach(self, env: Environment) -> None:
        """Use `env` (this process's environment of the cache folder): its tables, and the records
        pending in it (shared by every Cache of this folder in this process). `env` is set last, so
        a thread that finds it finds the tables that go with it (see _reattach)."""
        self.db_chunks = open_db(env, b"chunks")
        self.db_lru = open_db(env, b"lru")
        self.db_meta = open_db(env, b"meta")
        self.db_blocks = open_db(env, b"blocks")
        self.db_small = open_db(env, b"small")
        view_dbs = {name: open_db(env, name.encode()) for name in viewindex.TABLES}
        if "view_dbs" in self.__dict__:
            self.view_dbs.update(view_dbs)  # in place: a ViewIndex holds this dict
        else:
            self.view_dbs = view_dbs
        self._pending = env.pending
        self.env = env

    def _new_locks(self) -> None:
        self._pin_lock = threading.Lock()
        self._blocks_known = _BlocksKnown()  # its lock too: another thread may have held it at a fork
        self._uses: dict[bytes, int] = {}  # last uses not yet written (see TOUCH_BATCH)
        self._uses_lock = threading.Lock()
        self._uses_flushed = time.monotonic_ns()
        self._reattach_lock = threading.Lock()

    def _forked(self) -> None:
        """In a forked child (see Forks in the module doc): the environment inherited is not used
        again; the first use of `env` opens this process's own. Locks another thread of the parent
        may have held are made anew, and the parent's last uses are left to the parent."""
        self._new_locks()
        self._pending = _PendingRecords()  # until _reattach: a commit before any use has nothing to do
        self.env = cast(Environment, _Reopening(self))  # it opens one, then stands for it

    def _reattach(self) -> Environment:
        """This process's environment of the cache folder, opened on the first use after a fork."""
        with self._reattach_lock:
            if isinstance(self.env, _Reopening):
                with self.space_checked():
                    self._attach(_open_env(os.path.join(self.root, "index.lmdb")))
            return self.env

    def _default_budget(self) -> int:
        free = shutil.disk_usage(self.root).free
        return (free + self._used()) // 2

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
        return f"{self.root}/chunks/{hexd[:2]}/{hexd}"  # (os.path.join: +8 us a random read)

    def has_chunk(self, digest: bytes) -> bool:
        with self.env.begin(db=self.db_chunks, buffers=True) as txn:
            return self._size_and_use(txn, digest) is not None

    def _size_and_use(self, txn, digest: bytes) -> tuple[int, int] | None:
        """(size, last use) of a chunk the cache holds: recorded, or in place and its record pending."""
        record = txn.get(digest, db=self.db_chunks)
        return _CHUNK.unpack(record) if record is not None else self._pending.chunks.get(digest)

    def get_chunk(self, digest: bytes, raw: int | None = None, in_ram_only: bool = False) -> bytes | None:
        """The verified bytes of a chunk, or None if absent or corrupt (a corrupt one is dropped).
        in_ram_only: read only what the page cache holds (RWF_NOWAIT: never waits for the disk, so
        an event loop may call it) and answer None, keeping the chunk, if any of it is not there; it
        writes nothing (a corrupt or missing chunk is left to a worker's read, which drops it). A
        small chunk is read from LMDB's map either way, as the view index's records are."""
        held, data = self._lookup(digest)
        if held is not None and data is None and held[0] <= SMALL:
            held, data = self._lookup(digest)  # a commit may have taken it from memory to LMDB meanwhile
        if held is None:
            return None
        size, last_use = held
        if data is None:  # a chunk file (small chunks too in a cache written before they moved into LMDB)
            try:
                data = self._file_bytes(digest, size, in_ram_only)
            except BlockingIOError:
                return None
        if data is None or (raw is not None and len(data) != raw) or blake3.blake3(data).digest() != digest:
            if not in_ram_only:
                self._drop(digest)
            return None
        now = time.time_ns()
        if now - last_use > TOUCH_INTERVAL_NS:
            self._note_use(digest, now, background=in_ram_only)
        return data

    def _lookup(self, digest: bytes) -> tuple[tuple[int, int] | None, bytes | None]:
        """(size, last use) of a chunk the cache holds (None if it does not), and its bytes if it is
        small and they are in LMDB or in memory (unverified), in one transaction."""
        with self.env.begin(db=self.db_chunks, buffers=True) as txn:
            held = self._size_and_use(txn, digest)
            return held, self._small_bytes(txn, digest) if held is not None and held[0] <= SMALL else None

    def _small_bytes(self, txn, digest: bytes) -> bytes | None:
        """A small chunk's bytes (unverified) from the `small` table, or from the chunks stored by this
        process and not yet committed."""
        value = txn.get(digest, db=self.db_small)
        if value is not None:
            return bytes(value)
        return self._pending.small.get(digest)

    def _file_bytes(self, digest: bytes, size: int, in_ram_only: bool) -> bytes | None:
        """A chunk file's bytes (unverified), None if there is no file; in_ram_only raises
        BlockingIOError if some of it is not in the page cache."""
        try:
            fd = os.open(self._chunk_path(digest), os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            if in_ram_only:
                data = _read_in_ram(fd, size)
                if data is None:
                    raise BlockingIOError(errno.EAGAIN, "not in the page cache")
                return bytes(data)
            return os.read(fd, size)  # the recorded size: one exact allocation (a hot path of mounts)
        finally:
            os.close(fd)

    def read_blocks(self, digest: bytes, raw: int, lo: int, hi: int, in_ram_only: bool = False) -> bytes | None:
        """Verified bytes [lo, hi) of a chunk of `raw` bytes, reading and checking only the BLOCKs
        they touch (see the module doc). None if the node cache lacks the chunk or its block hashes
        (the caller reads it whole, then `note_blocks`), or if a block is damaged (the chunk is then
        dropped, and the caller fetches it again).

        in_ram_only (an event loop's thread): read only what the page cache holds (RWF_NOWAIT) and
        write nothing: None, keeping the chunk, if a block is not there or does not check out (the
        caller then reads on a worker thread, which drops a damaged chunk)."""
        known = self._blocks_known.get(digest)
        remembered = known is not None
        if known is None:
            with self.env.begin(buffers=True) as txn:
                held = self._size_and_use(txn, digest)
                in_db = txn.get(digest, db=self.db_blocks)
                sealed = bytes(in_db) if in_db is not None else self._pending.blocks.get(digest)
            if held is None or held[0] <= SMALL:  # a small chunk is one block: the caller reads it whole
                return None
            hashes = _unseal(digest, sealed, held[0]) if sealed is not None else None
            if hashes is None:
                return None
            known = self._blocks_known.put(digest, held[0], hashes, held[1])
        size, hashes, last_use = known
        if size != raw:
            return None
        try:
            fd = os.open(self._chunk_path(digest), os.O_RDONLY)
        except FileNotFoundError:
            self._blocks_known.pop(digest)
            if remembered:  # then evicted (by another process too): look its record up again
                return self.read_blocks(digest, raw, lo, hi, in_ram_only)
            if not in_ram_only:
                self._drop(digest)  # a record that names a missing file
            return None
        try:
            first, stop = lo // BLOCK, min((hi + BLOCK - 1) // BLOCK, len(hashes))
            length = min(stop * BLOCK, size) - first * BLOCK
            span = _read_in_ram(fd, length, first * BLOCK) if in_ram_only else os.pread(fd, length, first * BLOCK)
        finally:
            os.close(fd)
        if span is None:
            return None
        view = memoryview(span)
        for n in range(first, stop):
            if blake3.blake3(view[(n - first) * BLOCK:(n - first + 1) * BLOCK]).digest() != hashes[n]:
                if not in_ram_only:
                    self._drop(digest)
                return None
        now = time.time_ns()
        if now - last_use > TOUCH_INTERVAL_NS:
            known[2] = now
            self._note_use(digest, now, background=in_ram_only)
        return bytes(view[lo - first * BLOCK:hi - first * BLOCK])

    def note_blocks(self, digest: bytes, data: bytes) -> None:
        """Record the block hashes of a chunk whose bytes the caller verified (with the next commit),
        unless they are recorded (and intact). A small chunk is one block: it has none."""
        if len(data) <= SMALL:
            return
        with self.env.begin(db=self.db_blocks) as txn:
            sealed = txn.get(digest)
            if digest in self._pending.blocks or sealed is not None and _unseal(digest, bytes(sealed), len(data)):
                return
        view = memoryview(data)
        hashes = b"".join(blake3.blake3(view[i:i + BLOCK]).digest() for i in range(0, len(data), BLOCK))
        with self._pending.lock:
            self._pending.blocks[digest] = blake3.blake3(hashes, key=digest).digest()[:_SEAL] + hashes
        _COMMITTER.due(self)

    def put_chunks(self, items) -> None:
        """Store (digest, bytes) chunks that the caller verified (dsfs.store.fetch: decode_chunk checks
        each against its digest; hashing them again here was 4% of a cold read's CPU): each file
        written and renamed into place here, their records committed soon after by the committer
        thread together with those of concurrent callers (see the module doc; `flush` waits for
        them); small chunks are committed with their records, kept in memory until then. A full
        disk raises DiskFull and leaves no file of this call that is not recorded."""
        with self.env.begin(db=self.db_chunks, buffers=True) as txn:
            new = [(d, b) for d, b in items if self._size_and_use(txn, d) is None]
        if not new:
            return
        now = time.time_ns()
        written: list[bytes] = []
        try:
            with self.space_checked():
                for digest, data in new:
                    if len(data) > SMALL:
                        self._write_chunk(digest, data)
                        written.append(digest)
        except DiskFull:
            for digest in written:
                _unlink(self._chunk_path(digest))
            raise
        with self._pending.lock:
            for digest, data in new:
                if digest not in self._pending.chunks:
                    self._pending.chunks[digest] = (len(data), now)
                    if len(data) <= SMALL:  # a copy: `data` may be a view that holds a whole fetched range
                        self._pending.small[digest] = bytes(data)
        _COMMITTER.due(self)

    def _commit_records(self) -> None:
        """Record the chunk files in place not yet recorded, in one durable transaction. A full disk
        removes their files (nothing unrecorded stays) and is raised by the next `flush`."""
        with self._pending.commit_lock:
            with self._pending.lock:  # (what a commit took leaves `chunks` when it ends, under commit_lock)
                items = list(self._pending.chunks.items())
                small = dict(self._pending.small)
                blocks = dict(self._pending.blocks)
            if not items and not blocks:
                return
            try:
                with self.space_checked(), self.env.begin(write=True) as txn:
                    for digest, (size, now) in items:
                        if txn.get(digest, db=self.db_chunks) is None:
                            if digest in small:
                                txn.put(digest, small[digest], db=self.db_small)
                            txn.put(digest, _CHUNK.pack(size, now), db=self.db_chunks)
                            txn.put(struct.pack(">Q", now) + digest, b"", db=self.db_lru)
                            self._add_used(txn, size)
                    for digest, sealed in blocks.items():
                        if txn.get(digest, db=self.db_chunks) is not None:  # (not evicted meanwhile)
                            txn.put(digest, sealed, db=self.db_blocks)
                with self._pending.lock:
                    for digest in blocks:
                        self._pending.blocks.pop(digest, None)
            except DiskFull as exc:
                for digest, _ in items:
                    if digest not in small:  # (a small chunk has no file: its bytes go with the records)
                        _unlink(self._chunk_path(digest))
                self._pending.error = exc
            finally:
                with self._pending.lock:
                    for digest, _ in items:
                        self._pending.chunks.pop(digest, None)
                        self._pending.small.pop(digest, None)
            if self._used() > self.budget:  # under the lock: a flush returns with the budget kept
                self.evict(int(self.budget * LOW_WATERMARK))

    def flush(self) -> None:
        """Commit the records of chunks stored so far and the last uses noted (what a process that
        stored chunks does before it reports success or exits). Raises DiskFull if a commit failed
        for lack of space since the last flush."""
        self._commit_records()
        self.flush_uses()
        error, self._pending.error = self._pending.error, None
        if error is not None:
            raise error

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
        self._blocks_known.pop(digest)
        with self._pending.lock:
            self._pending.chunks.pop(digest, None)
            self._pending.small.pop(digest, None)
            self._pending.blocks.pop(digest, None)
        with self.space_checked(), self.env.begin(write=True) as txn:
            record = txn.get(digest, db=self.db_chunks)
            if record is not None:
                size, last_use = _CHUNK.unpack(record)
                txn.delete(digest, db=self.db_chunks)
                txn.delete(struct.pack(">Q", last_use) + digest, db=self.db_lru)
                self._add_used(txn, -size)
            txn.delete(digest, db=self.db_blocks)
            txn.delete(digest, db=self.db_small)
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
        """Bytes of the chunks recorded, once those stored so far are (`flush`)."""
        self._commit_records()
        return self._used()

    def _used(self) -> int:
        with self.env.begin(db=self.db_meta) as txn:
            return int(txn.get(b"used", b"0"))

    def chunk_count(self) -> int:
        self._commit_records()
        with self.env.begin() as txn:
            return txn.stat(self.db_chunks)["entries"]

    def evict(self, target: int, keep_recent: bool = True) -> int:
        """Drop least recently used chunks until at most `target` bytes remain. Returns bytes freed."""
        self._commit_records()
        self.flush_uses()
        freed = 0
        now = time.time_ns()
        victims = []
        with self.space_checked(), self.env.begin(write=True) as txn:
            used = int(txn.get(b"used", b"0", db=self.db_meta))
            cursor = txn.cursor(db=self.db_lru)
            cursor.first()
            # by hand, not `for key in cursor`: a delete moves the cursor to the next key, and the
            # loop's own step then skipped it (an older chunk kept, a newer one evicted in its place)
            while (key := bytes(cursor.key())) and used - freed > target:
                last_use, digest = struct.unpack(">Q", key[:8])[0], key[8:]
                if keep_recent and now - last_use < RECENT_NS:
                    break  # LRU order: everything after this is recent too
                with self._pin_lock:
                    pinned = digest in self._pins
                if pinned:
                    cursor.next()
                    continue
                record = txn.get(digest, db=self.db_chunks)
                size = _CHUNK.unpack(record)[0] if record else 0
                txn.delete(digest, db=self.db_chunks)
                txn.delete(digest, db=self.db_blocks)
                if size > SMALL or not txn.delete(digest, db=self.db_small):
                    victims.append(digest)  # a file (or a small chunk of a cache written before SMALL)
                cursor.delete()
                freed += size
            self._add_used(txn, -freed)
        for digest in victims:  # after commit: a record never names a missing file
            self._blocks_known.pop(digest)
            _unlink(self._chunk_path(digest))
        return freed

    def sweep_temp(self) -> int:
        """Remove what killed processes left (locks stay): temp files (a chunk or change-set being
        written), and chunk files in place whose records were never committed (a process killed
        between a chunk's rename and its group commit); any older than TEMP_AGE_S, which no live
        write takes. Returns bytes freed."""
        freed = 0
        cutoff = time.time() - TEMP_AGE_S
        for entry in self._old_files(os.path.join(self.root, "tmp"), cutoff):
            if not entry.name.endswith(".lock"):
                freed += self._remove(entry)
        chunks = os.path.join(self.root, "chunks")
        with os.scandir(chunks) as folders:
            names = [entry.name for entry in folders if entry.is_dir(follow_symlinks=False)]
        for name in names:
            old = list(self._old_files(os.path.join(chunks, name), cutoff))
            with self.env.begin(db=self.db_chunks, buffers=True) as txn:
                unrecorded = [e for e in old if _is_digest(e.name)
                              and self._size_and_use(txn, bytes.fromhex(e.name)) is None]
            freed += sum(self._remove(entry) for entry in unrecorded)
        return freed

    @staticmethod
    def _old_files(folder: str, cutoff: float):
        """(entry, with its stat) of the plain files in `folder` last changed before `cutoff`."""
        with os.scandir(folder) as it:
            for entry in it:
                if not entry.is_file(follow_symlinks=False):
                    continue
                try:
                    if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                        yield entry
                except FileNotFoundError:
                    continue  # a live write renamed it since the listing

    @staticmethod
    def _remove(entry: os.DirEntry) -> int:
        size = entry.stat(follow_symlinks=False).st_size
        _unlink(entry.path)
        return size

    def clear(self) -> int:
        """Drop every chunk, view, file table and change-set copy: all the cache derived from stores
        (not what is pinned by this process). Returns bytes freed."""
        freed = self.evict(0, keep_recent=False) + self.sweep_temp()
        viewindex.drop_all_views(self)
        for derived in ("tables", "changesets", "catalog"):  # each is made again on first use
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

    @contextlib.contextmanager
    def writing_changeset(self, dataset_id: str):
        """A file to write a change-set read from a store into, kept when the block ends without
        error. Written to a temp name and renamed, not fsynced: open_changeset checks every use
        against the digest, so one a power cut tore is fetched again (a first build of a
        10,000-version lineage would otherwise wait for 10,000 fsyncs)."""
        path = self.changeset_path(dataset_id)
        tmp = os.path.join(self.root, "tmp", f"changeset-{dataset_id}.{os.getpid()}.{threading.get_ident()}")
        try:
            with open(tmp, "wb") as f:
                yield f
            try:
                os.replace(tmp, path)
            except FileNotFoundError:  # `cache clear` removed the folder
                os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
                os.replace(tmp, path)
        except BaseException:
            _unlink(tmp)
            raise

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


class _PendingRecords:
    """What the chunks of one cache folder stored by this process wait for: their records (and the
    block hashes of chunks read at random), until the committer or a flush commits them. One per
    Environment, shared by every Cache of that folder in this process (a second Cache, such as an
    in-process `cache stats`, must see the chunks the first one stored)."""

    def __init__(self):
        self.chunks: dict[bytes, tuple[int, int]] = {}  # digest -> (size, stored at): files in place, not recorded
        self.small: dict[bytes, bytes] = {}  # digest -> bytes of the small chunks among them (not in files)
        self.blocks: dict[bytes, bytes] = {}  # digest -> sealed block hashes, not recorded
        self.lock = threading.Lock()  # guards the three above
        self.commit_lock = threading.RLock()  # one commit at a time (the committer or a flush; reentrant:
        # a commit over the budget evicts, and evict commits what is due first)
        self.error: DiskFull | None = None  # a failed background commit, raised by the next flush


class _Committer:
    """The process's one thread that commits chunk records (`Cache._commit_records`) for every Cache
    with records due, the records that came while the last commit ran together. It holds a Cache
    only while its records are due, so a Cache no one uses closes its LMDB environment (see _ENVS),
    and ends after COMMITTER_IDLE_S with nothing to do."""

    def __init__(self):
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.caches: dict[int, Cache] = {}  # id -> Cache with records due
        self.thread: threading.Thread | None = None

    def due(self, cache: Cache) -> None:
        with self.lock:
            self.caches[id(cache)] = cache
            if self.thread is None or not self.thread.is_alive():  # (a forked child's copy is not alive)
                self.thread = threading.Thread(target=self._run, name="dsfs-records", daemon=True)
                self.thread.start()
        self.wake.set()

    def _run(self) -> None:
        while True:
            if not self.wake.wait(COMMITTER_IDLE_S):
                with self.lock:
                    if not self.caches:
                        self.thread = None
                        return
            self.wake.clear()
            with self.lock:
                caches, self.caches = list(self.caches.values()), {}
            for cache in caches:
                try:
                    cache._commit_records()
                except Exception:  # noqa: BLE001 - records are a shortcut: their chunks are fetched again
                    log.warning("recording chunks in the node cache %s failed; they will be fetched again",
                                cache.root, exc_info=True)
            del caches


_COMMITTER = _Committer()


# Caches of this process, so that records not yet committed are committed at exit (a process that
# ends normally loses none; a killed one loses only records, see the module doc).
_LIVE: weakref.WeakSet[Cache] = weakref.WeakSet()


def _live() -> list[Cache]:
    """The Caches of this process (a Cache made by another thread meanwhile may be missed)."""
    for _ in range(10):
        try:
            return list(_LIVE)
        except RuntimeError:  # changed size during iteration
            continue
    return []


@atexit.register
def _commit_at_exit() -> None:
    for cache in _live():
        try:
            cache._commit_records()
        except Exception:  # noqa: BLE001 - at exit, a record lost costs a fetch, never a wrong byte
            pass


class _Hook:
    """(multiprocessing.util.register_after_fork holds the object it is given weakly)"""


_COMMIT_AT_EXIT = _Hook()


# -- this process's environments, and forks -------------------------------------------------------

class _Gate:
    """The LMDB operations under way in this process (transactions, opening and closing an
    environment), so that a fork can wait for them to end and hold new ones until it is done (see
    Forks in the module doc). An operation is entered by the thread that begins it: the forking
    thread's own are not waited for (it cannot end them), but they make the child unable to close
    what it inherited.

    The way in takes no lock (an LMDB read transaction costs 0.7-1.3 us here, a gate with a lock
    another 0.9, this one 0.3): a thread appends itself to `holders`, then looks at `closer`; the
    fork sets `closer`, then looks at `holders`. Under the GIL one of them sees the other (an append
    and a read of an attribute are atomic and ordered), so either the fork waits for that thread or
    the thread backs out and waits for the fork."""

    def __init__(self):
        self.holders: list[int] = []  # the thread of each operation under way (a thread once per operation)
        self.closer: int | None = None  # the thread about to fork, while it holds new operations
        self.changed = threading.Condition()

    def enter(self) -> int:
        """Begin an operation; returns the holder to leave with."""
        me = threading.get_ident()
        self.holders.append(me)
        if self.closer is not None and self.closer != me:
            self._wait_open(me)
        return me

    def _wait_open(self, me: int) -> None:
        self.leave(me)
        with self.changed:
            while self.closer is not None and self.closer != me:
                self.changed.wait()
            self.holders.append(me)  # (under the condition's lock: a new close waits for it, and sees it)

    def leave(self, holder: int) -> None:
        """End an operation begun by `holder` (it may end in another thread: a read transaction can
        move between threads, and a finalizer runs in any)."""
        self.holders.remove(holder)
        if self.closer is not None:
            self.notify()

    def notify(self) -> None:
        with self.changed:
            self.changed.notify_all()

    def close(self, timeout: float) -> bool:
        """Hold the new operations of other threads and wait for theirs to end. False if this thread
        has some under way, or the others did not end within `timeout` seconds."""
        me = threading.get_ident()
        deadline = time.monotonic() + timeout
        with self.changed:
            while self.closer is not None:  # another thread forking at the same time goes first
                self.changed.wait()
            self.closer = me
            while any(holder != me for holder in list(self.holders)):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.changed.wait(min(left, 0.1))
            return me not in self.holders

    def open(self) -> None:
        with self.changed:
            self.closer = None
            self.changed.notify_all()


_GATE = _Gate()


class _Transaction:
    """An LMDB transaction of the node cache, held in the fork gate from its begin to its end.
    `with env.begin() as txn` gives LMDB's own transaction (no cost per get or put); used without
    `with`, it passes every other call on to it and ends with commit() or abort()."""

    def __init__(self, env: Environment, kwargs: dict):
        gate = _GATE
        self.gate: _Gate | None = gate  # None once ended
        self.holder = gate.enter()
        try:
            self.txn = env.lmdb.begin(**kwargs)
        except BaseException:
            self._end()
            raise
        self.env = env  # (not closed while a transaction is open)

    def __enter__(self):
        return self.txn.__enter__()

    def __exit__(self, *exc):
        if self.gate is not _GATE:  # ended, or begun before a fork: the parent's, never touched here
            return None
        try:
            return self.txn.__exit__(*exc)
        finally:
            self._end()

    def commit(self) -> None:
        try:
            self.txn.commit()
        finally:
            self._end()

    def abort(self) -> None:
        try:
            self.txn.abort()
        finally:
            self._end()

    def __getattr__(self, name: str):
        if name in ("txn", "gate", "holder"):  # (not set: __init__ failed)
            raise AttributeError(name)
        value = self.__dict__[name] = getattr(self.txn, name)  # once: a view build puts millions of records
        return value

    def _end(self) -> None:
        gate, self.gate = self.gate, None
        if gate is not None:
            gate.leave(self.holder)

    def __del__(self) -> None:
        if self.__dict__.get("gate") is _GATE:  # dropped unfinished
            try:
                self.txn.abort()
            finally:
                self._end()


class Environment:
    """This process's LMDB environment of one cache folder (LMDB refuses a second open of one in a
    process), the records its Caches stored and have not committed, and the one way to begin a
    transaction in it (`begin`, counted by the fork gate). Closed when no Cache and no transaction
    holds it: an environment maps 1 TiB of address space, and a process can map about 126."""

    lmdb: Any = None  # LMDB's environment; None once closed or inherited across a fork

    def __init__(self, path: str):
        self.path = path
        self.gate = _GATE
        holder = _GATE.enter()
        try:
            _reserve_lock_file(path)
            self.lmdb = lmdb.open(path, map_size=1 << 40, max_dbs=16, max_readers=MAX_READERS, subdir=True)
            self.lmdb.reader_check()  # clear reader slots of killed processes
        finally:
            _GATE.leave(holder)
        self.pending = _PendingRecords()

    def begin(self, **kwargs) -> _Transaction:
        """LMDB's Environment.begin (db, parent, write, buffers), counted by the fork gate."""
        return _Transaction(self, kwargs)

    def open_db(self, name: bytes, txn=None, **kwargs):
        return self.lmdb.open_db(name, txn=txn.txn if isinstance(txn, _Transaction) else txn, **kwargs)

    def close(self) -> None:
        if self.lmdb is None or self.gate is not _GATE:  # closed, or inherited across a fork (_after_fork_in_child)
            return
        holder = _GATE.enter()
        try:
            self.lmdb.close()
            self.lmdb = None
        finally:
            _GATE.leave(holder)

    __del__ = close

    def _inherited(self, safe: bool) -> None:
        """In a forked child: never use this environment again. Closing it makes LMDB unmap it and
        clear the reader slots of this process's pid (the child's, so none of the parent's), and
        makes py-lmdb forget the files, so that the child can open them again; py-lmdb also aborts
        the transactions open in it, which would free the parent's reader slots, so it is closed
        only when the fork found none under way (`safe`). Otherwise it stays open, unused, for
        the life of the child (its collection would close it), and the cache folder cannot be
        used there."""
        if safe:
            self.lmdb.close()
        else:
            _UNUSABLE[self.path] = self.lmdb
        self.lmdb = None


class _Reopening:
    """What a Cache made before a fork holds as its `env` in the forked child, until the first use
    opens the child's own environment (Cache._reattach) and stands in for it."""

    def __init__(self, cache: Cache):
        self.cache = cache

    def __getattr__(self, name: str):
        return getattr(self.cache._reattach(), name)


# Held weakly, so that an Environment no Cache or transaction holds is closed (see Environment).
_ENVS: weakref.WeakValueDictionary[str, Environment] = weakref.WeakValueDictionary()
_ENVS_LOCK = threading.Lock()
_UNUSABLE: dict[str, lmdb.Environment | None] = {}  # path -> an environment inherited that could not be closed
FORK_WAIT_S = 30.0  # a fork waits this long at most for the transactions under way in other threads


def _open_env(path: str) -> Environment:
    """This process's one Environment of the LMDB environment at `path`."""
    with _ENVS_LOCK:
        env = _ENVS.get(path)
        if env is None:
            if path in _UNUSABLE:
                raise UsageError(f"the node cache {os.path.dirname(path)} cannot be used in this process: it was "
                                 f"forked by a thread inside a transaction of that cache (or while another thread "
                                 f"held one for over {FORK_WAIT_S:.0f} s); fork outside dsfs calls, or start workers "
                                 f"with the 'spawn' method")
            env = _ENVS[path] = Environment(path)
        return env


def open_db(env: Environment, name: bytes):
    """A named table of the environment, opened in a write transaction of our own: `env.open_db`
    without one waits for LMDB's write lock holding the GIL, so a thread of this process in a write
    transaction (the record committer) could never finish it, and both hung."""
    with env.begin(write=True) as txn:
        return env.open_db(name, txn=txn)


_fork_safe = True  # set before each fork: the child may close what it inherits
_exit_hooked = False  # multiprocessing's children commit at their exit too (_commit_at_worker_exit)


def _commit_at_worker_exit(_) -> None:
    """In a child of multiprocessing (a Pool's, a DataLoader's worker), which a fork start ends with
    os._exit, past atexit: commit the records at its exit through multiprocessing's own finalizers."""
    from multiprocessing.util import Finalize

    Finalize(None, _commit_at_exit, exitpriority=0)


def _before_fork() -> None:
    """Commit the records due (so that the child finds the chunks stored so far), then hold new
    LMDB operations and wait for those of other threads (see Forks in the module doc)."""
    global _fork_safe, _exit_hooked
    mp_util = sys.modules.get("multiprocessing.util")
    if mp_util is not None and not _exit_hooked:  # (run in its children after every fork of the module's)
        mp_util.register_after_fork(_COMMIT_AT_EXIT, _commit_at_worker_exit)
        _exit_hooked = True
    caches = {id(cache.env): cache for cache in _live() if isinstance(cache.env, Environment)}
    for cache in caches.values():
        lock = cache._pending.commit_lock
        if not lock.acquire(blocking=False):  # a commit under way: the gate waits for its transaction
            continue
        try:
            cache._commit_records()
        except Exception:  # noqa: BLE001 - a fork must go on: the child fetches those chunks again
            log.debug("committing the records of the node cache %s before a fork failed", cache.root, exc_info=True)
        finally:
            lock.release()
    del caches
    _fork_safe = _GATE.close(FORK_WAIT_S)
    if not _fork_safe:
        log.warning("forking inside a transaction of the node cache (or after waiting %.0f s for another thread's "
                    "to end): the child cannot use the cache", FORK_WAIT_S)


def _after_fork_in_parent() -> None:
    _GATE.open()


def _after_fork_in_child() -> None:
    """The child's own gate, locks and committer; the environments inherited dropped (closed when
    safe), and every Cache made before the fork set to open the child's own on first use."""
    global _GATE, _ENVS_LOCK, _COMMITTER
    inherited = list(_ENVS.values())
    _GATE, _ENVS_LOCK, _COMMITTER = _Gate(), threading.Lock(), _Committer()
    _ENVS.clear()
    for env in inherited:
        try:
            env._inherited(_fork_safe)
        except Exception:  # noqa: BLE001 - this child then cannot use that cache folder, and says so
            _UNUSABLE[env.path] = None
    del inherited
    for cache in _live():
        cache._forked()


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child)


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


class _BlocksKnown:
    """Chunks' verified block hashes (and size, last recorded use) that random reads looked up
    lately, so the next read of the same chunk skips an LMDB transaction and the seal's check
    (~25 us of the ~120 us a 4 KiB random read cost in process). Bounded: the oldest go first.
    The hashes are as good as the record they came from: they describe the chunk's bytes, whatever
    becomes of its file; a chunk dropped is forgotten here too."""

    MAX = 8192  # chunks (~1.25 MiB each: 10 GiB of chunks; ~1.7 KB each here, 14 MB in all)

    def __init__(self) -> None:
        self.known: dict[bytes, list] = {}
        self.lock = threading.Lock()

    def get(self, digest: bytes) -> list | None:
        return self.known.get(digest)

    def put(self, digest: bytes, size: int, hashes: list[bytes], last_use: int) -> list:
        entry = [size, hashes, last_use]
        with self.lock:
            if len(self.known) >= self.MAX:
                del self.known[next(iter(self.known))]
            self.known[digest] = entry
        return entry

    def pop(self, digest: bytes) -> None:
        with self.lock:
            self.known.pop(digest, None)


def _unseal(digest: bytes, sealed: bytes, size: int) -> list[bytes] | None:
    """The block hashes of a chunk of `size` bytes from their sealed record, or None if the record is
    damaged (its seal, a hash keyed with the chunk's digest, does not match, or its length is off)."""
    hashes = sealed[_SEAL:]
    if len(hashes) != 32 * -(-size // BLOCK) or blake3.blake3(hashes, key=digest).digest()[:_SEAL] != sealed[:_SEAL]:
        return None
    return [hashes[i:i + 32] for i in range(0, len(hashes), 32)]


def _is_digest(name: str) -> bool:
    return len(name) == 64 and all(c in "0123456789abcdef" for c in name)


def _lmdb_out_of_space(exc: lmdb.Error) -> bool:
    """LMDB reports ENOSPC as DiskError; other errnos only in its message."""
    return isinstance(exc, lmdb.DiskError) or os.strerror(errno.EDQUOT) in str(exc)


def _read_in_ram(fd: int, size: int, offset: int = 0) -> bytearray | None:
    """`size` bytes at `offset` of fd if the page cache holds them all, else None."""
    flag = getattr(os, "RWF_NOWAIT", None)
    if flag is None:
        return None
    buf = bytearray(size)
    try:
        got = os.preadv(fd, [buf], offset, flag)
    except OSError:  # EAGAIN: some of it is on disk only (or the flag is not supported here)
        return None
    return buf if got == size else None


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
