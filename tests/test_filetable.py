"""File tables (dsfs.lineage.filetable): a closed version's table equals its decoded view, sync and close use
a saved table instead of decoding the lineage, and a table that cannot be trusted is never used."""

import os
import random

import pytest

import dsfs.lineage.merge
from dsfs import Dataset
from dsfs.errors import Conflict, CorruptData
from dsfs.lineage.filetable import TABLES_KEPT, FileTable, tables_dir
from dsfs.lineage.merge import Lineage, apply_changes, check_tree
from dsfs.model import ChunkRef, Entry, VersionInfo
from dsfs.paths import parents as path_parents
from dsfs.store.layout import Store
from conftest import make_tree


def _columns(table: FileTable):
    return (list(table.paths), table.sizes.tolist(), table.mtimes.tolist(), bytes(table.flags),
            bytes(table.digests), table.links)


def _decoded(store_url: str, dataset_id: str) -> FileTable:
    """The table of a version built by decoding its lineage in a fresh process's Lineage."""
    lineage = Lineage(Store.open(store_url))
    return FileTable.from_view(lineage.view(dataset_id), lineage.known_chunks([dataset_id]))


def _chunk_digests(table: FileTable) -> set[bytes]:
    blob = bytes(table.chunk_digests)
    return {blob[i:i + 32] for i in range(0, len(blob), 32)}


def test_saved_tables_equal_the_decoded_lineage(tmp_path, file_store):
    rng = random.Random(7)
    folder = tmp_path / "d"
    make_tree(folder, {f"f{i:02d}": os.urandom(rng.randrange(0, 3000)) for i in range(40)})
    (folder / "f00").chmod(0o755)
    parent = None
    for round_ in range(6):
        ds = Dataset.create("p", "n", parents=[parent] if parent else None, store=file_store)
        if round_ == 2:  # external links are part of the view too
            link_dir = tmp_path / "links"
            make_tree(link_dir, {"l1": b"link one", "sub/l2": b"link two"})
            ds.add_external_files(f"file://{link_dir}", dataset_path="ext")
        ds.sync_folder(str(folder))
        ds.finalize()
        saved = FileTable.load(Dataset.get(ds.id, store=file_store).info)
        assert saved is not None
        decoded = _decoded(file_store, ds.id)
        assert _columns(saved) == _columns(decoded)
        assert _chunk_digests(saved) == _chunk_digests(decoded)
        lineage = Lineage(Store.open(file_store))
        stored = {ref for i in lineage.ancestors([ds.id]) for e in lineage.changes(i) for ref in e.chunks}
        assert {saved.known_chunk(d) for d in _chunk_digests(saved)} <= stored  # each ref is a real place
        parent = ds.id
        # next round: modify, remove, add, flip an exec bit, replace a file by a folder
        names = sorted(p.name for p in folder.iterdir() if p.is_file())
        for name in rng.sample(names, 5):
            (folder / name).write_bytes(os.urandom(rng.randrange(1, 3000)))
        for name in rng.sample(names, 3):
            (folder / name).unlink()
        make_tree(folder, {f"new{round_}/x{i}": os.urandom(100) for i in range(3)})
        victim = folder / names[-1]
        if victim.exists():
            victim.unlink()
            make_tree(folder, {f"{names[-1]}/inside": b"now a folder"})
        if (folder / names[0]).is_file():
            (folder / names[0]).chmod(0o755 if round_ % 2 else 0o644)


