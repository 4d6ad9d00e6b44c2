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
import threading
import time
import weakref

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

    def __init__(self, root: str | None = None, size: int | str | None = None):
        self.root = os.path.abspath(root or settings.cache_dir())
        with self.space_checked():
            for sub in ("chunks", "changesets", "tmp"):
                os.makedirs(os.path.join(self.root, sub), mode=0o700, exist_ok=True)
            self.env = _open_env(os.path.join(self.root, "index.lmdb"))
            self.db_chunks = open_db(self.env, b"chunks")
            self.db_lru = open_db(self.env, b"lru")
            self.db_meta = open_db(self.env, b"meta")
            self.db_blocks = open_db(self.env, b"blocks")
            self.db_small = open_db(self.env, b"small")
            self.view_dbs = {name: open_db(self.env, name.encode()) for name in viewindex.TABLES}
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
        self._pending = _pending_records(self.env)  # shared by every Cache of this folder in this process
        _LIVE.add(self)
        size = parse_size(size if size is not None else settings.cache_size())
        self.budget = size if size is not None else self._default_budget()

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
        return os.path.join(self.root, "chunks", hexd[:2], hexd)

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
        an event loop may call it) and answer None, keeping the chunk, if any of it is not there. A
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
                return data
            return os.read(fd, size)  # the recorded size: one exact allocation (a hot path of mounts)
        finally:
            os.close(fd)

    def read_blocks(self, digest: bytes, raw: int, lo: int, hi: int) -> bytes | None:
        """Verified bytes [lo, hi) of a chunk of `raw` bytes, reading and checking only the BLOCKs
        they touch (see the module doc). None if the node cache lacks the chunk or its block hashes
        (the caller reads it whole, then `note_blocks`), or if a block is damaged (the chunk is then
        dropped, and the caller fetches it again)."""
        with self.env.begin(buffers=True) as txn:
            held = self._size_and_use(txn, digest)
            in_db = txn.get(digest, db=self.db_blocks)
            sealed = bytes(in_db) if in_db is not None else self._pending.blocks.get(digest)
        if held is None or held[0] <= SMALL:  # a small chunk is one block: the caller reads it whole
            return None
        size, last_use = held
        hashes = _unseal(digest, sealed, size) if sealed is not None and size == raw else None
        if hashes is None:
            return None
        try:
            fd = os.open(self._chunk_path(digest), os.O_RDONLY)
        except FileNotFoundError:
            self._drop(digest)
            return None
        try:
            first, stop = lo // BLOCK, min((hi + BLOCK - 1) // BLOCK, len(hashes))
            span = os.pread(fd, min(stop * BLOCK, size) - first * BLOCK, first * BLOCK)
        finally:
            os.close(fd)
        view = memoryview(span)
        for n in range(first, stop):
            if blake3.blake3(view[(n - first) * BLOCK:(n - first + 1) * BLOCK]).digest() != hashes[n]:
                self._drop(digest)
                return None
        now = time.time_ns()
        if now - last_use > TOUCH_INTERVAL_NS:
            self._note_use(digest, now)
        return span[lo - first * BLOCK:hi - first * BLOCK]

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
    LMDB environment, shared by every Cache of that folder in this process (a second Cache, such as
    an in-process `cache stats`, must see the chunks the first one stored)."""

    def __init__(self):
        self.chunks: dict[bytes, tuple[int, int]] = {}  # digest -> (size, stored at): files in place, not recorded
        self.small: dict[bytes, bytes] = {}  # digest -> bytes of the small chunks among them (not in files)
        self.blocks: dict[bytes, bytes] = {}  # digest -> sealed block hashes, not recorded
        self.lock = threading.Lock()  # guards the three above
        self.commit_lock = threading.RLock()  # one commit at a time (the committer or a flush; reentrant:
        # a commit over the budget evicts, and evict commits what is due first)
        self.error: DiskFull | None = None  # a failed background commit, raised by the next flush


_PENDING: weakref.WeakKeyDictionary[lmdb.Environment, _PendingRecords] = weakref.WeakKeyDictionary()


def _pending_records(env: lmdb.Environment) -> _PendingRecords:
    with _ENVS_LOCK:
        pending = _PENDING.get(env)
        if pending is None:
            pending = _PENDING[env] = _PendingRecords()
        return pending


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


def _new_committer_after_fork() -> None:
    """A forked child (a DataLoader's worker) starts with a committer of its own: the parent's thread
    is not there, and its lock may have been held by another thread at the fork."""
    global _COMMITTER
    _COMMITTER = _Committer()


os.register_at_fork(after_in_child=_new_committer_after_fork)


# Caches of this process, so that records not yet committed are committed at exit (a process that
# ends normally loses none; a killed one loses only records, see the module doc).
_LIVE: weakref.WeakSet[Cache] = weakref.WeakSet()


@atexit.register
def _commit_at_exit() -> None:
    for cache in list(_LIVE):
        try:
            cache._commit_records()
        except Exception:  # noqa: BLE001 - at exit, a record lost costs a fetch, never a wrong byte
            pass


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


def open_db(env: lmdb.Environment, name: bytes):
    """A named table of the environment, opened in a write transaction of our own: `env.open_db`
    without one waits for LMDB's write lock holding the GIL, so a thread of this process in a write
    transaction (the record committer) could never finish it, and both hung."""
    with env.begin(write=True) as txn:
        return env.open_db(name, txn=txn)


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
