"""Consuming versions on a node: the view index, download, get, verify, and the chunk cache."""

import json
import os
import random
import subprocess
import sys
import textwrap
import struct
import time

import blake3
from unittest.mock import ANY
import pytest

from dsfs import Dataset, Store
from dsfs.node.cache import Cache
from dsfs.errors import CorruptChunk, InvalidPath, StoreUnavailable, UsageError
from dsfs.lineage.merge import Lineage
from dsfs.model import encode_changeset
from dsfs.node.view import View
from dsfs.lineage.viewindex import ensure_view
from conftest import final_version, make_tree, read_tree, run_cli


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch):
    monkeypatch.setenv("DSFS_RETRY_DELAYS", "0.01,0.01")


def test_view_index_matches_reference_merge_on_random_lineages(tmp_path, memory_store):
    """The streaming LMDB flattening equals the in-memory merge, over random DAGs of versions."""
    rng = random.Random(7)
    versions = []
    for v in range(12):
        folder = tmp_path / f"v{v}"
        files = {f"d{rng.randrange(4)}/f{rng.randrange(30)}": rng.randbytes(rng.randrange(0, 3000))
                 for _ in range(rng.randrange(1, 15))}
        make_tree(folder, files)
        parents = rng.sample(versions, k=min(len(versions), rng.randrange(0, 3)))
        ds = Dataset.create("p", f"n{v}", parents=[p.id for p in parents], store=memory_store)
        ds.add_files(str(folder))
        if parents:
            have = ds.list_files()
            for path in rng.sample(have, k=min(len(have), 3)):
                if path not in files:
                    ds.remove_files(path)
        ds.finalize()
        versions.append(ds)
    cache = Cache()
    for ds in versions:
        expected = Lineage(ds.store).view(ds.id)
        index = ensure_view(ds.store, cache, ds.id)
        got = {path: (node.size, node.digest) for path, node in index.walk_files()}
        assert got == {p: (e.size, e.digest) for p, e in expected.items()}
        assert index.meta["files"] == len(expected)


def test_view_metadata(tmp_path, memory_store):
    make_tree(tmp_path / "d", {"a/b/c.txt": b"abc", "a/x": b"", "top": b"t"})
    os.chmod(tmp_path / "d" / "top", 0o755)
    ds = final_version(memory_store, tmp_path / "d")
    view = View(ds.store, Cache(), ds.id)
    root = view.getattr(view.root)
    assert root.is_dir and root.nlink == 3
    names = [name for _, name, _ in view.readdir(view.root)]
    assert names == ["a", "top"]
    pos, _, _ = next(view.readdir(view.root))
    assert [name for _, name, _ in view.readdir(view.root, pos)] == ["top"]  # resumable offsets
    top = view.lookup(view.root, "top")
    assert top.mode == 0o755 and top.size == 1
    assert top.mtime_ns == (tmp_path / "d" / "top").stat().st_mtime_ns
    assert view.read_path("a/b/c.txt", 1, 10) == b"bc"
    assert view.read_path("a/x") == b""
    with pytest.raises(UsageError):
        view.lookup(view.root, "missing")


def test_download_full_and_subsets(tmp_path, file_store, dsfs):
    files = {"train/a.bin": os.urandom(2 << 20), "train/b.txt": b"b", "val/c.txt": b"c", "README": b"r"}
    make_tree(tmp_path / "d", files)
    ds = final_version(file_store, tmp_path / "d")
    r = dsfs("--store", file_store, "download", ds.id, tmp_path / "full")
    assert r.code == 0, r.err
    assert read_tree(tmp_path / "full") == files
    st = (tmp_path / "full" / "train" / "a.bin").stat()
    assert st.st_mtime_ns == (tmp_path / "d" / "train" / "a.bin").stat().st_mtime_ns
    r = dsfs("--store", file_store, "download", "p/n", tmp_path / "part", "--include", "train", "--exclude", "*.txt")
    assert r.code == 0, r.err
    assert read_tree(tmp_path / "part") == {"train/a.bin": files["train/a.bin"]}
    r = dsfs("--store", file_store, "download", "p/n", tmp_path / "full")  # run again: already done
    assert r.code == 0 and "0 file(s) written" in r.out and "4 already complete" in r.out
    (tmp_path / "full" / "val" / "c.txt").write_bytes(b"changed!")
    os.utime(tmp_path / "full" / "val" / "c.txt", ns=(0, 0))
    r = dsfs("--store", file_store, "download", "p/n", tmp_path / "full")  # a file of someone else's now
    assert r.code == 2 and "not empty" in r.err and read_tree(tmp_path / "full")["val/c.txt"] == b"changed!"
    r = dsfs("--store", file_store, "download", "p/n", tmp_path / "full", "--overwrite")
    assert r.code == 0 and "3 already complete" in r.out
    assert read_tree(tmp_path / "full") == files


