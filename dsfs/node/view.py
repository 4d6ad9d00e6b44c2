"""`View`: a version as a read-only tree (lookup, readdir, getattr, read) over the view index and the
chunk cache. It knows nothing of FUSE; the mount's Operations class only translates to it.

Reads map a byte range to chunks. A chunk comes, in order, from a small in-memory LRU of verified
chunks (a FUSE read is 128 KiB - 1 MiB, a chunk about 1 MiB: without it each read would re-hash the
whole chunk), from the node cache, or from the store with a coalesced ranged GET, after which it is
stored in the cache. Concurrent readers of the same chunk wait on one fetch; readers of different
chunks do not wait on each other.

Sequential readers get a prefetch window (mountpoint-s3's idea): it starts at 1 MiB past the read,
doubles on every sequential read up to `MAX_PREFETCH`, and resets on a seek; once wide, it is topped
up in `PREFETCH_STEP`s, so that a store gets a few coalesced GETs rather than one per chunk. Prefetched
chunks are fetched in the background (chunks the node's cache holds: a pool task per MiB of them, so
that several disk reads are in flight) and land in the cache. Files read in inode order (= path
order) get the next files' chunks fetched ahead the same way (`_prefetch_files`).

Paths are not stored per inode (a 1M-file view must not hold 1M strings): `path(ino)` and
`parent(ino)` descend from the root instead, relying on how the index numbers inodes (in path
order, a folder before its contents): a folder's children have increasing inodes and each child's
subtree is the range up to its next sibling, so each level is one binary search over the listing.
They serve '..' and error messages, never the read path.

`warm()` fetches a whole version (or the files matching globs) into the node cache, for a mount's
`--prefetch`; it bypasses the in-memory LRU so that it does not evict what readers are using.

Every failure is a typed error (dsfs.errors); the FUSE layer maps it to an errno in one place.
"""

from __future__ import annotations

import bisect
import logging
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

from dsfs.node import links

from dsfs import paths
from dsfs.node.cache import Cache
from dsfs.errors import DiskFull, PathNotFound
from dsfs.store.fetch import fetch_each
from dsfs.model import ChunkRef
from dsfs.store.layout import Store
from dsfs.lineage.viewindex import ROOT, Node, ViewIndex, ensure_view

log = logging.getLogger("dsfs.mount")

MIN_PREFETCH = 1 << 20
MAX_PREFETCH = 64 << 20
FILES_AHEAD = 1024  # a reader reading files in order gets the chunks of the next files fetched ahead: so many inodes
FILES_AHEAD_BYTES = 64 << 20  # ... or so many bytes of chunks, whichever comes first
FILES_STEP = 128  # ... topped up whenever this many inodes were read (several batches in flight)
FILES_IN_ORDER = 3  # ... once this many files in a row were read in order (one file read is just that)
FILES_GAP = 16  # a file at most this many inodes past the previous one read counts as "in order"
PREFETCH_STEP = 8 << 20  # once the window is wide, it is topped up in steps of this much (coalesced GETs)
MEMO_BYTES = 256 << 20
INLINE_BYTES = 256 << 10  # a chunk this small may be read and verified on the event loop's thread
SPREAD_BYTES = 1 << 20  # a prefetch reads cached chunks in pool tasks of about this many bytes each
LINK_BLOCK = 4 << 20
WARM_BATCH = 256 << 20  # bytes of chunks asked for per fetch while warming


class _Memo:
    """A byte-bounded LRU of verified chunk bytes."""

    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0
        self.items: OrderedDict[bytes, bytes] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, digest: bytes) -> bytes | None:
        with self.lock:
            data = self.items.get(digest)
            if data is not None:
                self.items.move_to_end(digest)
            return data

    def put(self, digest: bytes, data: bytes) -> None:
        with self.lock:
            if digest in self.items:
                return
            self.items[digest] = data
            self.used += len(data)
            while self.used > self.limit and self.items:
                _, old = self.items.popitem(last=False)
                self.used -= len(old)


