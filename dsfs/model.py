"""What a version is made of: entries, chunk refs, change-sets, and version records.

A change-set is the list of a version's differences against its merged parents, sorted by path:
files added or modified (with their chunk refs), and removals. On disk it is one zstd frame holding
a msgpack stream: a header map, then one map per entry, so it can be decoded entry by entry without
holding the whole list (a 1M-file version must not become a 1M-item list to be read).

Every entry is validated as it is decoded; a change-set that breaks a rule is `CorruptData`, never
followed. Short keys keep a million-entry change-set small:

    file:    {"p": path, "s": size, "x": exec bit, "t": mtime_ns, "d": blake3(file) 32 bytes,
              "c": [[chunk digest 32 bytes, pack id 16 bytes, offset, stored length, raw length,
                     compression], ...]}
    removal: {"p": path, "r": true}

What the format allows, checked as each entry is decoded (a store may be written by someone else,
and a crafted record must fail as `CorruptData`, never exhaust memory): a chunk holds at most
MAX_CHUNK raw bytes (FastCDC's maximum, dsfs.store.packs) and is stored in at most as many (zstd is kept
only where it saves), and a path component is at most NAME_MAX bytes (what every file system a
version is materialized on allows, and what fits an LMDB key of the view index). A single entry
decodes from at most 64 MiB.
"""

from __future__ import annotations

import datetime as _dt
import gc
import io
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import islice, repeat
from typing import NamedTuple

import msgpack
import zstandard

from dsfs import paths
from dsfs.errors import CorruptData, InvalidPath

CHANGESET_FORMAT = 1
DECODE_BLOCK = 512  # entries of a change-set decoded and checked together
COMPRESSION_NONE = 0
COMPRESSION_ZSTD = 1
MAX_CHUNK = 4 << 20

ID_RE = re.compile(r"^[0-9a-f]{32}$")


class ChunkRef(NamedTuple):
    """Where a chunk's bytes live: `stored` bytes at `offset` in pack `pack`, `raw` bytes once decoded.
    A NamedTuple: a million-entry change-set builds millions of these, and tuples are cheapest."""

    digest: bytes
    pack: bytes
    offset: int
    stored: int
    raw: int
    compression: int = COMPRESSION_NONE

    def to_wire(self) -> list:
        return list(self)

    @classmethod
    def from_wire(cls, item) -> ChunkRef:
        digest, pack, offset, stored, raw, compression = item
        if type(digest) is not bytes or len(digest) != 32 or type(pack) is not bytes or len(pack) != 16:
            raise ValueError("bad chunk digest or pack id")
        if type(offset) is not int or type(stored) is not int or type(raw) is not int or min(offset, stored, raw) < 0:
            raise ValueError("bad chunk offsets")
        if raw > MAX_CHUNK or stored > raw:
            raise ValueError(f"a chunk of {raw} bytes stored in {stored}: the format allows at most "
                             f"{MAX_CHUNK} bytes, stored in at most as many")
        if compression not in (COMPRESSION_NONE, COMPRESSION_ZSTD):
            raise ValueError(f"unknown compression {compression}")
        return cls._make(item)  # the NamedTuple's generated __new__ costs a Python call per chunk


LINK_SCHEMES = ("file", "s3", "gs", "gcs", "az", "abfs", "abfss", "memory", "http", "https")


