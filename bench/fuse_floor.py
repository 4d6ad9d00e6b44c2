#!/usr/bin/env python3
"""The ceiling of pyfuse3 on this machine: a read-only file system that does nothing but answer.

    .venv/bin/python bench/fuse_floor.py MOUNTPOINT FILES SIZE [trio|asyncio]
    .venv/bin/python bench/fuse_floor.py MOUNTPOINT 1 0 trio BACKING [BLOCK] [thread|nowait|inline]

Serves FILES files of SIZE bytes each from one buffer in memory, in one folder, with the options a
dsfs mount uses (entry/attr timeouts of a day, keep_cache, readdirplus attributes). Runs until
unmounted. bench_mount.py reads it as the small-file figure's baseline: whatever a real mount adds
(view index, chunk cache, verification, prefetch) comes on top of this per-file cost.

With BACKING (a local file), the one file served is that file's bytes, read with os.pread for each
request: the floor of random reads that miss memory (bench_random.py's fio figures). Each read
reads the aligned BLOCK-byte blocks it touches (default 0: exactly what was asked), on a trio
worker thread as a dsfs mount's reads from its node cache are (`thread`, the default), on the
event loop itself (`inline`, which blocks the loop for as long as the disk takes), or on the loop
when the page cache holds them and on a worker thread when it does not (`nowait`: RWF_NOWAIT).
"""

from __future__ import annotations

import errno
import os
import stat
import sys

import pyfuse3
import trio

DAY = 86400.0


class Floor(pyfuse3.Operations):
    def __init__(self, files: int, size: int):
        super().__init__()
        self.files = files
        self.data = bytes(size)
        self.first = pyfuse3.ROOT_INODE + 1

    def attrs(self, ino: int) -> pyfuse3.EntryAttributes:
        entry = pyfuse3.EntryAttributes()
        entry.st_ino = ino
        entry.entry_timeout = entry.attr_timeout = DAY
        if ino == pyfuse3.ROOT_INODE:
            entry.st_mode, entry.st_nlink = stat.S_IFDIR | 0o755, 2
        else:
            entry.st_mode, entry.st_nlink, entry.st_size = stat.S_IFREG | 0o644, 1, len(self.data)
        entry.st_blksize = 1 << 20
        return entry

    async def getattr(self, inode, ctx=None):
        return self.attrs(inode)

    async def lookup(self, parent_inode, name, ctx=None):
        index = int(name[1:]) if name[:1] == b"f" and name[1:].isdigit() else -1
        if parent_inode != pyfuse3.ROOT_INODE or not 0 <= index < self.files:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self.attrs(self.first + index)

    async def opendir(self, inode, ctx):
        return inode

    async def readdir(self, fh, start_id, token):
        for index in range(start_id, self.files):
            if not pyfuse3.readdir_reply(token, b"f%07d" % index, self.attrs(self.first + index), index + 1):
                break

    async def releasedir(self, fh):
        pass

    async def open(self, inode, flags, ctx):
        return pyfuse3.FileInfo(fh=inode, keep_cache=True)

    async def read(self, fh, off, size):
        return self.data[off:off + size]


class BackedFloor(Floor):
    """One file whose reads are os.pread calls on a local file: no cache, no hash, nothing else."""

    def __init__(self, backing: str, block: int, mode: str):
        super().__init__(1, 0)
        self.fd = os.open(backing, os.O_RDONLY)
        self.size = os.fstat(self.fd).st_size
        self.block, self.mode = block, mode  # mode: "thread", "nowait" or "inline"
        self.limiter = trio.CapacityLimiter(16)  # a dsfs mount's data_limiter

    def attrs(self, ino: int) -> pyfuse3.EntryAttributes:
        entry = super().attrs(ino)
        if ino != pyfuse3.ROOT_INODE:
            entry.st_size = self.size
        return entry

    def _span(self, off: int, size: int) -> tuple[int, int]:
        """(offset, length) of what a read of [off, off + size) reads: its aligned blocks, if any."""
        if not self.block:
            return off, size
        first = off // self.block * self.block
        return first, -(-(off + size - first) // self.block) * self.block

    def _pread(self, off: int, size: int) -> bytes:
        first, length = self._span(off, size)
        return os.pread(self.fd, length, first)[off - first:off - first + size]

    def _pread_nowait(self, off: int, size: int) -> bytes | None:
        """What _pread gives if the page cache holds it all (RWF_NOWAIT), else None."""
        first, length = self._span(off, size)
        buf = bytearray(length)
        try:
            got = os.preadv(self.fd, [buf], first, os.RWF_NOWAIT)
        except BlockingIOError:
            return None
        if got < min(length, self.size - first):
            return None
        return bytes(buf[off - first:off - first + size])

    async def read(self, fh, off, size):
        if self.mode == "nowait":
            data = self._pread_nowait(off, size)
            if data is not None:
                return data
        if self.mode == "inline":
            return self._pread(off, size)
        return await trio.to_thread.run_sync(self._pread, off, size, limiter=self.limiter)

    async def release(self, fh):
        pass


def main(argv: list[str]) -> None:
    mountpoint, files, size = argv[0], int(argv[1]), int(argv[2])
    loop = argv[3] if len(argv) > 3 else "trio"
    options = set(pyfuse3.default_options) | {"fsname=fuse-floor"}
    options.discard("default_permissions")
    if len(argv) > 4:
        block = int(argv[5]) if len(argv) > 5 else 0
        mode = argv[6] if len(argv) > 6 else "thread"
        if mode not in ("thread", "nowait", "inline"):
            sys.exit(f"fuse_floor.py: unknown mode {mode!r} (thread, nowait or inline)")
        ops: Floor = BackedFloor(argv[4], block, mode)
    else:
        ops = Floor(files, size)
    pyfuse3.init(ops, mountpoint, options)
    try:
        if loop == "trio":
            trio.run(pyfuse3.main)
        else:
            import asyncio

            from pyfuse3 import asyncio as pyfuse3_asyncio

            pyfuse3_asyncio.enable()
            asyncio.run(pyfuse3.main())
    finally:
        pyfuse3.close(unmount=True)


if __name__ == "__main__":
    main(sys.argv[1:])
