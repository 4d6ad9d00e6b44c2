"""Records a store (or a node's own cache) should never hold: each is refused with one line and a
distinct exit code, or repaired, never a traceback, never used as is.

- crafted records in a store: a parents cycle or a self-parent, a zstd frame that claims 1 TiB, a
  small pack that decodes to a 512 MiB chunk, a 4096-byte name (exit 8 for every command);
- damaged node-side derived data: a cached change-set, a file table, a view index record (each
  checked before use and rebuilt from the store), and `cache clear` removing all of it.
"""

from __future__ import annotations

import json
import os
import struct

import blake3
import pytest

import dsfs.lineage.viewindex
from dsfs import Dataset
from dsfs.node.cache import Cache
from dsfs.errors import CorruptData
from dsfs.lineage.filetable import FileTable, tables_dir
from dsfs.model import COMPRESSION_ZSTD, ChunkRef, Entry, encode_changeset
from dsfs.lineage.viewindex import ROOT, _dbs, drop_all_views, ensure_view
from conftest import final_version, make_tree, read_tree, run_cli
from servers import unavailable
from test_lineage_depth import Synth

EXT4 = "the test folders are on ext4, which holds mtimes past 2262"  # what CI provides


def _one_line_exit_8(result) -> None:
    assert result.code == 8, (result.code, result.err)
    assert result.err.count("\n") == 1 and "Traceback" not in result.err, result.err


# -- crafted records in a store ------------------------------------------------------------------

@pytest.fixture
def cyclic(tmp_path, file_store):
    """a <- b <- c, then a's record rewritten to name c as its parent: a cycle of three; and a record
    that names itself as its parent."""
    synth = Synth(file_store)
    a = synth.version([synth.file("x", 0)])
    b = synth.version([synth.file("y", 1)], [a.id])
    c = synth.version([synth.file("z", 2)], [b.id])
    a.parents = [c.id]
    synth.store.write_version(a)
    alone = synth.version([synth.file("w", 3)])
    alone.parents = [alone.id]
    synth.store.write_version(alone)
    return synth, c, alone


@pytest.mark.timeout(120)
def test_a_parents_cycle_is_refused_by_every_command(tmp_path, file_store, cyclic, dsfs):
    synth, c, alone = cyclic
    for ref, what in ((c.id, "parents lead back"), (alone.id, "names itself as its parent")):
        for args in (["list", "--id", ref], ["list", "--id", ref, "--modified"], ["download", ref, tmp_path / ref],
                     ["get", ref], ["cat", "z", "--id", ref], ["verify", "--id", ref, "--folder", tmp_path],
                     ["compare", "--source", ref, "--target", ref], ["squash", "--name", "s", "--ids", ref],
                     ["create", "--project", "p", "--name", "child", "--parents", ref],
                     ["export", ref, "--format", "tar", "-o", tmp_path / "x.tar"]):
            result = dsfs("--store", file_store, *args)
            _one_line_exit_8(result)
            assert what in result.err and "dataset" in result.err
    # what a user sees from the real command: one line, exit 8 (it was a RecursionError traceback)
    proc = run_cli("--store", file_store, "download", c.id, tmp_path / "real")
    assert proc.returncode == 8 and proc.stderr.count("\n") == 1 and "cycle" in proc.stderr


def _rle_frame(claim: int | None, size: int) -> bytes:
    """A zstd frame of `size` bytes of b"x" in RLE blocks of 128 KiB (4 bytes each), stating
    `claim` as its content size (None: states none)."""
    window = bytes([(17 - 10) << 3])  # a 128 KiB window
    if claim is None:
        header = bytes([0x00]) + window
    else:
        header = bytes([0xC0]) + window + struct.pack("<Q", claim)  # an 8-byte content size
    blocks, left = [], size
    while left:
        n = min(left, 128 << 10)
        left -= n
        blocks.append(struct.pack("<I", (n << 3) | (1 << 1) | (left == 0))[:3] + b"x")
    return struct.pack("<I", 0xFD2FB528) + header + b"".join(blocks)


def _version_of_one_chunk(synth: Synth, stored: bytes, raw: int, chunk_digest: bytes, name: str = "f"):
    pack_id = blake3.blake3(stored).digest()[:16]
    synth.store.write_pack(pack_id, stored)
    ref = ChunkRef(chunk_digest, pack_id, 0, len(stored), raw, COMPRESSION_ZSTD)
    return synth.version([Entry(name, raw, False, 0, chunk_digest, [ref])])


