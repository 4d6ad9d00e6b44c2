"""Local authoring state: the current dataset, and what a draft has added, removed and uploaded.

Like clearml-data, authoring is stateful: `dsfs add` records local files against a draft, and
`dsfs upload` / `dsfs close` send them. That record lives on the authoring machine under
`$XDG_STATE_HOME/dsfs/` (the store only learns of a draft's files when it is closed):

    current.json           {"store": url, "id": id} of the last created/used dataset
    drafts/<id>.sqlite     DraftState below (and SQLite's -wal and -shm files beside it)

    drafts/<id>.lock       held (flock) by the one command changing that draft: DraftLock

Every save commits one SQLite transaction (WAL, fsynced), so a killed command leaves the previous
state, never a torn one. Entries and chunks are recorded only after the packs they live in are in the
store: a resumed upload trusts exactly what is recorded, and re-chunking is deterministic, so it
re-sends nothing that was recorded.

A command that changes a draft (add, remove, upload, close, sync) loads its state, works and saves
it, possibly for minutes (an upload saves every couple of seconds). Two such commands at once would
each save their own copy and the last save would silently drop the other's changes, so each holds
the draft's lock for its whole duration: a second one waits up to LOCK_WAIT seconds, then refuses
naming the holder. The lock is an flock: the kernel releases it when its holder dies, however.

Local paths are kept as the operating system gave them: a name that is not UTF-8 is stored with
Python's surrogate escapes and read back to the same bytes (dataset paths are always UTF-8).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sqlite3
import struct
import time
from collections.abc import Callable, Iterable, Iterator
from itertools import islice
from typing import Any

import msgpack

from dsfs import settings
from dsfs.errors import Conflict, CorruptData, InvalidPath
from dsfs.fsutil import atomic_write
from dsfs.model import ChunkRef, Entry, utc_now

LOCK_WAIT = 10.0  # seconds a command waits for another one changing the same draft


def get_current() -> dict | None:
    try:
        with open(os.path.join(settings.state_dir(), "current.json")) as f:
            return json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def set_current(store_url: str, dataset_id: str) -> None:
    atomic_write(os.path.join(settings.state_dir(), "current.json"),
                 json.dumps({"store": store_url, "id": dataset_id}).encode())


def forget_current(dataset_id: str) -> None:
    """A deleted dataset is no longer the current one (commands without an id would name it)."""
    current = get_current()
    if current and current.get("id") == dataset_id:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(settings.state_dir(), "current.json"))


FORMAT = 2  # 1: one msgpack file rewritten whole on each save (read once, then converted)
CHUNK_BITS = 26  # DraftState.chunk's filter has 2**26 bits: at 1,000,000 chunks 1.5% of new ones are looked up
PAGE = 4096  # rows per query of a stream: memory stays flat, and a page is one short read
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS adds (path TEXT PRIMARY KEY, local BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS uploaded (path TEXT PRIMARY KEY, entry BLOB NOT NULL, origin BLOB) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS removals (path TEXT PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS chunks (digest BLOB PRIMARY KEY, pack BLOB NOT NULL, offset INTEGER NOT NULL,
                                   stored INTEGER NOT NULL, raw INTEGER NOT NULL, compression INTEGER NOT NULL)
                                   WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS chunks_by_pack ON chunks (pack);
CREATE TABLE IF NOT EXISTS packs (seq INTEGER PRIMARY KEY, id BLOB NOT NULL UNIQUE, written INTEGER NOT NULL,
                                  size INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS pack_chunks (pack BLOB PRIMARY KEY, refs BLOB NOT NULL) WITHOUT ROWID;
"""
# a chunk ref in pack_chunks' blob (its pack is the row's): digest, offset, stored, raw, compression
_REF = struct.Struct(">32sQIIB")


def local_bytes(local: str) -> bytes:
    """A local path as the draft stores it (a task on a worker encodes its files' so, for record_task)."""
    return local.encode("utf-8", "surrogateescape")  # a name that is not UTF-8 keeps its bytes


def _local_str(blob: bytes) -> str:
    return blob.decode("utf-8", "surrogateescape")


def entry_blob(entry: Entry) -> bytes:
    """An entry as the draft stores it (a task on a worker encodes its entries so, for record_task)."""
    return msgpack.packb(entry.to_wire(), use_bin_type=True)


def pack_refs(chunks: Iterable[ChunkRef]) -> bytes:
    """A pack's chunk refs as DraftState.record_task takes them (its pack_chunks row)."""
    return b"".join(_REF.pack(ref.digest, ref.offset, ref.stored, ref.raw, ref.compression) for ref in chunks)