def test_sync_and_close_use_the_saved_table_without_decoding(tmp_path, memory_store, monkeypatch):
    folder = tmp_path / "d"
    make_tree(folder, {f"a/f{i}": os.urandom(2000) for i in range(20)})
    first, _ = Dataset.sync(str(folder), "p", "n", store=memory_store)
    (folder / "a" / "f3").write_bytes(b"changed")
    (folder / "a" / "f4").unlink()

    def no_decode(*args, **kwargs):
        raise AssertionError("a change-set was decoded")

    monkeypatch.setattr(dsfs.lineage.merge, "load_changes", no_decode)
    second, changes = Dataset.sync(str(folder), "p", "n", store=memory_store)  # a new Store: no shared Lineage
    assert (changes.added, changes.modified, changes.removed, changes.unchanged) == (0, 1, 1, 18)
    monkeypatch.undo()
    again = Dataset.get(second.id, store=memory_store)
    assert again.info.stats["files"] == 19
    assert again.info.stats["bytes"] == sum(len(again.read_file(p)) for p in again.list_files())
    assert again.read_file("a/f3") == b"changed" and again.list_removed_files() == ["a/f4"]
    assert again.info.stats["new_bytes"] < 100  # the unchanged chunks were known from the table


def _damage_flip(path, info):
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0xFF
    open(path, "wb").write(bytes(data))


def _damage_truncate(path, info):
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])


def _damage_other_version(path, info):
    # a sound table, but of another version (e.g. the same id in another store)
    os.replace(os.path.join(os.path.dirname(path), info["other"]), path)


@pytest.mark.parametrize("damage", [_damage_flip, _damage_truncate, _damage_other_version])
def test_a_table_that_cannot_be_trusted_is_ignored(tmp_path, memory_store, damage):
    folder = tmp_path / "d"
    make_tree(folder, {f"f{i}": os.urandom(1000) for i in range(10)})
    other, _ = Dataset.sync(str(tmp_path / "d"), "p", "other", store=memory_store)
    first, _ = Dataset.sync(str(folder), "p", "n", store=memory_store)
    path = os.path.join(tables_dir(), first.id)
    damage(path, {"other": other.id})
    assert FileTable.load(Dataset.get(first.id, store=memory_store).info) is None
    (folder / "f1").write_bytes(b"changed")
    second, changes = Dataset.sync(str(folder), "p", "n", store=memory_store)  # decodes instead
    assert (changes.modified, changes.unchanged) == (1, 9)
    assert Dataset.get(second.id, store=memory_store).list_modified_files() == ["f1"]
    assert Dataset.get(second.id, store=memory_store).info.stats["files"] == 10
    assert FileTable.load(Dataset.get(second.id, store=memory_store).info) is not None


def test_a_draft_never_has_a_table_used(tmp_path, memory_store):
    make_tree(tmp_path / "d", {"f": b"x"})
    ds = Dataset.create("p", "n", store=memory_store)
    ds.add_files(str(tmp_path / "d"))
    ds.finalize()
    info = Dataset.get(ds.id, store=memory_store).info
    info.state = "draft"
    assert FileTable.load(info) is None


def test_a_table_does_not_hide_a_corrupt_change_set_in_the_store(tmp_path, file_store):
    make_tree(tmp_path / "d", {"f": b"x" * 100})
    first, _ = Dataset.sync(str(tmp_path / "d"), "p", "n", store=file_store)
    assert FileTable.load(first.info) is not None
    path = f"{file_store[len('file://'):]}/datasets/{first.id}/changes.msgpack.zst"
    open(path, "ab").write(b"junk")
    (tmp_path / "d" / "f").write_bytes(b"changed")
    with pytest.raises(CorruptData, match=f"change-set of dataset {first.id}"):
        Dataset.sync(str(tmp_path / "d"), "p", "n", store=file_store)
    assert [v.version for v in Dataset.search(store=file_store)] == ["1.0.0"]


