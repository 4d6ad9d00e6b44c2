"""Random reads through a real mount (issue 15, its correctness half): what ML jobs do, every byte
compared with the source.

parquet, HDF5, numpy memmap and zip readers jump around inside a big file from several threads or
processes; a DataLoader's workers read the small files of an epoch in a shuffled order. One mount
serves the module, over an empty node cache (its own --cache-dir), so the first reads take the cold
path (store, verify, cache); later tests drop the file's pages from the kernel's page cache first
(the mount opens files with keep_cache, so a reopen alone would be answered by the kernel), so that
the daemon is asked again, and check from its /proc/<pid>/io that it was.

Processes come from a forkserver that has this module loaded (one import, not one per worker), and
report digests of what they read: the comparison is made here, against the source bytes.
"""

import mmap
import multiprocessing
import os
import random
import threading
from concurrent.futures import ThreadPoolExecutor

import blake3
import pytest
from fusehelp import node_fixture

from dsfs import Dataset

rng = random.Random(15)
BIG = rng.randbytes(24 << 20)  # ~20 content-defined chunks of ~1 MiB (256 KiB - 4 MiB)
SMALL = {f"shards/{part}/{i:03}.bin": rng.randbytes(rng.randint(1 << 10, 64 << 10))
         for part in ("train", "val", "test") for i in range(100)}  # ~10 MB in 300 files
FILES = {"big.bin": BIG, "README.md": b"# random access\n", "labels.csv": b"path,label\n" * 3000, **SMALL}
PAGE = 4096


node = node_fixture("random")


@pytest.fixture(scope="module")
def mounted(node):
    """(mountpoint, the chunk boundaries of big.bin, the daemon's pid): one mount, cold at first."""
    dataset = node.dataset(FILES, name="random")
    entry = next(e for e in Dataset.get(dataset, store=node.store).file_entries() if e.path == "big.bin")
    boundaries, pos = [], 0
    for ref in entry.chunks[:-1]:
        pos += ref.raw
        boundaries.append(pos)
    assert len(boundaries) >= 10, "big.bin should span many chunks"
    cache_dir = f"{node.base}/random-cache"
    assert not os.path.exists(cache_dir)  # the daemon starts with nothing cached: the cold path first
    with node.mounted(dataset, "random", "--cache-dir", cache_dir) as mountpoint:
        yield mountpoint, boundaries, node.record(mountpoint)["pid"]


@pytest.fixture(scope="module")
def processes():
    """A forkserver context whose server has imported pytest's script and this module once: a worker
    that imported them itself took ~1 s of CPU, 4 s for 8 workers on two cores."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["__main__", __name__])
    with pytest.MonkeyPatch.context() as mp:  # Python 3.11's forkserver ignores the sys.path it is sent
        mp.setenv("PYTHONPATH", os.pathsep.join(filter(None, [os.path.dirname(__file__),
                                                               os.environ.get("PYTHONPATH")])))
        with context.Pool(1) as pool:  # the server starts (and imports) now, while the variable is set
            pool.map(abs, [0])
    return context


# -- what the tests read -------------------------------------------------------------------------

def random_reads(seed: int, count: int, boundaries: list[int]) -> list[tuple[int, int]]:
    """(offset, size) of `count` reads of big.bin: 1 B to 300 KiB, sizes spread on a log scale (many
    small ones, as a 4 KiB random reader, and some that span pages and chunks), a third of them
    straddling a chunk boundary, a few starting near or past the end of the file."""
    pick = random.Random(seed)
    reads = []
    for _ in range(count):
        size = max(1, int(2 ** pick.uniform(0, 18.2)))  # up to ~300 KiB
        kind = pick.random()
        if kind < 0.33:
            offset = pick.choice(boundaries) - pick.randint(0, size)  # the boundary is inside [offset, offset + size]
        elif kind < 0.4:
            offset = len(BIG) - pick.randint(-(1 << 20), size)  # at the end, partly or wholly past it
        else:
            offset = pick.randrange(len(BIG))
        reads.append((max(0, offset), size))
    return reads


def expected(reads: list[tuple[int, int]]) -> list[bytes]:
    return [blake3.blake3(BIG[offset:offset + size]).digest() for offset, size in reads]


def pread_digests(path: str, reads: list[tuple[int, int]]) -> list[bytes]:
    """In a worker process: the file opened there, the reads made with pread, their digests."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return [blake3.blake3(os.pread(fd, size, offset)).digest() for offset, size in reads]
    finally:
        os.close(fd)


def file_digests(paths: list[str]) -> list[tuple[str, bytes]]:
    """In a worker process: a batch of files read whole, as a DataLoader's worker reads samples."""
    out = []
    for path in paths:
        with open(path, "rb") as f:
            out.append((path, blake3.blake3(f.read()).digest()))
    return out


