"""The store: the only code that knows object names and the write order (store format 1).

A store is an fsspec URL (`file://`, `memory://`, `s3://`, `gs://`, `az://`). It is self-describing
and needs no server; many nodes share it.

    <store>/dsfs-store.json                    {"format": 1}
    <store>/datasets/<id>/version.json         the VersionInfo record (see dsfs.model)
    <store>/datasets/<id>/changes.msgpack.zst  the change-set against the merged parents
    <store>/packs/<ab>/<pack id>               chunk packs; the id is blake3(pack bytes)[:16] in hex
    <store>/names/<project>/<name>/<version>   the id holding that version number (exclusive create)
    <store>/sessions/<session id>.json         a live writer session: the packs it relies on (dsfs.store.sessions)
    <store>/locks/gc/<sequence>                gc leases: the highest sequence is the current one (dsfs.store.sessions)
    <store>/catalog/records.msgpack.zst        the version records, a hint for cold nodes (dsfs.store.records)
    <store>/previews/<id>/items/<t>-<r>.json   a preview or statistics of a version (dsfs.authoring.previews)
    <store>/previews/<id>/blobs/<blake3>       what a preview holds that is big (an image), by digest
    <store>/catalog/epoch                      a token every record write or removal replaces (dsfs.store.records)
    <store>/projects/<project>/settings.json   a project's settings: its default preview mode (dsfs project)

Write order is the consistency argument (restic's, for the same reason):

1. packs: content-addressed, so writing one twice is harmless and a re-run skips those present;
2. the change-set: its blake3 digest and size go into version.json, so a torn or corrupted
   change-set is detected instead of trusted;
3. version.json with state=final, last, in one atomic PUT (or temp file + rename on file://).

Readers go the other way: version.json first; a draft is never served, and a final version names
exactly the change-set bytes it expects. A crash at any point leaves at worst unreferenced packs.
Version numbers are claimed by exclusively creating `names/...`: two authors racing for a number
cannot both get it.

Removal rules (restic's "removing data", for a store with no server and many writers):

- `delete` removes version.json first (readers stop seeing the version), then the change-set and
  the name claim; never a pack: pack ids are content hashes, so unrelated versions share packs.
  Before it removes anything it refuses if a version names this one as parent or squash source;
  after removing the record it looks again and puts the record back if a child appeared. A child
  is made final only after its close reads each parent record again: the removal and the second
  look on one side, the draft record and the parent read on the other, so one side sees the other
  and no version becomes final on top of a deleted parent.
- Only gc (dsfs.lifecycle.sweep) deletes packs, under the gc lease, and only packs that (a) no final
  version's change-set references, read after the lease was taken and after the writer sessions
  were read; (b) no live writer session names; (c) are older than the grace period.
- Why an upload that finalizes after gc decided can never reference a pack gc deletes: a writer
  announces every pack it will rely on in its session object *before* it looks for the pack or
  writes it, then reads the lease and waits while a gc holds it; gc takes the lease *before* it
  reads the sessions. If gc read the sessions after the announcement, the pack is protected (b).
  Otherwise gc took the lease before the writer read it, so the writer waits until that gc is done
  and only then looks for the pack (and writes it if it is gone). A pack relied on from an earlier
  run of the draft is announced the same way and looked for again. Right before the final record
  the writer renews its session, waits out any gc, and looks again for any pack not seen since
  (if its session went stale meanwhile gc may have ignored it); then writes the record, then ends
  the session. A session that ended before gc read the sessions wrote its final record before
  that, so gc's mark, which comes after, sees it (a). Details and clock rules: dsfs.store.sessions.

Every fsspec call goes through `_call`, which bounds its time (`Store.time_limit`, `deadline`) and
turns the zoo of backend exceptions into `StoreUnavailable` / `StoreReadOnly` / `AccessDenied` /
`DiskFull` with the store's (redacted) URL; what each
cloud backend needs (option defaults, a reachability probe, its exceptions) is in `dsfs.store.backends`.
A missing bucket is reported as such when the store is opened, not as "no dsfs store".
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as _dt
import errno
import json
import logging
import os
import re
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import IO, NamedTuple

import blake3
import fsspec

from dsfs import settings
from dsfs.errors import (
    AccessDenied,
    CorruptData,
    DatasetNotFound,
    DiskFull,
    DsfsError,
    StoreReadOnly,
    StoreUnavailable,
    UsageError,
)
from dsfs.fsutil import NO_SPACE, TMP_PREFIX, atomic_write
from dsfs.model import ID_RE, VersionInfo
from dsfs.store import backends, records
from dsfs.store.backends import redact_url as redact
from dsfs.store.records import RecordCache

STORE_FORMAT = 1
PREVIEW_LIMIT = 5 << 20  # bytes of one preview object (dsfs.authoring.previews.LIMITS)
PROJECT_SETTINGS_LIMIT = 64 << 10  # bytes of a project's settings object (dsfs.authoring.projects)
MARKER = "dsfs-store.json"
log = logging.getLogger(__name__)


def pack_id(text) -> bytes | None:
    """The pack id a name or record spells (32 lowercase hex digits), or None."""
    if isinstance(text, str) and len(text) == 32 and all(c in "0123456789abcdef" for c in text):
        return bytes.fromhex(text)
    return None


_MEMORY_CREATE = threading.Lock()

def default_store_url() -> str:
    """The embedded default store: $XDG_DATA_HOME/dsfs/store."""
    return "file://" + os.path.join(settings.data_dir(), "store")


class PackStat(NamedTuple):
    """What one listing says of a pack: its size and when it was last written (the store's clock,
    seconds since the epoch; 0.0 when the backend does not say)."""

    size: int
    modified: float


def _modified(info: dict) -> float:
    """The last-modified time in a listing entry, whatever the backend calls it."""
    for key in ("mtime", "LastModified", "last_modified", "updated", "created"):
        value = info.get(key)
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, _dt.datetime):
            return (value if value.tzinfo else value.replace(tzinfo=_dt.UTC)).timestamp()
        if isinstance(value, str) and value:
            try:
                return _dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
            except ValueError:
                continue
    return 0.0


_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("dsfs_store_deadline", default=None)


@contextlib.contextmanager
def deadline(seconds: float):
    """Inside, every store call this thread makes ends within `seconds` from now: one time limit for
    an operation made of several calls (a read and its retries, dsfs.store.fetch)."""
    token = _deadline.set(time.monotonic() + seconds)
    try:
        yield
    finally:
        _deadline.reset(token)


def _quote(part: str) -> str:
    """One component of an object name. '', '.' and '..' would collapse a level or address the one
    above it (on file:// stores, outside the store): refused here whatever the callers checked
    (dsfs.paths.label is the rule; this is the last line of defence)."""
    if part in ("", ".", ".."):
        raise UsageError(f"invalid label {part!r}: it cannot name anything in the store")
    return urllib.parse.quote(part, safe="")


def _pread_file(path: str, offset: int, length: int) -> bytes:
    """Bytes [offset, offset + length) of a local file (fewer if it ends sooner): three system calls.
    fsspec's LocalFileOpener took a sixth of a cold shuffled epoch's time (one small file, one
    range, one open). The file is opened for each read, not kept open: a pack that gc removed must
    stop being readable (and its disk space be freed), as with every other backend."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.pread(fd, length, offset)
    finally:
        os.close(fd)


def _parse_version(dataset_id: str, raw: bytes) -> VersionInfo:
    """A version record's bytes as a VersionInfo, or CorruptData saying why they cannot be."""
    where = f"version record of dataset {dataset_id}"
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CorruptData(f"{where} is corrupt (not JSON); refusing to use it") from None
    info = VersionInfo.from_json(data, where)
    if info.id != dataset_id:
        raise CorruptData(f"{where} names another id ({info.id}); refusing to use it")
    return info


def _parse_versions(raws: dict[str, bytes]) -> Iterator[tuple[str, VersionInfo | CorruptData]]:
    """(id, VersionInfo or the CorruptData saying why not) of each raw record, by id. The records
    are parsed as one JSON array (10,000 json.loads calls cost twice as much); anything unexpected in
    that (a record that does not parse, or parses into more or fewer values) and each is parsed alone."""
    ids = sorted(raws)
    try:
        docs = json.loads(b"[" + b",".join(raws[i] for i in ids) + b"]")
    except (json.JSONDecodeError, UnicodeDecodeError):
        docs = None
    if isinstance(docs, list) and len(docs) == len(ids) and all(isinstance(d, dict) and d.get("id") == i
                                                                 for i, d in zip(ids, docs, strict=True)):
        for dataset_id, doc in zip(ids, docs, strict=True):
            try:
                yield dataset_id, VersionInfo.from_json(doc, f"version record of dataset {dataset_id}")
            except CorruptData as exc:
                yield dataset_id, exc
        return
    for dataset_id in ids:
        try:
            yield dataset_id, _parse_version(dataset_id, raws[dataset_id])
        except CorruptData as exc:
            yield dataset_id, exc


def _local_validators(datasets: str) -> dict[str, str | None]:
    """{id: "size:mtime_ns:inode"} of every record under a local `datasets` folder."""
    out: dict[str, str | None] = {}
    try:
        entries = list(os.scandir(datasets))
    except FileNotFoundError:
        return out
    for entry in entries:
        if ID_RE.match(entry.name):
            try:
                st = os.stat(os.path.join(entry.path, "version.json"))
            except (FileNotFoundError, NotADirectoryError):
                continue
            out[entry.name] = f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}"
    return out


