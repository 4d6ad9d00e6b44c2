"""Export a version (or part of it) as a streamed archive, for someone without dsfs.

tar and zip are written as a stream: file bytes flow from the view (cache or ranged GETs, verified)
into the archive without a temporary copy of the dataset, so `-o -` can feed a pipe of any size.
`manifest-json` lists paths, sizes, modes, mtimes and blake3 digests. Written to a file, the
archive goes to a temp name and is renamed when complete: a failed export never leaves a truncated
archive under the requested name.
"""

from __future__ import annotations

import io
import json
import os
import sys
import tarfile
import tempfile
import time
import zipfile

from .errors import UsageError
from .materialize import select
from .view import View

FORMATS = ("tar", "zip", "manifest-json")
BLOCK = 4 << 20


class _FileReader(io.RawIOBase):
    """A file of the view as a sequential binary stream."""

    def __init__(self, view: View, node, label: str):
        self.view, self.handle, self.pos = view, view.open(node.ino, label), 0

    def readable(self) -> bool:
        return True

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
    """Write the archive to the binary stream `out`. Returns the number of files."""
    if fmt not in FORMATS:
        raise UsageError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")
    files = select(view.index, include)
    count = 0
    if fmt == "manifest-json":
        out.write(b'{"dataset": "%s", "files": [' % view.dataset_id.encode())
        for path, node in files:
            record = {"path": path, "size": node.size, "mode": oct(node.mode), "mtime_ns": node.mtime_ns,
                      "blake3": node.digest.hex()}
            out.write((",\n" if count else "\n").encode() + json.dumps(record).encode())
            count += 1
        out.write(b"\n]}\n")
        return count
    if fmt == "tar":
        with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            for path, node in files:
                info = tarfile.TarInfo(path)
                info.size, info.mode, info.mtime = node.size, node.mode, node.mtime_ns / 1e9
                with _FileReader(view, node, path) as reader:
                    tar.addfile(info, io.BufferedReader(reader, BLOCK))
                count += 1
        return count
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for path, node in files:
            info = zipfile.ZipInfo(path, date_time=time.gmtime(max(node.mtime_ns / 1e9, 315532800))[:6])
            info.external_attr = (0o100000 | node.mode) << 16
            with _FileReader(view, node, path) as reader, archive.open(info, "w", force_zip64=node.size > 2**31) as dst:
                while chunk := reader.read(BLOCK):
                    dst.write(chunk)
            count += 1
    return count


def export_to(view: View, target: str, fmt: str, include=None, overwrite: bool = False) -> int:
    """Export to a file path, or to stdout for '-'."""
    if target == "-":
        return export(view, sys.stdout.buffer, fmt, include)
    target = os.path.abspath(target)
    if os.path.exists(target) and not overwrite:
        raise UsageError(f"{target} exists; pass --overwrite to replace it")
    folder = os.path.dirname(target)
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(target)}.", suffix=".dsfs-tmp")
    except OSError as exc:
        raise UsageError(f"cannot write {target}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as out:
            count = export(view, out, fmt, include)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        os.unlink(tmp)
        raise
    return count
