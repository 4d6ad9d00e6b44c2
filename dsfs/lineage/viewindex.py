"""The view index: a version's whole lineage flattened once per node into LMDB.

Merge rule (DESIGN 3): merged(V) = V's change-set applied over the parents' merged views overlaid in
order (a later parent wins on a path; a removal in one parent's lineage does not hide an earlier
parent's file). Change-sets are sorted by path, so the merge is a streaming k-way merge
(dsfs.lineage.merge.merge_views) over change-sets decoded entry by entry from files in the cache: memory
stays flat whatever the file count, and nothing builds a path -> entry dict. A chain longer than
FAN_IN is first merged FAN_IN change-sets at a time into temporary runs on the cache's disk, so a
build never holds more than FAN_IN decoders open, however long the lineage.

Nothing the node derived is trusted unchecked (DESIGN 5). The cache's copy of a change-set is used
only if it has the size and blake3 digest the version record names (else it is fetched again). The
view's record in `views` names the change-set digest of the version it was built from and is
compared with the version record on every open; every record of the view carries a CRC-32 of its key
and value, checked on every read. A view that is missing, partial, of an older format or of another
change-set is built again; a record that fails its check has the view rebuilt from the store and the
read answered from the new one (a second failure is CorruptData naming the cache).

The result is written to three LMDB tables keyed by the view's number and inode numbers (root is
1, then in path order, so they are stable for a version):

    inodes   view+ino             -> msgpack [kind, size, mode, mtime_ns, digest, chunks, nlink, url, etag]
    dirents  view+parent+name     -> ino               (lookup)
    listing  view+parent+seq(4)   -> ino + name        (readdir with a resumable offset)
    views    vid                  -> msgpack {files, dirs, bytes, key, changes}, written last: a view
                                     without it is partial (a killed build) and is rebuilt
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
import functools
import os
import struct
import tempfile
import threading
import zlib
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

import msgpack

from dsfs.errors import Conflict, CorruptData, InvalidState
from dsfs.lineage.merge import Opener, copy_changes_checked, merge_views, read_each, topmost, walk
from dsfs.model import ChunkRef, VersionInfo, decode_changeset, write_changeset
from dsfs.paths import NAME_MAX
from dsfs.store.layout import Store

ROOT = 1
KIND_FILE = 0
KIND_DIR = 1
BATCH = 20_000

FAN_IN = 64  # change-sets merged at once: decoders held open by a build
DECODED_AT_ONCE = 64 << 10  # change-sets up to this size are decoded whole (a few hundred entries)

_INO = struct.Struct(">Q")
_SEQ = struct.Struct(">I")
_CRC = struct.Struct(">I")


class _Damaged(Exception):
    """A record of a view index is not as it was written."""


def _seal(key: bytes, value: bytes) -> bytes:
    """A record's value as stored: followed by the CRC-32 of its key and value."""
    return value + _CRC.pack(zlib.crc32(value, zlib.crc32(key)))


def _unseal(key: bytes, stored: bytes) -> bytes:
    """The value of a record as written, or _Damaged."""
    value = stored[:-4]
    if len(stored) < 4 or _CRC.unpack(stored[-4:])[0] != zlib.crc32(value, zlib.crc32(key)):
        raise _Damaged(key)
    return value


TABLES = ("views", "building", "inodes", "dirents", "listing")  # LMDB tables of the view index


class NodeDb(Protocol):
    """What the view index needs of the node cache it lives in (dsfs.node.cache.Cache): its LMDB
    environment with the TABLES opened, its folder, and the change-sets it keeps."""

    root: str
    env: Any
    db_meta: Any
    view_dbs: dict[str, Any]

    def space_checked(self) -> AbstractContextManager: ...
    def changeset_path(self, dataset_id: str) -> str: ...
    def writing_changeset(self, dataset_id: str) -> AbstractContextManager: ...
    def open_changeset(self, dataset_id: str, size: int | None, digest: str | None) -> Any: ...


