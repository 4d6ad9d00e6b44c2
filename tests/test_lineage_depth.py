"""Long lineages: a version 10,000 versions deep reads like any other (no recursion bounds a
lineage), and the one merge (dsfs.lineage.merge.merge_views) equals a plain recursive reference merge on
random lineages with several parents, shared ancestors, removals and chains long enough to be
merged in runs.

Lineages are synthesized straight through the Store API (packs, change-sets, records, in the
store's write order), as bench/bench_lifecycle.py does: 10,000 closes would take minutes.
"""

from __future__ import annotations

import json
import random
import uuid

import blake3
import pytest

import dsfs.lineage.viewindex
from dsfs import Store
from dsfs.node.cache import Cache
from dsfs.lineage.merge import Lineage
from dsfs.model import ChunkRef, Entry, VersionInfo, encode_changeset
from dsfs.store.packs import digest
from dsfs.lineage.viewindex import ensure_view, merged_entries
from conftest import read_tree


class Synth:
    """Final versions written directly into a store: one pack of small distinct contents, and
    versions whose change-sets refer to them."""

    def __init__(self, url: str, contents: int = 16):
        self.store = Store.open(url, create=True)
        self.blobs = [b"content %d " % i * (i + 1) for i in range(contents)]
        pack = b"".join(self.blobs)
        pack_id = digest(pack)[:16]
        self.store.write_pack(pack_id, pack)
        self.refs, offset = [], 0
        for blob in self.blobs:
            self.refs.append(ChunkRef(digest(blob), pack_id, offset, len(blob), len(blob)))
            offset += len(blob)
        self.count = 0

    def file(self, path: str, content: int, mtime_ns: int = 0) -> Entry:
        blob = self.blobs[content]
        return Entry(path, len(blob), False, mtime_ns, digest(blob), [self.refs[content]])

    def version(self, changes: list[Entry], parents: list[str] = (), data: bytes | None = None) -> VersionInfo:
        """A final version with these changes (or this encoded change-set) over these parents."""
        data = encode_changeset(changes) if data is None else data
        self.count += 1
        info = VersionInfo(id=uuid.uuid4().hex, project="p", name="n", version=f"1.0.{self.count}",
                           parents=list(parents), state="final", created="2024-01-01T00:00:00+00:00",
                           changes={"digest": blake3.blake3(data).hexdigest(), "size": len(data)})
        self.store.write_changes(info.id, data)
        self.store.write_version(info)
        return info


def chain(synth: Synth, depth: int) -> tuple[str, dict[str, Entry]]:
    """A chain of `depth` versions, each changing one of 40 paths (modified, added or removed);
    returns the top's id and its expected merged view."""
    rng = random.Random(depth)
    view: dict[str, Entry] = {}
    parents: list[str] = []
    for i in range(depth):
        path = f"d{rng.randrange(4)}/f{rng.randrange(10)}"
        if path in view and rng.random() < 0.2:
            change = Entry(path, removed=True)
            del view[path]
        else:
            change = view[path] = synth.file(path, rng.randrange(len(synth.blobs)), mtime_ns=i)
        parents = [synth.version([change], parents).id]
    return parents[0], view


def _summary(view) -> dict:
    return {path: (e.size, e.digest, e.mtime_ns) for path, e in view.items()}


@pytest.mark.timeout(300)
def test_a_version_10000_versions_deep_lists_and_downloads(tmp_path, memory_store, dsfs):
    synth = Synth(memory_store)
    top, expected = chain(synth, 10_000)
    result = dsfs("--store", memory_store, "list", "--id", top, "--json")
    assert result.code == 0, result.err
    assert sorted(row["path"] for row in json.loads(result.out)) == sorted(expected)
    result = dsfs("--store", memory_store, "download", top, tmp_path / "out")
    assert result.code == 0, result.err
    assert read_tree(tmp_path / "out") == {p: synth.blobs[synth.refs.index(e.chunks[0])] for p, e in expected.items()}
    assert _summary(Lineage(synth.store).view(top)) == _summary(expected)


def reference_view(store: Store, dataset_id: str) -> dict[str, Entry]:
    """DESIGN 3's merge rule written the plain way (recursion is fine at these depths)."""
    info = store.read_version(dataset_id)
    merged: dict[str, Entry] = {}
    for parent in info.parents:
        merged.update(reference_view(store, parent))
    for entry in Lineage(store).changes(dataset_id):
        if entry.removed:
            merged.pop(entry.path, None)
        else:
            merged[entry.path] = entry
    return merged


@pytest.mark.parametrize("seed", range(6))
def test_the_merge_equals_the_reference_on_random_lineages(tmp_path, memory_store, monkeypatch, seed):
    """Several parents (repeated ones too), shared ancestors, removals of a parent's file while an
    earlier parent has it, and chains longer than FAN_IN (3 here), so that runs are merged."""
    monkeypatch.setattr(dsfs.lineage.viewindex, "FAN_IN", 3)
    rng = random.Random(seed)
    synth = Synth(memory_store)
    versions: list[VersionInfo] = []
    for i in range(40):
        if versions and rng.random() < 0.5:
            parents = [versions[-1].id]  # chains
        else:
            parents = [rng.choice(versions).id for _ in range(rng.randrange(min(len(versions), 3) + 1))]
        have = sorted(reference_view(synth.store, parents[-1])) if parents else []
        changes = {}
        for _ in range(rng.randrange(1, 4)):
            path = f"d{rng.randrange(3)}/f{rng.randrange(6)}"
            changes[path] = synth.file(path, rng.randrange(len(synth.blobs)), mtime_ns=i)
        for path in rng.sample(have, k=min(len(have), rng.randrange(3))):
            changes[path] = Entry(path, removed=True)
        versions.append(synth.version(list(changes.values()), parents))
    cache = Cache()
    for info in versions:
        expected = _summary(reference_view(synth.store, info.id))
        assert _summary(Lineage(synth.store).view(info.id)) == expected
        assert _summary({e.path: e for e in merged_entries(synth.store, cache, info.id)}) == expected
        index = ensure_view(synth.store, cache, info.id)
        assert {path: (n.size, n.digest, n.mtime_ns) for path, n in index.walk_files()} == expected
    picked = [v.id for v in rng.sample(versions, k=3)]
    overlay = {}
    for dataset_id in picked:
        overlay.update(reference_view(synth.store, dataset_id))
    assert _summary({e.path: e for e in merged_entries(synth.store, cache, *picked)}) == _summary(overlay)


@pytest.mark.timeout(120)
def test_a_lineage_of_2000_merges_reads(tmp_path, memory_store):
    """Every version has two parents (the previous one and a fixed `labels` version): no chain to
    merge as one, and still no recursion."""
    synth = Synth(memory_store)
    labels = synth.version([synth.file(f"labels/l{i}", i % 16) for i in range(20)])
    expected = {f"labels/l{i}": synth.file(f"labels/l{i}", i % 16) for i in range(20)}
    top = labels.id
    for i in range(2000):
        change = synth.file(f"d/f{i % 50}", i % 16, mtime_ns=i)
        expected[change.path] = change
        top = synth.version([change], [top, labels.id]).id
    assert _summary(Lineage(synth.store).view(top)) == _summary(expected)
    index = ensure_view(synth.store, Cache(), top)
    assert {path: (n.size, n.digest, n.mtime_ns) for path, n in index.walk_files()} == _summary(expected)
