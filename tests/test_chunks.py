"""The one read path for chunk bytes (dsfs.node.chunks.ChunkReader) as its users see it: `read_file`
and `cat` through the node cache, export through the cache the user chose, single flight across the
mount's and the download's forms; and the prefetch policy (dsfs.node.prefetch) as a config."""

from __future__ import annotations

import os
import shutil
import tarfile
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from dsfs.errors import CorruptChunk
from dsfs.node.cache import Cache
from dsfs.node.chunks import ChunkReader
from dsfs.node.prefetch import FilesAhead, PagePush, PrefetchConfig, SequentialWindow
from dsfs.node.view import View
from conftest import final_version, make_tree


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch):
    monkeypatch.setenv("DSFS_RETRY_DELAYS", "0.01,0.01")


class CountingStore:
    """Wraps a store: counts ranged reads, each of which takes `delay` seconds; the first `failures`
    of them fail as an unreachable store would."""

    def __init__(self, store, delay: float = 0.0, failures: int = 0):
        self.store = store
        self.delay = delay
        self.failures = failures
        self.calls = 0
        self.lock = threading.Lock()

    def __getattr__(self, name):
        return getattr(self.store, name)

    def read_pack_range(self, pack, offset, length):
        from dsfs.errors import StoreUnavailable

        with self.lock:
            self.calls += 1
            fail = self.calls <= self.failures
        if fail:
            raise StoreUnavailable("store unreachable (test)")
        threading.Event().wait(self.delay)
        return self.store.read_pack_range(pack, offset, length)


def _corrupt(cache: Cache, digest: bytes) -> None:
    path = cache._chunk_path(digest)
    raw = bytearray(open(path, "rb").read())
    raw[10] ^= 1
    open(path, "wb").write(bytes(raw))


def test_read_file_reads_through_the_node_cache_and_verifies(tmp_path, file_store):
    data = os.urandom(3 << 20)
    make_tree(tmp_path / "d", {"f": data})
    ds = final_version(file_store, tmp_path / "d")
    refs = ds.file_entries()[0].chunks
    assert len(refs) > 1
    cache = Cache(str(tmp_path / "cache"))
    ds.use_cache(cache)
    store = ds.store = CountingStore(ds.store, failures=1)
    assert ds.read_file("f") == data  # a failed read is retried
    assert store.calls == 2  # and the chunks come in one coalesced GET, not one per chunk
    assert all(cache.has_chunk(ref.digest) for ref in refs)  # kept in the node cache
    assert ds.read_file("f") == data and store.calls == 2  # served from the node cache
    _corrupt(cache, refs[1].digest)
    assert ds.read_file("f") == data  # a corrupt cached chunk is never handed out: fetched again
    assert store.calls == 3 and cache.get_chunk(refs[1].digest) is not None


def test_read_file_refuses_a_corrupt_chunk_of_the_store(tmp_path, file_store):
    make_tree(tmp_path / "d", {"f": os.urandom(100_000)})
    ds = final_version(file_store, tmp_path / "d")
    ref = ds.file_entries()[0].chunks[0]
    hexid = ref.pack.hex()
    path = f"{file_store[len('file://'):]}/packs/{hexid[:2]}/{hexid}"
    raw = bytearray(open(path, "rb").read())
    raw[ref.offset + 7] ^= 0xFF
    open(path, "wb").write(bytes(raw))
    with pytest.raises(CorruptChunk, match="f of dataset"):
        ds.read_file("f")
    assert not ds.cache.has_chunk(ref.digest)  # never stored