KILLER = textwrap.dedent("""
    import os, signal, sys
    import dsfs.node.materialize as m
    real = m._Writer._done
    count = [0]
    def done_then_die(*args):
        real(*args)
        count[0] += 1
        if count[0] == int(os.environ["KILL_AFTER"]):
            os.kill(os.getpid(), signal.SIGKILL)
    m._Writer._done = done_then_die
    from dsfs.cli.main import main
    main(sys.argv[1:])
""")


def test_killed_download_resumes(tmp_path, file_store, monkeypatch):
    files = {f"f{i:02d}": os.urandom(random.randrange(1, 600_000)) for i in range(30)}
    make_tree(tmp_path / "d", files)
    ds = final_version(file_store, tmp_path / "d")
    target = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-c", KILLER, "--store", file_store, "download", ds.id, str(target),
                           "--max-workers", "1"], env={**os.environ, "KILL_AFTER": "10"}, capture_output=True)
    assert proc.returncode == -9
    present = {n for n in os.listdir(target) if not n.startswith(".")}
    assert len(present) == 10
    for name in present:  # every file under its final name is complete
        assert (target / name).read_bytes() == files[name]
    fetched = []
    real = Store.read_pack_range
    monkeypatch.setattr(Store, "read_pack_range",
                        lambda self, pack, off, n: fetched.append(n) or real(self, pack, off, n))
    result = Dataset.get(ds.id, store=file_store).download(str(target))
    assert result.skipped == 10 and result.written == 20
    assert sum(fetched) < sum(len(files[n]) for n in files if n not in present) + (2 << 20)
    assert read_tree(target) == files


def test_download_goes_a_window_of_files_at_a_time(tmp_path, file_store, monkeypatch):
    """A download lists and writes WINDOW_FILES files at a time (its memory is bounded by the window,
    not the version): every file lands whatever window it falls in, content shared by files of
    different windows included, and a corrupt chunk in one window fails only its file, the files of
    the later windows being written all the same."""
    from dsfs.node import materialize

    monkeypatch.setattr(materialize, "WINDOW_FILES", 7)
    shared = os.urandom(20_000)
    files = {f"d{i % 3}/f{i:02d}": (shared if i % 5 == 0 else os.urandom(1000 + i)) for i in range(40)}
    make_tree(tmp_path / "d", files)
    ds = final_version(file_store, tmp_path / "d")
    result = ds.download(str(tmp_path / "all"))
    assert read_tree(tmp_path / "all") == files and result.written == 40
    assert ds.download(str(tmp_path / "some"), include=["d1/*"]).written == sum(p.startswith("d1/") for p in files)
    assert read_tree(tmp_path / "some") == {p: b for p, b in files.items() if p.startswith("d1/")}
    # every path is checked before anything is written, not a window at a time
    (tmp_path / "planted").mkdir()
    (tmp_path / "outside").mkdir()
    os.symlink(tmp_path / "outside", tmp_path / "planted" / "d2")  # d2/... come in the last windows
    with pytest.raises(InvalidPath, match="symlink"):
        ds.download(str(tmp_path / "planted"), overwrite=True)
    assert os.listdir(tmp_path / "planted") == ["d2"] and os.listdir(tmp_path / "outside") == []
    bad = "d1/f13"  # in the third window of seven (paths sorted: d0/..., then d1/...)
    from test_view import _corrupt_pack_byte

    _corrupt_pack_byte(file_store, {e.path: e for e in ds.file_entries()}[bad].chunks[0])
    with pytest.raises(CorruptChunk, match=f"1 file\\(s\\) could not be read .*{bad}; all other files are complete"):
        Dataset.get(ds.id, store=file_store).download(str(tmp_path / "one-bad"))
    assert read_tree(tmp_path / "one-bad") == {p: b for p, b in files.items() if p != bad} | {".dsfs-partial": ANY}


