"""The node's cache of version records, so that listing a store's versions reads only what changed.

`Store.list_versions` lists the records' objects (one LIST page per 1,000 on object stores, a
directory scan on file://), which gives each record a *validator*: a string that changes whenever
the record is rewritten (object stores: size and ETag or generation; file://: size, mtime in ns and
inode, since records are replaced by rename). A record whose validator is the one cached here is
taken from here; the others are read from the store (concurrently) and cached. So a repeated
`search` over 10,000 versions costs the LIST pages and nothing else, and a label changed on another
machine (publish, rename, tags) or a deleted version is seen by the very next command: the LIST says
so. A backend that gives no validator (memory://) is always read.

A cold node (an empty cache) would read every record once: 10,000 GETs. So the store also holds a
*snapshot*, `catalog/records.msgpack.zst`: the records with the validators they were listed with,
written by whichever command last had to read many records itself (SNAPSHOT_AFTER), replacing the
one before (last writer wins; any snapshot is only a hint). A cold node lists, reads the snapshot
(one GET), takes from it each record whose listed validator is the one it was saved with, and reads
the rest. A record taken from a snapshot is parsed and checked like one read from its object; a
snapshot that cannot be parsed, is too big or holds anything else is ignored. Writing it is best
effort: a node with read-only keys simply does not.

Listing 10,000 records is still 20 LIST pages per command. So every record write or removal also
replaces a tiny object, `catalog/epoch`, with a new random token (Store._changed), and the cache
keeps the last listing with the epoch it was made under (read before and after listing, and kept
only if they agree). While the store's epoch is that one, nothing was written since, and the
listing is reused: a warm `search` costs one GET. A writer that dies between its record and its
epoch, or a dsfs from before the epoch, changes records without a new epoch: a kept listing is
therefore never older than LISTING_MAX_AGE, after which the records are listed again. delete's check
for children lists always (`exact`): it must not miss one.

Why SQLite and not the node's LMDB: the records are a few KiB each, read in a batch per command,
by many short-lived CLI processes at once; SQLite (stdlib) takes concurrent readers and writers
with a busy timeout and needs no map size. One file per store, in `<cache_dir>/catalog/`.

What a cached record is trusted for: a row holds the record's bytes and their blake3 digest; a row
whose bytes do not match its digest (a torn or damaged file) is ignored and the record read again.
The cache is an optimisation only: any failure to open, read or write it (a full disk, a read-only
cache folder, a corrupt database) is logged and the store is read instead; a database SQLite cannot
open is removed and rebuilt.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import sqlite3
import time

import blake3
import msgpack
import zstandard

from dsfs import settings

log = logging.getLogger(__name__)

SNAPSHOT_KEY = "catalog/records.msgpack.zst"
EPOCH_KEY = "catalog/epoch"
LISTING_MAX_AGE = 60  # seconds a listing is reused while the epoch stays the same
SNAPSHOT_AFTER = 64  # records read one by one before a command writes a new snapshot
SNAPSHOT_LIMIT = 256 << 20  # bytes, stored or decoded: a snapshot is ~50 B a record compressed
SNAPSHOT_FORMAT = 1
SCHEMA = ("CREATE TABLE IF NOT EXISTS records (id TEXT PRIMARY KEY, validator TEXT NOT NULL, "
          "digest BLOB NOT NULL, raw BLOB NOT NULL); "
          "CREATE TABLE IF NOT EXISTS listing (one INTEGER PRIMARY KEY CHECK (one = 1), epoch TEXT NOT NULL, "
          "made REAL NOT NULL, digest BLOB NOT NULL, validators BLOB NOT NULL)")


def cache_path(store_url: str) -> str:
    """The cache file of one store (named by a hash of its URL: URLs hold characters no file name may)."""
    name = hashlib.sha256(store_url.encode()).hexdigest()[:32]
    return os.path.join(settings.cache_dir(), "catalog", f"{name}.sqlite")


class RecordCache:
    """Cached raw version records of one store, keyed by id and valid for one validator each."""

    def __init__(self, store_url: str):
        self.path = cache_path(store_url)
        self._db: sqlite3.Connection | None = None
        self._broken = False

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def __enter__(self) -> RecordCache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _connect(self) -> sqlite3.Connection | None:
        if self._db is not None or self._broken:
            return self._db
        for attempt in (1, 2):
            try:
                os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
                db = sqlite3.connect(self.path, timeout=10, isolation_level=None, check_same_thread=False)
                db.execute("PRAGMA journal_mode=WAL")
                db.executescript(SCHEMA)
                self._db = db
                return db
            except sqlite3.DatabaseError as exc:  # not a database, or damaged: start again once
                log.warning("the node's catalog cache %s is unreadable (%s); rebuilding it", self.path, exc)
                if attempt == 1:
                    for suffix in ("", "-wal", "-shm"):
                        with contextlib.suppress(FileNotFoundError):
                            os.remove(self.path + suffix)
            except OSError as exc:
                log.info("no catalog cache (%s): reading records from the store", exc)
                break
        self._broken = True
        return None

    def get_many(self, validators: dict[str, str | None]) -> dict[str, bytes]:
        """{id: raw record} for the ids whose cached validator is the one given (and whose bytes
        match their digest)."""
        wanted = {i: v for i, v in validators.items() if v is not None}
        db = self._connect() if wanted else None
        if db is None:
            return {}
        out: dict[str, bytes] = {}
        try:
            for dataset_id, validator, digest, raw in db.execute("SELECT id, validator, digest, raw FROM records"):
                if wanted.get(dataset_id) == validator and blake3.blake3(raw).digest() == digest:
                    out[dataset_id] = bytes(raw)
        except sqlite3.Error as exc:
            log.warning("the node's catalog cache %s failed a read (%s); reading the store instead", self.path, exc)
            return {}
        return out

    def listing(self, epoch: str) -> dict[str, str | None] | None:
        """The last listing ({id: validator}) if it was made under `epoch` and is younger than
        LISTING_MAX_AGE, else None."""
        db = self._connect()
        if db is None:
            return None
        try:
            row = db.execute("SELECT epoch, made, digest, validators FROM listing").fetchone()
        except sqlite3.Error:
            return None
        if row is None or row[0] != epoch or not 0 <= time.time() - row[1] < LISTING_MAX_AGE \
                or blake3.blake3(row[3]).digest() != row[2]:
            return None
        try:
            validators = msgpack.unpackb(row[3])
        except (ValueError, msgpack.UnpackException):
            return None
        return validators if isinstance(validators, dict) else None

    def remember_listing(self, epoch: str, validators: dict[str, str | None]) -> None:
        db = self._connect()
        if db is None:
            return
        blob = msgpack.packb(validators)
        try:
            db.execute("INSERT OR REPLACE INTO listing VALUES (1, ?, ?, ?, ?)",
                       (epoch, time.time(), blake3.blake3(blob).digest(), blob))
        except sqlite3.Error as exc:
            log.info("the node's catalog cache %s did not keep the listing (%s)", self.path, exc)

    def update(self, fresh: dict[str, tuple[str, bytes]], listed: set[str]) -> None:
        """Store `fresh` ({id: (validator, raw)}) and forget every id not in `listed` (deleted
        versions), in one transaction."""
        db = self._connect()
        if db is None:
            return
        try:
            with db:  # a transaction: readers see all of it or none of it
                db.execute("BEGIN IMMEDIATE")
                db.executemany("INSERT OR REPLACE INTO records VALUES (?, ?, ?, ?)",
                               [(i, v, blake3.blake3(raw).digest(), raw) for i, (v, raw) in fresh.items()])
                gone = [(i,) for (i,) in db.execute("SELECT id FROM records") if i not in listed]
                db.executemany("DELETE FROM records WHERE id = ?", gone)
        except sqlite3.Error as exc:
            log.info("the node's catalog cache %s was not updated (%s)", self.path, exc)


def encode_snapshot(records: dict[str, tuple[str, bytes]]) -> bytes:
    """{id: (validator, raw record)} as a snapshot object's bytes."""
    body = msgpack.packb({"format": SNAPSHOT_FORMAT, "records": {i: [v, raw] for i, (v, raw) in records.items()}})
    return zstandard.ZstdCompressor(level=3).compress(body)


def decode_snapshot(data: bytes) -> dict[str, tuple[str, bytes]]:
    """A snapshot's {id: (validator, raw)}, or {} for anything that is not a well-formed one."""
    try:
        with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)) as reader:
            body = reader.read(SNAPSHOT_LIMIT + 1)
        if len(body) > SNAPSHOT_LIMIT:
            raise ValueError("decodes to more than the limit")
        doc = msgpack.unpackb(body)
        records = doc.get("records") if isinstance(doc, dict) else None
        if not isinstance(records, dict) or doc.get("format") != SNAPSHOT_FORMAT:
            raise ValueError("not a records snapshot of this format")
        out = {}
        for dataset_id, entry in records.items():
            if isinstance(dataset_id, str) and isinstance(entry, list) and len(entry) == 2 \
                    and isinstance(entry[0], str) and isinstance(entry[1], bytes):
                out[dataset_id] = (entry[0], entry[1])
        return out
    except (zstandard.ZstdError, ValueError, TypeError, msgpack.UnpackException) as exc:
        log.warning("the store's catalog snapshot is unusable (%s); reading records instead", exc)
        return {}
