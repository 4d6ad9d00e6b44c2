"""Lineage: turning a version and its ancestors into one merged file view.

Merge rule (DESIGN 3): parents in the order given, a later parent overriding an earlier one on the
same path, then the version's own change-set on top (removals delete). A path that is a file in the
result and also a folder of another file is a conflict and is rejected.

This module merges in memory and is used by authoring (which must diff against the parents anyway),
where a parent's saved file table (dsfs.filetable) spares decoding its lineage. Serving a version on
a node goes through the LMDB view index instead, which keeps memory flat.
"""

from __future__ import annotations

import weakref

import blake3

from .errors import Conflict, CorruptData, InvalidState
from .filetable import FileTable
from .model import ChunkRef, Entry, VersionInfo, decode_changeset, gc_paused
from .paths import parents as path_parents
from .store import Store


def load_changes(store: Store, info: VersionInfo) -> list[Entry]:
    """The change-set of a final version, checked against the digest its record names."""
    data = read_changes_checked(store, info)
    with gc_paused():
        return list(decode_changeset(data, f"change-set of dataset {info.id}"))


def read_changes_checked(store: Store, info: VersionInfo) -> bytes:
    """The encoded change-set of a final version, its size and digest checked against its record."""
    if not info.is_final:
        raise InvalidState(f"dataset {info.id} ({info.ref}) is a draft; only final versions can be read")
    data = store.read_changes(info.id)
    if not changes_match(info, data):
        raise CorruptData(f"change-set of dataset {info.id} is corrupt or truncated in {store.display_url} "
                          f"(size or digest differs from its version record); refusing to use it")
    return data


def changes_match(info: VersionInfo, data: bytes) -> bool:
    """Whether `data` is the change-set a final version's record names: its size and blake3 digest."""
    return len(data) == info.changes.get("size") and blake3.blake3(data).hexdigest() == info.changes.get("digest")


class Lineage:
    """Reads versions and change-sets of one store once each, and merges them.

    `Lineage.of(store)` shares one instance per Store object, so the commands of one process that
    look at the same ancestors (create, sync, finalize) decode each change-set once. Only immutable
    things are kept: change-sets and parents of final versions."""

    _shared: "weakref.WeakKeyDictionary[Store, Lineage]" = weakref.WeakKeyDictionary()

    @classmethod
    def of(cls, store: Store) -> "Lineage":
        lineage = cls._shared.get(store)
        if lineage is None:
            lineage = cls._shared[store] = cls(store)
        return lineage

    def __init__(self, store: Store):
        self.store = store
        self._infos: dict[str, VersionInfo] = {}
        self._changes: dict[str, list[Entry]] = {}
        self._views: dict[str, dict[str, Entry]] = {}
        self._tables: dict[tuple[str, ...], FileTable] = {}

    def info(self, dataset_id: str) -> VersionInfo:
        info = self._infos.get(dataset_id)
        if info is None:
            info = self.store.read_version(dataset_id)
            if info.is_final:  # a draft may still change: never keep it
                self._infos[dataset_id] = info
        return info

    def changes(self, dataset_id: str) -> list[Entry]:
        if dataset_id not in self._changes:
            self._changes[dataset_id] = load_changes(self.store, self.info(dataset_id))
        return self._changes[dataset_id]

    def ancestors(self, parent_ids: list[str]) -> list[str]:
        """Every ancestor of a version with these parents (the parents included), each once."""
        seen: list[str] = []
        stack = list(reversed(parent_ids))
        while stack:
            dataset_id = stack.pop()
            if dataset_id in seen:
                continue
            seen.append(dataset_id)
            stack.extend(reversed(self.info(dataset_id).parents))
        return seen

    def merged_parents(self, parent_ids: list[str]) -> dict[str, Entry]:
        merged: dict[str, Entry] = {}
        for parent_id in parent_ids:
            merged.update(self.view(parent_id))
        return merged

    def view(self, dataset_id: str) -> dict[str, Entry]:
        """The merged view (path -> file entry) of a final version."""
        if dataset_id not in self._views:
            info = self.info(dataset_id)
            merged = self.merged_parents(info.parents)
            apply_changes(merged, self.changes(dataset_id))
            check_tree(merged, f"dataset {dataset_id}")
            self._views[dataset_id] = merged
        return self._views[dataset_id]

    def table(self, parent_ids: list[str]) -> FileTable:
        """What a child of these parents is authored against: their merged view and every chunk of
        their lineage. A single parent's saved table when there is one to trust, else decoded; either
        way every change-set of the lineage is checked against its record."""
        key = tuple(parent_ids)
        table = self._tables.get(key)
        if table is None:
            if len(parent_ids) == 1:
                table = FileTable.load(self.info(parent_ids[0]))
            if table is not None:
                # a table stands in for decoding the lineage, not for its being intact in the store
                for dataset_id in self.ancestors(parent_ids):
                    read_changes_checked(self.store, self.info(dataset_id))
            else:
                merged = self.merged_parents(parent_ids)
                if len(parent_ids) > 1:  # each parent's view is checked, not their merge
                    check_tree(merged, "merge of parents " + ", ".join(parent_ids))
                table = FileTable.from_view(merged, self.known_chunks(parent_ids))
            self._tables[key] = table
        return table

    def known_chunks(self, parent_ids: list[str]) -> dict[bytes, ChunkRef]:
        """Every chunk any ancestor stored: what a new child never uploads again."""
        known: dict[bytes, ChunkRef] = {}
        for dataset_id in self.ancestors(parent_ids):
            for entry in self.changes(dataset_id):
                for ref in entry.chunks:
                    known.setdefault(ref.digest, ref)
        return known


def apply_changes(merged: dict[str, Entry], changes) -> None:
    for entry in changes:
        if entry.removed:
            merged.pop(entry.path, None)
        else:
            merged[entry.path] = entry


def check_tree(view: dict[str, Entry], where: str) -> None:
    """Reject a view where a path is both a file and a folder."""
    for path in view:
        for folder in path_parents(path):
            if folder in view:
                raise Conflict(f"{where}: {folder!r} is both a file and a folder (of {path!r})")
