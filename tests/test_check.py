"""`dsfs check` (dsfs.lifecycle.check): a healthy store passes; each kind of damage is found and named by
version and file, on every backend of the conformance suite; --read-data re-hashes chunks (a subset
of them deterministically); the CLI's exit codes and JSON."""

from __future__ import annotations

import json
import os
import uuid

import pytest

from dsfs import Dataset, Store
from dsfs.lifecycle.check import (BEYOND_PACK_END, CORRUPT_CHANGE_SET, CORRUPT_CHUNK, CORRUPT_RECORD, MISSING_CHANGE_SET,
                        MISSING_PACK, MISSING_PARENT, check_store, parse_subset)
from dsfs.errors import UsageError
from dsfs.lineage.merge import load_changes
from conftest import final_version, make_tree
from test_store_conformance import backend  # noqa: F401 (fixture)


def _version(store: Store, tmp_path, files: dict[str, bytes], parents=None, name="n") -> Dataset:
    folder = tmp_path / f"src-{uuid.uuid4().hex[:8]}"
    make_tree(folder, files)
    return final_version(store, folder, parents=parents, name=name)


def _refs(store: Store, ds: Dataset) -> dict:
    """{path: chunk refs} of a version's own change-set."""
    return {e.path: e.chunks for e in load_changes(store, ds.info) if not e.removed}


def _pack_of(store: Store, ds: Dataset) -> bytes:
    (pack,) = {ref.pack for refs in _refs(store, ds).values() for ref in refs}
    return pack


def _flip(store: Store, pack: bytes, offset: int) -> None:
    data = bytearray(store.read_pack(pack))
    data[offset] ^= 0x40
    store.write_pack(pack, bytes(data))


def _found(report) -> set[tuple[str, str, str]]:
    return {(p.version, p.path, p.kind) for p in report.problems}


# -- on every backend ------------------------------------------------------------------------------


def test_healthy_store_passes(backend, tmp_path):
    store = backend.store()
    parent = _version(store, tmp_path, {"a.txt": b"hello", "big.bin": os.urandom(700_000)})
    _version(store, tmp_path, {"c.txt": b"child"}, parents=[parent.id])
    Dataset.create("p", "draft", store=store)  # a draft's record is read, it has no change-set yet
    store.write_pack(os.urandom(16), b"left by an interrupted upload")
    report = check_store(store, read_data=True)
    assert report.ok, report.problems
    assert (report.versions, report.final, report.drafts) == (3, 2, 1)
    assert report.files == 3 and report.packs == 3
    assert (report.unreferenced_packs, report.unreferenced_bytes) == (1, len(b"left by an interrupted upload"))
    assert report.data_chunks == report.chunk_refs >= 3 and report.data_packs == 2


def test_missing_pack(backend, tmp_path):
    store = backend.store()
    ds = _version(store, tmp_path, {"a.txt": b"hello", "sub/b.txt": b"world"})
    child = _version(store, tmp_path, {"c.txt": b"child"}, parents=[ds.id])
    _version(store, tmp_path, {"x.txt": b"unrelated"}, name="other")
    store.delete_pack(_pack_of(store, ds))
    report = check_store(store)
    assert _found(report) == {(ds.id, "a.txt", MISSING_PACK), (ds.id, "sub/b.txt", MISSING_PACK)}
    assert report.problems[0].ref == ds.info.ref
    assert report.affected == {child.id: child.info.ref}  # it inherits a.txt and sub/b.txt


def test_truncated_pack(backend, tmp_path):
    store = backend.store()
    ds = _version(store, tmp_path, {"a.bin": os.urandom(1000), "b.bin": os.urandom(1000)})
    pack = _pack_of(store, ds)
    store.write_pack(pack, store.read_pack(pack)[:1500])  # packs hold files in path order: b.bin is cut
    assert _found(check_store(store)) == {(ds.id, "b.bin", BEYOND_PACK_END)}


def test_flipped_byte_is_found_only_by_reading_data(backend, tmp_path):
    store = backend.store()
    ds = _version(store, tmp_path, {"a.bin": os.urandom(5000), "b.bin": os.urandom(5000)})
    ref = _refs(store, ds)["b.bin"][0]
    _flip(store, ref.pack, ref.offset + 7)
    assert check_store(store).ok  # sizes are intact: the listing cannot tell
    assert _found(check_store(store, read_data=True)) == {(ds.id, "b.bin", CORRUPT_CHUNK)}


