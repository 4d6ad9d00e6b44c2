#!/usr/bin/env python3
"""The ceiling of pyfuse3 on this machine: a read-only file system that does nothing but answer.

    .venv/bin/python bench/fuse_floor.py MOUNTPOINT FILES SIZE [trio|asyncio]

Serves FILES files of SIZE bytes each from one buffer in memory, in one folder, with the options a
dsfs mount uses (entry/attr timeouts of a day, keep_cache, readdirplus attributes). Runs until
unmounted. bench_mount.py reads it as the small-file figure's baseline: whatever a real mount adds
(view index, chunk cache, verification, prefetch) comes on top of this per-file cost.
"""

from __future__ import annotations

import errno
import stat
import sys

import pyfuse3

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

    async def release(self, fh):
        pass


def main(argv: list[str]) -> None:
    mountpoint, files, size = argv[0], int(argv[1]), int(argv[2])
    loop = argv[3] if len(argv) > 3 else "trio"
    options = set(pyfuse3.default_options) | {"fsname=fuse-floor"}
    options.discard("default_permissions")
    pyfuse3.init(Floor(files, size), mountpoint, options)
    try:
        if loop == "trio":
            import trio

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
