"""Authoring through the Python API: versions, lineage, dedupe, labels, deletion."""

import os
import threading

import pytest

from dsfs import Dataset, Store, gc
from dsfs.errors import Conflict, DatasetInUse, DatasetNotFound, InvalidState, UsageError
from conftest import make_tree


def _final(store, project, name, folder, parents=None, **kwargs):
    ds = Dataset.create(project, name, parents=parents, store=store, **kwargs)
    ds.add_files(str(folder))
    ds.finalize()
    return ds


def test_roundtrip_bytes_modes_and_layout(tmp_path, memory_store):
    src = tmp_path / "src"
    files = {"a.txt": b"hello", "deep/er/b.bin": os.urandom(5 << 20), "empty": b""}
    make_tree(src, files)
    os.chmod(src / "a.txt", 0o755)
    ds = Dataset.create("p", "n", store=memory_store)
    assert ds.add_files(str(src), dataset_path="root") == 3
    ds.finalize()
    got = Dataset.get("p/n", store=memory_store)
    assert got.id == ds.id and got.state == "final" and got.version == "1.0.0"
    assert got.list_files() == ["root/a.txt", "root/deep/er/b.bin", "root/empty"]
    for rel, data in files.items():
        assert got.read_file(f"root/{rel}") == data
    entries = {e.path: e for e in got.file_entries()}
    assert entries["root/a.txt"].executable and not entries["root/empty"].executable
    # over MAX_CHUNK (4 MiB), so always cut (3 MiB of random bytes sometimes had no cut point)
    assert len(entries["root/deep/er/b.bin"].chunks) >= 2


def test_wildcard_non_recursive_and_globs(tmp_path, memory_store):
    make_tree(tmp_path / "d", {"x.jpg": b"1", "y.txt": b"2", "sub/z.jpg": b"3"})
    ds = Dataset.create("p", "n", store=memory_store)
    assert ds.add_files(str(tmp_path / "d"), wildcard="*.jpg") == 2
    assert ds.list_files() == ["sub/z.jpg", "x.jpg"]
    ds2 = Dataset.create("p", "m", store=memory_store)
    assert ds2.add_files(str(tmp_path / "d"), recursive=False) == 2
    assert ds2.add_files(str(tmp_path / "d" / "*.txt"), dataset_path="t") == 1
    assert ds2.list_files() == ["t/y.txt", "x.jpg", "y.txt"]


def test_parents_merge_in_order_and_removals(tmp_path, memory_store):
    make_tree(tmp_path / "a", {"shared": b"from a", "only_a": b"a"})
    make_tree(tmp_path / "b", {"shared": b"from b", "only_b": b"b"})
    a = _final(memory_store, "p", "a", tmp_path / "a")
    b = _final(memory_store, "p", "b", tmp_path / "b")
    child = Dataset.create("p", "c", parents=[a.id, b.id], store=memory_store)
    child.remove_files("only_a")
    make_tree(tmp_path / "c", {"new": b"n"})
    child.add_files(str(tmp_path / "c"))
    child.finalize()
    assert child.list_files() == ["new", "only_b", "shared"]
    assert child.read_file("shared") == b"from b"  # the later parent wins
    assert child.list_added_files() == ["new"]
    assert child.list_removed_files() == ["only_a"]
    grandchild = Dataset.create("p", "g", parents=[child.id, a.id], store=memory_store)
    grandchild.finalize()
    assert grandchild.read_file("shared") == b"from a"
    assert grandchild.list_files() == ["new", "only_a", "only_b", "shared"]


def test_unchanged_readd_is_no_change_and_modification_is_seen(tmp_path, memory_store):
    make_tree(tmp_path / "d", {"f1": b"one", "f2": b"two"})
    parent = _final(memory_store, "p", "n", tmp_path / "d")
    (tmp_path / "d" / "f2").write_bytes(b"TWO")
    child = _final(memory_store, "p", "n", tmp_path / "d", parents=[parent.id])
    assert child.version == "1.0.1"
    assert child.list_modified_files() == ["f2"] and child.list_added_files() == []
    assert child.info.stats["modified"] == 1 and child.info.stats["files"] == 2