def test_export_reads_through_the_cache_the_user_chose(tmp_path, file_store, dsfs):
    files = {"a": os.urandom(200_000), "b/c": os.urandom(50_000)}
    make_tree(tmp_path / "d", files)
    ds = final_version(file_store, tmp_path / "d")
    mine = Cache(str(tmp_path / "mine"))
    View(ds.store, mine, ds.id).warm()
    shutil.rmtree(file_store[len("file://"):] + "/packs")  # from now on only a cache can serve the bytes
    out = tmp_path / "x.tar"
    result = dsfs("--store", file_store, "export", ds.id, "-o", out, "--cache-dir", tmp_path / "mine")
    assert result.code == 0, result.err
    with tarfile.open(out) as tar:
        assert {m.name: tar.extractfile(m).read() for m in tar.getmembers()} == files
    result = dsfs("--store", file_store, "export", ds.id, "-o", tmp_path / "y.tar")  # the default cache is empty
    assert result.code != 0 and not (tmp_path / "y.tar").exists()


def test_one_chunk_wanted_by_readers_and_a_download_is_fetched_once(tmp_path, memory_store):
    data = os.urandom(200_000)
    make_tree(tmp_path / "d", {"f": data})
    ds = final_version(memory_store, tmp_path / "d")
    ref = ds.file_entries()[0].chunks[0]
    store = CountingStore(ds.store, delay=0.2)
    reader = ChunkReader(store, Cache(), max_workers=4)  # one reader, as a mount and a download may share
    delivered = []
    with ThreadPoolExecutor(8) as pool:
        gets = [pool.submit(reader.get, [ref], lambda r: "f") for _ in range(6)]
        streamed = pool.submit(reader.each, [ref], lambda r, d, e: delivered.append((d, e)), lambda r: "f")
        assert [g.result() for g in gets] == [[data]] * 6
        streamed.result()
    assert delivered == [(data, None)] and store.calls == 1
    reader.close()


def test_streaming_keeps_nothing(tmp_path, memory_store):
    """A download's form delivers each chunk once and keeps no copy: neither in memory nor in the
    node cache (the downloaded files are the copy)."""
    files = {f"f{i}": os.urandom(30_000 + i) for i in range(5)}
    make_tree(tmp_path / "d", files)
    ds = final_version(memory_store, tmp_path / "d")
    refs = [ref for entry in ds.file_entries() for ref in entry.chunks]
    cache = Cache()
    reader = ChunkReader(ds.store, cache)
    got = {}
    reader.each(refs, lambda ref, data, error: got.setdefault(ref.digest, bytes(data)), lambda ref: "")
    assert sorted(got.values()) == sorted(files.values())
    assert not any(cache.has_chunk(ref.digest) for ref in refs) and reader.memo.used == 0
    reader.close()


def test_streaming_holds_no_chunk_once_delivered(tmp_path, file_store):
    """Memory of a download is bounded by the ranges in flight, not by the version: a chunk the
    callback let go of is freed (the single-flight records of a download's own loads kept every
    chunk of it alive until the end: 651 MB of RSS for a 512 MiB download)."""
    import tracemalloc

    make_tree(tmp_path / "d", {f"f{i:03}": os.urandom(100_000) for i in range(320)})  # 32 MB, one chunk each
    ds = final_version(file_store, tmp_path / "d")
    refs = [ref for entry in ds.file_entries() for ref in entry.chunks]
    reader = ChunkReader(ds.store, Cache(str(tmp_path / "cache")), max_workers=1)
    delivered = []
    tracemalloc.start()
    try:
        reader.each(refs, lambda ref, data, error: delivered.append(len(data)), lambda ref: "")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        reader.close()
    assert sum(delivered) == 32_000_000
    assert peak < 12_000_000, peak  # about one coalesced range (8 MiB at most) at a time, not all 32 MB


def test_a_view_takes_its_prefetch_tuning_from_its_config(tmp_path, memory_store):
    data = os.urandom(12 << 20)
    make_tree(tmp_path / "d", {"f": data})
    ds = final_version(memory_store, tmp_path / "d")
    config = PrefetchConfig(min_prefetch=1 << 20, max_prefetch=2 << 20)
    view = View(ds.store, Cache(), ds.id, config)
    handle = view.open(view.resolve("f").ino)
    out = bytearray()
    while len(out) < len(data):
        out += view.read(handle, len(out), 1 << 20)
    assert out == data and handle.ahead.window == 2 << 20  # grew, up to the config's maximum
    view.release(handle)
    view.close()


