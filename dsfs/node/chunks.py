"""`ChunkReader`: the one way the node gets a chunk's bytes, for a mount, a download or `get`, an
export and `cat`.

A chunk comes, in order, from a small in-memory LRU of verified chunks (a FUSE read is 128 KiB -
1 MiB, a chunk about 1 MiB: without it each read would re-hash the whole chunk), from the node
cache (verified as it is read: a corrupt chunk file is dropped and the chunk fetched again), or
from the store through `dsfs.store.fetch` (coalesced ranged GETs, retried, each chunk verified
against its digest), after which it is put in the node cache. Concurrent readers of the same chunk
wait on one load (single flight); readers of different chunks do not wait on each other.

Three forms, and a fourth for random reads:
- `get`: the bytes of some chunks, waiting for them (a mount's read, `read_file`);
- `load`: start loading chunks in the background (a prefetch): chunks the node's cache holds are
  read by several pool tasks at once, the rest come from the store together, so that adjacent
  ranges are coalesced;
- `each`: deliver every chunk to a callback as it arrives, in the thread that fetched it, so that
  writing overlaps the network (a download). It keeps nothing: neither in memory nor in the node
  cache, as a download's files are the copy.
- `read_part`: part of a chunk from memory or the node's cache, reading only the blocks it touches
  (a random read; None sends the reader to `get`).
`fill_cache` (a mount's `--prefetch`) fetches into the node cache only, bypassing the in-memory LRU
so that it does not evict what readers are using.

`where(ref)` names the file a chunk belongs to, for error messages (asked only on a failure).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

from dsfs.errors import DiskFull
from dsfs.model import ChunkRef
from dsfs.node.cache import Cache
from dsfs.store.fetch import fetch_each, fetch_into
from dsfs.store.layout import Store

READ_WHOLE_MAX = 1 << 16  # chunks remembered as read whole by read_part (~6 MiB of digests in a set; 80 GiB
# of chunks: a random reader's span past that gets its block hashes one whole read later)
Where = Callable[[ChunkRef], str]
Deliver = Callable[[ChunkRef, "bytes | None", "Exception | None"], None]


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

    def outcome(self) -> tuple[bytes | None, Exception | None]:
        with self._lock:  # free once set: every waiter passes through in turn
            pass
        return self.data, self.error

    def result(self) -> bytes:
        data, error = self.outcome()
        if error is not None:
            raise error
        assert data is not None, "set with bytes whenever there is no error"
        return data


class ChunkReader:
    """Verified chunk bytes from memory, the node cache or the store (see the module doc)."""

    def __init__(self, store: Store, cache: Cache, max_workers: int = 8, memo_bytes: int = 256 << 20,
                 spread_bytes: int = 1 << 20, inline_bytes: int = 256 << 10):
        self.store = store
        self.cache = cache
        self.max_workers = max_workers
        self.spread_bytes = spread_bytes  # a background load reads cached chunks in tasks of about this much
        self.inline_bytes = inline_bytes  # a chunk this small may be read on an event loop's thread
        self.memo = _Memo(memo_bytes)
        self.read_whole: set[bytes] = set()  # chunks read_part read whole (their block hashes are made if again)
        self.inflight: dict[bytes, _Pending] = {}
        self.inflight_lock = threading.Lock()
        self.pool = ThreadPoolExecutor(max_workers, thread_name_prefix="dsfs-read")

    def close(self) -> None:
        """Stop background loads (their waiters get an error); a load under way ends on its own."""
        self.pool.shutdown(wait=False, cancel_futures=True)

    # -- without the store ---------------------------------------------------------------------

    def in_memory(self, ref: ChunkRef) -> bytes | None:
        return self.memo.get(ref.digest)

    def to_memory(self, ref: ChunkRef, in_ram_only: bool = False) -> bool:
        """Is this chunk in memory, or now put there from the node's cache? (`held`)"""
        return self.held(ref, in_ram_only) is not None

    def held(self, ref: ChunkRef, in_ram_only: bool = False) -> bytes | None:
        """The chunk's verified bytes from memory, or from the node's cache (then kept in memory);
        None if neither has it. Never asks the store. in_ram_only (on an event loop's thread): only
        a chunk of at most `inline_bytes` whose bytes are wholly in the page cache, since a bigger
        chunk's read and hash would hold the loop too long (1 MiB: ~0.5 ms)."""
        data = self.memo.get(ref.digest)
        if data is not None:
            return data
        if in_ram_only and ref.raw > self.inline_bytes:
            return None
        data = self.cache.get_chunk(ref.digest, ref.raw, in_ram_only=in_ram_only)
        if data is not None:
            self.memo.put(ref.digest, data)
        return data

    def read_part(self, ref: ChunkRef, lo: int, hi: int, in_ram_only: bool = False) -> bytes | memoryview | None:
        """Bytes [lo, hi) of a chunk (a random read) from memory, or from the node's cache reading
        and checking only the blocks they touch (Cache.read_blocks), or else read whole from the
        node's cache and kept in memory. A chunk read whole a second time has fallen out of memory:
        its block hashes are recorded then (hashing every chunk's blocks on its first read cost
        random readers whose span fits in memory a third of their rate while it filled). None if
        the node's cache lacks it; never asks the store. in_ram_only (an event loop's thread): from
        memory or from blocks the page cache holds, else None."""
        data = self.memo.get(ref.digest)
        if data is None:
            part = self.cache.read_blocks(ref.digest, ref.raw, lo, hi, in_ram_only)
            if part is not None or in_ram_only:
                return part
            data = self.cache.get_chunk(ref.digest, ref.raw)  # whole, into memory
            if data is None:
                return None
            if ref.digest in self.read_whole:  # read whole before, and out of memory since: the span read
                self.cache.note_blocks(ref.digest, data)  # at random outgrows memory, so blocks from now on
            elif len(self.read_whole) < READ_WHOLE_MAX:
                self.read_whole.add(ref.digest)
            else:
                self.read_whole = {ref.digest}
            self.memo.put(ref.digest, data)
        return memoryview(data)[lo:hi]

    def cached(self, ref: ChunkRef) -> bytes | None:
        """The chunk from memory or the node's cache (verified), else None; never asks the store."""
        return self.memo.get(ref.digest) or self.cache.get_chunk(ref.digest, ref.raw)

    # -- the three forms -----------------------------------------------------------------------

    def get(self, refs: list[ChunkRef], where: Where) -> list[bytes]:
        """The bytes of these chunks, in order; missing ones are loaded together (coalesced). Raises
        the error of the first chunk that could not be had (CorruptChunk, StoreUnavailable...)."""
        found = [self.memo.get(r.digest) for r in refs]
        missing = [r for r, d in zip(refs, found, strict=True) if d is None]
        pendings: dict[bytes, _Pending] = {}
        if missing:
            pendings, mine = self._claim(missing)
            if mine:
                self._load(mine, where)
        return [d if d is not None else pendings[r.digest].result() for r, d in zip(refs, found, strict=True)]

    def load(self, refs: list[ChunkRef], where: Where) -> None:
        """Start loading these chunks in the background; a reader that wants one waits on its load."""
        _, mine = self._claim(refs)
        if mine:
            try:
                self.pool.submit(self._load_spread, mine, where)
            except RuntimeError as exc:  # the reader is closing: nobody must wait for these
                for ref in mine:
                    self._done(ref, None, exc)

    def each(self, refs: Iterable[ChunkRef], deliver: Deliver, where: Where) -> None:
        """Call deliver(ref, bytes or None, error or None) once for every chunk: those in memory or
        the node's cache at once, in this thread; the rest as their ranges arrive, in the threads
        that fetched them. Returns when all were delivered; raises what a fetch or `deliver` raised
        (then some chunks may not have been delivered)."""
        missing = []
        for ref in refs:
            data = self.cached(ref)
            if data is None:
                missing.append(ref)
            else:
                deliver(ref, data, None)
        pendings, mine = self._claim(missing)
        mine_digests = {ref.digest for ref in mine}
        # Only the loads of other readers are waited on below: holding this call's own pendings
        # (each keeps its chunk's bytes once set) would keep the whole download in memory.
        others = [(ref, pendings[ref.digest]) for ref in missing if ref.digest not in mine_digests]
        del pendings
        settled: set[bytes] = set()

        def arrived(ref: ChunkRef, data: bytes | None, error: Exception | None) -> None:
            settled.add(ref.digest)
            self._done(ref, data, error, keep=False)
            deliver(ref, data, error)

        try:
            fetch_into(self.store, mine, arrived, self.max_workers, where)
        except BaseException as exc:
            for ref in mine:
                if ref.digest not in settled:
                    self._done(ref, None, exc, keep=False)
            raise
        for ref, pending in others:  # loaded by another reader of this one (single flight)
            deliver(ref, *pending.outcome())

    def fill_cache(self, refs: Iterable[ChunkRef], where: Where) -> tuple[int, int, int]:
        """Fetch these chunks into the node cache (not into memory). A corrupt chunk is skipped;
        a store that stays unreachable raises StoreUnavailable. Returns (chunks, bytes, failed)."""
        lock = threading.Lock()
        counts = [0, 0, 0]

        def store_range(rng, good, bad) -> None:  # in the thread that fetched the range
            self.cache.put_chunks(list(good.items()))
            with lock:
                counts[0] += len(good)
                counts[1] += sum(len(data) for data in good.values())
                counts[2] += len(bad)

        fetch_each(self.store, refs, store_range, self.max_workers, where)
        self.cache.flush()  # recorded before the counts are reported (a full disk raises DiskFull here)
        return counts[0], counts[1], counts[2]

    # -- single flight -------------------------------------------------------------------------

    def _claim(self, refs: Iterable[ChunkRef]) -> tuple[dict[bytes, _Pending], list[ChunkRef]]:
        """The pending load of each chunk, and those of the refs this caller must load itself (the
        others are under way already)."""
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
        return pendings, mine

    def _done(self, ref: ChunkRef, data: bytes | None, error, keep: bool = True) -> None:
        with self.inflight_lock:
            pending = self.inflight.pop(ref.digest, None)
        if data is not None and keep:
            self.memo.put(ref.digest, data)
        if pending is not None:
            pending.set(data, error)

    def _load_spread(self, refs: list[ChunkRef], where: Where) -> None:
        """A background load: chunks the node's cache holds are read in parallel, one pool task per
        `spread_bytes` of them (one thread reading them all in turn keeps one disk read in flight; a
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
                if size >= self.spread_bytes:
                    self.pool.submit(self._load, group, where)
                    handed.update(r.digest for r in group)
                    group, size = [], 0
        except Exception:  # noqa: BLE001 - the pool is closing, or LMDB failed: the rest is loaded here
            pass
        self._load([ref for ref in refs if ref.digest not in handed], where)

    def _load(self, refs: list[ChunkRef], where: Where) -> None:
        """Settle the pending loads of `refs` (claimed by this caller): from the node's cache, else
        from the store (then into the cache)."""
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
