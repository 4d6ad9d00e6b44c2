"""Lineage: turning a version and its ancestors into one merged file view.

Merge rule (DESIGN 3): parents in the order given, a later parent overriding an earlier one on the
same path, then the version's own change-set on top (removals delete). A path that is a file in the
result and also a folder of another file is a conflict and is rejected.

Lineages are walked and merged without recursion: a dataset synced daily for years is a chain of
thousands of versions (a chain of 10,000 is tested), and a record whose parents lead back to itself
(crafted or damaged) is CorruptData, never a RecursionError. `merge_views` is the one implementation
of the merge rule, for both callers:

- authoring (`Lineage`) merges in memory, since it diffs against the parents anyway, and a
  parent's saved file table (dsfs.lineage.filetable) spares decoding its lineage;
- serving a version on a node (dsfs.lineage.viewindex) streams the merge into the LMDB view index, which
  keeps memory flat.

How a merge works: change-sets are sorted by path, so merging is a k-way merge (heapq) of decoded
streams. A chain of versions with one parent each (a segment) is one priority merge: on a path,
the change-set nearest the top wins, a removal included. Where versions have several parents, or a
version is the parent of several in the lineage, segments meet; each path the segments mention is
then resolved by the rule above over the segments (a removal in one parent's lineage does not hide
an earlier parent's file). A segment longer than the caller can open at once is first merged into
fewer runs by the caller's `compact` (the view index spills them to the cache's disk).
"""

from __future__ import annotations

import heapq
import weakref
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from itertools import filterfalse
from operator import attrgetter

import blake3

from dsfs.errors import Conflict, CorruptData, InvalidState
from dsfs.lineage.filetable import FileTable
from dsfs.model import ChunkRef, Entry, VersionInfo, decode_changeset, gc_paused
from dsfs.paths import parents as path_parents
from dsfs.store.layout import Store

Opener = Callable[[], Iterator[Entry]]  # opens one change-set (or a merge of several) as a sorted stream
_TOP = ""  # a version with the merged versions as parents and no change-set of its own (never an id)
READERS = 16  # change-sets read from a store at once (each a GET on a cloud store), as dsfs check does


def load_changes(store: Store, info: VersionInfo, data: bytes | None = None) -> list[Entry]:
    """The change-set of a final version (or `data`, already read and checked), checked against the
    digest its record names."""
    data = read_changes_checked(store, info) if data is None else data
    with gc_paused():
        return list(decode_changeset(data, f"change-set of dataset {info.id}"))


def read_changes_checked(store: Store, info: VersionInfo) -> bytes:
    """The encoded change-set of a final version, its size and digest checked against its record."""
    _require_final(info)
    data = store.read_changes(info.id, info.changes.get("size"))
    if not changes_match(info, data):
        raise _changes_corrupt(store, info)
    return data


def copy_changes_checked(store: Store, info: VersionInfo, out) -> None:
    """`read_changes_checked` into the binary file `out`, 8 MiB at a time, hashed on the way: never
    whole in memory (a change-set of 10,000,000 files is ~400 MB). On CorruptData, what was written
    is not the change-set: the caller drops it."""
    _require_final(info)
    size, hasher, got = info.changes.get("size"), blake3.blake3(), 0
    for block in store.iter_changes(info.id, size if isinstance(size, int) and size >= 0 else 0):
        hasher.update(block)
        out.write(block)
        got += len(block)
    if got != size or hasher.hexdigest() != info.changes.get("digest"):
        raise _changes_corrupt(store, info)


def _require_final(info: VersionInfo) -> None:
    if not info.is_final:
        raise InvalidState(f"dataset {info.id} ({info.ref}) is a draft; only final versions can be read")


def _changes_corrupt(store: Store, info: VersionInfo) -> CorruptData:
    return CorruptData(f"change-set of dataset {info.id} is corrupt or truncated in {store.display_url} "
                       f"(size or digest differs from its version record); refusing to use it")


def changes_match(info: VersionInfo, data) -> bool:
    """Whether `data` is the change-set a final version's record names: its size and blake3 digest."""
    return len(data) == info.changes.get("size") and blake3.blake3(data).hexdigest() == info.changes.get("digest")


def read_each(store: Store, read: Callable, items: list) -> list:
    """[read(item) for item in items] from `store`, READERS at a time: a lineage's records must be
    read one after another (each names the next), its change-sets need not. One at a time from a
    local store, whose reads wait on no network (threads only made them fight over the GIL: a
    10,000-version lineage took 3.5 s instead of 2). The first error is raised."""
    if len(items) < 2 or store.is_local:
        return [read(item) for item in items]
    with ThreadPoolExecutor(READERS, thread_name_prefix="dsfs-lineage") as pool:
        return list(pool.map(read, items))