class _Pending:
    """A chunk being loaded: set once, waited on by any number of readers. A lock held until the
    chunk is set; concurrent.futures.Future (a Condition and an RLock each) was a quarter of the
    prefetch threads' time on small files, at one per chunk."""

    __slots__ = ("_lock", "data", "error")

    def __init__(self):
        self._lock = threading.Lock()
        self._lock.acquire()
        self.data = self.error = None

    def set(self, data, error) -> None:
        self.data, self.error = data, error
        self._lock.release()

    def result(self) -> bytes:
        with self._lock:  # free once set: every waiter passes through in turn
            pass
        if self.error is not None:
            raise self.error
        return self.data


class OpenFile:
    """Per-open state: the node, its chunk offsets, and the sequential-read detector."""

    def __init__(self, node: Node, chunks: list[ChunkRef]):
        self.node = node
        self.chunks = chunks
        self.starts: list[int] = []
        pos = 0
        for ref in self.chunks:
            self.starts.append(pos)
            pos += ref.raw
        self.next_offset = 0
        self.window = MIN_PREFETCH
        self.prefetched_to = 0
        self.lock = threading.Lock()
        self.link = None  # (fs, path) of an external file, checked at open
        self.block = (0, b"")  # the last block read from an external file
        self.unread = True  # no read yet (the first one may fetch the next files ahead)

    def chunk_range(self, offset: int, end: int) -> range:
        first = max(0, bisect.bisect_right(self.starts, offset) - 1)
        last = max(first, bisect.bisect_left(self.starts, end) - 1) if end > offset else first
        return range(first, min(last + 1, len(self.chunks)))


