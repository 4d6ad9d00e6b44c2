"""The node cache across fork and spawn (dsfs.node.cache, "Forks"), which dsfs:// workers rely on: a
child forked after the parent read opens the cache again (a Cache it inherited and a new one), a
fork while a parent thread commits, a fork waits for the transactions of other threads and keeps
the parent's reader slots, a fork from inside a transaction leaves only that child without the
cache, and a spawned pool."""

from __future__ import annotations

import multiprocessing
import os
import random
import threading
import time

import blake3
import pytest
from conftest import final_version, make_tree

from dsfs import Dataset
from dsfs.errors import UsageError
from dsfs.node import cache as cache_module
from dsfs.node.cache import Cache

rng = random.Random(1919)
FILES = {f"d{i % 4}/f{i:03}.bin": rng.randbytes(rng.choice([700, 20_000, 90_000, 300_000])) for i in range(40)}
DIGESTS = {path: blake3.blake3(data).hexdigest() for path, data in FILES.items()}


@pytest.fixture
def dataset(tmp_path, file_store):
    make_tree(tmp_path / "src", FILES)
    return final_version(file_store, tmp_path / "src")


def _chunks(n: int, seed: int) -> list[tuple[bytes, bytes]]:
    pick = random.Random(seed)
    out = []
    for _ in range(n):
        data = pick.randbytes(pick.choice([3000, 70_000]))  # small chunks (in LMDB) and chunk files
        out.append((blake3.blake3(data).digest(), data))
    return out


def _pooled(method: str, processes: int, fn, batches: list) -> list:
    """fn over the batches in a multiprocessing pool, rows of every batch in one list; the workers
    end as a pool's do when it is closed (not terminated: a killed worker loses its last records)."""
    with multiprocessing.get_context(method).Pool(processes) as pool:
        results = pool.map(fn, batches)
        pool.close()
        pool.join()
    return [row for batch in results for row in batch]


# -- a fork after reads in the parent ----------------------------------------------------------------

_parent: dict = {}  # what forked children use: set before the fork (never pickled)


def _read_in_child(paths: list[str]) -> list[tuple[str, str, str, int]]:
    """(path, digest through the Dataset the parent used, through a new one, pid) of each path."""
    ds, store = _parent["ds"], _parent["store"]
    fresh = Dataset.get(ds.id, store=store)  # a new Cache of the same folder: the child's own environment
    return [(path, blake3.blake3(ds.read_file(path)).hexdigest(), blake3.blake3(fresh.read_file(path)).hexdigest(),
             os.getpid()) for path in paths]


def test_children_forked_after_a_read_from_s3_open_the_store_again(tmp_path, moto_server):
    """The Store a child inherits holds the parent's s3fs instance (its event loop, its
    connections), which s3fs refuses after a fork: the child's Store makes its own backend."""
    from dsfs import Store

    url = moto_server.new_url()
    store = Store.open(url, create=True, **moto_server.options)
    make_tree(tmp_path / "src", FILES)
    ds = final_version(store, tmp_path / "src")
    for path in sorted(FILES)[::5]:  # the parent's backend has run, on its own event loop
        assert ds.read_file(path) == FILES[path]
    _parent.update(ds=ds, store=store)
    paths = sorted(FILES)
    try:
        results = _pooled("fork", 2, _read_in_child, [paths[i::4] for i in range(4)])
    finally:
        _parent.clear()
    assert sorted(path for path, *_ in results) == paths
    for path, inherited, fresh, _ in results:
        assert inherited == fresh == DIGESTS[path], path


def test_children_forked_after_a_read_open_the_cache_again(dataset, file_store):
    ds = Dataset.get(dataset.id, store=file_store)
    read_first = sorted(FILES)[::3]
    for path in read_first:  # the parent's cache is open, and holds some of the chunks
        assert ds.read_file(path) == FILES[path]
    _parent.update(ds=ds, store=file_store)
    paths = sorted(FILES) * 2
    try:
        results = _pooled("fork", 4, _read_in_child, [paths[i::8] for i in range(8)])
    finally:
        _parent.clear()
    assert sorted(path for path, *_ in results) == sorted(paths)
    for path, inherited, fresh, _ in results:
        assert inherited == fresh == DIGESTS[path], path
    assert len({pid for *_, pid in results} - {os.getpid()}) >= 2  # several children read
    # what the children fetched and recorded is in the node cache the parent reads
    entries = {entry.path: entry for entry in ds.file_entries()}
    cold = [ref.digest for path in sorted(set(FILES) - set(read_first)) for ref in entries[path].chunks]
    assert all(ds.cache.has_chunk(digest) for digest in cold)
    assert all(ds.read_file(path) == FILES[path] for path in FILES)  # and the parent reads on