def _validator(info: dict) -> str | None:
    """What changes when an object is rewritten, from a listing's entry: S3 and Azure give an
    ETag, GCS a generation. None if the backend gives neither."""
    tag = info.get("generation") or info.get("ETag") or info.get("etag")
    return f"{info.get('size')}:{tag}" if tag else None


class Store:
    """A dsfs store at one URL. Methods speak of versions, change-sets and packs, never of paths."""

    def __init__(self, url: str, **options):
        """`options` go to the fsspec backend, except `timeout`: the seconds one operation may take
        (dsfs.store.backends.DEFAULT_TIMEOUT when not given; see time_limit)."""
        self.url = url.rstrip("/")
        self.display_url = redact(self.url)
        self.ref = self.url  # how to open this store again (dsfs.store.datastores sets `datastore:NAME`)
        _, self.bucket = backends.check_url(self.url)
        self._secrets = backends.secret_values(options)
        self.timeout = backends.timeout_option(options)
        try:
            protocol, root = fsspec.core.split_protocol(self.url)
            protocol = protocol or "file"
            if protocol == "file":
                options.setdefault("auto_mkdir", True)
                root = os.path.abspath(os.path.expanduser(root))
            self._fs_options = backends.prepare(protocol, options, self.timeout)
            self._fs = fsspec.filesystem(protocol, **self._fs_options)
            self._fs_pid = os.getpid()
        except ImportError as exc:
            raise backends.missing_library(protocol, exc) from None
        except (ValueError, TypeError) as exc:
            reason = backends.scrub(backends.reason(exc), self._secrets)
            raise backends.caused(StoreUnavailable(f"cannot open store {self.display_url}: {reason}"), exc,
                                  self._secrets) from None
        self.protocol = protocol
        self._whole_read = backends.whole_read_options(protocol)
        self.root = self.fs._strip_protocol(root).rstrip("/") if protocol != "file" else root
        self.is_local = protocol == "file"
        self._endpoint = backends.endpoint(protocol, self.fs)

    @property
    def fs(self):
        """The fsspec backend. A forked child (a DataLoader's worker) makes its own: the parent's
        holds the parent's event loop and connections, which s3fs refuses to use after a fork
        ("This class is not fork-safe"); fsspec's instance cache is per process, so this is new."""
        if self._fs_pid != os.getpid():
            self._fs = fsspec.filesystem(self.protocol, **self._fs_options)
            self._fs_pid = os.getpid()
        return self._fs

    # -- opening -------------------------------------------------------------------------------

    @classmethod
    def open(cls, url: str | None = None, create: bool = False, **options) -> Store:
        """Open the store at `url` (default: the embedded local store, created on first use).

        Raises StoreUnavailable when no dsfs store is there and `create` is false, or when the
        backend cannot be reached.
        """
        store = cls(url or default_store_url(), **options)
        store.check(create=create or url is None)
        return store

    def check(self, create: bool = False) -> None:
        backends.probe(self._endpoint, self.display_url)
        try:
            marker = json.loads(self._call("read", self.fs.cat_file, self._p(MARKER)))
        except FileNotFoundError:
            if self.bucket and not self._bucket_exists():
                raise backends.bucket_missing(self.protocol, self.bucket, self.display_url) from None
            if not create:
                raise StoreUnavailable(f"no dsfs store at {self.display_url} (create one with `dsfs create`)") from None
            self._put(MARKER, json.dumps({"format": STORE_FORMAT}).encode(), exclusive=True, missing_ok=True)
            return
        except json.JSONDecodeError:
            raise CorruptData(f"store marker {self.display_url}/{MARKER} is corrupt") from None
        if marker.get("format") != STORE_FORMAT:
            raise StoreUnavailable(f"store {self.display_url} has format {marker.get('format')}, "
                                   f"this dsfs reads format {STORE_FORMAT}: upgrade dsfs")

    def _bucket_exists(self) -> bool:
        try:
            return self._call("read", self.fs.exists, self.bucket)
        except AccessDenied:  # keys limited to a prefix may not see the bucket itself: go on
            return True

    # -- low level -----------------------------------------------------------------------------

    def _p(self, key: str) -> str:
        return f"{self.root}/{key}"

    def time_limit(self, nbytes: int = 0) -> float:
        """The seconds an operation moving `nbytes` may take: the store's timeout, plus
        backends.SECONDS_PER_MIB per MiB (a silent store fails in about `timeout` seconds; a slow
        but working one still gets big transfers through)."""
        return self.timeout + nbytes / (1 << 20) * backends.SECONDS_PER_MIB

    def reachable(self) -> None:
        """Raise StoreUnavailable at once if nothing listens at the store's endpoint any more."""
        backends.probe(self._endpoint, self.display_url, remember=False)

    def _call(self, what: str, fn, *args, limit: float | None = None, **kwargs):
        """Run one fsspec call within `limit` seconds (default: the store's timeout; less inside
        `deadline`); map backend failures to typed errors. FileNotFoundError and FileExistsError
        pass through: they are answers, not failures; so does EOFError, for a range that starts
        past an object's end."""
        limit = self.timeout if limit is None else limit
        if (end := _deadline.get()) is not None:
            limit = min(limit, end - time.monotonic())
        try:
            return backends.run(self.fs, fn, args, kwargs, limit, self._endpoint, self.display_url)
        except (FileNotFoundError, FileExistsError, DsfsError):
            raise
        except Exception as exc:
            if backends.range_not_satisfiable(exc):
                raise EOFError(f"{what} past the end of an object in {self.display_url}") from None
            self.reachable()  # an endpoint that refuses is the reason to give, whatever the SDK said
            raise backends.caused(self._error(what, exc), exc, self._secrets) from None

    def _error(self, what: str, exc: Exception) -> DsfsError:
        """The typed error for a failed call doing `what` (read, write, list, delete)."""
        if isinstance(exc, TimeoutError):  # the call's limit passed, or the SDK's own timeout fired
            return StoreUnavailable(f"store {self.display_url} did not answer in time ({what}); it may be down "
                                    f"or overloaded (the limit is the datastore option timeout, now "
                                    f"{self.timeout:g} s, plus {backends.SECONDS_PER_MIB:g} s per MiB moved)")
        if isinstance(exc, PermissionError) and not self.bucket:
            return StoreReadOnly(f"store {self.display_url} refused to {what}: permission denied")
        if isinstance(exc, OSError) and not isinstance(exc, PermissionError):
            if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
                return StoreReadOnly(f"store {self.display_url} refused to {what}: {os.strerror(exc.errno)}")
            if exc.errno in NO_SPACE:
                return DiskFull(f"store {self.display_url} is full: no space left to {what} "
                                f"({os.strerror(exc.errno)}); free space there and run the command again")
            return StoreUnavailable(f"store {self.display_url} unreachable ({what}): "
                                    f"{backends.scrub(backends.reason(exc), self._secrets)}")
        # a cloud 403 (wrong credentials, or a read-only key); botocore, aiohttp, azure errors
        return backends.translate(exc, what, self.protocol, self.display_url, self.bucket, self._secrets)

    def _put(self, key: str, data: bytes, exclusive: bool = False, missing_ok: bool = False) -> bool:
        """Write one object atomically. exclusive: fail with FileExistsError if it exists (or
        return False with missing_ok). Returns True if written."""
        path = self._p(key)
        try:
            if self.is_local:
                self._call("write", atomic_write, path, data, 0o644, None, exclusive)
            elif exclusive and self.protocol == "memory":
                # fsspec's memory filesystem checks, then writes: two threads can both create. It
                # lives in this process only, so a lock here makes the create exclusive.
                with _MEMORY_CREATE:
                    self._write(self.fs.pipe_file, path, data, mode="create", limit=self.time_limit(len(data)))
            else:
                self._write(self.fs.pipe_file, path, data, mode="create" if exclusive else "overwrite",
                            limit=self.time_limit(len(data)))
        except FileExistsError:
            if missing_ok:
                return False
            raise
        return True

    def _write(self, fn, *args, **kwargs):
        try:
            return self._call("write", fn, *args, **kwargs)
        except FileNotFoundError:  # object stores answer a write into a missing bucket so
            if not self.bucket:
                raise
            raise backends.bucket_missing(self.protocol, self.bucket, self.display_url) from None

    def _get(self, key: str, start: int | None = None, end: int | None = None) -> bytes:
        """An object's bytes, or bytes [start, end) of it (fewer if it ends sooner, none if it ends
        before `start`), within time_limit of the range (the timeout for a whole object, whose size
        is not known: records and change-sets are small)."""
        if start is None and end is None:
            return self._call("read", self.fs.cat_file, self._p(key), **self._whole_read)
        assert start is not None and end is not None, "a range has both ends"
        try:
            return self._call("read", self.fs.cat_file, self._p(key), start=start, end=end,
                              limit=self.time_limit(end - start))
        except EOFError:
            return b""  # as a file answers a read past its end

    def _exists(self, key: str) -> bool:
        return self._call("read", self.fs.exists, self._p(key))

    def _rm(self, key: str, recursive: bool = False) -> None:
        # One object: rm_file, whose errors are raised. s3fs's rm goes through DeleteObjects and
        # drops its per-key errors, so a refused delete would look like success.
        try:
            if recursive:
                self._call("delete", self.fs.rm, self._p(key), recursive=True)
            else:
                self._call("delete", self.fs.rm_file, self._p(key))
        except FileNotFoundError:
            pass

    def _ls_names(self, key: str) -> list[str]:
        try:
            found = self._call("list", self.fs.ls, self._p(key), detail=False)
        except FileNotFoundError:
            return []
        return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in found)

    # -- versions ------------------------------------------------------------------------------

    def read_version(self, dataset_id: str) -> VersionInfo:
        if not ID_RE.match(dataset_id):
            raise DatasetNotFound(f"no dataset with id {dataset_id!r} in {self.display_url}")
        try:
            raw = self._get(f"datasets/{dataset_id}/version.json")
        except FileNotFoundError:
            raise DatasetNotFound(f"no dataset with id {dataset_id} in {self.display_url}") from None
        return _parse_version(dataset_id, raw)

    def write_version(self, info: VersionInfo, exclusive: bool = False) -> None:
        self._put(f"datasets/{info.id}/version.json",
                  json.dumps(info.to_json(), indent=1, sort_keys=True).encode(), exclusive=exclusive)
        self._changed()

    def list_version_ids(self) -> list[str]:
        return [n for n in self._ls_names("datasets") if ID_RE.match(n)]

    def list_versions(self, unreadable: dict[str, str] | None = None, exact: bool = False,
                      hint=None) -> list[VersionInfo]:
        """Every readable version record. A record that exists but cannot be read is left out
        (listing must not fail because of one bad version) and put in `unreadable` ({id: error},
        when given), so that listings can warn and name resolution can refuse (dsfs.dataset.resolve).
        A record deleted between the listing and its read is simply gone.

        The records are listed with their validators, and only those the node's record cache
        (dsfs.store.records) does not hold at that validator are read, concurrently. The listing
        itself is skipped while the store's change epoch is the one it was made under and it is
        younger than records.LISTING_MAX_AGE (see dsfs.store.records); `exact` always lists (delete's
        check for children, which must not miss one). `hint(raw)`, if given, says of a record's bytes
        whether it may be wanted at all: the others are not parsed (a search by project skips 99% of
        the parsing among 100 projects)."""
        with RecordCache(self.url) as cache:
            epoch = self.read_epoch()
            validators = None if exact or epoch is None else cache.listing(epoch)
            if validators is None:
                validators = self._record_validators()
                if epoch is not None and self.read_epoch() == epoch:  # nothing changed while listing
                    cache.remember_listing(epoch, validators)
            raws = cache.get_many(validators)
            missing = [i for i in validators if i not in raws]
            fresh: dict[str, bytes] = {}
            if len(missing) > records.SNAPSHOT_AFTER:  # a cold or long-unused node: the snapshot first
                snapshot = self._read_snapshot()
                fresh = {i: snapshot[i][1] for i in missing if i in snapshot and snapshot[i][0] == validators[i]}
                missing = [i for i in missing if i not in fresh]
            read = self._read_records(missing)
            fresh.update(read)
            raws.update(fresh)
            out, corrupt = [], set()
            wanted = raws if hint is None else {i: raw for i, raw in raws.items() if i in fresh or hint(raw)}
            for dataset_id, parsed in _parse_versions(wanted):
                if isinstance(parsed, CorruptData):
                    corrupt.add(dataset_id)
                    if unreadable is not None:
                        unreadable[dataset_id] = str(parsed)
                else:
                    out.append(parsed)
            # {id: (validator, raw)} of the good records to cache and snapshot: those parsed now and
            # those the hint skipped (cached, so parsed well before)
            good = {i: (v, raws[i]) for i in raws.keys() - corrupt if (v := validators.get(i)) is not None}
            if fresh:  # and rows of versions no longer listed go (never served meanwhile: not listed)
                cache.update({i: good[i] for i in fresh if i in good}, set(validators))
        if len(read) > records.SNAPSHOT_AFTER and good:
            self._write_snapshot(good)
        return out

    def read_epoch(self) -> str | None:
        """The store's change epoch (records.EPOCH_KEY), or None if no writer has set one yet."""
        try:
            return self._get(records.EPOCH_KEY).decode(errors="replace")[:64]
        except FileNotFoundError:
            return None

    def _changed(self) -> None:
        """A record was written or removed: a new change epoch, so that every node's next listing is
        made afresh. Best effort: the change is made already, and without the new epoch a node's
        listing is at most records.LISTING_MAX_AGE old."""
        try:
            self._put(records.EPOCH_KEY, uuid.uuid4().hex.encode())
        except DsfsError as exc:
            log.warning("could not mark %s changed (%s); other nodes see the change within %d s",
                        self.display_url, exc, records.LISTING_MAX_AGE)

    def _read_snapshot(self) -> dict[str, tuple[str, bytes]]:
        try:
            data = self._get(records.SNAPSHOT_KEY, 0, records.SNAPSHOT_LIMIT + 1)
        except FileNotFoundError:
            return {}
        if len(data) > records.SNAPSHOT_LIMIT:
            log.warning("the catalog snapshot of %s is too big; ignoring it", self.display_url)
            return {}
        return records.decode_snapshot(data)

    def _write_snapshot(self, good: dict[str, tuple[str, bytes]]) -> None:
        """Best effort: a reader without write access, or a failing write, leaves the old snapshot."""
        try:
            self._put(records.SNAPSHOT_KEY, records.encode_snapshot(good))
        except DsfsError as exc:
            log.info("no catalog snapshot written to %s: %s", self.display_url, exc)

    def _record_validators(self) -> dict[str, str | None]:
        """{id: validator} of every version record, from listings alone (dsfs.store.records)."""
        if self.is_local:
            return self._call("list", _local_validators, self._p("datasets"))
        if not self.bucket:  # memory://: no validator, no prefix listing
            return dict.fromkeys(self.list_version_ids())
        # Ids are hex: 16 prefix listings run at once, so a cold listing of 10,000 records takes
        # the time of a few pages, not of 20 in a row.
        base = self._p("datasets")
        with ThreadPoolExecutor(16, thread_name_prefix="dsfs-list") as pool:
            pages = pool.map(lambda h: self._find(base, h), "0123456789abcdef")
            found = {k: v for page in pages for k, v in page.items()}
        out: dict[str, str | None] = {}
        for path, info in found.items():
            head, _, leaf = path.rpartition("/")
            dataset_id = head.rsplit("/", 1)[-1]
            if leaf == "version.json" and ID_RE.match(dataset_id):
                out[dataset_id] = _validator(info)
        return out

    def _find(self, base: str, prefix: str) -> dict:
        try:
            return self._call("list", self.fs.find, base, prefix=prefix, detail=True)
        except FileNotFoundError:
            return {}

    def _read_records(self, ids: list[str]) -> dict[str, bytes]:
        """{id: raw version.json} of `ids`, read concurrently; those gone meanwhile are left out."""
        if not ids:
            return {}
        if self.is_local or not self.bucket:
            out = {}
            for dataset_id in ids:
                with contextlib.suppress(FileNotFoundError):
                    out[dataset_id] = self._get(f"datasets/{dataset_id}/version.json")
            return out
        paths = {self._p(f"datasets/{i}/version.json"): i for i in ids}
        got = self._call("read", self.fs.cat, list(paths), on_error="return", **self._whole_read,
                         limit=self.timeout + len(paths) * 0.05)
        out = {}
        for path, value in got.items():
            if isinstance(value, FileNotFoundError):
                continue
            if isinstance(value, Exception):
                self.reachable()
                raise backends.caused(self._error("read", value), value, self._secrets) from None
            out[paths[path]] = value
        return out

    def delete_version_record(self, dataset_id: str) -> None:
        """Remove a version's record: it disappears for readers (its change-set stays until
        delete_version, so the record can be put back)."""
        self._rm(f"datasets/{dataset_id}/version.json")
        self._changed()

    def delete_version(self, dataset_id: str) -> None:
        """Remove a version: the record first (it disappears for readers), then the rest, its
        previews included."""
        self.delete_version_record(dataset_id)
        self._rm(f"datasets/{dataset_id}", recursive=True)
        self.delete_previews(dataset_id)

    # -- change-sets ---------------------------------------------------------------------------

    def write_changes(self, dataset_id: str, data: bytes | IO[bytes], size: int | None = None) -> None:
        """A version's change-set: its bytes, or a named local file of `size` bytes open at its start
        (close spools it: a change-set of millions of files is never held whole in memory)."""
        key = f"datasets/{dataset_id}/changes.msgpack.zst"
        if isinstance(data, bytes | bytearray | memoryview):
            self._put(key, data)
            return
        limit = self.time_limit(size or 0)
        if self.is_local:  # read and written a block at a time, then renamed into place
            self._call("write", atomic_write, self._p(key), iter(partial(data.read, 8 << 20), b""), 0o644,
                       limit=limit)
        else:  # the SDKs send a file in parts and make the object whole at the end
            self._write(self.fs.put_file, data.name, self._p(key), limit=limit)

    def read_changes(self, dataset_id: str, size: int | None = None) -> bytes:
        """The change-set's bytes; with `size` (what its record names), at most size + 1 of them:
        a crafted object of any length is never read whole (one byte more says it is too long)."""
        key = f"datasets/{dataset_id}/changes.msgpack.zst"
        try:
            if isinstance(size, int) and size >= 0:
                return self._get(key, 0, size + 1)
            return self._get(key)
        except FileNotFoundError:
            raise CorruptData(f"change-set of dataset {dataset_id} is missing from {self.display_url}") from None

    def iter_changes(self, dataset_id: str, size: int, block: int = 8 << 20) -> Iterator[bytes]:
        """`read_changes(dataset_id, size)` in blocks of `block` bytes (a change-set of 10,000,000
        files is ~400 MB): at most size + 1 bytes, each block read within the time limit of its range."""
        key = f"datasets/{dataset_id}/changes.msgpack.zst"
        try:
            for start in range(0, size + 1, block):
                stop = min(start + block, size + 1)
                data = self._get(key, start, stop)
                yield data
                if len(data) < stop - start:
                    return
        except FileNotFoundError:
            raise CorruptData(f"change-set of dataset {dataset_id} is missing from {self.display_url}") from None

    # -- packs ---------------------------------------------------------------------------------

    @staticmethod
    def _pack_key(pack_id: bytes) -> str:
        hexid = pack_id.hex()
        return f"packs/{hexid[:2]}/{hexid}"

    def has_pack(self, pack_id: bytes) -> bool:
        return self._exists(self._pack_key(pack_id))

    def write_pack(self, pack_id: bytes, data) -> None:
        """Write a pack: bytes, or a list of pieces (written in order without joining on file://)."""
        if isinstance(data, list) and not self.is_local:
            data = b"".join(data)
        self._put(self._pack_key(pack_id), data)
        log.debug("wrote pack %s to %s", pack_id.hex(), self.display_url)

    def read_pack_range(self, pack_id: bytes, offset: int, length: int) -> bytes:
        """Bytes [offset, offset + length) of a pack; fewer if the pack ends sooner (the caller
        judges: a chunk beyond a pack's end is corrupt data, not a store failure)."""
        try:
            if self.is_local:
                data = self._call("read", _pread_file, self._p(self._pack_key(pack_id)), offset, length)
            else:
                data = self._get(self._pack_key(pack_id), offset, offset + length)
        except FileNotFoundError:
            raise CorruptData(f"pack {pack_id.hex()} is missing from {self.display_url}") from None
        return data

    def read_pack(self, pack_id: bytes) -> bytes:
        """A whole pack (for copying it to another store; big: the backend may split the read)."""
        path = self._p(self._pack_key(pack_id))
        try:  # its size first: the read's time limit grows with it
            size = self._call("read", self.fs.size, path)
            return self._call("read", self.fs.cat_file, path, limit=self.time_limit(size))
        except FileNotFoundError:
            raise CorruptData(f"pack {pack_id.hex()} is missing from {self.display_url}") from None

    def delete_pack(self, pack_id: bytes) -> None:
        """Only gc calls this (dsfs.gc): a pack may be shared by unrelated versions."""
        self._rm(self._pack_key(pack_id))

    def list_packs(self) -> dict[bytes, PackStat]:
        """Every pack in the store with its size and last-modified time: one LIST page per 1,000
        packs on object stores. Objects under packs/ whose names are not pack ids are ignored."""
        return self.scan_packs()[0]

    def scan_packs(self) -> tuple[dict[bytes, PackStat], dict[str, PackStat]]:
        """One listing of packs/: (list_packs's answer, {key: size and time} of the temp files that
        pack writes killed midway left on a file:// store; object stores have none, a PUT is all
        or nothing)."""
        try:
            found = self._call("list", self.fs.find, self._p("packs"), detail=True)
        except FileNotFoundError:
            return {}, {}
        packs, temps = {}, {}
        for path, info in found.items():
            parent, _, name = path.rstrip("/").rpartition("/")
            stat = PackStat(int(info.get("size") or 0), _modified(info))
            if (pack := pack_id(name)) is not None and parent.endswith(f"/{name[:2]}"):
                packs[pack] = stat
            elif self.is_local and name.startswith(TMP_PREFIX):
                temps[path[len(self.root) + 1:]] = stat
        return packs, temps

    def delete_temp_file(self, key: str) -> None:
        if key.startswith("packs/") and key.rsplit("/", 1)[-1].startswith(TMP_PREFIX):
            self._rm(key)

    # -- writer sessions and gc leases (their rules are in dsfs.store.sessions) ------------------------

    def write_session(self, session_id: str, data: bytes) -> None:
        self._put(f"sessions/{session_id}.json", data)

    def delete_session(self, session_id: str) -> None:
        self._rm(f"sessions/{session_id}.json")

    def read_sessions(self) -> dict[str, bytes]:
        """{session id: record bytes} of every session object (a session ended between the
        listing and the read is left out)."""
        out = {}
        for name in self._ls_names("sessions"):
            if not name.endswith(".json"):
                continue
            try:
                out[name[:-5]] = self._get(f"sessions/{name}")
            except FileNotFoundError:
                continue
        return out

    def lease_sequences(self) -> list[int]:
        """The sequence numbers of the gc lease objects present, ascending."""
        return sorted(int(n) for n in self._ls_names("locks/gc") if n.isdigit())

    def read_lease(self, sequence: int) -> bytes | None:
        try:
            return self._get(f"locks/gc/{sequence:012d}")
        except FileNotFoundError:
            return None

    def create_lease(self, sequence: int, data: bytes) -> bool:
        """Create lease `sequence` exclusively: False if another process created it first."""
        return self._put(f"locks/gc/{sequence:012d}", data, exclusive=True, missing_ok=True)

    def write_lease(self, sequence: int, data: bytes) -> None:
        """Rewrite a lease this process holds (its refresh, or its release)."""
        self._put(f"locks/gc/{sequence:012d}", data)

    def delete_lease(self, sequence: int) -> None:
        self._rm(f"locks/gc/{sequence:012d}")

    # -- version numbers -----------------------------------------------------------------------

    # A label _quote refuses was never claimed (claims go through it): reads find nothing there and
    # a release does nothing, so a record with such labels can still be deleted, and nothing
    # outside the store is touched.

    def _name_key(self, project: str, name: str) -> str:
        return f"names/{_quote(project)}/{_quote(name)}"

    def claim_version_number(self, project: str, name: str, version: str, dataset_id: str) -> bool:
        """Claim project/name@version for dataset_id. False if someone else holds it."""
        return self._put(f"{self._name_key(project, name)}/{_quote(version)}", dataset_id.encode(),
                         exclusive=True, missing_ok=True)

    def version_number_holder(self, project: str, name: str, version: str) -> str | None:
        """The id holding project/name@version, or None if the number is free."""
        try:
            return self._get(f"{self._name_key(project, name)}/{_quote(version)}").decode()
        except (FileNotFoundError, UsageError):
            return None

    def release_version_number(self, project: str, name: str, version: str) -> None:
        try:
            key = f"{self._name_key(project, name)}/{_quote(version)}"
        except UsageError:
            return
        self._rm(key)

    def claimed_version_numbers(self, project: str, name: str) -> list[str]:
        try:
            key = self._name_key(project, name)
        except UsageError:
            return []
        return [urllib.parse.unquote(n) for n in self._ls_names(key)]

    # -- previews (dsfs.authoring.previews) ---------------------------------------------------
    # Items are small JSON objects, one per report, named by time and a random part so that writers
    # never overwrite each other; what is big (an image) is a blob named by its blake3 digest, written
    # before the item naming it, and checked against that name when read.

    def write_preview_blob(self, dataset_id: str, data: bytes) -> str:
        name = blake3.blake3(data).hexdigest()
        self._put(f"previews/{dataset_id}/blobs/{name}", data)
        return name

    def read_preview_blob(self, dataset_id: str, name: str, limit: int) -> bytes:
        if not re.fullmatch(r"[0-9a-f]{64}", name or ""):
            raise CorruptData(f"a preview of dataset {dataset_id} names a blob {name!r} that is not a digest")
        try:
            data = self._get(f"previews/{dataset_id}/blobs/{name}", 0, limit + 1)
        except FileNotFoundError:
            raise DatasetNotFound(f"preview blob {name} of dataset {dataset_id} is missing") from None
        if len(data) > limit or blake3.blake3(data).hexdigest() != name:
            raise CorruptData(f"preview blob {name} of dataset {dataset_id} does not match its digest")
        return data

    def write_preview_item(self, dataset_id: str, data: bytes) -> str:
        name = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.json"
        self._put(f"previews/{dataset_id}/items/{name}", data)
        return name

    def preview_item_names(self, dataset_id: str) -> list[str]:
        names = self._ls_names(f"previews/{dataset_id}/items")
        return [n for n in names if re.fullmatch(r"\d{20}-[0-9a-f]{8}\.json", n)]

    def read_preview_item(self, dataset_id: str, name: str, limit: int) -> bytes | None:
        """An item's bytes (at most limit + 1 of them), or None if it is gone."""
        try:
            return self._get(f"previews/{dataset_id}/items/{name}", 0, limit + 1)
        except FileNotFoundError:
            return None

    def preview_keys(self, dataset_id: str) -> list[str]:
        """Every object of a version's previews, relative to the store root (push copies them)."""
        return [k for k in self.list_files(f"previews/{dataset_id}") if k.startswith(f"previews/{dataset_id}/")]

    def copy_preview_object(self, key: str, other: Store) -> None:
        """Copy one preview object to the same key of `other`; one over PREVIEW_LIMIT (dsfs writes
        none) is refused, never read whole."""
        data = self._get(key, 0, PREVIEW_LIMIT + 1)
        if len(data) > PREVIEW_LIMIT:
            raise CorruptData(f"{key} in {self.display_url} is over {PREVIEW_LIMIT} bytes: not a dsfs preview")
        other._put(key, data)

    def delete_previews(self, dataset_id: str) -> None:
        self._rm(f"previews/{dataset_id}", recursive=True)

    # -- project settings -------------------------------------------------------------------------

    def _project_key(self, project: str) -> str:
        return f"projects/{_quote(project)}/settings.json"

    def read_project_settings(self, project: str) -> bytes | None:
        """A project's settings object (at most PROJECT_SETTINGS_LIMIT + 1 bytes), or None."""
        try:
            return self._get(self._project_key(project), 0, PROJECT_SETTINGS_LIMIT + 1)
        except FileNotFoundError:
            return None

    def write_project_settings(self, project: str, data: bytes) -> None:
        self._put(self._project_key(project), data)

    def remove_project_settings(self, project: str) -> None:
        self._rm(self._project_key(project))

    # -- plain files (`dsfs datastore upload`: user-named files beside the dsfs layout) ---------

    def list_files(self, prefix: str) -> list[str]:
        """Keys of every object under `prefix` (recursively), relative to the store root."""
        if self.bucket and not self._bucket_exists():
            raise backends.bucket_missing(self.protocol, self.bucket, self.display_url)
        try:
            found = self._call("list", self.fs.find, self._p(prefix) if prefix else self.root)
        except FileNotFoundError:
            return []
        return [p[len(self.root) + 1:] for p in found]

    def put_file(self, key: str, local_path: str) -> None:
        """Copy a local file to `key`, replacing what is there."""
        self._write(self.fs.put_file, local_path, self._p(key), limit=self.time_limit(os.path.getsize(local_path)))