def test_conflicts_are_found_through_the_table(tmp_path, memory_store):
    make_tree(tmp_path / "a", {"x": b"file", "y/z": b"nested"})
    first, _ = Dataset.sync(str(tmp_path / "a"), "p", "n", store=memory_store)
    for tree in ({"x/inside": b"under a file"}, {"y": b"over a folder"}):
        make_tree(tmp_path / "b", tree)
        child = Dataset.create("p", "c", parents=[first.id], store=memory_store)
        child.add_files(str(tmp_path / "b"))
        with pytest.raises(Conflict, match="both a file and a folder"):
            child.finalize()
        (tmp_path / "b").rename(tmp_path / f"done-{len(tree)}-{next(iter(tree))[0]}")
    # a file removed and a folder of the same name added in one version is no conflict
    os.unlink(tmp_path / "a" / "x")
    make_tree(tmp_path / "a", {"x/inside": b"now a folder"})
    second, _ = Dataset.sync(str(tmp_path / "a"), "p", "n", store=memory_store)
    assert sorted(second.list_files()) == ["x/inside", "y/z"]


def test_a_merge_of_two_parents_is_checked_for_conflicts(tmp_path, memory_store):
    make_tree(tmp_path / "a", {"x": b"file"})
    make_tree(tmp_path / "b", {"x/y": b"nested"})
    a, _ = Dataset.sync(str(tmp_path / "a"), "p", "a", store=memory_store)
    b, _ = Dataset.sync(str(tmp_path / "b"), "p", "b", store=memory_store)
    with pytest.raises(Conflict, match="merge of parents"):
        Dataset.create("p", "c", parents=[a.id, b.id], store=memory_store)


def test_only_the_newest_tables_are_kept(tmp_path, memory_store):
    folder = tmp_path / "d"
    ids = []
    for i in range(TABLES_KEPT + 3):
        make_tree(folder, {f"f{i}": b"%d" % i})
        ds, _ = Dataset.sync(str(folder), "p", "n", store=memory_store)
        ids.append(ds.id)
    assert sorted(os.listdir(tables_dir())) == sorted(ids[3:])


def test_cache_clear_drops_tables(tmp_path, memory_store, dsfs):
    make_tree(tmp_path / "d", {"f": b"x"})
    first, _ = Dataset.sync(str(tmp_path / "d"), "p", "n", store=memory_store)
    assert os.listdir(tables_dir()) == [first.id]
    assert dsfs("cache", "clear").code == 0
    assert not os.path.exists(tables_dir())


def _entry(rng: random.Random, path: str, removed: bool = False) -> Entry:
    if removed:
        return Entry(path=path, removed=True)
    digest = rng.randbytes(32)
    return Entry(path=path, size=rng.randrange(0, 5000), executable=rng.random() < 0.2,
                 mtime_ns=rng.randrange(1, 10**18), digest=digest,
                 chunks=[ChunkRef(digest, rng.randbytes(16), rng.randrange(0, 10**6), 10, 10)])


NAMES = ["a", "a b", "a-b", "a.b", "a0", "b", "é"]  # ' ' < '-' < '.' < '/' < '0': siblings sort around a folder


def _random_paths(rng: random.Random, count: int) -> list[str]:
    return ["/".join(rng.choice(NAMES) for _ in range(rng.randint(1, 3))) for _ in range(count)]


def _conflict_free(paths) -> dict[str, None]:
    kept: dict[str, None] = {}
    for path in paths:
        try:
            check_tree({**kept, path: None}, "x")
        except Conflict:
            continue
        kept[path] = None
    return kept


