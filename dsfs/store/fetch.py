"""Fetching chunks from the store: coalesced ranged GETs, in parallel, verified, with retries.

Chunks wanted from the same pack are sorted by offset and merged into one ranged GET while the gap
between them is at most `GAP` bytes and the range stays under `MAX_RANGE` (packs keep a folder's
files together, so a subtree becomes a few large reads instead of one request per file). Each chunk
is verified against its digest; a range with a corrupt chunk is fetched once more, and a chunk still
corrupt fails only the files that use it. A chunk beyond its pack's end is corrupt too (the store is
damaged), never a store failure.

A store that fails a read is retried by the one policy of `dsfs.retry` (only StoreUnavailable, never
a refusal; backoff with jitter, about 8 s in all; the environment variable `DSFS_RETRY_DELAYS`,
comma-separated seconds such as "0.05,0.05", replaces the delays), within one time limit for the
read and all its retries (`Store.time_limit`: the store's timeout plus a second per MiB), and only
while something listens at the store's endpoint: a refused connection ends the retries at once. So
a store that refuses is reported in seconds and a silent one in about its timeout, and a mount's
read gets EIO then, while the next read tries the store again.
Once a range failed, the ranges not yet started are given up, so a fetch of many ranges fails in
one time limit, not one per wave of workers.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

from dsfs import retry
from dsfs.errors import CorruptChunk
from dsfs.model import ChunkRef
from dsfs.store.layout import Store, deadline
from dsfs.store.packs import decode_chunk

GAP = 1 << 20
MAX_RANGE = 8 << 20  # measured against s3rver: 8, 16 and 32 MiB ranges give the same rate; 8 bounds memory
log = logging.getLogger(__name__)


@dataclass
class Range:
    pack: bytes
    start: int
    end: int
    refs: list[ChunkRef] = field(default_factory=list)


def plan_ranges(refs: Iterable[ChunkRef], gap: int = GAP, max_range: int = MAX_RANGE,
                every_copy: bool = False) -> list[Range]:
    """Group unique chunk refs into coalesced ranges, in (pack, offset) order. A chunk stored in
    several packs (unrelated uploads of the same bytes) is fetched once, or with every_copy from each
    of those packs (`dsfs check` proves every pack, not every chunk digest)."""
    unique: dict[bytes | tuple[bytes, bytes], ChunkRef] = {}
    for ref in refs:
        unique.setdefault((ref.pack, ref.digest) if every_copy else ref.digest, ref)
    ranges: list[Range] = []
    for ref in sorted(unique.values(), key=lambda r: (r.pack, r.offset)):
        last = ranges[-1] if ranges else None
        if (last is not None and last.pack == ref.pack and ref.offset - last.end <= gap
                and ref.offset + ref.stored - last.start <= max_range):
            last.end = max(last.end, ref.offset + ref.stored)
            last.refs.append(ref)
        else:
            ranges.append(Range(ref.pack, ref.offset, ref.offset + ref.stored, [ref]))
    return ranges


def read_with_retries(store: Store, pack: bytes, start: int, length: int, delays=None) -> bytes:
    """Bytes [start, start + length) of a pack (fewer if the pack ends sooner), retried (dsfs.retry;
    `delays` default to settings.retry_delays()) while the read's time limit lasts and the store's
    endpoint accepts connections: a refused connection is an answer, no use waiting for the limit."""
    limit = store.time_limit(length)
    what = f"read of pack {pack.hex()} [{start}, {start + length}) from {store.display_url}"
    log.debug("fetch %s", what)
    with deadline(limit):
        return retry.call(lambda: store.read_pack_range(pack, start, length), what, delays=delays,
                          ends=time.monotonic() + limit, between=store.reachable)


def fetch_range(store: Store, rng: Range, where: Callable[[ChunkRef], str]) -> tuple[dict, dict]:
    """Fetch one range; returns ({digest: raw bytes}, {digest: CorruptChunk}) for its chunks."""
    good: dict[bytes, bytes | memoryview] = {}  # an uncompressed chunk: a view into the range's bytes
    bad: dict[bytes, CorruptChunk] = {}
    todo = list(rng.refs)
    for attempt in range(2):  # a corrupt chunk is fetched once more before it counts as corrupt
        data = read_with_retries(store, rng.pack, rng.start, rng.end - rng.start)
        view = memoryview(data)
        retry = []
        for ref in todo:
            if ref.offset + ref.stored > rng.start + len(data):  # the pack ends sooner: fetching again won't help
                bad[ref.digest] = CorruptChunk(
                    f"chunk {ref.digest.hex()[:16]} lies beyond the end of pack {ref.pack.hex()} "
                    f"({rng.start + len(data)} bytes) in {store.display_url} ({where(ref)}): the store is "
                    f"damaged; `dsfs check` lists what it affects")
                continue
            stored = view[ref.offset - rng.start: ref.offset - rng.start + ref.stored]
            try:
                good[ref.digest] = decode_chunk(ref, stored, functools.partial(where, ref))
            except CorruptChunk as exc:
                if attempt == 0:
                    retry.append(ref)
                else:
                    bad[ref.digest] = exc
        if not retry:
            break
        todo = retry
    return good, bad


POOL_THREADS = 32  # range fetches under way in one process at most, whatever the callers ask
_pool: tuple[int, ThreadPoolExecutor] | None = None  # (pid, pool): a forked child makes its own
_pool_lock = threading.Lock()


def _new_pool_lock() -> None:
    """In a forked child: a lock another thread of the parent held at the fork would never be
    released here (its first fetch would hang)."""
    global _pool_lock
    _pool_lock = threading.Lock()


os.register_at_fork(after_in_child=_new_pool_lock)


def _shared_pool() -> ThreadPoolExecutor:
    """The process's one pool for range fetches. A pool per call started and joined a thread per
    fetch: on a cold shuffled epoch (one small file, one range each) that was a tenth of the reader
    threads' time. Tasks on it never wait for other tasks on it, so sharing cannot deadlock."""
    global _pool
    with _pool_lock:
        if _pool is None or _pool[0] != os.getpid():
            _pool = (os.getpid(), ThreadPoolExecutor(POOL_THREADS, thread_name_prefix="dsfs-fetch"))
        return _pool[1]


