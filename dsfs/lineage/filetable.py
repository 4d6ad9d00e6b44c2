"""File tables: a version's merged file list and its lineage's chunks, in columns, kept on local disk.

Authoring a child compares against its parent's merged view (sync), and closing it needs the
parent's file set (removals, path conflicts, totals) and every chunk its lineage stored (to send only
new ones). Decoding the lineage's change-sets into entries gives all that, at ~3 us a file: a third
of a second sync of 10,000 files. A file table holds only what authoring asks, in columns:

    files   paths (sorted), sizes, mtimes (int64 arrays), flags (a byte each: 1 executable,
            2 external link), digests (32 bytes each; zeros for a link), links {path: [url, etag]}
    chunks  every chunk ref any version of the lineage stored: digests (32 bytes each), packs
            (16 bytes each), offset/stored/raw (an int64 array, three each), compression (a byte each)

Columns load as a few strings and byte arrays: no object per file but its path, so loading makes no
work for the garbage collector (tuples per file made a full collection cost more than the decode).
A child's table is its parent's columns sliced around its changes.

Closing a version saves its table as `<cache dir>/tables/<id>`; the next sync of a folder against
that version loads it instead of decoding the lineage. A table is local derived data, like the node
cache: it is used only if its bytes hash to the digest it starts with, and it names the version's id
and change-set digest (a table of a draft, or of another store's version with the same id, is never
used): the digest it starts with vouches for its bytes, the change-set digest ties them to the
version record. Anything else is ignored, the lineage decoded, and the table saved again from what
was decoded (dsfs.lineage.merge): a damaged table costs one decode, which is why it is written without fsync;
the TABLES_KEPT most recently written or used are kept.
"""

from __future__ import annotations

import os
import struct
import sys
from array import array
from bisect import bisect_left
from collections.abc import Iterable

import blake3
import msgpack

from dsfs import settings
from dsfs.errors import Conflict
from dsfs.model import ChunkRef, Entry, VersionInfo
from dsfs.paths import parents as path_parents

FORMAT = 1
TABLES_KEPT = 16
EXECUTABLE, LINK = 1, 2
_NO_DIGEST = bytes(32)


def tables_dir() -> str:
    return os.path.join(settings.cache_dir(), "tables")