# -- a fork while a parent thread commits --------------------------------------------------------------

def _fork_child(work) -> int:
    """Fork; the child runs work() and exits 0 if it returned True (never returns in the child)."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = 0 if work() else 3
        except BaseException:  # noqa: BLE001 - the exit code says it failed; the traceback goes to stderr
            import traceback

            traceback.print_exc()
        finally:
            os._exit(code)
    return pid


def _waited(pid: int, timeout: float = 60.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    raise AssertionError(f"child {pid} hung")


def test_fork_while_the_parent_commits(dataset, file_store, tmp_path):
    """A thread of the parent stores chunks and commits in a loop (write transactions of its own and
    of the group committer) while the main thread forks; every child stores and reads chunks of its
    own and reads the dataset, and nothing hangs or is lost."""
    cache_dir = str(tmp_path / "cache")
    cache = Cache(cache_dir, 1 << 30)
    ds = Dataset.get(dataset.id, store=file_store).use_cache(cache)
    assert ds.read_file(sorted(FILES)[0]) == FILES[sorted(FILES)[0]]
    stop, written, errors = threading.Event(), [], []

    def writer():
        try:
            for round_ in range(300):
                if stop.is_set():
                    return
                time.sleep(0.002)
                batch = _chunks(4, round_)
                cache.put_chunks(batch)
                if round_ % 3 == 0:
                    cache.flush()  # a durable commit in this thread; the committer makes the others
                written.extend(digest for digest, _ in batch)
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            errors.append(exc)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        children = []
        for n in range(6):
            time.sleep(0.02)

            def work(n=n):
                mine = _chunks(3, 10_000 + n)
                cache.put_chunks(mine)  # the Cache made before the fork
                cache.flush()
                again = Cache(cache_dir)  # and a new one of the same folder
                return (all(again.get_chunk(digest) == data for digest, data in mine)
                        and all(ds.read_file(path) == FILES[path] for path in sorted(FILES)[n::6]))

            children.append(_fork_child(work))
        assert [_waited(pid) for pid in children] == [0] * len(children)
    finally:
        stop.set()
        thread.join()
    assert not errors, errors
    cache.flush()
    fresh = Cache(cache_dir)
    assert len(written) > 40 and all(fresh.has_chunk(digest) for digest in written)  # (none is evicted: all recent)
    for n in range(6):  # the children's chunks were committed to the shared index
        assert all(fresh.get_chunk(digest) == data for digest, data in _chunks(3, 10_000 + n))


# -- what a fork waits for, and what it leaves to the parent ----------------------------------------------

def test_a_fork_waits_for_the_transactions_of_other_threads(tmp_path):
    """A read transaction under way in another thread ends before the fork (the gate holds the fork
    until it does), so the child's closing the environment it inherited cannot free the parent's
    reader slot; the child then opens its own."""
    cache = Cache(str(tmp_path / "cache"), 1 << 30)
    stored = _chunks(2, 7)
    cache.put_chunks(stored)
    cache.flush()
    inside, ended = threading.Event(), []

    def reader():
        with cache.env.begin(db=cache.db_chunks) as txn:
            inside.set()
            time.sleep(0.5)
            assert txn.get(stored[0][0]) is not None
            ended.append(time.monotonic())

    thread = threading.Thread(target=reader)
    thread.start()
    inside.wait()
    pid = _fork_child(lambda: cache.get_chunk(stored[1][0]) == stored[1][1])
    forked = time.monotonic()
    thread.join()
    assert _waited(pid) == 0
    assert ended and forked >= ended[0]  # the fork went on once the transaction had ended
    assert cache.get_chunk(stored[0][0]) == stored[0][1]


def test_a_fork_from_inside_a_transaction_leaves_that_child_without_the_cache(tmp_path):
    """The forking thread's own transaction cannot end before the fork: the child must not close
    the environment (that would abort the transaction and free the parent's reader slot), so it
    cannot use that cache folder and says why; the parent's transaction reads on."""
    cache = Cache(str(tmp_path / "cache"), 1 << 30)
    stored = _chunks(1, 8)
    cache.put_chunks(stored)
    cache.flush()

    def child_fails_clearly():
        try:
            cache.get_chunk(stored[0][0])
        except UsageError as exc:
            return "forked by a thread inside a transaction" in str(exc)
        return False

    with cache.env.begin(db=cache.db_chunks) as txn:
        slots = _reader_slots(cache)
        assert len(slots) == 1
        pid = _fork_child(child_fails_clearly)
        assert _waited(pid) == 0
        assert _reader_slots(cache) == slots  # still the parent's
        assert txn.get(stored[0][0]) is not None
    assert cache.get_chunk(stored[0][0]) == stored[0][1]
    assert _waited(_fork_child(lambda: cache.get_chunk(stored[0][0]) == stored[0][1])) == 0  # outside it: fine


def _reader_slots(cache: Cache) -> list[str]:
    """The reader table's rows of this process (pid, thread, transaction)."""
    return [row for row in cache.env.lmdb.readers().splitlines()[1:] if row.split()[0] == str(os.getpid())]


def test_the_child_gets_a_committer_and_locks_of_its_own(tmp_path):
    """A lock another thread of the parent held at the fork (here: the pending records' commit lock,
    held for the whole fork) is not the child's: the child commits through its own."""
    cache = Cache(str(tmp_path / "cache"), 1 << 30)
    held, release = threading.Event(), threading.Event()

    def holder():
        with cache._pending.commit_lock:
            held.set()
            release.wait()

    thread = threading.Thread(target=holder)
    thread.start()
    held.wait()
    mine = _chunks(2, 9)
    try:
        def work():
            cache.put_chunks(mine)  # the child's committer is woken...
            time.sleep(0.2)
            cache.flush()  # ...and a flush takes the child's commit lock, not the parent's
            return cache_module._COMMITTER.thread is not None

        pid = _fork_child(work)
        assert _waited(pid, timeout=20) == 0
    finally:
        release.set()
        thread.join()
    assert all(Cache(cache.root).get_chunk(digest) == data for digest, data in mine)  # committed by the child


def _store_without_committer(root: str, seed: int) -> None:
    """In a worker: store chunks whose records only an exit can commit (no committer, no flush)."""
    cache_module._COMMITTER.due = lambda cache: None
    _parent["kept"] = Cache(root)  # (the committer would hold it until its records are committed)
    _parent["kept"].put_chunks(_chunks(3, seed))


def test_a_multiprocessing_worker_commits_its_records_at_exit(tmp_path):
    """A forked multiprocessing worker ends with os._exit, past atexit: its records are committed by
    multiprocessing's finalizers (registered in every child it forks)."""
    cache = Cache(str(tmp_path / "cache"), 1 << 30)
    assert cache.chunk_count() == 0
    worker = multiprocessing.get_context("fork").Process(target=_store_without_committer, args=(cache.root, 11))
    worker.start()
    worker.join(30)
    assert worker.exitcode == 0
    assert all(cache.get_chunk(digest) == data for digest, data in _chunks(3, 11))


# -- spawn -------------------------------------------------------------------------------------------------

def _read_spawned(args: tuple[str, str, list[str]]) -> list[tuple[str, str]]:
    dataset_id, store, paths = args
    ds = Dataset.get(dataset_id, store=store)
    return [(path, blake3.blake3(ds.read_file(path)).hexdigest()) for path in paths]


@pytest.mark.slow
def test_a_spawned_pool_reads_through_the_same_cache(dataset, file_store):
    ds = Dataset.get(dataset.id, store=file_store)
    assert ds.read_file(sorted(FILES)[0]) == FILES[sorted(FILES)[0]]  # the parent holds the cache open
    paths = sorted(FILES)
    results = _pooled("spawn", 2, _read_spawned, [(ds.id, file_store, paths[i::2]) for i in range(2)])
    assert sorted(results) == sorted(DIGESTS.items())
    entries = {entry.path: entry for entry in ds.file_entries()}
    assert all(ds.cache.has_chunk(ref.digest) for entry in entries.values() for ref in entry.chunks)


def _fetch_pool_in_child(_) -> bool:
    from dsfs.store import fetch

    return fetch._shared_pool() is not None


def test_a_fork_while_the_fetch_pool_lock_is_held_does_not_hang_the_child():
    """A thread of the parent holding the range-fetch pool's lock at the fork: the child's first
    fetch must not wait for a release that never comes there."""
    from dsfs.store import fetch

    with fetch._pool_lock, multiprocessing.get_context("fork").Pool(1) as pool:
        assert pool.apply_async(_fetch_pool_in_child, (0,)).get(timeout=20)