@pytest.mark.parametrize("seed", range(120))
def test_a_child_table_is_the_parent_with_its_changes_and_finds_every_conflict(seed):
    """FileTable.child, which streams the changes past the parent's rows and finds conflicts with a
    stack of open paths and lookups in the parent, against the plain way: apply the changes to a dict
    of the parent's view, then check_tree. Small trees of names that sort around '/' make conflicts
    (a file below a file, a file over a folder, a removed file replaced by a folder) common."""
    rng = random.Random(seed)
    base_view = {path: _entry(rng, path) for path in _conflict_free(_random_paths(rng, rng.randrange(0, 25)))}
    base = FileTable.from_view(base_view, {})
    changes = {}
    for path in rng.sample(sorted(base_view), min(len(base_view), rng.randrange(0, 8))):
        changes[path] = _entry(rng, path, removed=rng.random() < 0.6)
    folders = sorted({folder for path in base_view for folder in path_parents(path)})
    if folders and rng.random() < 0.4:  # a folder replaced by a file: all of its files removed, or most
        folder = rng.choice(folders)
        for path in base_view:
            if path.startswith(folder + "/") and rng.random() < 0.9:
                changes[path] = _entry(rng, path, removed=True)
        changes[folder] = _entry(rng, folder)
    for path in _random_paths(rng, rng.randrange(0, 8)):
        changes.setdefault(path, _entry(rng, path))
    expected = dict(base_view)
    apply_changes(expected, changes.values())
    try:
        check_tree(expected, "reference")
        conflict = False
    except Conflict:
        conflict = True
    ordered = [changes[path] for path in sorted(changes)]
    if conflict:
        with pytest.raises(Conflict, match="both a file and a folder"):
            base.child(iter(ordered), "child")
        return
    table = base.child(iter(ordered), "child").finish()
    assert _columns(table) == _columns(FileTable.from_view(expected, {}))
    assert table.total_bytes == sum(entry.size for entry in expected.values())
    assert [(path, size) for path, size, _ in table.rows()] == [(p, expected[p].size) for p in sorted(expected)]
    for path in list(expected)[:5]:
        assert table.find(path) == sorted(expected).index(path)
    assert table.find("no such path") is None
    for entry in ordered:
        for ref in entry.chunks:
            assert table.known_chunk(ref.digest) == ref


def test_a_table_reads_the_same_after_it_is_saved_and_loaded(tmp_path):
    """Columns, links, totals and lookups of a table in its file, across more rows than one block."""
    from dsfs.lineage import filetable

    rng = random.Random(3)
    view = {f"d{i // 700:03d}/f{i:06d}": _entry(rng, f"d{i // 700:03d}/f{i:06d}") for i in range(150_000)}
    view["é/link"] = Entry(path="é/link", size=4, url="https://example.com/x", etag="e1")
    known = {ref.digest: ref for entry in view.values() for ref in entry.chunks}
    info = VersionInfo(id="a" * 32, project="p", name="n", version="1.0.0", state="final", changes={"digest": "d" * 64})
    made = FileTable.from_view(view, known, info)
    loaded = FileTable.load(info)
    assert loaded is not None and loaded.n == len(view) == made.n
    assert _columns(loaded) == _columns(made) and loaded.links == {"é/link": ["https://example.com/x", "e1"]}
    assert loaded.total_bytes == sum(entry.size for entry in view.values())
    assert list(loaded.paths) == sorted(view) and loaded.paths[-1] == "é/link"
    cursor, rows = loaded.cursor(), sorted(view)
    for row in range(0, len(rows), 997):
        assert cursor.find(rows[row]) == row and loaded.find(rows[row]) == row
    assert loaded.digest(loaded.find("é/link")) == b""
    assert filetable.FORMAT == 2
    other = VersionInfo(id="a" * 32, project="p", name="n", version="1.0.0", state="final", changes={"digest": "e" * 64})
    assert FileTable.load(other) is None  # another change-set: not this table


def test_a_folder_of_several_files_replaced_by_a_file_is_no_conflict():
    rows = {path: _entry(random.Random(1), path) for path in ("a/x", "a/y", "a/z/w", "b")}
    base = FileTable.from_view(rows, {})
    changes = [_entry(random.Random(2), "a"), *(Entry(path=p, removed=True) for p in ("a/x", "a/y", "a/z/w"))]
    table = base.child(iter(changes), "child").finish()
    assert list(table.paths) == ["a", "b"]
    with pytest.raises(Conflict, match="'a' is both a file and a folder"):
        base.child(iter(changes[:3]), "child")  # a/z/w is kept