def test_unsafe_targets_are_refused_before_writing(tmp_path, file_store):
    make_tree(tmp_path / "d", {"sub/x": b"x", "y": b"y"})
    ds = final_version(file_store, tmp_path / "d")
    outside = tmp_path / "outside"
    outside.mkdir()
    target = tmp_path / "t"
    target.mkdir()
    os.symlink(outside, target / "sub")
    with pytest.raises(InvalidPath, match="symlink"):
        ds.download(str(target), overwrite=True)
    assert os.listdir(outside) == [] and sorted(os.listdir(target)) == ["sub"]


def test_escaping_manifest_path_is_refused(tmp_path, file_store):
    make_tree(tmp_path / "d", {"ok": b"ok"})
    ds = final_version(file_store, tmp_path / "d")
    evil = ds.file_entries()[0]
    evil.path = "../escaped"
    data = encode_changeset([evil])
    root = file_store[len("file://"):]
    open(f"{root}/datasets/{ds.id}/changes.msgpack.zst", "wb").write(data)
    record = json.load(open(f"{root}/datasets/{ds.id}/version.json"))
    import blake3

    record["changes"] = {"digest": blake3.blake3(data).hexdigest(), "size": len(data)}  # a hostile writer
    open(f"{root}/datasets/{ds.id}/version.json", "w").write(json.dumps(record))
    proc = run_cli("--store", file_store, "download", ds.id, tmp_path / "t")
    assert proc.returncode == 8 and "escaped" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "t").exists()


def test_target_not_writable(tmp_path, file_store):
    make_tree(tmp_path / "d", {"x": b"x"})
    ds = final_version(file_store, tmp_path / "d")
    proc = run_cli("--store", file_store, "download", ds.id, "/proc/dsfs-test")
    assert proc.returncode == 2 and "cannot write" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to mount a small tmpfs")
def test_disk_full_then_rerun(tmp_path, file_store):
    files = {f"f{i}": os.urandom(1 << 20) for i in range(6)}
    make_tree(tmp_path / "d", files)
    ds = final_version(file_store, tmp_path / "d")
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(small)], check=True)
    try:
        proc = run_cli("--store", file_store, "download", ds.id, small / "t")
        assert proc.returncode == 9 and "no space left" in proc.stderr and "Traceback" not in proc.stderr
        for name in os.listdir(small / "t"):
            if not name.startswith("."):
                assert (small / "t" / name).read_bytes() == files[name]
        subprocess.run(["mount", "-o", "remount,size=20m", str(small)], check=True)
        proc = run_cli("--store", file_store, "download", ds.id, small / "t")
        assert proc.returncode == 0, proc.stderr
        assert read_tree(small / "t") == files
    finally:
        subprocess.run(["umount", str(small)], check=True)


def test_store_flaky_then_down(tmp_path, file_store, monkeypatch):
    files = {"a": os.urandom(100_000), "b": os.urandom(100_000)}
    make_tree(tmp_path / "d", files)
    ds = final_version(file_store, tmp_path / "d")
    real = Store.read_pack_range
    failures = [2]

    def flaky(self, pack, off, n):
        if failures[0] > 0:
            failures[0] -= 1
            raise StoreUnavailable("connection reset")
        return real(self, pack, off, n)

    monkeypatch.setattr(Store, "read_pack_range", flaky)
    ds.download(str(tmp_path / "t1"))
    assert read_tree(tmp_path / "t1") == files
    monkeypatch.setattr(Store, "read_pack_range", lambda *a: (_ for _ in ()).throw(StoreUnavailable("down")))
    with pytest.raises(StoreUnavailable):
        Dataset.get(ds.id, store=file_store, cache=Cache(str(tmp_path / "other-cache"))).download(str(tmp_path / "t2"))
    assert [n for n in os.listdir(tmp_path / "t2") if not n.startswith(".")] == []