@pytest.mark.timeout(120)
def test_a_zstd_frame_claiming_1_tib_is_a_corrupt_chunk(tmp_path, file_store, dsfs):
    synth = Synth(file_store)
    data = b"x" * 1000
    info = _version_of_one_chunk(synth, _rle_frame(1 << 40, len(data)), len(data), blake3.blake3(data).digest())
    for args in (["cat", "f", "--id", info.id], ["download", info.id, tmp_path / "out"]):
        result = dsfs("--store", file_store, *args)
        _one_line_exit_8(result)
        assert "corrupt chunk" in result.err
    # the same bytes stating their true size are read: only the claim was wrong
    good = _version_of_one_chunk(synth, _rle_frame(len(data), len(data)), len(data), blake3.blake3(data).digest())
    assert Dataset.get(good.id, store=file_store).read_file("f") == data


@pytest.mark.timeout(120)
def test_a_small_pack_decoding_to_a_512_mib_chunk_is_refused(tmp_path, file_store, dsfs):
    size = 512 << 20
    hasher = blake3.blake3()
    block = b"x" * (1 << 20)
    for _ in range(size >> 20):
        hasher.update(block)
    synth = Synth(file_store)
    frame = _rle_frame(None, size)
    assert len(frame) < 17 << 10  # a 16 KiB pack
    info = _version_of_one_chunk(synth, frame, size, hasher.digest())
    for args in (["cat", "f", "--id", info.id], ["download", info.id, tmp_path / "out"], ["check"]):
        result = dsfs("--store", file_store, *args)
        if args[0] == "check":
            assert result.code != 0 and "at most 4194304 bytes" in result.out + result.err
            continue
        _one_line_exit_8(result)
        assert f"change-set of dataset {info.id}" in result.err and "at most 4194304 bytes" in result.err
    assert not os.path.exists(tmp_path / "out" / "f")
    # a listing reads no chunk and does not decode the chunk refs (docs/decisions.md): it shows the file
    assert dsfs("--store", file_store, "list", "--id", info.id).out.split() == ["size", "path", str(size), "f"]


@pytest.mark.timeout(120)
def test_a_4096_byte_name_is_refused(tmp_path, file_store, dsfs):
    synth = Synth(file_store)
    long = "d/" + "n" * 4096
    info = synth.version([synth.file("ok", 0), synth.file(long, 1)])
    for args in (["download", info.id, tmp_path / "out"], ["list", "--id", info.id], ["get", info.id]):
        result = dsfs("--store", file_store, *args)
        _one_line_exit_8(result)
        assert "longer than 255 bytes" in result.err
    # a name that long asked of a sound view is simply not there
    fine = synth.version([synth.file("ok", 0)])
    assert ensure_view(synth.store, Cache(), fine.id).lookup(ROOT, "n" * 4096) is None


@pytest.mark.parametrize("record", [{"changes": []}, {"parents": "0" * 32}, {"changes": {"digest": "x"}},
                                    {"parents": [7]}])
def test_a_record_with_fields_of_the_wrong_type_is_corrupt(file_store, dsfs, record):
    synth = Synth(file_store)
    info = synth.version([synth.file("f", 0)])
    data = {**info.to_json(), **record}
    synth.store._put(f"datasets/{info.id}/version.json", json.dumps(data).encode())
    for args in (["show", info.id], ["list", "--id", info.id]):
        result = dsfs("--store", file_store, *args)
        _one_line_exit_8(result)
        assert f"version record of dataset {info.id} is corrupt" in result.err


# -- damaged node-side derived data ------------------------------------------------------------

def _same_size_other_changes(synth: Synth):
    """Two versions whose change-sets differ only in the file's mtime, and are of one size."""
    for mtime in range(10**9, 10**9 + 1000):
        first = encode_changeset([synth.file("f", 0, mtime_ns=10**9 - 1)])
        second = encode_changeset([synth.file("f", 0, mtime_ns=mtime)])
        if len(first) == len(second) and first != second:
            return synth.version([], data=first), second
    raise AssertionError("no two change-sets of one size")