class FileTable:
    """A merged view in columns, and the chunks of its lineage."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.sizes = array("q")
        self.mtimes = array("q")
        self.flags = bytearray()
        self.digests = bytearray()
        self.links: dict[str, list[str]] = {}
        self.chunk_digests = bytearray()
        self.chunk_packs = bytearray()
        self.chunk_ints = array("q")  # offset, stored, raw
        self.chunk_compression = bytearray()
        self._chunk_index: dict[bytes, int] | None = None

    @classmethod
    def from_view(cls, view: dict[str, Entry], known: dict[bytes, ChunkRef]) -> FileTable:
        table = cls()
        for path in sorted(view):
            table._append(view[path])
        for ref in known.values():
            table._append_chunk(ref)
        return table

    def _append(self, entry: Entry) -> None:
        self.paths.append(entry.path)
        self.sizes.append(entry.size)
        self.mtimes.append(entry.mtime_ns)
        self.flags.append((EXECUTABLE if entry.executable else 0) | (LINK if entry.url else 0))
        self.digests += entry.digest or _NO_DIGEST
        if entry.url:
            self.links[entry.path] = [entry.url, entry.etag]

    def _append_chunk(self, ref: ChunkRef) -> None:
        self.chunk_digests += ref.digest
        self.chunk_packs += ref.pack
        self.chunk_ints.extend((ref.offset, ref.stored, ref.raw))
        self.chunk_compression.append(ref.compression)

    # -- reading -------------------------------------------------------------------------------

    def find(self, path: str) -> int | None:
        """The row of a path, or None: a binary search of the sorted paths (~1 us at 1,000,000 rows),
        where a dict of them cost ~80 MB at that size."""
        row = bisect_left(self.paths, path)
        return row if row < len(self.paths) and self.paths[row] == path else None

    def digest(self, row: int) -> bytes:
        """A file's blake3 digest (b"" for an external link)."""
        return b"" if self.flags[row] & LINK else bytes(self.digests[32 * row:32 * row + 32])

    @property
    def total_bytes(self) -> int:
        return sum(self.sizes)

    def holds(self, entry: Entry) -> bool:
        """This table has entry's path with the same content (Entry.same_content)."""
        row = self.find(entry.path)
        if row is None:
            return False
        url, etag = self.links.get(entry.path, ("", ""))
        before = Entry(entry.path, self.sizes[row], bool(self.flags[row] & EXECUTABLE), self.mtimes[row],
                       self.digest(row), url=url, etag=etag)
        return before.same_content(entry)

    def packs(self) -> set[bytes]:
        """The packs its lineage's chunk rows are in."""
        blob = bytes(self.chunk_packs)
        return {blob[i:i + 16] for i in range(0, len(blob), 16)}

    def known_chunk(self, digest: bytes) -> ChunkRef | None:
        """The ref of a chunk the lineage stored, or None."""
        if self._chunk_index is None:
            blob = bytes(self.chunk_digests)
            self._chunk_index = {blob[i:i + 32]: i // 32 for i in range(0, len(blob), 32)}
        j = self._chunk_index.get(digest)
        if j is None:
            return None
        offset, stored, raw = self.chunk_ints[3 * j:3 * j + 3]
        return ChunkRef(digest, bytes(self.chunk_packs[16 * j:16 * j + 16]), offset, stored, raw,
                        self.chunk_compression[j])

    # -- a child's table -----------------------------------------------------------------------

    def child(self, changes: Iterable[Entry], where: str) -> FileTable:
        """The table of a version with this one as parent and these changes (sorted by path, read
        once as a stream): this table's columns sliced around them. Raises Conflict if an added
        path is a file and a folder at once (this table's own paths were checked when it was made,
        so only added paths can conflict)."""
        child = FileTable()
        child.links = dict(self.links)
        child.chunk_digests = self.chunk_digests[:]
        child.chunk_packs = self.chunk_packs[:]
        child.chunk_ints = self.chunk_ints[:]
        child.chunk_compression = self.chunk_compression[:]
        done = 0
        added = []
        last = None
        for entry in changes:
            if last is not None and entry.path <= last:
                raise ValueError(f"{where}: changes are not sorted by path ({entry.path!r} after {last!r})")
            last = entry.path
            at = bisect_left(self.paths, entry.path, lo=done)
            child._copy_rows(self, done, at)
            exists = at < len(self.paths) and self.paths[at] == entry.path
            done = at + 1 if exists else at
            child.links.pop(entry.path, None)
            if entry.removed:
                continue
            child._append(entry)
            if not exists:
                added.append(len(child.paths) - 1)
            for ref in entry.chunks:
                # A chunk two new files share is appended twice (known_chunk finds either): a set of
                # the appended digests cost ~100 bytes a chunk, a row costs 73.
                if self.known_chunk(ref.digest) is None:
                    child._append_chunk(ref)
        child._copy_rows(self, done, len(self.paths))
        folder_checked = ""
        for row in added:
            path = child.paths[row]
            child._check_added(row, where, folder_checked)
            folder_checked = path.rsplit("/", 1)[0] if "/" in path else ""
        return child

    def _copy_rows(self, other: FileTable, start: int, stop: int) -> None:
        if start >= stop:
            return
        self.paths += other.paths[start:stop]
        self.sizes += other.sizes[start:stop]
        self.mtimes += other.mtimes[start:stop]
        self.flags += other.flags[start:stop]
        self.digests += other.digests[32 * start:32 * stop]

    def _check_added(self, row: int, where: str, folder_checked: str = "") -> None:
        """The path at `row` is neither a folder of another path nor below one. `folder_checked` and
        its ancestors are known not to be files (the folder of the added path before this one:
        sorted paths come a folder at a time, so each is looked up once)."""
        path = self.paths[row]
        for folder in path_parents(path):
            if folder == folder_checked:
                break
            if self.find(folder) is not None:
                raise Conflict(f"{where}: {folder!r} is both a file and a folder (of {path!r})")
        # The paths below `path/` come first after `path + "/"`; usually the next row is past it
        # (only names like 'path-x' or 'path.x' sort between), and then only it needs a look.
        folder = path + "/"
        below = row + 1
        if below < len(self.paths) and self.paths[below] < folder:
            below = bisect_left(self.paths, folder, lo=below)
        if below < len(self.paths) and self.paths[below].startswith(folder):
            raise Conflict(f"{where}: {path!r} is both a file and a folder (of {self.paths[below]!r})")

    # -- on disk -------------------------------------------------------------------------------

    def save(self, info: VersionInfo, folder: str | None = None) -> None:
        """Keep this table as final version `info`'s. Best effort: a table is only a shortcut."""
        folder = folder or tables_dir()
        fields = [FORMAT, sys.byteorder, info.id, info.changes["digest"], self.paths, self.sizes, self.mtimes,
                  self.flags, self.digests, self.links, self.chunk_digests, self.chunk_packs, self.chunk_ints,
                  self.chunk_compression]
        tmp = os.path.join(folder, f".tmp-{info.id}.{os.getpid()}")
        try:
            os.makedirs(folder, mode=0o700, exist_ok=True)
            with open(tmp, "wb") as f:
                # one msgpack array written a field at a time (packing it whole doubled the table in
                # memory), after room for the digest of what follows
                packer, hasher = msgpack.Packer(), blake3.blake3()
                f.write(bytes(32))
                for piece in _pieces(packer, fields):
                    hasher.update(piece)
                    f.write(piece)
                f.seek(0)
                f.write(hasher.digest())
            os.replace(tmp, os.path.join(folder, info.id))
            _prune(folder)
        except OSError:
            try:
                os.unlink(tmp)
            except OSError:
                pass

    @classmethod
    def load(cls, info: VersionInfo, folder: str | None = None) -> FileTable | None:
        """Final version `info`'s saved table, or None if there is none it can trust."""
        if not info.is_final:
            return None
        path = os.path.join(folder or tables_dir(), info.id)
        try:
            with open(path, "rb") as f:
                data = f.read()
            os.utime(path)  # recently used: kept by _prune
        except OSError:
            return None
        body = memoryview(data)[32:]
        if blake3.blake3(body).digest() != data[:32]:
            return None
        try:
            (fmt, byteorder, dataset_id, changes_digest, paths, sizes, mtimes, flags, digests, links,
             chunk_digests, chunk_packs, chunk_ints, chunk_compression) = msgpack.unpackb(body)
        except (ValueError, TypeError, msgpack.UnpackException):
            return None
        if (fmt, byteorder, dataset_id, changes_digest) != (FORMAT, sys.byteorder, info.id, info.changes.get("digest")):
            return None
        n, m = len(paths), len(chunk_digests) // 32
        files_ok = (len(sizes), len(mtimes), len(flags), len(digests)) == (8 * n, 8 * n, n, 32 * n)
        chunks_ok = (len(chunk_digests), len(chunk_packs), len(chunk_ints), len(chunk_compression)) == (
            32 * m, 16 * m, 24 * m, m)
        if not (files_ok and chunks_ok):
            return None
        table = cls()
        table.paths, table.flags, table.digests, table.links = paths, bytearray(flags), bytearray(digests), links
        table.sizes.frombytes(sizes)
        table.mtimes.frombytes(mtimes)
        table.chunk_digests, table.chunk_packs = bytearray(chunk_digests), bytearray(chunk_packs)
        table.chunk_ints.frombytes(chunk_ints)
        table.chunk_compression = bytearray(chunk_compression)
        return table


def _pieces(packer: msgpack.Packer, fields: list):
    """The msgpack encoding of the list `fields`, a field at a time (arrays of numbers and byte
    arrays as bin, which is how they are read back)."""
    yield packer.pack_array_header(len(fields))
    for value in fields:
        if isinstance(value, (array, bytearray)):
            data = memoryview(value).cast("B")
            yield _bin_header(len(data))
            yield data
        else:
            yield packer.pack(value)


def _bin_header(size: int) -> bytes:
    """msgpack's bin 8/16/32 header (msgpack-python packs bin only whole)."""
    if size < 1 << 8:
        return struct.pack(">BB", 0xC4, size)
    if size < 1 << 16:
        return struct.pack(">BH", 0xC5, size)
    return struct.pack(">BI", 0xC6, size)


def _prune(folder: str) -> None:
    with os.scandir(folder) as it:
        tables = [(entry.stat().st_mtime, entry.path) for entry in it if not entry.name.startswith(".tmp-")]
    for _, path in sorted(tables, reverse=True)[TABLES_KEPT:]:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
