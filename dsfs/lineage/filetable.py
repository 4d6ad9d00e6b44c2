"""File tables: a version's merged file list and its lineage's chunks, in columns, in one file on local disk.

Authoring a child compares against its parent's merged view (sync), and closing it needs the
parent's file set (removals, path conflicts, totals) and every chunk its lineage stored (to send only
new ones). Decoding the lineage's change-sets into entries gives all that, at ~3 us a file: a third
of a second sync of 10,000 files. A file table holds only what authoring asks, in columns, in one
file that is memory-mapped read-only where it is used: a command touches the rows it reads, and a
table of 10,000,000 files costs no memory a file (issue 16; it was ~250 bytes a file as Python
lists and arrays). The file:

    [32]    blake3 of everything after it
    [8]     the header's length (little-endian), then the header: msgpack [FORMAT, byte order,
            version id, change-set digest, files n, chunks m, path bytes, total bytes, links]
    columns, each starting at a multiple of 8 bytes, in this order:
      ends            int64 x (n + 1): row i's path is blob[ends[i]:ends[i + 1]]
      blob            the paths (UTF-8, sorted: byte order is str order), one after another
      sizes, mtimes   int64 x n
      flags           a byte a file: 1 executable, 2 external link ({path: [url, etag]} in the header)
      digests         32 bytes a file (zeros for a link)
      chunk_digests   32 x m: every chunk ref any version of the lineage stored (a chunk may be
      chunk_packs     16 x m  in two rows: known_chunk finds either)
      chunk_ints      int64 x 3m: offset, stored, raw
      chunk_compression  m bytes

A child's table is made by TableBuilder as its changes stream past (FileTable.child): the parent's
rows are copied around them in blocks, new rows appended, each column spooled to an unnamed temp
file, and `finish` joins the columns into the table's file.

Closing a version saves its table as `<cache dir>/tables/<id>`; the next sync of a folder against
that version loads it instead of decoding the lineage. A table is local derived data, like the node
cache: it is used only if its bytes hash to the digest it starts with, and it names the version's id
and change-set digest (a table of a draft, or of another store's version with the same id, is never
used): the digest it starts with vouches for its bytes, the change-set digest ties them to the
version record. A saved table is never written in place (made under a temp name, then renamed), so
a mapping of it stays what was checked. Anything else is ignored, the lineage decoded, and the
table saved again from what was decoded (dsfs.lineage.merge): a damaged table costs one decode,
which is why it is written without fsync; the TABLES_KEPT most recently written or used are kept.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import mmap
import os
import struct
import sys
import tempfile
import time
from array import array
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Sequence
from typing import overload

import blake3
import msgpack

from dsfs import settings
from dsfs.errors import Conflict, UsageError
from dsfs.fsutil import space_for
from dsfs.model import ChunkRef, Entry, VersionInfo
from dsfs.paths import parents as path_parents

log = logging.getLogger(__name__)

FORMAT = 2
TABLES_KEPT = 16
EXECUTABLE, LINK = 1, 2
_NO_DIGEST = bytes(32)
_LENGTH = struct.Struct("<Q")
_START = 32 + _LENGTH.size
_BLOCK = 8 << 20  # bytes copied or hashed at a time
_ROWS = 1 << 16  # rows read or buffered at a time
_STALE = 24 * 3600  # seconds after which a temp file left by a killed process is removed


def tables_dir() -> str:
    return os.path.join(settings.cache_dir(), "tables")


def _lengths(n: int, m: int, blob: int) -> dict[str, int]:
    """The byte length of each column, in file order."""
    return {"ends": 8 * (n + 1), "blob": blob, "sizes": 8 * n, "mtimes": 8 * n, "flags": n, "digests": 32 * n,
            "chunk_digests": 32 * m, "chunk_packs": 16 * m, "chunk_ints": 24 * m, "chunk_compression": m}


def _layout(start: int, n: int, m: int, blob: int) -> tuple[dict[str, tuple[int, int]], int]:
    """{column: (offset, length)} for columns after `start`, and the file's length."""
    offset, where = start, {}
    for name, length in _lengths(n, m, blob).items():
        offset += -offset % 8
        where[name] = (offset, length)
        offset += length
    return where, offset


