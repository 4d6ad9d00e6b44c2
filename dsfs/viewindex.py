"""The view index: a version's whole lineage flattened once per node into LMDB.

Merge rule (DESIGN 3): merged(V) = V's change-set applied over the parents' merged views overlaid in
order (a later parent wins on a path; a removal in one parent's lineage does not hide an earlier
parent's file). Change-sets are sorted by path, so the merge is a streaming k-way merge (heapq) over
change-sets decoded entry by entry from files in the cache: memory stays flat whatever the file
count, and nothing builds a path -> entry dict.

The result is written to three LMDB tables keyed by the view's number and inode numbers (root is
1, then in path order, so they are stable for a version):

    inodes   view+ino             -> msgpack [kind, size, mode, mtime_ns, digest, chunks, nlink, url, etag]
    dirents  view+parent+name     -> ino               (lookup)
    listing  view+parent+seq(4)   -> ino + name        (readdir with a resumable offset)
    views    vid                  -> msgpack {files, dirs, bytes, key}, written last: a view without
                                     it is partial (a killed build) and is rebuilt
    building vid                  -> the view number a build in progress writes under

The view number (8 bytes) is taken from a counter when a build starts, so a new view's keys sort
after every existing one and its B-tree pages fill up (keyed by the random version id, a view built
into a cache that held others landed mid-tree, in half-empty pages: 413 MB instead of 282 MB for a
1M-file view). Within a build, keys that sort after the last one written go in with LMDB's append
mode, which fills pages completely instead of splitting them in half.

Writes are committed in batches (an LMDB write transaction keeps its dirty pages in memory), and a
file lock per version makes concurrent builders wait for one another instead of racing.
"""

from __future__ import annotations

import datetime
import fcntl
import heapq
import os
import struct
from dataclasses import dataclass

import blake3
import msgpack

from .cache import Cache
from .errors import Conflict, CorruptData, InvalidState
from .model import ChunkRef, decode_changeset
from .store import Store

ROOT = 1
KIND_FILE = 0
KIND_DIR = 1
BATCH = 20_000

_INO = struct.Struct(">Q")
_SEQ = struct.Struct(">I")


def _dbs(cache: Cache):
    if not hasattr(cache, "_view_dbs"):
        cache._view_dbs = {name: cache.env.open_db(name.encode())
                           for name in ("views", "building", "inodes", "dirents", "listing")}
    return cache._view_dbs


@dataclass(frozen=True, slots=True)
class Node:
    ino: int
    kind: int
    size: int
    mode: int
    mtime_ns: int
    digest: bytes
    chunks_wire: list
    nlink: int
    url: str = ""  # an external file (dsfs.links)
    etag: str = ""

    @property
    def is_dir(self) -> bool:
        return self.kind == KIND_DIR

    @property
    def chunks(self) -> list[ChunkRef]:
        return [ChunkRef(*c) for c in self.chunks_wire]


class ViewIndex:
    """Read access to one built view: lookup, getattr, readdir. Knows nothing of FUSE."""

    def __init__(self, cache: Cache, dataset_id: str):
        self.cache = cache
        self.dataset_id = dataset_id
        self.dbs = _dbs(cache)
        with cache.env.begin(db=self.dbs["views"]) as txn:
            meta = txn.get(bytes.fromhex(dataset_id))
        if meta is None:
            raise InvalidState(f"view of dataset {dataset_id} is not built")
        self.meta = msgpack.unpackb(meta)
        self.vid = _INO.pack(self.meta["key"])  # the key prefix of this view's records

    def getattr(self, ino: int) -> Node | None:
        with self.cache.env.begin(db=self.dbs["inodes"]) as txn:
            raw = txn.get(self.vid + _INO.pack(ino))
        if raw is None:
            return None
        return Node(ino, *msgpack.unpackb(raw))

    def lookup(self, parent: int, name: str) -> Node | None:
        with self.cache.env.begin() as txn:
            raw = txn.get(self.vid + _INO.pack(parent) + name.encode(), db=self.dbs["dirents"])
            if raw is None:
                return None
            ino = _INO.unpack(raw)[0]
            return Node(ino, *msgpack.unpackb(txn.get(self.vid + _INO.pack(ino), db=self.dbs["inodes"])))

    def readdir(self, parent: int, start: int = 0):
        """Yield (seq, name, Node) of a folder's children from position `start` (0 = first)."""
        prefix = self.vid + _INO.pack(parent)
        with self.cache.env.begin() as txn:
            cursor = txn.cursor(db=self.dbs["listing"])
            if not cursor.set_range(prefix + _SEQ.pack(start)):
                return
            for key, value in cursor:
                if not key.startswith(prefix):
                    break
                seq = _SEQ.unpack(key[len(prefix):])[0]
                ino = _INO.unpack(value[:8])[0]
                raw = txn.get(self.vid + value[:8], db=self.dbs["inodes"])
                yield seq, value[8:].decode(), Node(ino, *msgpack.unpackb(raw))

    def walk_files(self, parent: int = ROOT, prefix: str = ""):
        """Yield (path, Node) of every file under a folder, in path order of folders."""
        for _, name, node in list(self.readdir(parent)):
            path = f"{prefix}{name}"
            if node.is_dir:
                yield from self.walk_files(node.ino, path + "/")
            else:
                yield path, node

    def resolve(self, path: str) -> Node | None:
        node = self.getattr(ROOT)
        for part in filter(None, path.split("/")):
            if node is None or not node.is_dir:
                return None
            node = self.lookup(node.ino, part)
        return node