@pytest.mark.parametrize("damage", ["flip", "other change-set of the same size"])
def test_a_damaged_cached_change_set_is_fetched_again(tmp_path, file_store, damage):
    synth = Synth(file_store)
    info, other = _same_size_other_changes(synth)
    ds = Dataset.get(info.id, store=file_store)
    ds.download(str(tmp_path / "first"))
    path = Cache().changeset_path(info.id)
    good = open(path, "rb").read()
    if damage == "flip":
        bad = good[:-3] + bytes([good[-3] ^ 0x10]) + good[-2:]
    else:
        bad = other
    open(path, "wb").write(bad)
    drop_all_views(Cache())  # the view is built from the change-set again (as after `cache clear` before it
    # removed change-sets, or when a view index is damaged); compare reads change-sets on every run
    assert not Dataset.compare(info.id, info.id, store=file_store).modified
    ds.download(str(tmp_path / "second"))
    assert read_tree(tmp_path / "second") == {"f": synth.blobs[0]}
    assert os.stat(tmp_path / "second" / "f").st_mtime_ns == 10**9 - 1  # not the other change-set's
    assert open(path, "rb").read() == good  # the copy was replaced by the store's


def test_cache_clear_removes_every_derived_object(tmp_path, file_store, dsfs):
    make_tree(tmp_path / "d", {"f": b"x" * 100})
    first, _ = Dataset.sync(str(tmp_path / "d"), "p", "n", store=file_store)
    assert dsfs("--store", file_store, "download", first.id, tmp_path / "out").code == 0
    cache = Cache()
    assert os.listdir(os.path.join(cache.root, "changesets")) == [first.id]
    assert os.listdir(tables_dir()) == [first.id]
    assert dsfs("cache", "clear").code == 0
    assert not os.path.exists(os.path.join(cache.root, "changesets", first.id))
    assert not os.path.exists(tables_dir())
    with cache.env.begin() as txn:
        assert all(txn.stat(_dbs(cache)[name])["entries"] == 0 for name in ("views", "inodes", "dirents", "listing"))
    assert dsfs("--store", file_store, "download", first.id, tmp_path / "again").code == 0  # all made again


def test_a_damaged_file_table_is_ignored_and_made_again(tmp_path, memory_store):
    make_tree(tmp_path / "d", {f"f{i}": os.urandom(100) for i in range(5)})
    first, _ = Dataset.sync(str(tmp_path / "d"), "p", "n", store=memory_store)
    path = os.path.join(tables_dir(), first.id)
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0x01
    open(path, "wb").write(bytes(data))
    assert FileTable.load(first.info) is None
    (tmp_path / "d" / "f1").write_bytes(b"changed")
    second, changes = Dataset.sync(str(tmp_path / "d"), "p", "n", store=memory_store)
    assert (changes.modified, changes.unchanged) == (1, 4)
    assert Dataset.get(second.id, store=memory_store).list_modified_files() == ["f1"]
    assert FileTable.load(first.info) is not None  # rebuilt from the store, for the next child


