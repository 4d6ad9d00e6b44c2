"""What a mount fetches before it is asked, and the tuning that says how much (`PrefetchConfig`).

The policies here decide only *what* to fetch ahead; `View` (and the FUSE adapter, for the page
cache) do the fetching, through the chunk reader. A View is given a `PrefetchConfig`; tests pass
their own instead of patching module globals.

- `SequentialWindow`, one per open file (mountpoint-s3's idea): a sequential reader gets a window
  past its read that starts at `min_prefetch`, doubles on every sequential read up to
  `max_prefetch` and to eight times the span read in order since the last seek, and resets on a
  seek (not on the small reorderings of the kernel's readahead and of several reader threads; a
  random reader gets nothing fetched ahead); once wide, it is topped up in `prefetch_step`s, so
  that a store gets a few coalesced GETs rather than one per chunk.
- `FilesAhead`, one per view: files opened in inode order (= path order: `find | xargs cat`,
  `cp -r`, `tar`, a loader going through a listing) get the next files' chunks fetched ahead, as a
  file's reader gets its next chunks: a small file is otherwise one round trip to the store per
  file, and the next files' chunks are usually adjacent in one pack (authoring packs in path
  order), so a few coalesced GETs bring hundreds of files.
- `PagePush`, one per mount: which files' bytes the FUSE adapter puts in the kernel's page cache
  ahead of a reader reading in order, so that their reads are answered by the kernel.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass


@dataclass(frozen=True)
class PrefetchConfig:
    """How far a mount reads ahead and how much it keeps; each value says why it is what it is."""

    min_prefetch: int = 1 << 20  # a sequential reader's window starts this far past its read...
    max_prefetch: int = 64 << 20  # ... and doubles on each sequential read up to this (SequentialWindow)
    prefetch_step: int = 8 << 20  # once wide, it is topped up in steps of this much (coalesced GETs)
    seek_forward: int = 16 << 20  # a read starting at most this far past where the reader got to, within what
    seek_back: int = 1 << 20  # was fetched ahead, or ending at most this far behind it, is in order (mountpoint-s3)
    files_ahead: int = 1024  # a reader reading files in order gets the next files' chunks fetched ahead: so many inodes
    files_ahead_bytes: int = 64 << 20  # ... or so many bytes of chunks, whichever comes first
    files_step: int = 128  # ... topped up whenever this many inodes were read (several batches in flight)
    files_in_order: int = 3  # ... once this many files in a row were read in order (one file read is just that)
    files_gap: int = 16  # a file at most this many inodes past the previous one read counts as "in order"
    files_first: int = 16  # ... and the first this many are asked for before the index records of the rest are read
    # (the reader, right behind, overtook the fetch meanwhile and fetched a file per GET)
    near_bytes: int = 1 << 20  # a small file fetched out of order brings the files packed within this many
    near_files: int = 64  # bytes around it (at most so many files each way): one ranged read, not one per file
    memo_bytes: int = 256 << 20  # verified chunks kept in memory: a FUSE read is 128 KiB - 1 MiB, a chunk ~1 MiB
    inline_bytes: int = 256 << 10  # a chunk this small may be read and verified on the event loop's thread
    spread_bytes: int = 1 << 20  # a prefetch reads cached chunks in pool tasks of about this many bytes each
    link_block: int = 4 << 20  # external files are read in blocks of this much, the last one kept
    warm_batch: int = 256 << 20  # bytes of chunks asked for per fetch while warming
    push_ahead: int = 256  # files put in the page cache ahead of a reader reading in order...
    push_low: int = 64  # ... topped up when the reader is this close to the last one pushed
    push_file_bytes: int = 1 << 20  # only files this small: the kernel's readahead serves bigger ones well


class SequentialWindow:
    """The read-ahead window of one open file.

    Reads of a file read in order do not arrive in order: the kernel's readahead has several
    requests in flight and the mount's threads answer them in any order, and a reader's own threads
    race. So a read counts as in order (the window grows, what was fetched ahead is kept) when it
    ends at most `seek_back` before where the reader got to (`next_offset`, the furthest end read:
    measured on the end, so two neighbouring reads of any size swapped still count), or starts at
    most `seek_forward` past it but within what was fetched ahead already (mountpoint-s3's rule: a
    random reader, who has nothing fetched ahead, is not taken for a sequential one by reads that
    happen to land near each other). Anything else is a seek: the window starts again, and nothing
    is fetched ahead until the next read follows in order (a random 4 KiB read must not cost a
    chunk's load beside its own). A read behind never moves `next_offset` back.

    The window doubles on each read in order, up to eight times the span the reader has covered in
    order since its last seek (from `run_from`, the first read in order after it, to `next_offset`),
    and at least `min_prefetch`: it grows with the bytes read, not only with the number of reads. Doubled on
    every read alone, a reader of 128 KiB pieces at random offsets, which a page-faulting mmap sends
    as 32 reads of 4 KiB in order, had a 64 MiB window after six of them and fetched megabytes per
    piece (fio 128 KiB mmap reads over 1 GiB: 31 reads/s, 50 ms of daemon CPU and 26 bytes from
    disk each byte served). Twice what was read (the kernel's ramp) cost readers of big files in
    order 5-10% (bench_mount seq, 4 x 256 MiB): eight times keeps their ramp."""

    __slots__ = ("config", "next_offset", "window", "prefetched_to", "in_order", "run_from", "lock")

    def __init__(self, config: PrefetchConfig):
        self.config = config
        self.in_order = True  # was the last read in order? (a random read is served by blocks: View.read)
        self.next_offset = 0
        self.run_from = 0  # where the reads in order since the last seek began (-1: none yet)
        self.window = config.min_prefetch
        self.prefetched_to = 0
        self.lock = threading.Lock()

    def advance(self, offset: int, end: int, size: int) -> tuple[int, int] | None:
        """[offset, end) of a file of `size` bytes is being read: the byte range to fetch ahead now,
        or None."""
        config = self.config
        with self.lock:
            reach = max(self.next_offset, min(self.prefetched_to, self.next_offset + config.seek_forward))
            self.in_order = self.next_offset - config.seek_back <= end and offset <= reach
            if self.in_order:
                if self.run_from < 0:
                    self.run_from = offset
                self.next_offset = max(self.next_offset, end)
                run = self.next_offset - self.run_from
                self.window = min(self.window * 2, config.max_prefetch, max(config.min_prefetch, 8 * run))
            else:  # a seek
                self.window = config.min_prefetch
                self.prefetched_to = 0
                self.next_offset = end
                self.run_from = -1
                return None
            ahead_from = max(self.next_offset, self.prefetched_to)
            ahead_to = min(self.next_offset + self.window, size)
            if ahead_to <= ahead_from:
                return None
            if ahead_to - ahead_from < min(self.window // 2, config.prefetch_step) and ahead_to < size:
                return None  # wait until a step is due: one 8 MiB ranged GET costs far less than eight of 1 MiB
            self.prefetched_to = ahead_to
        return ahead_from, ahead_to


class FilesAhead:
    """Which files' chunks to fetch ahead of a reader opening files in inode order.

    Topped up every `files_step` files, so that several batches are under way at once (with one
    batch at a time, topped up at half, a reader of small files from S3 caught up with it 66 times in
    10,000 files and waited 2.7 s of 7.2; 6 times and 0.5 s with this). The order is judged on opens
    (`opened`), as files whose bytes the mount put in the kernel's page cache are opened but never
    read; the fetch is asked for on a file's first read (`due`: open fetches nothing, SEMANTICS
    [lazy])."""

    def __init__(self, config: PrefetchConfig):
        self.config = config
        self.lock = threading.Lock()
        self.last_open = 0  # the file opened last (its inode)
        self.edge = 0  # the next files' chunks were asked for up to this inode (excluded)
        self.in_order = 0  # files opened in order in a row

    def opened(self, ino: int) -> None:
        with self.lock:
            last, self.last_open = self.last_open, ino
            if 0 < ino - last <= self.config.files_gap:
                self.in_order += 1
            else:
                self.edge = ino + 1
                self.in_order = 0

    def reading_in_order(self) -> bool:
        """Were the last files opened in inode order (`files_in_order` of them in a row)?"""
        return self.in_order >= self.config.files_in_order

    def due(self, ino: int) -> tuple[int, int] | None:
        """File `ino` is read for the first time: the inodes [start, stop) whose chunks to fetch
        ahead now, or None."""
        config = self.config
        with self.lock:
            if not self.reading_in_order():
                return None
            start = max(ino + 1, self.edge)
            if start - ino > config.files_ahead - config.files_step:
                return None
            stop = self.edge = ino + 1 + config.files_ahead
        return start, stop

    def stopped_at(self, ino: int) -> None:
        """A fetch ahead stopped after file `ino` (`files_ahead_bytes` reached): resume from there."""
        with self.lock:
            self.edge = min(self.edge, ino + 1)


class PagePush:
    """Which files the FUSE adapter puts in the kernel's page cache: the next `push_ahead` files
    while a reader opens files in inode order, topped up when it comes within `push_low` of the
    last one; only files of at most `push_file_bytes` that the node's cache holds (the adapter asks
    `View.cached_file`), so nothing is fetched for it. Reading 10,000 cached small files:
    3,600-4,000 -> 4,400-5,400 files/s (docs/mount.md)."""

    def __init__(self, config: PrefetchConfig):
        self.config = config
        self.edge = 0  # files are queued up to this inode (excluded)
        self.in_page_cache: set[int] = set()  # pushed, not opened since

    @property
    def file_bytes(self) -> int:
        return self.config.push_file_bytes

    def take(self, ino: int) -> bool:
        """Were this file's bytes pushed (and not yet opened since)? Then its read is not expected."""
        if ino in self.in_page_cache:
            self.in_page_cache.discard(ino)
            return True
        return False

    def opened(self, ino: int, in_order: bool) -> tuple[int, int] | None:
        """File `ino` was opened (in_order: the reader reads files in order): the inodes
        [start, stop) to push now, or None."""
        if not in_order:
            self.edge = ino + 1
            return None
        if self.edge - ino > self.config.push_low:
            return None
        start, self.edge = max(self.edge, ino + 1), ino + 1 + self.config.push_ahead
        return start, self.edge

    def pushed(self, ino: int) -> None:
        if len(self.in_page_cache) > 4 * self.config.push_ahead:  # pushed, never opened
            self.in_page_cache.clear()
        self.in_page_cache.add(ino)
