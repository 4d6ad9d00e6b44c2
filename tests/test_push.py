"""`dsfs push`: a version, its missing ancestors and missing packs reach another store; the version
is visible there only when all it needs is there; resumable; a second push sends nothing."""

from __future__ import annotations

import functools
import json
import os

import pytest

import dsfs.authoring.ingest
from dsfs import Dataset, Store
from dsfs.errors import Conflict, DatasetNotFound, InvalidState, StoreUnavailable
from dsfs.store.packs import PackBuilder
from conftest import make_tree


@pytest.fixture
def small_packs(monkeypatch):
    """~1 MiB packs, so a few MiB of data make several packs to push."""
    monkeypatch.setattr(dsfs.authoring.ingest, "PackBuilder", functools.partial(PackBuilder, target=1 << 20))


def _lineage(store, tmp_path):
    """base (4 MiB) <- child (adds 2 MiB, removes one file): returns (base, child, expected files)."""
    files = {f"f{i}.bin": os.urandom(1 << 20) for i in range(4)}
    make_tree(tmp_path / "v1", files)
    base = Dataset.create("vision", "cats", store=store)
    base.add_files(str(tmp_path / "v1"))
    base.finalize()
    extra = {"new/a.bin": os.urandom(1 << 20), "new/b.bin": os.urandom(1 << 20)}
    make_tree(tmp_path / "v2", extra)
    child = Dataset.create("vision", "cats", parents=[base.id], store=store)
    child.add_files(str(tmp_path / "v2"))
    child.remove_files("f0.bin")
    child.finalize()
    expected = {**files, **extra}
    del expected["f0.bin"]
    return base, child, expected


@pytest.mark.usefixtures("small_packs")
@pytest.mark.parametrize("direction", ["memory->file", "file->s3"])
def test_push_copies_lineage_once(direction, tmp_path, memory_store, file_store, request):
    if direction == "memory->file":
        source, target_ref = Store.open(memory_store, create=True), file_store
        target = lambda: Store.open(file_store)  # noqa: E731
    else:
        cloud = request.getfixturevalue("moto_server")
        source = Store.open(file_store, create=True)
        url = cloud.new_url()
        target_ref = Store(url, **cloud.options)
        target = lambda: Store.open(url, **cloud.options)  # noqa: E731
    base, child, expected = _lineage(source, tmp_path)

    result = child.push(target_ref, show_progress=True)
    assert result["versions_sent"] == 2 and result["versions_present"] == 0
    assert result["packs_sent"] >= 6 and result["packs_present"] == 0
    pushed = Dataset.get("vision/cats", store=target())
    assert pushed.id == child.id and pushed.version == "1.0.1"
    for path, data in expected.items():
        assert pushed.read_file(path) == data
    assert Dataset.get(base.id, store=target()).read_file("f0.bin") == (tmp_path / "v1" / "f0.bin").read_bytes()
    assert target().version_number_holder("vision", "cats", "1.0.1") == child.id

    again = child.push(target_ref)
    assert again == {"versions_sent": 0, "versions_present": 2, "packs_sent": 0, "packs_present": 0, "bytes_sent": 0,
                     "previews_sent": 0}


@pytest.mark.usefixtures("small_packs")
def test_push_sends_only_missing_ancestors_and_packs(tmp_path, memory_store, file_store):
    source = Store.open(memory_store, create=True)
    base, child, _ = _lineage(source, tmp_path)
    first = base.push(file_store)
    assert first["versions_sent"] == 1
    second = child.push(file_store)
    assert second["versions_sent"] == 1 and second["versions_present"] == 1
    assert second["packs_sent"] == child.info.stats["packs"].__len__()  # only the child's new packs
    assert second["packs_present"] == 0  # the child's change-set refers only to its own new packs


@pytest.mark.usefixtures("small_packs")
@pytest.mark.parametrize("fail_at", ["pack", "version"])
def test_resumed_push_after_failure(fail_at, tmp_path, memory_store, file_store, monkeypatch):
    source = Store.open(memory_store, create=True)
    base, child, expected = _lineage(source, tmp_path)
    real_pack, real_version = Store.write_pack, Store.write_version
    sent = []

    def failing_pack(self, pack_id, data):
        if fail_at == "pack" and self.url == file_store and len(sent) == 3:
            raise StoreUnavailable("store went away")
        sent.append(pack_id)
        real_pack(self, pack_id, data)

    def failing_version(self, info, exclusive=False):
        if fail_at == "version" and self.url == file_store and info.id == child.id:
            raise StoreUnavailable("store went away")
        real_version(self, info, exclusive)

    monkeypatch.setattr(Store, "write_pack", failing_pack)
    monkeypatch.setattr(Store, "write_version", failing_version)
    with pytest.raises(StoreUnavailable):
        child.push(file_store, max_workers=1)
    target = Store.open(file_store)
    with pytest.raises(DatasetNotFound):  # not visible until all it needs is there
        target.read_version(child.id)
    visible = [v.id for v in target.list_versions() if v.is_final]
    assert child.id not in visible and visible == ([base.id] if fail_at == "version" else [])
    monkeypatch.setattr(Store, "write_version", real_version)
    sent_before = list(sent)
    sent.clear()
    resumed = child.push(file_store)
    assert not set(sent) & set(sent_before)  # nothing sent twice
    if fail_at == "version":  # every pack was there: only the record was missing
        assert resumed["packs_sent"] == 0 and resumed["versions_sent"] == 1
    else:
        assert resumed["packs_present"] == len(sent_before)
    pushed = Dataset.get("vision/cats", store=Store.open(file_store))
    assert pushed.id == child.id
    for path, data in expected.items():
        assert pushed.read_file(path) == data
    assert child.push(file_store)["versions_sent"] == 0


def test_push_refuses_drafts_and_taken_numbers(tmp_path, memory_store, file_store):
    source = Store.open(memory_store, create=True)
    make_tree(tmp_path / "d", {"x": b"x"})
    draft = Dataset.create("p", "n", store=source)
    with pytest.raises(InvalidState, match="draft"):
        draft.push(file_store)
    draft.add_files(str(tmp_path / "d"))
    draft.finalize()
    other = Dataset.create("p", "n", version="1.0.0", store=file_store)  # same number, another id
    with pytest.raises(Conflict, match="p/n@1.0.0 is taken"):
        draft.push(file_store)
    assert other.state == "draft"


def test_push_cli(tmp_path, dsfs, memory_store, file_store):
    make_tree(tmp_path / "d", {"a.txt": b"alpha", "b/c.txt": b"gamma"})
    assert dsfs("datastore", "register", "archive", file_store).code == 0
    assert dsfs("--store", memory_store, "create", "--project", "p", "--name", "n").code == 0
    assert dsfs("--store", memory_store, "add", "--files", tmp_path / "d").code == 0
    assert dsfs("--store", memory_store, "close").code == 0
    r = dsfs("--store", memory_store, "push", "p/n", "--to", "archive", "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["versions_sent"] == 1
    r = dsfs("--datastore", "archive", "cat", "b/c.txt", "--id", "p/n")
    assert r.out == "gamma"
    r = dsfs("--store", memory_store, "push", "p/n", "--to", "archive")
    assert r.code == 0 and "0 version(s) sent, 1 already there" in r.out
    r = dsfs("--store", memory_store, "push", "p/n", "--to", "nowhere")
    assert r.code == 2 and "unknown datastore 'nowhere'" in r.err