class View:
    """One version, read-only, as lookup/readdir/getattr/read."""

    def __init__(self, store: Store, cache: Cache, dataset_id: str, max_workers: int = 8):
        self.store = store
        self.cache = cache
        self.index: ViewIndex = ensure_view(store, cache, dataset_id)
        self.dataset_id = dataset_id
        self.memo = _Memo(MEMO_BYTES)
        self.inflight: dict[bytes, _Pending] = {}
        self.inflight_lock = threading.Lock()
        self.pool = ThreadPoolExecutor(max_workers, thread_name_prefix="dsfs-read")
        self.max_workers = max_workers
        self.names: dict[int, str] = {}  # ino -> a path, for error messages (only for opened files)
        self.files_lock = threading.Lock()
        self.last_open = 0  # the file opened last (its inode)
        self.files_ahead = 0  # the next files' chunks were asked for up to this inode (excluded)
        self.in_order = 0  # files opened in order in a row

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.cache.flush_uses()

    # -- metadata ------------------------------------------------------------------------------

    def getattr(self, ino: int) -> Node:
        node = self.index.getattr(ino)
        if node is None:
            raise PathNotFound(f"no inode {ino}")
        return node

    def lookup(self, parent: int, name: str) -> Node:
        node = self.index.lookup(parent, name)
        if node is None:
            raise PathNotFound(f"{name} not found")
        return node

    def readdir(self, parent: int, start: int = 0):
        """(next position, name, Node) from position `start`."""
        for seq, name, node in self.index.readdir(parent, start):
            yield seq + 1, name, node

    def resolve(self, path: str) -> Node:
        node = self.index.resolve(path)
        if node is None:
            raise PathNotFound(f"{path} not found")
        return node

    @property
    def root(self) -> int:
        return ROOT

    def parent(self, ino: int) -> int:
        """The inode of the folder holding `ino` (the root is its own parent)."""
        chain = self._chain(ino)
        return chain[-2][1].ino if len(chain) > 1 else ROOT

    def path(self, ino: int) -> str:
        """The dataset path of an inode ('' for the root)."""
        return "/".join(name for name, _ in self._chain(ino)[1:])

    def _chain(self, ino: int) -> list[tuple[str, Node]]:
        """(name, Node) from the root down to `ino`."""
        chain = [("", self.getattr(ROOT))]
        while chain[-1][1].ino != ino:
            node = chain[-1][1]
            child = self._child_holding(node.ino, ino) if node.is_dir else None
            if child is None:
                raise PathNotFound(f"no inode {ino}")
            chain.append(child)
        return chain

    def _child_holding(self, parent: int, ino: int) -> tuple[str, Node] | None:
        """The child of `parent` with the largest inode <= `ino` (galloping, then bisecting)."""
        def at(k):
            return next(self.index.readdir(parent, k), None)

        def below(k):
            entry = at(k)
            return entry is not None and entry[0] == k and entry[2].ino <= ino

        if not below(0):
            return None
        lo, hi = 0, 1
        while below(hi):
            lo, hi = hi, hi * 2
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if below(mid) else (lo, mid)
        _, name, node = at(lo)
        return name, node

    # -- reading -------------------------------------------------------------------------------

    def open(self, ino: int, label: str = "", wait: bool = True, in_page_cache: bool = False) -> OpenFile | None:
        """A handle for reading a file. wait=False never waits for a disk or the network (the view
        index's lookup is in LMDB's map; the first chunk is read if its file is in the page cache)
        and answers None unless the first read can then be served from memory (an external file
        never can). in_page_cache: the kernel was given the file's bytes (the FUSE layer's push),
        so no read is expected: its first chunk is not loaded."""
        node = self.getattr(ino)
        chunks = node.chunks  # built from the index record on each access: once here
        first = chunks[0] if chunks and not in_page_cache else None
        if not wait and (node.url or first is not None and not self._to_memory(first, in_ram_only=True)):
            return None
        self._note_order(ino)
        handle = OpenFile(node, chunks)
        if node.url:
            handle.link = links.checked(node.url, node.etag, node.size, self._label(node, label))
        self.cache.pin(ref.digest for ref in chunks)
        if label:
            self.names[ino] = label
        if first is not None:
            # The first read follows at once: have its chunk in memory if the node's cache holds it,
            # so that it is answered without waiting (the store is never asked here).
            self._to_memory(first)
        return handle

    def _to_memory(self, ref: ChunkRef, in_ram_only: bool = False) -> bool:
        """Is this chunk in the memo, or now put there from the node's cache? in_ram_only (on the
        event loop's thread): only a small chunk whose file is wholly in the page cache, since a
        bigger chunk's read and hash would hold the loop too long (1 MiB: ~0.5 ms)."""
        if self.memo.get(ref.digest) is not None:
            return True
        if in_ram_only and ref.raw > INLINE_BYTES:
            return False
        data = self.cache.get_chunk(ref.digest, ref.raw, in_ram_only=in_ram_only)
        if data is None:
            return False
        self.memo.put(ref.digest, data)
        return True

    def release(self, handle: OpenFile) -> None:
        self.cache.unpin(ref.digest for ref in handle.chunks)

    def read(self, handle: OpenFile, offset: int, size: int, wait: bool = True) -> bytes | memoryview | None:
        """Up to `size` bytes at `offset` (bytes-like: a memoryview when no copy was needed).

        wait=False never blocks: it answers None when a chunk is not in memory, so that an event
        loop serves memory hits itself and sends only the rest to a worker thread."""
        node = handle.node
        if offset >= node.size or size <= 0:
            return b""
        end = min(offset + size, node.size)
        if handle.link is not None:  # external: network I/O, never on an event loop's thread
            return self._read_link(handle, offset, end) if wait else None
        if handle.unread:
            handle.unread = False
            self._prefetch_files(node.ino)
        indexes = handle.chunk_range(offset, end)
        refs = [handle.chunks[i] for i in indexes]
        if wait:
            self._prefetch(handle, offset, end)
            pieces = self._chunks(refs, node)
        else:
            pieces = [self.memo.get(ref.digest) for ref in refs]
            if None in pieces:
                return None
            self._prefetch(handle, offset, end)
        views = []
        for i, data in zip(indexes, pieces):
            start = handle.starts[i]
            lo = max(offset, start) - start
            hi = min(end, start + len(data)) - start
            views.append(memoryview(data)[lo:hi])
        # a read inside one chunk (the common case) is served without copying the chunk's bytes
        return views[0] if len(views) == 1 else b"".join(views)

    def read_path(self, path: str, offset: int = 0, size: int | None = None) -> bytes:
        node = self.resolve(path)
        handle = self.open(node.ino, path)
        try:
            return bytes(self.read(handle, offset, node.size - offset if size is None else size))
        finally:
            self.release(handle)

    def _label(self, node: Node, name: str = "") -> str:
        if not name:
            name = self.names.get(node.ino)
        if not name:
            try:
                name = self.path(node.ino)
            except PathNotFound:
                name = f"inode {node.ino}"
        return f"{name} of dataset {self.dataset_id}"

    def _read_link(self, handle: OpenFile, offset: int, end: int) -> bytes:
        """External files are read in LINK_BLOCK pieces, the last one kept: FUSE reads of 128 KiB
        then cost one ranged GET per block instead of one each."""
        fs, path = handle.link
        out = bytearray()
        while offset < end:
            with handle.lock:
                start, data = handle.block
            if not (start <= offset < start + len(data)):
                start = offset - offset % LINK_BLOCK
                data = links.read_range(fs, path, start, min(start + LINK_BLOCK, handle.node.size), handle.node.url)
                with handle.lock:
                    handle.block = (start, data)
            piece = data[offset - start: end - start]
            out += piece
            offset += len(piece)
        return bytes(out)

    def _chunks(self, refs: list[ChunkRef], node: Node) -> list[bytes]:
        """The bytes of these chunks, fetching missing ones together (coalesced)."""
        results: list[bytes | None] = [self.memo.get(r.digest) for r in refs]
        missing = [r for r, d in zip(refs, results) if d is None]
        if missing:
            pendings = self._fetch(missing, node)
            for i, ref in enumerate(refs):
                if results[i] is None:
                    results[i] = pendings[ref.digest].result()
        return results  # type: ignore[return-value]

    def _fetch(self, refs: list[ChunkRef], node: Node | dict[bytes, Node], background: bool = False) -> dict[bytes, _Pending]:
        """Pending loads of these chunks: joins loads already under way; starts one for the rest."""
        pendings: dict[bytes, _Pending] = {}
        mine: list[ChunkRef] = []
        with self.inflight_lock:
            for ref in refs:
                if ref.digest in pendings:
                    continue
                pending = self.inflight.get(ref.digest)
                if pending is None:
                    pending = self.inflight[ref.digest] = _Pending()
                    mine.append(ref)
                pendings[ref.digest] = pending
        if mine:
            if background:
                try:
                    self.pool.submit(self._load_spread, mine, node)
                except RuntimeError as exc:  # the view is closing: nobody must wait for these
                    for ref in mine:
                        self._done(ref, None, exc)
            else:
                self._load(mine, node)
        return pendings

    def _load_spread(self, refs: list[ChunkRef], node: Node | dict[bytes, Node]) -> None:
        """A prefetch: chunks the node's cache holds are read in parallel, one pool task per
        `SPREAD_BYTES` of them (one thread reading them all in turn keeps one disk read in flight; a
        task per small chunk cost more in thread hand-offs than the read); the rest come from the
        store together, so that adjacent ranges are coalesced."""
        handed: set[bytes] = set()
        try:
            group: list[ChunkRef] = []
            size = 0
            for ref in refs:
                if not self.cache.has_chunk(ref.digest):
                    continue
                group.append(ref)
                size += ref.raw
                if size >= SPREAD_BYTES:
                    self.pool.submit(self._load, group, node)
                    handed.update(r.digest for r in group)
                    group, size = [], 0
        except Exception:  # noqa: BLE001 - the pool is closing, or LMDB failed: the rest is loaded here
            pass
        self._load([ref for ref in refs if ref.digest not in handed], node)

    def _load(self, refs: list[ChunkRef], node: Node | dict[bytes, Node]) -> None:
        """Settle the pending loads of `refs`: from the cache, else from the store (then into the
        cache). `node` is the file they belong to, or {digest: file} (for error messages)."""
        remote = []
        settled: set[bytes] = set()
        try:
            for ref in refs:
                data = self.cache.get_chunk(ref.digest, ref.raw)
                if data is None:
                    remote.append(ref)
                else:
                    self._done(ref, data, None)
                    settled.add(ref.digest)
            if remote:
                if isinstance(node, dict):
                    def where(ref, owners=node):
                        return self._label(owners[ref.digest])
                else:
                    def where(ref):
                        return self._label(node)

                def store_range(rng, good, bad) -> None:  # in the thread that fetched the range
                    try:  # one cache transaction per range, before any reader is answered
                        self.cache.put_chunks(list(good.items()))
                    except (DiskFull, OSError):
                        pass  # a full cache disk must not fail the read: serve from memory
                    for ref in rng.refs:
                        self._done(ref, good.get(ref.digest), bad.get(ref.digest))
                        settled.add(ref.digest)

                fetch_each(self.store, remote, store_range, self.max_workers, where)
        except BaseException as exc:
            for ref in refs:
                if ref.digest not in settled:  # a settled one may have a new load under way by now
                    self._done(ref, None, exc)
            if not isinstance(exc, Exception):
                raise

    def _done(self, ref: ChunkRef, data: bytes | None, error) -> None:
        with self.inflight_lock:
            pending = self.inflight.pop(ref.digest, None)
        if data is not None:
            self.memo.put(ref.digest, data)
        if pending is not None:
            pending.set(data, error)

    def _prefetch(self, handle: OpenFile, offset: int, end: int) -> None:
        with handle.lock:
            if offset == handle.next_offset:
                handle.window = min(handle.window * 2, MAX_PREFETCH)
            else:
                handle.window = MIN_PREFETCH
                handle.prefetched_to = 0
            handle.next_offset = end
            ahead_from = max(end, handle.prefetched_to)
            ahead_to = min(end + handle.window, handle.node.size)
            if ahead_to <= ahead_from:
                return
            if ahead_to - ahead_from < min(handle.window // 2, PREFETCH_STEP) and ahead_to < handle.node.size:
                return  # wait until a step is due: one 8 MiB ranged GET costs far less than eight of 1 MiB
            handle.prefetched_to = ahead_to
        wanted = [handle.chunks[i] for i in handle.chunk_range(ahead_from, ahead_to)
                  if self.memo.get(handle.chunks[i].digest) is None]
        if wanted:
            self._fetch(wanted, handle.node, background=True)

    def _prefetch_files(self, ino: int) -> None:
        """Files read in inode order (= path order: `find | xargs cat`, `cp -r`, `tar`, a loader
        going through a listing) get the next files' chunks fetched ahead, as a file's readers get its
        next chunks: a small file is otherwise one round trip to the store per file, and the next
        files' chunks are usually adjacent in one pack (authoring packs in path order), so a few
        coalesced GETs bring hundreds of files. Topped up every FILES_STEP files, so that several
        batches are under way at once (with one batch at a time, topped up at half, a reader of small
        files from S3 caught up with it 66 times in 10,000 files and waited 2.7 s of 7.2; 6 times
        and 0.5 s with this). Called on a file's first read (open fetches nothing: SEMANTICS [lazy]);
        the order is judged on opens (`_note_order`), as files whose bytes the mount put in the
        kernel's page cache are opened but never read."""
        with self.files_lock:
            if not self.reading_in_order():
                return
            start = max(ino + 1, self.files_ahead)
            if start - ino > FILES_AHEAD - FILES_STEP:
                return
            stop = self.files_ahead = ino + 1 + FILES_AHEAD
        ahead = self.index.getattr(start)
        chunks = ahead.chunks if ahead is not None else []
        if chunks and self._to_memory(chunks[0], in_ram_only=True):
            # The files ahead are in the page cache (judged by the first one): each open reads its
            # first chunk inline, which costs less than loading them in the pool (its threads fought
            # the loop over the GIL: 3,100-3,800 vs 4,000 files/s).
            return
        try:
            self.pool.submit(self._fetch_files, start, stop)
        except RuntimeError:
            pass  # the view is closing

    def _note_order(self, ino: int) -> None:
        with self.files_lock:
            last, self.last_open = self.last_open, ino
            if 0 < ino - last <= FILES_GAP:
                self.in_order += 1
            else:
                self.files_ahead = ino + 1
                self.in_order = 0

    def reading_in_order(self) -> bool:
        """Were the last files opened in inode order (FILES_IN_ORDER of them in a row)?"""
        return self.in_order >= FILES_IN_ORDER

    def cached_file(self, ino: int, limit: int) -> bytes | None:
        """The whole content of a file of 1 to `limit` bytes if every chunk of it is in memory or in
        the node's cache (verified), else None; never asks the store. May read the disk."""
        node = self.index.getattr(ino)
        if node is None or node.is_dir or node.url or not 0 < node.size <= limit:
            return None
        pieces = []
        for ref in node.chunks:
            data = self.memo.get(ref.digest) or self.cache.get_chunk(ref.digest, ref.raw)
            if data is None:
                return None
            pieces.append(data)
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def _fetch_files(self, start: int, stop: int) -> None:
        owners: dict[bytes, Node] = {}
        refs: list[ChunkRef] = []
        size = 0
        try:
            for ino in range(start, stop):
                node = self.index.getattr(ino)
                if node is None:
                    break
                if node.is_dir or node.url:
                    continue
                for ref in node.chunks:
                    if ref.digest not in owners and self.memo.get(ref.digest) is None:
                        owners[ref.digest] = node
                        refs.append(ref)
                        size += ref.raw
                if size >= FILES_AHEAD_BYTES:
                    with self.files_lock:
                        self.files_ahead = min(self.files_ahead, ino + 1)
                    break
            if refs:
                self._fetch(refs, owners, background=True)
        except Exception:  # noqa: BLE001 - a prefetch must never fail a reader; the read itself reports
            log.debug("prefetch of files %d-%d failed", start, stop, exc_info=True)

    # -- warming -------------------------------------------------------------------------------

    def warm(self, include: list[str] | None = None, stop: threading.Event | None = None) -> dict:
        """Fetch the chunks of every file (or of those matching `include` globs) that the cache
        lacks. Stops early when `stop` is set. A corrupt chunk is counted in "failed" and skipped
        (readers of its file get EIO); a store that stays unreachable raises StoreUnavailable.
        Returns counts: files selected, chunks and bytes fetched, chunks failed."""
        counts = {"files": 0, "chunks": 0, "bytes": 0, "failed": 0}
        batch: dict[bytes, ChunkRef] = {}
        size = 0
        for path, node in self.index.walk_files():
            if stop is not None and stop.is_set():
                break
            if include and not paths.matches(path, include):
                continue
            counts["files"] += 1
            for ref in node.chunks:
                if ref.digest not in batch and not self.cache.has_chunk(ref.digest):
                    batch[ref.digest] = ref
                    size += ref.stored
            if size >= WARM_BATCH:
                self._warm_batch(batch, counts)
                batch, size = {}, 0
        if batch and not (stop is not None and stop.is_set()):
            self._warm_batch(batch, counts)
        return counts

    def _warm_batch(self, batch: dict[bytes, ChunkRef], counts: dict) -> None:
        lock = threading.Lock()

        def store_range(rng, good, bad) -> None:  # in the thread that fetched the range
            self.cache.put_chunks(list(good.items()))
            with lock:
                counts["failed"] += len(bad)
                counts["chunks"] += len(good)
                counts["bytes"] += sum(len(data) for data in good.values())

        fetch_each(self.store, batch.values(), store_range, self.max_workers,
                   lambda r: f"a chunk of dataset {self.dataset_id}")