def test_corrupt_pack_fails_only_that_file(tmp_path, file_store):
    files = {"good1": os.urandom(50_000), "bad": os.urandom(50_000), "good2": os.urandom(50_000)}
    make_tree(tmp_path / "d", files)
    ds = final_version(file_store, tmp_path / "d")
    ref = {e.path: e for e in ds.file_entries()}["bad"].chunks[0]
    path = f"{file_store[7:]}/packs/{ref.pack.hex()[:2]}/{ref.pack.hex()}"
    data = bytearray(open(path, "rb").read())
    data[ref.offset + 5] ^= 1
    open(path, "wb").write(bytes(data))
    proc = run_cli("--store", file_store, "download", ds.id, tmp_path / "t")
    assert proc.returncode == 8 and "bad" in proc.stderr and "good" not in proc.stderr
    tree = read_tree(tmp_path / "t")
    assert json.loads(tree.pop(".dsfs-partial")) == {"id": ds.id}  # the marker a rerun resumes by
    assert tree == {"good1": files["good1"], "good2": files["good2"]}


def test_get_copy_link_and_sharing(tmp_path, file_store, dsfs, monkeypatch):
    files = {f"f{i}": os.urandom(20_000) for i in range(100)}
    make_tree(tmp_path / "d", files)
    parent = final_version(file_store, tmp_path / "d")
    r = dsfs("--store", file_store, "get", parent.id)
    assert r.code == 0, r.err
    copy = r.out.strip()
    assert read_tree(copy) == files
    assert os.stat(os.path.join(copy, "f1")).st_mode & 0o222 == 0  # read-only
    # a second get reuses the copy: no pack, change-set or chunk is read again
    with monkeypatch.context() as m:
        for name in ("read_pack_range", "read_changes"):
            m.setattr(Store, name, lambda *a: (_ for _ in ()).throw(AssertionError("store read")))
        assert dsfs("--store", file_store, "get", parent.id).out.strip() == copy
    # a 1%-changed child shares the unchanged files' inodes
    (tmp_path / "d" / "f0").write_bytes(b"changed")
    child = final_version(file_store, tmp_path / "d", parents=[parent.id])
    child_copy = child.get_local_copy()
    assert os.stat(os.path.join(child_copy, "f5")).st_ino == os.stat(os.path.join(copy, "f5")).st_ino
    assert open(os.path.join(child_copy, "f0"), "rb").read() == b"changed"
    # mutable copy and link
    r = dsfs("--store", file_store, "get", parent.id, "--copy", tmp_path / "mine")
    assert r.code == 0 and read_tree(tmp_path / "mine") == files
    (tmp_path / "mine" / "f1").write_bytes(b"mutable")
    assert open(os.path.join(copy, "f1"), "rb").read() == files["f1"]
    r = dsfs("--store", file_store, "get", parent.id, "--link", tmp_path / "ln")
    assert r.code == 0 and os.path.realpath(tmp_path / "ln") == copy
    assert dsfs("--store", file_store, "get", parent.id, "--link", tmp_path / "ln").code == 2


def test_verify(tmp_path, file_store, dsfs):
    files = {"a": b"aaa", "sub/b": b"bbb", "c": b"ccc"}
    make_tree(tmp_path / "d", files)
    ds = final_version(file_store, tmp_path / "d")
    r = dsfs("--store", file_store, "verify", "--id", ds.id)
    assert r.code == 2 and "dsfs get" in r.err  # nothing cached yet
    assert dsfs("--store", file_store, "get", ds.id).code == 0
    assert dsfs("--store", file_store, "verify", "--id", ds.id).code == 0
    ds.download(str(tmp_path / "t"))
    (tmp_path / "t" / "a").write_bytes(b"AAA")  # same size, other content
    (tmp_path / "t" / "sub" / "b").unlink()
    (tmp_path / "t" / "extra").write_bytes(b"")
    (tmp_path / "t" / "c").unlink()  # a folder where the version has a file: the file is missing
    (tmp_path / "t" / "c").mkdir()
    (tmp_path / "t" / "c" / "x").write_bytes(b"x")
    (tmp_path / "t" / "sub").rmdir()  # a file where the version has a folder
    (tmp_path / "t" / "sub").write_bytes(b"")
    r = dsfs("--store", file_store, "verify", "--id", ds.id, "--folder", tmp_path / "t", "--json")
    assert r.code == 1
    assert json.loads(r.out) == {"ok": False, "checked": 1, "missing": ["c", "sub/b"], "extra": ["extra", "sub", "c/x"],
                                 "different": ["a"], "stale": []}
    r = dsfs("--store", file_store, "verify", "--id", ds.id, "--folder", tmp_path / "t", "--filesize", "--json")
    assert json.loads(r.out)["different"] == []