def test_missing_change_set(backend, tmp_path):
    store = backend.store()
    ds = _version(store, tmp_path, {"a.txt": b"hello"})
    _version(store, tmp_path, {"x.txt": b"unrelated"}, name="other")
    store.fs.rm_file(store._p(f"datasets/{ds.id}/changes.msgpack.zst"))
    assert _found(check_store(store)) == {(ds.id, "", MISSING_CHANGE_SET)}


def test_changed_change_set(backend, tmp_path):
    store = backend.store()
    ds = _version(store, tmp_path, {"a.txt": b"hello"})
    data = store.read_changes(ds.id)
    store.write_changes(ds.id, data[:-1] + bytes([data[-1] ^ 1]))  # same size, other bytes
    assert _found(check_store(store)) == {(ds.id, "", CORRUPT_CHANGE_SET)}


def test_corrupt_record(backend, tmp_path):
    store = backend.store()
    ds = _version(store, tmp_path, {"a.txt": b"hello"})
    child = _version(store, tmp_path, {"b.txt": b"child"}, parents=[ds.id])
    store._put(f"datasets/{ds.id}/version.json", b'{"id": "not json')
    report = check_store(store)
    assert _found(report) == {(ds.id, "", CORRUPT_RECORD), (child.id, "", MISSING_PARENT)}
    assert report.versions == 2  # reported, not skipped as a listing skips it
    assert "corrupt record" in next(p.message for p in report.problems if p.kind == MISSING_PARENT)


def test_missing_parent(backend, tmp_path):
    store = backend.store()
    parent = _version(store, tmp_path, {"a.txt": b"hello"})
    child = _version(store, tmp_path, {"b.txt": b"child"}, parents=[parent.id])
    store.delete_version(parent.id)  # what `delete --force` of a parent does
    report = check_store(store)
    assert _found(report) == {(child.id, "", MISSING_PARENT)}
    assert f"parent {parent.id} is missing" in report.problems[0].message


# -- one backend ------------------------------------------------------------------------------------


@pytest.fixture
def store(memory_store):
    return Store.open(memory_store, create=True)


def test_missing_squash_source(store, tmp_path):
    source = _version(store, tmp_path, {"a.txt": b"hello"})
    flat = Dataset.squash("flat", [source.id], store=store)
    store.delete_version(source.id)  # its packs stay: the squashed version still reads them
    report = check_store(store)
    assert _found(report) == {(flat.id, "", MISSING_PARENT)}
    assert f"squash source {source.id} is missing" in report.problems[0].message


def _packs_read(store: Store, monkeypatch) -> list[bytes]:
    """Every pack id read_pack_range is asked for, in order."""
    reads: list[bytes] = []
    real = store.read_pack_range

    def spy(pack, offset, length):
        reads.append(pack)
        return real(pack, offset, length)

    monkeypatch.setattr(store, "read_pack_range", spy)
    return reads


def test_a_shared_pack_is_read_once(store, tmp_path, monkeypatch):
    files = {"a.bin": os.urandom(4000), "b.bin": os.urandom(4000)}
    first = _version(store, tmp_path, files, name="a")
    second = _version(store, tmp_path, files, name="b")  # the same bytes: the same pack
    assert _pack_of(store, first) == _pack_of(store, second)
    reads = _packs_read(store, monkeypatch)
    report = check_store(store, read_data=True, progress=True)
    assert report.ok and reads == [_pack_of(store, first)] and report.data_chunks == 2


def test_every_copy_of_a_chunk_is_read(store, tmp_path):
    shared = os.urandom(4000)
    both = _version(store, tmp_path, {"f.bin": shared, "g.bin": os.urandom(4000)}, name="both")
    alone = _version(store, tmp_path, {"f.bin": shared}, name="alone")  # unrelated: its own pack
    for ds in (both, alone):
        ref = _refs(store, ds)["f.bin"][0]
        _flip(store, ref.pack, ref.offset)
    assert _found(check_store(store, read_data=True)) == {(both.id, "f.bin", CORRUPT_CHUNK),
                                                          (alone.id, "f.bin", CORRUPT_CHUNK)}


