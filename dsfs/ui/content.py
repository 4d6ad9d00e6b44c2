"""What the web UI reads out of versions: folder pages, file views, streamed bytes and archives,
and the pages of a comparison.

Every byte comes through `node.view.View` over the node cache, as for a mount, `dsfs cat` or
dsfs://: verified against its chunk's digest, a damaged cached copy fetched again, a damaged stored
chunk an error (CorruptChunk) and never bytes. Paths are looked up in the version's view index and
nowhere else, so a path that is not in the version cannot name anything.

A folder page costs what the page shows, not what the folder holds: the view index lists a folder's
children in name order with a resumable position (readdir), so page k of a folder of a million files
is one cursor seek; its size is found by galloping over positions (about 2 log2(n) seeks). A glob
filter scans the folder from a position and stops after a page of matches or SCAN_LIMIT names
(the page then offers to go on from where it stopped).

Parquet is read as a seekable file over the view (export.FileReader) (pyarrow reads the footer and the first row group
only, whatever the file's size); a rendered table is kept per (version, path), which is safe because
a final version never changes.
"""

from __future__ import annotations

import csv
import difflib
import io
import json
import os
import queue
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import islice

from dsfs import paths
from dsfs.errors import PathNotFound, UsageError
from dsfs.lineage.viewindex import Inode
from dsfs.node.cache import Cache
from dsfs.node.chunks import ChunkReader
from dsfs.node.export import FileReader, export
from dsfs.node.view import View
from dsfs.store.layout import Store

PAGE = 100  # folder entries and changed paths per page
SCAN_LIMIT = 100_000  # names a filtered folder page looks at before it stops and offers "more"
TEXT_BYTES = 256 << 10  # the head of a text file shown
JSON_BYTES = 1 << 20  # a JSON file up to this size is parsed and shown indented
TABLE_ROWS = 100  # rows of a CSV or Parquet file shown
DIFF_BYTES = 256 << 10  # each side of a side-by-side diff at most
STREAM_BLOCK = 1 << 20  # bytes per piece of a download
IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
               ".webp": "image/webp", ".bmp": "image/bmp"}  # not SVG: it may hold scripts
TABLE_KINDS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".parquet": "parquet"}
MEMO_BYTES = 64 << 20  # verified chunks the UI keeps in memory (one reader for every version)


class Views:
    """The View of each version the UI has shown, sharing one chunk reader (one memory of verified
    chunks and one fetch pool for the whole UI), as dsfs:// keeps one per version and process."""

    def __init__(self, store: Store, cache: Cache):
        self.store, self.cache = store, cache
        self.reader = ChunkReader(store, cache, memo_bytes=MEMO_BYTES)
        self.views: dict[str, View] = {}
        self.lock = threading.Lock()

    def get(self, dataset_id: str) -> View:
        with self.lock:
            view = self.views.get(dataset_id)
        if view is None:  # built outside the lock: a first build of a big version takes seconds
            view = View(self.store, self.cache, dataset_id, reader=self.reader)
            with self.lock:
                view = self.views.setdefault(dataset_id, view)
        return view

    def close(self) -> None:
        self.reader.close()
        self.cache.flush()


def dataset_path(text: str) -> str:
    """A path from a URL as a dataset path ('' for the root); anything the path rule refuses
    ('..', NUL, an absolute path) is not found: no version can hold it."""
    if text in ("", "/"):
        return ""
    if text.startswith("/"):
        raise PathNotFound(f"{text!r}: no such path (paths in a version are relative)")
    try:
        return paths.normalize(text)
    except UsageError:
        raise PathNotFound(f"{text!r}: no such path") from None


def lookup(view: View, path: str) -> Inode:
    node = view.index.resolve(path)
    if node is None:
        raise PathNotFound(f"no {path!r} in this version")
    return node


def breadcrumbs(path: str) -> list[tuple[str, str]]:
    """(name, path) of each folder from the root down to `path`."""
    crumbs = [("root", "")]
    parts = path.split("/") if path else []
    for i, part in enumerate(parts):
        crumbs.append((part, "/".join(parts[: i + 1])))
    return crumbs


@dataclass
class FolderPage:
    path: str
    entries: list[tuple[str, Inode]] = field(default_factory=list)
    start: int = 0
    total: int | None = None  # children of the folder (unfiltered pages)
    next_start: int | None = None  # where the next page begins, if there is one
    scanned: int = 0  # names looked at by a filtered page


def _first_at(view: View, ino: int, position: int):
    listing = view.readdir(ino, position)
    try:
        return next(listing, None)
    finally:
        listing.close()  # its LMDB read transaction ends now, not when collected