@pytest.mark.parametrize("damage", ["flipped byte", "torn by a power loss"])
def test_cache_detects_corrupt_chunk_and_refetches(tmp_path, file_store, damage):
    # chunk files are not fsynced: after a power loss one may be empty or short under its final name
    data = os.urandom(3 << 20)
    make_tree(tmp_path / "d", {"f": data})
    ds = final_version(file_store, tmp_path / "d")
    cache = Cache()
    assert View(ds.store, cache, ds.id).read_path("f") == data
    digest = ds.file_entries()[0].chunks[0].digest
    chunk_file = cache._chunk_path(digest)
    raw = bytearray(open(chunk_file, "rb").read())
    if damage == "flipped byte":
        raw[0] ^= 1
    else:
        del raw[len(raw) // 3:]
    open(chunk_file, "wb").write(bytes(raw))
    assert cache.get_chunk(digest) is None and not cache.has_chunk(digest)  # dropped
    assert View(ds.store, cache, ds.id).read_path("f") == data  # fetched again
    assert cache.has_chunk(digest)


def test_cache_disk_full_leaves_no_temp_file_and_the_read_is_served(tmp_path, file_store):
    data = os.urandom(4 << 20)
    make_tree(tmp_path / "d", {"f": data})
    ds = final_version(file_store, tmp_path / "d")
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(small)], check=True)
    try:
        cache = Cache(str(small / "cache"))
        view = View(ds.store, cache, ds.id)
        assert view.read_path("f") == data  # served from memory
        view.pool.shutdown(wait=True)  # the read's prefetch may still be storing in the background
        assert [n for n in os.listdir(small / "cache" / "tmp") if not n.endswith(".lock")] == []
        stored = [e.digest for e in ds.file_entries()[0].chunks if cache.has_chunk(e.digest)]
        assert len(stored) < len(ds.file_entries()[0].chunks)  # some did not fit
        for digest in stored:  # what was recorded is whole
            assert cache.get_chunk(digest) is not None
    finally:
        subprocess.run(["umount", "-l", str(small)], check=True)  # lazily: this process keeps LMDB open


def test_cache_budget_evicts_lru_but_not_pinned(tmp_path, file_store):
    from dsfs.node.prefetch import PrefetchConfig

    make_tree(tmp_path / "d", {f"f{i}": os.urandom(100_000) for i in range(10)})
    ds = final_version(file_store, tmp_path / "d")
    cache = Cache(size=450_000)
    view = View(ds.store, cache, ds.id, PrefetchConfig(files_ahead=0))  # a fetch ahead would store in the background
    handle = view.open(view.resolve("f0").ino)
    view.read(handle, 0, 100)
    import dsfs.node.cache

    orig = dsfs.node.cache.RECENT_NS
    dsfs.node.cache.RECENT_NS = 0  # everything counts as old enough to evict
    try:
        for i in range(1, 10):
            view.read_path(f"f{i}")
        cache.flush()  # records are committed (and the budget enforced) in the background: now
    finally:
        dsfs.node.cache.RECENT_NS = orig
    assert cache.used_bytes() <= 450_000
    assert cache.has_chunk(handle.chunks[0].digest)  # pinned by an open file
    assert cache.has_chunk(view.resolve("f9").chunks_wire[0][0])  # most recent kept
    assert not cache.has_chunk(view.resolve("f1").chunks_wire[0][0])  # least recent gone
    view.release(handle)


def test_evict_drops_the_oldest_chunks_first(tmp_path, monkeypatch):
    """Eviction goes down the LRU order without skipping: deleting a key moved LMDB's cursor to the
    next one, and a `for` over the cursor then stepped past it, so every other old chunk was kept and
    newer ones evicted in their place."""
    import dsfs.node.cache

    monkeypatch.setattr(dsfs.node.cache, "RECENT_NS", 0)
    cache = Cache(str(tmp_path / "cache"), size=1 << 30)
    chunks = [os.urandom(1000) for _ in range(10)]
    digests = [blake3.blake3(c).digest() for c in chunks]
    for digest, data in zip(digests, chunks, strict=True):  # one at a time: each its own last use
        cache.put_chunks([(digest, data)])
        cache.flush()
    assert cache.evict(4000) == 6000
    assert [cache.has_chunk(d) for d in digests] == [False] * 6 + [True] * 4