def checks_space(fn):
    """Decorate a function that writes to a node cache it is passed: its space_checked() around it
    (a full disk becomes DiskFull, dsfs.node.cache)."""
    @functools.wraps(fn)
    def checked(*args, **kwargs):
        cache = next(arg for arg in (*args, *kwargs.values())
                     if hasattr(arg, "space_checked") and hasattr(arg, "view_dbs"))
        with cache.space_checked():
            return fn(*args, **kwargs)
    return checked


def _dbs(cache: NodeDb) -> dict[str, Any]:
    return cache.view_dbs


@dataclass(frozen=True, slots=True)
class Inode:
    """One file or folder of a version as the view index holds it (numbered in path order)."""

    ino: int
    kind: int
    size: int
    mode: int
    mtime_ns: int
    digest: bytes
    chunks_wire: list
    nlink: int
    url: str = ""  # an external file (dsfs.node.links)
    etag: str = ""

    @property
    def is_dir(self) -> bool:
        return self.kind == KIND_DIR

    @property
    def chunks(self) -> list[ChunkRef]:
        return [ChunkRef(*c) for c in self.chunks_wire]


class ViewIndex:
    """Read access to one built view: lookup, getattr, readdir. Knows nothing of FUSE.

    Every record read is checked (its CRC). A damaged one, or a miss while the view's own record
    has changed (another process rebuilt the view, or `cache clear` dropped it), makes the view
    current again, rebuilt from the store if need be, and the read is tried once more."""

    def __init__(self, store: Store, cache: NodeDb, info: VersionInfo):
        self.store, self.cache, self.info = store, cache, info
        self.dataset_id = info.id
        self.key = bytes.fromhex(info.id)
        self.dbs = _dbs(cache)
        self._lock = threading.Lock()
        self.meta = self._current()
        self.vid = _INO.pack(self.meta["key"]) if self.meta else b""  # the key prefix of its records

    @property
    def last_ino(self) -> int:
        """The highest inode number (inodes are 1, the root, to this: every file and folder)."""
        return int(self.meta["files"]) + int(self.meta["dirs"]) if self.meta else ROOT

    def _current(self) -> dict | None:
        """The view's own record, if the view is built, whole and of this version's change-set."""
        with self.cache.env.begin(db=self.dbs["views"]) as txn:
            stored = txn.get(self.key)
        if stored is None:
            return None
        try:
            meta = msgpack.unpackb(_unseal(self.key, stored))
        except (_Damaged, ValueError, TypeError, msgpack.UnpackException):
            return None  # damaged, or written by an older dsfs: built again
        return meta if isinstance(meta, dict) and meta.get("changes") == self.info.changes.get("digest") else None

    def rebuild(self, seen: int | None = None) -> None:
        """Make the view current: take the one another process built since view number `seen` was
        read, or build it from the store (dropping what is left of that one)."""
        with self._lock, open(os.path.join(self.cache.root, "tmp", f"view-{self.dataset_id}.lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            meta = self._current()
            if meta is None or meta["key"] == seen:
                _drop_view(self.cache, self.key)  # a partial, stale or damaged one
                _build(self.store, self.cache, self.info)
                meta = self._current()
                if meta is None:
                    raise CorruptData(f"the view index of dataset {self.dataset_id} in the node cache "
                                      f"{self.cache.root} does not read back as written; check that disk")
            self.meta, self.vid = meta, _INO.pack(meta["key"])

    def _is_current(self, seen: int) -> bool:
        meta = self._current()
        return meta is not None and meta["key"] == seen

    def _seen(self) -> int:
        """The number of the view being read."""
        assert self.meta is not None, "ensure_view makes the view current before it is read"
        return self.meta["key"]

    def _read(self, find):
        """find(txn), checked: after a damaged record, or a miss (None) while the view is not
        current, the view is made current and find tried once more."""
        seen = self._seen()
        try:
            with self.cache.env.begin() as txn:
                found = find(txn)
            if found is not None or self._is_current(seen):
                return found
        except _Damaged:
            pass
        self.rebuild(seen)
        try:
            with self.cache.env.begin() as txn:
                return find(txn)
        except _Damaged:
            raise self._still_damaged() from None

    def _still_damaged(self) -> CorruptData:
        return CorruptData(f"the view index of dataset {self.dataset_id} in the node cache {self.cache.root} "
                           f"is damaged and rebuilding it did not help; check that disk, or run `dsfs cache clear`")

    def _node(self, txn, ino: int) -> Inode | None:
        key = self.vid + _INO.pack(ino)
        stored = txn.get(key, db=self.dbs["inodes"])
        return None if stored is None else Inode(ino, *msgpack.unpackb(_unseal(key, stored)))

    def _linked(self, txn, key: bytes, ino: bytes) -> Inode:
        """The node a folder entry points to: an entry without one is damage."""
        node = self._node(txn, _INO.unpack(ino)[0])
        if node is None:
            raise _Damaged(key)
        return node

    def getattr(self, ino: int) -> Inode | None:
        return self._read(lambda txn: self._node(txn, ino))

    def lookup(self, parent: int, name: str) -> Inode | None:
        raw_name = name.encode()
        if len(raw_name) > NAME_MAX:  # no view holds one (dsfs.model), and LMDB keys are short
            return None

        def find(txn):
            key = self.vid + _INO.pack(parent) + raw_name
            stored = txn.get(key, db=self.dbs["dirents"])
            return None if stored is None else self._linked(txn, key, _unseal(key, stored))

        return self._read(find)

    def readdir(self, parent: int, start: int = 0):
        """Yield (seq, name, Inode) of a folder's children from position `start` (0 = first)."""
        for attempt in range(2):
            seen, found = self._seen(), False
            try:
                with self.cache.env.begin() as txn:
                    for seq, name, node in self._listing(txn, parent, start):
                        found = True
                        yield seq, name, node
                        start = seq + 1  # a rebuilt view goes on from there: positions are stable
                if found or self._is_current(seen):
                    return
            except _Damaged:
                if attempt:
                    raise self._still_damaged() from None
            self.rebuild(seen)

    def _listing(self, txn, parent: int, start: int):
        prefix = self.vid + _INO.pack(parent)
        cursor = txn.cursor(db=self.dbs["listing"])
        if not cursor.set_range(prefix + _SEQ.pack(start)):
            return
        for key, stored in cursor:
            if not key.startswith(prefix):
                break
            value = _unseal(key, stored)
            yield _SEQ.unpack(key[len(prefix):])[0], value[8:].decode(), self._linked(txn, key, value[:8])

    def walk_files(self, parent: int = ROOT, prefix: str = ""):
        """Yield (path, Inode) of every file under a folder, in path order of folders (a stack of
        listings, not recursion: folders may nest deeper than Python recurses)."""
        stack = [(iter(list(self.readdir(parent))), prefix)]
        while stack:
            listing, at = stack[-1]
            item = next(listing, None)
            if item is None:
                stack.pop()
            elif item[2].is_dir:
                stack.append((iter(list(self.readdir(item[2].ino))), f"{at}{item[1]}/"))
            else:
                yield f"{at}{item[1]}", item[2]

    def resolve(self, path: str) -> Inode | None:
        node = self.getattr(ROOT)
        for part in filter(None, path.split("/")):
            if node is None or not node.is_dir:
                return None
            node = self.lookup(node.ino, part)
        return node


# -- building ------------------------------------------------------------------------------------

def fetch_changeset(store: Store, cache: NodeDb, info: VersionInfo) -> None:
    """Copy a final version's change-set from the store into the node's cache as it is read and
    checked (copy_changes_checked); a copy that fails the check is not kept."""
    with cache.writing_changeset(info.id) as f:
        copy_changes_checked(store, info, f)


def _changes(store: Store, cache: NodeDb, info: VersionInfo, chunks: bool = True):
    """A final version's change-set, decoded from the node's copy: one that has the size and digest
    its record names, fetched (and checked) again from the store when it has not. A small one is
    decoded at once and its file closed: a merge of many versions with several parents each holds
    a stream of every one of them, and must not hold a file each."""
    f = cache.open_changeset(info.id, info.changes.get("size"), info.changes.get("digest"))
    if f is None:
        fetch_changeset(store, cache, info)
        f = cache.open_changeset(info.id, info.changes.get("size"), info.changes.get("digest"))
        if f is None:
            raise CorruptData(f"the node cache's copy of the change-set of dataset {info.id} does not read back "
                              f"as written ({cache.changeset_path(info.id)}); check that disk")
    where = f"change-set of dataset {info.id}"
    with f:
        if info.changes["size"] > DECODED_AT_ONCE:
            yield from decode_changeset(f, where, chunks)
            return
        entries = list(decode_changeset(f.read(), where, chunks))
    yield from entries


def merged_entries(store: Store, cache: NodeDb, *dataset_ids: str, info: VersionInfo | None = None,
                   chunks: bool = True):
    """The merged views of these versions overlaid in order (a later one wins on a path; one
    version: its merged view), as a stream of file entries sorted by path. `info`: a record
    already read. The change-sets the node does not hold are fetched first, READERS at a time.
    chunks=False: entries without their chunk refs, for listings (Entry.from_wire)."""
    known = {info.id: info} if info is not None else {}
    order = walk(lambda i: known.get(i) or store.read_version(i), list(dataset_ids))
    missing = [i for i in order if not os.path.exists(cache.changeset_path(i.id))]
    read_each(store, lambda i: fetch_changeset(store, cache, i), missing)
    return merge_views(order, list(dataset_ids), functools.partial(_changes, store, cache, chunks=chunks),
                       functools.partial(_compact, cache, chunks=chunks))


def _compact(cache: NodeDb, openers: list[Opener], chunks: bool = True) -> list[Opener]:
    """Openers of a chain (top first) turned into at most FAN_IN: every FAN_IN consecutive ones
    merged (the nearest the top winning on a path, removals kept) into a run, a temporary file in the
    cache's tmp/ that has no name and goes when closed; again while there are more than FAN_IN."""
    while len(openers) > FAN_IN:
        runs = []
        for first in range(0, len(openers), FAN_IN):
            group = openers[first:first + FAN_IN]
            if len(group) == 1:
                runs.append(group[0])
                continue
            run = tempfile.TemporaryFile(dir=os.path.join(cache.root, "tmp"))
            write_changeset(run, topmost([open_() for open_ in group]), level=1)
            runs.append(functools.partial(_read_run, run, chunks))
        openers = runs
    return openers


def _read_run(run, chunks: bool):
    run.seek(0)
    with run:
        yield from decode_changeset(run, "a merge of change-sets in the node cache's tmp/", chunks)


class _Builder:
    def __init__(self, cache: NodeDb, dataset_key: bytes, mtime_ns: int, changes_digest: str):
        self.cache, self.dataset_key, self.mtime_ns = cache, dataset_key, mtime_ns
        self.changes_digest = changes_digest
        self.dbs = _dbs(cache)
        self.txn = cache.env.begin(write=True)
        number = int(self.txn.get(b"next_view", b"1", db=cache.db_meta))
        self.txn.put(b"next_view", str(number + 1).encode(), db=cache.db_meta)
        self.txn.put(dataset_key, _INO.pack(number), db=self.dbs["building"])
        self.number = number
        self.vid = _INO.pack(number)
        self.last: dict[str, bytes] = {}  # db name -> last key written, for append mode
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
        if not self.txn.put(key, _seal(key, _INO.pack(ino)), db=self.dbs["dirents"], overwrite=False):
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
        value = _seal(key, value)
        last = self.last.get(db)
        if last is not None and key > last:
            self.txn.put(key, value, db=self.dbs[db], append=True)
        else:
            self.txn.put(key, value, db=self.dbs[db])
        if last is None or key > last:
            self.last[db] = key

    def build(self, entries, where: str) -> dict:
        # stack items: [name, ino, next seq, subdir count]
        stack: list[list[Any]] = [["", ROOT, 0, 0]]
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
        meta = {"files": self.files, "dirs": self.dirs, "bytes": self.bytes, "key": self.number,
                "changes": self.changes_digest}
        self.txn.put(self.dataset_key, _seal(self.dataset_key, msgpack.packb(meta)), db=self.dbs["views"])
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


def _drop_view(cache: NodeDb, dataset_key: bytes) -> None:
    """Delete a view, built or partial (the records of a killed build are found by `building`)."""
    dbs = _dbs(cache)
    with cache.env.begin(write=True) as txn:
        prefixes, unknown = [], False
        stored = txn.get(dataset_key, db=dbs["views"])
        if stored is not None:
            number = _view_number(dataset_key, stored)
            unknown = number is None
            if number is not None:
                prefixes.append(_INO.pack(number))
        building = txn.get(dataset_key, db=dbs["building"])
        if building is not None:
            prefixes.append(bytes(building))
        txn.delete(dataset_key, db=dbs["views"])
        txn.delete(dataset_key, db=dbs["building"])
        if unknown:  # a damaged record: its view's records are those no other view names
            prefixes += _unnamed_prefixes(txn, dbs)
        for prefix in prefixes:
            for name in ("inodes", "dirents", "listing"):
                cursor = txn.cursor(db=dbs[name])
                if cursor.set_range(prefix):
                    while cursor.key()[:8] == prefix:
                        if not cursor.delete():
                            break


def _view_number(dataset_key: bytes, stored: bytes) -> int | None:
    """The number of a view, from its record as sealed or as written before records were sealed;
    None if it cannot be told."""
    try:
        value = _unseal(dataset_key, stored)
    except _Damaged:
        value = stored
    try:
        number = msgpack.unpackb(value).get("key")
    except (ValueError, TypeError, AttributeError, msgpack.UnpackException):
        return None
    return number if type(number) is int else None


def _unnamed_prefixes(txn, dbs) -> list[bytes]:
    """The key prefixes (view numbers) that records exist under and no view or build names."""
    named = {bytes(value) for _, value in txn.cursor(db=dbs["building"])}
    for key, stored in txn.cursor(db=dbs["views"]):
        number = _view_number(bytes(key), bytes(stored))
        if number is not None:
            named.add(_INO.pack(number))
    found = set()
    for name in ("inodes", "dirents", "listing"):
        cursor = txn.cursor(db=dbs[name])
        more = cursor.first()
        while more:
            prefix = bytes(cursor.key()[:8])
            if prefix not in named:
                found.add(prefix)
            more = cursor.set_range(_INO.pack(_INO.unpack(prefix)[0] + 1))  # the next view's records
    return sorted(found)


def drop_all_views(cache: NodeDb) -> None:
    for dataset_id in list_views(cache):
        _drop_view(cache, bytes.fromhex(dataset_id))


def list_views(cache: NodeDb) -> list[str]:
    with cache.env.begin(db=_dbs(cache)["views"]) as txn:
        return [bytes(k).hex() for k, _ in txn.cursor()]


@checks_space
def ensure_view(store: Store, cache: NodeDb, dataset_id: str, info: VersionInfo | None = None) -> ViewIndex:
    """The view index of a final version, built once per node (and reused by every command); one
    that is missing, partial, of an older format or of another change-set is built again. `info`:
    the version's record, if the caller read it already."""
    info = info if info is not None else store.read_version(dataset_id)
    if not info.is_final:
        raise InvalidState(f"dataset {info.id} ({info.ref}) is a draft; only final versions can be served")
    index = ViewIndex(store, cache, info)
    if index.meta is None:
        index.rebuild()
    return index


@checks_space
def _build(store: Store, cache: NodeDb, info: VersionInfo) -> None:
    """Build a version's view from the store (the caller holds its lock and dropped what was there)."""
    key = bytes.fromhex(info.id)
    try:
        mtime_ns = int(datetime.datetime.fromisoformat(info.finalized or info.created).timestamp() * 1e9)
    except (ValueError, TypeError):
        mtime_ns = 0
    builder = _Builder(cache, key, mtime_ns, info.changes["digest"])
    try:
        builder.build(merged_entries(store, cache, info.id, info=info), f"dataset {info.id}")
    except BaseException:
        builder.abort()
        _drop_view(cache, key)
        raise