def child_count(view: View, ino: int) -> int:
    """The number of children of a folder: positions run from 0 without gaps, so the first empty
    one, found by galloping then bisecting."""
    if _first_at(view, ino, 0) is None:
        return 0
    low, high = 0, 1  # low holds a child, high is to be tried
    while _first_at(view, ino, high) is not None:
        low, high = high, high * 2
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if _first_at(view, ino, middle) is not None else (low, middle)
    return high


def folder_page(view: View, path: str, start: int = 0, pattern: str = "") -> FolderPage:
    node = lookup(view, path)
    if not node.is_dir:
        raise PathNotFound(f"{path!r} is a file, not a folder")
    page = FolderPage(path, start=start)
    listing = view.readdir(node.ino, start)
    try:
        if not pattern:
            page.entries = [(name, child) for _, name, child in islice(listing, PAGE)]
            page.total = child_count(view, node.ino)
            if start + len(page.entries) < page.total:
                page.next_start = start + len(page.entries)
            return page
        for position, name, child in listing:
            page.scanned += 1
            if paths.glob_match(name, pattern):
                page.entries.append((name, child))
            if len(page.entries) == PAGE or page.scanned == SCAN_LIMIT:
                page.next_start = position if _first_at(view, node.ino, position) is not None else None
                break
    finally:
        listing.close()
    return page


# -- files ---------------------------------------------------------------------------------------


def head(view: View, node: Inode, path: str, size: int) -> bytes:
    with FileReader(view, node, path) as f:
        return f.read(min(size, node.size))


def stream(view: View, node: Inode, path: str) -> Iterator[bytes]:
    """A file's bytes in STREAM_BLOCK pieces. The first piece is read before this returns, so that
    a damaged chunk at the start is an error page, not a broken download."""
    f = FileReader(view, node, path)
    try:
        first = f.read(STREAM_BLOCK)
    except BaseException:
        f.close()
        raise

    def pieces():
        with f:
            if first:
                yield first
            while piece := f.read(STREAM_BLOCK):
                yield piece

    return pieces()


def media_type(path: str) -> str:
    """The type a download is sent with: an image's own, anything else as bytes (never HTML)."""
    return IMAGE_TYPES.get(os.path.splitext(path)[1].lower(), "application/octet-stream")


class TableCache:
    """Rendered tables by (version id, path): a final version's files never change."""

    def __init__(self, limit: int = 64):
        self.limit = limit
        self.items: OrderedDict[tuple[str, str], dict] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, key: tuple[str, str]) -> dict | None:
        with self.lock:
            found = self.items.get(key)
            if found is not None:
                self.items.move_to_end(key)
            return found

    def put(self, key: tuple[str, str], value: dict) -> None:
        with self.lock:
            self.items[key] = value
            while len(self.items) > self.limit:
                self.items.popitem(last=False)


def file_view(view: View, node: Inode, path: str, tables: TableCache) -> dict:
    """What the file page shows: {"kind": image | table | json | text | binary, ...}."""
    extension = os.path.splitext(path)[1].lower()
    if extension in IMAGE_TYPES:
        return {"kind": "image"}
    table_kind = TABLE_KINDS.get(extension)
    if table_kind is not None and node.size:
        key = (view.dataset_id, path)
        found = tables.get(key)
        if found is None:
            found = _parquet(view, node, path) if table_kind == "parquet" else _delimited(view, node, path, table_kind)
            tables.put(key, found)
        return found
    data = head(view, node, path, JSON_BYTES if extension == ".json" else TEXT_BYTES)
    if b"\0" in data[:8192]:
        return {"kind": "binary"}
    if extension == ".json" and node.size <= JSON_BYTES:
        try:
            return {"kind": "json", "text": json.dumps(json.loads(data), indent=2, ensure_ascii=False)[:TEXT_BYTES]}
        except ValueError:
            pass  # shown as the text it is
    return {"kind": "text", "text": data[:TEXT_BYTES].decode("utf-8", errors="replace"),
            "truncated": node.size > TEXT_BYTES}


def _delimited(view: View, node: Inode, path: str, kind: str) -> dict:
    data = head(view, node, path, JSON_BYTES)
    lines = data.decode("utf-8", errors="replace").splitlines()
    if node.size > len(data):
        lines = lines[:-1]  # the last line read may be cut
    reader = csv.reader(lines, "excel-tab" if kind == "tsv" else "excel")
    columns = next(reader, [])
    rows = list(islice(reader, TABLE_ROWS))
    return {"kind": "table", "format": kind, "columns": columns, "rows": rows,
            "truncated": len(lines) > TABLE_ROWS + 1 or node.size > len(data)}