class FileTable:
    """A finished table, read-only: its file mapped into memory. Made by TableBuilder.finish,
    FileTable.load, FileTable.from_view or FileTable.empty."""

    def __init__(self, data: mmap.mmap | bytes, header: list, start: int) -> None:
        _, _, self.id, self.changes_digest, n, m, blob, self.total_bytes, self.links = header
        self.n, self.m = n, m
        self._data = data
        self._where, _ = _layout(start, n, m, blob)
        view = memoryview(data)
        self._col = col = {name: view[offset:offset + length] for name, (offset, length) in self._where.items()}
        self._ends = col["ends"].cast("q")
        self._blob = col["blob"]
        self.sizes = col["sizes"].cast("q")
        self.mtimes = col["mtimes"].cast("q")
        self.flags = col["flags"]
        self.digests = col["digests"]
        self.chunk_digests = col["chunk_digests"]
        self.chunk_packs = col["chunk_packs"]
        self.chunk_ints = col["chunk_ints"].cast("q")
        self.chunk_compression = col["chunk_compression"]
        self._chunk_index: dict[bytes, int] | None = None

    @property
    def paths(self) -> Paths:
        return Paths(self)

    @classmethod
    def empty(cls) -> FileTable:
        return TableBuilder().finish()

    @classmethod
    def from_view(cls, view: dict[str, Entry], known: dict[bytes, ChunkRef],
                  info: VersionInfo | None = None) -> FileTable:
        """The table of a merged view and its lineage's chunks; saved as `info`'s if given."""
        new = TableBuilder()
        for path in sorted(view):
            new.append(view[path])
        for ref in known.values():
            new.append_chunk(ref)
        return new.finish(info)

    # -- reading -------------------------------------------------------------------------------

    def _key(self, row: int) -> bytes:
        """Row's path as UTF-8 bytes (what rows are sorted and searched by)."""
        return bytes(self._blob[self._ends[row]:self._ends[row + 1]])

    def path(self, row: int) -> str:
        return self._key(row).decode()

    def find(self, path: str) -> int | None:
        """The row of a path, or None: a binary search of the sorted paths (~10 us at 1,000,000 rows)."""
        key = path.encode()
        row = bisect_left(range(self.n), key, key=self._key)
        return row if row < self.n and self._key(row) == key else None

    def seek(self, key: bytes, lo: int = 0) -> int:
        """The first row at or after `lo` whose path (UTF-8) is not below `key`. It gallops from `lo`
        (rows lo, lo + 1, lo + 3, lo + 7, ...), so lookups in path order cost the log of the distance
        between them, not of the table."""
        if lo >= self.n:
            return self.n
        hi, step = lo, 1
        while hi < self.n and self._key(hi) < key:
            lo = hi + 1
            hi += step
            step *= 2
        return bisect_left(range(self.n), key, lo, min(hi, self.n), key=self._key)

    def cursor(self) -> Cursor:
        return Cursor(self)

    def digest(self, row: int) -> bytes:
        """A file's blake3 digest (b"" for an external link)."""
        return b"" if self.flags[row] & LINK else bytes(self.digests[32 * row:32 * row + 32])

    def same_content(self, row: int, entry: Entry) -> bool:
        """Row holds entry's path with the same content (Entry.same_content)."""
        url, etag = self.links.get(entry.path, ("", ""))
        before = Entry(entry.path, self.sizes[row], bool(self.flags[row] & EXECUTABLE), self.mtimes[row],
                       self.digest(row), url=url, etag=etag)
        return before.same_content(entry)

    def rows(self) -> Iterator[tuple[str, int, int]]:
        """(path, size, flags) of every row in path order, read a block at a time: the pages read
        are let go, so reading every row of a big table does not hold it in memory."""
        for start in range(0, self.n, _ROWS):
            stop = min(start + _ROWS, self.n)
            ends = self._ends[start:stop + 1].tolist()
            first, last = ends[0], ends[-1]
            blob = bytes(self._blob[first:last])
            offsets = [end - first for end in ends]
            sizes, flags = self.sizes[start:stop].tolist(), self.flags[start:stop].tolist()
            if blob.isascii():  # the usual case: decoded once, then sliced
                text = blob.decode()
                yield from zip(map(text.__getitem__, map(slice, offsets, offsets[1:])), sizes, flags, strict=True)
            else:
                paths = (blob[a:b].decode() for a, b in zip(offsets, offsets[1:], strict=False))
                yield from zip(paths, sizes, flags, strict=True)
            self._release("ends", 8 * start, 8 * stop)
            self._release("blob", first, last)
            self._release("sizes", 8 * start, 8 * stop)
            self._release("flags", start, stop)

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

    def _blocks(self, column: str, start: int, stop: int) -> Iterator[memoryview]:
        """Bytes [start, stop) of a column, a block at a time, each let go once the next is asked."""
        for at in range(start, stop, _BLOCK):
            end = min(at + _BLOCK, stop)
            yield self._col[column][at:end]
            self._release(column, at, end)

    def _release(self, column: str, start: int, stop: int) -> None:
        """Let go of the mapped pages of column bytes [start, stop): the kernel keeps them in its
        page cache, but they no longer count in this process's memory (peak RSS is what issue 16
        measures). Only whole pages inside the range, so nothing still wanted is dropped twice."""
        if not isinstance(self._data, mmap.mmap):
            return
        offset, _ = self._where[column]
        first = -(-(offset + start) // mmap.PAGESIZE) * mmap.PAGESIZE
        last = (offset + stop) // mmap.PAGESIZE * mmap.PAGESIZE
        if last > first:
            self._data.madvise(mmap.MADV_DONTNEED, first, last - first)

    # -- a child's table -----------------------------------------------------------------------

    def child(self, changes: Iterable[Entry], where: str) -> TableBuilder:
        """The table of a version with this one as parent and these changes (sorted by path, read
        once as a stream), being made: this table's rows copied around them. Raises Conflict if a
        path would be a file and a folder at once, found as the changes stream past (this table's
        own paths were checked when it was made, so every conflict involves a change):

        - a change that is a file below another changed file: the changes whose paths are string
          prefixes of the current one are kept on a stack (`open`), so that is a look at the stack;
        - an added file below a file of this table: its folders are looked up (each folder once:
          paths come a folder at a time), unless the change-set removes that file (on the stack);
        - an added file over a folder of this table: each of this table's rows below it must be
          removed by the changes that follow, so a row copied while it is `pending` is a conflict."""
        new = TableBuilder()
        new.links = dict(self.links)
        new.copy_chunks(self)
        new.total_bytes = self.total_bytes  # less each row replaced or removed, plus each appended
        done = 0  # this table's rows before it are copied or replaced
        last: str | None = None
        open_: list[tuple[str, bool]] = []  # (path, removed) of changes that are prefixes of this one
        pending: list[tuple[int, int, str]] = []  # (first, end row, path): rows below an added file
        folder_checked = ""
        for entry in changes:
            path = entry.path
            if last is not None and path <= last:
                raise ValueError(f"{where}: changes are not sorted by path ({path!r} after {last!r})")
            last = path
            key = path.encode()
            at = self.seek(key, done)
            if at > done or pending:
                self._copy_kept(new, done, at, pending, where)
            exists = at < self.n and self._key(at) == key
            if exists:
                new.total_bytes -= self.sizes[at]
            done = at + 1 if exists else at
            while open_ and not path.startswith(open_[-1][0]):
                open_.pop()
            new.links.pop(path, None)
            if not entry.removed:
                for prefix, removed in open_:
                    if not removed and path[len(prefix)] == "/":
                        raise Conflict(f"{where}: {prefix!r} is both a file and a folder (of {path!r})")
                new.append(entry)
                for ref in entry.chunks:
                    # a chunk this table knows gets a second row (known_chunk finds either): looking
                    # each up cost a dict of every chunk of the lineage in memory
                    new.append_chunk(ref)
                if not exists and self.n:
                    folder_checked = self._check_added(path, done, open_, pending, folder_checked, where)
            open_.append((path, entry.removed))
        self._copy_kept(new, done, self.n, pending, where)
        return new

    def _copy_kept(self, new: TableBuilder, start: int, stop: int, pending: list[tuple[int, int, str]],
                   where: str) -> None:
        """Rows [start, stop) stay as they are: copied, unless one is below an added file."""
        pending[:] = [(lo, hi, path) for lo, hi, path in pending if hi > start]
        for lo, hi, path in pending:
            if max(lo, start) < min(hi, stop):  # a kept row is below the added file
                raise Conflict(f"{where}: {path!r} is both a file and a folder (of {self.path(max(lo, start))!r})")
        new.copy_rows(self, start, stop)

    def _check_added(self, path: str, after: int, open_: list[tuple[str, bool]], pending: list[tuple[int, int, str]],
                     folder_checked: str, where: str) -> str:
        """An added path is neither below a file of this table (unless the change-set removes it)
        nor over its folders (whose rows are then `pending` removal). `folder_checked` and its
        ancestors are known not to be such files. Returns the path's folder, checked now."""
        for folder in path_parents(path):
            if folder == folder_checked:
                break
            if self.find(folder) is not None and (folder, True) not in open_:
                raise Conflict(f"{where}: {folder!r} is both a file and a folder (of {path!r})")
        # rows below `path/` come after `path + "/"`, and end before `path + "0"` ('0' follows '/')
        below = path.encode() + b"/"
        lo = self.seek(below, after)
        if lo < self.n and self._key(lo).startswith(below):
            pending.append((lo, self.seek(path.encode() + b"0", lo), path))
        return path.rsplit("/", 1)[0] if "/" in path else ""

    # -- on disk -------------------------------------------------------------------------------

    @classmethod
    def load(cls, info: VersionInfo, folder: str | None = None) -> FileTable | None:
        """Final version `info`'s saved table, or None if there is none it can trust."""
        if not info.is_final:
            return None
        path = os.path.join(folder or tables_dir(), info.id)
        try:
            with open(path, "rb") as f:
                table = _opened(f)
        except OSError:
            return None
        with contextlib.suppress(OSError):
            os.utime(path)  # recently used: kept by _prune
        if table is None or (table.id, table.changes_digest) != (info.id, info.changes.get("digest")):
            return None
        return table


class Paths(Sequence[str]):
    """A table's paths as a read-only sequence (each decoded when asked)."""

    def __init__(self, table: FileTable) -> None:
        self._table = table

    def __len__(self) -> int:
        return self._table.n

    @overload
    def __getitem__(self, index: int) -> str: ...

    @overload
    def __getitem__(self, index: slice) -> list[str]: ...

    def __getitem__(self, index: int | slice) -> str | list[str]:
        if isinstance(index, slice):
            return [self._table.path(i) for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError("file table row out of range")
        return self._table.path(index)

    def __iter__(self) -> Iterator[str]:
        return (path for path, _, _ in self._table.rows())


class Cursor:
    """Lookups of paths in ascending order in one table, each galloping on from the last."""

    def __init__(self, table: FileTable) -> None:
        self.table, self.row = table, 0

    def find(self, path: str) -> int | None:
        key = path.encode()
        self.row = self.table.seek(key, self.row)
        return self.row if self.row < self.table.n and self.table._key(self.row) == key else None


class TableBuilder:
    """A table being made, row by row in path order, its columns spooled to unnamed temp files in
    the tables folder as it goes (a buffer of _ROWS rows each in memory). `finish` joins them."""

    def __init__(self, folder: str | None = None) -> None:
        self.folder = folder or tables_dir()
        self.n = self.m = self.blob_size = self.total_bytes = 0
        self.links: dict[str, list[str]] = {}
        self.packs: set[bytes] = set()
        with self._writing():
            os.makedirs(self.folder, mode=0o700, exist_ok=True)
            self._spools = {name: tempfile.TemporaryFile(dir=self.folder) for name in _lengths(0, 0, 0)}
        self._ends, self._blob = array("q", [0]), bytearray()
        self._sizes, self._mtimes, self._flags, self._digests = array("q"), array("q"), bytearray(), bytearray()
        self._chunk_digests, self._chunk_packs = bytearray(), bytearray()
        self._chunk_ints, self._chunk_compression = array("q"), bytearray()

    def _buffers(self) -> dict[str, array | bytearray]:
        return {"ends": self._ends, "blob": self._blob, "sizes": self._sizes, "mtimes": self._mtimes,
                "flags": self._flags, "digests": self._digests, "chunk_digests": self._chunk_digests,
                "chunk_packs": self._chunk_packs, "chunk_ints": self._chunk_ints,
                "chunk_compression": self._chunk_compression}

    def _writing(self):
        return writable(self.folder)

    def append(self, entry: Entry) -> None:
        data = entry.path.encode()
        self._blob += data
        self.blob_size += len(data)
        self._ends.append(self.blob_size)
        self._sizes.append(entry.size)
        self._mtimes.append(entry.mtime_ns)
        self._flags.append((EXECUTABLE if entry.executable else 0) | (LINK if entry.url else 0))
        self._digests += entry.digest or _NO_DIGEST
        if entry.url:
            self.links[entry.path] = [entry.url, entry.etag]
        self.n += 1
        self.total_bytes += entry.size
        if len(self._sizes) >= _ROWS:
            self._flush()

    def append_chunk(self, ref: ChunkRef) -> None:
        self._chunk_digests += ref.digest
        self._chunk_packs += ref.pack
        self._chunk_ints.extend((ref.offset, ref.stored, ref.raw))
        self._chunk_compression.append(ref.compression)
        self.packs.add(ref.pack)
        self.m += 1
        if len(self._chunk_compression) >= _ROWS:
            self._flush()

    def copy_rows(self, table: FileTable, start: int, stop: int) -> None:
        """Rows [start, stop) of `table`, in blocks (their paths' offsets moved to this table's)."""
        if start >= stop:
            return
        self._flush()
        first, end = table._ends[start], table._ends[stop]
        shift = self.blob_size - first
        with self._writing():
            for block in range(start + 1, stop + 1, _ROWS):
                ends = array("q")
                ends.frombytes(table._col["ends"][8 * block:8 * min(block + _ROWS, stop + 1)])
                table._release("ends", 8 * block, 8 * min(block + _ROWS, stop + 1))
                self._spools["ends"].write(array("q", [e + shift for e in ends]) if shift else ends)
            for column, size in (("blob", None), ("sizes", 8), ("mtimes", 8), ("flags", 1), ("digests", 32)):
                lo, hi = (first, end) if size is None else (size * start, size * stop)
                for piece in table._blocks(column, lo, hi):
                    self._spools[column].write(piece)
        self.n += stop - start
        self.blob_size += end - first  # total_bytes: the caller's (FileTable.child keeps it)

    def copy_chunks(self, table: FileTable) -> None:
        """Every chunk row of `table`."""
        self._flush()
        with self._writing():
            for column, size in (("chunk_digests", 32), ("chunk_packs", 16), ("chunk_ints", 24),
                                 ("chunk_compression", 1)):
                for piece in table._blocks(column, 0, size * table.m):
                    self._spools[column].write(piece)
        self.m += table.m
        self.packs |= table.packs()

    def _flush(self) -> None:
        with self._writing():
            for name, buffer in self._buffers().items():
                if buffer:
                    self._spools[name].write(buffer)
                    del buffer[:]

    def finish(self, info: VersionInfo | None = None, changes_digest: str | None = None) -> FileTable:
        """The finished table: saved as final version `info`'s (whose change-set has
        `changes_digest`, else info.changes' digest), or an unnamed file if no info."""
        self._flush()
        digest = changes_digest or (info.changes.get("digest", "") if info else "")
        header = msgpack.packb([FORMAT, sys.byteorder, info.id if info else "", digest, self.n, self.m,
                                self.blob_size, self.total_bytes, self.links])
        start = _START + len(header)
        where, length = _layout(start, self.n, self.m, self.blob_size)
        with self._writing():
            if info is None:
                out = tempfile.TemporaryFile(dir=self.folder)
                tmp = None
            else:
                fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=".tmp-")
                out = os.fdopen(fd, "w+b")
            try:
                hasher = blake3.blake3()
                out.write(bytes(32))
                for piece in (_LENGTH.pack(len(header)), header):
                    hasher.update(piece)
                    out.write(piece)
                at = start
                for name, (offset, size) in where.items():
                    gap = bytes(offset - at)
                    hasher.update(gap)
                    out.write(gap)
                    spool = self._spools[name]
                    spool.seek(0)
                    while piece := spool.read(_BLOCK):
                        hasher.update(piece)
                        out.write(piece)
                    spool.close()
                    at = offset + size
                out.flush()
                if out.tell() != length:
                    raise AssertionError(f"file table written with {out.tell()} bytes, not {length}")
                os.pwrite(out.fileno(), hasher.digest(), 0)
                data = mmap.mmap(out.fileno(), 0, access=mmap.ACCESS_READ)
                if tmp is not None:
                    os.replace(tmp, os.path.join(self.folder, info.id))  # type: ignore[union-attr]
                    tmp = None
                    try:
                        _prune(self.folder)
                    except OSError as exc:  # the table is saved: keeping fewer old ones can wait
                        log.warning("could not prune the file tables in %s: %s", self.folder, exc)
            finally:
                out.close()
                if tmp is not None:
                    os.unlink(tmp)
        return FileTable(data, msgpack.unpackb(header), start)


@contextlib.contextmanager
def writable(folder: str):
    """Writes in the tables folder (a table's, a change-set's spool): a full disk is DiskFull, a
    folder that cannot be written a UsageError, each naming the folder (authoring needs it:
    DSFS_CACHE_DIR says where it is)."""
    try:
        with space_for(f"{folder} (a new version's file table is made there)"):
            yield
    except OSError as exc:
        if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
        raise UsageError(f"cannot write file tables in {folder}: {os.strerror(exc.errno)}; authoring needs "
                         f"it writable (DSFS_CACHE_DIR sets the cache folder)") from None


def _opened(f) -> FileTable | None:
    """The table in open file `f`, if its bytes hash to the digest it starts with and its header and
    length are a table's; None otherwise. Hashed a block at a time (not through the mapping)."""
    size = os.fstat(f.fileno()).st_size
    head = f.read(_START)
    if len(head) < _START:
        return None
    (header_size,) = _LENGTH.unpack_from(head, 32)
    if header_size > size - _START:
        return None
    hasher = blake3.blake3(head[32:])
    while piece := f.read(_BLOCK):
        hasher.update(piece)
    if hasher.digest() != head[:32]:
        return None
    f.seek(_START)
    try:
        header = msgpack.unpackb(f.read(header_size))
        fmt, byteorder, dataset_id, digest, n, m, blob, total, links = header
    except (ValueError, TypeError, msgpack.UnpackException):
        return None
    if (fmt, byteorder) != (FORMAT, sys.byteorder):
        return None
    if not all(isinstance(x, int) and x >= 0 for x in (n, m, blob, total)):
        return None
    if not (isinstance(dataset_id, str) and isinstance(digest, str) and isinstance(links, dict)):
        return None
    if _layout(_START + header_size, n, m, blob)[1] != size:
        return None
    table = FileTable(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ), header, _START + header_size)
    if table._ends[0] != 0 or table._ends[n] != blob:
        return None
    return table


def _prune(folder: str) -> None:
    """Keep the TABLES_KEPT most recently written or used tables; remove temp files a killed
    process left a day ago or more."""
    now = time.time()
    tables, stale = [], []
    with os.scandir(folder) as it:
        for entry in it:
            try:
                mtime = entry.stat().st_mtime
            except FileNotFoundError:
                continue
            if not entry.name.startswith(".tmp-"):
                tables.append((mtime, entry.path))
            elif now - mtime > _STALE:
                stale.append(entry.path)
    for path in stale + [path for _, path in sorted(tables, reverse=True)[TABLES_KEPT:]]:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