def walk(info_of: Callable[[str], VersionInfo], top_ids: list[str]) -> list[VersionInfo]:
    """The records of top_ids and all their ancestors, each once, parents before children (a
    depth-first walk with its own stack). Raises CorruptData if parents lead back to a version."""
    done: set[str] = set()
    entered: set[str] = set()  # entered and not finished: the versions on the current path
    order: list[VersionInfo] = []
    stack: list[tuple[str, VersionInfo | None]] = [(i, None) for i in reversed(top_ids)]
    while stack:
        dataset_id, info = stack.pop()
        if info is not None:  # every parent of it is done
            entered.discard(dataset_id)
            done.add(dataset_id)
            order.append(info)
            continue
        if dataset_id in done:
            continue
        if dataset_id in entered:
            raise CorruptData(f"version record of dataset {dataset_id} is corrupt: its parents lead back to "
                              f"it (a cycle); refusing to use it")
        info = info_of(dataset_id)
        entered.add(dataset_id)
        stack.append((dataset_id, info))
        stack.extend((parent, None) for parent in reversed(info.parents))
    return order


def merge_views(order: list[VersionInfo], top_ids: list[str], open_changes: Callable[[VersionInfo], Iterator[Entry]],
                compact: Callable[[list[Opener]], list[Opener]] | None = None) -> Iterator[Entry]:
    """The merged views of top_ids overlaid in order (a later one wins on a path), as file entries
    sorted by path. `order` is walk(..., top_ids); open_changes(info) streams a version's change-set;
    compact, if given, turns a segment's openers (top first) into fewer that give the same merge."""
    infos = {info.id: info for info in order}
    parents = {info.id: info.parents for info in order}
    parents[_TOP] = list(top_ids)
    children: dict[str, list[str]] = {}
    for child, of in parents.items():
        for parent in of:
            children.setdefault(parent, []).append(child)

    def is_head(dataset_id: str) -> bool:
        kids = children.get(dataset_id, [])
        return dataset_id == _TOP or len(kids) != 1 or len(parents[kids[0]]) != 1

    segments: list[tuple[list[Opener], list[str]]] = []  # (openers, top first; the heads below it)
    number: dict[str, int] = {}
    for head in [_TOP, *(info.id for info in reversed(order))]:
        if not is_head(head):
            continue
        members = [head]
        while len(parents[members[-1]]) == 1 and not is_head(parents[members[-1]][0]):
            members.append(parents[members[-1]][0])
        openers = [_opener(open_changes, infos[m]) for m in members if m != _TOP]
        if compact is not None:
            openers = compact(openers)
        number[head] = len(segments)
        segments.append((openers, parents[members[-1]]))
    if len(segments) == 1:
        yield from filterfalse(attrgetter("removed"), topmost([o() for o in segments[0][0]]))
        return
    below = [[number[h] for h in heads] for _, heads in segments]
    keyed = [_ranked(topmost([o() for o in openers]), n) for n, (openers, _) in enumerate(segments)]
    path: str | None = None
    mentions: dict[int, Entry] = {}
    for next_path, n, entry in heapq.merge(*keyed):
        if next_path != path:
            if mentions and (found := _resolve(mentions, below)) is not None:
                yield found
            path, mentions = next_path, {}
        mentions[n] = entry
    if mentions and (found := _resolve(mentions, below)) is not None:
        yield found


def _opener(open_changes, info: VersionInfo) -> Opener:
    return lambda: open_changes(info)


def topmost(streams: list[Iterator[Entry]]) -> Iterator[Entry]:
    """Merge entry streams sorted by path; on a path the first stream that has it wins (removals
    are kept: they hide the path from the streams after it)."""
    if len(streams) == 1:
        return streams[0]
    return _topmost(streams)


def _topmost(streams):
    last = None
    for path, _, entry in heapq.merge(*[_ranked(s, rank) for rank, s in enumerate(streams)]):
        if path != last:
            last = path
            yield entry


def _ranked(stream: Iterator[Entry], rank: int):
    """(path, rank, entry) of a stream: merged, equal paths come in rank order and entries are never
    compared. A generator per stream, where a generator expression would see the last rank."""
    for entry in stream:
        yield entry.path, rank, entry