def test_small_chunks_live_in_lmdb_and_older_caches_small_chunk_files_still_serve(tmp_path):
    """A chunk of at most cache.SMALL bytes is kept in LMDB, not in a file of its own (a file per
    small chunk was a third of a cold shuffled epoch's time); another process reads it; evicting it
    frees it. A cache written before that, whose small chunks are files, still serves and evicts them."""
    from dsfs.node.cache import SMALL

    root = str(tmp_path / "cache")
    cache = Cache(root, size=1 << 30)
    small, big = os.urandom(SMALL), os.urandom(SMALL + 1)
    small_digest, big_digest = blake3.blake3(small).digest(), blake3.blake3(big).digest()
    cache.put_chunks([(small_digest, memoryview(small)), (big_digest, big)])
    assert cache.get_chunk(small_digest) == small  # before its commit, from memory
    cache.flush()
    assert not os.path.exists(cache._chunk_path(small_digest)) and os.path.exists(cache._chunk_path(big_digest))
    read_back = subprocess.run([sys.executable, "-c", "import sys; from dsfs.node.cache import Cache; "
                                "sys.stdout.buffer.write(Cache(sys.argv[1]).get_chunk(bytes.fromhex(sys.argv[2])))",
                                root, small_digest.hex()], capture_output=True, check=True)
    assert read_back.stdout == small
    # a small chunk as a cache of the previous release stored it: a file, and a record only
    old = os.urandom(5000)
    old_digest = blake3.blake3(old).digest()
    cache._write_chunk(old_digest, old)
    now = time.time_ns() - 10**12
    with cache.env.begin(write=True) as txn:
        txn.put(old_digest, struct.pack(">QQ", len(old), now), db=cache.db_chunks)
        txn.put(struct.pack(">Q", now) + old_digest, b"", db=cache.db_lru)
        cache._add_used(txn, len(old))
    assert cache.get_chunk(old_digest) == old and cache.used_bytes() == len(small) + len(big) + len(old)
    assert cache.evict(0, keep_recent=False) == len(small) + len(big) + len(old)
    assert not any(cache.has_chunk(d) for d in (small_digest, big_digest, old_digest))
    assert not os.path.exists(cache._chunk_path(old_digest)) and not os.path.exists(cache._chunk_path(big_digest))
    with cache.env.begin(db=cache.db_small) as txn:
        assert txn.stat(cache.db_small)["entries"] == 0


def test_cache_cli(tmp_path, file_store, dsfs):
    make_tree(tmp_path / "d", {"f": os.urandom(200_000)})  # under the 256 KiB minimum chunk: one chunk
    ds = final_version(file_store, tmp_path / "d")
    View(ds.store, Cache(), ds.id).read_path("f")
    stats = json.loads(dsfs("cache", "stats", "--json").out)
    assert stats["chunks"] == 1 and stats["bytes"] == 200_000 and stats["views"] == 1
    assert dsfs("cache", "prune", "--to", "0").code == 0
    assert json.loads(dsfs("cache", "stats", "--json").out)["bytes"] == 0
    assert dsfs("--store", file_store, "get", ds.id).code == 0
    assert dsfs("cache", "clear").code == 0
    stats = json.loads(dsfs("cache", "stats", "--json").out)
    assert stats["views"] == 0 and stats["chunks"] == 0
    assert not os.path.exists(os.path.join(Cache().root, "copies", ds.id))