@dataclass(slots=True)
class Entry:
    """One path of a version: a file with its chunks, an external link (`url` with the `etag` the
    object had when added; read through fsspec on demand), or the removal of a parent's file."""

    path: str
    size: int = 0
    executable: bool = False
    mtime_ns: int = 0
    digest: bytes = b""
    chunks: list[ChunkRef] = field(default_factory=list)
    removed: bool = False
    url: str = ""
    etag: str = ""

    @property
    def mode(self) -> int:
        return 0o755 if self.executable else 0o644

    def same_content(self, other: Entry) -> bool:
        return (not self.removed and not other.removed and self.digest == other.digest
                and self.size == other.size and self.executable == other.executable
                and self.url == other.url and self.etag == other.etag)

    def to_wire(self) -> dict:
        if self.removed:
            return {"p": self.path, "r": True}
        if self.url:
            return {"p": self.path, "s": self.size, "x": self.executable, "t": self.mtime_ns,
                    "u": self.url, "e": self.etag}
        return {"p": self.path, "s": self.size, "x": self.executable, "t": self.mtime_ns,
                "d": self.digest, "c": [c.to_wire() for c in self.chunks]}

    @classmethod
    def from_wire(cls, item, chunks: bool = True) -> Entry:
        """Decode and validate one entry; raises ValueError/InvalidPath on anything malformed.
        chunks=False (a listing, which serves no byte): the chunk refs are neither decoded nor
        checked, and the entry has none (a third of the cost of a file's entry)."""
        if not isinstance(item, dict):
            raise ValueError("entry is not a map")
        return cls._from_checked(item, paths.validate(item.get("p")), chunks)

    @classmethod
    def _from_checked(cls, item: dict, path: str, chunks: bool) -> Entry:
        """from_wire of a map whose path `path` (item["p"]) is already validated."""
        if item.get("r"):
            return cls(path=path, removed=True)
        if "u" in item:
            url, etag, size = item["u"], item["e"], item["s"]
            if not (isinstance(url, str) and url.split("://", 1)[0] in LINK_SCHEMES and "://" in url
                    and isinstance(etag, str) and isinstance(size, int) and size >= 0):
                raise ValueError(f"bad external link for {path!r}")
            mtime = item.get("t", 0)
            if type(mtime) is not int or not MTIME_MIN <= mtime <= MTIME_MAX:
                raise ValueError(f"bad mtime for {path!r}")
            return cls(path=path, size=size, executable=bool(item.get("x")), mtime_ns=mtime, url=url, etag=etag)
        size, digest = item["s"], item["d"]
        if not (type(size) is int and size >= 0 and type(digest) is bytes and len(digest) == 32):
            raise ValueError(f"bad size or digest for {path!r}")
        # this runs once per file of every change-set read (10,000 files: ~20 ms), hence no
        # keyword arguments or generators here
        refs = list(map(ChunkRef.from_wire, item["c"])) if chunks else []
        if chunks and sum([c.raw for c in refs]) != size:
            raise ValueError(f"chunks of {path!r} do not add up to its size")
        mtime = item.get("t", 0)
        if type(mtime) is not int or not MTIME_MIN <= mtime <= MTIME_MAX:
            raise ValueError(f"bad mtime for {path!r}")
        return cls(path, size, bool(item.get("x")), mtime, digest, refs)


MTIME_MIN, MTIME_MAX = -(1 << 63), (1 << 63) - 1  # file tables keep mtimes as int64


def utc_now() -> str:
    """A record's timestamp (`created`, `finalized`): UTC, ISO 8601, whole seconds."""
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def utc_iso(seconds: float) -> str:
    """A time.time() value the way every timestamp in dsfs's output is written (as utc_now)."""
    return _dt.datetime.fromtimestamp(seconds, _dt.UTC).isoformat(timespec="seconds")


def clamp_mtime(mtime_ns: int) -> int:
    """A file's mtime as a version records it: int64 nanoseconds (years 1678-2262); ext4 can hold
    later ones, which are recorded as the last representable instant."""
    return min(max(mtime_ns, MTIME_MIN), MTIME_MAX)


def encode_changeset(entries: Iterable[Entry]) -> bytes:
    """Encode entries (any order) as a change-set: sorted by path, one zstd frame."""
    out = io.BytesIO()
    write_changeset(out, sorted(entries, key=lambda e: e.path))
    return out.getvalue()


def write_changeset(out, entries: Iterable[Entry], level: int = 3) -> None:
    """Write entries already sorted by path to a binary file as a change-set, one at a time (a
    merge of many change-sets is written so without holding it)."""
    for _ in changeset_written(out, ((entry, None) for entry in entries), level):
        pass


def changeset_written(out, entries: Iterable[tuple[Entry, bytes | None]], level: int = 3) -> Iterator[Entry]:
    """Yield the entries of `entries` (pairs of an entry, sorted by path, and its encoding if known:
    msgpack of its to_wire(), else None), each written to the binary file `out` as a change-set as
    it passes: the change-set is whole once the stream is exhausted (closing a draft or a squash
    writes each entry while the new file table takes it: one pass over them)."""
    # not `with`: a stream abandoned midway (a conflict found, an error) is never finished, and
    # writes nothing more to `out`, which its owner may have closed by then
    writer = zstandard.ZstdCompressor(level=level).stream_writer(out, closefd=False)
    # entries are packed into one buffer, given to zstd a MiB at a time: a write per entry
    # cost 5 us, as much as packing it
    pack = msgpack.Packer().pack
    pending = [pack({"format": CHANGESET_FORMAT})]
    size = 0
    last = None
    for entry, encoded in entries:
        if entry.path == last:
            raise ValueError(f"duplicate path {entry.path!r} in change-set")
        last = entry.path
        data = encoded or pack(entry.to_wire())
        pending.append(data)
        size += len(data)
        if size >= 1 << 20:
            writer.write(b"".join(pending))
            pending.clear()
            size = 0
        yield entry
    writer.write(b"".join(pending))
    writer.close()