def _bounded(ranges: list[Range], task, max_workers: int):
    """Run task(range) with at most max_workers ranges of this call in flight (memory stays about
    max_workers x MAX_RANGE whatever the number of chunks), on the process's shared pool; yield
    (range, result) as each ends. A single range runs in the calling thread (no thread hop for a
    small file's one read). The first exception is raised and the ranges not started are cancelled."""
    if len(ranges) == 1:
        yield ranges[0], task(ranges[0])
        return
    limit = max(1, max_workers)
    failed = threading.Event()

    def guarded(rng):
        if failed.is_set():  # a range failed: the whole fetch fails, don't start another one
            return None
        try:
            return task(rng)
        except BaseException:
            failed.set()
            raise

    pool = _shared_pool()
    pending: dict[Future, Range] = {}
    it = iter(ranges)
    try:
        while True:
            while len(pending) < limit:
                rng = next(it, None)
                if rng is None:
                    break
                pending[pool.submit(guarded, rng)] = rng
            if not pending:
                return
            done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
            for future in done:
                yield pending.pop(future), future.result()
    finally:
        for future in pending:
            future.cancel()
        # a range still running when this call fails or is abandoned finishes on its own (its
        # handler runs, its result is dropped): wait, so the caller never sees a late handler
        failed.set()
        for future in pending:
            if not future.cancelled():
                try:
                    future.result()
                except BaseException:  # noqa: BLE001 - the first error was raised already
                    pass


def fetch_each(store: Store, refs: Iterable[ChunkRef], on_range: Callable[[Range, dict, dict], None],
               max_workers: int = 8, where: Callable[[ChunkRef], str] = lambda ref: "",
               every_copy: bool = False) -> None:
    """Fetch every ref and call on_range(range, {digest: raw bytes}, {digest: error}) in the thread
    that fetched the range, so that storing overlaps the network and ranges are stored in parallel.
    Returns when all are handled; raises the first exception a fetch or a handler raised (the
    ranges not started are cancelled). every_copy: see plan_ranges."""
    def work(rng: Range) -> None:
        on_range(rng, *fetch_range(store, rng, where))

    for _ in _bounded(plan_ranges(refs, every_copy=every_copy), work, max_workers):
        pass


def fetch_into(store: Store, refs: Iterable[ChunkRef],
               deliver: Callable[[ChunkRef, bytes | None, Exception | None], None],
               max_workers: int = 8, where: Callable[[ChunkRef], str] = lambda ref: "") -> None:
    """Fetch every ref and call deliver(ref, raw bytes or None, error or None) in the fetching
    thread, so writing overlaps the network (see fetch_each)."""
    def each(rng: Range, good: dict, bad: dict) -> None:
        for ref in rng.refs:
            deliver(ref, good.get(ref.digest), bad.get(ref.digest))

    fetch_each(store, refs, each, max_workers, where)