def _resolve(mentions: dict[int, Entry], below: list[list[int]]) -> Entry | None:
    """The file at one path of segment 0's view, given what each segment's own changes say of it:
    a segment's view is its own entry if it has one (None for a removal), else that of the last
    segment below it whose view has the path. Evaluated with a stack and memo, not recursion."""
    memo: dict[int, Entry | None] = {}
    stack = [0]
    while stack:
        segment = stack[-1]
        if segment in memo:
            stack.pop()
            continue
        own = mentions.get(segment)
        if own is not None:
            memo[segment] = None if own.removed else own
            stack.pop()
            continue
        found, waiting = None, False
        for lower in reversed(below[segment]):  # the last parent wins
            if lower not in memo:
                stack.append(lower)
                waiting = True
                break
            if memo[lower] is not None:
                found = memo[lower]
                break
        if not waiting:
            memo[segment] = found
            stack.pop()
    return memo[0]


class Lineage:
    """Reads versions and change-sets of one store once each, and merges them.

    `Lineage.of(store)` shares one instance per Store object, so the commands of one process that
    look at the same ancestors (create, sync, finalize) decode each change-set once. Only immutable
    things are kept: change-sets and parents of final versions."""

    _shared: weakref.WeakKeyDictionary[Store, Lineage] = weakref.WeakKeyDictionary()

    @classmethod
    def of(cls, store: Store) -> Lineage:
        lineage = cls._shared.get(store)
        if lineage is None:
            lineage = cls._shared[store] = cls(store)
        return lineage

    def __init__(self, store: Store):
        self.store = store
        self._infos: dict[str, VersionInfo] = {}
        self._changes: dict[str, list[Entry]] = {}
        self._merged: dict[tuple[str, ...], dict[str, Entry]] = {}
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

    def _load(self, ids: list[str]) -> None:
        """Decode the change-sets of these versions that are not yet: read READERS at a time (GETs
        overlap), decoded one after another (decoding in threads only fights over the GIL)."""
        todo = [i for i in ids if i not in self._changes]
        for dataset_id, data in zip(todo, read_each(self.store, self._read_checked, todo), strict=True):
            self._changes[dataset_id] = load_changes(self.store, self.info(dataset_id), data)

    def _read_checked(self, dataset_id: str) -> bytes:
        return read_changes_checked(self.store, self.info(dataset_id))

    def ancestors(self, parent_ids: list[str]) -> list[str]:
        """Every ancestor of a version with these parents (the parents included), each once,
        children before parents."""
        return [info.id for info in reversed(walk(self.info, parent_ids))]

    def merged_parents(self, parent_ids: list[str]) -> dict[str, Entry]:
        """The merged views of these versions overlaid in order (a later one wins on a path). Kept:
        do not change it."""
        key = tuple(parent_ids)
        if key not in self._merged:
            order = walk(self.info, parent_ids)
            self._load([info.id for info in order])
            entries = merge_views(order, parent_ids, lambda info: iter(self.changes(info.id)))
            self._merged[key] = {entry.path: entry for entry in entries}
        return self._merged[key]

    def view(self, dataset_id: str) -> dict[str, Entry]:
        """The merged view (path -> file entry) of a final version."""
        if dataset_id not in self._views:
            merged = self.merged_parents([dataset_id])
            check_tree(merged, f"dataset {dataset_id}")
            self._views[dataset_id] = merged
        return self._views[dataset_id]

    def table(self, parent_ids: list[str]) -> FileTable:
        """What a child of these parents is authored against: their merged view and every chunk of
        their lineage. A single parent's saved table when there is one to trust, else decoded (and
        saved, so the next child loads it); either way every change-set of the lineage is checked
        against its record."""
        key = tuple(parent_ids)
        table = self._tables.get(key)
        if table is None:
            if len(parent_ids) == 1:
                table = FileTable.load(self.info(parent_ids[0]))
            if table is not None:
                # a table stands in for decoding the lineage, not for its being intact in the store:
                # each change-set is read and checked against its record, and dropped
                read_each(self.store, lambda i: self._read_checked(i) and None, self.ancestors(parent_ids))
            else:
                merged = self.merged_parents(parent_ids)
                check_tree(merged, f"dataset {parent_ids[0]}" if len(parent_ids) == 1
                           else "merge of parents " + ", ".join(parent_ids))
                # a missing or damaged table of one parent is made again from the store, and saved
                table = FileTable.from_view(merged, self.known_chunks(parent_ids),
                                            self.info(parent_ids[0]) if len(parent_ids) == 1 else None)
            self._tables[key] = table
        return table

    def known_chunks(self, parent_ids: list[str]) -> dict[bytes, ChunkRef]:
        """Every chunk any ancestor stored: what a new child never uploads again."""
        known: dict[bytes, ChunkRef] = {}
        ancestors = self.ancestors(parent_ids)
        self._load(ancestors)
        for dataset_id in ancestors:
            for entry in self.changes(dataset_id):
                for ref in entry.chunks:
                    known.setdefault(ref.digest, ref)
        return known


def apply_changes(merged: dict[str, Entry], changes: Iterable[Entry]) -> None:
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