def test_cache_prune_and_clear_sweep_temp_files_of_killed_processes(tmp_path, dsfs):
    tmp = os.path.join(Cache().root, "tmp")
    old, fresh, lock = (os.path.join(tmp, n) for n in ("ab" * 32 + ".4242.1", "cd" * 32 + ".4243.1", "view-x.lock"))
    for path in (old, fresh, lock):
        with open(path, "wb") as f:
            f.write(b"x" * 1000)
    two_hours_ago = time.time() - 7200
    os.utime(old, (two_hours_ago, two_hours_ago))
    os.utime(lock, (two_hours_ago, two_hours_ago))
    # chunk files renamed into place whose records a killed process never committed
    cache = Cache()
    recorded_data = b"r" * 100_000  # a chunk file (a small chunk would be kept in LMDB)
    cache.put_chunks([(blake3.blake3(recorded_data).digest(), recorded_data)])
    cache.flush()
    recorded = cache._chunk_path(blake3.blake3(recorded_data).digest())
    orphans = [cache._chunk_path(blake3.blake3(bytes([n]) * 1000).digest()) for n in range(2)]
    for path in orphans:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(b"x" * 1000)
    for path in (recorded, orphans[0]):
        os.utime(path, (two_hours_ago, two_hours_ago))
    assert dsfs("cache", "prune", "--to", "1G").code == 0  # (a budget that evicts nothing)
    assert not os.path.exists(old) and os.path.exists(fresh) and os.path.exists(lock)
    assert os.path.exists(recorded) and not os.path.exists(orphans[0]) and os.path.exists(orphans[1])
    os.utime(fresh, (two_hours_ago, two_hours_ago))
    assert dsfs("cache", "clear").code == 0
    assert not os.path.exists(fresh) and os.path.exists(lock)


def test_parallel_downloads_share_the_cache(tmp_path, file_store):
    base = {f"f{i}": os.urandom(200_000) for i in range(20)}
    make_tree(tmp_path / "d", base)
    parent = final_version(file_store, tmp_path / "d")
    (tmp_path / "d" / "f0").write_bytes(b"new")
    child = final_version(file_store, tmp_path / "d", parents=[parent.id])
    procs = [subprocess.Popen([sys.executable, "-m", "dsfs.cli.main", "--store", file_store, "get", ds_id],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for ds_id in (parent.id, child.id, parent.id, child.id)]
    outs = [p.communicate() for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert read_tree(outs[0][0].strip()) == base
    assert read_tree(outs[1][0].strip()) == {**base, "f0": b"new"}
    assert outs[0][0] == outs[2][0]


def test_draft_cannot_be_consumed(tmp_path, file_store):
    draft = Dataset.create("p", "n", store=file_store)
    proc = run_cli("--store", file_store, "download", draft.id, tmp_path / "t")
    assert proc.returncode == 4 and "draft" in proc.stderr


def test_failed_view_build_leaves_no_records(tmp_path, file_store):
    """A view build that fails midway (here: a crafted change-set where 'x' is a file and a folder)
    leaves nothing behind, and a cache of an older format drops its views (they are derived)."""
    import blake3

    from dsfs.errors import Conflict
    from dsfs.lineage.viewindex import _dbs

    make_tree(tmp_path / "d", {"x": b"file", "z": b"z"})
    ds = final_version(file_store, tmp_path / "d")
    entry = ds.file_entries()[0]
    nested = encode_changeset([entry, type(entry)(path="x/y", size=entry.size, digest=entry.digest,
                                                  chunks=entry.chunks)])
    root = file_store[len("file://"):]
    open(f"{root}/datasets/{ds.id}/changes.msgpack.zst", "wb").write(nested)
    record = json.load(open(f"{root}/datasets/{ds.id}/version.json"))
    record["changes"] = {"digest": blake3.blake3(nested).hexdigest(), "size": len(nested)}
    open(f"{root}/datasets/{ds.id}/version.json", "w").write(json.dumps(record))
    cache = Cache()
    with pytest.raises(Conflict, match="both a file and a folder"):
        ensure_view(Store.open(file_store), cache, ds.id)
    with cache.env.begin() as txn:
        assert all(txn.stat(_dbs(cache)[name])["entries"] == 0 for name in ("views", "building", "inodes",
                                                                             "dirents", "listing"))
    make_tree(tmp_path / "e", {"ok": b"ok"})
    good = final_version(file_store, tmp_path / "e", name="good")
    ensure_view(good.store, cache, good.id)
    with cache.env.begin(write=True) as txn:
        txn.put(b"format", b"1", db=cache.db_meta)
    assert Cache().stats()["views"] == 0  # an older format's views are dropped and rebuilt on use
    assert View(good.store, Cache(), good.id).read_path("ok") == b"ok"
