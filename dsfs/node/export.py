"""Export a version (or part of it) as a streamed archive, for someone without dsfs.

tar and zip are written as a stream: file bytes flow from the view (cache or ranged GETs, verified)
into the archive without a temporary copy of the dataset, so `-o -` can feed a pipe of any size.
`manifest-json` lists paths, sizes, modes, mtimes and blake3 digests. Written to a file, the
archive goes to a temp name and is renamed when complete: a failed export never leaves a truncated
archive under the requested name (a full disk: DiskFull, exit 9).

Dates: tar (pax) and manifest-json keep a file's mtime as recorded. A zip entry's date (MS-DOS
format, UTC here) holds 1980-01-01 to 2107-12-31 in steps of 2 s; an mtime outside that range is
clamped to its nearest end (an mtime of 2**64-1 ns exports as 2107-12-31 23:59:58).
"""

from __future__ import annotations

import calendar
import io
import json
import os
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Iterator

import msgpack

from dsfs.errors import UsageError
from dsfs.fsutil import space_for, temp_name
from dsfs.node.materialize import select
from dsfs.node.view import View

FORMATS = ("tar", "zip", "manifest-json")
BLOCK = 4 << 20
TEMP_SUFFIX = ".dsfs-tmp"
RANDOM_BYTES = 8  # what mkstemp puts between its prefix and suffix
SPOOL_BYTES = 16 << 20  # a zip's directory records kept in memory before they go to a temp file
ZIP_FIRST = (1980, 1, 1, 0, 0, 0)  # a zip entry's date (MS-DOS format) holds years 1980-2107 only
ZIP_LAST = (2107, 12, 31, 23, 59, 58)  # ... and even seconds


class FileReader(io.RawIOBase):
    """A file of the view as a binary stream, every read verified: sequential for the archives,
    seekable for readers that jump (pyarrow reads a Parquet file's footer first: the web UI)."""

    def __init__(self, view: View, node, label: str):
        self.view, self.handle, self.pos, self.size = view, view.open(node.ino, label), 0, node.size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self.pos, os.SEEK_END: self.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def tell(self) -> int:
        return self.pos

    def readinto(self, buffer) -> int:
        data = self.view.read(self.handle, self.pos, len(buffer))
        buffer[: len(data)] = data
        self.pos += len(data)
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self.view.release(self.handle)
        super().close()


def export(view: View, out, fmt: str, include=None) -> int:
    """Write the archive to the binary stream `out`. Returns the number of files. The caller builds
    `view` over the node cache it chose (the CLI: --cache-dir), so cached chunks are used and fetched
    ones kept there."""
    if fmt not in FORMATS:
        raise UsageError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")
    files = select(view.index, include)
    count = 0
    if fmt == "manifest-json":
        out.write(b'{"dataset": "%s", "files": [' % view.dataset_id.encode())
        for path, node in files:
            record = {"path": path, "size": node.size, "mode": node.mode, "mtime_ns": node.mtime_ns,
                      "digest": node.digest.hex()}
            out.write((",\n" if count else "\n").encode() + json.dumps(record).encode())
            count += 1
        out.write(b"\n]}\n")
        return count
    if fmt == "tar":
        with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            for path, node in files:
                tar_info = tarfile.TarInfo(path)
                tar_info.size, tar_info.mode, tar_info.mtime = node.size, node.mode, node.mtime_ns / 1e9
                with FileReader(view, node, path) as reader:
                    tar.addfile(tar_info, io.BufferedReader(reader, BLOCK))
                count += 1
        return count
    with _StreamedZip(out, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for path, node in files:
            zip_info = zipfile.ZipInfo(path, date_time=zip_date(node.mtime_ns))
            zip_info.external_attr = (0o100000 | node.mode) << 16
            with FileReader(view, node, path) as reader, \
                    archive.open(zip_info, "w", force_zip64=node.size > 2**31) as dst:
                while chunk := reader.read(BLOCK):
                    dst.write(chunk)
            count += 1
    return count


class _SpooledDirectory:
    """Stands in for ZipFile.filelist while an archive is written: each entry's record (its ZipInfo's
    slots, packed), once the entry's bytes are written, goes to a spooled temp file instead of staying
    in memory as a ZipInfo (about 400 bytes a file: 400 MB at 1,000,000 files); the central directory
    written at close reads them back one at a time. Holds up to SPOOL_BYTES in memory."""

    _UNSET = msgpack.ExtType(1, b"")  # a slot the ZipInfo never set (getattr would raise)

    def __init__(self) -> None:
        self.spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)
        self.count = 0
        self.pack = msgpack.Packer().pack

    def append(self, info: zipfile.ZipInfo) -> None:
        self.spool.write(self.pack([getattr(info, slot, self._UNSET) for slot in zipfile.ZipInfo.__slots__]))
        self.count += 1

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[zipfile.ZipInfo]:
        self.spool.seek(0)
        for values in msgpack.Unpacker(self.spool, use_list=False, read_size=1 << 20):
            info = zipfile.ZipInfo.__new__(zipfile.ZipInfo)
            for slot, value in zip(zipfile.ZipInfo.__slots__, values, strict=True):
                if not isinstance(value, msgpack.ExtType):
                    setattr(info, slot, value)
            yield info
        self.spool.seek(0, os.SEEK_END)


class _Unremembered(dict):
    """Stands in for ZipFile.NameToInfo while writing: remembers no name (a version's paths are
    unique, so zipfile's duplicate-name warning never has cause), holding nothing per file."""

    def __setitem__(self, key, value) -> None:
        pass


class _StreamedZip(zipfile.ZipFile):
    """A zipfile.ZipFile for writing whose per-file records wait on disk, not in memory, for the
    central directory: memory stays flat whatever the file count."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.filelist = _SpooledDirectory()
        self.NameToInfo = _Unremembered()

    def close(self) -> None:
        try:
            super().close()
        finally:
            if isinstance(self.filelist, _SpooledDirectory):
                self.filelist.spool.close()


def zip_date(mtime_ns: int) -> tuple:
    """A file's mtime as a zip entry's date (UTC), clamped to what zip can hold: 1980-01-01 for
    anything earlier, 2107-12-31 23:59:58 for anything later (an mtime far in the future, even
    2**64-1 ns, is a file's to have; tar and manifest-json keep it exactly)."""
    seconds = mtime_ns // 10**9
    if seconds < calendar.timegm(ZIP_FIRST):
        return ZIP_FIRST
    if seconds > calendar.timegm(ZIP_LAST):
        return ZIP_LAST
    return time.gmtime(seconds)[:6]


def export_to(view: View, target: str, fmt: str, include=None, overwrite: bool = False) -> int:
    """Export to a file path, or to stdout for '-'."""
    if target == "-":
        return export(view, sys.stdout.buffer, fmt, include)
    target = os.path.abspath(target)
    if os.path.exists(target) and not overwrite:
        raise UsageError(f"{target} exists; pass --overwrite to replace it")
    folder = os.path.dirname(target)
    prefix = os.path.basename(temp_name(target, ".", reserve=RANDOM_BYTES + len(TEMP_SUFFIX)))
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=prefix, suffix=TEMP_SUFFIX)
    except OSError as exc:
        raise UsageError(f"cannot write {target}: {exc.strerror}") from None
    try:
        with space_for(folder, "free some space and export again"), os.fdopen(fd, "wb") as out:
            count = export(view, out, fmt, include)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        os.unlink(tmp)
        raise
    return count