def test_child_stores_only_new_chunks(tmp_path, memory_store):
    big = os.urandom(20 << 20)
    make_tree(tmp_path / "v1", {"big.bin": big})
    parent = _final(memory_store, "p", "n", tmp_path / "v1")
    assert parent.info.stats["new_bytes"] >= len(big)
    # rename + append 100 KiB: only the tail chunk(s) are new
    make_tree(tmp_path / "v2", {"moved/big.bin": big + os.urandom(100 << 10)})
    child = Dataset.create("p", "n", parents=[parent.id], store=memory_store)
    child.remove_files("big.bin")
    child.add_files(str(tmp_path / "v2"))
    child.finalize()
    assert child.info.stats["new_bytes"] < (100 << 10) + (4 << 20) * 2
    assert child.read_file("moved/big.bin")[: len(big)] == big


def test_version_numbers_auto_increment_and_clash(memory_store):
    first = Dataset.create("p", "n", store=memory_store)
    assert first.version == "1.0.0"
    assert Dataset.create("p", "n", version="2.0.0", store=memory_store).version == "2.0.0"
    assert Dataset.create("p", "n", store=memory_store).version == "2.0.1"
    with pytest.raises(Conflict, match="2.0.0 already exists"):
        Dataset.create("p", "n", version="2.0.0", store=memory_store)
    with pytest.raises(UsageError):
        Dataset.create("p", "n", version="two", store=memory_store)


def test_racing_authors_get_distinct_versions(file_store):
    Store.open(file_store, create=True)
    versions, errors = [], []

    def author():
        try:
            versions.append(Dataset.create("p", "race", store=file_store).version)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=author) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(versions) == sorted(set(versions)) and len(versions) == 8


def test_parent_must_be_final_and_exist(memory_store):
    draft = Dataset.create("p", "n", store=memory_store)
    with pytest.raises(InvalidState, match="draft"):
        Dataset.create("p", "c", parents=[draft.id], store=memory_store)
    with pytest.raises(DatasetNotFound):
        Dataset.create("p", "c", parents=["0" * 32], store=memory_store)


def test_final_is_immutable_and_closing_twice_fails(tmp_path, memory_store):
    make_tree(tmp_path / "d", {"f": b"x"})
    ds = _final(memory_store, "p", "n", tmp_path / "d")
    with pytest.raises(InvalidState, match="cannot change"):
        ds.add_files(str(tmp_path / "d"))
    with pytest.raises(InvalidState, match="cannot change"):
        ds.remove_files("f")
    with pytest.raises(InvalidState, match="already final"):
        ds.finalize()
    ds.publish()
    assert Dataset.get(ds.id, store=memory_store).state == "published"
    with pytest.raises(InvalidState):
        ds.publish()


def test_get_by_version_tags_and_latest(tmp_path, memory_store):
    make_tree(tmp_path / "d", {"f": b"x"})
    v1 = _final(memory_store, "p", "n", tmp_path / "d", tags=["gold"])
    v2 = _final(memory_store, "p", "n", tmp_path / "d", parents=[v1.id])
    Dataset.create("p", "n", store=memory_store)  # a newer draft is not "latest"
    assert Dataset.get("p/n", store=memory_store).id == v2.id
    assert Dataset.get("p/n@1.0.0", store=memory_store).id == v1.id
    assert Dataset.get(project="p", name="n", tags=["gold"], store=memory_store).id == v1.id
    with pytest.raises(DatasetNotFound):
        Dataset.get("p/n", tags=["silver"], store=memory_store)
    with pytest.raises(DatasetNotFound):
        Dataset.get("p/nope", store=memory_store)


def test_metadata_rename_move(tmp_path, memory_store):
    make_tree(tmp_path / "d", {"f": b"x"})
    v1 = _final(memory_store, "p", "n", tmp_path / "d")
    v2 = _final(memory_store, "p", "n", tmp_path / "d", parents=[v1.id])
    v2.set_metadata({"split": {"train": 0.8}})
    assert Dataset.get(v2.id, store=memory_store).get_metadata("split") == {"train": 0.8}
    assert Dataset.rename("m", "p", "n", store=memory_store) == 2
    assert Dataset.get("p/m@1.0.1", store=memory_store).id == v2.id
    assert Dataset.move_to_project("q", "p", "m", store=memory_store) == 2
    assert Dataset.get("q/m", store=memory_store).id == v2.id
    # the old name is free again; the new one keeps counting
    assert Dataset.create("p", "n", store=memory_store).version == "1.0.0"
    assert Dataset.create("q", "m", store=memory_store).version == "1.0.2"
    _final(memory_store, "q", "z", tmp_path / "d")  # holds q/z@1.0.0
    with pytest.raises(Conflict, match="q/z@1.0.0 already exists"):
        Dataset.rename("z", "q", "m", store=memory_store)
    assert Dataset.get("q/m", store=memory_store).id == v2.id  # a clash changes nothing
    assert Dataset.get("q/m@1.0.0", store=memory_store).id == v1.id