def _parquet(view: View, node: Inode, path: str) -> dict:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        return {"kind": "unavailable", "reason": "Parquet needs pyarrow: pip install 'dsfs[preview]'"}
    with FileReader(view, node, path) as f:
        try:
            parquet = pq.ParquetFile(f)
            batch = next(parquet.iter_batches(batch_size=TABLE_ROWS), None)
        except Exception as exc:  # noqa: BLE001 - pyarrow's errors for a file that is not Parquet vary
            if isinstance(exc, OSError) and exc.__cause__ is not None:
                raise exc.__cause__ from None  # a dsfs read error pyarrow wrapped
            return {"kind": "unavailable", "reason": f"not readable as Parquet: {str(exc)[:200]}"}
        columns = parquet.schema_arrow.names
        rows = [["" if value is None else str(value) for value in row.values()] for row in batch.to_pylist()] \
            if batch is not None else []
        return {"kind": "table", "format": "parquet", "columns": columns, "rows": rows,
                "total_rows": parquet.metadata.num_rows, "schema": str(parquet.schema_arrow),
                "truncated": parquet.metadata.num_rows > len(rows)}


# -- archives ------------------------------------------------------------------------------------


class _Closed(Exception):
    """The reader of an archive went away."""


class _Pipe(io.RawIOBase):
    """The write end of an archive: what `export` writes goes to the queue the response reads."""

    def __init__(self, pieces: queue.Queue, stop: threading.Event):
        self.pieces, self.stop = pieces, stop

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        piece = bytes(data)
        while True:
            if self.stop.is_set():
                raise _Closed()
            try:
                self.pieces.put(piece, timeout=0.5)
                return len(piece)
            except queue.Full:
                continue


_END = object()


def archive(view: View, fmt: str, include: list[str] | None = None) -> Iterator[bytes]:
    """A version as a tar or zip archive, streamed: `dsfs export` writes it in a thread into a
    small queue this generator empties, so memory holds a few pieces whatever the version's size.
    Closing the generator (the client went away) stops the writer."""
    pieces: queue.Queue = queue.Queue(maxsize=8)
    stop = threading.Event()

    def write() -> None:
        try:
            with io.BufferedWriter(_Pipe(pieces, stop), STREAM_BLOCK) as out:
                export(view, out, fmt, include)
            outcome: object = _END
        except _Closed:
            return
        except BaseException as exc:  # noqa: BLE001 - handed to the reader, which raises it
            outcome = exc
        while not stop.is_set():
            try:
                pieces.put(outcome, timeout=0.5)
                return
            except queue.Full:
                continue

    writer = threading.Thread(target=write, name="dsfs-ui-export", daemon=True)
    writer.start()
    try:
        while True:
            piece = pieces.get()
            if piece is _END:
                return
            if isinstance(piece, BaseException):
                raise piece
            yield piece
    finally:
        stop.set()
        writer.join(timeout=5)


# -- compare -------------------------------------------------------------------------------------

CHANGES = ("added", "removed", "modified")


@dataclass
class ComparePage:
    summary: dict
    kind: str
    start: int
    rows: list[tuple[str, int, int]]  # (path, size in source, size in target)
    more: bool


def compare_page(differences, kind: str, start: int) -> ComparePage:
    """Counts of every kind of change and one page of the paths of `kind`, from one pass over
    `Dataset.differences` (a stream in path order: memory holds one page)."""
    if kind not in CHANGES:
        raise UsageError(f"unknown change {kind!r}: use {', '.join(CHANGES)}")
    summary = {"added": 0, "removed": 0, "modified": 0, "unchanged": 0,
               "added_bytes": 0, "removed_bytes": 0, "modified_bytes": 0}
    rows: list[tuple[str, int, int]] = []
    for change, path, old, new in differences:
        if change == kind and start <= summary[kind] < start + PAGE:
            rows.append((path, old, new))
        summary[change] += 1
        if change != "unchanged":
            summary[f"{change}_bytes"] += old if change == "removed" else new
    return ComparePage(summary, kind, start, rows, summary[kind] > start + PAGE)


def side_by_side(old: bytes, new: bytes) -> list[tuple[str, int | None, str, int | None, str]] | None:
    """Rows (tag, old line number, old line, new line number, new line) of a diff of two small text
    files; None if either is binary or too big to show."""
    if len(old) > DIFF_BYTES or len(new) > DIFF_BYTES or b"\0" in old or b"\0" in new:
        return None
    a = old.decode("utf-8", errors="replace").splitlines()
    b = new.decode("utf-8", errors="replace").splitlines()
    rows: list[tuple[str, int | None, str, int | None, str]] = []
    for tag, a0, a1, b0, b1 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        for k in range(max(a1 - a0, b1 - b0)):
            i, j = a0 + k, b0 + k
            rows.append((tag, i + 1 if i < a1 else None, a[i] if i < a1 else "",
                         j + 1 if j < b1 else None, b[j] if j < b1 else ""))
    return rows