@contextmanager
def gc_paused():
    """No garbage collection while decoding: a decode makes objects per file that all survive and
    hold no cycles, so collections run meanwhile free nothing, and the full one they end in cost
    13-16 ms for 10,000 files (14% of a second sync). The process's own setting is restored after."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def decode_changeset(data, where: str, chunks: bool = True) -> Iterator[Entry]:
    """Yield the entries of a change-set (bytes or a binary file), validating each; `where` names it
    in errors. Decodes as it goes: memory stays flat whatever the entry count. chunks=False: the
    entries have no chunk refs (Entry.from_wire)."""
    source = io.BytesIO(data) if isinstance(data, (bytes, bytearray, memoryview)) else data
    try:
        reader = zstandard.ZstdDecompressor().stream_reader(source)
        # read_size: the 16 KiB default triples decode time; use_list=False: arrays (the chunk
        # refs) become tuples, which are cheaper to build than lists (10,000 files: 12 -> 7 ms)
        unpacker = msgpack.Unpacker(reader, raw=False, strict_map_key=True, max_buffer_size=64 << 20,
                                    read_size=1 << 20, use_list=False)
        header = next(unpacker, None)
        if not isinstance(header, dict) or header.get("format") != CHANGESET_FORMAT:
            raise ValueError("missing or unknown change-set header")
        last = ""
        # a block at a time: its paths validated and their order checked in bulk (paths.validate_all)
        while block := list(islice(unpacker, DECODE_BLOCK)):
            try:
                names = [item["p"] for item in block]
            except (TypeError, KeyError):  # not a map, or no path: from_wire names the fault
                for item in block:
                    Entry.from_wire(item, chunks)
                raise
            paths.validate_all(names)
            if not (last < names[0] and all(map(str.__lt__, names, islice(names, 1, None)))):
                raise ValueError("entries are not sorted by path")
            last = names[-1]
            yield from map(Entry._from_checked, block, names, repeat(chunks))
    except InvalidPath as exc:
        raise CorruptData(f"{where} is corrupt: {exc}; refusing to use it") from None
    except (ValueError, KeyError, TypeError, zstandard.ZstdError, msgpack.UnpackException) as exc:
        raise CorruptData(f"{where} is corrupt or truncated ({exc}); refusing to use it") from None


@dataclass
class VersionInfo:
    """The record in version.json. The file set (parents, change-set) of a final version never
    changes; its labels (project, name, tags, metadata, published state) may."""

    id: str
    project: str
    name: str
    version: str
    parents: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    description: str = ""
    metadata: dict = field(default_factory=dict)
    state: str = "draft"  # draft | final | published
    created: str = ""
    finalized: str = ""
    changes: dict = field(default_factory=dict)  # {"digest": blake3 hex, "size": bytes}
    stats: dict = field(default_factory=dict)
    # versions (not ancestors) whose packs this one's chunk refs point into, e.g. after a squash:
    # they cannot be deleted while this version needs them
    sources: list[str] = field(default_factory=list)

    STATES = ("draft", "final", "published")

    @property
    def is_final(self) -> bool:
        return self.state in ("final", "published")

    @property
    def ref(self) -> str:
        return f"{self.project}/{self.name}@{self.version}"

    def to_json(self) -> dict:
        return {"format": 1, "id": self.id, "project": self.project, "name": self.name,
                "version": self.version, "parents": self.parents, "tags": self.tags,
                "description": self.description, "metadata": self.metadata, "state": self.state,
                "created": self.created, "finalized": self.finalized, "changes": self.changes,
                "stats": self.stats, "sources": self.sources}

    @classmethod
    def from_json(cls, data: dict, where: str) -> VersionInfo:
        try:
            info = cls(**{k: data[k] for k in ("id", "project", "name", "version")},
                       **{k: data[k] for k in ("parents", "tags", "description", "metadata", "state",
                                               "created", "finalized", "changes", "stats", "sources")
                          if k in data})
            if not all(isinstance(v, t) for v, t in ((info.parents, list), (info.sources, list), (info.tags, list),
                                                      (info.metadata, dict), (info.changes, dict), (info.stats, dict))):
                raise ValueError("a field has the wrong type")
            if not all(isinstance(i, str) and ID_RE.match(i) for i in [info.id, *info.parents, *info.sources]):
                raise ValueError("bad id")
            if info.id in info.parents:
                raise ValueError("it names itself as its parent")
            if info.state not in cls.STATES:
                raise ValueError(f"unknown state {info.state!r}")
            size, digest = info.changes.get("size"), info.changes.get("digest")
            if info.is_final and not (type(size) is int and isinstance(digest, str)):
                raise ValueError("no change-set size and digest")
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptData(f"{where} is corrupt ({exc}); refusing to use it") from None
        return info