def test_delete_refuses_parents_and_gc_frees_packs(tmp_path, file_store):
    make_tree(tmp_path / "d", {"f": os.urandom(1000)})
    parent = _final(file_store, "p", "n", tmp_path / "d")
    (tmp_path / "d" / "g").write_bytes(os.urandom(1000))
    child = _final(file_store, "p", "n", tmp_path / "d", parents=[parent.id])
    with pytest.raises(DatasetInUse, match="parent or source of 1"):
        Dataset.delete(parent.id, store=file_store)
    root = file_store[len("file://"):]
    packs_before = sum(len(f) for _, _, f in os.walk(f"{root}/packs"))
    Dataset.delete(child.id, store=file_store)
    assert sum(len(f) for _, _, f in os.walk(f"{root}/packs")) == packs_before  # records only
    with pytest.raises(DatasetNotFound):
        Dataset.get(child.id, store=file_store)
    assert gc(Store.open(file_store), grace=0).deleted_packs == 1  # the child's own pack
    Dataset.delete(parent.id, store=file_store)
    gc(Store.open(file_store), grace=0)
    assert sum(len(f) for _, _, f in os.walk(f"{root}/packs")) == 0
    draft = Dataset.create("p", "n", store=file_store)
    Dataset.delete(draft.id, store=file_store)
    assert Dataset.search(store=file_store) == []


def test_search_filters(tmp_path, memory_store):
    make_tree(tmp_path / "d", {"f": b"x"})
    a = _final(memory_store, "vision", "cats", tmp_path / "d", tags=["a", "b"])
    _final(memory_store, "vision", "dogs", tmp_path / "d", tags=["a"])
    _final(memory_store, "audio", "birds", tmp_path / "d")
    assert [v.name for v in Dataset.search(project="vision", store=memory_store)] == ["cats", "dogs"]
    assert [v.name for v in Dataset.search(tags=["a", "b"], store=memory_store)] == ["cats"]
    assert [v.name for v in Dataset.search(name="*s", project="aud*", store=memory_store)] == ["birds"]
    assert [v.id for v in Dataset.search(ids=[a.id], store=memory_store)] == [a.id]


def test_path_conflict_file_vs_folder_is_refused(tmp_path, memory_store):
    make_tree(tmp_path / "a", {"x": b"file"})
    make_tree(tmp_path / "b", {"x/y": b"nested"})
    a = _final(memory_store, "p", "a", tmp_path / "a")
    child = Dataset.create("p", "c", parents=[a.id], store=memory_store)
    child.add_files(str(tmp_path / "b"))
    with pytest.raises(Conflict, match="both a file and a folder"):
        child.finalize()
    assert Dataset.get(child.id, include_drafts=True, store=memory_store).state == "draft"


