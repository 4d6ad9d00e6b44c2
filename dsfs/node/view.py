"""`View`: a version as a read-only tree (lookup, readdir, getattr, read) over the view index, built
from a chunk reader (`dsfs.node.chunks`: memory, node cache, store; verified, single flight) and a
prefetch policy (`dsfs.node.prefetch`, tuned by a `PrefetchConfig`). It knows nothing of FUSE; the
mount's Operations class only translates to it.

Reads map a byte range to chunks and ask the chunk reader for them. Sequential readers of a file
get the chunks past their read loaded in the background (`SequentialWindow`); files read in inode
order (= path order) get the next files' chunks loaded ahead the same way (`FilesAhead`). A read
that is not in order is served from memory or from the blocks of the node's cache it touches
(`ChunkReader.read_part`), so random readers of big files do not re-read whole chunks.

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
from typing import Any, Literal, overload

from dsfs import paths
from dsfs.errors import DiskFull, PathNotFound
from dsfs.lineage.viewindex import ROOT, Inode, ViewIndex, ensure_view
from dsfs.model import ChunkRef
from dsfs.node import links
from dsfs.node.cache import Cache
from dsfs.node.chunks import ChunkReader
from dsfs.node.prefetch import FilesAhead, PrefetchConfig, SequentialWindow
from dsfs.store.layout import Store

log = logging.getLogger(__name__)


class OpenFile:
    """Per-open state: the node, its chunk offsets, and its read-ahead window."""

    def __init__(self, node: Inode, chunks: list[ChunkRef], config: PrefetchConfig):
        self.node = node
        self.chunks = chunks
        self.starts: list[int] = []
        pos = 0
        for ref in self.chunks:
            self.starts.append(pos)
            pos += ref.raw
        self.ahead = SequentialWindow(config)
        self.lock = threading.Lock()
        self.link: tuple[Any, str] | None = None  # (fs, path) of an external file, checked at open
        self.block: tuple[int, bytes] = (0, b"")  # the last block read from an external file
        self.unread = True  # no read yet (the first one may fetch the next files ahead)
        self.near_asked = False  # the files packed beside it were considered (a cold read out of order)

    def chunk_range(self, offset: int, end: int) -> range:
        first = max(0, bisect.bisect_right(self.starts, offset) - 1)
        last = max(first, bisect.bisect_left(self.starts, end) - 1) if end > offset else first
        return range(first, min(last + 1, len(self.chunks)))


class View:
    """One version, read-only, as lookup/readdir/getattr/read."""

    def __init__(self, store: Store, cache: Cache, dataset_id: str, config: PrefetchConfig | None = None,
                 max_workers: int = 8, reader: ChunkReader | None = None):
        """config: the prefetch policy's tuning (the defaults if None). reader: a chunk reader to
        share with other users of the same store and cache (one is made if None)."""
        config = config or PrefetchConfig()
        self.store = store
        self.cache = cache
        self.config = config
        self.index: ViewIndex = ensure_view(store, cache, dataset_id)
        self.dataset_id = dataset_id
        self.reader = reader or ChunkReader(store, cache, max_workers, memo_bytes=config.memo_bytes,
                                            spread_bytes=config.spread_bytes, inline_bytes=config.inline_bytes)
        self.pool = self.reader.pool  # background loads and fetches ahead run here
        self.files = FilesAhead(config)
        self.names: dict[int, str] = {}  # ino -> a path, for error messages (only for opened files)

    def close(self) -> None:
        self.reader.close()
        try:
            self.cache.flush()
        except DiskFull:
            pass  # the reads were served: the chunks not recorded for lack of space are fetched again

    # -- metadata ------------------------------------------------------------------------------

    def getattr(self, ino: int) -> Inode:
        node = self.index.getattr(ino)
        if node is None:
            raise PathNotFound(f"no inode {ino}")
        return node

    def lookup(self, parent: int, name: str) -> Inode:
        node = self.index.lookup(parent, name)
        if node is None:
            raise PathNotFound(f"{name} not found")
        return node

    def readdir(self, parent: int, start: int = 0):
        """(next position, name, Inode) from position `start`."""
        for seq, name, node in self.index.readdir(parent, start):
            yield seq + 1, name, node

    def resolve(self, path: str) -> Inode:
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

    def _chain(self, ino: int) -> list[tuple[str, Inode]]:
        """(name, Inode) from the root down to `ino`."""
        chain = [("", self.getattr(ROOT))]
        while chain[-1][1].ino != ino:
            node = chain[-1][1]
            child = self._child_holding(node.ino, ino) if node.is_dir else None
            if child is None:
                raise PathNotFound(f"no inode {ino}")
            chain.append(child)
        return chain

    def _child_holding(self, parent: int, ino: int) -> tuple[str, Inode] | None:
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

    @overload
    def open(self, ino: int, label: str = "", wait: Literal[True] = True, in_page_cache: bool = False) -> OpenFile: ...

    @overload
    def open(self, ino: int, label: str = "", *, wait: bool, in_page_cache: bool = False) -> OpenFile | None: ...

    def open(self, ino: int, label: str = "", wait: bool = True, in_page_cache: bool = False) -> OpenFile | None:
        """A handle for reading a file; its first chunk is loaded into memory if the node's cache
        holds it (the first read follows at once), unless in_page_cache: the kernel was given the
        file's bytes (the FUSE layer's push), so no read is expected.

        wait=False (an event loop's thread) never waits for a disk or the network (the view index's
        lookup is in LMDB's map), loads nothing, and answers None for an external file only (whose
        check asks its server). The first read loads what it needs, on the loop if the node's cache
        holds it in RAM (`read`): a file whose bytes the kernel still caches then costs no chunk
        load (a warm shuffled epoch: 17% of the loop's time went to loading chunks no read asked
        for), and a cold file no hand-off to a worker at open that finds nothing to load."""
        node = self.getattr(ino)
        if not wait and node.url:
            return None
        chunks = node.chunks  # built from the index record on each access: once here
        first = chunks[0] if chunks and wait and not in_page_cache else None
        self.files.opened(ino)
        handle = OpenFile(node, chunks, self.config)
        if node.url:
            handle.link = links.checked(node.url, node.etag, node.size, self._label(node, label))
        self.cache.pin(ref.digest for ref in chunks)
        if label:
            self.names[ino] = label
        if first is not None:
            # The first read follows at once: have its chunk in memory if the node's cache holds it,
            # so that it is answered without waiting (the store is never asked here).
            self.reader.to_memory(first)
        return handle

    def release(self, handle: OpenFile) -> None:
        self.cache.unpin(ref.digest for ref in handle.chunks)

    @overload
    def read(self, handle: OpenFile, offset: int, size: int, wait: Literal[True] = True) -> bytes | memoryview: ...

    @overload
    def read(self, handle: OpenFile, offset: int, size: int, wait: bool) -> bytes | memoryview | None: ...

    def read(self, handle: OpenFile, offset: int, size: int, wait: bool = True) -> bytes | memoryview | None:
        """Up to `size` bytes at `offset` (bytes-like: a memoryview when no copy was needed).

        wait=False never blocks: it answers None when a chunk is neither in memory nor, small, in
        the node's cache in RAM (and a random read's blocks are not in the page cache), so that an
        event loop serves those itself and sends only the rest to a worker thread."""
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
            if not handle.ahead.in_order:
                part = self._read_blocks(handle, indexes, offset, end)
                if part is not None:
                    return part
            if not handle.near_asked:
                handle.near_asked = True
                self._fetch_near(handle)
            pieces = self.reader.get(refs, lambda ref: self._label(node))
        else:
            # memory, or a small chunk the node's cache holds in RAM (what open used to load)
            found = [self.reader.held(ref, in_ram_only=True) for ref in refs]
            pieces = [data for data in found if data is not None]
            if len(pieces) < len(found):
                # A random read's blocks, if the page cache holds them: no worker thread, whose hop
                # costs more than the read (fuse_floor: 2,800 4 KiB reads/s through a thread, 9,700 on
                # the loop); up to inline_bytes, as to_memory's rule. The state of `ahead` is the last
                # read's here; it advances only once a read is answered (the worker's would again).
                random = not handle.ahead.in_order and end - offset <= self.config.inline_bytes
                part = self._read_blocks(handle, indexes, offset, end, True) if random else None
                if part is not None:
                    self._prefetch(handle, offset, end)
                return part
            self._prefetch(handle, offset, end)
        views = []
        for i, data in zip(indexes, pieces, strict=True):
            start = handle.starts[i]
            lo = max(offset, start) - start
            hi = min(end, start + len(data)) - start
            views.append(memoryview(data)[lo:hi])
        # a read inside one chunk (the common case) is served without copying the chunk's bytes
        return views[0] if len(views) == 1 else b"".join(views)

    def _read_blocks(self, handle: OpenFile, indexes: range, offset: int, end: int,
                     in_ram_only: bool = False) -> bytes | memoryview | None:
        """A random read: [offset, end) from memory or from the blocks of the node's cache it touches
        (ChunkReader.read_part), never loading whole chunks into memory (a random reader over more
        than the memo holds re-read and re-hashed a ~1.25 MiB chunk per 4 KiB read); None if a
        chunk is not there (the caller loads it the usual way). in_ram_only: only from memory or
        the page cache (an event loop's thread)."""
        parts = []
        for i in indexes:
            ref, start = handle.chunks[i], handle.starts[i]
            part = self.reader.read_part(ref, max(offset, start) - start, min(end, start + ref.raw) - start,
                                         in_ram_only)
            if part is None:
                return None
            parts.append(part)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def read_path(self, path: str, offset: int = 0, size: int | None = None) -> bytes:
        node = self.resolve(path)
        handle = self.open(node.ino, path)
        try:
            return bytes(self.read(handle, offset, node.size - offset if size is None else size))
        finally:
            self.release(handle)

    def _label(self, node: Inode, name: str = "") -> str:
        if not name:
            name = self.names.get(node.ino, "")
        if not name:
            try:
                name = self.path(node.ino)
            except PathNotFound:
                name = f"inode {node.ino}"
        return f"{name} of dataset {self.dataset_id}"

    def _read_link(self, handle: OpenFile, offset: int, end: int) -> bytes:
        """External files are read in `link_block` pieces, the last one kept: FUSE reads of 128 KiB
        then cost one ranged GET per block instead of one each."""
        assert handle.link is not None, "read() calls this for an external file only"
        fs, path = handle.link
        block = self.config.link_block
        out = bytearray()
        while offset < end:
            with handle.lock:
                start, data = handle.block
            if not (start <= offset < start + len(data)):
                start = offset - offset % block
                data = links.read_range(fs, path, start, min(start + block, handle.node.size), handle.node.url)
                with handle.lock:
                    handle.block = (start, data)
            piece = data[offset - start: end - start]
            out += piece
            offset += len(piece)
        return bytes(out)

    def _prefetch(self, handle: OpenFile, offset: int, end: int) -> None:
        span = handle.ahead.advance(offset, end, handle.node.size)
        if span is None:
            return
        wanted = [handle.chunks[i] for i in handle.chunk_range(*span)
                  if self.reader.in_memory(handle.chunks[i]) is None]
        if wanted:
            node = handle.node
            self.reader.load(wanted, lambda ref: self._label(node))

    def _prefetch_files(self, ino: int) -> None:
        """On a file's first read, the next files' chunks are loaded ahead if files are read in
        order (`FilesAhead` decides which)."""
        span = self.files.due(ino)
        if span is None:
            return
        ends = (self.index.getattr(span[0]), self.index.getattr(min(span[1] - 1, self.index.last_ino)))
        if all(node is not None and node.chunks and self.reader.to_memory(node.chunks[0], in_ram_only=True)
               for node in ends):
            # The files ahead are in the page cache (judged by the first and the last one: the first
            # alone may have come with the files packed near one read out of order): each first read
            # loads its chunk inline, which costs less than loading them in the pool (its threads
            # fought the loop over the GIL: 3,100-3,800 vs 4,000 files/s).
            return
        try:
            self.pool.submit(self._fetch_files, *span)
        except RuntimeError:
            pass  # the view is closing

    def _fetch_near(self, handle: OpenFile) -> None:
        """A small file the node's cache lacks, read while files are not read in order (a shuffled
        epoch): load in the background the chunks of the files packed beside it, within `near_bytes`
        of its chunk in the same pack, which the cache lacks too. Authoring packs files in path
        order, so these are its inode neighbours, and one ranged read brings them all: each of their
        opens is then a hit, where each cost a read of the store, a cache file and a thread hop. A
        neighbour already cached ends the search that way (a neighbour's read brought them)."""
        config = self.config
        node = handle.node
        if config.near_bytes <= 0 or len(handle.chunks) != 1 or self.files.reading_in_order():
            return
        anchor = handle.chunks[0]
        if self.reader.in_memory(anchor) is not None or self.cache.has_chunk(anchor.digest):
            return
        lo, hi = anchor.offset - config.near_bytes // 2, anchor.offset + config.near_bytes // 2
        owners: dict[bytes, Inode] = {}
        refs: list[ChunkRef] = []
        try:
            for step in (-1, 1):
                ino = node.ino
                for _ in range(config.near_files):
                    ino += step
                    near = self.index.getattr(ino) if ino > ROOT else None
                    if near is None:
                        break
                    if near.is_dir or near.url:
                        continue
                    if len(near.chunks) != 1:
                        break
                    ref = near.chunks[0]
                    if (ref.pack != anchor.pack or not lo <= ref.offset < hi or ref.digest in owners
                            or self.reader.in_memory(ref) is not None or self.cache.has_chunk(ref.digest)):
                        break
                    owners[ref.digest] = near
                    refs.append(ref)
            if refs:
                self.reader.load(refs, lambda ref: self._label(owners[ref.digest]))
        except Exception:  # noqa: BLE001 - a prefetch must never fail a reader; the read itself reports
            log.debug("fetch of the files near inode %d failed", node.ino, exc_info=True)

    def reading_in_order(self) -> bool:
        """Were the last files opened in inode order?"""
        return self.files.reading_in_order()

    def cached_file(self, ino: int, limit: int) -> bytes | None:
        """The whole content of a file of 1 to `limit` bytes if every chunk of it is in memory or in
        the node's cache (verified), else None; never asks the store. May read the disk."""
        node = self.index.getattr(ino)
        if node is None or node.is_dir or node.url or not 0 < node.size <= limit:
            return None
        pieces = []
        for ref in node.chunks:
            data = self.reader.cached(ref)
            if data is None:
                return None
            pieces.append(data)
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def _fetch_files(self, start: int, stop: int) -> None:
        """Load the chunks of files [start, stop) in the background, up to `files_ahead_bytes`."""
        owners: dict[bytes, Inode] = {}
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
                    if ref.digest not in owners and self.reader.in_memory(ref) is None:
                        owners[ref.digest] = node
                        refs.append(ref)
                        size += ref.raw
                if size >= self.config.files_ahead_bytes:
                    self.files.stopped_at(ino)
                    break
                if ino - start + 1 == self.config.files_first and refs:
                    self.reader.load(refs, lambda ref: self._label(owners[ref.digest]))
                    refs = []
            if refs:
                self.reader.load(refs, lambda ref: self._label(owners[ref.digest]))
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
            if size >= self.config.warm_batch:
                self._warm_batch(batch, counts)
                batch, size = {}, 0
        if batch and not (stop is not None and stop.is_set()):
            self._warm_batch(batch, counts)
        return counts

    def _warm_batch(self, batch: dict[bytes, ChunkRef], counts: dict) -> None:
        chunks, nbytes, failed = self.reader.fill_cache(batch.values(),
                                                        lambda ref: f"a chunk of dataset {self.dataset_id}")
        counts["chunks"] += chunks
        counts["bytes"] += nbytes
        counts["failed"] += failed