# -- building ------------------------------------------------------------------------------------

def changeset_file(store: Store, cache: Cache, info) -> str:
    """A verified local copy of a final version's change-set (fetched once per node)."""
    if not info.is_final:
        raise InvalidState(f"dataset {info.id} ({info.ref}) is a draft; only final versions can be served")
    path = cache.changeset_path(info.id)
    if os.path.exists(path) and os.path.getsize(path) == info.changes.get("size"):
        return path
    data = store.read_changes(info.id)
    if len(data) != info.changes.get("size") or blake3.blake3(data).hexdigest() != info.changes.get("digest"):
        raise CorruptData(f"change-set of dataset {info.id} is corrupt or truncated in {store.display_url} "
                          f"(size or digest differs from its version record); refusing to use it")
    return cache.put_changeset(info.id, data)


def _changes(store, cache, info):
    with open(changeset_file(store, cache, info), "rb") as f:
        yield from decode_changeset(f, f"change-set of dataset {info.id}")


def merged_entries(store: Store, cache: Cache, dataset_id: str, _infos=None):
    """The merged view of a version as a stream of file entries sorted by path."""
    infos = {} if _infos is None else _infos
    if dataset_id not in infos:
        infos[dataset_id] = store.read_version(dataset_id)
    info = infos[dataset_id]
    parents = [merged_entries(store, cache, p, infos) for p in info.parents]
    base = overlay(parents)
    return _apply(base, _changes(store, cache, info))


def overlay(streams):
    if not streams:
        return iter(())
    if len(streams) == 1:
        return streams[0]
    return _overlay_gen(streams)


def _overlay_gen(streams):
    keyed = [((e.path, i, e) for e in s) for i, s in enumerate(streams)]
    pending = None
    for path, _, entry in heapq.merge(*keyed, key=lambda t: (t[0], t[1])):
        if pending is not None and pending.path != path:
            yield pending
        pending = entry  # same path: the later stream (higher index) comes last and wins
    if pending is not None:
        yield pending


def _apply(base, changes):
    """Apply a sorted change stream over a sorted base stream."""
    base = iter(base)
    current = next(base, None)
    for change in changes:
        while current is not None and current.path < change.path:
            yield current
            current = next(base, None)
        if current is not None and current.path == change.path:
            current = next(base, None)
        if not change.removed:
            yield change
    while current is not None:
        yield current
        current = next(base, None)