def test_a_draft_state_of_the_previous_format_is_taken_over(tmp_path, file_store):
    """A draft saved by a dsfs that kept its state in one msgpack file (FORMAT 1) is read, converted
    to the SQLite state and closed: its pending, uploaded and removed files all count, nothing is sent
    twice, and the old file is gone."""
    import msgpack

    from dsfs.authoring.drafts import DraftState

    make_tree(tmp_path / "base", {"a.txt": b"a", "b.txt": b"b"})
    base = _final(file_store, "p", "base", tmp_path / "base")
    make_tree(tmp_path / "up", {"c.bin": os.urandom(300_000)})
    make_tree(tmp_path / "later", {"d.txt": b"d"})
    ds = Dataset.create("p", "child", parents=[base.id], store=file_store)
    ds.add_files(str(tmp_path / "up"))
    sent = ds.upload()
    ds.add_files(str(tmp_path / "later"))
    ds.remove_files("a.txt")
    draft = DraftState.load(ds.id, file_store)
    uploaded = list(draft.uploaded())
    old = {"id": ds.id, "store": file_store, "adds": dict(draft.adds()),
           "uploaded": [e.to_wire() for e in uploaded], "removals": list(draft.removals()),
           "chunks": [list(draft.chunk(ref.digest)) for e in uploaded for ref in e.chunks],
           "packs": draft.packs, "written": draft.written, "new_bytes": draft.new_bytes,
           "origins": {e.path: str(tmp_path / "up" / e.path) for e in uploaded}}
    assert old["adds"] == {"d.txt": str(tmp_path / "later" / "d.txt")} and old["removals"] == ["a.txt"]
    assert [e["p"] for e in old["uploaded"]] == ["c.bin"] and sent["packs_sent"] == 1
    draft.discard()
    state = DraftState.path_for(ds.id)
    with open(state[:-len(".sqlite")] + ".msgpack", "wb") as f:
        f.write(msgpack.packb(old, use_bin_type=True))

    again = Dataset.get(ds.id, store=file_store, include_drafts=True)
    assert again.upload()["packs_sent"] == 1  # d.txt only: c.bin's pack is recorded
    again.finalize()
    final = Dataset.get(ds.id, store=file_store)
    assert final.list_files() == ["b.txt", "c.bin", "d.txt"]
    assert final.read_file("c.bin") == (tmp_path / "up" / "c.bin").read_bytes()
    assert len(final.info.stats["packs"]) == 2 and final.info.stats["new_bytes"] > sent["new_bytes"] > 0
    assert not os.path.exists(state[:-len(".sqlite")] + ".msgpack") and not os.path.exists(state)


def test_a_corrupt_draft_state_of_the_previous_format_is_named(tmp_path, file_store, dsfs):
    """A msgpack draft state that does not decode, or decodes to the wrong shape, is refused with one
    line naming the file (exit 8), and is left where it is; nothing half-converted is kept."""
    from dsfs.authoring.drafts import DraftState

    ds = Dataset.create("p", "n", store=file_store)
    DraftState.load(ds.id, file_store).discard()
    old = DraftState.path_for(ds.id)[:-len(".sqlite")] + ".msgpack"
    make_tree(tmp_path / "d", {"a": b"a"})
    for garbage in (b"\xc1\xc1", b"\x93\x01\x02\x03", b"\x81\xa4adds\x81\xa1a\x01"):
        with open(old, "wb") as f:
            f.write(garbage)
        r = dsfs("--store", file_store, "add", "--id", ds.id, "--files", tmp_path / "d")
        assert r.code == 8 and old in r.err and "Traceback" not in r.err, (garbage, r.err)
        assert os.path.exists(old)


def test_closing_writes_the_drafts_encoded_entries_as_encoding_them_again_would(tmp_path, file_store):
    """close passes each uploaded entry's blob from the draft state into the change-set instead of
    encoding the entry again: the bytes are the same as encoding again; a blob that is not what
    Entry.to_wire packs (another key, a flag that is not a bool) is encoded again from the checked
    entry, so nothing but an entry's fields reaches the change-set."""
    import io

    import msgpack
    import zstandard

    from dsfs.authoring.close import changes_encoded
    from dsfs.authoring.drafts import DraftState
    from dsfs.lineage.filetable import FileTable
    from dsfs.model import changeset_written, decode_changeset

    make_tree(tmp_path / "d", {"a.txt": b"a", "b/c.bin": os.urandom(200_000), "b/x.sh": b"#!/bin/sh\n"})
    os.chmod(tmp_path / "d" / "b" / "x.sh", 0o755)
    ds = Dataset.create("p", "enc", store=file_store)
    ds.add_files(str(tmp_path / "d"))
    ds.upload()
    draft = DraftState.load(ds.id, file_store)

    def written(pairs) -> bytes:
        out = io.BytesIO()
        for _ in changeset_written(out, pairs):
            pass
        return out.getvalue()

    pairs = list(changes_encoded(FileTable.empty(), draft))
    assert [encoded is not None for _, encoded in pairs] == [True, True, True]
    assert written(pairs) == written([(entry, None) for entry, _ in pairs])

    odd = msgpack.unpackb(draft.db.execute("SELECT entry FROM uploaded WHERE path = 'a.txt'").fetchone()[0])
    odd["x"], odd["zz"] = 1, "not an entry field"
    draft.db.execute("UPDATE uploaded SET entry = ? WHERE path = 'a.txt'", (msgpack.packb(odd),))
    pairs = list(changes_encoded(FileTable.empty(), draft))
    assert [encoded is not None for _, encoded in pairs] == [False, True, True]
    data = written(pairs)
    assert b"not an entry field" not in zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)).read()

    # a key twice: msgpack keeps the last value, so the keys and the flag look right, but the map
    # header counts seven entries and the first value would ride along
    blob = draft.db.execute("SELECT entry FROM uploaded WHERE path = 'b/c.bin'").fetchone()[0]
    assert blob[:1] == b"\x86"
    doubled = b"\x87" + msgpack.packb("x") + msgpack.packb(b"not an entry field") + blob[1:]
    assert msgpack.unpackb(doubled) == msgpack.unpackb(blob)
    draft.db.execute("UPDATE uploaded SET entry = ? WHERE path = 'b/c.bin'", (doubled,))
    pairs = list(changes_encoded(FileTable.empty(), draft))
    assert [encoded is not None for _, encoded in pairs] == [False, False, True]
    data = written(pairs)
    assert b"not an entry field" not in zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)).read()
    entries = list(decode_changeset(data, "test"))
    assert [(e.path, e.executable) for e in entries] == [("a.txt", True), ("b/c.bin", False), ("b/x.sh", True)]
    draft.close()


