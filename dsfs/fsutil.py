"""Local file writes: the one way dsfs puts a file in place on a local disk, the temp names it uses
on the way, and what a full disk becomes."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile

import blake3

from dsfs.errors import DiskFull
from dsfs.paths import NAME_MAX

TMP_PREFIX = ".tmp-"  # atomic_write's temp files: what a killed write leaves (dsfs.lifecycle.sweep removes old ones)

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def atomic_write(path: str, data, mode: int = 0o600, tmp_dir: str | None = None, exclusive: bool = False) -> None:
    """Write `data` (bytes, or pieces: any iterable of them, written as they come) to a temp file,
    fsync it, then rename it to `path`
    (or hardlink it, which refuses an existing name, when `exclusive`: FileExistsError). A crash
    leaves the old file or the new one, never a torn one. `tmp_dir` must be on path's filesystem."""
    folder = os.path.dirname(path)
    os.makedirs(folder, mode=0o700, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=tmp_dir or folder, prefix=TMP_PREFIX)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            if isinstance(data, bytes | bytearray | memoryview):
                f.write(data)
            else:
                f.writelines(data)
            f.flush()
            os.fsync(f.fileno())
        if exclusive:
            os.link(tmp, path)
        else:
            os.replace(tmp, path)
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass


def temp_name(path: str, suffix: str, reserve: int = 0) -> str:
    """The temp name beside `path` that a write of it goes through: `.NAME<suffix>`, the same for the
    same path (a rerun finds the temp file of a killed run). A name near NAME_MAX bytes (a dataset may
    hold names of up to 255) is cut short and given 16 hex of its hash, so that it fits and two long
    names with a common start never share a temp file. `reserve`: bytes the caller appends (mkstemp's
    random part)."""
    folder, name = os.path.split(path)
    room = NAME_MAX - reserve - len(os.fsencode(suffix)) - 1
    raw = os.fsencode(name)
    if len(raw) > room:  # cut on a character boundary: a temp name may appear in an error message
        name = raw[:room - 17].decode("utf-8", "ignore") + "~" + blake3.blake3(raw).hexdigest()[:16]
    return os.path.join(folder, f".{name}{suffix}")


@contextlib.contextmanager
def space_for(where: str, advice: str = "free some space and run the same command again"):
    """Turn a full disk or a used-up quota met in the block into DiskFull naming `where`."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in NO_SPACE:
            raise
        raise DiskFull(f"no space left on the device of {where}; {advice}") from None