def test_read_data_subset_is_deterministic(store, tmp_path, monkeypatch):
    packs = {_pack_of(store, _version(store, tmp_path, {"f.bin": os.urandom(2000)}, name=f"n{i}")) for i in range(16)}
    reads = _packs_read(store, monkeypatch)

    def read_by(spec) -> set[bytes]:
        reads.clear()
        report = check_store(store, read_data=spec)
        assert report.ok and report.data_packs == len(set(reads))
        return set(reads)

    half = read_by("50%")
    assert half == {p for p in packs if int.from_bytes(p[:8], "big") < 1 << 63}  # the documented rule
    assert read_by("50%") == half == read_by(0.5)  # the same packs on every run
    assert read_by("25%") <= half
    thirds = [read_by(f"{n}/3") for n in (1, 2, 3)]
    assert set().union(*thirds) == packs and sum(len(t) for t in thirds) == len(packs)  # each pack once
    assert read_by(True) == packs


@pytest.mark.parametrize("spec", ["0%", "101%", "50", "0/3", "4/3", "x", 0.0, 1.5])
def test_bad_subset_is_a_usage_error(spec):
    with pytest.raises(UsageError):
        parse_subset(spec)


def test_version_deleted_during_the_check_is_not_reported(store, tmp_path, monkeypatch):
    doomed = _version(store, tmp_path, {"a.txt": b"hello"}, name="doomed")
    real = store.read_changes

    def deleted_meanwhile(dataset_id, size=None):  # another machine deletes it after its record was read
        if dataset_id == doomed.id:
            store.delete_version(dataset_id)
        return real(dataset_id, size)

    monkeypatch.setattr(store, "read_changes", deleted_meanwhile)
    assert check_store(store).ok


def test_a_version_finalized_during_the_check_is_not_damaged(store, tmp_path, monkeypatch):
    _version(store, tmp_path, {"a.txt": b"hello"})
    make_tree(tmp_path / "late", {"late.bin": os.urandom(3000)})
    late = Dataset.create("p", "late", store=store)
    late.add_files(str(tmp_path / "late"))  # a draft while the versions are listed
    real = store.read_version

    started = []

    def finalized_meanwhile(dataset_id):  # another machine uploads and finalizes it just before its record is read
        if dataset_id == late.id and not started:
            started.append(dataset_id)  # finalize reads its own record too: once is enough
            late.finalize()
        return real(dataset_id)

    monkeypatch.setattr(store, "read_version", finalized_meanwhile)
    report = check_store(store)
    assert report.ok and report.final == 2 and report.unreferenced_packs == 0  # its pack was listed


# -- the command line -------------------------------------------------------------------------------


def test_cli_exit_codes_and_output(dsfs, tmp_path, file_store):
    store = Store.open(file_store, create=True)
    ds = _version(store, tmp_path, {"a.bin": os.urandom(3000), "b.bin": os.urandom(3000)})
    r = dsfs("--store", file_store, "check")
    assert r.code == 0 and "no problems found" in r.err and "1 version(s) (1 final, 0 draft), 2 file(s)" in r.err

    ref = _refs(store, ds)["a.bin"][0]
    _flip(store, ref.pack, ref.offset + 1)
    assert dsfs("--store", file_store, "check").code == 0
    r = dsfs("--store", file_store, "check", "--read-data")
    assert r.code == 1 and "1 problem(s) in 1 version(s)" in r.err
    line = next(line for line in r.out.splitlines() if "a.bin" in line)
    assert ds.info.ref in line and "does not match its digest" in line

    store.delete_pack(ref.pack)
    r = dsfs("--store", file_store, "check", "--json")
    assert r.code == 1
    out = json.loads(r.out)
    assert out["ok"] is False and out["damaged"] == [ds.id]
    assert {(p["path"], p["kind"]) for p in out["problems"]} == {("a.bin", "missing-pack"), ("b.bin", "missing-pack")}
    assert out["summary"]["versions"] == 1 and out["summary"]["packs"] == 0

    assert dsfs("--store", file_store, "check", "--read-data", "--read-data-subset", "10%").code == 2
    assert dsfs("--store", file_store, "check", "--read-data-subset", "10").code == 2
    r = dsfs("--store", f"file://{tmp_path}/nothing-here", "check")
    assert r.code == 7 and "Traceback" not in r.err