def test_sequential_window_grows_resets_and_steps():
    config = PrefetchConfig(min_prefetch=1 << 20, max_prefetch=16 << 20, prefetch_step=4 << 20)
    window = SequentialWindow(config)
    size = 100 << 20
    assert window.advance(0, 1 << 20, size) == (1 << 20, 3 << 20)  # sequential from 0: doubled to 2 MiB
    assert window.advance(1 << 20, 2 << 20, size) == (3 << 20, 6 << 20)
    spans = [(window.advance(n << 20, (n + 1) << 20, size), window.window) for n in range(2, 12)]
    assert window.window == 16 << 20  # twice what was read in order, up to the maximum
    # topped up in steps: half the window while it is small, then prefetch_step
    assert all(span is None or span[1] - span[0] >= min(w // 2, 4 << 20) for span, w in spans)
    assert [span for span, w in spans if span and w >= 8 << 20] and all(
        span[1] - span[0] >= 4 << 20 for span, w in spans if span and w >= 8 << 20)
    assert window.advance(50 << 20, 51 << 20, size) is None  # a seek resets the window, fetching nothing...
    assert window.window == 1 << 20
    assert window.advance(51 << 20, 52 << 20, size) == (52 << 20, 54 << 20)  # ... until a read follows in order
    assert window.advance(size - 10, size, size) is None  # nothing past the end


def test_sequential_window_grows_with_bytes_read_not_with_reads():
    """A page-faulting mmap reader of 128 KiB pieces at random offsets sends 32 reads of 4 KiB in
    order per piece: its window stays at the minimum (it was 64 MiB after six reads)."""
    config = PrefetchConfig(min_prefetch=1 << 20, max_prefetch=64 << 20, prefetch_step=8 << 20)
    window = SequentialWindow(config)
    size = 1 << 30
    fetched = 0
    for piece in (700, 20, 3000, 1500, 6000):  # 128 KiB pieces, far apart
        start = piece << 17
        for page in range(32):
            span = window.advance(start + (page << 12), start + ((page + 1) << 12), size)
            fetched += span[1] - span[0] if span else 0
        assert window.window == 1 << 20
    assert fetched <= 5 * (1 << 20) + (128 << 10)  # at most one minimum window ahead per piece
    # a reader that keeps going in order still gets the big window
    for n in range(1, 64):
        window.advance((6000 << 17) + (n << 20), (6000 << 17) + ((n + 1) << 20), size)
    assert window.window == 64 << 20


def test_sequential_window_tolerates_reordered_reads_but_not_seeks():
    """The kernel's readahead and a reader's threads reorder the reads of a file read in order: a
    small jump keeps the window growing and what was fetched ahead; a big one is a seek."""
    config = PrefetchConfig(min_prefetch=1 << 20, max_prefetch=16 << 20, prefetch_step=4 << 20)
    assert (config.seek_forward, config.seek_back) == (16 << 20, 1 << 20)  # mountpoint-s3's tolerances
    size = 200 << 20
    window = SequentialWindow(config)
    reached = 0
    for n in (0, 2, 1, 3, 5, 4, 7, 6):  # 1 MiB reads, neighbours swapped
        span = window.advance(n << 20, (n + 1) << 20, size)
        if span is not None:
            assert span[0] >= reached and span[0] >= window.next_offset  # never fetches behind what it did
            reached = span[1]
        assert window.prefetched_to == reached
    assert window.window == 16 << 20 and window.next_offset == 8 << 20  # grew on every read; not moved back
    assert reached > 16 << 20

    # Exactly at the tolerances: a read 1 MiB behind, and one 16 MiB ahead within what was fetched ahead.
    kept = window.prefetched_to
    assert window.advance(6 << 20, 7 << 20, size) is None  # ends 1 MiB behind: in order, nothing new due
    assert window.window == 16 << 20 and window.next_offset == 8 << 20 and window.prefetched_to == kept
    assert window.advance((8 << 20) + config.seek_forward, (9 << 20) + config.seek_forward, size) is not None
    assert window.window == 16 << 20 and window.next_offset == 25 << 20  # 16 MiB ahead: still in order

    # One byte further back is a seek: the window starts again, nothing fetched until reads are in order.
    assert window.advance((22 << 20) - 1, (24 << 20) - 1, size) is None
    assert window.window == 1 << 20 and window.next_offset == (24 << 20) - 1 and window.prefetched_to == 0

    # Ahead: past what was fetched ahead (a random reader has nothing fetched ahead) is a seek too.
    window = SequentialWindow(config)
    assert window.advance(0, 1 << 20, size) == (1 << 20, 3 << 20)
    assert window.advance((3 << 20) + 1, (4 << 20) + 1, size) is None  # 2 MiB past, beyond the 3 MiB fetched
    assert window.window == 1 << 20 and window.prefetched_to == 0
    random_reader = SequentialWindow(config)
    spans = [random_reader.advance(off << 12, (off + 1) << 12, size) for off in (9000, 9100, 8800, 12000, 3)]
    assert spans == [None] * 5  # 4 KiB reads near each other, never in order: nothing fetched ahead


def test_files_ahead_and_page_push_follow_files_opened_in_order():
    config = PrefetchConfig(files_ahead=100, files_step=10, files_in_order=3, files_gap=2,
                            push_ahead=20, push_low=5)
    files = FilesAhead(config)
    for ino in (10, 11, 12):
        files.opened(ino)
        assert files.due(ino) is None  # not yet in order
    files.opened(13)
    assert files.reading_in_order() and files.due(13) == (14, 114)
    assert files.due(14) is None  # the batch ahead is still far
    assert files.due(25) == (114, 126)  # within files_step of its end: topped up
    files.opened(40)  # a jump: out of order
    assert not files.reading_in_order() and files.due(40) is None

    push = PagePush(config)
    assert push.opened(5, in_order=False) is None
    assert push.opened(6, in_order=True) == (7, 27)
    assert push.opened(7, in_order=True) is None
    assert push.opened(22, in_order=True) == (27, 43)
    push.pushed(30)
    assert push.take(30) and not push.take(30)


def test_fetches_share_one_pool_and_one_range_stays_in_its_thread(tmp_path, file_store):
    """Range fetches run on one long-lived pool per process (a pool per call started a thread per
    small file), a single range in the calling thread, and a forked child gets a pool of its own."""
    from dsfs.store import fetch

    make_tree(tmp_path / "d", {f"f{i:03}": os.urandom(100_000) for i in range(100)})  # 10 MB: 2 ranges
    ds = final_version(file_store, tmp_path / "d")
    refs = [ref for entry in ds.file_entries() for ref in entry.chunks]
    assert len(fetch.plan_ranges(refs)) == 2
    threads = []
    fetch.fetch_each(ds.store, refs[:1], lambda rng, good, bad: threads.append(threading.current_thread()))
    assert threads == [threading.current_thread()]
    threads.clear()
    for _ in range(5):
        fetch.fetch_each(ds.store, refs, lambda rng, good, bad: threads.append(threading.current_thread()))
    assert len(threads) == 10 and all(t.name.startswith("dsfs-fetch") for t in threads)
    assert all(t.is_alive() for t in threads)  # the pool outlives the calls (one per call was joined after it)
    pid = os.fork()
    if pid == 0:  # the parent's pool threads do not exist here
        try:
            got = []
            fetch.fetch_each(ds.store, refs, lambda rng, good, bad: got.append(len(good)))
            os._exit(0 if sum(got) == len(refs) else 1)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