def drop_page_cache(path: str) -> None:
    """Forget the file's pages in the kernel, so that its next reads go to the daemon."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def bytes_served(pid: int) -> int:
    """What the daemon has written so far (its replies to /dev/fuse are most of it)."""
    with open(f"/proc/{pid}/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("wchar:"))


def pages_touched(reads: list[tuple[int, int]]) -> int:
    """Bytes of the file's pages that the reads touch: at least this much must come from the daemon
    when none of them is in the page cache."""
    pages = {page for offset, size in reads if offset < len(BIG)
             for page in range(offset // PAGE, (min(offset + size, len(BIG)) - 1) // PAGE + 1)}
    return sum(min(PAGE, len(BIG) - page * PAGE) for page in pages)


# -- the tests -----------------------------------------------------------------------------------

def test_random_preads_from_8_threads_cold(mounted):
    """The first reads of the module: every chunk comes from the store, under 8 threads' reads at once."""
    mountpoint, boundaries, _ = mounted
    fd = os.open(f"{mountpoint}/big.bin", os.O_RDONLY)
    wrong = []
    lock = threading.Lock()

    def reader(seed: int) -> int:
        reads = random_reads(seed, 150, boundaries)
        for (offset, size), digest in zip(reads, expected(reads), strict=True):
            data = os.pread(fd, size, offset)
            if blake3.blake3(data).digest() != digest:
                with lock:
                    wrong.append((offset, size, len(data)))
        return len(reads)

    try:
        with ThreadPoolExecutor(8) as pool:
            assert sum(pool.map(reader, range(8))) == 8 * 150
    finally:
        os.close(fd)
    assert wrong == []


def test_random_preads_from_4_processes_after_the_page_cache_is_dropped(mounted, processes):
    mountpoint, boundaries, pid = mounted
    path = f"{mountpoint}/big.bin"
    jobs = [random_reads(100 + seed, 150, boundaries) for seed in range(4)]
    drop_page_cache(path)
    before = bytes_served(pid)
    with processes.Pool(4) as pool:
        got = pool.starmap(pread_digests, [(path, reads) for reads in jobs])
    for reads, digests in zip(jobs, got, strict=True):
        wrong = [read for read, digest, want in zip(reads, digests, expected(reads), strict=True) if digest != want]
        assert wrong == []
    touched = pages_touched([read for reads in jobs for read in reads])
    assert bytes_served(pid) - before >= touched  # the daemon was asked, not the page cache


def test_mmap_random_slices(mounted):
    mountpoint, boundaries, pid = mounted
    path = f"{mountpoint}/big.bin"
    reads = random_reads(200, 400, boundaries)
    drop_page_cache(path)
    before = bytes_served(pid)
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as mapped:
        assert len(mapped) == len(BIG)
        wrong = [(offset, size) for offset, size in reads if mapped[offset:offset + size] != BIG[offset:offset + size]]
    assert wrong == []
    assert bytes_served(pid) - before >= pages_touched(reads)


def test_shuffled_epoch_of_small_files_by_8_processes(mounted, processes):
    """A DataLoader's epoch: every small file once, in a shuffled order, batches spread over 8 workers;
    the first reads of these files, so each comes from the store."""
    mountpoint, _, _ = mounted
    order = sorted(SMALL)
    random.Random(300).shuffle(order)
    batches = [[f"{mountpoint}/{rel}" for rel in order[i:i + 8]] for i in range(0, len(order), 8)]
    with processes.Pool(8) as pool:
        got = dict(item for batch in pool.imap_unordered(file_digests, batches) for item in batch)
    assert len(got) == len(SMALL)
    wrong = [rel for rel, data in SMALL.items() if got[f"{mountpoint}/{rel}"] != blake3.blake3(data).digest()]
    assert wrong == []


def test_reordered_sequential_reads(mounted):
    """1 MiB pieces read in order but for neighbours swapped, as a reader's threads or the kernel's
    readahead deliver them; without the kernel's readahead (POSIX_FADV_RANDOM), so that the daemon
    sees the reads in this order."""
    mountpoint, _, pid = mounted
    path = f"{mountpoint}/big.bin"
    piece = 1 << 20
    order = list(range(len(BIG) // piece))
    swap = random.Random(400)
    i = 0
    while i < len(order) - 1:
        if swap.random() < 0.5:
            order[i], order[i + 1] = order[i + 1], order[i]
            i += 1  # pairs do not overlap: no piece is more than one place away from its turn
        i += 1
    assert order != sorted(order) and all(abs(n - i) <= 1 for i, n in enumerate(order))
    drop_page_cache(path)
    before = bytes_served(pid)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        wrong = [n for n in order if os.pread(fd, piece, n * piece) != BIG[n * piece:(n + 1) * piece]]
        assert os.pread(fd, piece, len(BIG) - 10) == BIG[-10:] and os.pread(fd, piece, len(BIG)) == b""
    finally:
        os.close(fd)
    assert wrong == []
    assert bytes_served(pid) - before >= len(BIG)