class _Builder:
    def __init__(self, cache: Cache, dataset_key: bytes, mtime_ns: int):
        self.cache, self.dataset_key, self.mtime_ns = cache, dataset_key, mtime_ns
        self.dbs = _dbs(cache)
        self.txn = cache.env.begin(write=True)
        number = int(self.txn.get(b"next_view", b"1", db=cache.db_meta))
        self.txn.put(b"next_view", str(number + 1).encode(), db=cache.db_meta)
        self.txn.put(dataset_key, _INO.pack(number), db=self.dbs["building"])
        self.number = number
        self.vid = _INO.pack(number)
        self.last = {}  # db name -> last key written, for append mode
        self.pending = 0
        self.next_ino = ROOT + 1
        self.files = self.dirs = self.bytes = 0

    def _maybe_commit(self):
        self.pending += 1
        if self.pending >= BATCH:
            self.txn.commit()
            self.txn = self.cache.env.begin(write=True)
            self.pending = 0

    def add_child(self, parent: list, name: str, ino: int, where: str) -> None:
        key = self.vid + _INO.pack(parent[1]) + name.encode()
        if not self.txn.put(key, _INO.pack(ino), db=self.dbs["dirents"], overwrite=False):
            raise Conflict(f"{where}: {name!r} is both a file and a folder in this view")
        self._put("listing", self.vid + _INO.pack(parent[1]) + _SEQ.pack(parent[2]), _INO.pack(ino) + name.encode())
        parent[2] += 1
        self._maybe_commit()

    def put_node(self, ino: int, record: list) -> None:
        self._put("inodes", self.vid + _INO.pack(ino), msgpack.packb(record))
        self._maybe_commit()

    def _put(self, db: str, key: bytes, value: bytes) -> None:
        """Append when the key sorts after the last one written to this table (pages fill up),
        insert otherwise (folders are written when they close, out of inode order)."""
        last = self.last.get(db)
        if last is not None and key > last:
            self.txn.put(key, value, db=self.dbs[db], append=True)
        else:
            self.txn.put(key, value, db=self.dbs[db])
        if last is None or key > last:
            self.last[db] = key

    def build(self, entries, where: str) -> dict:
        # stack items: [name, ino, next seq, subdir count]
        stack = [["", ROOT, 0, 0]]
        for entry in entries:
            *dirs, name = entry.path.split("/")
            common = 0
            while common < len(dirs) and common + 1 < len(stack) and stack[common + 1][0] == dirs[common]:
                common += 1
            while len(stack) - 1 > common:
                self._finish_dir(stack.pop())
            for d in dirs[common:]:
                ino = self._new_ino()
                self.add_child(stack[-1], d, ino, where)
                stack[-1][3] += 1
                stack.append([d, ino, 0, 0])
            ino = self._new_ino()
            self.add_child(stack[-1], name, ino, where)
            self.put_node(ino, [KIND_FILE, entry.size, entry.mode, entry.mtime_ns, entry.digest,
                                [c.to_wire() for c in entry.chunks], 1, entry.url, entry.etag])
            self.files += 1
            self.bytes += entry.size
        while stack:
            self._finish_dir(stack.pop())
        meta = {"files": self.files, "dirs": self.dirs, "bytes": self.bytes, "key": self.number}
        self.txn.put(self.dataset_key, msgpack.packb(meta), db=self.dbs["views"])
        self.txn.delete(self.dataset_key, db=self.dbs["building"])
        self.txn.commit()
        return meta

    def _new_ino(self) -> int:
        ino = self.next_ino
        self.next_ino += 1
        return ino

    def _finish_dir(self, item) -> None:
        self.put_node(item[1], [KIND_DIR, 0, 0o755, self.mtime_ns, b"", [], 2 + item[3]])
        self.dirs += 1

    def abort(self) -> None:
        self.txn.abort()


def _drop_view(cache: Cache, dataset_key: bytes) -> None:
    """Delete a view, built or partial (the records of a killed build are found by `building`)."""
    dbs = _dbs(cache)
    with cache.env.begin(write=True) as txn:
        prefixes = []
        meta = txn.get(dataset_key, db=dbs["views"])
        if meta is not None:
            prefixes.append(_INO.pack(msgpack.unpackb(meta)["key"]))
        building = txn.get(dataset_key, db=dbs["building"])
        if building is not None:
            prefixes.append(bytes(building))
        txn.delete(dataset_key, db=dbs["views"])
        txn.delete(dataset_key, db=dbs["building"])
        for prefix in prefixes:
            for name in ("inodes", "dirents", "listing"):
                cursor = txn.cursor(db=dbs[name])
                if cursor.set_range(prefix):
                    while cursor.key()[:8] == prefix:
                        if not cursor.delete():
                            break


def drop_all_views(cache: Cache) -> None:
    for dataset_id in list_views(cache):
        _drop_view(cache, bytes.fromhex(dataset_id))


def list_views(cache: Cache) -> list[str]:
    with cache.env.begin(db=_dbs(cache)["views"]) as txn:
        return [bytes(k).hex() for k, _ in txn.cursor()]


def ensure_view(store: Store, cache: Cache, dataset_id: str) -> ViewIndex:
    """The view index of a final version, built once per node (and reused by every command)."""
    vid = bytes.fromhex(dataset_id)
    with cache.env.begin(db=_dbs(cache)["views"]) as txn:
        if txn.get(vid) is not None:
            return ViewIndex(cache, dataset_id)
    info = store.read_version(dataset_id)
    changeset_file(store, cache, info)  # fail early on a draft or a corrupt change-set
    lock_path = os.path.join(cache.root, "tmp", f"view-{dataset_id}.lock")
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with cache.env.begin(db=_dbs(cache)["views"]) as txn:
            if txn.get(vid) is not None:  # another process built it while we waited
                return ViewIndex(cache, dataset_id)
        _drop_view(cache, vid)  # leftovers of a killed build
        mtime = info.finalized or info.created
        try:
            mtime_ns = int(datetime.datetime.fromisoformat(mtime).timestamp() * 1e9)
        except ValueError:
            mtime_ns = 0
        builder = _Builder(cache, vid, mtime_ns)
        try:
            builder.build(merged_entries(store, cache, dataset_id), f"dataset {dataset_id}")
        except BaseException:
            builder.abort()
            _drop_view(cache, vid)
            raise
    return ViewIndex(cache, dataset_id)