def test_a_recorded_pack_s_chunks_are_found_by_the_draft_at_once(file_store):
    """record_pack keeps a pack's chunk refs as one row (folded into the chunk table only when a
    lookup needs them): a chunk recorded after the draft's filter was made is still found, by the
    running upload and by the next one."""
    from dsfs.authoring.drafts import DraftState, pack_refs
    from dsfs.model import ChunkRef

    ds = Dataset.create("p", "packs", store=file_store)
    draft = DraftState.load(ds.id, file_store)
    pack, digest = os.urandom(16), os.urandom(32)
    assert draft.chunk(digest) is None  # the filter is made now
    ref = ChunkRef(digest, pack, 10, 20, 20)
    draft.record_pack(pack, True, 30, [ref])
    assert draft.chunk(digest) == ref
    assert draft.chunk(os.urandom(32)) is None
    with pytest.raises(ValueError, match="another pack"):
        draft.record_pack(os.urandom(16), True, 30, [ref])
    other_pack, other = os.urandom(16), os.urandom(32)  # recorded as an upload on an executor records it
    other_ref = ChunkRef(other, other_pack, 0, 5, 5)
    draft.record_task([(other_pack, True, 5, pack_refs([other_ref]))], [])
    assert draft.chunk(other) == other_ref
    draft.save()
    again = DraftState.load(ds.id, file_store)
    assert again.chunk(digest) == ref and again.chunk(other) == other_ref
    assert sorted(again.chunk_digests()) == sorted([digest, other]) and again.new_bytes == 35


def test_labels_set_through_an_old_copy_keep_what_other_commands_changed(tmp_path, memory_store):
    """A Dataset held since before other commands changed its record (a notebook's) writes its
    label change onto the store's record as it is now: it undoes no rename, publish or metadata."""
    from conftest import final_version

    make_tree(tmp_path / "d", {"a": b"a"})
    old = final_version(memory_store, tmp_path / "d")
    other, stale = Dataset.get(old.id, store=memory_store), Dataset.get(old.id, store=memory_store)
    other.set_metadata({"a": 1})
    other.publish()
    assert Dataset.rename("renamed", "p", "n", store=memory_store) == 1
    old.set_metadata({"b": 2})
    old.set_labels(tags=["t"], description="kept")
    fresh = Dataset.get(old.id, store=memory_store)
    assert (fresh.info.metadata, fresh.state, fresh.info.name, fresh.info.tags, fresh.info.description) == \
        ({"a": 1, "b": 2}, "published", "renamed", ["t"], "kept")
    assert old.info.name == "renamed"  # the object holds the record it wrote
    assert stale.state == "final"
    with pytest.raises(InvalidState, match="already published"):  # the store's state decides, not the copy's
        stale.publish()
