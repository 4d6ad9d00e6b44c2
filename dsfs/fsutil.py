"""Crash-safe local file writes: the one way dsfs puts a file in place on a local disk."""

from __future__ import annotations

import os
import tempfile


def atomic_write(path: str, data, mode: int = 0o600, tmp_dir: str | None = None, exclusive: bool = False) -> None:
    """Write `data` (bytes, or a list of pieces) to a temp file, fsync it, then rename it to `path`
    (or hardlink it, which refuses an existing name, when `exclusive`: FileExistsError). A crash
    leaves the old file or the new one, never a torn one. `tmp_dir` must be on path's filesystem."""
    folder = os.path.dirname(path)
    os.makedirs(folder, mode=0o700, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=tmp_dir or folder, prefix=".tmp-")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            if isinstance(data, list):
                f.writelines(data)
            else:
                f.write(data)
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