def _entry(blob: bytes) -> Entry:
    return Entry.from_wire(msgpack.unpackb(blob, raw=False, use_list=False))


_WIRE_KEYS = ({"p", "s", "x", "t", "d", "c"}, {"p", "s", "x", "t", "u", "e"})  # Entry.to_wire's two forms


def _encoded(blob: bytes) -> tuple[Entry, bytes | None]:
    """An uploaded entry and its blob if that is how a change-set would encode it (Entry.to_wire,
    packed: what `entry_blob` wrote), else None: a blob with other keys, a key twice (its map
    header then counts more than six), or a value from_wire takes without its exact type (the
    flag, the mtime) is encoded again from the checked entry, so that nothing but the entry's
    fields reaches a change-set."""
    item = msgpack.unpackb(blob, raw=False, use_list=False)
    entry = Entry.from_wire(item)
    exact = (blob[:1] == b"\x86" and item.keys() in _WIRE_KEYS and type(item["x"]) is bool
             and type(item["t"]) is int and type(item["s"]) is int)
    return entry, blob if exact else None


class DraftState:
    """What a draft holds locally, in one SQLite file (`drafts/<id>.sqlite`), so that a draft of
    millions of files is never one Python object per file: the commands stream its tables in path
    order, a page at a time. `adds` maps dataset path -> local file (not yet uploaded); `uploaded`
    maps dataset path -> Entry and the local file it was read from (its origin: sent again if gc
    removed its pack while the draft sat idle); `removals` are dataset paths to remove from the
    parents; `chunks` are the chunks in packs this draft relies on (dedupe on resume; an upload on
    an executor keeps them a row per pack in `pack_chunks` until one is looked up); `packs`
    those packs in the order they were recorded, `written` the ones it sent itself (the others
    were present already) and `new_bytes` their size.

    Changes accumulate in one transaction and `save()` commits it: a killed command leaves the
    state of its last save (the WAL is fsynced at each commit), as the whole-file rewrite did."""

    def __init__(self, dataset_id: str, store_url: str, db: sqlite3.Connection):
        self.id = dataset_id
        self.store = store_url
        self.db = db
        self._chunk_bits: bytearray | None = None  # `chunk`'s filter of the digests recorded
        self._unfolded: bool | None = None  # pack_chunks has rows (None: not looked yet): see record_task

    @staticmethod
    def path_for(dataset_id: str) -> str:
        return os.path.join(settings.state_dir(), "drafts", f"{dataset_id}.sqlite")

    @classmethod
    def load(cls, dataset_id: str, store_url: str) -> DraftState:
        """The draft's state; an empty one if it has none yet (a draft made by another machine)."""
        path = cls.path_for(dataset_id)
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))  # SQLite's own files take its mode
        try:
            db = sqlite3.connect(path, timeout=LOCK_WAIT, check_same_thread=False)
            # a new draft's pages (an existing one keeps its own): rows of `uploaded` are ~200 bytes,
            # past the 1/20 of a 4 KiB page SQLite advises for WITHOUT ROWID tables (1,000,000
            # entries recorded in bulk: 9.6-10.6 -> 8.9-9.3 s)
            db.execute("PRAGMA page_size=16384")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            # chunks are keyed by digest, so their rows land all over the table: with SQLite's
            # 2 MiB page cache, pages went out and in at each insert (100,000 files: close
            # 15.1 -> 14.4 s, 181 -> 210 MB)
            db.execute("PRAGMA cache_size=-32768")
            db.executescript(_SCHEMA)
            state = cls(dataset_id, store_url, db)
            if db.execute("SELECT value FROM meta WHERE key = 'format'").fetchone() is None:
                db.execute("INSERT INTO meta VALUES ('format', ?), ('id', ?), ('store', ?), ('new_bytes', 0)",
                           (FORMAT, dataset_id, store_url))
                state._convert(os.path.splitext(path)[0] + ".msgpack")
                state.save()
        except sqlite3.DatabaseError as exc:
            raise CorruptData(f"local draft state {path} is unreadable ({exc}); delete the draft and create "
                              f"it again") from None
        return state

    def _convert(self, old: str) -> None:
        """Take over a draft state of FORMAT 1 (one msgpack file), then remove it."""
        try:
            with open(old, "rb") as f:
                raw: Any = msgpack.unpackb(f.read(), raw=False, strict_map_key=False,
                                           unicode_errors="surrogateescape")
        except FileNotFoundError:
            return
        except (ValueError, msgpack.UnpackException):
            raw = None  # said below
        try:
            if not isinstance(raw, dict):
                raise ValueError("not a map")
            self.stage_local(sorted(raw["adds"].items()))
            origins = raw.get("origins", {})
            self.db.executemany("INSERT INTO uploaded VALUES (?, ?, ?)", (
                (Entry.from_wire(e).path, msgpack.packb(e, use_bin_type=True),
                 local_bytes(origins[e["p"]]) if e["p"] in origins else None) for e in raw["uploaded"]))
            self.stage_removals(raw["removals"])
            written = set(raw["written"] if "written" in raw else raw["packs"])
            # the packs' sizes were not recorded: a pack gc takes from under an idle draft is
            # then not taken off its new_bytes
            self.db.executemany("INSERT OR IGNORE INTO packs (id, written, size) VALUES (?, ?, 0)",
                                ((p, p in written) for p in raw["packs"]))
            self.db.executemany("INSERT OR REPLACE INTO chunks VALUES (?, ?, ?, ?, ?, ?)",
                                (ChunkRef.from_wire(c) for c in raw["chunks"]))
            self.db.execute("UPDATE meta SET value = ? WHERE key = 'new_bytes'", (raw.get("new_bytes", 0),))
        except (ValueError, KeyError, TypeError, AttributeError, InvalidPath, sqlite3.Error):
            self.db.rollback()
            raise CorruptData(f"local draft state {old} is corrupt; delete the draft and create it again") from None
        self.save()
        os.unlink(old)

    def save(self) -> None:
        """Commit what changed since the last save."""
        self.db.commit()

    def rollback(self) -> None:
        """Forget what changed since the last save (a command that failed; a draft discarded is
        closed, with nothing to forget)."""
        try:
            self.db.rollback()
        except sqlite3.ProgrammingError:
            pass

    def close(self) -> None:
        self.db.close()

    # -- reading: counts, and streams in path order ---------------------------------------------

    def _count(self, table: str) -> int:
        return self.db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]

    def _pages(self, query: str) -> Iterator[tuple]:
        """Rows of `query` (SELECT path, ... FROM t WHERE path > ? ORDER BY path LIMIT ?), a page at a
        time: the state may change between pages (an upload records files as it goes)."""
        last = ""
        while True:
            rows = self.db.execute(query, (last, PAGE)).fetchall()
            yield from rows
            if len(rows) < PAGE:
                return
            last = rows[-1][0]

    @property
    def adds_count(self) -> int:
        return self._count("adds")

    def adds(self) -> Iterator[tuple[str, str]]:
        """(dataset path, local file) of the files to upload, in path order."""
        for path, local in self._pages("SELECT path, local FROM adds WHERE path > ? ORDER BY path LIMIT ?"):
            yield path, _local_str(local)

    @property
    def uploaded_count(self) -> int:
        return self._count("uploaded")

    def uploaded(self) -> Iterator[Entry]:
        for entry, _ in self.uploaded_encoded():
            yield entry

    def uploaded_encoded(self) -> Iterator[tuple[Entry, bytes | None]]:
        """(entry, its change-set encoding or None: `_encoded`) of the uploaded files, in path order:
        closing writes a million of them without encoding each again (~3 us a file)."""
        for _, blob in self._pages("SELECT path, entry FROM uploaded WHERE path > ? ORDER BY path LIMIT ?"):
            yield _encoded(blob)

    def removals(self) -> Iterator[str]:
        for (path,) in self._pages("SELECT path FROM removals WHERE path > ? ORDER BY path LIMIT ?"):
            yield path

    def is_removed(self, path: str) -> bool:
        return self.db.execute("SELECT 1 FROM removals WHERE path = ?", (path,)).fetchone() is not None

    def chunk(self, digest: bytes) -> ChunkRef | None:
        """The ref of a chunk this draft recorded, or None. An upload asks for every chunk it reads
        and nearly all are new: a bit per digest prefix (2**CHUNK_BITS of them, 8 MiB) answers those
        without a query (one costs ~20 us; a digest whose bit is set by another is looked up)."""
        if self._chunk_bits is None:
            self._fold()
            self._chunk_bits = bytearray((1 << CHUNK_BITS) // 8)
            for (known,) in self.db.execute("SELECT digest FROM chunks"):
                _set_bit(self._chunk_bits, known)
        bit = _bit(digest)
        if not self._chunk_bits[bit >> 3] & (1 << (bit & 7)):
            return None
        self._fold()  # the chunk may be in a pack's row of pack_chunks still
        row = self.db.execute("SELECT * FROM chunks WHERE digest = ?", (digest,)).fetchone()
        return None if row is None else ChunkRef(*row)

    def chunk_digests(self) -> list[bytes]:
        """The digests of every chunk this draft recorded (shipped to an upload's workers)."""
        self._fold()
        return [row[0] for row in self.db.execute("SELECT digest FROM chunks")]

    @property
    def packs(self) -> list[bytes]:
        return [row[0] for row in self.db.execute("SELECT id FROM packs ORDER BY seq")]

    @property
    def written(self) -> list[bytes]:
        return [row[0] for row in self.db.execute("SELECT id FROM packs WHERE written ORDER BY seq")]

    @property
    def new_bytes(self) -> int:
        return self.db.execute("SELECT value FROM meta WHERE key = 'new_bytes'").fetchone()[0]

    @property
    def push_to(self) -> str | None:
        """Another store the version goes to once closed (`upload --storage`), or None."""
        row = self.db.execute("SELECT value FROM meta WHERE key = 'push_to'").fetchone()
        return row[0] if row else None

    @push_to.setter
    def push_to(self, target: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta VALUES ('push_to', ?)", (target,))

    # -- changing (a dataset path is in at most one of adds, uploaded and removals) ---------------

    def stage_local(self, files: Iterable[tuple[str, str]],
                    conflict: Callable[[str, str, str], Exception] | None = None) -> int:
        """Each (path, local) of a stream, never held in memory: `path` will be the local file
        `local` (read at upload). The pairs are gathered in a temporary table first, where a path met
        again with another local file raises conflict(path, first local, second local) (ValueError
        without `conflict`; the caller rolls back: nothing of them is kept). Returns how many paths
        were staged."""
        self.db.execute("CREATE TEMP TABLE IF NOT EXISTS added (path TEXT PRIMARY KEY, local BLOB NOT NULL) "
                        "WITHOUT ROWID")
        self.db.execute("DELETE FROM added")
        for page in _batched(files):
            rows = [(path, local_bytes(local)) for path, local in page]
            before = self.db.total_changes
            self.db.executemany("INSERT INTO added VALUES (?, ?) ON CONFLICT (path) DO NOTHING", rows)
            if self.db.total_changes - before < len(rows):  # a path met twice: the same file, or two
                for path, local in rows:
                    (first,) = self.db.execute("SELECT local FROM added WHERE path = ?", (path,)).fetchone()
                    if first != local:
                        raise (conflict or _twice)(path, _local_str(first), _local_str(local))
        count = self._count("added")
        for table in ("uploaded", "removals"):
            if self._has_rows(table):
                self.db.execute(f"DELETE FROM {table} WHERE path IN (SELECT path FROM added)")
        self.db.execute("INSERT OR REPLACE INTO adds SELECT path, local FROM added")
        self.db.execute("DELETE FROM added")
        return count

    def stage_entries(self, entries: Iterable[Entry]) -> None:
        """Each entry's path is that entry, nothing to upload (an external file)."""
        for page in _batched(entries):
            self._unstage((entry.path for entry in page), ("adds", "removals"))
            self.db.executemany("INSERT OR REPLACE INTO uploaded VALUES (?, ?, NULL)",
                                ((entry.path, entry_blob(entry)) for entry in page))

    def stage_removals(self, paths: Iterable[str]) -> None:
        for page in _batched(paths):
            self._unstage(page, ("adds", "uploaded"))
            self.db.executemany("INSERT OR REPLACE INTO removals VALUES (?)", ((path,) for path in page))

    def drop(self, paths: Iterable[str]) -> int:
        """Forget these paths wherever they are staged; returns how many were."""
        return self._unstage(paths, ("adds", "uploaded", "removals"))

    def _unstage(self, paths: Iterable[str], tables: tuple[str, ...]) -> int:
        rows = [(path,) for path in paths]
        before = self.db.total_changes
        for table in tables:
            if self._has_rows(table):
                self.db.executemany(f"DELETE FROM {table} WHERE path = ?", rows)
        return self.db.total_changes - before

    def _has_rows(self, table: str) -> bool:
        """(Deleting paths from an empty table, as adding to a new draft would, costs a lookup each.)"""
        return self.db.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchone() is not None

    def record_pack(self, pack_id: bytes, written: bool, size: int, chunks: Iterable[ChunkRef]) -> None:
        """A pack is in the store with these chunks (`written`: this draft sent it). Its chunk refs
        are one row of `pack_chunks`, as record_task keeps them, folded into `chunks` only when a
        lookup needs them: inserting each into `chunks` (random digests: a page each) was 9% of
        the close of 100,000 small files."""
        chunks = list(chunks)
        if any(ref.pack != pack_id for ref in chunks):
            raise ValueError(f"a chunk of another pack recorded with pack {pack_id.hex()}")
        self._add_pack(pack_id, written, size, pack_refs(chunks))

    def _add_pack(self, pack_id: bytes, written: bool, size: int, refs: bytes) -> None:
        """A pack and its chunk refs (`pack_refs`) as one row, and their digests in `chunk`'s
        filter, which folds pack_chunks only for a digest whose bit is set."""
        self.db.execute("INSERT OR IGNORE INTO packs (id, written, size) VALUES (?, ?, ?)", (pack_id, written, size))
        if written:
            self.db.execute("UPDATE meta SET value = value + ? WHERE key = 'new_bytes'", (size,))
        self.db.execute("INSERT OR REPLACE INTO pack_chunks VALUES (?, ?)", (pack_id, refs))
        self._unfolded = True
        if self._chunk_bits is not None:
            for digest, *_ in _REF.iter_unpack(refs):
                _set_bit(self._chunk_bits, digest)

    def record_task(self, packs: Iterable[tuple[bytes, bool, int, bytes]],
                    files: list[tuple[str, bytes, bytes]]) -> None:
        """The bulk form of record_pack and record_uploaded, for one task of an upload on an executor
        (dsfs.authoring.distributed), everything already encoded by the worker: packs as (id, written,
        size, chunk refs as `pack_refs` encodes them), files as rows of `uploaded` (path, entry_blob,
        local_bytes), in path order and the whole of a consecutive run of `adds` (the task's partition).
        What makes it cheaper, measured on 1,000,000 entries: a pack's chunk refs are one row of
        `pack_chunks` (a million rows keyed by random digests dirtied nearly every page of `chunks`
        between two saves, and each commit wrote them all), moved into `chunks` only when a lookup
        needs them (`_fold`: a resumed or a serial upload; close needs none); the files leave `adds` by
        one range delete when the range holds exactly them; and no row is built here. Same
        transaction, same save: the crash rule is unchanged."""
        for pack_id, written, size, refs in packs:
            self._add_pack(pack_id, written, size, refs)
        if not files:
            return
        first, last = files[0][0], files[-1][0]
        (held,) = self.db.execute("SELECT count(*) FROM adds WHERE path BETWEEN ? AND ?", (first, last)).fetchone()
        if held == len(files):
            self.db.execute("DELETE FROM adds WHERE path BETWEEN ? AND ?", (first, last))
        else:  # not the run it was cut from (never, under the draft's lock): one by one
            self.db.executemany("DELETE FROM adds WHERE path = ?", ((path,) for path, _, _ in files))
        self.db.executemany("INSERT INTO uploaded VALUES (?, ?, ?)", files)  # no path is in adds and uploaded

    def _fold(self) -> None:
        """Move the chunk refs record_task kept per pack into `chunks`, where lookups find them (a
        pack at a time, sorted by digest; in the open transaction, saved with the next save)."""
        if self._unfolded is None:
            self._unfolded = self._has_rows("pack_chunks")
        if not self._unfolded:
            return
        for pack, blob in self.db.execute("SELECT pack, refs FROM pack_chunks").fetchall():
            rows = sorted((digest, pack, offset, stored, raw, compression)
                          for digest, offset, stored, raw, compression in _REF.iter_unpack(blob))
            self.db.executemany("INSERT OR REPLACE INTO chunks VALUES (?, ?, ?, ?, ?, ?)", rows)
            if self._chunk_bits is not None:
                for row in rows:
                    _set_bit(self._chunk_bits, row[0])
        self.db.execute("DELETE FROM pack_chunks")
        self._unfolded = False

    def record_uploaded(self, files: Iterable[tuple[Entry, str]]) -> None:
        """Each (entry, local): the file was read and every pack holding its chunks is in the store."""
        rows = [(entry.path, entry_blob(entry), local_bytes(local)) for entry, local in files]
        # one by one: a file uploaded again (INSERT OR REPLACE below) may not be in `adds`, so a
        # count of the range could match while holding another path (record_task's runs are whole)
        self.db.executemany("DELETE FROM adds WHERE path = ?", ((row[0],) for row in rows))
        self.db.executemany("INSERT OR REPLACE INTO uploaded VALUES (?, ?, ?)", rows)

    def forget_packs(self, lost: set[bytes]) -> list[str]:
        """Packs this draft relied on are gone (gc removed them while the draft sat idle longer than
        its grace period): forget them and their chunks, and put every uploaded file that used them
        back to be sent again. Returns the paths whose local file is no longer known (added before
        dsfs recorded origins): those must be added again."""
        self._fold()
        gone = [(pack,) for pack in lost]
        size = self.db.execute(f"SELECT coalesce(sum(size), 0) FROM packs WHERE written AND id IN "
                               f"({','.join('?' * len(gone))})", list(lost)).fetchone()[0] if gone else 0
        self.db.execute("UPDATE meta SET value = value - ? WHERE key = 'new_bytes'", (size,))
        self.db.executemany("DELETE FROM packs WHERE id = ?", gone)
        self.db.executemany("DELETE FROM chunks WHERE pack = ?", gone)
        unknown: list[tuple[str, bytes | None]] = []
        again: list[tuple[str, bytes | None]] = []
        for path, blob, origin in self._pages(
                "SELECT path, entry, origin FROM uploaded WHERE path > ? ORDER BY path LIMIT ?"):
            if any(ref.pack in lost for ref in _entry(blob).chunks):
                (unknown if origin is None else again).append((path, origin))
        self.db.executemany("DELETE FROM uploaded WHERE path = ?", ((path,) for path, _ in unknown + again))
        self.db.executemany("INSERT INTO adds VALUES (?, ?)", again)
        return [path for path, _ in unknown]

    def discard(self) -> None:
        """Forget the draft (closed or deleted): `discard(self.id)`."""
        self.db.close()
        discard(self.id)


def discard(dataset_id: str) -> None:
    """Forget a draft's local state (closed or deleted) and its lock file (DraftLock: a command
    still holding or waiting for the removed file notices)."""
    state = DraftState.path_for(dataset_id)
    old = os.path.splitext(state)[0] + ".msgpack"
    for path in (state, state + "-wal", state + "-shm", old, DraftLock.path_for(dataset_id)):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def _twice(path: str, first: str, second: str) -> ValueError:
    return ValueError(f"{path!r} staged twice, as {first!r} and {second!r}")


def _bit(digest: bytes) -> int:
    return int.from_bytes(digest[:4], "big") >> (32 - CHUNK_BITS)


def _set_bit(bits: bytearray, digest: bytes) -> None:
    bit = _bit(digest)
    bits[bit >> 3] |= 1 << (bit & 7)


def _batched(items: Iterable, size: int = PAGE) -> Iterator[list]:
    it = iter(items)
    while page := list(islice(it, size)):
        yield page


class DraftLock:
    """The exclusive right to change one draft's local state, for one command (module docstring).

    `with DraftLock(id, "upload vision/cats@1.0.1"):` waits up to `wait` seconds for another holder,
    then raises Conflict naming it (pid, host, command, since when). The lock file records its
    holder for that message; it goes with the draft's state (DraftState.discard), and a waiter that
    locked a file removed meanwhile locks the new one instead."""

    @staticmethod
    def path_for(dataset_id: str) -> str:
        return os.path.join(settings.state_dir(), "drafts", f"{dataset_id}.lock")

    def __init__(self, dataset_id: str, what: str, wait: float | None = None):
        self.path = self.path_for(dataset_id)
        self.id = dataset_id
        self.what = what
        self.wait = LOCK_WAIT if wait is None else wait
        self.fd: int | None = None

    def __enter__(self) -> DraftLock:
        os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
        deadline = time.monotonic() + self.wait
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder(fd)
                os.close(fd)
                if time.monotonic() >= deadline:
                    raise Conflict(f"draft {self.id} is being changed by another dsfs command ({holder}); "
                                   f"wait for it to finish, or stop it, then run this again") from None
                time.sleep(0.05)
                continue
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # removed by its last holder while we waited: lock the current file
        self.fd = fd
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": self.what,
                                  "since": utc_now()}).encode(), 0)
        return self

    def __exit__(self, *exc) -> None:
        assert self.fd is not None, "__enter__ took the lock"
        os.close(self.fd)  # releases the flock
        self.fd = None


def _holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"pid {info['pid']} on {info['host']}: {info['command']}, since {info['since']}"
    except (ValueError, KeyError, TypeError, OSError):
        return "its pid is not recorded yet"