def _damage_records(cache: Cache, table: str, prefix: bytes) -> int:
    """Flip one bit in the middle of every value of `table` under `prefix` (the view's number),
    as a bad disk would, through LMDB itself. Returns how many."""
    db = _dbs(cache)[table]
    with cache.env.begin(write=True, db=db) as txn:
        damaged = [(bytes(k), bytes(v)) for k, v in txn.cursor() if bytes(k).startswith(prefix)]
        for key, value in damaged:
            value = bytearray(value)
            value[len(value) // 2] ^= 0x01
            txn.put(key, bytes(value))
    return len(damaged)


@pytest.mark.parametrize("table", ["inodes", "dirents", "listing", "views"])
def test_a_damaged_view_index_record_is_rebuilt_from_the_store(tmp_path, file_store, table):
    files = {"a/b/c.txt": b"abc" * 7, "a/x": b"", "top": b"t" * 50}
    make_tree(tmp_path / "d", files)
    make_tree(tmp_path / "e", {"other": b"o"})
    ds = final_version(file_store, tmp_path / "d")
    other = final_version(file_store, tmp_path / "e", name="o")  # a second view: left alone
    cache = Cache()
    index = ensure_view(ds.store, cache, ds.id)
    ensure_view(other.store, cache, other.id)
    expected = {path: (node.size, node.digest, node.mtime_ns) for path, node in index.walk_files()}
    assert _damage_records(cache, table, bytes.fromhex(ds.id) if table == "views" else index.vid) > 0
    fresh = ensure_view(ds.store, cache, ds.id)
    assert {path: (node.size, node.digest, node.mtime_ns) for path, node in fresh.walk_files()} == expected
    assert fresh.resolve("a/b/c.txt").size == 21 and fresh.lookup(ROOT, "top").size == 50
    assert {p for p, _ in index.walk_files()} == set(files)  # an index opened before: answers the same
    Dataset.get(ds.id, store=file_store).use_cache(cache).download(str(tmp_path / "out"))
    assert read_tree(tmp_path / "out") == files
    assert [p for p, _ in ensure_view(other.store, cache, other.id).walk_files()] == ["other"]


def test_an_open_view_survives_cache_clear(tmp_path, file_store):
    make_tree(tmp_path / "d", {"a/f": b"f"})
    ds = final_version(file_store, tmp_path / "d")
    cache = Cache()
    index = ensure_view(ds.store, cache, ds.id)
    folder = index.resolve("a")
    cache.clear()  # another process's `dsfs cache clear` while a mount serves this view
    assert index.lookup(folder.ino, "f").size == 1 and index.getattr(ROOT).is_dir


def test_a_view_index_damaged_beyond_repair_names_the_cache(tmp_path, file_store, monkeypatch):
    make_tree(tmp_path / "d", {"f": b"f"})
    ds = final_version(file_store, tmp_path / "d")
    cache = Cache()
    index = ensure_view(ds.store, cache, ds.id)
    assert _damage_records(cache, "inodes", index.vid) > 0
    monkeypatch.setattr(dsfs.lineage.viewindex, "_seal", lambda key, value: value + b"\0\0\0\0")  # a disk that garbles
    with pytest.raises(CorruptData, match=f"view index of dataset {ds.id} in the node cache {cache.root}"):
        index.getattr(ROOT)


def test_check_names_the_versions_on_a_parents_cycle(cyclic, file_store, dsfs):
    synth, c, alone = cyclic
    result = dsfs("--store", file_store, "check", "--json")
    report = json.loads(result.out)
    assert result.code == 1
    on_cycle = {p["version"] for p in report["problems"] if "lead back to itself" in p["message"]}
    assert c.id in on_cycle and len(on_cycle) == 3
    assert alone.id in {p["version"] for p in report["problems"]}  # its record is refused as corrupt


def test_push_of_a_cycle_claims_nothing_at_the_target(cyclic, tmp_path, file_store):
    from dsfs import Store
    from dsfs.lifecycle.push import push

    synth, c, _ = cyclic
    target = Store.open(f"file://{tmp_path}/target", create=True)
    with pytest.raises(CorruptData):
        push(synth.store, synth.store.read_version(c.id), target)
    assert target.list_files("names") == []


def test_a_change_set_longer_than_its_record_says_is_never_read_whole(tmp_path, file_store):
    ds = final_version(file_store, _tree(tmp_path, {"a": b"a"}))
    store, info = ds.store, ds.info
    real = store._get(f"datasets/{ds.id}/changes.msgpack.zst")
    store._put(f"datasets/{ds.id}/changes.msgpack.zst", real + b"\0" * (8 << 20))
    got = store.read_changes(ds.id, info.changes["size"])
    assert len(got) == info.changes["size"] + 1
    with pytest.raises(CorruptData):
        ds.use_cache(Cache(str(tmp_path / "fresh-cache"))).download(str(tmp_path / "out"))


def test_a_name_over_255_bytes_is_refused_when_added(tmp_path, memory_store):
    from dsfs.errors import InvalidPath

    ds = Dataset.create("p", "n", store=memory_store)
    make_tree(tmp_path / "d", {"f": b"f"})
    with pytest.raises(InvalidPath, match="longer than 255 bytes"):
        ds.add_files(str(tmp_path / "d"), dataset_path="x" * 256)


def test_an_mtime_past_2262_is_recorded_as_the_last_instant(tmp_path, memory_store):
    from dsfs.model import MTIME_MAX

    make_tree(tmp_path / "d", {"future": b"f"})
    year_2300 = 10_413_792_000 * 10**9  # past int64 nanoseconds
    try:
        os.utime(tmp_path / "d" / "future", ns=(year_2300, year_2300))
    except (OSError, OverflowError) as exc:
        unavailable(f"this file system cannot hold it: {exc}", EXT4)
    if os.stat(tmp_path / "d" / "future").st_mtime_ns <= MTIME_MAX:
        unavailable("this file system clamps mtimes itself", EXT4)
    ds = final_version(memory_store, tmp_path / "d")
    assert ds.read_file("future") == b"f" and ds.file_entries()[0].mtime_ns == MTIME_MAX


def _tree(tmp_path, files):
    make_tree(tmp_path / "t", files)
    return tmp_path / "t"
